// Reads containerd's own config file (config.toml) for the checks `peerpull doctor` and the
// preflight at `serve` start make: is the CRI registry `config_path` set (else containerd never
// reads hosts.toml and never asks peerpull), does it include the directory peerpull writes to,
// and is `discard_unpacked_layers` off (else containerd deletes the layer blobs peerpull serves).
//
// src/main/toml.ts is deliberately strict (it guards hosts.toml files peerpull rewrites) and
// refuses floats, which containerd's own default config has (`pause_threshold = 0.02`). This file
// only reads, never writes, so it uses a tolerant reader: the whole TOML syntax is tokenised
// (multi-line strings and arrays, inline tables, arrays of tables, dates kept as raw text), and
// only the values the checks need are interpreted. Later definitions win; containerd itself
// refuses malformed files, which then shows up as a daemon that does not answer.

import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';

export type CValue = string | number | boolean | CValue[] | CTable | RawValue;
export interface CTable {
  [key: string]: CValue;
}
/** A value the checks never interpret (dates, special floats): its text as written. */
export class RawValue {
  constructor(readonly text: string) {}
}

export class ContainerdConfigSyntaxError extends Error {
  constructor(message: string, readonly line: number) {
    super(`line ${line}: ${message}`);
    this.name = 'ContainerdConfigSyntaxError';
  }
}

function isTable(v: CValue | undefined): v is CTable {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof RawValue);
}

class Reader {
  private pos = 0;
  constructor(private readonly s: string) {}

  private line(): number {
    let n = 1;
    for (let i = 0; i < this.pos && i < this.s.length; i++) if (this.s.charCodeAt(i) === 10) n++;
    return n;
  }

  private fail(msg: string): never {
    throw new ContainerdConfigSyntaxError(msg, this.line());
  }

  private skipSpaces(): void {
    while (this.pos < this.s.length && (this.s[this.pos] === ' ' || this.s[this.pos] === '\t')) this.pos++;
  }

  /** Spaces, newlines and comments (inside arrays and between statements). */
  private skipBlank(): void {
    for (;;) {
      const c = this.s[this.pos];
      if (c === ' ' || c === '\t' || c === '\r' || c === '\n') this.pos++;
      else if (c === '#') this.skipComment();
      else return;
    }
  }

  private skipComment(): void {
    while (this.pos < this.s.length && this.s[this.pos] !== '\n') this.pos++;
  }

  /** After a statement: only spaces and a comment may follow on the line. */
  private endOfLine(): void {
    this.skipSpaces();
    if (this.s[this.pos] === '#') this.skipComment();
    if (this.pos < this.s.length && this.s[this.pos] !== '\n' && !(this.s[this.pos] === '\r' && this.s[this.pos + 1] === '\n')) {
      this.fail(`unexpected ${JSON.stringify(this.s[this.pos])} after a value`);
    }
  }

  private key(): string[] {
    const parts: string[] = [];
    for (;;) {
      this.skipSpaces();
      const c = this.s[this.pos];
      if (c === '"') parts.push(this.basicString());
      else if (c === "'") parts.push(this.literalString());
      else {
        const m = /^[A-Za-z0-9_-]+/.exec(this.s.slice(this.pos, this.pos + 256));
        if (!m) this.fail('expected a key');
        parts.push(m[0]);
        this.pos += m[0].length;
      }
      this.skipSpaces();
      if (this.s[this.pos] !== '.') return parts;
      this.pos++;
    }
  }

  private basicString(): string {
    if (this.s.startsWith('"""', this.pos)) return this.multiline('"""', true);
    this.pos++;
    let out = '';
    for (;;) {
      const c = this.s[this.pos];
      if (c === undefined || c === '\n') this.fail('unterminated string');
      this.pos++;
      if (c === '"') return out;
      if (c === '\\') out += this.escape();
      else out += c;
    }
  }

  private escape(): string {
    const e = this.s[this.pos++];
    const simple: Record<string, string> = { b: '\b', t: '\t', n: '\n', f: '\f', r: '\r', '"': '"', '\\': '\\', e: '\x1b' };
    if (e !== undefined && e in simple) return simple[e]!;
    if (e === 'u' || e === 'U') {
      const len = e === 'u' ? 4 : 8;
      const hex = this.s.slice(this.pos, this.pos + len);
      if (!/^[0-9A-Fa-f]+$/.test(hex) || hex.length !== len) this.fail('bad unicode escape');
      this.pos += len;
      return String.fromCodePoint(parseInt(hex, 16));
    }
    return this.fail(`bad escape \\${e ?? ''}`);
  }

  private literalString(): string {
    if (this.s.startsWith("'''", this.pos)) return this.multiline("'''", false);
    const end = this.s.indexOf("'", this.pos + 1);
    const nl = this.s.indexOf('\n', this.pos + 1);
    if (end < 0 || (nl >= 0 && nl < end)) this.fail('unterminated string');
    const out = this.s.slice(this.pos + 1, end);
    this.pos = end + 1;
    return out;
  }

  private multiline(delim: string, escapes: boolean): string {
    this.pos += 3;
    if (this.s[this.pos] === '\n') this.pos++;
    else if (this.s.startsWith('\r\n', this.pos)) this.pos += 2;
    let out = '';
    for (;;) {
      if (this.pos >= this.s.length) this.fail('unterminated multi-line string');
      if (this.s.startsWith(delim, this.pos)) {
        // Up to two quotes right before the closing delimiter belong to the string.
        let extra = 0;
        while (extra < 2 && this.s[this.pos + 3 + extra] === delim[0]) extra++;
        out += delim[0]!.repeat(extra);
        this.pos += 3 + extra;
        return out;
      }
      const c = this.s[this.pos++]!;
      if (escapes && c === '\\') {
        // A backslash at the end of a line trims the newline and the following whitespace.
        const rest = /^[ \t]*\r?\n/.exec(this.s.slice(this.pos, this.pos + 64));
        if (rest) {
          this.pos += rest[0].length;
          while (/[ \t\r\n]/.test(this.s[this.pos] ?? '')) this.pos++;
        } else out += this.escape();
      } else out += c;
    }
  }

  value(): CValue {
    const c = this.s[this.pos];
    if (c === '"') return this.basicString();
    if (c === "'") return this.literalString();
    if (c === '[') {
      this.pos++;
      const arr: CValue[] = [];
      for (;;) {
        this.skipBlank();
        if (this.s[this.pos] === ']') {
          this.pos++;
          return arr;
        }
        arr.push(this.value());
        this.skipBlank();
        if (this.s[this.pos] === ',') this.pos++;
        else if (this.s[this.pos] !== ']') this.fail('expected "," or "]" in an array');
      }
    }
    if (c === '{') {
      this.pos++;
      const t: CTable = {};
      this.skipSpaces();
      if (this.s[this.pos] === '}') {
        this.pos++;
        return t;
      }
      for (;;) {
        const k = this.key();
        if (this.s[this.pos] !== '=') this.fail('expected "=" in an inline table');
        this.pos++;
        this.skipSpaces();
        setPath(t, k, this.value());
        this.skipSpaces();
        if (this.s[this.pos] === ',') {
          this.pos++;
          continue;
        }
        if (this.s[this.pos] === '}') {
          this.pos++;
          return t;
        }
        this.fail('expected "," or "}" in an inline table');
      }
    }
    // A bare token: boolean, number, date/time (which may hold one space: 1979-05-27 07:32:00Z).
    const m = /^[0-9A-Za-z_+\-.:]+(?: [0-9][0-9:.+\-Zz]*)?/.exec(this.s.slice(this.pos, this.pos + 128));
    if (!m) this.fail(`unexpected ${JSON.stringify(c ?? 'end of file')} where a value should be`);
    this.pos += m[0].length;
    const tok = m[0];
    if (tok === 'true') return true;
    if (tok === 'false') return false;
    const plain = tok.replaceAll('_', '');
    if (/^[+-]?\d+$/.test(plain)) return Number(plain);
    if (/^[+-]?\d+(\.\d+)?([eE][+-]?\d+)?$/.test(plain)) return Number(plain);
    if (/^0x[0-9A-Fa-f]+$|^0o[0-7]+$|^0b[01]+$/.test(plain)) return Number(plain);
    return new RawValue(tok);
  }

  document(): CTable {
    const root: CTable = {};
    let current = root;
    for (;;) {
      this.skipBlank();
      if (this.pos >= this.s.length) return root;
      if (this.s[this.pos] === '[') {
        const arrayOfTables = this.s[this.pos + 1] === '[';
        this.pos += arrayOfTables ? 2 : 1;
        const k = this.key();
        if (!this.s.startsWith(arrayOfTables ? ']]' : ']', this.pos)) this.fail('expected "]" to close a table header');
        this.pos += arrayOfTables ? 2 : 1;
        this.endOfLine();
        if (arrayOfTables) {
          const parent = tableAt(root, k.slice(0, -1));
          const last = k[k.length - 1]!;
          const list = Array.isArray(parent[last]) ? (parent[last] as CValue[]) : (parent[last] = []);
          const t: CTable = {};
          list.push(t);
          current = t;
        } else current = tableAt(root, k);
        continue;
      }
      const k = this.key();
      if (this.s[this.pos] !== '=') this.fail('expected "=" after a key');
      this.pos++;
      this.skipSpaces();
      setPath(current, k, this.value());
      this.endOfLine();
    }
  }
}

/** The table at `keys` under `root`, created when missing (the last element of an array of tables). */
function tableAt(root: CTable, keys: string[]): CTable {
  let t = root;
  for (const k of keys) {
    let next = t[k];
    if (Array.isArray(next) && isTable(next[next.length - 1])) next = next[next.length - 1];
    if (!isTable(next)) {
      next = {};
      t[k] = next;
    }
    t = next as CTable;
  }
  return t;
}

function setPath(t: CTable, keys: string[], v: CValue): void {
  tableAt(t, keys.slice(0, -1))[keys[keys.length - 1]!] = v;
}

/** Parses containerd config text; throws ContainerdConfigSyntaxError with the line. */
export function parseContainerdConfig(text: string): CTable {
  return new Reader(text.replace(/^\uFEFF/, '')).document();
}

/** Reads a value by path; undefined when any step is missing. */
export function lookup(t: CTable, keys: string[]): CValue | undefined {
  let v: CValue | undefined = t;
  for (const k of keys) {
    if (!isTable(v)) return undefined;
    v = v[k];
  }
  return v;
}

function merge(into: CTable, from: CTable): void {
  for (const [k, v] of Object.entries(from)) {
    const cur = into[k];
    if (isTable(cur) && isTable(v)) merge(cur, v);
    else into[k] = v;
  }
}

// ---- the checks ----

export type Severity = 'ok' | 'warn' | 'fail' | 'info';

export interface ConfigFinding {
  severity: Severity;
  /** Stable id for tests and tools. */
  id: string;
  /** One line: what was found. */
  message: string;
  /** What to do about it (plain words), when something is wrong. */
  fix?: string;
}

export interface ContainerdConfigReport {
  file: string;
  /** false when the file does not exist (or cannot be read: see findings). */
  found: boolean;
  version?: number;
  /** Imported files that were read too. */
  imports: string[];
  /** The CRI registry config_path list containerd uses ([] = none: hosts.toml files are ignored). */
  configPaths: string[];
  discardUnpackedLayers?: boolean;
  findings: ConfigFinding[];
}

/** Expands containerd's `imports` (absolute or relative to the file; `*` allowed in the file name). */
async function expandImports(file: string, list: CValue | undefined): Promise<string[]> {
  if (!Array.isArray(list)) return [];
  const out: string[] = [];
  for (const item of list) {
    if (typeof item !== 'string' || item === '') continue;
    const p = path.isAbsolute(item) ? item : path.join(path.dirname(file), item);
    const base = path.basename(p);
    if (!base.includes('*') && !base.includes('?')) {
      out.push(p);
      continue;
    }
    const re = new RegExp('^' + base.replace(/[.+^${}()|[\]\\]/g, '\\$&').replaceAll('*', '.*').replaceAll('?', '.') + '$');
    const names = await readdir(path.dirname(p)).catch(() => [] as string[]);
    for (const n of names.filter((x) => re.test(x)).sort()) out.push(path.join(path.dirname(p), n));
  }
  return out;
}

/** Where the CRI settings live in each config version. */
function criLocations(version: number): { plugin: string[]; configPath: string[]; mirrors: string[]; discard: string[]; criNames: string[] } {
  if (version >= 3) {
    const images = ['plugins', 'io.containerd.cri.v1.images'];
    return {
      plugin: images,
      configPath: [...images, 'registry', 'config_path'],
      mirrors: [...images, 'registry', 'mirrors'],
      discard: [...images, 'discard_unpacked_layers'],
      criNames: ['io.containerd.cri.v1.images', 'io.containerd.grpc.v1.cri', 'cri'],
    };
  }
  const cri = version === 2 ? ['plugins', 'io.containerd.grpc.v1.cri'] : ['plugins', 'cri'];
  return {
    plugin: cri,
    configPath: [...cri, 'registry', 'config_path'],
    mirrors: [...cri, 'registry', 'mirrors'],
    discard: [...cri, 'containerd', 'discard_unpacked_layers'],
    criNames: ['io.containerd.grpc.v1.cri', 'cri'],
  };
}

function tomlPath(keys: string[]): string {
  return keys.map((k) => (/^[A-Za-z0-9_-]+$/.test(k) ? k : JSON.stringify(k))).join('.');
}

/** `[a."b"]` + `key`: how a setting is written in the file, for the fix text. */
function settingText(keys: string[], value: string): string {
  return `[${tomlPath(keys.slice(0, -1))}]\n  ${keys[keys.length - 1]} = ${value}`;
}

/**
 * Checks containerd's config file for what peerpull needs. `peerpullConfigPath` is where
 * `peerpull configure` writes hosts.toml (PEERPULL_CONTAINERD_CONFIG_PATH).
 */
export async function checkContainerdConfig(file: string, peerpullConfigPath: string): Promise<ContainerdConfigReport> {
  const report: ContainerdConfigReport = { file, found: false, imports: [], configPaths: [], findings: [] };
  const add = (severity: Severity, id: string, message: string, fix?: string) => report.findings.push({ severity, id, message, ...(fix ? { fix } : {}) });
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      add(
        'warn',
        'config-file-missing',
        `containerd config file ${file} does not exist, so config_path and discard_unpacked_layers cannot be checked (without a file, containerd 1.x runs with config_path unset and ignores hosts.toml)`,
        `in a pod, mount the host's containerd config read-only and point PEERPULL_CONTAINERD_CONFIG_FILE at it; if containerd's config lives elsewhere (k3s, a custom --config), set PEERPULL_CONTAINERD_CONFIG_FILE to that file; otherwise create ${file} with the CRI registry config_path set and restart containerd`,
      );
    } else {
      add('warn', 'config-file-unreadable', `containerd config file ${file} cannot be read (${code ?? (err as Error).message}), so config_path and discard_unpacked_layers cannot be checked`, 'run as a user who can read it, or mount it into the pod read-only');
    }
    return report;
  }
  report.found = true;
  let doc: CTable;
  try {
    doc = parseContainerdConfig(text);
    const imports = await expandImports(file, doc['imports']);
    for (const imp of imports) {
      try {
        merge(doc, parseContainerdConfig(await readFile(imp, 'utf8')));
        report.imports.push(imp);
      } catch (err) {
        add('warn', 'import-unreadable', `${imp} (imported by ${file}) cannot be read: ${(err as Error).message}`);
      }
    }
  } catch (err) {
    add('fail', 'config-file-invalid', `containerd config file ${file} is not valid TOML (${(err as Error).message})`, 'fix the file: containerd refuses to start with it');
    return report;
  }
  const version = typeof doc['version'] === 'number' ? doc['version'] : 1;
  report.version = version;
  const loc = criLocations(version);

  const disabled = Array.isArray(doc['disabled_plugins']) ? doc['disabled_plugins'].filter((x): x is string => typeof x === 'string') : [];
  const criOff = disabled.filter((d) => loc.criNames.includes(d));
  if (criOff.length > 0) {
    add(
      'warn',
      'cri-disabled',
      `${file} disables the CRI plugin (disabled_plugins has ${criOff.map((x) => JSON.stringify(x)).join(', ')}): the kubelet cannot use this containerd, and its image pulls never reach peerpull`,
      `remove ${criOff.map((x) => JSON.stringify(x)).join(', ')} from disabled_plugins and restart containerd`,
    );
  }

  // config_path: a list separated by ':' (containerd splits it). containerd 2.x has a default.
  const raw = lookup(doc, loc.configPath);
  const defaultPaths = version >= 3 ? ['/etc/containerd/certs.d', '/etc/docker/certs.d'] : [];
  const paths = typeof raw === 'string' ? raw.split(':').filter(Boolean) : raw === undefined ? defaultPaths : [];
  report.configPaths = paths;
  const wanted = path.normalize(peerpullConfigPath).replace(/\/+$/, '') || '/';
  const setPathFix =
    `set it in ${file} and restart containerd:\n` + settingText(loc.configPath, JSON.stringify(wanted)) + `\n(PEERPULL_CONTAINERD_CONFIG_PATH is ${wanted})`;
  if (paths.length === 0) {
    add('fail', 'config-path-unset', `containerd's CRI registry config_path is not set in ${file}: containerd never reads hosts.toml files, so it never asks peerpull and every pull goes upstream`, setPathFix);
  } else if (!paths.some((p) => path.normalize(p).replace(/\/+$/, '') === wanted)) {
    add(
      'fail',
      'config-path-mismatch',
      `containerd reads hosts.toml from ${paths.join(', ')} but peerpull writes them to ${wanted} (PEERPULL_CONTAINERD_CONFIG_PATH): containerd never sees peerpull's mirror config`,
      `point PEERPULL_CONTAINERD_CONFIG_PATH (chart value containerd.configPath) at ${paths[0]}, or ${setPathFix}`,
    );
  } else {
    add('ok', 'config-path', `containerd reads hosts.toml from ${paths.join(', ')}${raw === undefined ? ' (containerd 2 default)' : ''}`);
  }

  const mirrors = lookup(doc, loc.mirrors);
  if (isTable(mirrors) && Object.keys(mirrors).length > 0 && paths.length > 0) {
    add(
      'warn',
      'legacy-mirrors',
      `${file} also sets the deprecated registry.mirrors (${Object.keys(mirrors).join(', ')}); containerd refuses to start the CRI plugin when both mirrors and config_path are set`,
      'move those mirrors into hosts.toml files and delete the registry.mirrors tables',
    );
  }

  const discard = lookup(doc, loc.discard);
  report.discardUnpackedLayers = discard === true;
  if (discard === true) {
    add(
      'fail',
      'discard-unpacked-layers',
      `${file} sets discard_unpacked_layers = true: containerd deletes layer blobs once they are unpacked, so this node has almost nothing to share with its peers`,
      `set it to false and restart containerd (layers pulled after that are kept):\n` + settingText(loc.discard, 'false'),
    );
  } else {
    add('ok', 'discard-unpacked-layers', `discard_unpacked_layers is ${discard === false ? 'false' : 'not set (false)'}: layer blobs stay in the content store`);
  }
  return report;
}

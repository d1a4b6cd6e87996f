// A small, strict TOML reader and writer for the subset containerd's hosts.toml uses:
// comments, `key = value` pairs with bare, quoted and dotted keys, `[table]` headers with quoted
// parts (`[host."https://mirror:5000".header]`), basic and literal strings, decimal integers,
// booleans, (nested, multi-line) arrays and inline tables.
// Anything outside that subset (multi-line strings, floats, dates, arrays of tables) is refused
// with the line and column, never guessed at: peerpull must not rewrite a file it did not
// understand. Tables are Maps so key order survives a read/write round trip (containerd orders
// mirrors by their position in the file).

export type TomlValue = string | number | boolean | TomlValue[] | TomlTable;
export type TomlTable = Map<string, TomlValue>;

export class TomlError extends Error {
  constructor(
    message: string,
    readonly line: number,
    readonly column: number,
  ) {
    super(`line ${line}, column ${column}: ${message}`);
    this.name = 'TomlError';
  }
}

export function isTable(v: TomlValue | undefined): v is TomlTable {
  return v instanceof Map;
}

const BARE_KEY = /^[A-Za-z0-9_-]+$/;

class Parser {
  private pos = 0;
  private line = 1;
  readonly root: TomlTable = new Map();
  /** Tables created by a `[header]` (may not be defined twice). */
  private readonly defined = new WeakSet<TomlTable>();
  /** Tables created implicitly by a dotted header or dotted key (may be defined later, once). */
  private readonly implicit = new WeakSet<TomlTable>();
  /** Inline tables and tables filled by dotted keys under another header are closed. */
  private readonly closed = new WeakSet<TomlTable>();

  constructor(private readonly src: string) {}

  private fail(msg: string, at = this.pos): never {
    // Recompute line/column for `at` (it may precede the current line start).
    let line = 1;
    let start = 0;
    for (let i = 0; i < at && i < this.src.length; i++) {
      if (this.src[i] === '\n') {
        line++;
        start = i + 1;
      }
    }
    throw new TomlError(msg, line, at - start + 1);
  }

  private peek(off = 0): string {
    return this.src[this.pos + off] ?? '';
  }

  private skipWs(): void {
    while (this.peek() === ' ' || this.peek() === '\t') this.pos++;
  }

  /** Skips a comment if one starts here; refuses control characters inside it. */
  private skipComment(): void {
    if (this.peek() !== '#') return;
    while (this.pos < this.src.length && this.peek() !== '\n') {
      const c = this.src.charCodeAt(this.pos);
      if ((c < 0x20 && c !== 0x09 && !(c === 0x0d && this.peek(1) === '\n')) || c === 0x7f) this.fail('control character in comment');
      this.pos++;
    }
  }

  /** Consumes a newline (LF or CRLF); returns false at end of input. */
  private newline(): boolean {
    if (this.peek() === '\n') {
      this.pos++;
    } else if (this.peek() === '\r' && this.peek(1) === '\n') {
      this.pos += 2;
    } else {
      return false;
    }
    this.line++;
    return true;
  }

  /** Whitespace, comments and newlines, as allowed inside arrays. */
  private skipWsCommentsNewlines(): void {
    for (;;) {
      this.skipWs();
      this.skipComment();
      if (!this.newline()) return;
    }
  }

  private endOfLine(): void {
    this.skipWs();
    this.skipComment();
    if (this.pos >= this.src.length) return;
    if (!this.newline()) this.fail(`unexpected "${this.peek()}" after the value (one key = value per line)`);
  }

  parse(): TomlTable {
    if (this.src.charCodeAt(0) === 0xfeff) this.pos = 1;
    let current = this.root;
    while (this.pos < this.src.length) {
      this.skipWs();
      this.skipComment();
      if (this.newline()) continue;
      if (this.pos >= this.src.length) break;
      if (this.peek() === '[') {
        current = this.tableHeader();
      } else {
        this.keyValue(current);
      }
      this.endOfLine();
    }
    return this.root;
  }

  private tableHeader(): TomlTable {
    const at = this.pos;
    this.pos++; // [
    if (this.peek() === '[') this.fail('arrays of tables ([[...]]) are not part of hosts.toml');
    this.skipWs();
    const keys = this.key();
    this.skipWs();
    if (this.peek() !== ']') this.fail('expected "]" to close the table header');
    this.pos++;
    let t = this.root;
    for (const [i, k] of keys.entries()) {
      const last = i === keys.length - 1;
      const existing = t.get(k);
      if (existing === undefined) {
        const n: TomlTable = new Map();
        t.set(k, n);
        if (!last) this.implicit.add(n);
        t = n;
      } else if (isTable(existing)) {
        if (this.closed.has(existing)) this.fail(`table [${keys.join('.')}] extends an inline table or dotted keys`, at);
        t = existing;
        if (last) {
          if (this.defined.has(t) || !this.implicit.has(t)) this.fail(`table [${keys.join('.')}] is defined twice`, at);
          this.implicit.delete(t);
        }
      } else {
        this.fail(`"${keys.slice(0, i + 1).join('.')}" is already a value, not a table`, at);
      }
    }
    this.defined.add(t);
    return t;
  }

  private key(): string[] {
    const keys = [this.simpleKey()];
    for (;;) {
      this.skipWs();
      if (this.peek() !== '.') return keys;
      this.pos++;
      this.skipWs();
      keys.push(this.simpleKey());
    }
  }

  private simpleKey(): string {
    const c = this.peek();
    if (c === '"') {
      if (this.src.startsWith('"""', this.pos)) this.fail('multi-line strings cannot be keys');
      return this.basicString();
    }
    if (c === "'") {
      if (this.src.startsWith("'''", this.pos)) this.fail('multi-line strings cannot be keys');
      return this.literalString();
    }
    const start = this.pos;
    while (/[A-Za-z0-9_-]/.test(this.peek())) this.pos++;
    if (this.pos === start) this.fail(c === '' ? 'unexpected end of input, expected a key' : `unexpected "${c}", expected a key`);
    return this.src.slice(start, this.pos);
  }

  private keyValue(table: TomlTable): void {
    const at = this.pos;
    const keys = this.key();
    this.skipWs();
    if (this.peek() !== '=') this.fail(`expected "=" after key "${keys.join('.')}"`);
    this.pos++;
    this.skipWs();
    const value = this.value();
    let t = table;
    for (const k of keys.slice(0, -1)) {
      const existing = t.get(k);
      if (existing === undefined) {
        const n: TomlTable = new Map();
        t.set(k, n);
        this.closed.add(n);
        t = n;
      } else if (isTable(existing) && this.closed.has(existing) && !this.defined.has(existing)) {
        t = existing;
      } else {
        this.fail(`key "${keys.join('.')}" conflicts with an earlier definition`, at);
      }
    }
    const last = keys[keys.length - 1]!;
    if (t.has(last)) this.fail(`key "${keys.join('.')}" is defined twice`, at);
    t.set(last, value);
  }

  private value(): TomlValue {
    const c = this.peek();
    if (c === '"') {
      if (this.src.startsWith('"""', this.pos)) this.fail('multi-line strings are not supported in hosts.toml');
      return this.basicString();
    }
    if (c === "'") {
      if (this.src.startsWith("'''", this.pos)) this.fail('multi-line strings are not supported in hosts.toml');
      return this.literalString();
    }
    if (c === '[') return this.array();
    if (c === '{') return this.inlineTable();
    if (this.src.startsWith('true', this.pos) && !/[A-Za-z0-9_-]/.test(this.peek(4))) {
      this.pos += 4;
      return true;
    }
    if (this.src.startsWith('false', this.pos) && !/[A-Za-z0-9_-]/.test(this.peek(5))) {
      this.pos += 5;
      return false;
    }
    const m = /^[+-]?(?:0|[1-9](?:_?[0-9])*)(?=[\s,\]}#]|$)/.exec(this.src.slice(this.pos, this.pos + 40));
    if (m) {
      const n = Number(m[0].replaceAll('_', ''));
      if (!Number.isSafeInteger(n)) this.fail('integer out of range');
      this.pos += m[0].length;
      return n;
    }
    if (c === '' || c === '\n' || c === '\r') this.fail('missing value');
    this.fail(`unsupported value starting with "${c}" (hosts.toml uses strings, booleans, integers, arrays and tables)`);
  }

  private basicString(): string {
    this.pos++; // "
    let out = '';
    for (;;) {
      const c = this.peek();
      if (c === '') this.fail('unterminated string');
      if (c === '"') {
        this.pos++;
        return out;
      }
      const code = c.charCodeAt(0);
      if ((code < 0x20 && code !== 0x09) || code === 0x7f) this.fail(code === 0x0a ? 'unterminated string (strings end on their line)' : 'control character in string');
      if (c === '\\') {
        const e = this.peek(1);
        const simple: Record<string, string> = { b: '\b', t: '\t', n: '\n', f: '\f', r: '\r', '"': '"', '\\': '\\' };
        if (e in simple) {
          out += simple[e];
          this.pos += 2;
          continue;
        }
        if (e === 'u' || e === 'U') {
          const len = e === 'u' ? 4 : 8;
          const hex = this.src.slice(this.pos + 2, this.pos + 2 + len);
          if (!new RegExp(`^[0-9A-Fa-f]{${len}}$`).test(hex)) this.fail(`invalid \\${e} escape`);
          const cp = parseInt(hex, 16);
          if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) this.fail('escape is not a Unicode scalar value');
          out += String.fromCodePoint(cp);
          this.pos += 2 + len;
          continue;
        }
        this.fail(`invalid escape "\\${e}"`);
      }
      out += c;
      this.pos++;
    }
  }

  private literalString(): string {
    this.pos++; // '
    const start = this.pos;
    for (;;) {
      const c = this.peek();
      if (c === '') this.fail('unterminated string');
      if (c === "'") {
        const s = this.src.slice(start, this.pos);
        this.pos++;
        return s;
      }
      const code = c.charCodeAt(0);
      if ((code < 0x20 && code !== 0x09) || code === 0x7f) this.fail(code === 0x0a ? 'unterminated string (strings end on their line)' : 'control character in string');
      this.pos++;
    }
  }

  private array(): TomlValue[] {
    this.pos++; // [
    const out: TomlValue[] = [];
    for (;;) {
      this.skipWsCommentsNewlines();
      if (this.peek() === ']') {
        this.pos++;
        return out;
      }
      out.push(this.value());
      this.skipWsCommentsNewlines();
      if (this.peek() === ',') {
        this.pos++;
        continue;
      }
      if (this.peek() === ']') {
        this.pos++;
        return out;
      }
      this.fail(this.peek() === '' ? 'unterminated array' : `expected "," or "]" in array, found "${this.peek()}"`);
    }
  }

  private inlineTable(): TomlTable {
    this.pos++; // {
    const t: TomlTable = new Map();
    this.closed.add(t);
    this.skipWs();
    if (this.peek() === '}') {
      this.pos++;
      return t;
    }
    for (;;) {
      this.skipWs();
      this.keyValue(t);
      this.skipWs();
      if (this.peek() === ',') {
        this.pos++;
        continue;
      }
      if (this.peek() === '}') {
        this.pos++;
        return t;
      }
      this.fail(`expected "," or "}" in inline table, found "${this.peek() || 'end of input'}"`);
    }
  }
}

/** Parses TOML text of the hosts.toml subset; throws TomlError with line and column. */
export function parseToml(text: string): TomlTable {
  return new Parser(text).parse();
}

// ---- writing ----

export function formatKey(k: string): string {
  return BARE_KEY.test(k) ? k : formatString(k);
}

export function formatString(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\r') out += '\\r';
    else if (c < 0x20 || c === 0x7f) out += `\\u${c.toString(16).padStart(4, '0')}`;
    else out += ch;
  }
  return out + '"';
}

/** A value on one line: arrays as `[a, b]`, tables as inline tables. */
export function formatValue(v: TomlValue): string {
  if (typeof v === 'string') return formatString(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw new Error(`cannot write ${v}: only integers are supported`);
    return String(v);
  }
  if (Array.isArray(v)) return `[${v.map(formatValue).join(', ')}]`;
  if (v.size === 0) return '{}';
  return `{ ${[...v].map(([k, x]) => `${formatKey(k)} = ${formatValue(x)}`).join(', ')} }`;
}

/**
 * Writes the contents of one table below a `[header]` (or at the top when `path` is empty):
 * plain values first, then each sub-table as its own `[path.key]` section.
 */
export function formatTable(table: TomlTable, path: string[], indent = ''): string {
  const lines: string[] = [];
  const subs: [string, TomlTable][] = [];
  for (const [k, v] of table) {
    if (isTable(v)) subs.push([k, v]);
    else lines.push(`${indent}${formatKey(k)} = ${formatValue(v)}`);
  }
  let out = lines.length ? lines.join('\n') + '\n' : '';
  for (const [k, sub] of subs) {
    const p = [...path, k];
    out += `\n[${p.map(formatKey).join('.')}]\n` + formatTable(sub, p, '  ');
  }
  return out;
}

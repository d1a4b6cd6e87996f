// `peerpull configure` and `peerpull cleanup`: containerd mirror configuration on the node.
//
// configure writes `<config path>/<registry>/hosts.toml` for every mirrored registry (or
// `_default`), pointing containerd at this node's peerpull first, then at any extra mirror
// targets, then (containerd's own rule) at the upstream `server`. cleanup puts back exactly what
// was there before.
//
// Backup scheme, per registry directory `<config path>/<registry>/`:
//   hosts.toml.peerpull-backup  the previous hosts.toml, byte for byte, same mode. Written once,
//                               before the first change; the source of everything kept.
//   hosts.toml.peerpull-none    marker: there was no hosts.toml. Holds JSON
//                               {"createdDirectory": true|false} so cleanup can remove a
//                               directory configure created (only when empty).
//   .hosts.toml.peerpull-tmp-*  temp files of atomic writes (temp + fsync + rename + fsync dir);
//                               leftovers of a crash are removed by the next run.
// A hosts.toml peerpull wrote starts with MANAGED_HEADER. When the current hosts.toml does not
// (someone replaced it after configure), it is treated as the new original: configure backs it
// up afresh, cleanup leaves it alone and only drops its stale backup.
// None of these names ends in .crt/.cert/.key, so containerd's certificate scan ignores them.

import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, mkdir, open, readFile, readdir, realpath, rename, rm, rmdir, stat, unlink } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import type { Config } from './config.js';
import { parseRegistry } from '../shared/oci.js';
import { formatKey, formatString, formatTable, isTable, parseToml, TomlError, type TomlTable, type TomlValue } from './toml.js';

export const HOSTS_FILE = 'hosts.toml';
export const BACKUP_FILE = 'hosts.toml.peerpull-backup';
export const NONE_MARKER = 'hosts.toml.peerpull-none';
const TMP_PREFIX = '.hosts.toml.peerpull-tmp-';
export const DEFAULT_DIR = '_default';
export const MANAGED_HEADER =
  '# Managed by peerpull: written by `peerpull configure`, undone by `peerpull cleanup`.\n' +
  '# The previous hosts.toml, if any, is kept next to this file as hosts.toml.peerpull-backup.\n';
const KEPT_COMMENT = '# Kept from the previous hosts.toml:\n';
const MAX_NAME = 255;

/** Input problems (hostile registry names, missing node IP): nothing was touched. */
export class HostsConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HostsConfigError';
  }
}

export type Action =
  | 'written' // hosts.toml (re)written
  | 'unchanged' // hosts.toml already had exactly these bytes
  | 'restored' // the backup was put back
  | 'removed' // peerpull's hosts.toml removed (there was none before)
  | 'left' // the file was changed by someone else after configure; left as it is
  | 'failed'; // see message; hosts.toml was left as it was

export interface RegistryReport {
  /** Directory name: a registry host or `_default`. */
  registry: string;
  dir: string;
  action: Action;
  /** configure: whether the previous state was saved now or already saved by an earlier run. */
  backup?: 'created' | 'existing';
  /** Hosts kept from the previous file, in order. */
  kept?: string[];
  message?: string;
}

export interface Report {
  command: 'configure' | 'cleanup';
  configPath: string;
  /** false when any registry failed: the CLI should exit non-zero. */
  ok: boolean;
  registries: RegistryReport[];
  warnings: string[];
}

/** Why `name` cannot be a registry directory, or undefined when it can. */
export function registryNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'is empty';
  if (name.length > MAX_NAME) return `is ${name.length} characters long (at most ${MAX_NAME})`;
  if (name.includes('\0')) return 'contains a NUL byte';
  if (name.includes('/') || name.includes('\\')) return 'contains a path separator';
  if (name === '.' || name === '..' || name.includes('..')) return 'contains ".." or is a relative path component';
  if (name === DEFAULT_DIR) return undefined;
  try {
    const r = parseRegistry(name);
    const port = /:(\d+)$/.exec(r);
    if (port && Number(port[1]) > 65535) return 'has a port above 65535';
  } catch {
    return 'is not a registry host (host or host:port, e.g. docker.io, registry.example.com:5000)';
  }
  return undefined;
}

function checkedDirName(name: string): string {
  const problem = registryNameProblem(name);
  if (problem) throw new HostsConfigError(`refusing registry name ${JSON.stringify(name.slice(0, 300))}: it ${problem}`);
  return name === DEFAULT_DIR ? name : name.toLowerCase();
}

/** The upstream containerd would use for `registry` without a mirror. */
export function upstreamServer(registry: string): string | undefined {
  if (registry === DEFAULT_DIR) return undefined; // containerd derives it from the pulled host
  if (registry === 'docker.io') return 'https://registry-1.docker.io';
  return `https://${registry}`;
}

/** `http://<node ip>:<port>`, IPv6 in brackets. */
export function nodeEndpoint(nodeIp: string, port: number): string {
  if (!isIP(nodeIp)) throw new HostsConfigError(`PEERPULL_NODE_IP: "${nodeIp}" is not an IP address (the chart sets it from status.hostIP)`);
  return `http://${isIP(nodeIp) === 6 ? `[${nodeIp}]` : nodeIp}:${port}`;
}

// ---- reading existing files ----

/** An existing hosts.toml, parsed and checked the way containerd reads it. */
export interface HostsFile {
  server?: string;
  /** Top-level settings other than `server` and `host` (they apply to the server): ca, client, header, ... */
  serverSettings: TomlTable;
  /** `[host."url"]` tables in file order (containerd's priority order). */
  hosts: [string, TomlTable][];
}

function isStringArray(v: TomlValue): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'string');
}

function checkHostSettings(t: TomlTable, where: string): void {
  for (const [k, v] of t) {
    const bad = (what: string) => {
      throw new Error(`${where}: "${k}" must be ${what}`);
    };
    switch (k) {
      case 'capabilities':
        if (!isStringArray(v)) bad('an array of strings');
        for (const c of v as string[]) {
          if (!['pull', 'resolve', 'push'].includes(c.toLowerCase())) bad(`made of "pull", "resolve" and "push" (found "${c}")`);
        }
        break;
      case 'ca':
        if (typeof v !== 'string' && !isStringArray(v)) bad('a string or an array of strings');
        break;
      case 'client':
        if (typeof v === 'string') break;
        if (!Array.isArray(v)) bad('a string, an array of strings or an array of [cert, key] pairs');
        for (const p of v as TomlValue[]) {
          if (typeof p !== 'string' && !(isStringArray(p) && p.length === 2)) bad('a string, an array of strings or an array of [cert, key] pairs');
        }
        break;
      case 'skip_verify':
      case 'override_path':
        if (typeof v !== 'boolean') bad('true or false');
        break;
      case 'dial_timeout':
        if (typeof v !== 'string') bad('a duration string such as "200ms"');
        break;
      case 'header':
        if (!isTable(v)) bad('a table of header names');
        for (const [h, hv] of v as TomlTable) {
          if (typeof hv !== 'string' && !isStringArray(hv)) throw new Error(`${where}: header "${h}" must be a string or an array of strings`);
        }
        break;
      default:
        // containerd ignores keys it does not know; so do we, and keep them.
        break;
    }
  }
}

/** Parses and checks hosts.toml text; throws an Error naming `file`, the line and the problem. */
export function parseHostsFile(text: string, file: string): HostsFile {
  let root: TomlTable;
  try {
    root = parseToml(text);
  } catch (err) {
    if (err instanceof TomlError) throw new Error(`${file} is not valid TOML (${err.message})`);
    throw err;
  }
  const out: HostsFile = { serverSettings: new Map(), hosts: [] };
  for (const [k, v] of root) {
    if (k === 'server') {
      if (typeof v !== 'string' || v === '') throw new Error(`${file}: "server" must be a non-empty string`);
      out.server = v;
    } else if (k === 'host') {
      if (!isTable(v)) throw new Error(`${file}: "host" must be a table of [host."<url>"] tables`);
      for (const [url, h] of v) {
        if (!isTable(h)) throw new Error(`${file}: host ${JSON.stringify(url)} must be a table`);
        checkHostSettings(h, `${file}: host ${JSON.stringify(url)}`);
        out.hosts.push([url, h]);
      }
    } else {
      out.serverSettings.set(k, v);
    }
  }
  checkHostSettings(out.serverSettings, file);
  return out;
}

// ---- writing ----

export interface HostsTomlInput {
  server?: string;
  serverSettings?: TomlTable;
  /** peerpull's endpoints in priority order. */
  endpoints: string[];
  resolveTags: boolean;
  dialTimeoutMs: number;
  /** Hosts of the previous file, written after ours. */
  kept?: [string, TomlTable][];
}

/** The hosts.toml peerpull writes: deterministic, so the same input gives the same bytes. */
export function renderHostsToml(input: HostsTomlInput): string {
  let out = MANAGED_HEADER;
  if (input.server) out += `server = ${formatString(input.server)}\n`;
  if (input.serverSettings?.size) out += formatTable(input.serverSettings, []);
  const caps = input.resolveTags ? '["pull", "resolve"]' : '["pull"]';
  for (const url of input.endpoints) {
    out += `\n[host.${formatKey(url)}]\n  capabilities = ${caps}\n  dial_timeout = "${input.dialTimeoutMs}ms"\n`;
  }
  const kept = input.kept ?? [];
  for (const [i, [url, table]] of kept.entries()) {
    out += '\n' + (i === 0 ? KEPT_COMMENT : '') + `[host.${formatKey(url)}]\n` + formatTable(table, ['host', url], '  ');
  }
  return out;
}

// ---- file helpers ----

async function readOrNull(file: string): Promise<Buffer | null> {
  try {
    return await readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

async function modeOf(file: string, fallback: number): Promise<number> {
  try {
    return (await stat(file)).mode & 0o7777;
  } catch {
    return fallback;
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Writes `data` to `file` through a temp file in the same directory, fsynced, then renamed. */
async function atomicWrite(file: string, data: string | Buffer, mode: number): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, TMP_PREFIX + randomBytes(6).toString('hex'));
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    await fh.chmod(mode); // the umask may have narrowed it
    await fh.sync();
  } catch (err) {
    await fh.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  try {
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await syncDir(dir);
}

async function removeTemps(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  for (const n of names) if (n.startsWith(TMP_PREFIX)) await rm(path.join(dir, n), { force: true });
}

function isManaged(bytes: Buffer): boolean {
  return bytes.subarray(0, MANAGED_HEADER.length).toString('utf8') === MANAGED_HEADER;
}

/** Docker-style certificate files (`*.crt` CAs, `*.cert` + `*.key` client pairs), sorted as containerd reads them. */
async function dockerCertSettings(dir: string): Promise<TomlTable> {
  const t: TomlTable = new Map();
  let entries;
  try {
    entries = (await readdir(dir, { withFileTypes: true })).filter((e) => !e.isDirectory()).map((e) => e.name).sort();
  } catch {
    return t;
  }
  const ca = entries.filter((n) => n.endsWith('.crt'));
  const client: TomlValue[] = [];
  for (const n of entries.filter((x) => x.endsWith('.cert'))) {
    const key = n.slice(0, -'.cert'.length) + '.key';
    client.push(entries.includes(key) ? [n, key] : n);
  }
  if (ca.length) t.set('ca', ca);
  if (client.length) t.set('client', client);
  return t;
}

// ---- configure ----

interface Options {
  endpoints: string[];
  resolveTags: boolean;
  dialTimeoutMs: number;
  keepExistingHosts: boolean;
}

async function configureOne(root: string, registry: string, o: Options): Promise<RegistryReport> {
  const dir = path.join(root, registry);
  const file = path.join(dir, HOSTS_FILE);
  const backupFile = path.join(dir, BACKUP_FILE);
  const markerFile = path.join(dir, NONE_MARKER);
  const rep: RegistryReport = { registry, dir, action: 'unchanged' };
  await removeTemps(dir);

  const dirExisted = await exists(dir);
  const link = await lstat(file).catch(() => null);
  if (link && !link.isFile()) {
    // Replacing a link (or anything else) with a file could not be undone byte for byte.
    throw new Error(`${file} is ${link.isSymbolicLink() ? 'a symbolic link' : 'not a regular file'}; peerpull only replaces regular files (make it one, or leave ${registry} out of PEERPULL_MIRRORED_REGISTRIES)`);
  }
  const current = await readOrNull(file);
  const backup = await readOrNull(backupFile);
  const marker = await exists(markerFile);
  const currentOurs = current !== null && isManaged(current);

  let original: Buffer | null;
  let originalMode = 0o644;
  if ((backup !== null || marker) && (current === null || currentOurs)) {
    // An earlier run saved the previous state; it stays the source of truth.
    original = backup;
    if (backup !== null) originalMode = await modeOf(backupFile, 0o644);
    rep.backup = 'existing';
  } else if (current !== null && !currentOurs) {
    // First run here (or someone replaced our file since): this file is the original.
    parseHostsFile(current.toString('utf8'), file); // refuse before touching anything
    original = current;
    originalMode = await modeOf(file, 0o644);
    await atomicWrite(backupFile, current, originalMode);
    if (marker) await unlink(markerFile);
    rep.backup = 'created';
  } else {
    // No file, or our own file whose backup state was lost: there was nothing before us.
    if (!dirExisted) await mkdir(dir, { recursive: true, mode: 0o755 });
    await atomicWrite(markerFile, JSON.stringify({ createdDirectory: !dirExisted }) + '\n', 0o644);
    original = null;
    rep.backup = 'created';
  }
  if (backup !== null && marker && rep.backup === 'existing') await unlink(markerFile); // both: the backup wins

  let server = upstreamServer(registry);
  let serverSettings: TomlTable = new Map();
  let kept: [string, TomlTable][] = [];
  if (original !== null && original.length > 0) {
    const prev = parseHostsFile(original.toString('utf8'), backup !== null ? backupFile : file);
    if (prev.server) server = prev.server; // the operator's upstream stays the upstream
    serverSettings = prev.serverSettings;
    if (o.keepExistingHosts) kept = prev.hosts.filter(([url]) => !o.endpoints.includes(url));
  } else {
    // Without hosts.toml (or with an empty one) containerd reads Docker-style certificate files for the server;
    // with one it ignores them, so carry them over explicitly.
    serverSettings = await dockerCertSettings(dir);
  }
  if (kept.length) rep.kept = kept.map(([u]) => u);

  const text = renderHostsToml({ server, serverSettings, endpoints: o.endpoints, resolveTags: o.resolveTags, dialTimeoutMs: o.dialTimeoutMs, kept });
  const bytes = Buffer.from(text, 'utf8');
  if (current !== null && current.equals(bytes)) {
    rep.action = 'unchanged';
  } else {
    await atomicWrite(file, bytes, originalMode);
    rep.action = 'written';
  }
  return rep;
}

function checkEndpoints(config: Config): string[] {
  if (!config.nodeIp) {
    throw new HostsConfigError('PEERPULL_NODE_IP: must be set for configure (the chart passes status.hostIP through the downward API)');
  }
  const all = [nodeEndpoint(config.nodeIp, config.registryAddr.port), ...config.mirrorTargets];
  return [...new Set(all)];
}

/** Writes hosts.toml for every mirrored registry; see the header of this file for the backup scheme. */
export async function configure(config: Config): Promise<Report> {
  const root = path.resolve(config.containerdConfigPath);
  const names = [...new Set((config.mirroredRegistries.length ? config.mirroredRegistries : [DEFAULT_DIR]).map(checkedDirName))];
  const endpoints = checkEndpoints(config);
  const report: Report = { command: 'configure', configPath: root, ok: true, registries: [], warnings: [] };
  await mkdir(root, { recursive: true, mode: 0o755 });
  const options: Options = {
    endpoints,
    resolveTags: config.resolveTags,
    dialTimeoutMs: config.mirrorDialTimeout,
    keepExistingHosts: config.keepExistingHosts,
  };
  for (const registry of names) {
    try {
      report.registries.push(await configureOne(root, registry, options));
    } catch (err) {
      report.ok = false;
      report.registries.push({ registry, dir: path.join(root, registry), action: 'failed', message: `${(err as Error).message}; its hosts.toml was left as it was` });
    }
  }
  // Registries configured by an earlier run but no longer mirrored go back to what they were.
  const wanted = new Set<string>();
  for (const n of names) wanted.add(await realpath(path.join(root, n)).catch(() => path.join(root, n)));
  for (const dir of await managedDirs(root)) {
    if (wanted.has(await realpath(dir).catch(() => dir))) continue;
    const r = await cleanupOneSafely(dir, report);
    if (r) {
      r.message = [r.message, 'no longer in PEERPULL_MIRRORED_REGISTRIES'].filter(Boolean).join('; ');
      report.registries.push(r);
    }
  }
  // containerd uses the first existing directory of <host>, then _default: a registry with its
  // own directory never sees the _default mirror.
  if (names.includes(DEFAULT_DIR)) {
    const shadowing = [];
    for (const e of await readdir(root, { withFileTypes: true })) {
      if (e.isDirectory() && e.name !== DEFAULT_DIR && !(await hasState(path.join(root, e.name)))) shadowing.push(e.name);
    }
    if (shadowing.length) {
      report.warnings.push(
        `containerd uses ${shadowing.map((s) => `${root}/${s}`).join(', ')} instead of ${DEFAULT_DIR} for ${shadowing.length === 1 ? 'that registry' : 'those registries'}, ` +
          `so pulls from ${shadowing.join(', ')} bypass peerpull: list them in PEERPULL_MIRRORED_REGISTRIES`,
      );
    }
  }
  return report;
}

// ---- cleanup ----

async function hasState(dir: string): Promise<boolean> {
  if ((await exists(path.join(dir, BACKUP_FILE))) || (await exists(path.join(dir, NONE_MARKER)))) return true;
  const current = await readOrNull(path.join(dir, HOSTS_FILE)).catch(() => null);
  return current !== null && isManaged(current);
}

/** Registry directories under `root` that hold peerpull state or a peerpull-written hosts.toml. */
async function managedDirs(root: string): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(root, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: string[] = [];
  const seen = new Set<string>();
  for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const dir = path.join(root, e.name);
    // A linked registry directory is what containerd reads too, so configure wrote through it.
    if (!e.isDirectory() && !(e.isSymbolicLink() && (await stat(dir).then((st) => st.isDirectory(), () => false)))) continue;
    const real = await realpath(dir).catch(() => dir);
    if (seen.has(real)) continue; // one directory under two names is handled once
    seen.add(real);
    if (await hasState(dir)) out.push(dir);
  }
  return out;
}

async function cleanupOne(dir: string): Promise<RegistryReport | null> {
  const registry = path.basename(dir);
  const file = path.join(dir, HOSTS_FILE);
  const backupFile = path.join(dir, BACKUP_FILE);
  const markerFile = path.join(dir, NONE_MARKER);
  await removeTemps(dir);
  const current = await readOrNull(file);
  const backup = await readOrNull(backupFile);
  const markerText = await readOrNull(markerFile);
  if (backup === null && markerText === null) {
    if (current !== null && isManaged(current)) {
      await unlink(file);
      await syncDir(dir);
      return { registry, dir, action: 'removed', message: 'peerpull hosts.toml without backup state' };
    }
    return null;
  }
  if (current !== null && !isManaged(current)) {
    // Replaced by someone else after configure (or restored already but not tidied): keep it.
    if (backup !== null) await unlink(backupFile);
    if (markerText !== null) await unlink(markerFile);
    await syncDir(dir);
    const same = backup !== null && current.equals(backup);
    return same
      ? { registry, dir, action: 'restored' }
      : { registry, dir, action: 'left', message: 'hosts.toml was changed by someone else after configure; left as it is' };
  }
  if (backup !== null) {
    await atomicWrite(file, backup, await modeOf(backupFile, 0o644));
    await unlink(backupFile);
    if (markerText !== null) await unlink(markerFile);
    await syncDir(dir);
    return { registry, dir, action: 'restored' };
  }
  if (current !== null) await unlink(file);
  let createdDirectory = false;
  try {
    createdDirectory = JSON.parse(markerText!.toString('utf8')).createdDirectory === true;
  } catch {
    // an unreadable marker: keep the directory
  }
  await unlink(markerFile);
  await syncDir(dir);
  if (createdDirectory) {
    try {
      await rmdir(dir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'ENOENT') throw err;
    }
  }
  return { registry, dir, action: 'removed' };
}

async function cleanupOneSafely(dir: string, report: Report): Promise<RegistryReport | null> {
  try {
    return await cleanupOne(dir);
  } catch (err) {
    report.ok = false;
    return { registry: path.basename(dir), dir, action: 'failed', message: (err as Error).message };
  }
}

/**
 * Restores every registry directory under the config path that peerpull changed, byte for byte.
 * Directories are found by their peerpull state, not by the current settings, so a registry
 * dropped from PEERPULL_MIRRORED_REGISTRIES is restored too. Running it again finds nothing.
 */
export async function cleanup(config: Config): Promise<Report> {
  const root = path.resolve(config.containerdConfigPath);
  const report: Report = { command: 'cleanup', configPath: root, ok: true, registries: [], warnings: [] };
  for (const dir of await managedDirs(root)) {
    const r = await cleanupOneSafely(dir, report);
    if (r) report.registries.push(r);
  }
  return report;
}

/** Human-readable lines for the CLI. */
export function formatReport(r: Report): string {
  const lines = [`peerpull ${r.command}: ${r.configPath}`];
  if (r.registries.length === 0) lines.push(r.command === 'cleanup' ? '  nothing to clean up' : '  nothing to do');
  for (const e of r.registries) {
    let s = `  ${e.registry}: ${e.action}`;
    if (e.backup) s += ` (backup ${e.backup === 'created' ? 'saved' : 'already saved'})`;
    if (e.kept?.length) s += `, kept ${e.kept.join(', ')}`;
    if (e.message) s += `: ${e.message}`;
    lines.push(s);
  }
  for (const w of r.warnings) lines.push(`  warning: ${w}`);
  return lines.join('\n') + '\n';
}

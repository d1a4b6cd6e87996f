// Every PEERPULL_* setting in one place: name, default, validation and the line README's
// configuration table is generated from (a test keeps the two identical).
// CLI flags mirror the variables: PEERPULL_REGISTRY_ADDR <-> --registry-addr.

import os from 'node:os';
import path from 'node:path';

export class ConfigError extends Error {
  constructor(readonly variable: string, message: string) {
    super(`${variable}: ${message}`);
    this.name = 'ConfigError';
  }
}

/** host:port to listen on; host '' means all interfaces. */
export interface ListenAddress {
  host: string;
  port: number;
}

export type StoreSpec = { kind: 'containerd' } | { kind: 'oci-layout'; dir: string };
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

interface Setting<T> {
  /** Variable name without the PEERPULL_ prefix. */
  name: string;
  default: string;
  doc: string;
  parse(raw: string, variable: string): T;
}

function setting<T>(name: string, def: string, doc: string, parse: (raw: string, variable: string) => T): Setting<T> {
  return { name, default: def, doc, parse };
}

// ---- parsers (each error names the variable) ----

export function parseDuration(raw: string, variable: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(raw.trim());
  if (!m) throw new ConfigError(variable, `"${raw}" is not a duration (use e.g. 500ms, 30s, 5m, 1h)`);
  const n = Number(m[1]);
  const ms = n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
  return Math.round(ms);
}

export function parseSize(raw: string, variable: string): number {
  const m = /^(\d+)(Ki|Mi|Gi)?$/.exec(raw.trim());
  if (!m) throw new ConfigError(variable, `"${raw}" is not a size (use bytes or a Ki/Mi/Gi suffix, e.g. 256Ki)`);
  const n = Number(m[1]) * (m[2] ? { Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3 }[m[2] as 'Ki' | 'Mi' | 'Gi'] : 1);
  if (!Number.isSafeInteger(n)) throw new ConfigError(variable, `"${raw}" is too large`);
  return n;
}

function intIn(min: number, max: number) {
  return (raw: string, variable: string): number => {
    const t = raw.trim();
    if (!/^-?\d+$/.test(t)) throw new ConfigError(variable, `"${raw}" is not an integer`);
    const n = Number(t);
    if (n < min || n > max) throw new ConfigError(variable, `${n} is outside ${min}..${max}`);
    return n;
  };
}

function durationIn(minMs: number, maxMs: number) {
  return (raw: string, variable: string): number => {
    const ms = parseDuration(raw, variable);
    if (ms < minMs || ms > maxMs) throw new ConfigError(variable, `${raw} is outside ${minMs}ms..${maxMs}ms`);
    return ms;
  };
}

function sizeIn(min: number, max: number) {
  return (raw: string, variable: string): number => {
    const n = parseSize(raw, variable);
    if (n < min || n > max) throw new ConfigError(variable, `${raw} is outside ${min}..${max} bytes`);
    return n;
  };
}

export function parseListenAddress(raw: string, variable: string): ListenAddress {
  const t = raw.trim();
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:\s\[\]]*)):(\d{1,5})$/.exec(t);
  if (!m) throw new ConfigError(variable, `"${raw}" is not host:port (e.g. :5000, 127.0.0.1:5000, [::1]:5000)`);
  const port = Number(m[3]);
  if (port > 65535) throw new ConfigError(variable, `port ${port} is out of range`);
  return { host: m[1] ?? m[2] ?? '', port };
}

function parseStore(raw: string, variable: string): StoreSpec {
  const t = raw.trim();
  if (t === 'containerd') return { kind: 'containerd' };
  if (t.startsWith('oci-layout:') && t.length > 'oci-layout:'.length) {
    return { kind: 'oci-layout', dir: path.resolve(t.slice('oci-layout:'.length)) };
  }
  throw new ConfigError(variable, `"${raw}" must be "containerd" or "oci-layout:<dir>"`);
}

function parseAbsolutePath(raw: string, variable: string): string {
  if (!path.isAbsolute(raw)) throw new ConfigError(variable, `"${raw}" must be an absolute path`);
  return path.normalize(raw);
}

function parseNonEmpty(raw: string, variable: string): string {
  const t = raw.trim();
  if (!t) throw new ConfigError(variable, 'must not be empty');
  return t;
}

function parseLogLevel(raw: string, variable: string): LogLevel {
  const t = raw.trim().toLowerCase();
  if (t === 'debug' || t === 'info' || t === 'warn' || t === 'error') return t;
  throw new ConfigError(variable, `"${raw}" must be one of debug, info, warn, error`);
}

function parseRegistryHost(raw: string, variable: string): string {
  const t = raw.trim().toLowerCase();
  if (!/^[a-z0-9.-]+(:\d{1,5})?$/.test(t)) throw new ConfigError(variable, `"${raw}" is not a registry host`);
  return t;
}

function parseWorkers(raw: string, variable: string): number {
  const n = intIn(0, 64)(raw, variable);
  // 0 = one per core, at least 2 (one can wait on a slow disk while another serves), at most 4.
  return n === 0 ? Math.min(4, Math.max(2, os.availableParallelism())) : n;
}

// ---- the settings ----

export const settings = {
  registryAddr: setting('REGISTRY_ADDR', ':5000', 'Address of the registry (OCI pull API) that containerd talks to.', parseListenAddress),
  metricsAddr: setting('METRICS_ADDR', ':9090', 'Address of the metrics endpoint (`/metrics`).', parseListenAddress),
  store: setting(
    'STORE',
    'containerd',
    'Content source: `containerd` (the node\'s content store) or `oci-layout:<dir>` (an OCI image-layout directory, the embedded default for running without containerd).',
    parseStore,
  ),
  containerdSock: setting('CONTAINERD_SOCK', '/run/containerd/containerd.sock', 'containerd gRPC socket.', parseAbsolutePath),
  containerdNamespace: setting('CONTAINERD_NAMESPACE', 'k8s.io', 'containerd namespace whose images are served.', parseNonEmpty),
  contentPath: setting(
    'CONTENT_PATH',
    '/var/lib/containerd/io.containerd.content.v1.content',
    'containerd content store directory; blobs are read from `<dir>/blobs/sha256/<hex>` when readable, else through gRPC.',
    parseAbsolutePath,
  ),
  defaultRegistry: setting('DEFAULT_REGISTRY', 'docker.io', 'Registry assumed when a request has no `?ns=` parameter.', parseRegistryHost),
  resyncInterval: setting(
    'RESYNC_INTERVAL',
    '60s',
    'How often the content index is rebuilt from the store (garbage collection deletes blobs without events).',
    durationIn(1000, 24 * 3_600_000),
  ),
  indexMaxEntries: setting('INDEX_MAX_ENTRIES', '200000', 'Most digests and tags the in-memory content index holds.', intIn(100, 10_000_000)),
  manifestCacheBytes: setting(
    'MANIFEST_CACHE_BYTES',
    '16Mi',
    'Memory for manifest bodies kept ready to serve (manifests are small and asked for often).',
    sizeIn(0, 1024 ** 3),
  ),
  workers: setting('WORKERS', '0', 'Threads in the pool that moves blob bytes; 0 = one per core, between 2 and 4.', parseWorkers),
  chunkSize: setting('CHUNK_SIZE', '256Ki', 'Size of one chunk handed from a pool thread to the front end.', sizeIn(4096, 16 * 1024 ** 2)),
  streamCredits: setting(
    'STREAM_CREDITS',
    '4',
    'Chunks one transfer may have in flight between pool and client; bounds memory per slow client to credits x chunk size.',
    intIn(1, 64),
  ),
  shutdownGrace: setting('SHUTDOWN_GRACE', '10s', 'On SIGTERM, how long in-flight transfers may run before they are cut.', durationIn(0, 600_000)),
  logLevel: setting('LOG_LEVEL', 'info', 'Least severe log level written: debug, info, warn or error.', parseLogLevel),
} as const;

type Settings = typeof settings;
export type Config = { [K in keyof Settings]: ReturnType<Settings[K]['parse']> };

export const PREFIX = 'PEERPULL_';

export function variableName(s: { name: string }): string {
  return PREFIX + s.name;
}

/** `PEERPULL_REGISTRY_ADDR` -> `--registry-addr`. */
export function flagName(s: { name: string }): string {
  return '--' + s.name.toLowerCase().replaceAll('_', '-');
}

/**
 * Builds the configuration from the environment, with CLI flags taking precedence.
 * Throws ConfigError naming the first bad variable (or flag). Unknown PEERPULL_ variables are
 * rejected too: a typo must not silently fall back to a default.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, flags: Record<string, string> = {}): Config {
  const known = new Set(Object.values(settings).map(variableName));
  for (const key of Object.keys(env)) {
    if (key.startsWith(PREFIX) && !known.has(key)) {
      throw new ConfigError(key, `unknown setting (known: ${[...known].sort().join(', ')})`);
    }
  }
  const byFlag = new Map(Object.values(settings).map((s) => [flagName(s), s] as const));
  for (const f of Object.keys(flags)) {
    if (!byFlag.has(f)) throw new ConfigError(f, 'unknown flag');
  }
  const out: Record<string, unknown> = {};
  for (const [key, s] of Object.entries(settings) as [keyof Settings, Setting<unknown>][]) {
    const flag = flags[flagName(s)];
    const fromEnv = env[variableName(s)];
    const raw = flag ?? fromEnv ?? s.default;
    out[key] = s.parse(raw, flag !== undefined ? flagName(s) : variableName(s));
  }
  return out as Config;
}

/** The README configuration table, generated so that it never drifts from the code. */
export function configTable(): string {
  const rows = Object.values(settings).map(
    (s) => `| \`${variableName(s)}\` | \`${flagName(s)}\` | ${s.default === '' ? '(empty)' : `\`${s.default}\``} | ${s.doc} |`,
  );
  return ['| variable | flag | default | meaning |', '|---|---|---|---|', ...rows].join('\n');
}

// Every PEERPULL_* setting in one place: name, default, validation and the line README's
// configuration table is generated from (a test keeps the two identical).
// CLI flags mirror the variables: PEERPULL_REGISTRY_ADDR <-> --registry-addr.

import os from 'node:os';
import path from 'node:path';
import { isIP } from 'node:net';
import { registryNameProblem } from './hosts-config.js';

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

// ---- p2p thread parsers (owner: p2p thread) ----

function parseHostname(raw: string, variable: string): string {
  const t = raw.trim().toLowerCase().replace(/\.$/, '');
  if (t.length > 253 || !/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/.test(t)) {
    throw new ConfigError(variable, `"${raw.trim()}" is not a DNS name (e.g. peerpull.kube-system.svc.cluster.local)`);
  }
  return t;
}

/** Most bootstrap names: each is resolved every interval, A and AAAA. */
const MAX_BOOTSTRAP_NAMES = 16;

/** Comma-separated DNS names, duplicates dropped; empty: none. */
function parseHostnameList(raw: string, variable: string): string[] {
  const names = [...new Set(raw.split(',').filter((x) => x.trim() !== '').map((x) => parseHostname(x, variable)))];
  if (names.length > MAX_BOOTSTRAP_NAMES) throw new ConfigError(variable, `${names.length} names listed, at most ${MAX_BOOTSTRAP_NAMES}`);
  return names;
}

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
function isIp(s: string): boolean {
  return IPV4_RE.test(s) || (/^[0-9a-f:.]+$/i.test(s) && s.includes(':'));
}

/** Comma-separated `ip`, `ip:port` or `[ipv6]:port`, in the form dns.Resolver.setServers takes. */
function parseDnsServers(raw: string, variable: string): string[] {
  const items = raw.split(',').map((x) => x.trim()).filter(Boolean);
  for (const it of items) {
    const m = /^\[([0-9a-fA-F:.]+)\](?::(\d{1,5}))?$/.exec(it) ?? /^([0-9.]+)(?::(\d{1,5}))?$/.exec(it) ?? /^([0-9a-fA-F:]+)()$/.exec(it);
    if (!m || !isIp(m[1]) || (m[2] && Number(m[2]) > 65535)) {
      throw new ConfigError(variable, `"${it}" is not a DNS server address (use ip, ip:port or [ipv6]:port)`);
    }
  }
  return items;
}

/** Comma-separated multiaddrs such as /ip4/10.0.0.5/tcp/5001 (a /p2p/<id> suffix is optional). */
function parseMultiaddrList(raw: string, variable: string): string[] {
  const items = raw.split(',').map((x) => x.trim()).filter(Boolean);
  for (const it of items) {
    if (!/^\/(ip4|ip6|dns|dns4|dns6)\/[^/]+\/tcp\/\d{1,5}(\/p2p\/[1-9A-HJ-NP-Za-km-z]+)?$/.test(it)) {
      throw new ConfigError(variable, `"${it}" is not a TCP multiaddr (e.g. /ip4/10.0.0.5/tcp/5001)`);
    }
  }
  return items;
}

function parseOptionalIp(raw: string, variable: string): string {
  const t = raw.trim();
  if (t !== '' && !isIp(t)) throw new ConfigError(variable, `"${raw}" is not an IP address`);
  return t;
}

function parseClusterName(raw: string, variable: string): string {
  const t = raw.trim();
  // It becomes part of libp2p protocol ids: keep it to a safe, printable alphabet.
  if (!/^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/.test(t)) {
    throw new ConfigError(variable, `"${raw}" must be 1-63 characters of a-z, 0-9, "." and "-", starting and ending alphanumeric`);
  }
  return t;
}

function parseClusterKey(raw: string, variable: string): string {
  const t = raw.trim().toLowerCase();
  // Never echo the key itself in the error.
  if (t !== '' && !/^[0-9a-f]{64}$/.test(t)) throw new ConfigError(variable, 'must be 64 hex characters (32 bytes, e.g. `openssl rand -hex 32`)');
  return t;
}

function parseOptionalAbsolutePath(raw: string, variable: string): string {
  return raw.trim() === '' ? '' : parseAbsolutePath(raw.trim(), variable);
}

// ---- containerd mirror configuration parsers (owner: configure/cleanup) ----

function parseMirroredRegistries(raw: string, variable: string): string[] {
  const items = [...new Set(raw.split(',').map((x) => x.trim().toLowerCase()).filter(Boolean))];
  for (const it of items) {
    const problem = registryNameProblem(it);
    if (problem) throw new ConfigError(variable, `registry ${JSON.stringify(it.slice(0, 300))} ${problem}`);
  }
  return items;
}

function parseNodeIp(raw: string, variable: string): string {
  const t = raw.trim();
  if (t !== '' && isIP(t) === 0) throw new ConfigError(variable, `"${raw}" is not an IP address`);
  return t;
}

/** Comma-separated http(s) URLs of further mirrors, tried after this node's peerpull in the given order. */
function parseMirrorTargets(raw: string, variable: string): string[] {
  const out: string[] = [];
  for (const it of raw.split(',').map((x) => x.trim()).filter(Boolean)) {
    let u: URL;
    try {
      u = new URL(it);
    } catch {
      throw new ConfigError(variable, `"${it}" is not a URL (e.g. http://10.0.0.5:30500)`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new ConfigError(variable, `"${it}" must be an http:// or https:// URL`);
    if (u.username || u.password) throw new ConfigError(variable, `"${it}" must not carry credentials`);
    if (u.search || u.hash) throw new ConfigError(variable, `"${it}" must not have a query or fragment`);
    const url = `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, '')}`;
    if (!out.includes(url)) out.push(url);
  }
  return out;
}

function parseOnOff(raw: string, variable: string): boolean {
  const t = raw.trim().toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(t)) return true;
  if (['false', '0', 'no', 'off'].includes(t)) return false;
  throw new ConfigError(variable, `"${raw}" must be true or false`);
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
  // 1 MiB x 1 in flight, the same memory per transfer as 256 KiB x 4: each chunk costs ~65 us of
  // thread wake-ups and messages, and the peer path at N=10 went from 0.48-0.55x to 0.69-0.72x of
  // a local serve (native-bench/mirror.js, alternated in one session).
  chunkSize: setting('CHUNK_SIZE', '1Mi', 'Size of one chunk handed from a pool thread to the front end.', sizeIn(4096, 16 * 1024 ** 2)),
  streamCredits: setting(
    'STREAM_CREDITS',
    '1',
    'Chunks one transfer may have in flight between pool and client; bounds memory per slow client to credits x chunk size.',
    intIn(1, 64),
  ),
  shutdownGrace: setting('SHUTDOWN_GRACE', '10s', 'On SIGTERM, how long in-flight transfers may run before they are cut.', durationIn(0, 600_000)),
  logLevel: setting('LOG_LEVEL', 'info', 'Least severe log level written: debug, info, warn or error.', parseLogLevel),
  p2p: setting(
    'P2P',
    'true',
    'Whether the p2p thread runs (DHT routing, fetching from peers). false: serve this node\'s content only, every miss is a 404.',
    parseOnOff,
  ),
  mirrorLookupTimeout: setting(
    'MIRROR_LOOKUP_TIMEOUT',
    '100ms',
    'Deadline of the provider lookup for a request this node cannot serve; when it passes, the answer is 404 and containerd goes on to the next host. A miss costs this much; too short, and a busy or freshly started node misses content peers have (which fails the pull when the upstream is down).',
    durationIn(1, 10_000),
  ),
  peerHedgeDelay: setting(
    'PEER_HEDGE_DELAY',
    '20ms',
    'Least time a peer may take to answer before the next provider is asked too (the recent 90th percentile of peer answer times is used when larger).',
    durationIn(1, 60_000),
  ),
  peerStallTimeout: setting(
    'PEER_STALL_TIMEOUT',
    '2s',
    'A peer that sends no headers, or no body bytes, for this long is abandoned for the next provider (a blob resumes from the first missing byte).',
    durationIn(10, 600_000),
  ),
  peerVerify: setting(
    'PEER_VERIFY',
    'false',
    'Hash whole blobs fetched from peers (in the pool, while streaming) and cut the transfer before its last byte if the digest does not match, reporting the peer. Off by default: containerd verifies every blob itself, and hashing cost a third of peer throughput here (0.53x to 0.36x of local). Manifests from peers are always verified.',
    parseOnOff,
  ),
  peerMaxAttempts: setting('PEER_MAX_ATTEMPTS', '3', 'Most providers one request asks, counting hedges and resumes.', intIn(1, 16)),
  shareDownloads: setting(
    'SHARE_DOWNLOADS',
    'true',
    'Share downloads still in flight: a blob no peer holds is claimed at the node its key maps to (from the DNS answer); the first node to ask fetches it upstream, every later one streams that download from the first as it grows, so a pull storm costs the upstream one copy. Needs DNS bootstrap, and content store files peerpull can read to serve its own downloads.',
    parseOnOff,
  ),
  downloadWait: setting(
    'DOWNLOAD_WAIT',
    '1s',
    'How long a node asked for a download it claimed waits for that download to appear in its content store (containerd opens it as it asks the mirror, so it is there at once unless containerd never went upstream); then 404, and its claim is released.',
    durationIn(0, 60_000),
  ),
  downloadStallTimeout: setting(
    'DOWNLOAD_STALL_TIMEOUT',
    '30s',
    'A shared download that grows by no byte for this long is given up, by the node serving it and the node streaming it (the upstream stalled or the download was abandoned).',
    durationIn(100, 600_000),
  ),
  // ---- containerd mirror configuration (owner: configure/cleanup) ----
  containerdConfigPath: setting(
    'CONTAINERD_CONFIG_PATH',
    '/etc/containerd/certs.d',
    'containerd registry `config_path` where `peerpull configure` writes `<registry>/hosts.toml` (and `cleanup` restores the previous files).',
    parseAbsolutePath,
  ),
  containerdConfigFile: setting(
    'CONTAINERD_CONFIG_FILE',
    '/etc/containerd/config.toml',
    'containerd\'s own config file, read (never written) by the checks of `peerpull doctor` and of `serve` at start: CRI `config_path` set, `discard_unpacked_layers` off.',
    parseAbsolutePath,
  ),
  mirroredRegistries: setting(
    'MIRRORED_REGISTRIES',
    '',
    'Comma-separated registry hosts peerpull mirrors (e.g. `docker.io,ghcr.io,registry.k8s.io`); empty: all registries, through `_default`.',
    parseMirroredRegistries,
  ),
  nodeIp: setting(
    'NODE_IP',
    '',
    'IP of this node; `configure` points containerd at `http://<NODE_IP>:<registry port>` (the chart sets it from `status.hostIP`). Required by `configure`.',
    parseNodeIp,
  ),
  mirrorTargets: setting(
    'MIRROR_TARGETS',
    '',
    'Comma-separated further mirror URLs containerd tries after this node\'s peerpull and before the upstream, in order (e.g. a NodePort fallback `http://10.0.0.5:30500`).',
    parseMirrorTargets,
  ),
  resolveTags: setting(
    'RESOLVE_TAGS',
    'true',
    'Whether containerd may resolve tags through peerpull (`capabilities = ["pull", "resolve"]`); false: digests only (`["pull"]`), tags always go upstream.',
    parseOnOff,
  ),
  keepExistingHosts: setting(
    'KEEP_EXISTING_HOSTS',
    'true',
    'Whether mirrors (`[host]` tables) of an existing hosts.toml are kept after peerpull\'s, with their certificate files; the existing `server` is always kept.',
    parseOnOff,
  ),
  mirrorDialTimeout: setting(
    'MIRROR_DIAL_TIMEOUT',
    '200ms',
    '`dial_timeout` written for peerpull\'s hosts: how fast containerd gives up connecting and falls back when peerpull is down.',
    durationIn(1, 60_000),
  ),
  // ---- p2p thread settings (owner: p2p thread) ----
  p2pAddr: setting('P2P_ADDR', ':5001', 'Address the libp2p node (DHT routing only; blobs go over HTTP) listens on, TCP, and UDP on the same port for provider asks to record holders. Every node of a cluster uses the same port.', parseListenAddress),
  advertiseIp: setting(
    'ADVERTISE_IP',
    '',
    'IP other nodes reach this node at, for p2p and registry (e.g. the pod IP from the downward API); empty: the addresses the p2p listener reports.',
    parseOptionalIp,
  ),
  bootstrapDns: setting(
    'BOOTSTRAP_DNS',
    '',
    'Headless Service name whose A/AAAA records list the cluster\'s nodes, or several comma-separated (the members are all of their records; one DNS answer holds ~4,090 A records); resolved at start, every BOOTSTRAP_INTERVAL and after losing peers. Empty: no DNS bootstrap.',
    parseHostnameList,
  ),
  dnsServers: setting('DNS_SERVERS', '', 'Comma-separated DNS servers (ip, ip:port, [ipv6]:port) for BOOTSTRAP_DNS; empty: the nameservers in /etc/resolv.conf.', parseDnsServers),
  bootstrapPeers: setting(
    'BOOTSTRAP_PEERS',
    '',
    'Comma-separated static multiaddrs to join through (e.g. /ip4/10.0.0.5/tcp/5001), for clusters without DNS; a /p2p/<id> suffix is optional.',
    parseMultiaddrList,
  ),
  bootstrapInterval: setting('BOOTSTRAP_INTERVAL', '15s', 'How often (on average; each wait is spread by +-20% so nodes started together do not resolve in step) the bootstrap DNS name is resolved again to heal after churn or partitions.', durationIn(500, 3_600_000)),
  maxConnections: setting(
    'MAX_CONNECTIONS',
    '64',
    'Most libp2p connections one node holds, counted when each opens: at the bound an idle one is closed to make room, or the new one refused. Bootstrap and the DHT work within it, so a large cluster never becomes an n-squared mesh.',
    intIn(4, 10_000),
  ),
  cluster: setting(
    'CLUSTER',
    'default',
    'Cluster name. It is part of the DHT protocol id, so clusters with different names never exchange records, and a label on the p2p metrics.',
    parseClusterName,
  ),
  clusterKey: setting(
    'CLUSTER_KEY',
    '',
    'Optional pre-shared key (64 hex characters) of a libp2p private network: nodes without it cannot connect at all.',
    parseClusterKey,
  ),
  clusterKeyFile: setting('CLUSTER_KEY_FILE', '', 'File holding the pre-shared key (64 hex characters, or a libp2p swarm.key), e.g. a mounted Secret.', parseOptionalAbsolutePath),
  dataDir: setting('DATA_DIR', '/var/lib/peerpull', 'Directory for the persistent peer identity (`peer.key`, mode 0600), reused across restarts.', parseAbsolutePath),
  reprovideInterval: setting('REPROVIDE_INTERVAL', '5m', 'How often (on average, each round spread by +-20%) this node\'s provider records are published again; must be shorter than PROVIDER_TTL.', durationIn(1000, 24 * 3_600_000)),
  dhtRefreshInterval: setting(
    'DHT_REFRESH_INTERVAL',
    '30m',
    'How often (on average, spread by +-20% per node) the DHT routing table is refreshed by a lookup per bucket, and the DHT looks up this node\'s own id; membership itself comes from BOOTSTRAP_DNS every BOOTSTRAP_INTERVAL.',
    durationIn(60_000, 24 * 3_600_000),
  ),
  providerTtl: setting(
    'PROVIDER_TTL',
    '15m',
    'How long other nodes keep a provider record. Dead nodes are dropped far sooner by liveness checks (DEAD_PEER_TIMEOUT); this bounds stale records of nodes that were never seen dead.',
    durationIn(2000, 7 * 24 * 3_600_000),
  ),
  deadPeerTimeout: setting(
    'DEAD_PEER_TIMEOUT',
    '20s',
    'Bound on how long a node that died keeps being returned as a provider: connections are pinged every half of this, and a provider that cannot be reached is dropped.',
    durationIn(1500, 600_000),
  ),
  lookupTimeout: setting('LOOKUP_TIMEOUT', '500ms', 'Deadline of a provider lookup when the caller gives none; a miss answers no later than this.', durationIn(10, 60_000)),
  lookupCacheTtl: setting('LOOKUP_CACHE_TTL', '5s', 'How long found providers of a key are reused without asking the DHT again.', durationIn(0, 600_000)),
  negativeCacheTtl: setting('NEGATIVE_CACHE_TTL', '500ms', 'How long "nobody has this key" is reused; short, so new content is found quickly.', durationIn(0, 60_000)),
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

// The status snapshot behind `/status` on the metrics port and `peerpull status`: "is it
// working?" in one place. Node identity, p2p state, what the content index holds, the last peer
// hit and recent misses, whether containerd answers, and which registries containerd has been
// pointed at this node for (the hosts.toml files on disk). JSON for tools, a small
// self-contained HTML page for people.
//
// Everything here is cheap and asynchronous: the p2p numbers come from the thread's last push
// (or one short round trip), the containerd ping and the hosts.toml scan are cached for a few
// seconds so a page left open (it refreshes itself) costs next to nothing.

import { readFile, readdir, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Config } from './config.js';
import type { ContentSource } from './content/index.js';
import { DEFAULT_DIR, HOSTS_FILE, MANAGED_HEADER, nodeEndpoint, parseHostsFile } from './hosts-config.js';
import type { Mirror, MirrorEvent, SharedDownloadEvent } from './mirror.js';
import type { P2P } from './p2p.js';
import type { P2PView } from '../shared/messages.js';

const VIEW_TEXT: Record<P2PView, string> = {
  exact: 'every DNS member: misses answered locally',
  near: 'nearly every DNS member',
  partial: 'part of the cluster: lookups query the DHT',
};

export interface StatusSnapshot {
  time: string;
  /** Short verdict: true when nothing below is wrong. */
  healthy: boolean;
  /** Plain-words problems found in this snapshot (empty when healthy). */
  problems: string[];
  /** /readyz's answer. */
  ready: boolean;
  node: {
    version: string;
    peerId: string | null;
    cluster: string;
    startedAt: string;
    uptimeSeconds: number;
    nodeIp: string | null;
    advertiseIp: string | null;
    listen: { registry: string; metrics: string; p2p: string | null };
    /** The multiaddrs the p2p node listens on and tells peers about. */
    advertised: string[];
  };
  p2p: {
    enabled: boolean;
    /** The p2p thread is up and reporting. */
    running: boolean;
    ready: boolean;
    peers: number;
    routingTable: number;
    advertisedKeys: number;
    pendingProvides: number;
    /** Advertised keys no peer took yet: retried with backoff. */
    unpublishedKeys: number;
    bootstrapDns: string | null;
    /** Members the last bootstrap DNS answer listed. */
    dnsMembers: number;
    bootstrapPeers: number;
    /** How much of the cluster the routing table holds (see P2PStatus.view). */
    view: P2PView | null;
    /** Main's copy of the thread's provider records (src/main/store-copy.ts): lookups it answers need no thread hop. */
    storeCopy: { keys: number; providers: number; finalMisses: boolean };
  };
  content: { kind: string; healthy: boolean; digests: number; tags: number };
  mirror: {
    lastPeerHit: MirrorEvent | null;
    recentMisses: MirrorEvent[];
    /** Shared downloads since start (PEERPULL_SHARE_DOWNLOADS), by event; null when p2p is off. */
    sharedDownloads: Record<SharedDownloadEvent, number> | null;
  };
  containerd: ContainerdProbe & { used: boolean };
  mirrorConfig: MirrorConfigScan;
}

// ---- containerd connectivity ----

export interface ContainerdProbe {
  socket: string;
  namespace: string;
  socketExists: boolean;
  connected: boolean;
  version: string | null;
  error: string | null;
}

/** Whether containerd answers on `socket` (its Version call), within `timeoutMs`. */
export async function probeContainerd(socket: string, namespace: string, timeoutMs = 2000): Promise<ContainerdProbe> {
  const out: ContainerdProbe = { socket, namespace, socketExists: false, connected: false, version: null, error: null };
  try {
    const st = await stat(socket);
    out.socketExists = true;
    if (!st.isSocket()) {
      out.error = `${socket} exists but is not a socket`;
      return out;
    }
  } catch (err) {
    out.error = (err as NodeJS.ErrnoException).code === 'ENOENT' ? `${socket} does not exist` : (err as Error).message;
    return out;
  }
  // Loaded only when used: nodes serving an OCI layout never load gRPC.
  const { ContainerdClient } = await import('./containerd/index.js');
  const client = await ContainerdClient.create(socket, namespace);
  try {
    const v = await client.ping(timeoutMs);
    out.connected = true;
    out.version = v.version;
  } catch (err) {
    out.error = (err as Error).message;
  } finally {
    client.close();
  }
  return out;
}

// ---- mirror config on disk ----

export interface MirrorConfigEntry {
  /** Registry host, or `_default` (every registry without its own directory). */
  registry: string;
  file: string;
  /** Written by `peerpull configure` (starts with its header). */
  managed: boolean;
  /** A `[host]` of this file is this node's peerpull endpoint. */
  pointsHere: boolean;
  server: string | null;
  /** The `[host]` URLs in containerd's order. */
  hosts: string[];
  error: string | null;
}

export interface MirrorConfigScan {
  configPath: string;
  exists: boolean;
  /** This node's endpoint(s) a hosts.toml should name. */
  endpoints: string[];
  /** PEERPULL_MIRRORED_REGISTRIES, or [`_default`]. */
  wanted: string[];
  registries: MirrorConfigEntry[];
  /** Wanted registries without a peerpull hosts.toml pointing here. */
  missing: string[];
  error: string | null;
}

const MAX_DIRS = 1000;

/** "name a" or "names a, b", for messages (the snapshot joins the names with ", "). */
export function dnsNames(joined: string): string {
  return joined.includes(',') ? `names ${joined}` : `name ${joined}`;
}

/** This node's registry endpoints as containerd would name them in hosts.toml. */
export function localEndpoints(nodeIp: string, registryPort: number): string[] {
  if (nodeIp) return [nodeEndpoint(nodeIp, registryPort)];
  const out = new Set<string>([`http://127.0.0.1:${registryPort}`, `http://localhost:${registryPort}`]);
  for (const addrs of Object.values(os.networkInterfaces())) {
    for (const a of addrs ?? []) out.add(a.family === 'IPv6' ? `http://[${a.address}]:${registryPort}` : `http://${a.address}:${registryPort}`);
  }
  return [...out];
}

export function sameEndpoint(url: string, endpoints: string[]): boolean {
  const norm = (u: string) => u.replace(/\/+$/, '').toLowerCase();
  const n = norm(url);
  if (endpoints.some((e) => norm(e) === n)) return true;
  // Without PEERPULL_NODE_IP every local address counts, and any address in 127.0.0.0/8 is local.
  const loop = /^http:\/\/127\.\d+\.\d+\.\d+(:\d+)$/.exec(n);
  return endpoints.length > 1 && !!loop && endpoints.some((e) => norm(e) === `http://127.0.0.1${loop[1]}`);
}

/** Reads every `<configPath>/<registry>/hosts.toml`: which are peerpull's, and which point at this node. */
export async function scanMirrorConfig(configPath: string, wantedRegistries: string[], endpoints: string[]): Promise<MirrorConfigScan> {
  const wanted = wantedRegistries.length > 0 ? wantedRegistries : [DEFAULT_DIR];
  const scan: MirrorConfigScan = { configPath, exists: false, endpoints, wanted, registries: [], missing: [], error: null };
  let names: string[];
  try {
    names = (await readdir(configPath, { withFileTypes: true })).filter((e) => e.isDirectory() || e.isSymbolicLink()).map((e) => e.name).sort();
    scan.exists = true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    scan.error = code === 'ENOENT' ? `${configPath} does not exist` : `${configPath} cannot be read (${code ?? (err as Error).message})`;
    scan.missing = [...wanted];
    return scan;
  }
  for (const name of names.slice(0, MAX_DIRS)) {
    const file = path.join(configPath, name, HOSTS_FILE);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      continue; // a directory of certificates only, or not a directory after all
    }
    const entry: MirrorConfigEntry = { registry: name, file, managed: text.startsWith(MANAGED_HEADER), pointsHere: false, server: null, hosts: [], error: null };
    try {
      const parsed = parseHostsFile(text, file);
      entry.server = parsed.server ?? null;
      entry.hosts = parsed.hosts.map(([u]) => u);
      entry.pointsHere = entry.hosts.some((h) => sameEndpoint(h, endpoints));
    } catch (err) {
      entry.error = (err as Error).message;
    }
    scan.registries.push(entry);
  }
  scan.missing = wanted.filter((w) => !scan.registries.some((r) => r.registry === w && r.managed && r.pointsHere));
  return scan;
}

// ---- the builder ----

export interface StatusDeps {
  config: Config;
  source: ContentSource;
  ready: () => boolean;
  p2p: () => P2P | undefined;
  mirror?: Mirror;
}

const CACHE_MS = 5000;

let versionPromise: Promise<string> | undefined;
/** peerpull's version from package.json (dist/src/main -> repository root). */
export function peerpullVersion(): Promise<string> {
  versionPromise ??= readFile(new URL('../../../package.json', import.meta.url), 'utf8').then(
    (t) => String((JSON.parse(t) as { version?: string }).version ?? 'unknown'),
    () => 'unknown',
  );
  return versionPromise;
}

function addr(a: { host: string; port: number }): string {
  return `${a.host.includes(':') ? `[${a.host}]` : a.host || '*'}:${a.port}`;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(undefined), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      () => {
        clearTimeout(t);
        resolve(undefined);
      },
    );
  });
}

export class StatusBuilder {
  /** Set once the ports are bound (they differ from the configured ones with port 0). */
  registryPort = 0;
  metricsPort = 0;
  private readonly startedAt = new Date();
  private containerdCache: { at: number; value: Promise<ContainerdProbe> } | undefined;
  private mirrorCache: { at: number; value: Promise<MirrorConfigScan> } | undefined;

  constructor(private readonly deps: StatusDeps) {}

  private containerd(): Promise<ContainerdProbe> {
    const { config } = this.deps;
    if (!this.containerdCache || Date.now() - this.containerdCache.at > CACHE_MS) {
      const value = probeContainerd(config.containerdSock, config.containerdNamespace, 1500).catch(
        (err: unknown): ContainerdProbe => ({ socket: config.containerdSock, namespace: config.containerdNamespace, socketExists: false, connected: false, version: null, error: (err as Error).message }),
      );
      this.containerdCache = { at: Date.now(), value };
    }
    return this.containerdCache.value;
  }

  private mirrorConfig(): Promise<MirrorConfigScan> {
    const { config } = this.deps;
    if (!this.mirrorCache || Date.now() - this.mirrorCache.at > CACHE_MS) {
      const port = config.registryAddr.port || this.registryPort;
      let endpoints: string[];
      try {
        endpoints = localEndpoints(config.nodeIp, port);
      } catch {
        endpoints = [];
      }
      const value = scanMirrorConfig(config.containerdConfigPath, config.mirroredRegistries, endpoints);
      this.mirrorCache = { at: Date.now(), value };
    }
    return this.mirrorCache.value;
  }

  async snapshot(): Promise<StatusSnapshot> {
    const { config, source, mirror } = this.deps;
    const p2p = this.deps.p2p();
    const usesContainerd = config.store.kind === 'containerd';
    const [version, p2pStatus, ctd, mirrorConfig] = await Promise.all([
      peerpullVersion(),
      p2p ? withTimeout(p2p.status(), 1000).then((s) => s ?? p2p.lastStatus()) : Promise.resolve(undefined),
      usesContainerd
        ? this.containerd()
        : Promise.resolve<ContainerdProbe>({ socket: config.containerdSock, namespace: config.containerdNamespace, socketExists: false, connected: false, version: null, error: null }),
      this.mirrorConfig(),
    ]);
    const now = new Date();
    const snap: StatusSnapshot = {
      time: now.toISOString(),
      healthy: true,
      problems: [],
      ready: this.deps.ready(),
      node: {
        version,
        peerId: p2pStatus?.peerId ?? null,
        cluster: config.cluster,
        startedAt: this.startedAt.toISOString(),
        uptimeSeconds: Math.round((now.getTime() - this.startedAt.getTime()) / 1000),
        nodeIp: config.nodeIp || null,
        advertiseIp: config.advertiseIp || null,
        listen: {
          registry: addr({ host: config.registryAddr.host, port: this.registryPort || config.registryAddr.port }),
          metrics: addr({ host: config.metricsAddr.host, port: this.metricsPort || config.metricsAddr.port }),
          p2p: config.p2p ? addr(config.p2pAddr) : null,
        },
        advertised: p2pStatus?.listenAddrs ?? [],
      },
      p2p: {
        enabled: config.p2p,
        running: p2pStatus !== undefined,
        ready: p2p?.ready() === true,
        peers: p2pStatus?.peers ?? 0,
        routingTable: p2pStatus?.routingTable ?? 0,
        advertisedKeys: p2pStatus?.advertisedKeys ?? 0,
        pendingProvides: p2pStatus?.pendingProvides ?? 0,
        unpublishedKeys: p2pStatus?.unpublishedKeys ?? 0,
        bootstrapDns: config.bootstrapDns.join(', ') || null,
        dnsMembers: p2pStatus?.dnsMembers ?? 0,
        bootstrapPeers: config.bootstrapPeers.length,
        view: p2pStatus?.view ?? null,
        storeCopy: p2p?.storeCopyStats() ?? { keys: 0, providers: 0, finalMisses: false },
      },
      content: { kind: source.kind, healthy: source.healthy(), digests: source.index.digestCount, tags: source.index.tagCount },
      mirror: {
        lastPeerHit: mirror?.lastPeerHit ?? null,
        recentMisses: [...(mirror?.recentMisses ?? [])].reverse(),
        sharedDownloads: mirror && config.shareDownloads ? { ...mirror.sharedCounts } : null,
      },
      containerd: { ...ctd, used: usesContainerd },
      mirrorConfig,
    };
    snap.problems = problemsOf(snap);
    snap.healthy = snap.problems.length === 0;
    return snap;
  }
}

/** What is wrong in a snapshot, in plain words (the doctor prints these for a running node). */
export function problemsOf(s: StatusSnapshot): string[] {
  const out: string[] = [];
  if (!s.content.healthy) out.push(`the content source (${s.content.kind}) is not healthy: nothing local can be served`);
  if (s.containerd.used && !s.containerd.connected) out.push(`containerd does not answer on ${s.containerd.socket}${s.containerd.error ? ` (${s.containerd.error})` : ''}`);
  if (s.p2p.enabled) {
    if (!s.p2p.running) out.push('the p2p thread is not running: content of other nodes cannot be found');
    // A node alone in its cluster by DNS (a one-node cluster) has no peers by design.
    else if (s.p2p.peers === 0 && !(s.p2p.ready && s.p2p.bootstrapDns && s.p2p.dnsMembers === 1)) {
      out.push(
        s.p2p.bootstrapDns
          ? `no peers: the bootstrap DNS ${dnsNames(s.p2p.bootstrapDns)} listed ${s.p2p.dnsMembers} member(s) and none could be reached`
          : s.p2p.bootstrapPeers > 0
            ? 'no peers: none of PEERPULL_BOOTSTRAP_PEERS could be reached'
            : 'no peers: neither PEERPULL_BOOTSTRAP_DNS nor PEERPULL_BOOTSTRAP_PEERS is set, so this node can never find others',
      );
    }
  }
  const mc = s.mirrorConfig;
  if (!mc.exists) out.push(`no containerd mirror config: ${mc.error ?? `${mc.configPath} is missing`}`);
  else if (mc.missing.length > 0) out.push(`no peerpull hosts.toml pointing at this node for ${mc.missing.join(', ')} under ${mc.configPath}: containerd pulls those from upstream`);
  return out;
}

// ---- rendering ----

/** What of the advertised keys is not in the DHT yet, for both formats ('' when all are). */
function publishingNote(p: { pendingProvides: number; unpublishedKeys: number }): string {
  return `${p.pendingProvides ? ` (${p.pendingProvides} still being published)` : ''}${p.unpublishedKeys ? ` (${p.unpublishedKeys} no peer took yet, retried)` : ''}`;
}

function esc(v: unknown): string {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

function yesNo(ok: boolean, yes = 'yes', no = 'no'): string {
  return ok ? `<span class="ok">${esc(yes)}</span>` : `<span class="bad">${esc(no)}</span>`;
}

function rows(pairs: [string, string][]): string {
  return pairs.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${v}</td></tr>`).join('');
}

/** A small self-contained page (no scripts, no external assets); it refreshes every 10 s. */
export function renderStatusHtml(s: StatusSnapshot): string {
  const ev = (e: MirrorEvent) =>
    `<tr><td>${esc(e.time)}</td><td>${esc(e.kind)}</td><td class="mono">${esc(e.key)}</td><td>${esc(e.outcome)}</td><td class="mono">${esc(e.peer ?? '')}</td><td>${esc(e.detail ?? '')}</td></tr>`;
  const mc = s.mirrorConfig;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="10">
<title>peerpull status${s.node.peerId ? ` - ${esc(s.node.peerId.slice(-8))}` : ''}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:70em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.4em;border-bottom:1px solid #ddd}
table{border-collapse:collapse}th,td{text-align:left;padding:2px 10px 2px 0;vertical-align:top}
th{font-weight:600;color:#555}.mono,code{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.ok{color:#176d2c;font-weight:600}.bad{color:#b3261e;font-weight:600}.box{padding:.6em 1em;border-radius:4px}
.good{background:#e6f4ea}.warn{background:#fce8e6}
</style></head><body>
<h1>peerpull ${esc(s.node.version)} <small>cluster ${esc(s.node.cluster)}</small></h1>
<div class="box ${s.healthy ? 'good' : 'warn'}">${
    s.healthy ? '<span class="ok">Working</span>: nothing wrong found.' : `<span class="bad">Problems</span><ul>${s.problems.map((p) => `<li>${esc(p)}</li>`).join('')}</ul>`
  }</div>
<p>As of ${esc(s.time)} &middot; <a href="?format=json">JSON</a> &middot; <a href="/metrics">metrics</a></p>
<h2>Node</h2><table>${rows([
    ['peer id', `<span class="mono">${esc(s.node.peerId ?? '(p2p not running)')}</span>`],
    ['ready', yesNo(s.ready)],
    ['up since', `${esc(s.node.startedAt)} (${esc(s.node.uptimeSeconds)} s)`],
    ['node IP', esc(s.node.nodeIp ?? '(not set)')],
    ['advertise IP', esc(s.node.advertiseIp ?? '(listener addresses)')],
    ['registry listens on', esc(s.node.listen.registry)],
    ['metrics listen on', esc(s.node.listen.metrics)],
    ['p2p listens on', esc(s.node.listen.p2p ?? '(p2p off)')],
    ['advertised addresses', s.node.advertised.map((a) => `<div class="mono">${esc(a)}</div>`).join('') || '-'],
  ])}</table>
<h2>Peers</h2><table>${rows(
    s.p2p.enabled
      ? [
          ['p2p thread', yesNo(s.p2p.running, 'running', 'not running')],
          ['connected to the cluster', yesNo(s.p2p.ready)],
          ['peers connected', s.p2p.peers > 0 ? esc(s.p2p.peers) : '<span class="bad">0</span>'],
          ['routing table', `${esc(s.p2p.routingTable)}${s.p2p.view ? ` (${esc(VIEW_TEXT[s.p2p.view])})` : ''}`],
          ['records copied to main', `${esc(s.p2p.storeCopy.keys)} keys, ${esc(s.p2p.storeCopy.providers)} providers${s.p2p.storeCopy.finalMisses ? '; misses answered here' : ''}`],
          ['keys advertised', `${esc(s.p2p.advertisedKeys)}${esc(publishingNote(s.p2p))}`],
          ['bootstrap DNS', s.p2p.bootstrapDns ? `${esc(s.p2p.bootstrapDns)} (${esc(s.p2p.dnsMembers)} members)` : '(not set)'],
          ['bootstrap peers', esc(s.p2p.bootstrapPeers)],
        ]
      : [['p2p', 'off (PEERPULL_P2P=false): only this node\'s content is served']],
  )}</table>
<h2>Content</h2><table>${rows([
    ['source', esc(s.content.kind)],
    ['healthy', yesNo(s.content.healthy)],
    ['digests', esc(s.content.digests)],
    ['tags', esc(s.content.tags)],
  ])}</table>
<h2>containerd</h2><table>${rows(
    s.containerd.used
      ? [
          ['socket', `<span class="mono">${esc(s.containerd.socket)}</span>`],
          ['answers', yesNo(s.containerd.connected)],
          ['version', esc(s.containerd.version ?? '-')],
          ...(s.containerd.error ? ([['error', esc(s.containerd.error)]] as [string, string][]) : []),
        ]
      : [['not used', `content comes from ${esc(s.content.kind)}`]],
  )}</table>
<h2>Mirror config on disk</h2>
<p><span class="mono">${esc(mc.configPath)}</span>${mc.error ? ` - <span class="bad">${esc(mc.error)}</span>` : ''}; this node is ${mc.endpoints.slice(0, 1).map((e) => `<span class="mono">${esc(e)}</span>`).join('') || '?'}</p>
${
  mc.registries.length
    ? `<table><tr><th>registry</th><th>peerpull's</th><th>points here</th><th>hosts (in order)</th><th>server</th></tr>${mc.registries
        .map(
          (r) =>
            `<tr><td>${esc(r.registry)}</td><td>${yesNo(r.managed)}</td><td>${yesNo(r.pointsHere)}</td><td class="mono">${r.hosts.map(esc).join('<br>')}${r.error ? `<span class="bad">${esc(r.error)}</span>` : ''}</td><td class="mono">${esc(r.server ?? '')}</td></tr>`,
        )
        .join('')}</table>`
    : '<p>No hosts.toml files.</p>'
}
${mc.missing.length ? `<p class="bad">Not pointed at this node: ${esc(mc.missing.join(', '))}</p>` : ''}
<h2>Last peer pull</h2>
${s.mirror.lastPeerHit ? `<table><tr><th>time</th><th>kind</th><th>key</th><th>outcome</th><th>peer</th><th></th></tr>${ev(s.mirror.lastPeerHit)}</table>` : '<p>None since start.</p>'}
<h2>Shared downloads</h2>
${s.mirror.sharedDownloads ? `<p>${esc(sharedLine(s.mirror.sharedDownloads))}</p>` : '<p>Off (PEERPULL_SHARE_DOWNLOADS=false, or p2p off).</p>'}
<h2>Recent misses</h2>
${s.mirror.recentMisses.length ? `<table><tr><th>time</th><th>kind</th><th>key</th><th>outcome</th><th></th><th>detail</th></tr>${s.mirror.recentMisses.map(ev).join('')}</table>` : '<p>None since start.</p>'}
</body></html>
`;
}

/** Plain text for `peerpull status`. */
export function formatStatusText(s: StatusSnapshot): string {
  const L: string[] = [];
  L.push(`peerpull ${s.node.version} - cluster ${s.node.cluster} - ${s.healthy ? 'working' : 'PROBLEMS'}${s.ready ? '' : ' (not ready)'}`);
  for (const p of s.problems) L.push(`  ! ${p}`);
  L.push('');
  L.push('node');
  L.push(`  peer id        ${s.node.peerId ?? '(p2p not running)'}`);
  L.push(`  up since       ${s.node.startedAt} (${s.node.uptimeSeconds} s)`);
  L.push(`  node ip        ${s.node.nodeIp ?? '(not set)'}`);
  L.push(`  listens        registry ${s.node.listen.registry}, metrics ${s.node.listen.metrics}, p2p ${s.node.listen.p2p ?? 'off'}`);
  for (const a of s.node.advertised) L.push(`  advertises     ${a}`);
  L.push('p2p');
  if (!s.p2p.enabled) L.push('  off (PEERPULL_P2P=false)');
  else {
    L.push(`  thread         ${s.p2p.running ? 'running' : 'NOT RUNNING'}, ${s.p2p.ready ? 'ready' : 'not ready'}`);
    L.push(`  peers          ${s.p2p.peers} connected, ${s.p2p.routingTable} in the routing table${s.p2p.view ? ` (${VIEW_TEXT[s.p2p.view]})` : ''}`);
    L.push(`  store copy     ${s.p2p.storeCopy.keys} keys, ${s.p2p.storeCopy.providers} providers${s.p2p.storeCopy.finalMisses ? ', misses answered in main' : ''}`);
    L.push(`  advertised     ${s.p2p.advertisedKeys} keys${publishingNote(s.p2p)}`);
    L.push(`  bootstrap      ${s.p2p.bootstrapDns ? `DNS ${s.p2p.bootstrapDns} (${s.p2p.dnsMembers} members)` : 'no DNS'}, ${s.p2p.bootstrapPeers} static peers`);
  }
  L.push('content');
  L.push(`  source         ${s.content.kind}, ${s.content.healthy ? 'healthy' : 'NOT HEALTHY'}: ${s.content.digests} digests, ${s.content.tags} tags`);
  L.push('containerd');
  if (!s.containerd.used) L.push(`  not used (content from ${s.content.kind})`);
  else L.push(`  ${s.containerd.socket}: ${s.containerd.connected ? `answers (containerd ${s.containerd.version})` : `NOT ANSWERING${s.containerd.error ? ` (${s.containerd.error})` : ''}`}`);
  L.push('mirror config');
  const mc = s.mirrorConfig;
  L.push(`  ${mc.configPath}${mc.error ? `: ${mc.error}` : ''}`);
  for (const r of mc.registries) {
    L.push(`  ${r.registry.padEnd(24)} ${r.managed ? "peerpull's" : 'not peerpull\'s'}, ${r.pointsHere ? 'points here' : 'does NOT point here'}${r.error ? ` (${r.error})` : ''}`);
  }
  if (mc.missing.length) L.push(`  missing: ${mc.missing.join(', ')}`);
  L.push('mirror');
  const h = s.mirror.lastPeerHit;
  L.push(`  last peer pull ${h ? `${h.time} ${h.kind} ${h.key}${h.peer ? ` from ${h.peer}` : ''}` : 'none since start'}`);
  L.push(`  shared downloads ${s.mirror.sharedDownloads ? sharedLine(s.mirror.sharedDownloads) : 'off'}`);
  if (s.mirror.recentMisses.length === 0) L.push('  recent misses  none');
  for (const [i, m] of s.mirror.recentMisses.slice(0, 10).entries()) {
    L.push(`  ${i === 0 ? 'recent misses ' : ' '.repeat(14)} ${m.time} ${m.kind} ${m.key}${m.detail ? ` (${m.detail})` : ''}`);
  }
  return L.join('\n') + '\n';
}

function sharedLine(c: Record<SharedDownloadEvent, number>): string {
  return `${c.fetching} fetched upstream for the cluster, ${c.joined} streamed from another node's download (${c.join_failed} failed), ${c.served} served to peers, ${c.unavailable} claimed but never started`;
}

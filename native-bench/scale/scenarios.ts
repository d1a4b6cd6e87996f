// The scale scenarios, run in one sequence on one cluster of N real p2p stacks:
// cold start (everyone at once) -> steady state (connections, routing tables, lookups, memory)
// -> a second cluster under the same DNS name (isolation by cluster name) -> churn (10% killed
// by SIGKILL and replaced by nodes with new addresses) -> a partition healed (optional, needs
// nftables in our own network namespace). Every figure comes back in one ScaleResult.

import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { bootstrapCount, sortAddresses } from '../../src/p2p/bootstrap.js';
import { ScaleCluster, scaleIp, type Host } from './cluster.js';
import { dilation } from './dilation.js';
import { Partition } from './netfilter.js';
import type { FindResult, HostSnapshot, NodeSnapshot } from './protocol.js';

export interface ScaleOptions {
  n: number;
  /** First two octets of the loopback range the run owns, e.g. "127.100". */
  prefix: string;
  p2pPort: number;
  maxConnections: number;
  deadPeerTimeoutMs: number;
  bootstrapIntervalMs: number;
  nodesPerHost: number;
  keysPerNode: number;
  /** Lookups per second across the cluster, and how many in steady state. */
  lookupRate: number;
  steadyLookups: number;
  lookupDeadlineMs: number;
  /** How long to wait for every node to be ready before giving up on the run. */
  readyTimeoutMs: number;
  /**
   * Wait after the cold start before steady state is measured. A node's start keeps it busy
   * well after it is ready (the DHT's first routing-table refresh, record catch-up): on 2 cores
   * shared by hundreds of nodes that tail is what an early idle window measures.
   */
  settleMs: number;
  /**
   * The window after advertising, records held and no lookups, before the steady lookups: its
   * CPU and loop delay are measured. 15 s by default; longer shows whether the cluster calms
   * down after advertising every key at once (and after the first reprovide, 4-6 min after start).
   */
  heldMs: number;
  churnShare: number;
  /** How long after the kill dead providers are watched for (and churn lookups run). */
  churnWindowMs: number;
  /**
   * When the replacements start after the kill: 0 (default) at the same moment, the harshest
   * case; a cloud autoscaler's new nodes join 30 s or more later. Separates what the kill
   * costs from what 10% of the cluster bootstrapping at once costs on these shared cores.
   */
  replaceAfterMs: number;
  /**
   * A crowd: 3x the bound (at most all others) open a connection to one node at once, as when
   * every node runs a kad-dht query for the same popular key and dials its closest peers.
   */
  crowd: boolean;
  /**
   * Bootstrap names the nodes are listed under (node i under name i mod names), every node
   * configured with all of them, as a cluster past one DNS message's ~4,090 records is. Above 1,
   * only the cold start, steady state and crowd run: the other scenarios edit one name's records.
   */
  names: number;
  isolation: boolean;
  churn: boolean;
  partition: boolean;
  log(msg: string): void;
  /** Filled phase by phase, so a run cut short (time box, Ctrl-C) still reports what it measured. */
  progress?: Partial<ScaleResult>;
}

export const DEFAULTS: Omit<ScaleOptions, 'n' | 'log'> = {
  prefix: '127.100',
  p2pPort: 7001,
  maxConnections: 64,
  deadPeerTimeoutMs: 20_000,
  bootstrapIntervalMs: 15_000,
  nodesPerHost: 200,
  keysPerNode: 1,
  lookupRate: 20,
  steadyLookups: 400,
  lookupDeadlineMs: 500,
  readyTimeoutMs: 180_000,
  names: 1,
  settleMs: 5000,
  heldMs: 15_000,
  churnShare: 0.1,
  churnWindowMs: 60_000,
  replaceAfterMs: 0,
  crowd: true,
  isolation: true,
  churn: true,
  partition: false,
};

export interface Distribution {
  count: number;
  min: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
}

export interface LookupStats {
  total: number;
  ok: number;
  successRate: number;
  latencyMs: Distribution;
  bySource: Record<string, number>;
  byOutcome: Record<string, number>;
  /** Peers asked per network query, when nodes report it. */
  queried?: Distribution;
}

export interface ScaleResult {
  n: number;
  startedAt: string;
  loadAverage: { start: number[]; end: number[] };
  cores: number;
  hosts: number;
  settings: { maxConnections: number; deadPeerTimeoutMs: number; bootstrapIntervalMs: number; keysPerNode: number; bootstrapNames?: number; dilation?: number };
  coldStart: {
    readyMs: Distribution;
    allReady: boolean;
    readyWithin60s: number;
    /** Time the hosts took to create their nodes (part of readyMs). */
    hostStartMs: number[];
    dials: { average: number; lowest: Array<{ ip: string; dials: number }>; max: { ip: string; dials: number }; maxOverAverage: number; lowestOverAverage: number };
  };
  steady: {
    connections: Distribution;
    inbound: Distribution;
    inboundLowest: Array<{ ip: string; inbound: number }>;
    routingTable: Distribution;
    overBound: number;
    advertiseMs: number;
    lookups: LookupStats;
    /** The first failed lookups, each with the asking node's account and who held the record. */
    failures: Array<Record<string, unknown>>;
    memory: { perNodeMiB: number; heapPerNodeMiB: number; hostBaseMiB: number };
    hostLoopDelayP99Ms: number[];
    /** CPU of the hosts per node while nothing but upkeep runs (pings, DNS, table refresh). */
    idleCpuSecondsPerNodePerMinute: number;
    /** Connections opened per node per minute in that idle window: reconnect churn. */
    idleDialsPerNodePerMinute: number;
    /**
     * CPU per node in the 15 s after advertising, before the lookups: upkeep with records held
     * (and whatever the advertising left running), the baseline the lookups add to.
     */
    heldCpuSecondsPerNodePerMinute: number;
    /** Host event loop delay p99 in that window. */
    heldLoopDelayP99Ms: number[];
    /** CPU per node while lookups arrive at the configured rate. */
    cpuSecondsPerNodePerMinute: number;
    /** Datagram counters summed over the nodes, from their start to the end of the lookups. */
    datagrams: { asked: number; answered: number; served: number; provided: number; taken: number };
    /** Lookup steps beyond connected peers (src/p2p/node.ts networkProviders), summed the same way. */
    lookupSteps: NodeSnapshot['lookupSteps'];
    /** Provide queries run and skipped (src/shared/messages.ts), summed from the nodes' start to the end of the lookups. */
    provideQueries: { run: number; ipHolders: number; recent: number };
    /** Connection-bound counters summed over the nodes, from their start to the end of the lookups. */
    connectionBound: { evicted: number; refusedInbound: number; refusedOutbound: number; unwanted: number };
  };
  crowd?: {
    /** The lowest-sorted surviving address (also the one every node meets first at bootstrap). */
    target: string;
    dialers: number;
    /**
     * Dials that resolved. One the target refused resolves too (the dialer's side of the upgrade
     * finished first) and is closed at once: `holding` is what stood a second later.
     */
    connected: number;
    /** Dialers with a connection to the target a second after the crowd. */
    holding: number;
    failedBy: Record<string, number>;
    /** The target's connections: most at once during the crowd (counted at every open), and after. */
    targetPeak: number;
    targetConnections: number;
    /** The target's bound counters over the crowd: idle connections closed to make room, newcomers refused. */
    evicted: number;
    refusedInbound: number;
    targetReady: boolean;
  };
  isolation?: {
    otherNodes: number;
    otherAllReady: boolean;
    otherReadyMs: Distribution;
    /** Whether the other cluster placed all its records within 60 s. */
    otherAdvertised: boolean;
    crossConnections: number;
    crossLookupsFound: number;
    crossLookups: number;
    ownLookups: LookupStats;
    connectionsMaxDuring: number;
    /** From the other cluster's stop until the hosts' loops were calm (undefined: not within 3 min). */
    calmAfterMs: number | undefined;
  };
  churn?: {
    killed: number;
    replaced: number;
    /** When the replacements started, after the kill. */
    replaceAfterMs: number;
    deadReturnedLastMs: number | undefined;
    deadLookups: number;
    deadReturned: number;
    /** Where answers naming a dead provider came from (cache, local store, network). */
    deadReturnedBySource: Record<string, number>;
    windowMs: number;
    lookups: LookupStats;
    /** Lookups of live content by 10 s after the kill: how long the cluster took to recover. */
    lookupsBy10s: Array<{ fromS: number; ok: number; total: number }>;
    /** Lookups of live content that failed: when (ms after the kill), where, and what the node knew. */
    failures: Array<{ atMs: number; ip: string; shared: boolean; outcome: string; source: string; ms: number; queried?: number; providers: number; diag?: Record<string, unknown> }>;
    replacementsReadyMs: Distribution;
    replacementsAllReady: boolean;
    replacementLookups: LookupStats;
    /** The first failed lookups of the replacements' content, each with the asker's account. */
    replacementFailures: Array<Record<string, unknown>>;
    connectionsMaxAfter: number;
    hostLoopDelayP99Ms: number[];
    /** CPU of the hosts per node over the churn window (survivors, replacements and lookups). */
    cpuSecondsPerNodePerMinute: number;
    /** Connections opened per node per minute over the churn window. */
    dialsPerNodePerMinute: number;
    /** From the end of the churn measurements until the hosts' loops were calm. */
    calmAfterMs: number | undefined;
  };
  partition?: {
    sideA: number;
    sideB: number;
    cutMs: number;
    withinSideDuring: LookupStats;
    /** After heal: time of the last failed cross-side lookup (pre-partition keys / keys added during the cut). */
    lastCrossFailureMs: { before: number | undefined; during: number | undefined };
    crossAfter: { before: LookupStats; during: LookupStats };
    windowMs: number;
    nodesWithCrossConnection: number;
    /** Within-side lookups found / asked per 10 s from the cut. */
    withinBy10s: Array<{ fromS: number; ok: number; total: number }>;
    /** The first failed within-side lookups, with the asker's account. */
    failures: Array<Record<string, unknown>>;
    /** Per host, over the cut. */
    hostLoopDelayP99Ms: number[];
    cpuSecondsPerNodePerMinute: number;
    /**
     * What all nodes did over the cut (counterDeltas): heartbeats failed (cut connections),
     * bootstrap dials that connected or timed out, datagram asks unanswered, and answers refused
     * (most arrived after the asker's lookup had ended), lookup steps.
     */
    counters: Record<string, number>;
    /** Outbound connections opened over the cut, all nodes (each a handshake at both ends). */
    connectionsOpened: number;
  };
  problems: { warnings: number; errors: number; samples: string[]; byMessage?: Record<string, number> };
  /**
   * Most connections one node held at once, over the whole run: counted by the hosts at every
   * connection open, not only when a snapshot looks (the bound is a bound at every instant).
   */
  peakConnections: number;
  /** Set on a run cut short: the phases it did not reach are absent. */
  incomplete?: string;
  /** Idle figures as soon as they are known (also in `steady`). */
  idle?: { cpuSecondsPerNodePerMinute: number; dialsPerNodePerMinute: number; advertiseMs: number };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function distribution(values: number[]): Distribution {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  const pct = (p: number) => (s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]);
  return { count: s.length, min: s[0] ?? NaN, p50: pct(50), p99: pct(99), max: s[s.length - 1] ?? NaN, mean: s.length ? s.reduce((a, b) => a + b, 0) / s.length : NaN };
}

function shuffle<T>(a: T[]): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

const pick = <T>(a: T[]): T => a[Math.floor(Math.random() * a.length)];
const newKey = () => `sha256:${randomBytes(32).toString('hex')}`;

interface LookupSpec {
  ip: string;
  key: string;
  /** Providers that count as a right answer (any one of them). */
  expect: Set<string>;
  /** Which question of a mixed stream this is. */
  tag?: 'dead-probe' | 'before' | 'during';
}

interface LookupRecord {
  at: number;
  spec: LookupSpec;
  r: FindResult | undefined;
  ok: boolean;
}

/** Lookups arriving at `rate` per second across the cluster until `count` or `untilMs`. */
async function lookupStream(c: ScaleCluster, gen: () => LookupSpec | undefined, rate: number, limit: { count?: number; untilMs?: number }, deadlineMs: number, onResult?: (rec: LookupRecord) => void): Promise<LookupRecord[]> {
  const out: LookupRecord[] = [];
  const inflight: Promise<void>[] = [];
  const start = Date.now();
  for (let k = 0; ; k++) {
    if (limit.count !== undefined && k >= limit.count) break;
    const due = start + (k * 1000) / rate;
    if (limit.untilMs !== undefined && due >= limit.untilMs) break;
    const wait = due - Date.now();
    if (wait > 0) await sleep(wait);
    const spec = gen();
    if (!spec) continue;
    const at = Date.now();
    inflight.push(
      c.find(spec.ip, spec.key, 2, deadlineMs).then(
        (r) => {
          const rec = { at, spec, r, ok: r.outcome === 'found' && r.providers.some((p) => spec.expect.has(p)) };
          out.push(rec);
          onResult?.(rec);
        },
        () => {
          const rec = { at, spec, r: undefined, ok: false };
          out.push(rec);
          onResult?.(rec);
        },
      ),
    );
  }
  await Promise.all(inflight);
  return out;
}

/**
 * Waits until every host's event loop is calm again (p99 under 200 ms over 5 s), at most 3 min:
 * each scenario starts from a settled cluster instead of the last one's tail (on two cores the
 * tail of 100 foreign nodes, or of 100 replacements, lasts minutes). Returns how long it took,
 * undefined if it never calmed.
 */
async function untilCalm(c: ScaleCluster, after: string, log: (m: string) => void): Promise<number | undefined> {
  const t0 = Date.now();
  while (Date.now() - t0 < 180_000) {
    await c.snapshot(true);
    await sleep(5000);
    const loops = loopP99s(await c.snapshot(false));
    if (Math.max(...loops) < 200) {
      log(`  calm again ${Math.round((Date.now() - t0) / 1000)} s after ${after} (host loop p99 ${loops.join('/')} ms)`);
      return Date.now() - t0;
    }
  }
  log(`  still busy 180 s after ${after}`);
  return undefined;
}

/** Lookups found / asked in 10 s windows from `t0` (when they were asked). */
function by10s(recs: LookupRecord[], t0: number): Array<{ fromS: number; ok: number; total: number }> {
  const out: Array<{ fromS: number; ok: number; total: number }> = [];
  for (const x of recs) {
    const i = Math.max(0, Math.floor((x.at - t0) / 10_000));
    while (out.length <= i) out.push({ fromS: out.length * 10, ok: 0, total: 0 });
    out[i].total++;
    if (x.ok) out[i].ok++;
  }
  return out;
}

function lookupStats(recs: LookupRecord[]): LookupStats {
  const bySource: Record<string, number> = {};
  const byOutcome: Record<string, number> = {};
  const queried: number[] = [];
  for (const x of recs) {
    const s = x.r?.source ?? 'ipc-error';
    const o = x.r?.outcome ?? 'ipc-error';
    bySource[s] = (bySource[s] ?? 0) + 1;
    byOutcome[o] = (byOutcome[o] ?? 0) + 1;
    if (x.r?.queried !== undefined) queried.push(x.r.queried);
  }
  const ok = recs.filter((x) => x.ok).length;
  const stats: LookupStats = {
    total: recs.length,
    ok,
    successRate: recs.length ? ok / recs.length : NaN,
    latencyMs: distribution(recs.flatMap((x) => (x.r ? [x.r.ms] : []))),
    bySource,
    byOutcome,
  };
  if (queried.length > 0) stats.queried = distribution(queried);
  return stats;
}

/**
 * Completes a failed lookup's diagnosis (the asker's account, P2PNode.diagnose) in the background:
 * how many nodes held the key, how many of those and of its IP holders the asker was connected
 * to, and how many IP holders held it. The raw address lists are dropped.
 */
/** Keeps the anatomy of the first 20 failed lookups: who held the record, whether the asker's IP holders did. */
function collectFailures(c: ScaleCluster, into: Array<Record<string, unknown>>): (rec: LookupRecord) => void {
  return (rec) => {
    if (rec.ok || !rec.r?.diag || into.length >= 20) return;
    const entry: Record<string, unknown> = { ip: rec.spec.ip, ms: Math.round(rec.r.ms), source: rec.r.source, queried: rec.r.queried, ...rec.r.diag };
    into.push(entry);
    annotateFailure(c, rec.spec.key, entry);
  };
}

/**
 * Failed lookups waiting to be annotated with who held the key. Asking every node is a load on
 * the cluster, so it waits until the window being measured is over (annotating during churn
 * at N = 1,000 meant 1,000 store queries per failure, while the lookups ran), and at most
 * MAX_ANNOTATED per window are.
 */
const pendingAnnotations: Array<() => Promise<void>> = [];
const MAX_ANNOTATED = 40;

/** Annotates the failures of the window just measured (see pendingAnnotations). */
async function annotateFailures(): Promise<void> {
  const jobs = pendingAnnotations.splice(0).slice(0, MAX_ANNOTATED);
  for (const job of jobs) await job();
}

function annotateFailure(c: ScaleCluster, key: string, d: Record<string, unknown>, extra?: (connected: Set<string>) => Record<string, number>): void {
  pendingAnnotations.push(() => annotateNow(c, key, d, extra));
}

function annotateNow(c: ScaleCluster, key: string, d: Record<string, unknown>, extra?: (connected: Set<string>) => Record<string, number>): Promise<void> {
  return c.holders(key).then((hs) => {
    const conn = new Set((d.connectedIps as string[] | undefined) ?? []);
    const ipH = (d.ipHolders as string[] | undefined) ?? [];
    Object.assign(d, {
      holders: hs.length,
      holdersConnected: hs.filter((ip) => conn.has(ip)).length,
      ipHoldersHolding: ipH.filter((ip) => hs.includes(ip)).length,
      ipHoldersConnected: ipH.filter((ip) => conn.has(ip)).length,
      ...extra?.(conn),
    });
    delete d.connectedIps;
    delete d.ipHolders;
  }, () => {});
}

/** With PEERPULL_SCALE_TRACE=1 hosts describe nodes above their bound: log what they hold. */
function logOver(phase: string, nodes: NodeSnapshot[], log: (m: string) => void): void {
  for (const x of nodes) {
    if (!x.over) continue;
    log(`  ${phase}: ${x.ip} holds ${x.connections} connections:`);
    for (const line of x.over) log(`    ${line}`);
  }
}

/** Outbound connections the hosts' nodes opened since the last reset (each a handshake at both ends). */
function opensIn(snaps: HostSnapshot[]): number {
  return snaps.reduce((t, s) => t + Object.values(s.dialsByTarget).reduce((a, b) => a + b, 0), 0);
}

/** The hosts' CPU over a window of `minutes`, per node and minute. */
function cpuPerNodePerMinute(snaps: HostSnapshot[], nodes: number, minutes: number): number {
  return snaps.reduce((t, s) => t + s.cpuSeconds, 0) / nodes / minutes;
}

/** Connections the hosts' nodes opened (outbound) and closes they saw over a window, per node and minute. */
function connectionChurn(snaps: HostSnapshot[], nodes: number, minutes: number): { opened: number; closed: number } {
  const opened = opensIn(snaps);
  const closed = snaps.reduce((t, s) => t + s.connectionCloses, 0);
  return { opened: opened / nodes / minutes, closed: closed / nodes / minutes };
}

/**
 * The named counters of one group (a node's datagrams, lookup steps...), each summed over the
 * nodes; only those named, in that order (the hosts send more than the results keep).
 */
function sumFields<K extends string>(nodes: NodeSnapshot[], keys: readonly K[], group: (x: NodeSnapshot) => Record<K, number>): Record<K, number> {
  return Object.fromEntries(keys.map((k) => [k, sumOver(nodes, (x) => group(x)[k])])) as Record<K, number>;
}

/** A node counter summed over the nodes. */
function sumOver(nodes: NodeSnapshot[], f: (x: NodeSnapshot) => number): number {
  return nodes.reduce((t, x) => t + f(x), 0);
}

/**
 * What the nodes did between two snapshots, from their cumulative counters: heartbeats,
 * bootstrap dials, datagrams, lookup steps and the bound, summed over the nodes in both.
 */
function counterDeltas(before: NodeSnapshot[], after: NodeSnapshot[]): Record<string, number> {
  const prev = new Map(before.map((x) => [x.ip, x]));
  const groups = { heartbeats: (x: NodeSnapshot) => x.heartbeats, bootstrap: (x: NodeSnapshot) => x.bootstrapAttempts, datagrams: (x: NodeSnapshot) => x.datagrams, lookupSteps: (x: NodeSnapshot) => x.lookupSteps, bound: (x: NodeSnapshot) => x.connectionBound };
  const out: Record<string, number> = {};
  for (const x of after) {
    const p = prev.get(x.ip);
    if (!p) continue;
    for (const [g, f] of Object.entries(groups)) {
      const a = f(x) as unknown as Record<string, number>;
      const b = f(p) as unknown as Record<string, number>;
      for (const k of Object.keys(a)) out[`${g}.${k}`] = (out[`${g}.${k}`] ?? 0) + a[k] - (b[k] ?? 0);
    }
  }
  return out;
}

/** Each host's event loop delay p99 since its last reset, in whole ms. */
function loopP99s(snaps: HostSnapshot[]): number[] {
  return snaps.map((s) => Math.round(s.loopDelayP99Ms));
}

/** Per host, "loop p99 / longest GC pause / GC share of the window": a long major GC of a host's
 * heap stalls all its nodes at once, which is the harness's cost, not a node's. */
function hostPauses(snaps: HostSnapshot[], windowMs: number): string {
  return snaps.map((s) => `${Math.round(s.loopDelayP99Ms)}/${Math.round(s.gcPauseMaxMs)}/${((100 * s.gcPauseMs) / windowMs).toFixed(1)}%`).join(' ');
}

/** A per-host count (by opener, by error, by message...) summed over the hosts. */
function mergeCounts(snaps: HostSnapshot[], pick: (s: HostSnapshot) => Record<string, number> | undefined): Map<string, number> {
  const by = new Map<string, number>();
  for (const s of snaps) for (const [k, v] of Object.entries(pick(s) ?? {})) by.set(k, (by.get(k) ?? 0) + v);
  return by;
}

/** The `most` largest entries of a count, largest first. */
function commonest(by: Map<string, number>, most: number): Array<[string, number]> {
  return [...by].sort((a, b) => b[1] - a[1]).slice(0, most);
}

/** With PEERPULL_SCALE_TRACE=1: the commonest openers of outbound connections in a window. */
function logOpeners(snaps: HostSnapshot[], log: (m: string) => void): void {
  for (const [k, v] of commonest(mergeCounts(snaps, (s) => s.opensBy), 8)) log(`    ${v} opened by ${k}`);
  for (const [k, v] of commonest(mergeCounts(snaps, (s) => s.dialFailuresBy), 8)) log(`    ${v} bootstrap dials failed: ${k}`);
  for (const [k, v] of commonest(mergeCounts(snaps, (s) => s.queriesBy), 8)) log(`    ${v} closest-peer queries started by ${k}`);
}

/** The commonest warnings and errors so far (a cold start's failed DNS resolves, say). */
function logProblems(snaps: HostSnapshot[], log: (m: string) => void): void {
  for (const [k, v] of commonest(mergeCounts(snaps, (s) => s.problemsBy), 5)) log(`    ${v} x ${k}`);
}

function allNodes(snaps: HostSnapshot[]): NodeSnapshot[] {
  return snaps.flatMap((s) => s.nodes);
}

async function waitReady(c: ScaleCluster, ips: Set<string>, timeoutMs: number, log: (m: string) => void): Promise<{ nodes: NodeSnapshot[]; all: boolean }> {
  const deadline = Date.now() + timeoutMs;
  let lastLog = 0;
  for (;;) {
    const snaps = await c.snapshot();
    const nodes = allNodes(snaps).filter((x) => ips.has(x.ip));
    const ready = nodes.filter((x) => x.readyAfterMs !== undefined).length;
    if (ready === ips.size) return { nodes, all: true };
    if (Date.now() > deadline) return { nodes, all: false };
    if (Date.now() - lastLog > 10_000) {
      lastLog = Date.now();
      // Why the rest are not: no DNS answer yet, no connection, or connected with an empty table.
      const waiting = nodes.filter((x) => x.readyAfterMs === undefined);
      const noDns = waiting.filter((x) => x.dnsMembers === 0).length;
      const noConn = waiting.filter((x) => x.dnsMembers > 0 && x.connections === 0).length;
      const loops = loopP99s(snaps).join('/');
      const emptyTable = waiting.filter((x) => x.dnsMembers > 0 && x.connections > 0);
      const unidentified = `${sumOver(emptyTable, (x) => x.unidentified ?? 0)} of their ${sumOver(emptyTable, (x) => x.connections)} connections unidentified`;
      log(`  ${ready}/${ips.size} ready; waiting: ${noDns} without DNS answer, ${noConn} unconnected, ${emptyTable.length} with an empty routing table (${unidentified}); host loop p99 ${loops} ms`);
      if (waiting.length <= 3) for (const x of waiting) log(`    ${x.ip}: ${x.dnsMembers} DNS members, ${x.connections} connections (${x.unidentified ?? 0} unidentified), routing table ${x.routingTable}`);
    }
    await sleep(1000);
  }
}

export async function runScale(o: ScaleOptions): Promise<ScaleResult> {
  const log = o.log;
  const loadStart = os.loadavg();
  const env = {
    PEERPULL_MAX_CONNECTIONS: String(o.maxConnections),
    PEERPULL_DEAD_PEER_TIMEOUT: `${o.deadPeerTimeoutMs}ms`,
    PEERPULL_BOOTSTRAP_INTERVAL: `${o.bootstrapIntervalMs}ms`,
    PEERPULL_LOG_LEVEL: 'warn',
  };
  const ips = Array.from({ length: o.n }, (_, i) => scaleIp(o.prefix, i));
  const names = o.names > 1 ? Array.from({ length: o.names }, (_, k) => `pool-${k}.peerpull.scale.test`) : ['peerpull.scale.test'];
  const settings: ScaleResult['settings'] = { maxConnections: o.maxConnections, deadPeerTimeoutMs: o.deadPeerTimeoutMs, bootstrapIntervalMs: o.bootstrapIntervalMs, keysPerNode: o.keysPerNode, bootstrapNames: names.length, dilation: dilation().factor };
  if (names.length > 1 && (o.isolation || o.churn || o.partition)) throw new Error('with several bootstrap names only the cold start, steady state and crowd run (the isolation, churn and partition scenarios edit one name)');
  const initial = Object.fromEntries(names.map((name, k) => [name, ips.filter((_, i) => i % names.length === k)]));
  const c = await ScaleCluster.create({ prefix: o.prefix, dnsName: names.join(','), p2pPort: o.p2pPort, registryPort: o.p2pPort - 1, env }, initial);
  const partition = new Partition();
  try {
    // ---- placement: the nodes to be killed share a host, so one SIGKILL kills them all ----
    const sorted = sortAddresses(ips);
    const victimCount = Math.max(1, Math.round(o.n * o.churnShare));
    // The lowest-sorted address is always among the dead: every node dials it at bootstrap.
    const victims = new Set([sorted[0], ...shuffle(sorted.slice(1)).slice(0, victimCount - 1)]);
    const survivors = ips.filter((ip) => !victims.has(ip));
    const regularHosts = Math.max(Math.min(2, survivors.length), Math.ceil(survivors.length / o.nodesPerHost));
    const groups: string[][] = Array.from({ length: regularHosts }, () => []);
    survivors.forEach((ip, i) => groups[i % regularHosts].push(ip));
    const hosts: Array<{ host: Host; ips: string[] }> = [];
    for (let h = 0; h < groups.length; h++) hosts.push({ host: await c.spawnHost(`h${h}`), ips: groups[h] });
    const victimHost = await c.spawnHost('victims');
    hosts.push({ host: victimHost, ips: [...victims] });

    // PEERPULL_SCALE_PROFILE=<dir>: CPU profiles of each host over the cold start (until every
    // node is ready), the idle, records-held, lookup, churn and partition windows; PEERPULL_SCALE_PROFILE_PHASES=
    // cold,idle,held,lookups,churn,partition picks some (the profiler's own cost slows the phases it watches);
    // PEERPULL_SCALE_PROFILE_KIND=heap samples allocations instead.
    const phases = new Set((process.env.PEERPULL_SCALE_PROFILE_PHASES ?? 'cold,idle,held,lookups,churn,partition').split(','));
    const profiled = (phase: string) => (process.env.PEERPULL_SCALE_PROFILE && phases.has(phase) ? process.env.PEERPULL_SCALE_PROFILE : undefined);
    // ---- cold start: every node at once ----
    log(`cold start of ${o.n} nodes on ${hosts.length} hosts`);
    await c.snapshot(true);
    let profileDir = profiled('cold');
    if (profileDir) await c.profile('start');
    const hostStart = await Promise.all(hosts.map(({ host, ips: list }) => c.startNodes(host, list.map((ip) => c.spec(ip)))));
    const cold = await waitReady(c, new Set(ips), o.readyTimeoutMs, log);
    if (profileDir) log(`  cold-start profiles: ${(await c.profile('stop', profileDir, 'cold')).join(' ')}`);
    const readyTimes = cold.nodes.map((x) => x.readyAfterMs ?? Infinity);
    log(`  ready: all=${cold.all} max ${Math.max(...readyTimes.filter(Number.isFinite))} ms`);
    const coldSnaps = await c.snapshot(true);
    logProblems(coldSnaps, log);
    const repairs = sumFields(allNodes(coldSnaps), ['added', 'reidentified'], (x) => x.tableRepairs);
    log(`    empty routing tables repaired: ${repairs.added} connected members put in by the node, ${repairs.reidentified} connections identified again`);
    const dials = mergeCounts(coldSnaps, (s) => s.dialsByTarget);
    const dialAvg = ips.reduce((t, ip) => t + (dials.get(ip) ?? 0), 0) / ips.length;
    const maxDial = ips.reduce((m, ip) => ((dials.get(ip) ?? 0) > m.dials ? { ip, dials: dials.get(ip) ?? 0 } : m), { ip: '', dials: -1 });
    const lowest = sorted.slice(0, 3).map((ip) => ({ ip, dials: dials.get(ip) ?? 0 }));
    const coldStart: ScaleResult['coldStart'] = {
      readyMs: distribution(readyTimes),
      allReady: cold.all,
      readyWithin60s: readyTimes.filter((t) => t <= 60_000).length,
      hostStartMs: hostStart.map((h) => h.ms),
      dials: { average: dialAvg, lowest, max: maxDial, maxOverAverage: maxDial.dials / dialAvg, lowestOverAverage: Math.max(...lowest.map((l) => l.dials)) / dialAvg },
    };
    if (o.progress) Object.assign(o.progress, { n: o.n, coldStart, loadAverage: { start: loadStart, end: [] }, cores: os.cpus().length, hosts: hosts.length, settings });
    if (!cold.all) throw Object.assign(new Error(`not every node became ready within ${o.readyTimeoutMs} ms`), { partial: { coldStart } });

    // ---- steady state ----
    log(`steady state: settling (${o.settleMs / 1000} s), idle CPU, advertising, lookups`);
    await sleep(o.settleMs);
    const settledSnaps = await c.snapshot(true);
    profileDir = profiled('idle');
    if (profileDir) await c.profile('start');
    const tIdle = Date.now();
    await sleep(15_000);
    const idleSnaps = await c.snapshot(true);
    if (profileDir) log(`  idle profiles: ${(await c.profile('stop', profileDir, 'idle')).join(' ')}`);
    const idleMinutes = (Date.now() - tIdle) / 60_000;
    const idleCpu = cpuPerNodePerMinute(idleSnaps, o.n, idleMinutes);
    const idleChurn = connectionChurn(idleSnaps, o.n, idleMinutes);
    const idleDials = idleChurn.opened;
    log(`  idle: ${idleCpu.toFixed(3)} CPU-s, ${idleDials.toFixed(2)} connections opened and ${idleChurn.closed.toFixed(2)} closes seen per node per minute; hosts' loop p99 / longest GC ms / GC share ${hostPauses(idleSnaps, idleMinutes * 60_000)}`);
    {
      const before = allNodes(settledSnaps);
      const d = (f: (x: NodeSnapshot) => number) => sumOver(allNodes(idleSnaps), f) - sumOver(before, f);
      const below = allNodes(idleSnaps).filter((x) => x.connections < bootstrapCount(o.n - 1, o.maxConnections)).length;
      log(
        `  idle dials: bootstrap ${d((x) => x.bootstrapAttempts.ok)} ok / ${d((x) => x.bootstrapAttempts.failed)} failed, ring ${d((x) => x.bootstrapAttempts.ringOk)} ok / ${d((x) => x.bootstrapAttempts.ringFailed)} failed; ` +
          `bound: ${d((x) => x.connectionBound.evicted)} evicted, ${d((x) => x.connectionBound.refusedInbound)} inbound and ${d((x) => x.connectionBound.refusedOutbound)} outbound refused; ` +
          `${d((x) => x.heartbeats.failed)} heartbeat failures; ${below} nodes below the bootstrap target`,
      );
    }
    logOpeners(idleSnaps, log);
    const owner = new Map<string, string>(); // key -> ip
    const keysOf = new Map<string, string[]>();
    for (const ip of ips) {
      const keys = Array.from({ length: o.keysPerNode }, newKey);
      keysOf.set(ip, keys);
      for (const k of keys) owner.set(k, ip);
    }
    // Keys held by a node that will die and by two that live: during churn they must stay findable.
    const shared = new Map<string, string[]>();
    for (const v of victims) {
      const k = newKey();
      const holders = [v, pick(survivors), pick(survivors)];
      shared.set(k, holders);
      for (const h of holders) keysOf.get(h)!.push(k);
    }
    const advertiseMs = await c.advertise(keysOf, true);
    if (o.progress) o.progress.idle = { cpuSecondsPerNodePerMinute: idleCpu, dialsPerNodePerMinute: idleDials, advertiseMs };
    const beforeHeld = allNodes(await c.snapshot(true));
    const advDelta = (f: (x: NodeSnapshot) => number) => sumOver(beforeHeld, f) - sumOver(allNodes(idleSnaps), f);
    log(
      `  advertised ${owner.size + shared.size} keys in ${advertiseMs} ms: ${advDelta((x) => x.provideQueries.run)} provide queries run, ` +
        `${advDelta((x) => x.provideQueries.ipHolders)} skipped (IP holders took the record), ${sumOver(beforeHeld, (x) => x.unpublishedKeys)} keys no peer took yet`,
    );
    const peerIdOf = new Map(beforeHeld.map((x) => [x.ip, x.peerId]));
    profileDir = profiled('held');
    if (profileDir) await c.profile('start');
    const tHeld = Date.now();
    await sleep(o.heldMs);
    const heldSnaps = await c.snapshot(true);
    if (profileDir) log(`  records-held profiles: ${(await c.profile('stop', profileDir, 'held')).join(' ')}`);
    const heldMinutes = (Date.now() - tHeld) / 60_000;
    const heldCpu = cpuPerNodePerMinute(heldSnaps, o.n, heldMinutes);
    const heldLoops = loopP99s(heldSnaps);
    const heldChurn = connectionChurn(heldSnaps, o.n, heldMinutes);
    const heldDelta = (f: (x: NodeSnapshot) => number) => sumOver(allNodes(heldSnaps), f) - sumOver(beforeHeld, f);
    log(
      `  records held, no lookups: ${heldCpu.toFixed(3)} CPU-s, ${heldChurn.opened.toFixed(2)} connections opened and ${heldChurn.closed.toFixed(2)} closes seen per node per minute ` +
        `(${heldDelta((x) => x.heartbeats.failed)} closed by unanswered heartbeats), ${heldDelta((x) => x.provideQueries.run)} provide queries run ` +
        `(${heldDelta((x) => x.provideQueries.ipHolders)} skipped, IP holders took the record; ${heldDelta((x) => x.provideQueries.recent)}, the last one's still held), host loop p99 ${heldLoops.join('/')} ms; loop p99 / longest GC ms / GC share ${hostPauses(heldSnaps, heldMinutes * 60_000)}`,
    );
    const expectOf = (key: string) => new Set((shared.get(key) ?? [owner.get(key)!]).map((ip) => peerIdOf.get(ip)!));
    const allKeys = [...owner.keys()];
    const steadyFailures: Array<Record<string, unknown>> = [];
    await c.snapshot(true);
    profileDir = profiled('lookups');
    if (profileDir) await c.profile('start');
    const t0 = Date.now();
    const steadyRecs = await lookupStream(
      c,
      () => {
        const key = pick(allKeys);
        let ip = pick(ips);
        if (ip === owner.get(key)) ip = pick(ips);
        return ip === owner.get(key) ? undefined : { ip, key, expect: expectOf(key) };
      },
      o.lookupRate,
      { count: o.steadyLookups },
      o.lookupDeadlineMs,
      collectFailures(c, steadyFailures),
    );
    const steadySecs = (Date.now() - t0) / 1000;
    if (profileDir) log(`  lookup profiles: ${(await c.profile('stop', profileDir, 'lookups')).join(' ')}`);
    const steadySnaps = await c.snapshot(true);
    await annotateFailures();
    const steadyNodes = allNodes(steadySnaps);
    logOver('steady', steadyNodes, log);
    const totalNodes = steadyNodes.length;
    const steady: ScaleResult['steady'] = {
      connections: distribution(steadyNodes.map((x) => x.connections)),
      inbound: distribution(steadyNodes.map((x) => x.inbound)),
      inboundLowest: sorted.slice(0, 3).map((ip) => ({ ip, inbound: steadyNodes.find((x) => x.ip === ip)?.inbound ?? NaN })),
      routingTable: distribution(steadyNodes.map((x) => x.routingTable)),
      overBound: steadyNodes.filter((x) => x.connections > o.maxConnections).length,
      advertiseMs,
      lookups: lookupStats(steadyRecs),
      failures: steadyFailures,
      memory: {
        perNodeMiB: steadySnaps.reduce((t, s) => t + (s.rssBytes - s.baseRssBytes), 0) / totalNodes / 1048576,
        heapPerNodeMiB: steadySnaps.reduce((t, s) => t + s.heapUsedBytes, 0) / totalNodes / 1048576,
        hostBaseMiB: steadySnaps.reduce((t, s) => t + s.baseRssBytes, 0) / steadySnaps.length / 1048576,
      },
      hostLoopDelayP99Ms: loopP99s(steadySnaps),
      idleCpuSecondsPerNodePerMinute: idleCpu,
      idleDialsPerNodePerMinute: idleDials,
      heldCpuSecondsPerNodePerMinute: heldCpu,
      heldLoopDelayP99Ms: heldLoops,
      cpuSecondsPerNodePerMinute: cpuPerNodePerMinute(steadySnaps, totalNodes, steadySecs / 60),
      datagrams: sumFields(steadyNodes, ['asked', 'answered', 'served', 'provided', 'taken'], (x) => x.datagrams),
      lookupSteps: sumFields(steadyNodes, ['datagramAsks', 'streamAsks', 'holderRetries', 'holderDials', 'dhtQueries', 'ipQuorumMisses'], (x) => x.lookupSteps),
      provideQueries: sumFields(steadyNodes, ['run', 'ipHolders', 'recent'], (x) => x.provideQueries),
      connectionBound: sumFields(steadyNodes, ['evicted', 'refusedInbound', 'refusedOutbound', 'unwanted'], (x) => x.connectionBound),
    };
    log(`  lookups ${steady.lookups.ok}/${steady.lookups.total} p50 ${steady.lookups.latencyMs.p50.toFixed(1)} p99 ${steady.lookups.latencyMs.p99.toFixed(1)} ms; conns max ${steady.connections.max}; hosts' loop p99 / longest GC ms / GC share ${hostPauses(steadySnaps, steadySecs * 1000)}`);
    log(
      `  republish rounds so far: ${sumOver(steadyNodes, (x) => x.republishes.sent)} keys sent again, ${sumOver(steadyNodes, (x) => x.republishes.fresh)} passed over as just published ` +
        `(${sumOver(steadyNodes, (x) => x.republishes.sent) - sumOver(beforeHeld, (x) => x.republishes.sent)} sent while records were held or looked up)`,
    );
    log(`  datagrams: ${steady.datagrams.answered}/${steady.datagrams.asked} asks answered, ${steady.datagrams.provided} records acknowledged by IP holders`);
    const ls = steady.lookupSteps;
    log(`  lookup steps: ${ls.datagramAsks} datagram asks, ${ls.streamAsks} asks over connections, ${ls.holderRetries} asks of the next holder (one was slow), ${ls.holderDials} holder dials, ${ls.dhtQueries} DHT queries, ${ls.ipQuorumMisses} misses settled by IP holders`);
    const cb = steady.connectionBound;
    log(`  connection bound: ${cb.evicted} idle connections closed to make room, ${cb.refusedInbound + cb.refusedOutbound} refused (${cb.refusedOutbound} outbound)`);

    const result: ScaleResult = {
      n: o.n,
      startedAt: new Date().toISOString(),
      loadAverage: { start: loadStart, end: [] },
      cores: os.cpus().length,
      hosts: hosts.length,
      settings,
      coldStart,
      steady,
      problems: { warnings: 0, errors: 0, samples: [] },
      peakConnections: 0,
    };
    if (o.progress) Object.assign(o.progress, result);

    // ---- a crowd: many nodes open a connection to one node at once ----
    // Where the bound is tested hardest: steady state with records at IP holders needs few
    // connections beyond bootstrap's (at N = 50, bound 12, the busiest node held 10), so the
    // bound binds in bursts like this one. The target must stay at or under it, making room
    // by closing idle connections and refusing the rest, and stay ready.
    if (o.crowd) {
      const target = sorted.find((ip) => !victims.has(ip))!;
      const dialers = shuffle(ips.filter((ip) => ip !== target)).slice(0, Math.min(o.n - 1, 3 * o.maxConnections));
      log(`crowd: ${dialers.length} nodes open a connection to ${target} at once`);
      const of = (nodes: NodeSnapshot[]) => nodes.find((x) => x.ip === target)!;
      const before = of(allNodes(await c.snapshot(true)));
      const dialed = await c.dial(dialers, `/ip4/${target}/tcp/${o.p2pPort}/p2p/${peerIdOf.get(target)}`, 15_000);
      await sleep(1000);
      const afterSnaps = await c.snapshot(true);
      const afterNodes = allNodes(afterSnaps);
      const after = of(afterNodes);
      const dialerSet = new Set(dialers);
      result.crowd = {
        target,
        dialers: dialers.length,
        connected: dialed.connected,
        holding: afterNodes.filter((x) => dialerSet.has(x.ip) && x.remotePeers.includes(after.peerId)).length,
        failedBy: dialed.failedBy,
        targetPeak: after.peakConnections,
        targetConnections: after.connections,
        evicted: after.connectionBound.evicted - before.connectionBound.evicted,
        refusedInbound: after.connectionBound.refusedInbound - before.connectionBound.refusedInbound,
        targetReady: after.ready,
      };
      const cr = result.crowd;
      log(`  target held at most ${cr.targetPeak} (bound ${o.maxConnections}), ${cr.targetConnections} after; ${cr.connected} dials resolved, ${cr.holding} dialers connected a second later, ${cr.evicted} idle connections closed to make room, ${cr.refusedInbound} refused; failed dials: ${JSON.stringify(cr.failedBy)}; connections to it opened at the dialers' end: ${mergeCounts(afterSnaps, (s) => s.dialsByTarget).get(target) ?? 0}`);
      logOpeners(afterSnaps, log);
    }

    // ---- isolation: a second cluster behind the same DNS name, on the lowest addresses ----
    if (o.isolation) {
      const m = Math.min(249, Math.max(10, Math.round(o.n / 10)));
      log(`isolation: ${m} nodes of cluster "other" behind the same name`);
      const otherIps = Array.from({ length: m }, (_, i) => `${o.prefix}.0.${1 + i}`);
      await c.setDns(c.o.dnsName, [...otherIps, ...c.dnsRecords(c.o.dnsName)]);
      const otherHost = await c.spawnHost('other');
      await c.startNodes(otherHost, otherIps.map((ip) => c.spec(ip, 'other')));
      const other = await waitReady(c, new Set(otherIps), o.readyTimeoutMs, log);
      const otherKeys = new Map(otherIps.map((ip) => [ip, [newKey()]]));
      // Bounded: in a small cluster whose peers keep hanging up (the other cluster), waiting for
      // every record to be placed was seen to take minutes; what is measured here is isolation.
      const advertised = await Promise.race([c.advertise(otherKeys, true).then(() => true), sleep(60_000).then(() => false)]);
      if (!advertised) {
        const waiting = allNodes(await c.snapshot()).filter((x) => otherKeys.has(x.ip));
        log(`  the other cluster had not placed all its records after 60 s: routing tables ${waiting.map((x) => x.routingTable).join('/')}, connections ${waiting.map((x) => x.connections).join('/')}, DNS members ${waiting[0]?.dnsMembers}; provide queries run ${sumOver(waiting, (x) => x.provideQueries.run)}, skipped ${sumOver(waiting, (x) => x.provideQueries.ipHolders)}; records taken by datagram ${sumOver(waiting, (x) => x.datagrams.taken)}; unpublished keys ${sumOver(waiting, (x) => x.unpublishedKeys)}`);
      }
      await sleep(5000);
      const otherPeer = new Map(allNodes(await c.snapshot()).map((x) => [x.ip, x.peerId]));
      const otherKeyList = [...otherKeys].map(([ip, [k]]) => ({ ip, k }));
      const crossSpecs: LookupSpec[] = [];
      for (let i = 0; i < 40; i++) {
        const a = pick(ips);
        const b = pick(otherKeyList);
        crossSpecs.push({ ip: a, key: b.k, expect: new Set([otherPeer.get(b.ip)!]) });
        const k = pick(allKeys);
        crossSpecs.push({ ip: pick(otherIps), key: k, expect: expectOf(k) });
      }
      let ci = 0;
      const cross = await lookupStream(c, () => crossSpecs[ci++], o.lookupRate, { count: crossSpecs.length }, o.lookupDeadlineMs);
      const own = await lookupStream(
        c,
        () => {
          const b = pick(otherKeyList);
          const ip = pick(otherIps.filter((x) => x !== b.ip));
          return { ip, key: b.k, expect: new Set([otherPeer.get(b.ip)!]) };
        },
        o.lookupRate,
        { count: 60 },
        o.lookupDeadlineMs,
      );
      const snap = allNodes(await c.snapshot());
      logOver('isolation', snap, log);
      const otherSet = new Set(otherIps);
      const ipOf = new Map(snap.map((x) => [x.peerId, x.ip]));
      const crossConnections = snap.reduce((t, x) => t + x.remotePeers.filter((p) => ipOf.has(p) && otherSet.has(ipOf.get(p)!) !== otherSet.has(x.ip)).length, 0);
      result.isolation = {
        otherNodes: m,
        otherAllReady: other.all,
        otherAdvertised: advertised,
        otherReadyMs: distribution(other.nodes.map((x) => x.readyAfterMs ?? Infinity)),
        crossConnections,
        crossLookupsFound: cross.filter((x) => x.r?.outcome === 'found').length,
        crossLookups: cross.length,
        ownLookups: lookupStats(own),
        connectionsMaxDuring: Math.max(...snap.map((x) => x.connections)),
        calmAfterMs: undefined,
      };
      log(`  other ready=${other.all}, cross connections ${crossConnections}, cross lookups found ${result.isolation.crossLookupsFound}/${cross.length}, own ${result.isolation.ownLookups.ok}/${own.length}`);
      await otherHost.stop();
      await c.setDns(c.o.dnsName, c.dnsRecords(c.o.dnsName).filter((ip) => !otherSet.has(ip)));
      await sleep(3000);
      result.isolation.calmAfterMs = await untilCalm(c, 'isolation', log);
    }

    // ---- churn: 10% killed at once (SIGKILL), replaced by new nodes at new addresses ----
    if (o.churn) {
      log(`churn: killing ${victims.size} nodes, starting ${victims.size} replacements`);
      const victimPeers = new Set([...victims].map((ip) => peerIdOf.get(ip)!));
      const replacementIps = Array.from({ length: victims.size }, (_, i) => scaleIp(o.prefix, o.n + i));
      const victimKeys = [...victims].flatMap((ip) => keysOf.get(ip)!.filter((k) => owner.get(k) === ip));
      const liveKeys = [...allKeys.filter((k) => !victims.has(owner.get(k)!)), ...shared.keys()];
      const replacementHost = await c.spawnHost('replacements');
      const beforeChurn = allNodes(await c.snapshot(true)).filter((x) => !victims.has(x.ip));
      profileDir = profiled('churn');
      if (profileDir) await c.profile('start');
      const tKill = Date.now();
      await c.killHost(victimHost);
      const replStart = (async () => {
        if (o.replaceAfterMs > 0) {
          // The dead leave the Service's endpoints first; the new nodes join later.
          await c.setDns(c.o.dnsName, [...survivors]);
          await sleep(o.replaceAfterMs);
        }
        await c.setDns(c.o.dnsName, [...survivors, ...replacementIps]);
        await c.startNodes(replacementHost, replacementIps.map((ip) => c.spec(ip)));
      })();
      const windowMs = o.churnWindowMs;
      let deadLookups = 0;
      let deadReturned = 0;
      let deadLast: number | undefined;
      const deadBySource: Record<string, number> = {};
      const churnRecs: LookupRecord[] = [];
      // Every other lookup asks for content only the dead held: did a dead provider come back?
      let flip = false;
      await lookupStream(
        c,
        () => {
          flip = !flip;
          const ip = pick(survivors);
          if (flip) {
            const key = pick(victimKeys);
            return { ip, key, expect: new Set<string>(), tag: 'dead-probe' };
          }
          const key = pick(liveKeys);
          if (owner.get(key) === ip) return undefined;
          return { ip, key, expect: expectOf(key) };
        },
        o.lookupRate,
        { untilMs: tKill + windowMs },
        o.lookupDeadlineMs,
        (rec) => {
          if (rec.spec.tag === 'dead-probe') {
            deadLookups++;
            if (rec.r?.providers.some((p) => victimPeers.has(p))) {
              deadReturned++;
              deadBySource[rec.r.source] = (deadBySource[rec.r.source] ?? 0) + 1;
              deadLast = Math.max(deadLast ?? 0, rec.at - tKill);
            }
          } else {
            churnRecs.push(rec);
            // Who held the key's records when the lookup failed, and how many of them the asker was connected to.
            if (!rec.ok && rec.r?.diag) {
              const d = rec.r.diag;
              annotateFailure(c, rec.spec.key, d, (conn) => ({ connectedReplacements: replacementIps.filter((ip) => conn.has(ip)).length }));
            }
          }
        },
      );
      await replStart;
      const churnSnaps = await c.snapshot(true);
      if (profileDir) log(`  churn profiles: ${(await c.profile('stop', profileDir, 'churn')).join(' ')}`);
      const churnMs = Date.now() - tKill;
      const repl = await waitReady(c, new Set(replacementIps), o.readyTimeoutMs, log);
      // The replacements' content must be found by the old nodes.
      const replKeys = new Map(replacementIps.map((ip) => [ip, [newKey()]]));
      const replFailures: Array<Record<string, unknown>> = [];
      await c.advertise(replKeys, true);
      const replPeer = new Map(allNodes(await c.snapshot()).map((x) => [x.ip, x.peerId]));
      const replList = [...replKeys].map(([ip, [k]]) => ({ ip, k }));
      const replRecs = await lookupStream(
        c,
        () => {
          const r = pick(replList);
          return { ip: pick(survivors), key: r.k, expect: new Set([replPeer.get(r.ip)!]) };
        },
        o.lookupRate,
        { count: Math.min(200, Math.max(50, replList.length * 2)) },
        o.lookupDeadlineMs,
        collectFailures(c, replFailures),
      );
      await annotateFailures();
      const after = allNodes(await c.snapshot());
      logOver('after churn', after, log);
      result.churn = {
        killed: victims.size,
        replaced: replacementIps.length,
        replaceAfterMs: o.replaceAfterMs,
        deadReturnedLastMs: deadLast,
        deadLookups,
        deadReturned,
        deadReturnedBySource: deadBySource,
        windowMs,
        lookups: lookupStats(churnRecs),
        lookupsBy10s: by10s(churnRecs, tKill),
        failures: churnRecs
          .filter((x) => !x.ok)
          .slice(0, 50)
          .map((x) => ({ atMs: x.at - tKill, ip: x.spec.ip, shared: shared.has(x.spec.key), outcome: x.r?.outcome ?? 'ipc-error', source: x.r?.source ?? '-', ms: Math.round(x.r?.ms ?? NaN), queried: x.r?.queried, providers: x.r?.providers.length ?? 0, diag: x.r?.diag })),
        replacementsReadyMs: distribution(repl.nodes.map((x) => x.readyAfterMs ?? Infinity)),
        replacementsAllReady: repl.all,
        replacementLookups: lookupStats(replRecs),
        replacementFailures: replFailures,
        connectionsMaxAfter: Math.max(...after.map((x) => x.connections)),
        hostLoopDelayP99Ms: loopP99s(churnSnaps),
        cpuSecondsPerNodePerMinute: cpuPerNodePerMinute(churnSnaps, o.n, churnMs / 60_000),
        dialsPerNodePerMinute: opensIn(churnSnaps) / o.n / (churnMs / 60_000),
        calmAfterMs: undefined,
      };
      logOpeners(churnSnaps, log);
      {
        const surviving = new Set(beforeChurn.map((b) => b.ip));
        const now = allNodes(churnSnaps).filter((x) => surviving.has(x.ip));
        const d = (k: keyof NodeSnapshot['lookupSteps']) => sumOver(now, (x) => x.lookupSteps[k]) - sumOver(beforeChurn, (x) => x.lookupSteps[k]);
        log(`  survivors' lookup steps during churn: ${d('datagramAsks')} datagram asks, ${d('holderRetries')} asks of the next holder, ${d('holderDials')} holder dials, ${d('dhtQueries')} DHT queries, ${d('ipQuorumMisses')} misses settled by IP holders`);
      }
      log(`  live lookups by 10 s after the kill (found/asked): ${result.churn.lookupsBy10s.map((w) => `${w.fromS}s ${w.ok}/${w.total}`).join(', ')}`);
      log(`  dead returned last at ${deadLast ?? '-'} ms (${deadReturned}/${deadLookups}); live lookups ${result.churn.lookups.ok}/${result.churn.lookups.total}; replacements ready=${repl.all}, found ${result.churn.replacementLookups.ok}/${replRecs.length}`);
      for (const [ip, ks] of replKeys) {
        keysOf.set(ip, ks);
        for (const k of ks) owner.set(k, ip);
        peerIdOf.set(ip, replPeer.get(ip)!);
      }
      result.churn.calmAfterMs = await untilCalm(c, 'churn', log);
    }

    // ---- partition: lowest half of the addresses against the rest, then healed ----
    if (o.partition) {
      const live = sortAddresses([...c.hostOf.keys()].filter((ip) => c.specs.get(ip)?.cluster === 'scale'));
      const sideA = live.slice(0, Math.floor(live.length / 2));
      const sideB = live.slice(sideA.length);
      const aSet = new Set(sideA);
      const cutMs = o.deadPeerTimeoutMs + 20_000;
      log(`partition: ${sideA.length} | ${sideB.length} for ${cutMs} ms`);
      const beforeKeys = [...owner].filter(([, ip]) => c.hostOf.has(ip));
      const preCut = allNodes(await c.snapshot(true));
      profileDir = profiled('partition');
      if (profileDir) await c.profile('start');
      await partition.cut(sideA, sideB);
      const tCut = Date.now();
      // New content on both sides while cut: found on its own side, and across once healed.
      await sleep(Math.min(5000, cutMs / 4));
      const duringKeys = new Map(live.filter((_, i) => i % 4 === 0).map((ip) => [ip, [newKey()]]));
      await c.advertise(duringKeys, false);
      const during = [...duringKeys].map(([ip, [k]]) => ({ ip, k }));
      const sameSide = (a: string, b: string) => aSet.has(a) === aSet.has(b);
      const cutFailures: Array<Record<string, unknown>> = [];
      const withinRecs = await lookupStream(
        c,
        () => {
          const [k, ip] = pick(beforeKeys);
          const from = pick(live.filter((x) => sameSide(x, ip) && x !== ip));
          return { ip: from, key: k, expect: new Set([peerIdOf.get(ip)!]) };
        },
        o.lookupRate,
        { untilMs: tCut + cutMs },
        o.lookupDeadlineMs,
        collectFailures(c, cutFailures),
      );
      const cutSnaps = await c.snapshot(true);
      if (profileDir) log(`  partition profiles: ${(await c.profile('stop', profileDir, 'partition')).join(' ')}`);
      await partition.heal();
      const tHeal = Date.now();
      const windowMs = Math.max(60_000, o.bootstrapIntervalMs * 4);
      const last = { before: undefined as number | undefined, during: undefined as number | undefined };
      const recsBefore: LookupRecord[] = [];
      const recsDuring: LookupRecord[] = [];
      let alt = false;
      await lookupStream(
        c,
        () => {
          alt = !alt;
          if (alt) {
            const [k, ip] = pick(beforeKeys);
            return { ip: pick(live.filter((x) => !sameSide(x, ip))), key: k, expect: new Set([peerIdOf.get(ip)!]), tag: 'before' };
          }
          const d = pick(during);
          return { ip: pick(live.filter((x) => !sameSide(x, d.ip))), key: d.k, expect: new Set([peerIdOf.get(d.ip)!]), tag: 'during' };
        },
        o.lookupRate,
        { untilMs: tHeal + windowMs },
        o.lookupDeadlineMs,
        (rec) => {
          const k = rec.spec.tag === 'before' ? 'before' : 'during';
          (k === 'before' ? recsBefore : recsDuring).push(rec);
          if (!rec.ok) last[k] = Math.max(last[k] ?? 0, rec.at - tHeal);
        },
      );
      const snap = allNodes(await c.snapshot()).filter((x) => x.cluster === 'scale');
      const did = counterDeltas(preCut, allNodes(cutSnaps));
      result.partition = {
        sideA: sideA.length,
        sideB: sideB.length,
        cutMs,
        withinSideDuring: lookupStats(withinRecs),
        lastCrossFailureMs: last,
        crossAfter: { before: lookupStats(recsBefore.filter((r) => r.at - tHeal > windowMs / 2)), during: lookupStats(recsDuring.filter((r) => r.at - tHeal > windowMs / 2)) },
        windowMs,
        withinBy10s: by10s(withinRecs, tCut),
        failures: cutFailures,
        hostLoopDelayP99Ms: loopP99s(cutSnaps),
        cpuSecondsPerNodePerMinute: cpuPerNodePerMinute(cutSnaps, o.n, (tHeal - tCut) / 60_000),
        counters: did,
        connectionsOpened: opensIn(cutSnaps),
        nodesWithCrossConnection: ((ipOf) => snap.filter((x) => x.remotePeers.some((p) => ipOf.has(p) && aSet.has(ipOf.get(p)!) !== aSet.has(x.ip))).length)(new Map(snap.map((x) => [x.peerId, x.ip]))),
      };
      await annotateFailures();
      log(`  during the cut: hosts' loop p99 / longest GC ms / GC share ${hostPauses(cutSnaps, tHeal - tCut)}`);
      logOpeners(cutSnaps, log);
      log(`  over the cut, all nodes: ${Object.entries(did).filter(([, v]) => v !== 0).map(([k, v]) => `${k} ${v}`).join(', ')}; ${result.partition.connectionsOpened} connections opened, ${cutSnaps.reduce((t, s) => t + s.connectionCloses, 0)} closes seen`);
      log(`  within-side lookups by 10 s from the cut (found/asked): ${result.partition.withinBy10s.map((w) => `${w.fromS}s ${w.ok}/${w.total}`).join(', ')}`);
      log(`  within side during cut ${result.partition.withinSideDuring.ok}/${result.partition.withinSideDuring.total}; last cross failure after heal: before-keys ${last.before ?? '-'} ms, during-keys ${last.during ?? '-'} ms`);
    }

    const final = await c.snapshot();
    result.peakConnections = c.peakConnections;
    log(`  most connections one node held at once: ${c.peakConnections} (bound ${o.maxConnections})`);
    result.problems = {
      warnings: final.reduce((t, s) => t + s.warnings, 0),
      errors: final.reduce((t, s) => t + s.errors, 0),
      samples: final.flatMap((s) => s.lastProblems).slice(0, 10),
      byMessage: Object.fromEntries(mergeCounts(final, (s) => s.problemsBy)),
    };
    result.loadAverage.end = os.loadavg();
    return result;
  } finally {
    await partition.heal().catch(() => {});
    await c.close();
  }
}

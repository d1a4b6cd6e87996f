// A host process of the scale harness: many real peerpull p2p stacks (the production P2PNode,
// configured through the production config parser) in one event loop, each on its own
// loopback IP and the shared p2p port. Several hosts share the cores; each reports its event
// loop delay so an overloaded host shows in the figures instead of posing as a slow network.
// Driven by the orchestrator over IPC (protocol.ts).

// First: a dilated run (--dilation) slows this process's clocks before libp2p loads.
import { dilation as installedDilation } from './dilation.js';
import { writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { generateKeyPair } from '@libp2p/crypto/keys';
import type { Connection } from '@libp2p/interface';
import { multiaddr } from '@multiformats/multiaddr';
import type { Libp2p } from 'libp2p';
import { loadConfig } from '../../src/main/config.js';
import { p2pWorkerConfig } from '../../src/main/p2p.js';
import { P2PNode } from '../../src/p2p/node.js';
import { parseTcpAddr } from '../../src/p2p/peer-addr.js';
import type { DialResult, FindResult, HostReply, HostRequest, HostRequestEnvelope, HostSnapshot, NodeSnapshot, NodeSpec } from './protocol.js';

if (!process.send) throw new Error('native-bench/scale/host.ts runs as a child of the scale orchestrator (IPC)');

interface Hosted {
  spec: NodeSpec;
  node: P2PNode;
  libp2p: Libp2p;
  startedAt: number;
  readyAfterMs: number | undefined;
  maxConnections: number;
  /** Most connections open at once since the last counter reset (counted at every open). */
  peak: number;
}

// PEERPULL_SCALE_TRACE=1: remember where each outbound connection was asked for, and describe
// the connections of a node above its bound in its snapshot (what keeps the bound soft).
const TRACE = process.env.PEERPULL_SCALE_TRACE === '1';
const openedBy = new WeakMap<Connection, string>();
/** With TRACE: outbound opens since the last reset, by opener (what keeps a cluster dialling). */
const opensBy = new Map<string, number>();
/** With TRACE: failed bootstrap dials since the last reset, by error (numbers and addresses masked). */
const dialFailuresBy = new Map<string, number>();
/** With TRACE: kad-dht closest-peer queries started since the last reset, by caller. */
const queriesBy = new Map<string, number>();

/** The first frames of the current stack that are ours or kad-dht's, shortened. */
function callerFrames(): string {
  return (new Error().stack ?? '')
    .split('\n')
    .slice(3)
    .filter((l) => /src\/p2p|kad-dht\/dist/.test(l))
    .slice(0, 4)
    .map((l) => l.trim().replace(/^at /, '').replace(/\(?file:\/\/\S*\/(src\/p2p|kad-dht\/dist\/src)\//, '$1/').replace(/\)$/, ''))
    .join(' < ');
}

/**
 * Counts kad-dht's closest-peer queries by caller. Each dials its way toward a key, and the
 * dials' own stacks end in kad-dht's query queue: only the call itself says who wanted it.
 */
function traceQueries(libp2p: Libp2p): void {
  const routing = (libp2p as unknown as { services?: { dht?: { peerRouting?: { getClosestPeers?: (...a: unknown[]) => unknown } } } }).services?.dht?.peerRouting;
  if (!routing?.getClosestPeers) throw new Error('kad-dht peerRouting.getClosestPeers not found: update native-bench/scale/host.ts');
  const orig = routing.getClosestPeers.bind(routing);
  routing.getClosestPeers = (...a: unknown[]) => {
    const by = callerFrames() || 'unknown';
    queriesBy.set(by, (queriesBy.get(by) ?? 0) + 1);
    return orig(...a);
  };
}

function traceOpens(libp2p: Libp2p): void {
  const cm = (libp2p as unknown as { components?: { connectionManager?: { openConnection?: (...a: unknown[]) => Promise<Connection> } } }).components?.connectionManager;
  if (!cm?.openConnection) throw new Error('libp2p components.connectionManager.openConnection not found: update native-bench/scale/host.ts');
  const orig = cm.openConnection.bind(cm);
  cm.openConnection = async (...a: unknown[]) => {
    const frames = callerFrames();
    const t0 = Date.now();
    const conn = await orig(...a);
    // An existing connection (opened by the peer, or earlier) is reused, not opened: not counted.
    if (!openedBy.has(conn) && conn.timeline.open >= t0) {
      const by = frames || 'unknown';
      openedBy.set(conn, by);
      opensBy.set(by, (opensBy.get(by) ?? 0) + 1);
    }
    return conn;
  };
}

function describeOver(h: Hosted, conns: Connection[]): string[] | undefined {
  if (!TRACE || conns.length <= h.maxConnections) return undefined;
  const now = Date.now();
  return conns.map((c) => `${c.direction} ${remoteIp(c)} age ${Math.round((now - c.timeline.open) / 1000)}s streams [${c.streams.map((s) => s.protocol ?? '?').join(',')}] ${c.direction === 'outbound' ? (openedBy.get(c) ?? 'not via openConnection') : ''}`);
}

const hosted = new Map<string, Hosted>();
const dialsByTarget = new Map<string, number>();
/** Connections closed since the last reset, by who closed them (this side or the remote). */
let closes = 0;
const problems: string[] = [];
const counts = { warnings: 0, errors: 0 };
const baseRss = process.memoryUsage().rss;
/** Installed on import (above), before anything here ran: fixed for the process's life. */
const dilation = installedDilation();
// Sampled every 10 ms of protocol time. Each sample wakes the loop (~0.1 ms of CPU here, 10 ms of
// CPU per second per host at this rate): a dilated run samples as often per protocol second as
// an undilated one, so its CPU figures carry the same share of it.
const loop = monitorEventLoopDelay({ resolution: Math.round(10 * dilation.factor) });
loop.enable();
// GC pauses of the host's heap (hundreds of nodes in one heap): a long major GC stops every
// node of the host at once, which a real node with its own small heap never sees.
const gc = { ms: 0, maxMs: 0, count: 0 };
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    gc.ms += e.duration;
    gc.count++;
    if (e.duration > gc.maxMs) gc.maxMs = e.duration;
  }
}).observe({ entryTypes: ['gc'] });

function isAbortError(err: unknown): boolean {
  const e = err as { name?: string; code?: string } | undefined;
  return e?.name === 'AbortError' || e?.code === 'ABORT_ERR' || e?.name === 'TimeoutError';
}
/** Warnings and errors by message (without the node and fields): which problem it is, in numbers. */
const problemsBy = new Map<string, number>();

function problem(level: 'warn' | 'error', text: string, msg = text): void {
  if (level === 'warn') counts.warnings++;
  else counts.errors++;
  const key = `${level}: ${msg.slice(0, 100)}`;
  problemsBy.set(key, (problemsBy.get(key) ?? 0) + 1);
  problems.push(`${level}: ${text}`.slice(0, 300));
  if (problems.length > 20) problems.shift();
}
// As in the p2p worker: aborted DHT queries reject promises nobody awaits.
process.on('unhandledRejection', (reason) => {
  if (!isAbortError(reason)) problem('warn', `unhandled rejection: ${(reason as Error)?.message ?? String(reason)}`);
});
process.on('uncaughtException', (err) => {
  if (!isAbortError(err)) problem('error', `uncaught: ${err.message}`);
});

/**
 * The libp2p node inside a P2PNode. The harness needs connection facts (direction, remote
 * address, opens) that P2PNode does not expose; reading its private field is checked here so a
 * refactor fails loudly instead of measuring nothing.
 */
/** The parts of a node's publish pipeline that make up status().pendingProvides, and what feeds it. */
function pendingOf(n: P2PNode): Record<string, unknown> {
  const x = n as unknown as { queue?: Map<string, unknown>; queryQueue?: Map<string, unknown>; provideRunning?: number; unpublished?: Map<string, unknown>; batchRunning?: boolean; provideQueries?: unknown };
  return { queue: x.queue?.size, queryQueue: x.queryQueue?.size, provideRunning: x.provideRunning, unpublished: x.unpublished?.size, batchRunning: x.batchRunning, provideQueries: x.provideQueries };
}

function libp2pOf(n: P2PNode): Libp2p {
  const inner = (n as unknown as { node?: Libp2p }).node;
  if (!inner || typeof inner.getConnections !== 'function') throw new Error('P2PNode no longer keeps its libp2p node in `node`: update native-bench/scale/host.ts');
  return inner;
}

/** Connections in use: one closed to make room may stay listed for a moment after it stopped. */
function openConnections(l: Libp2p): Connection[] {
  return l.getConnections().filter((c) => c.status === 'open');
}

function remoteIp(c: Connection): string | undefined {
  return parseTcpAddr(c.remoteAddr)?.ip;
}

async function startNode(spec: NodeSpec, p2pPort: number, registryPort: number, dnsServer: string, t0: number): Promise<void> {
  const config = loadConfig({
    PEERPULL_P2P_ADDR: `${spec.ip}:${p2pPort}`,
    PEERPULL_REGISTRY_ADDR: `${spec.ip}:${registryPort}`,
    PEERPULL_ADVERTISE_IP: spec.ip,
    PEERPULL_BOOTSTRAP_DNS: spec.dnsName,
    PEERPULL_DNS_SERVERS: dnsServer,
    PEERPULL_CLUSTER: spec.cluster,
    ...spec.env,
  });
  const cfg = await p2pWorkerConfig(config);
  const key = await generateKeyPair('Ed25519');
  const node = await P2PNode.create(
    cfg,
    key,
    (level, msg, fields) => {
      // PEERPULL_SCALE_LOG_IP=<ip>: every log line of that node, debug included, on stderr.
      if (spec.ip === process.env.PEERPULL_SCALE_LOG_IP) process.stderr.write(`${Date.now() - t0} ${spec.ip} ${level} ${msg} ${fields ? JSON.stringify(fields) : ''}\n`);
      if (TRACE && msg === 'bootstrap dial failed') {
        const why = `${fields?.ring ? 'ring: ' : ''}${String(fields?.error ?? '?').replace(/[0-9a-f]{8,}|[\d.:]+/g, '#').slice(0, 120)}`;
        dialFailuresBy.set(why, (dialFailuresBy.get(why) ?? 0) + 1);
      }
      if (level === 'warn' || level === 'error') problem(level, `${spec.ip} ${msg} ${fields ? JSON.stringify(fields) : ''}`, msg);
    },
    () => {},
  );
  // Attached before this node's first bootstrap dial (that waits for a timer and DNS).
  const libp2p = libp2pOf(node);
  if (TRACE) {
    traceOpens(libp2p);
    traceQueries(libp2p);
  }
  libp2p.addEventListener('connection:open', (e) => {
    const h = hosted.get(spec.ip);
    if (h) h.peak = Math.max(h.peak, openConnections(libp2p).length);
    if (e.detail.direction !== 'outbound') return;
    const ip = remoteIp(e.detail);
    if (ip) dialsByTarget.set(ip, (dialsByTarget.get(ip) ?? 0) + 1);
  });
  libp2p.addEventListener('connection:close', () => closes++);
  hosted.set(spec.ip, { spec, node, libp2p, startedAt: t0, readyAfterMs: undefined, maxConnections: config.maxConnections, peak: openConnections(libp2p).length });
  // A node becomes ready when its routing table gets an entry (or, with one, a connection
  // opens): noted then. The poll below alone noted it when the host's loop got round to it,
  // which at a cold start of 1,000 nodes (loops 3-6 s late) was seconds after the node's state.
  const noteReady = () => {
    const h = hosted.get(spec.ip);
    if (h) noteIfReady(h);
  };
  const table = (libp2p as unknown as { services?: { dht?: { routingTable?: EventTarget } } }).services?.dht?.routingTable;
  if (!table?.addEventListener) throw new Error('kad-dht routingTable not found: update native-bench/scale/host.ts');
  table.addEventListener('peer:add', noteReady);
  libp2p.addEventListener('connection:open', noteReady);
}

/** Notes when a node became ready (once). */
function noteIfReady(h: Hosted): void {
  if (h.readyAfterMs === undefined && h.node.status().ready) h.readyAfterMs = Date.now() - h.startedAt;
}

// Readiness is also sampled, for what the events above do not cover (a node alone by design).
const readyTimer = setInterval(() => {
  for (const h of hosted.values()) noteIfReady(h);
}, 100);
readyTimer.unref();

async function nodeSnapshot(h: Hosted, reset: boolean): Promise<NodeSnapshot> {
  const s = h.node.status();
  const conns = openConnections(h.libp2p);
  // Only for a node not ready yet: connections whose peer identify has not described (no agent
  // version, which only identify stores), the usual reason a connected node's table stays empty.
  const unidentified = s.ready
    ? undefined
    : (await Promise.all(conns.map((c) => h.libp2p.peerStore.get(c.remotePeer).then((p) => !p.metadata.has('AgentVersion'), () => true)))).filter(Boolean).length;
  const peak = Math.max(h.peak, conns.length);
  if (reset) h.peak = conns.length;
  return {
    ip: h.spec.ip,
    peerId: s.peerId,
    cluster: h.spec.cluster,
    readyAfterMs: h.readyAfterMs,
    ready: s.ready,
    connections: conns.length,
    peakConnections: peak,
    inbound: conns.filter((c) => c.direction === 'inbound').length,
    routingTable: s.routingTable,
    remotePeers: conns.map((c) => c.remotePeer.toString()),
    dnsMembers: s.dnsMembers,
    unpublishedKeys: s.unpublishedKeys,
    ...(({ datagrams, connectionBound, lookupSteps, heartbeats, provideQueries, republishes, bootstrapAttempts, tableRepairs }) => ({ datagrams, connectionBound, lookupSteps, heartbeats, provideQueries, republishes, bootstrapAttempts, tableRepairs }))(h.node.metrics(s)),
    over: describeOver(h, conns),
    unidentified,
  };
}

let cpuBase = process.cpuUsage();
let profiler: Session | undefined;

async function handle(req: HostRequest): Promise<unknown> {
  switch (req.type) {
    case 'start': {
      const t0 = Date.now();
      // All at once, as a cluster-wide cold start does: every node resolves DNS in the same second.
      const results = await Promise.allSettled(req.nodes.map((spec) => startNode(spec, req.p2pPort, req.registryPort, req.dnsServer, t0)));
      const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [`${req.nodes[i].ip}: ${(r.reason as Error).message}`] : []));
      return { started: results.length - failed.length, failed, ms: Date.now() - t0 };
    }
    case 'snapshot': {
      const mem = process.memoryUsage();
      const cpu = process.cpuUsage(cpuBase);
      const snap: HostSnapshot = {
        pid: process.pid,
        nodes: await Promise.all([...hosted.values()].map((h) => nodeSnapshot(h, req.resetCounters))),
        dialsByTarget: Object.fromEntries(dialsByTarget),
        rssBytes: mem.rss,
        baseRssBytes: baseRss,
        heapUsedBytes: mem.heapUsed,
        cpuSeconds: (cpu.user + cpu.system) / 1e6,
        connectionCloses: closes,
        // Measured in real time by the runtime; reported in protocol time, as the nodes felt them.
        loopDelayP99Ms: dilation.toProtocolMs(loop.percentile(99) / 1e6),
        loopDelayMaxMs: dilation.toProtocolMs(loop.max / 1e6),
        gcPauseMs: dilation.toProtocolMs(gc.ms),
        gcPauseMaxMs: dilation.toProtocolMs(gc.maxMs),
        gcCount: gc.count,
        ...(TRACE ? { opensBy: Object.fromEntries(opensBy), dialFailuresBy: Object.fromEntries(dialFailuresBy), queriesBy: Object.fromEntries(queriesBy) } : {}),
        warnings: counts.warnings,
        errors: counts.errors,
        lastProblems: [...problems],
        problemsBy: Object.fromEntries(problemsBy),
      };
      if (req.resetCounters) {
        dialsByTarget.clear();
        closes = 0;
        loop.reset();
        gc.ms = gc.maxMs = gc.count = 0;
        opensBy.clear();
        dialFailuresBy.clear();
        queriesBy.clear();
        cpuBase = process.cpuUsage();
      }
      return snap;
    }
    case 'advertise': {
      const t0 = Date.now();
      await Promise.all(
        req.items.map(async (it) => {
          const h = hostedOrThrow(it.ip);
          await h.node.advertise(it.keys, req.wait);
          // advertise(wait) returns once the records are placed; the DHT provide queries that look
          // for holders beyond the node's view go on behind it. Measurements start after both.
          const since = Date.now();
          let told = false;
          while (req.wait && h.node.status().pendingProvides > 0) {
            await new Promise((r) => setTimeout(r, 100));
            // Still pending after 2 minutes: say what is (a publish queue that never drains
            // held whole N = 1,000 runs past the orchestrator's timeout).
            if (!told && Date.now() - since > 120_000) {
              told = true;
              process.stderr.write(`${it.ip} provides pending after ${Date.now() - since} ms: ${JSON.stringify(pendingOf(h.node))}\n`);
            }
          }
        }),
      );
      return { ms: Date.now() - t0 };
    }
    case 'find': {
      const t0 = performance.now();
      const r = await hostedOrThrow(req.ip).node.findProviders(req.key, req.count, req.deadlineMs);
      const out: FindResult = {
        outcome: r.outcome,
        source: r.source,
        providers: r.providers.map((p) => p.peerId),
        ms: performance.now() - t0,
      };
      // Hops: present once the node reports how many peers a network query asked.
      const queried = (r as { queried?: unknown }).queried;
      if (typeof queried === 'number') out.queried = queried;
      if (r.outcome !== 'found') {
        const h = hostedOrThrow(req.ip);
        out.diag = await h.node.diagnose(req.key).catch((err: Error) => ({ error: err.message }));
        out.diag.connectedIps = h.libp2p.getConnections().flatMap((c) => remoteIp(c) ?? []);
      }
      return out;
    }
    case 'dial': {
      const to = multiaddr(req.to);
      const out: DialResult = { connected: 0, failedBy: {} };
      await Promise.all(
        req.ips.map(async (ip) => {
          try {
            await hostedOrThrow(ip).libp2p.dial(to, { signal: AbortSignal.timeout(req.timeoutMs) });
            out.connected++;
          } catch (err) {
            const why = String((err as Error).message).replace(/[0-9a-zA-Z]{20,}|[\d.:]+/g, '#').slice(0, 120);
            out.failedBy[why] = (out.failedBy[why] ?? 0) + 1;
          }
        }),
      );
      return out;
    }
    case 'holders': {
      const out: string[] = [];
      // Only the store: a full diagnose per node (holders, IP holders over the whole DNS answer)
      // for every hosted node was a load of its own at 1,000 nodes.
      for (const h of hosted.values()) if ((await h.node.recordCount(req.key)) > 0) out.push(h.spec.ip);
      return out;
    }
    case 'profile': {
      // PEERPULL_SCALE_PROFILE_KIND=heap: where the window allocated (sampling heap profiler,
      // .heapprofile) instead of where it spent CPU.
      const heap = process.env.PEERPULL_SCALE_PROFILE_KIND === 'heap';
      if (req.action === 'start') {
        profiler = new Session();
        profiler.connect();
        if (heap) {
          await profiler.post('HeapProfiler.enable');
          await profiler.post('HeapProfiler.startSampling', { samplingInterval: 65536, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
        } else {
          await profiler.post('Profiler.enable');
          await profiler.post('Profiler.start');
        }
        return {};
      }
      if (!profiler) throw new Error('no profile running');
      const { profile } = heap ? await profiler.post('HeapProfiler.stopSampling') : await profiler.post('Profiler.stop');
      profiler.disconnect();
      profiler = undefined;
      const file = heap ? req.file.replace(/\.cpuprofile$/, '.heapprofile') : req.file;
      await writeFile(file, JSON.stringify(profile));
      return { file };
    }
    case 'stop': {
      await Promise.all(
        req.ips.map(async (ip) => {
          const h = hosted.get(ip);
          if (!h) return;
          hosted.delete(ip);
          await h.node.stop().catch(() => {});
        }),
      );
      return { stopped: req.ips.length };
    }
  }
}

function hostedOrThrow(ip: string): Hosted {
  const h = hosted.get(ip);
  if (!h) throw new Error(`no node ${ip} in host ${process.pid}`);
  return h;
}

process.on('message', (m: HostRequestEnvelope) => {
  handle(m.req).then(
    (result) => process.send!({ id: m.id, ok: true, result } satisfies HostReply),
    (err: Error) => process.send!({ id: m.id, ok: false, error: err.message } satisfies HostReply),
  );
});
// The orchestrator going away (crash, Ctrl-C) must not leave nodes running.
process.on('disconnect', () => process.exit(0));

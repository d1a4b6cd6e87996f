// The main thread's handle on the p2p thread: spawns the libp2p Worker, restarts it with
// backoff when it dies (the registry keeps serving local content meanwhile), turns the message
// protocol into promises with timeouts, keeps readiness for /readyz and exposes the p2p metrics
// on the main registry.

import { readFile } from 'node:fs/promises';
import { setFlagsFromString } from 'node:v8';
import { Worker } from 'node:worker_threads';
import { Counter, Gauge, Histogram } from 'prom-client';
import type { ContentIndex } from './content/index.js';
import { ConfigError, type Config } from './config.js';
import { log as rootLog, type Logger } from './log.js';
import { registry } from './metrics.js';
import { StoreCopy } from './store-copy.js';
import type {
  LookupResult,
  P2PFromWorker,
  P2PMetricsSnapshot,
  P2PRequest,
  P2PStatus,
  P2PWorkerConfig,
  ProviderPeer,
  FetchClaimResult,
} from '../shared/messages.js';

// ---- metrics (the cluster label lets per-region dashboards split) ----

const peersGauge = new Gauge({ name: 'peerpull_p2p_peers', help: 'Peers with a live libp2p connection.', labelNames: ['cluster'] as const, registers: [registry] });
const routingGauge = new Gauge({ name: 'peerpull_p2p_routing_table_size', help: 'Peers in the Kademlia routing table.', labelNames: ['cluster'] as const, registers: [registry] });
const advertisedGauge = new Gauge({ name: 'peerpull_p2p_advertised_keys', help: 'Keys (digests and tags) this node advertises.', labelNames: ['cluster'] as const, registers: [registry] });
const readyGauge = new Gauge({ name: 'peerpull_p2p_ready', help: '1 while connected to the cluster (or alone in it by DNS).', labelNames: ['cluster'] as const, registers: [registry] });
const lookups = new Counter({
  name: 'peerpull_p2p_lookups_total',
  help: 'Provider lookups by outcome (found, notfound, timeout, error) and source (store-copy: answered in main from its copy of the records; cache, negative-cache, local, network, coalesced: by the p2p thread; none).',
  labelNames: ['cluster', 'outcome', 'source'] as const,
  registers: [registry],
});
const lookupDuration = new Histogram({
  name: 'peerpull_p2p_lookup_duration_seconds',
  help: 'Provider lookup time seen by the main thread, by outcome.',
  labelNames: ['cluster', 'outcome'] as const,
  buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
  registers: [registry],
});
const bootstrapAttempts = new Counter({ name: 'peerpull_p2p_bootstrap_attempts_total', help: 'Bootstrap dials by outcome: ok and failed toward the target connection count, ring_ok and ring_failed restoring a link to a ring successor.', labelNames: ['cluster', 'outcome'] as const, registers: [registry] });
const dnsResolve = new Histogram({
  name: 'peerpull_p2p_dns_resolve_duration_seconds',
  help: 'Time to resolve the bootstrap DNS name, by outcome.',
  labelNames: ['cluster', 'outcome'] as const,
  buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5],
  registers: [registry],
});
const recordBatches = new Counter({
  name: 'peerpull_p2p_record_batches_total',
  help: 'Batches of this node\'s provider records sent straight to their holders, by outcome.',
  labelNames: ['cluster', 'outcome'] as const,
  registers: [registry],
});
const recordsReceived = new Counter({ name: 'peerpull_p2p_records_received_total', help: 'Provider records other nodes sent this node to hold.', labelNames: ['cluster'] as const, registers: [registry] });
/** The cumulative counters of a metrics snapshot. */
type ThreadCounters = Pick<P2PMetricsSnapshot, 'bootstrapAttempts' | 'recordBatches' | 'recordsReceived' | 'lookupSteps' | 'provideQueries' | 'republishes' | 'heartbeats' | 'tableRepairs' | 'datagrams' | 'connectionBound' | 'fetchClaims'>;
const NO_COUNTS: ThreadCounters = {
  bootstrapAttempts: { ok: 0, failed: 0, ringOk: 0, ringFailed: 0 },
  recordBatches: { ok: 0, failed: 0 },
  recordsReceived: 0,
  lookupSteps: { datagramAsks: 0, streamAsks: 0, holderRetries: 0, holderDials: 0, dhtQueries: 0, ipQuorumMisses: 0 },
  provideQueries: { run: 0, ipHolders: 0, recent: 0 },
  republishes: { sent: 0, fresh: 0 },
  heartbeats: { ok: 0, failed: 0, skipped: 0 },
  tableRepairs: { added: 0, reidentified: 0 },
  datagrams: { asked: 0, answered: 0, unanswered: 0, late: 0, served: 0, refused: 0, provided: 0, taken: 0, claimsAsked: 0, claimsUnanswered: 0 },
  connectionBound: { evicted: 0, refusedInbound: 0, refusedOutbound: 0, unwanted: 0 },
  fetchClaims: { granted: 0, joined: 0, released: 0 },
};
const fetchClaims = new Counter({
  name: 'peerpull_p2p_fetch_claims_total',
  help: 'Claims of downloads in flight this node decided as a key\'s claim holder: granted (the asker fetches upstream), joined (the asker was sent to the node already fetching), released (a claimant gave its claim up).',
  labelNames: ['cluster', 'outcome'] as const,
  registers: [registry],
});
const connectionBound = new Counter({
  name: 'peerpull_p2p_connection_bound_total',
  help: 'New connections at the connection bound (PEERPULL_MAX_CONNECTIONS): outcome evicted (an idle connection was closed to make room), refused_inbound / refused_outbound (every connection was busy, young or a ring link); foreign: refused at any count, the peer runs another cluster.',
  labelNames: ['cluster', 'outcome'] as const,
  registers: [registry],
});
const datagrams = new Counter({
  name: 'peerpull_p2p_datagrams_total',
  help: 'Datagrams to and from record holders (UDP): this node\'s lookups (outcome answered, unanswered; late: an answer that came after the lookup had given up on it, a sign of busy holders or of this node\'s event loop running late), other nodes\' asks it answered (served), records of ours IP holders acknowledged (provided), records other nodes sent (taken), datagrams dropped (refused).',
  labelNames: ['cluster', 'outcome'] as const,
  registers: [registry],
});
const provideQueries = new Counter({
  name: 'peerpull_p2p_provide_queries_total',
  help: 'kad-dht provide queries for this node\'s keys (each dials its way to the key\'s closest peers): run; skipped_ip_holders (enough of the key\'s IP holders took the record); skipped_recent (a republish while the records the last query placed outlive the next round).',
  labelNames: ['cluster', 'outcome'] as const,
  registers: [registry],
});
const republishes = new Counter({
  name: 'peerpull_p2p_republishes_total',
  help: 'Keys of this node\'s republish rounds: sent (records pushed to the key\'s holders again); skipped_fresh (published less than half a round ago, records outlive the next round).',
  labelNames: ['cluster', 'outcome'] as const,
  registers: [registry],
});
const lookupSteps = new Counter({
  name: 'peerpull_p2p_lookup_steps_total',
  help: 'What network lookups did: datagram_ask (a peer asked by UDP), stream_ask (a peer asked over a connection, outside the DHT query), holder_retry (the next IP holder asked because one was slow or a datagram to it could not be sent), holder_dial (an IP holder dialled), dht_query (a Kademlia query started, which dials its way to the key), ip_quorum_miss (a miss settled by IP holders that answered none, without the DHT query).',
  labelNames: ['cluster', 'step'] as const,
  registers: [registry],
});
const tableRepairs = new Counter({
  name: 'peerpull_p2p_table_repairs_total',
  help: 'While connected with an empty DHT routing table (not ready): connected members this node put in the table itself (added), connections whose peer identify had not described, identified again (reidentified).',
  labelNames: ['cluster', 'outcome'] as const,
  registers: [registry],
});
const heartbeats = new Counter({
  name: 'peerpull_p2p_heartbeats_total',
  help: 'Connection heartbeat pings by outcome (failed: no answer within the timeout, and the connection was closed; skipped: not sent, the connection had been heard from within the interval).',
  labelNames: ['cluster', 'outcome'] as const,
  registers: [registry],
});
const lookupQueried = new Histogram({
  name: 'peerpull_p2p_lookup_peers_queried',
  help: 'Peers that answered a lookup\'s DHT query (0: answered from this node\'s own records or cache).',
  labelNames: ['cluster'] as const,
  buckets: [0, 1, 2, 3, 5, 8, 13, 20, 40],
  registers: [registry],
});
const loopDelay = new Gauge({
  name: 'peerpull_p2p_event_loop_delay_seconds',
  help: 'How late the p2p thread ran its callbacks over the last status interval (2 s), by quantile (0.5, 0.99, 1 = max): every lookup waits this long.',
  labelNames: ['cluster', 'quantile'] as const,
  registers: [registry],
});
const restarts = new Counter({ name: 'peerpull_p2p_thread_restarts_total', help: 'Restarts of the p2p thread after it died.', labelNames: ['cluster'] as const, registers: [registry] });

// ---- configuration for the worker ----

/** Reads the pre-shared key (file or variable) and checks settings that depend on each other. */
export async function p2pWorkerConfig(config: Config): Promise<P2PWorkerConfig> {
  if (config.providerTtl <= config.reprovideInterval) {
    throw new ConfigError('PEERPULL_PROVIDER_TTL', `${config.providerTtl}ms must be longer than PEERPULL_REPROVIDE_INTERVAL (${config.reprovideInterval}ms)`);
  }
  if (config.clusterKey && config.clusterKeyFile) {
    throw new ConfigError('PEERPULL_CLUSTER_KEY_FILE', 'set either PEERPULL_CLUSTER_KEY or PEERPULL_CLUSTER_KEY_FILE, not both');
  }
  let clusterKey = config.clusterKey;
  if (config.clusterKeyFile) {
    let text: string;
    try {
      text = await readFile(config.clusterKeyFile, 'utf8');
    } catch (err) {
      throw new ConfigError('PEERPULL_CLUSTER_KEY_FILE', `cannot read ${config.clusterKeyFile}: ${(err as Error).message}`);
    }
    // Either the bare 64 hex characters or a libp2p swarm.key (/key/swarm/psk/1.0.0/, /base16/, key).
    const lines = text.split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
    const hex = (lines[0] === '/key/swarm/psk/1.0.0/' && lines[1] === '/base16/' ? lines[2] : lines[0])?.toLowerCase() ?? '';
    if (lines.length > 3 || !/^[0-9a-f]{64}$/.test(hex)) {
      throw new ConfigError('PEERPULL_CLUSTER_KEY_FILE', `${config.clusterKeyFile} must hold 64 hex characters or a base16 libp2p swarm.key`);
    }
    clusterKey = hex;
  }
  return {
    listenHost: config.p2pAddr.host,
    listenPort: config.p2pAddr.port,
    advertiseIp: config.advertiseIp,
    registryPort: config.registryAddr.port,
    bootstrapDns: config.bootstrapDns,
    dnsServers: config.dnsServers,
    bootstrapPeers: config.bootstrapPeers,
    bootstrapIntervalMs: config.bootstrapInterval,
    maxConnections: config.maxConnections,
    cluster: config.cluster,
    clusterKey,
    dataDir: config.dataDir,
    reprovideIntervalMs: config.reprovideInterval,
    dhtRefreshIntervalMs: config.dhtRefreshInterval,
    providerTtlMs: config.providerTtl,
    deadPeerTimeoutMs: config.deadPeerTimeout,
    lookupTimeoutMs: config.lookupTimeout,
    lookupCacheTtlMs: config.lookupCacheTtl,
    negativeCacheTtlMs: config.negativeCacheTtl,
  };
}

// ---- the handle ----

export interface P2POptions {
  log?: Logger;
  /** The compiled worker entry; defaults to dist/src/p2p/worker.js beside this file. */
  workerUrl?: URL;
  /** First restart delay; doubles per consecutive crash up to restartMaxMs. */
  restartMinMs?: number;
  restartMaxMs?: number;
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

/** Keys per advertise/withdraw message: bounded so one message never stalls the p2p thread. */
const BATCH = 5000;
/** Extra time main grants a lookup beyond its deadline (thread hop, scheduling). */
const LOOKUP_SLACK_MS = 250;
const REQUEST_TIMEOUT_MS = 30_000;
const P2P_YOUNG_GENERATION_MB = 12;

export interface LookupOptions {
  count?: number;
  timeoutMs?: number;
  /** Peers to leave out (they just failed a fetch of this key); at most 64 are passed on. */
  exclude?: string[];
}

export class P2PError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'P2PError';
  }
}

export class P2P {
  private worker: Worker | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly log: Logger;
  private readonly workerUrl: URL;
  /** What main wants advertised: the source of truth, re-sent to every new incarnation. */
  private readonly wanted = new Set<string>();
  private status_: P2PStatus | undefined;
  private stopping = false;
  private crashes = 0;
  private startedAt = 0;
  private restartTimer: NodeJS.Timeout | undefined;
  private metrics_: P2PMetricsSnapshot | undefined;
  /** The thread's cumulative counters at the previous snapshot (zero for a new incarnation). */
  private counterBase: ThreadCounters = NO_COUNTS;
  private readonly startListeners = new Set<() => void>();
  private firstStart: { resolve(): void; reject(e: Error): void } | undefined;
  /** The p2p thread's provider records, so most lookups are answered here (src/main/store-copy.ts). */
  private readonly copy = new StoreCopy();

  constructor(readonly config: P2PWorkerConfig, private readonly opts: P2POptions = {}) {
    this.log = (opts.log ?? rootLog).child({ thread: 'p2p' });
    this.workerUrl = opts.workerUrl ?? new URL('../p2p/worker.js', import.meta.url);
  }

  static async fromConfig(config: Config, opts: P2POptions = {}): Promise<P2P> {
    return new P2P(await p2pWorkerConfig(config), opts);
  }

  /**
   * Spawns the p2p thread. Resolves once the node listens; rejects if that first start fails
   * (e.g. the port is taken), while the handle keeps retrying in the background.
   */
  start(): Promise<void> {
    this.stopping = false;
    const p = new Promise<void>((resolve, reject) => (this.firstStart = { resolve, reject }));
    this.spawn();
    return p;
  }

  /** Stops the node (it says goodbye to nobody: peers notice the closed connections). */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    const w = this.worker;
    if (!w) return;
    try {
      await this.request({ type: 'stop' }, 5000);
    } catch {
      // Stopping anyway.
    }
    await w.terminate().catch(() => {});
    this.worker = undefined;
  }

  /** Connected to the cluster (or alone in it by design): what /readyz reports. */
  ready(): boolean {
    return this.worker !== undefined && this.status_?.ready === true;
  }

  /** The last status the p2p thread pushed (every 2 s), without a round trip. */
  lastStatus(): P2PStatus | undefined {
    return this.status_;
  }

  /** The last metrics snapshot the p2p thread pushed (counters are per thread incarnation). */
  lastMetrics(): P2PMetricsSnapshot | undefined {
    return this.metrics_;
  }

  /** What main's copy of the thread's records holds (for /status). */
  storeCopyStats(): { keys: number; providers: number; finalMisses: boolean } {
    return this.copy.stats();
  }

  /** Called after every (re)start of the p2p thread, once its advertisements were re-sent. */
  onStart(fn: () => void): () => void {
    this.startListeners.add(fn);
    return () => this.startListeners.delete(fn);
  }

  /** Advertises keys. `wait`: resolve only once the records reached the DHT (benchmarks, tests). */
  async advertise(keys: Iterable<string>, opts: { wait?: boolean; timeoutMs?: number } = {}): Promise<void> {
    const list = [...keys];
    for (const k of list) this.wanted.add(k);
    if (!this.worker) return; // sent with everything else when the thread (re)starts
    for (let i = 0; i < list.length; i += BATCH) {
      await this.request({ type: 'advertise', keys: list.slice(i, i + BATCH), wait: opts.wait }, opts.timeoutMs ?? (opts.wait ? 600_000 : REQUEST_TIMEOUT_MS));
    }
  }

  async withdraw(keys: Iterable<string>): Promise<void> {
    const list = [...keys];
    for (const k of list) this.wanted.delete(k);
    if (!this.worker) return;
    for (let i = 0; i < list.length; i += BATCH) {
      await this.request({ type: 'withdraw', keys: list.slice(i, i + BATCH) }, REQUEST_TIMEOUT_MS);
    }
  }

  /**
   * Nodes that hold `key` (a digest or `registry/repo:tag`), best first (connected ones lead).
   * Never rejects: a failure, a dead p2p thread or the deadline gives [] (the registry then
   * answers 404 and containerd falls back).
   */
  async findProviders(key: string, opts: LookupOptions = {}): Promise<ProviderPeer[]> {
    return (await this.lookup(key, opts)).providers;
  }

  /** findProviders with where the answer came from (diagnostics, the doctor command). */
  async lookup(key: string, opts: LookupOptions = {}): Promise<LookupResult> {
    const t0 = process.hrtime.bigint();
    const count = opts.count ?? 2;
    const exclude = opts.exclude && opts.exclude.length > 0 ? opts.exclude.slice(0, 64) : undefined;
    const result: LookupResult = !this.worker
      ? { providers: [], source: 'none', outcome: 'error' }
      : // main's copy of the thread's records first: an answer there needs no thread hop
        (this.copy.answer(key, count, exclude) ?? (await this.askThread(key, count, Math.max(1, opts.timeoutMs ?? this.config.lookupTimeoutMs), exclude)));
    const cluster = this.config.cluster;
    lookups.inc({ cluster, outcome: result.outcome, source: result.source });
    lookupDuration.observe({ cluster, outcome: result.outcome }, Number(process.hrtime.bigint() - t0) / 1e9);
    if (result.queried !== undefined) lookupQueried.observe({ cluster }, result.queried);
    return result;
  }

  private async askThread(key: string, count: number, deadlineMs: number, exclude?: string[]): Promise<LookupResult> {
    try {
      return (await this.request({ type: 'findProviders', key, count, deadlineMs, ...(exclude ? { exclude } : {}) }, deadlineMs + LOOKUP_SLACK_MS)) as LookupResult;
    } catch (err) {
      this.log.debug('lookup failed', { key, error: err });
      return { providers: [], source: 'none', outcome: (err as Error).message.includes('timed out') ? 'timeout' : 'error' };
    }
  }

  /**
   * Nobody provides `key`: whether another node is fetching it already (stream it from there)
   * or this node's containerd should (go). Never rejects: trouble gives `none`, a plain miss.
   */
  async claimFetch(key: string, timeoutMs: number): Promise<FetchClaimResult> {
    if (!this.worker) return { kind: 'none' };
    try {
      return (await this.request({ type: 'claimFetch', key, deadlineMs: timeoutMs }, timeoutMs + LOOKUP_SLACK_MS)) as FetchClaimResult;
    } catch (err) {
      this.log.debug('fetch claim failed', { key, error: err });
      return { kind: 'none' };
    }
  }

  /** This node's claimed download did not happen (or is done): its holder forgets the claim. */
  releaseFetch(key: string): void {
    if (this.worker) this.request({ type: 'releaseFetch', key }, 5000).catch(() => {});
  }

  /** A fetch from this peer failed: it is not offered again until it proves alive. */
  reportFailure(peerId: string): void {
    if (this.worker) this.request({ type: 'reportFailure', peerId }, 5000).catch(() => {});
  }

  async status(): Promise<P2PStatus> {
    return (await this.request({ type: 'status' }, 5000)) as P2PStatus;
  }

  /** V8 heap of the p2p thread (diagnostics, benchmarks). */
  async heapStatistics(): Promise<{ usedHeapSize: number; totalHeapSize: number; externalMemory: number } | undefined> {
    const w = this.worker as (Worker & { getHeapStatistics?: () => Promise<Record<string, number>> }) | undefined;
    if (!w?.getHeapStatistics) return undefined;
    const h = await w.getHeapStatistics();
    return { usedHeapSize: h.used_heap_size, totalHeapSize: h.total_heap_size, externalMemory: h.external_memory };
  }

  /** Sends a raw value to the p2p thread (tests: malformed messages must be survived). */
  postRaw(value: unknown): void {
    this.worker?.postMessage(value);
  }

  // ---- internals ----

  private request(req: DistributiveOmit<P2PRequest, 'id'>, timeoutMs: number): Promise<unknown> {
    const w = this.worker;
    if (!w) return Promise.reject(new P2PError(`p2p thread not running (${req.type})`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new P2PError(`p2p ${req.type} timed out after ${timeoutMs}ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      w.postMessage({ ...req, id });
    });
  }

  private spawn(): void {
    if (this.stopping) return;
    // Favouring memory over speed in V8's heap sizing nearly halves the p2p thread's heap (60
    // -> 33 MiB at N=30; RSS 141 -> 116 MiB in native-bench/p2p-lookup) with no idle or lookup
    // CPU measurable there. V8 flags are per process: main and the byte-moving pool get it too,
    // where the bytes are off-heap buffers.
    setFlagsFromString('--optimize-for-size');
    const w = new Worker(this.workerUrl, {
      workerData: this.config,
      name: 'peerpull-p2p',
      // Small young generation: the DHT makes many short-lived objects, and V8's default lets
      // the nursery grow to 48 MiB before collecting it, most of a node's memory budget.
      resourceLimits: { maxYoungGenerationSizeMb: P2P_YOUNG_GENERATION_MB },
    });
    this.worker = w;
    this.startedAt = Date.now();
    this.counterBase = NO_COUNTS;
    let fatal: string | undefined;
    w.on('message', (m: P2PFromWorker) => {
      if (m.kind === 'reply') {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        clearTimeout(p.timer);
        if (m.ok) p.resolve(m.result);
        else p.reject(new P2PError(m.error));
      } else if (m.kind === 'store') {
        this.copy.apply(m);
      } else if (m.kind === 'log') {
        this.log[m.level](m.msg, m.fields);
      } else if (m.kind === 'status') {
        this.setStatus(m.status);
        this.metrics_ = m.metrics;
        this.applyMetrics(m.metrics);
      } else if (m.kind === 'started') {
        this.setStatus(m.status);
        this.onStarted();
      } else if (m.kind === 'fatal') {
        fatal = m.error;
        this.log.error('p2p thread cannot start', { error: m.error });
      }
    });
    w.on('error', (err) => this.log.error('p2p thread crashed', { error: err }));
    w.on('exit', (code) => {
      if (this.worker === w) this.worker = undefined;
      this.status_ = undefined;
      this.copy.clear();
      readyGauge.set({ cluster: this.config.cluster }, 0);
      for (const [id, p] of this.pending) {
        clearTimeout(p.timer);
        p.reject(new P2PError('p2p thread exited'));
        this.pending.delete(id);
      }
      if (this.stopping) return;
      if (this.firstStart) {
        this.firstStart.reject(new P2PError(fatal ?? `p2p thread exited with code ${code} before it started`));
        this.firstStart = undefined;
      }
      // A thread that ran a while before dying starts the backoff over.
      if (Date.now() - this.startedAt > 60_000) this.crashes = 0;
      const min = this.opts.restartMinMs ?? 500;
      const delay = Math.min(this.opts.restartMaxMs ?? 30_000, min * 2 ** this.crashes++);
      restarts.inc({ cluster: this.config.cluster });
      this.log.warn('p2p thread exited; restarting it (local content is still served)', { code, inMs: delay });
      this.restartTimer = setTimeout(() => this.spawn(), delay);
      this.restartTimer.unref?.();
    });
  }

  private onStarted(): void {
    if (this.firstStart) {
      this.firstStart.resolve();
      this.firstStart = undefined;
    }
    // A new incarnation knows nothing: advertise everything main wants advertised.
    const keys = [...this.wanted];
    const again = keys.length > 0 ? this.advertise(keys) : Promise.resolve();
    again.then(
      () => {
        for (const fn of this.startListeners) fn();
      },
      (err: Error) => this.log.warn('re-advertising after p2p start failed', { error: err, keys: keys.length }),
    );
  }

  private setStatus(s: P2PStatus): void {
    this.status_ = s;
    readyGauge.set({ cluster: this.config.cluster }, s.ready ? 1 : 0);
  }

  private applyMetrics(m: P2PMetricsSnapshot): void {
    const cluster = this.config.cluster;
    peersGauge.set({ cluster }, m.peers);
    routingGauge.set({ cluster }, m.routingTable);
    advertisedGauge.set({ cluster }, m.advertisedKeys);
    // The thread's counters are cumulative per incarnation: add what is new since last time.
    const base = this.counterBase;
    const add = (c: Counter<'cluster' | 'outcome'>, outcome: string, now: number, before: number) => {
      if (now > before) c.inc({ cluster, outcome }, now - before);
    };
    add(bootstrapAttempts, 'ok', m.bootstrapAttempts.ok, base.bootstrapAttempts.ok);
    add(bootstrapAttempts, 'failed', m.bootstrapAttempts.failed, base.bootstrapAttempts.failed);
    add(bootstrapAttempts, 'ring_ok', m.bootstrapAttempts.ringOk, base.bootstrapAttempts.ringOk);
    add(bootstrapAttempts, 'ring_failed', m.bootstrapAttempts.ringFailed, base.bootstrapAttempts.ringFailed);
    add(recordBatches, 'ok', m.recordBatches.ok, base.recordBatches.ok);
    add(recordBatches, 'failed', m.recordBatches.failed, base.recordBatches.failed);
    for (const [k, step] of [['datagramAsks', 'datagram_ask'], ['streamAsks', 'stream_ask'], ['holderRetries', 'holder_retry'], ['holderDials', 'holder_dial'], ['dhtQueries', 'dht_query'], ['ipQuorumMisses', 'ip_quorum_miss']] as const) {
      if (m.lookupSteps[k] > base.lookupSteps[k]) lookupSteps.inc({ cluster, step }, m.lookupSteps[k] - base.lookupSteps[k]);
    }
    add(provideQueries, 'run', m.provideQueries.run, base.provideQueries.run);
    add(provideQueries, 'skipped_ip_holders', m.provideQueries.ipHolders, base.provideQueries.ipHolders);
    add(provideQueries, 'skipped_recent', m.provideQueries.recent, base.provideQueries.recent);
    add(republishes, 'sent', m.republishes.sent, base.republishes.sent);
    add(republishes, 'skipped_fresh', m.republishes.fresh, base.republishes.fresh);
    add(heartbeats, 'ok', m.heartbeats.ok, base.heartbeats.ok);
    add(heartbeats, 'failed', m.heartbeats.failed, base.heartbeats.failed);
    add(heartbeats, 'skipped', m.heartbeats.skipped, base.heartbeats.skipped);
    add(tableRepairs, 'added', m.tableRepairs.added, base.tableRepairs.added);
    add(tableRepairs, 'reidentified', m.tableRepairs.reidentified, base.tableRepairs.reidentified);
    for (const k of ['answered', 'unanswered', 'late', 'served', 'provided', 'taken', 'refused', 'claimsAsked', 'claimsUnanswered'] as const) add(datagrams, k, m.datagrams[k], base.datagrams[k]);
    add(connectionBound, 'evicted', m.connectionBound.evicted, base.connectionBound.evicted);
    add(connectionBound, 'refused_inbound', m.connectionBound.refusedInbound, base.connectionBound.refusedInbound);
    add(connectionBound, 'refused_outbound', m.connectionBound.refusedOutbound, base.connectionBound.refusedOutbound);
    add(connectionBound, 'foreign', m.connectionBound.unwanted, base.connectionBound.unwanted);
    for (const k of ['granted', 'joined', 'released'] as const) add(fetchClaims, k, m.fetchClaims[k], base.fetchClaims[k]);
    if (m.recordsReceived > base.recordsReceived) recordsReceived.inc({ cluster }, m.recordsReceived - base.recordsReceived);
    this.counterBase = m;
    for (const s of m.dnsResolveSeconds.ok) dnsResolve.observe({ cluster, outcome: 'ok' }, s);
    for (const s of m.dnsResolveSeconds.failed) dnsResolve.observe({ cluster, outcome: 'failed' }, s);
    loopDelay.set({ cluster, quantile: '0.5' }, m.eventLoopDelayMs.p50 / 1000);
    loopDelay.set({ cluster, quantile: '0.99' }, m.eventLoopDelayMs.p99 / 1000);
    loopDelay.set({ cluster, quantile: '1' }, m.eventLoopDelayMs.max / 1000);
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/**
 * Keeps the p2p thread's advertisements equal to the content index: everything now, then every
 * change. (Re-advertising after a p2p restart is the handle's job: it remembers what it was given.)
 */
export function wireContentIndex(p2p: P2P, index: ContentIndex, log: Logger = rootLog): () => void {
  const warn = (what: string) => (err: Error) => log.warn(`p2p ${what} failed`, { error: err });
  p2p.advertise(index.keys()).catch(warn('advertise'));
  return index.onChange((change) => {
    if (change.removed.length > 0) p2p.withdraw(change.removed).catch(warn('withdraw'));
    if (change.added.length > 0) p2p.advertise(change.added).catch(warn('advertise'));
  });
}

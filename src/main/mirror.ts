// The mirror logic for content this node does not hold: which keys may be looked up, finding
// providers through the p2p thread within a deadline, the fetch policy (hedge delay from recent
// peer latencies), and the metrics and recent history the status page shows.

import type { Config } from './config.js';
import type { Logger } from './log.js';
import { Counter, Histogram } from 'prom-client';
import { registry as metricsRegistry } from './metrics.js';
import type { FetchClaimResult, PeerFetchPolicy, PeerFetchReport, PeerTarget, ProviderPeer } from '../shared/messages.js';
import type { Digest, Registry } from '../shared/oci.js';

/** What the mirror needs from the p2p thread (the P2P handle in p2p.ts provides it). */
export interface ProviderFinder {
  findProviders(key: string, opts: { count?: number; timeoutMs?: number; exclude?: string[] }): Promise<ProviderPeer[]>;
  reportFailure(peerId: string): void;
  claimFetch(key: string, timeoutMs: number): Promise<FetchClaimResult>;
  releaseFetch(key: string): void;
}

/**
 * What happened to shared downloads (PEERPULL_SHARE_DOWNLOADS) on this node: `fetching` (nobody
 * had a blob and this node was the first to ask: its containerd fetches it upstream), `joined`
 * (another node was already fetching it: streamed from there), `join_failed` (that node could
 * not serve it: 404, containerd goes upstream), `served` (a peer streamed this node's download),
 * `unavailable` (a peer came for a claimed download that never appeared here: claim released).
 */
export type SharedDownloadEvent = 'fetching' | 'joined' | 'join_failed' | 'served' | 'unavailable';

const sharedDownloads = new Counter({
  name: 'peerpull_shared_downloads_total',
  help: 'Downloads in flight shared between nodes: fetching (this node fetches upstream for the cluster), joined (streamed another node\'s download), join_failed, served (a peer streamed this node\'s download), unavailable (a claimed download never appeared here).',
  labelNames: ['event'] as const,
  registers: [metricsRegistry],
});

export type MirrorOutcome = 'local' | 'peer' | 'miss' | 'error';

export const mirrorRequests = new Counter({
  name: 'peerpull_mirror_requests_total',
  help: 'Content requests by kind (manifest, blob) and outcome: local hit, peer hit, miss (404 so containerd falls back), error.',
  labelNames: ['kind', 'outcome'] as const,
  registers: [metricsRegistry],
});

const peerBytes = new Counter({
  name: 'peerpull_peer_bytes_total',
  help: 'Bytes fetched from other peerpull nodes and passed on to clients.',
  registers: [metricsRegistry],
});

const peerTtfb = new Histogram({
  name: 'peerpull_peer_fetch_ttfb_seconds',
  help: 'Time from asking peers to the winning peer\'s response headers, by kind.',
  labelNames: ['kind'] as const,
  buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
  registers: [metricsRegistry],
});

const peerLookup = new Histogram({
  name: 'peerpull_mirror_lookup_seconds',
  help: 'Provider lookups on the request path, by result (found, none, error).',
  labelNames: ['result'] as const,
  buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25],
  registers: [metricsRegistry],
});

const missSeconds = new Histogram({
  name: 'peerpull_mirror_miss_seconds',
  help: 'Time from a request\'s arrival to its 404 when no peer could serve it (provider lookup and shared-download claim included), by kind: what a miss costs containerd before it tries the next host.',
  labelNames: ['kind'] as const,
  buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25],
  registers: [metricsRegistry],
});

const peerResumes = new Counter({
  name: 'peerpull_peer_resumes_total',
  help: 'Blob transfers that went on from another peer after one broke mid-body.',
  registers: [metricsRegistry],
});

const peerRelookups = new Counter({
  name: 'peerpull_peer_relookups_total',
  help: 'Fresh provider lookups during a blob transfer whose every known provider had failed mid-body, by result (found: it named other providers to go on from; none: the transfer broke).',
  labelNames: ['result'] as const,
  registers: [metricsRegistry],
});

const peerHedges = new Counter({
  name: 'peerpull_peer_hedges_total',
  help: 'Extra providers asked because the first was slow to answer.',
  registers: [metricsRegistry],
});

const peerFailures = new Counter({
  name: 'peerpull_peer_failures_total',
  help: 'Peers that failed a fetch (error, stall, wrong answer); each is reported to the p2p thread.',
  registers: [metricsRegistry],
});

/** A short history for the status page. */
export interface MirrorEvent {
  time: string;
  kind: 'manifest' | 'blob';
  key: string;
  outcome: MirrorOutcome;
  peer?: string;
  detail?: string;
}

const SAMPLES = 256;

/** How long this node remembers being told to fetch a blob (the holder's claim lasts 20 s). */
const OWN_CLAIM_MS = 20_000;

export class Mirror {
  private readonly ttfb: number[] = [];
  /** Shared downloads since start, by event (the status page). */
  readonly sharedCounts: Record<SharedDownloadEvent, number> = { fetching: 0, joined: 0, join_failed: 0, served: 0, unavailable: 0 };
  /** Blobs this node was told to fetch upstream (claimed downloads), with when. */
  private readonly ownClaims = new Map<Digest, number>();
  private readonly registries: Set<string> | null;
  readonly recentMisses: MirrorEvent[] = [];
  lastPeerHit: MirrorEvent | null = null;

  constructor(
    private readonly config: Config,
    private readonly finder: ProviderFinder,
    private readonly log: Logger,
  ) {
    const list = config.mirroredRegistries;
    this.registries = list.length > 0 ? new Set(list) : null;
  }

  /** Whether content of this registry is looked up on peers (PEERPULL_MIRRORED_REGISTRIES). */
  mirrors(registry: Registry): boolean {
    return this.registries === null || this.registries.has(registry);
  }

  /** Whether a tag of this registry may be resolved through peers (PEERPULL_RESOLVE_TAGS). */
  resolvesTags(registry: Registry): boolean {
    return this.config.resolveTags && this.mirrors(registry);
  }

  /**
   * Providers of a key, best first; [] when nobody has it or the lookup deadline passed.
   * `exclude`: peers that just failed a fetch of it (a fresh lookup, not their cached answer).
   */
  async providers(key: string, exclude?: string[]): Promise<PeerTarget[]> {
    const started = performance.now();
    let found: ProviderPeer[];
    let timer: NodeJS.Timeout | undefined;
    try {
      // The deadline is enforced here too: a busy p2p thread must not hold a miss past it.
      const deadline = new Promise<ProviderPeer[]>((resolve) => (timer = setTimeout(() => resolve([]), this.config.mirrorLookupTimeout + 5)));
      found = await Promise.race([
        this.finder.findProviders(key, { count: this.config.peerMaxAttempts + 1, timeoutMs: this.config.mirrorLookupTimeout, ...(exclude ? { exclude } : {}) }),
        deadline,
      ]);
    } catch (err) {
      peerLookup.observe({ result: 'error' }, (performance.now() - started) / 1000);
      this.log.debug('provider lookup failed', { key, error: err });
      return [];
    } finally {
      clearTimeout(timer);
    }
    peerLookup.observe({ result: found.length > 0 ? 'found' : 'none' }, (performance.now() - started) / 1000);
    // Connected peers first (no dial), and a random order among equals so that one popular
    // provider is not asked by every node at once.
    const shuffled = found.map((p) => ({ p, r: Math.random() + (p.connected ? 0 : 1) })).sort((a, b) => a.r - b.r);
    return shuffled.map(({ p }) => ({ peerId: p.peerId, host: p.host, port: p.registryPort }));
  }

  /** Whether downloads in flight are shared (PEERPULL_SHARE_DOWNLOADS). */
  get sharesDownloads(): boolean {
    return this.config.shareDownloads;
  }

  /**
   * Nobody provides `digest`: ask whether another node is fetching it already. `go` means this
   * node's containerd, answered 404, fetches it upstream, and peers will be sent here for it.
   */
  async claim(digest: Digest): Promise<FetchClaimResult> {
    const r = await this.finder.claimFetch(digest, this.config.mirrorLookupTimeout);
    if (r.kind === 'go') {
      if (this.ownClaims.size > 10_000) this.ownClaims.clear();
      this.ownClaims.set(digest, Date.now());
      this.shared('fetching');
    }
    return r;
  }

  /** Whether this node was told to fetch `digest` lately (so a peer's ask for it may wait for the download). */
  claimed(digest: Digest): boolean {
    const at = this.ownClaims.get(digest);
    if (at === undefined) return false;
    if (Date.now() - at > OWN_CLAIM_MS) {
      this.ownClaims.delete(digest);
      return false;
    }
    return true;
  }

  /** A claimed download did not appear here: later askers must not be sent to this node. */
  release(digest: Digest): void {
    if (this.ownClaims.delete(digest)) this.finder.releaseFetch(digest);
  }

  /** Policy for streaming another node's download in flight: one provider, patient. */
  inflightPolicy(): PeerFetchPolicy {
    const stall = this.config.downloadStallTimeout;
    return { hedgeDelayMs: stall, stallMs: stall, maxAttempts: 1 };
  }

  shared(event: SharedDownloadEvent): void {
    sharedDownloads.inc({ event });
    this.sharedCounts[event]++;
  }

  /** Hedge delay: the recent 90th percentile of peer answer times, bounded below and by the stall timeout. */
  policy(): PeerFetchPolicy {
    let hedge = this.config.peerHedgeDelay;
    if (this.ttfb.length >= 16) {
      const sorted = [...this.ttfb].sort((a, b) => a - b);
      hedge = Math.max(this.config.peerHedgeDelay, sorted[Math.floor(sorted.length * 0.9)]!);
    }
    return { hedgeDelayMs: Math.min(hedge, this.config.peerStallTimeout), stallMs: this.config.peerStallTimeout, maxAttempts: this.config.peerMaxAttempts };
  }

  /** Records a finished peer fetch: metrics, latency samples, failed peers to the p2p thread. */
  record(kind: 'manifest' | 'blob', key: string, report: PeerFetchReport, ok: boolean, detail?: string): void {
    if (report.ttfbMs !== undefined) {
      this.ttfb.push(report.ttfbMs);
      if (this.ttfb.length > SAMPLES) this.ttfb.shift();
      peerTtfb.observe({ kind }, report.ttfbMs / 1000);
    }
    if (report.bytes > 0) peerBytes.inc(report.bytes);
    if (report.resumes > 0) peerResumes.inc(report.resumes);
    if (report.hedges > 0) peerHedges.inc(report.hedges);
    if (report.relookups.found > 0) peerRelookups.inc({ result: 'found' }, report.relookups.found);
    if (report.relookups.none > 0) peerRelookups.inc({ result: 'none' }, report.relookups.none);
    for (const peer of new Set(report.failedPeers)) {
      peerFailures.inc();
      this.finder.reportFailure(peer);
    }
    if (ok) {
      this.lastPeerHit = { time: new Date().toISOString(), kind, key, outcome: 'peer', ...(report.winner ? { peer: report.winner } : {}) };
    }
    if (report.failedPeers.length > 0 || report.resumes > 0) {
      this.log.info('peer fetch had trouble', { kind, key, ok, winner: report.winner, failedPeers: report.failedPeers, resumes: report.resumes, relookups: report.relookups, hedges: report.hedges, detail });
    }
  }

  /**
   * Counts an outcome and keeps the last misses for the status page. `startedMs` (the request's
   * arrival, performance.now()) times a miss that containerd waits for; peers' asks pass none.
   */
  outcome(kind: 'manifest' | 'blob', key: string | Digest, outcome: MirrorOutcome, detail?: string, startedMs?: number): void {
    mirrorRequests.inc({ kind, outcome });
    if (outcome === 'miss' && startedMs !== undefined) missSeconds.observe({ kind }, (performance.now() - startedMs) / 1000);
    if (outcome === 'miss' || outcome === 'error') {
      this.recentMisses.push({ time: new Date().toISOString(), kind, key, outcome, ...(detail ? { detail } : {}) });
      if (this.recentMisses.length > 20) this.recentMisses.shift();
    }
  }
}

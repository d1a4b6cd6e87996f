// Provider lookups, the hot path of a pull: every request for content this node lacks asks
// here first, and a miss must be answered in tens of milliseconds so containerd can fall back.
//
// In order: the brief result cache (and the briefer negative cache), a lookup of the same key
// already running (joined, not repeated), this node's own provider store (final when this node
// is one of the key's k record holders: a hit, or a miss nobody else can turn into a hit), then
// the DHT query, stopped as soon as enough live providers are known, or record holders said
// "none", and always by the caller's deadline.

import type { LookupOutcome, LookupResult, LookupSource, ProviderPeer } from '../shared/messages.js';

export interface LookupDeps {
  /** Providers in this node's own store, already mapped; self excluded. */
  local(key: string): Promise<ProviderPeer[]>;
  /**
   * The DHT query: yields batches of providers until done or aborted; ends early once the
   * answer is final. Counts the peers that answered in `stats.queried`.
   */
  network(key: string, signal: AbortSignal, stats: { queried: number }): AsyncIterable<ProviderPeer[]>;
  /** Whether this node is one of the key's record holders, so its store's answer is final. */
  authoritative(key: string): boolean;
  /** Liveness verdict for a provider right now. */
  isLive(p: ProviderPeer): boolean;
  /** Peers to ask: 0 means a network query cannot find anything. */
  routingTableSize(): number;
  cacheTtlMs: number;
  negativeTtlMs: number;
  /** Once one provider is known, wait at most this long for more before answering. */
  settleMs: number;
  now?: () => number;
}

interface CacheEntry {
  providers: ProviderPeer[];
  expires: number;
}

const MAX_CACHE_ENTRIES = 10_000;

export class Lookups {
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inflight = new Map<string, Promise<LookupResult>>();
  private readonly now: () => number;

  constructor(private readonly d: LookupDeps) {
    this.now = d.now ?? Date.now;
  }

  /**
   * `exclude`: peers the caller just saw fail for this key. They are left out of the answer, and a
   * cached or joined answer naming only them is not trusted: the lookup runs afresh.
   */
  async find(key: string, count: number, deadlineMs: number, exclude?: ReadonlySet<string>): Promise<LookupResult> {
    const cached = this.fromCache(key, count, exclude);
    if (cached) return cached;
    const running = this.inflight.get(key);
    if (running) {
      const r = without(await running, exclude);
      if (r.providers.length > 0 || !exclude) return { ...r, source: 'coalesced' };
    }
    // Neither joined by later lookups nor cached: its answer leaves out peers theirs must include.
    if (exclude) return this.run(key, count, deadlineMs, exclude);
    const p = this.run(key, count, deadlineMs).finally(() => this.inflight.delete(key));
    this.inflight.set(key, p);
    return p;
  }

  /** A peer died: drop it from every cached answer (a cached dead provider is a wasted fetch). */
  forgetPeer(peerId: string): void {
    for (const [k, e] of this.cache) {
      if (e.providers.length === 0) continue;
      const keep = e.providers.filter((p) => p.peerId !== peerId);
      if (keep.length === e.providers.length) continue;
      if (keep.length === 0) this.cache.delete(k);
      else e.providers = keep;
    }
  }

  /** A peer withdrew a key: drop it from that key's cached answer. */
  forgetProvider(key: string, peerId: string): void {
    const e = this.cache.get(key);
    if (!e) return;
    e.providers = e.providers.filter((p) => p.peerId !== peerId);
    if (e.providers.length === 0) this.cache.delete(key);
  }

  /** New content here or elsewhere may turn a cached miss into a hit. */
  forgetMiss(key: string): void {
    const e = this.cache.get(key);
    if (e && e.providers.length === 0) this.cache.delete(key);
  }

  private fromCache(key: string, count: number, exclude?: ReadonlySet<string>): LookupResult | undefined {
    const e = this.cache.get(key);
    if (!e) return undefined;
    if (e.expires <= this.now()) {
      this.cache.delete(key);
      return undefined;
    }
    if (e.providers.length === 0) return exclude ? undefined : { providers: [], source: 'negative-cache', outcome: 'notfound' };
    const live = e.providers.filter((p) => this.d.isLive(p));
    if (live.length === 0) {
      this.cache.delete(key);
      return undefined;
    }
    const usable = exclude ? live.filter((p) => !exclude.has(p.peerId)) : live;
    if (usable.length === 0) return undefined;
    return { providers: usable.slice(0, count), source: 'cache', outcome: 'found' };
  }

  private remember(key: string, providers: ProviderPeer[]): void {
    const ttl = providers.length > 0 ? this.d.cacheTtlMs : this.d.negativeTtlMs;
    if (ttl <= 0) return;
    if (this.cache.size >= MAX_CACHE_ENTRIES) {
      // Map keeps insertion order: dropping the oldest tenth is a cheap approximate LRU.
      let n = Math.ceil(MAX_CACHE_ENTRIES / 10);
      for (const k of this.cache.keys()) {
        this.cache.delete(k);
        if (--n === 0) break;
      }
    }
    this.cache.set(key, { providers, expires: this.now() + ttl });
  }

  private async run(key: string, count: number, deadlineMs: number, exclude?: ReadonlySet<string>): Promise<LookupResult> {
    const found = new Map<string, ProviderPeer>();
    const add = (ps: ProviderPeer[]) => {
      for (const p of ps) if (!found.has(p.peerId) && !exclude?.has(p.peerId) && this.d.isLive(p)) found.set(p.peerId, p);
    };
    // The deadline covers everything, and is enforced here rather than by trusting the DHT
    // query to notice its signal: a query waiting on a slow peer may take a while to unwind,
    // and the caller must not wait for it.
    let timedOut = false;
    let stop!: () => void;
    const stopped = new Promise<'stop'>((resolve) => (stop = () => resolve('stop')));
    const deadline = setTimeout(() => {
      timedOut = true;
      stop();
    }, Math.max(1, deadlineMs));
    const ac = new AbortController();
    let it: AsyncIterator<ProviderPeer[]> | undefined;
    let settle: NodeJS.Timeout | undefined;
    let source: LookupSource = 'none';
    let outcome: LookupOutcome = 'notfound';
    let complete = false;
    const stats = { queried: 0 };
    try {
      const local = await Promise.race([this.d.local(key), stopped]);
      if (local !== 'stop') add(local);
      if (found.size > 0) source = 'local';
      // Every provider of a key sends its record to the same k closest peers, so a node holding
      // records for a key is one of them and its store is as complete as any answer the network
      // could give: a local hit ends the lookup without a network round trip.
      // A record holder with nothing in its store has the final answer too: nobody has it.
      if (local === 'stop' || found.size > 0 || this.d.routingTableSize() === 0 || this.d.authoritative(key)) {
        complete = local !== 'stop';
        if (complete && found.size === 0) source = 'local';
      } else {
        it = this.d.network(key, ac.signal, stats)[Symbol.asyncIterator]();
        for (;;) {
          const next = await Promise.race([it.next(), stopped]);
          if (next === 'stop') break;
          if (next.done) {
            complete = true;
            break;
          }
          const before = found.size;
          add(next.value);
          if (found.size > before) {
            source = 'network';
            // The first record holder that answers knows every provider (see above); a short
            // settle lets a near-simultaneous answer add to it.
            if (this.d.settleMs <= 0) break;
            settle ??= setTimeout(stop, this.d.settleMs);
          }
          if (found.size >= count) break;
        }
      }
    } catch (err) {
      if (!ac.signal.aborted && !timedOut) {
        outcome = 'error';
        if (found.size === 0) return { providers: [], source, outcome, queried: stats.queried };
      }
    } finally {
      clearTimeout(deadline);
      if (settle) clearTimeout(settle);
      ac.abort();
      // Unwind the query in the background; its AbortError is expected.
      it?.return?.().catch(() => {});
    }
    if (found.size > 0) outcome = 'found';
    else if (timedOut) outcome = 'timeout';
    // A query cut by its deadline proves nothing: cache only real answers.
    return { ...this.finish(key, found, count, source, outcome, !exclude && (found.size > 0 || complete)), queried: stats.queried };
  }

  private finish(
    key: string,
    found: Map<string, ProviderPeer>,
    count: number,
    source: LookupSource,
    outcome: LookupOutcome,
    cacheable: boolean,
  ): LookupResult {
    const providers = [...found.values()];
    // Connected providers first: their liveness is proven and a fetch reuses a warm path.
    providers.sort((a, b) => Number(b.connected) - Number(a.connected));
    if (cacheable) this.remember(key, providers);
    return { providers: providers.slice(0, count), source, outcome };
  }
}

/** A result without the excluded peers; found only if any are left. */
function without(r: LookupResult, exclude: ReadonlySet<string> | undefined): LookupResult {
  if (!exclude) return r;
  const providers = r.providers.filter((p) => !exclude.has(p.peerId));
  return { ...r, providers, outcome: providers.length > 0 ? 'found' : r.outcome === 'found' ? 'notfound' : r.outcome };
}

// Main's copy of the p2p thread's provider records (fed by src/p2p/store-feed.ts): a lookup
// whose answer is in it needs no trip to the p2p thread, whose event loop a busy node runs
// late (at N=30 on 2 cores the thread hop was the whole lookup tail: p99 in the hundreds of ms
// for answers the thread itself had in a few).
//
// The copy answers only what it can answer as well as the thread: providers we hold a live
// connection to (the thread's liveness rules put those first and never doubt them), and misses
// when the thread says its store is final for every key (a key whose every provider the thread
// found dead is such a miss too). Anything else (unconnected providers,
// which the thread knocks on first; misses that need the network) goes to the thread.

import { keyHashHex } from '../shared/keys.js';
import type { FeedPeer, LookupResult, ProviderPeer, StoreFeed } from '../shared/messages.js';

export class StoreCopy {
  /** Key hash -> provider peer ids. */
  private readonly records = new Map<string, Set<string>>();
  private readonly peers = new Map<string, FeedPeer>();
  private finalMisses = false;

  apply(m: StoreFeed): void {
    if (m.reset) this.clear();
    for (const [key, peer] of m.removed) {
      const set = this.records.get(key);
      if (!set) continue;
      set.delete(peer);
      if (set.size === 0) this.records.delete(key);
    }
    for (const [key, peer] of m.added) {
      let set = this.records.get(key);
      if (!set) this.records.set(key, (set = new Set()));
      set.add(peer);
    }
    for (const p of m.peers) this.peers.set(p.peerId, p);
    for (const id of m.gone) this.peers.delete(id);
    this.finalMisses = m.finalMisses;
  }

  /** The p2p thread is gone: its records with it (a new one feeds a new copy). */
  clear(): void {
    this.records.clear();
    this.peers.clear();
    this.finalMisses = false;
  }

  /** The answer, or undefined when only the p2p thread can give it. */
  answer(key: string, count: number, exclude?: readonly string[]): LookupResult | undefined {
    const set = this.records.get(keyHashHex(key));
    if (!set) return this.finalMisses ? miss() : undefined;
    const providers: ProviderPeer[] = [];
    let dead = 0;
    let left = set.size;
    for (const id of set) {
      if (exclude?.includes(id)) {
        left--;
        continue;
      }
      const p = this.peers.get(id);
      if (!p?.connected) {
        if (p?.dead) dead++;
        continue;
      }
      if (p.host === undefined || p.registryPort === undefined) continue;
      providers.push({ peerId: id, host: p.host, registryPort: p.registryPort, addrs: p.addrs, connected: true });
      if (providers.length >= count) break;
    }
    // Every record names a node the thread found dead (a killed holder whose records have not
    // expired yet): with a final view, nobody has it. Records of only excluded peers go to the
    // thread: it may hold a record this copy has not been fed yet.
    if (providers.length === 0 && left > 0 && dead === left && this.finalMisses) return miss();
    // As many as the thread would give (the fetch hedges over them), or the thread decides: it
    // may add unconnected providers once a knock showed them alive.
    if (providers.length === 0 || providers.length < Math.min(count, left)) return undefined;
    return { providers, source: 'store-copy', outcome: 'found', queried: 0 };
  }

  /** For /status: what the copy holds and whether it answers misses. */
  stats(): { keys: number; providers: number; finalMisses: boolean } {
    return { keys: this.records.size, providers: this.peers.size, finalMisses: this.finalMisses };
  }
}

/** A fresh object each time: callers own the result they get. */
function miss(): LookupResult {
  return { providers: [], source: 'store-copy', outcome: 'notfound', queried: 0 };
}

// Feeds main a copy of this thread's provider records (src/main/store-copy.ts), so the hot path
// of a pull does not wait for this thread: on a busy 2-core node its event loop runs callbacks
// hundreds of milliseconds late now and then (DHT traffic, GC), and every lookup waited for it.
//
// Changes are gathered and posted once per turn of the event loop. Main is sent the state of
// every peer a record names (where its registry is, whether we are connected to it) and of
// those peers again whenever it changes; a record's key goes as the sha-256 of the content key.

import { base32 } from 'multiformats/bases/base32';
import type { FeedPeer, StoreFeed as StoreFeedMessage } from '../shared/messages.js';
import { multihashToKeyHashHex } from '../shared/keys.js';

export interface StoreFeedDeps {
  /** This node's peer id: its own records are not fed (it never provides to itself). */
  self: string;
  post(m: StoreFeedMessage): void;
  /** A provider's current state (its registry endpoint from the peer store, its connection). */
  peer(peerId: string): Promise<FeedPeer>;
  /** Whether a key missing from the store is missing from the cluster. */
  finalMisses(): boolean;
}

export class StoreFeed {
  private added: Array<[string, string]> = [];
  private removed: Array<[string, string]> = [];
  /** Records per peer main knows of: a peer's state is sent while any record names it. */
  private readonly refs = new Map<string, number>();
  private readonly dirty = new Set<string>();
  private gone = new Set<string>();
  private reset = true;
  private final = false;
  private scheduled = false;
  private running = false;
  private stopped = false;

  constructor(private readonly d: StoreFeedDeps) {}

  /** A provider record's datastore key (`<prefix>/<multihash base32>/<peer id>`) appeared or went. */
  record(datastoreKey: string, present: boolean): void {
    const i = datastoreKey.lastIndexOf('/');
    const j = datastoreKey.lastIndexOf('/', i - 1);
    const peerId = datastoreKey.slice(i + 1);
    const mh = datastoreKey.slice(j + 1, i);
    if (j < 0 || peerId === this.d.self) return;
    let hex: string | undefined;
    try {
      hex = multihashToKeyHashHex(base32.baseDecode(mh));
    } catch {
      return; // not one of our keys
    }
    if (!hex) return;
    const n = (this.refs.get(peerId) ?? 0) + (present ? 1 : -1);
    if (present) {
      this.added.push([hex, peerId]);
      if (n === 1) {
        this.dirty.add(peerId);
        this.gone.delete(peerId);
      }
    } else {
      this.removed.push([hex, peerId]);
      if (n <= 0) {
        this.dirty.delete(peerId);
        this.gone.add(peerId);
      }
    }
    if (n > 0) this.refs.set(peerId, n);
    else this.refs.delete(peerId);
    this.schedule();
  }

  /** A peer's connection or addresses changed: main hears of it if a record names it. */
  peerChanged(peerId: string): void {
    if (!this.refs.has(peerId)) return;
    this.dirty.add(peerId);
    this.schedule();
  }

  /** Re-checks finalMisses (the view settles with time, not only on events). */
  tick(): void {
    if (this.d.finalMisses() !== this.final) this.schedule();
  }

  stop(): void {
    this.stopped = true;
  }

  private schedule(): void {
    if (this.scheduled || this.stopped) return;
    this.scheduled = true;
    setImmediate(() => void this.flush());
  }

  private async flush(): Promise<void> {
    this.scheduled = false;
    // A flush still awaiting peer states schedules the next one when it ends.
    if (this.running || this.stopped) return;
    this.running = true;
    try {
      const ids = [...this.dirty];
      this.dirty.clear();
      const peers = await Promise.all(ids.map((id) => this.d.peer(id)));
      // Records and gone peers taken after the awaits: what arrived meanwhile goes now too.
      const m: StoreFeedMessage = {
        kind: 'store',
        reset: this.reset,
        added: this.added,
        removed: this.removed,
        peers: peers.filter((p) => this.refs.has(p.peerId)),
        gone: [...this.gone],
        finalMisses: (this.final = this.d.finalMisses()),
      };
      this.added = [];
      this.removed = [];
      this.gone = new Set();
      this.reset = false;
      this.d.post(m);
    } finally {
      this.running = false;
      if (this.dirty.size > 0 || this.added.length > 0 || this.removed.length > 0 || this.d.finalMisses() !== this.final) this.schedule();
    }
  }
}

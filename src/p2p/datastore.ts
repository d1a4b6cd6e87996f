// The in-memory datastore behind libp2p's peer store and kad-dht's provider records.
//
// libp2p's default MemoryDatastore answers every prefix query by walking every entry (and
// building a Key object for each). kad-dht reads a key's providers with such a query, so each
// lookup, and each GET_PROVIDERS a peer sends us, cost time proportional to all records held:
// with 1,000 keys x 30 providers that is 30,000 entries per lookup, the CPU behind the lookup
// tail. This store indexes keys by their parent path, so a query for `/dht/provider/<cid>`
// touches only that CID's records.
//
// Semantics: a prefix that is a path (`/a/b` or `/a/b/`) whose entries all sit one level below
// it is answered from the index; any other prefix falls back to the walk (correct, just slower).
// Prefixes are matched at path boundaries on the fast path, which is how libp2p and kad-dht
// query (they never ask for a partial path segment).

import { BaseDatastore } from 'datastore-core';
import type { KeyQuery, Pair, Query } from 'interface-datastore';
import { Key } from 'interface-datastore';
import { NotFoundError } from 'interface-store';

interface AbortOptions {
  signal?: AbortSignal;
}

function parentOf(key: string): string {
  const i = key.lastIndexOf('/');
  return i <= 0 ? '/' : key.slice(0, i);
}

export class IndexedMemoryDatastore extends BaseDatastore {
  private readonly data = new Map<string, Uint8Array>();
  /** Parent path -> the keys directly below it. */
  private readonly children = new Map<string, Set<string>>();
  /** Paths with keys two or more levels below them: their prefix queries need the walk. */
  private readonly deep = new Map<string, number>();
  private watcher: { prefix: string; fn: (key: string, present: boolean) => void } | undefined;

  /** Calls `fn` when a key below `prefix` is created or deleted (not when overwritten). */
  watch(prefix: string, fn: (key: string, present: boolean) => void): void {
    this.watcher = { prefix: prefix.endsWith('/') ? prefix : prefix + '/', fn };
  }

  private notify(k: string, present: boolean): void {
    const w = this.watcher;
    if (w && k.startsWith(w.prefix)) w.fn(k, present);
  }

  override put(key: Key, val: Uint8Array, options?: AbortOptions): Key {
    options?.signal?.throwIfAborted();
    const k = key.toString();
    const created = !this.data.has(k);
    if (created) this.index(k, +1);
    this.data.set(k, val);
    if (created) this.notify(k, true);
    return key;
  }

  override get(key: Key, options?: AbortOptions): Uint8Array {
    options?.signal?.throwIfAborted();
    const v = this.data.get(key.toString());
    if (v === undefined) throw new NotFoundError(`no value for ${key.toString()}`);
    return v;
  }

  override has(key: Key, options?: AbortOptions): boolean {
    options?.signal?.throwIfAborted();
    return this.data.has(key.toString());
  }

  override delete(key: Key, options?: AbortOptions): void {
    options?.signal?.throwIfAborted();
    const k = key.toString();
    if (this.data.delete(k)) {
      this.index(k, -1);
      this.notify(k, false);
    }
  }

  get size(): number {
    return this.data.size;
  }

  private index(k: string, delta: 1 | -1): void {
    const parent = parentOf(k);
    let set = this.children.get(parent);
    if (delta > 0) {
      if (!set) this.children.set(parent, (set = new Set()));
      set.add(k);
    } else if (set) {
      set.delete(k);
      if (set.size === 0) this.children.delete(parent);
    }
    // Every ancestor above the parent has this key two or more levels below it.
    for (let p = parentOf(parent); ; p = parentOf(p)) {
      const n = (this.deep.get(p) ?? 0) + delta;
      if (n > 0) this.deep.set(p, n);
      else this.deep.delete(p);
      if (p === '/') break;
    }
  }

  /** The keys a prefix query can match: one parent's children when the index allows it. */
  private candidates(prefix: string | undefined): Iterable<string> {
    if (prefix === undefined || prefix === '' || prefix === '/') return this.data.keys();
    const path = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
    if (this.deep.has(path)) return this.data.keys();
    const below = this.children.get(path);
    const out: string[] = below ? [...below] : [];
    if (!prefix.endsWith('/') && this.data.has(path)) out.push(path);
    return out;
  }

  override *_all(q: Query, options?: AbortOptions): Generator<Pair> {
    options?.signal?.throwIfAborted();
    for (const k of this.candidates(q.prefix)) {
      const value = this.data.get(k);
      if (value === undefined) continue;
      yield { key: new Key(k), value };
    }
  }

  override *_allKeys(q: KeyQuery, options?: AbortOptions): Generator<Key> {
    options?.signal?.throwIfAborted();
    for (const k of this.candidates(q.prefix)) if (this.data.has(k)) yield new Key(k);
  }
}

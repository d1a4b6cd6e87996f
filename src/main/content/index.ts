// The content index: what this node can serve, by digest and by tag, kept in an LRU so a node
// with a huge store cannot grow memory without bound. Content sources (containerd, OCI layout)
// fill it; the registry reads it on every request; the p2p thread advertises its keys.

import type { InflightBlob } from './inflight.js';
import { LRUCache } from 'lru-cache';
import type { BlobLocation } from '../../shared/messages.js';
import { isManifestMediaType, type Digest } from '../../shared/oci.js';

export interface ContentEntry {
  digest: Digest;
  size: number;
  mediaType: string;
  /** Manifests and indexes are served on /manifests/, everything else on /blobs/. */
  manifest: boolean;
}

/** Keys changed by an update: what the p2p thread must advertise or withdraw. */
export interface IndexChange {
  added: string[];
  removed: string[];
}

export type IndexListener = (change: IndexChange) => void;

/** Where content comes from. The registry only ever talks to this interface. */
export interface ContentSource {
  readonly kind: string;
  readonly index: ContentIndex;
  /** Builds the index and starts following changes. Rejects when the source is unusable. */
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Where a pool worker reads the bytes of an indexed digest. */
  locate(entry: ContentEntry): BlobLocation;
  /** true while the source is reachable (containerd connected, layout readable). */
  healthy(): boolean;
  /**
   * A blob being downloaded into this store right now, or just finished and not indexed yet
   * (content/inflight.ts); undefined when there is none, or when the files cannot be read.
   */
  inflight(digest: Digest): Promise<InflightBlob | undefined>;
  /** Whether `inflight` can find downloads here at all (content files readable). */
  readonly servesDownloads: boolean;
}

export class ContentIndex {
  private readonly digests: LRUCache<string, ContentEntry>;
  private readonly tags: LRUCache<string, Digest>;
  private readonly listeners = new Set<IndexListener>();

  constructor(maxEntries: number) {
    this.digests = new LRUCache({ max: maxEntries });
    // Tags are far fewer than digests; a tenth of the bound is plenty.
    this.tags = new LRUCache({ max: Math.max(100, Math.floor(maxEntries / 10)) });
  }

  static entry(digest: Digest, size: number, mediaType: string): ContentEntry {
    return { digest, size, mediaType, manifest: isManifestMediaType(mediaType) };
  }

  get(digest: Digest): ContentEntry | undefined {
    return this.digests.get(digest);
  }

  /** The digest a `registry/repo:tag` key points at. */
  resolveTag(key: string): Digest | undefined {
    return this.tags.get(key);
  }

  /** Drops a digest whose bytes turned out to be gone (garbage collected). */
  forget(digest: Digest): void {
    if (this.digests.delete(digest)) this.emit({ added: [], removed: [digest] });
  }

  get size(): number {
    return this.digests.size + this.tags.size;
  }

  get digestCount(): number {
    return this.digests.size;
  }

  get tagCount(): number {
    return this.tags.size;
  }

  /** Every key this node holds: digests and `registry/repo:tag` strings. */
  *keys(): IterableIterator<string> {
    yield* this.digests.keys();
    yield* this.tags.keys();
  }

  /**
   * Replaces the whole index with a fresh snapshot (startup and periodic resync)
   * and reports the difference, so advertising follows what really changed.
   */
  replace(entries: Iterable<ContentEntry>, tags: Iterable<[string, Digest]>): IndexChange {
    const nextDigests = new Map<string, ContentEntry>();
    for (const e of entries) nextDigests.set(e.digest, e);
    const nextTags = new Map<string, Digest>(tags);
    const change: IndexChange = { added: [], removed: [] };
    for (const k of [...this.digests.keys()]) {
      if (!nextDigests.has(k)) {
        this.digests.delete(k);
        change.removed.push(k);
      }
    }
    for (const k of [...this.tags.keys()]) {
      if (!nextTags.has(k)) {
        this.tags.delete(k);
        change.removed.push(k);
      }
    }
    for (const [k, e] of nextDigests) {
      if (!this.digests.has(k)) change.added.push(k);
      this.digests.set(k, e);
    }
    for (const [k, d] of nextTags) {
      const old = this.tags.get(k);
      if (old !== d) change.added.push(k);
      this.tags.set(k, d);
    }
    this.emit(change);
    return change;
  }

  /** Adds entries and tags found by an event (an image created or updated). */
  add(entries: Iterable<ContentEntry>, tags: Iterable<[string, Digest]>): IndexChange {
    const change: IndexChange = { added: [], removed: [] };
    for (const e of entries) {
      if (!this.digests.has(e.digest)) change.added.push(e.digest);
      this.digests.set(e.digest, e);
    }
    for (const [k, d] of tags) {
      if (this.tags.get(k) !== d) change.added.push(k);
      this.tags.set(k, d);
    }
    this.emit(change);
    return change;
  }

  /** Removes a tag (image deleted). Its blobs stay until a resync shows them gone. */
  removeTag(key: string): IndexChange {
    const change: IndexChange = { added: [], removed: [] };
    if (this.tags.delete(key)) change.removed.push(key);
    this.emit(change);
    return change;
  }

  onChange(fn: IndexListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(change: IndexChange): void {
    if (change.added.length === 0 && change.removed.length === 0) return;
    for (const fn of this.listeners) fn(change);
  }
}

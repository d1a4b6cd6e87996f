// The containerd content source: walks every image of one namespace into the ContentIndex, follows
// image events, resyncs periodically (garbage collection deletes blobs without any event), and
// reconnects with backoff when containerd restarts. Bytes are never read here except manifests
// and indexes, which are small and needed to find the blobs they point at.

import { containerdInflight, type InflightBlob } from '../content/inflight.js';
import { constants as fsc } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import path from 'node:path';
import { LRUCache } from 'lru-cache';
import type { Config } from '../config.js';
import { ContentIndex, type ContentEntry, type ContentSource, type IndexChange } from '../content/index.js';
import { log as rootLog } from '../log.js';
import { indexEntries, indexResyncs, sourceHealthy } from '../metrics.js';
import type { BlobLocation } from '../../shared/messages.js';
import {
  childDescriptors,
  digestHex,
  isManifestMediaType,
  parseDigest,
  parseImageReference,
  tagKey,
  type Descriptor,
  type Digest,
} from '../../shared/oci.js';
import { ContainerdClient, protoStringField, type ContainerdEvent, type ContentInfo, type Subscription } from './client.js';

const log = rootLog.child({ component: 'containerd' });

/** distribution refuses manifests over 4 MiB; anything bigger is not a manifest we should parse. */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** index -> manifest -> config/layers is depth 2; a little slack for nested indexes, never unbounded. */
const MAX_DEPTH = 4;
const RECONNECT_MIN_MS = 200;
const RECONNECT_MAX_MS = 5000;
const STOP_WAIT_MS = 2000;

type Lookup = (digest: Digest) => Promise<ContentInfo | undefined>;

interface Snapshot {
  entries: Map<Digest, ContentEntry>;
  tags: Map<string, Digest>;
}

export class ContainerdSource implements ContentSource {
  readonly kind = 'containerd';
  readonly index: ContentIndex;
  private readonly socket: string;
  private readonly namespace: string;
  private readonly contentPath: string;
  private readonly resyncInterval: number;
  private client: ContainerdClient | undefined;
  private subscription: Subscription | undefined;
  private connected = false;
  private started = false;
  private stopped = false;
  private reconnecting: Promise<void> | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private readonly stopController = new AbortController();
  private unlistenIndex: (() => void) | undefined;
  /** Whether workers can read `<contentPath>/blobs/sha256/<hex>` directly (else gRPC Content.Read). */
  private filesReadable = false;
  /** Events and resyncs run one at a time, in arrival order, so a resync never undoes a newer event. */
  private queue: Promise<unknown> = Promise.resolve();
  /**
   * Manifest digest -> its children. Content is immutable by digest, so this never goes stale, and a
   * resync reads only manifests it has not seen. Only stored manifests are cached (about two per
   * image: index and host manifest), so the bound covers thousands of images.
   */
  private readonly children = new LRUCache<Digest, Descriptor[]>({ max: 10_000 });
  private readonly maxEntries: number;
  private warnedCapacity = false;

  constructor(config: Config, index: ContentIndex) {
    this.index = index;
    this.socket = config.containerdSock;
    this.namespace = config.containerdNamespace;
    this.contentPath = config.contentPath;
    this.resyncInterval = config.resyncInterval;
    this.maxEntries = config.indexMaxEntries;
  }

  healthy(): boolean {
    return this.started && !this.stopped && this.connected;
  }

  /** true while blobs are served from the content store files rather than through gRPC. */
  get contentReadable(): boolean {
    return this.filesReadable;
  }

  locate(entry: ContentEntry): BlobLocation {
    if (this.filesReadable) return { kind: 'file', path: this.blobPath(entry.digest) };
    return { kind: 'containerd', socket: this.socket, namespace: this.namespace, digest: entry.digest };
  }

  get servesDownloads(): boolean {
    return this.filesReadable;
  }

  inflight(digest: Digest): Promise<InflightBlob | undefined> {
    return this.filesReadable ? containerdInflight(this.contentPath, digest) : Promise.resolve(undefined);
  }

  async start(): Promise<void> {
    if (this.started || this.stopped) throw new Error('ContainerdSource.start called twice or after stop');
    const client = await ContainerdClient.create(this.socket, this.namespace);
    this.client = client;
    try {
      const v = await client.ping(5000);
      log.info('containerd connected', { socket: this.socket, namespace: this.namespace, version: v.version });
      this.unlistenIndex = this.index.onChange(() => this.updateIndexMetrics());
      // Subscribe before the first walk so that nothing created during the walk is missed.
      this.subscribe();
      await this.enqueue(() => this.resyncNow('start'));
    } catch (err) {
      this.subscription?.cancel();
      this.subscription = undefined;
      this.unlistenIndex?.();
      client.close();
      this.client = undefined;
      throw new Error(`containerd source: cannot start on ${this.socket} (namespace ${this.namespace}): ${(err as Error).message}`, {
        cause: err,
      });
    }
    this.started = true;
    if (this.subscription) {
      this.setConnected(true);
      this.scheduleResync();
    } else {
      // The event stream broke during the first walk: the index is good, but follow-up needs a reconnect.
      this.setConnected(false);
      this.reconnect();
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.stopController.abort();
    clearTimeout(this.resyncTimer);
    this.subscription?.cancel();
    this.subscription = undefined;
    // Work in flight ends by itself (every call has a deadline), but shutdown must not wait for a
    // call to a hung containerd: give it a moment, then close the channel under it.
    const settled = Promise.all([this.queue.catch(() => undefined), this.reconnecting?.catch(() => undefined)]);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([settled, new Promise((r) => (timer = setTimeout(r, STOP_WAIT_MS)))]);
    clearTimeout(timer);
    this.unlistenIndex?.();
    this.client?.close();
    this.client = undefined;
    this.connected = false;
    sourceHealthy.set({ source: this.kind }, 0);
  }

  /** Rebuilds the index from containerd now (the periodic resync does the same). */
  resync(): Promise<IndexChange> {
    return this.enqueue(() => this.resyncNow('manual'));
  }

  // ---- index building ----

  private blobPath(digest: Digest): string {
    return path.join(this.contentPath, 'blobs', 'sha256', digestHex(digest));
  }

  private async resyncNow(reason: string): Promise<IndexChange> {
    const client = this.requireClient();
    const t0 = performance.now();
    try {
      await this.checkFilesReadable();
      // Images first, then content: a blob collected in between is caught at serve time, while the
      // reverse order would miss blobs of images created in between (their event follows anyway).
      const { images, bad } = await client.listImages();
      for (const b of bad) log.warn('skipping malformed image record', { image: b.name, error: b.error });
      const content = await client.listContent();
      const lookup: Lookup = async (d) => content.get(d);
      const snap: Snapshot = { entries: new Map(), tags: new Map() };
      for (const [i, image] of images.entries()) {
        // Walking cached manifests resolves without I/O: yield now and then so that requests are
        // served while a node with thousands of images resyncs.
        if (i % 100 === 99) await new Promise((r) => setImmediate(r));
        await this.walkImage(image.name, image.target, lookup, snap);
      }
      await this.checkFilesMatch(snap);
      if (snap.entries.size > this.maxEntries && !this.warnedCapacity) {
        // The LRU would evict and every resync re-add: advertising churns and hits turn into misses.
        this.warnedCapacity = true;
        log.warn('the store holds more digests than the index may keep; raise PEERPULL_INDEX_MAX_ENTRIES', {
          digests: snap.entries.size,
          indexMaxEntries: this.maxEntries,
        });
      }
      const change = this.index.replace(snap.entries.values(), snap.tags);
      this.updateIndexMetrics();
      indexResyncs.inc({ outcome: 'ok' });
      // Quiet when a periodic resync finds nothing new: one line a minute per node is noise.
      const quiet = reason === 'timer' && change.added.length === 0 && change.removed.length === 0;
      (quiet ? log.debug : log.info)('index resynced', {
        reason,
        images: images.length,
        digests: snap.entries.size,
        tags: snap.tags.size,
        added: change.added.length,
        removed: change.removed.length,
        files: this.filesReadable,
        ms: Math.round(performance.now() - t0),
      });
      return change;
    } catch (err) {
      indexResyncs.inc({ outcome: 'error' });
      throw err;
    }
  }

  /**
   * Adds one image's reachable content to `snap`: target, then (for indexes) platform manifests,
   * then configs and layers. Descriptors the store does not hold (other platforms, GC) are skipped.
   */
  private async walkImage(name: string, target: Descriptor, lookup: Lookup, snap: Snapshot): Promise<void> {
    let key: string | undefined;
    try {
      const ref = parseImageReference(name);
      if (ref.tag) key = tagKey(ref.registry, ref.repository, ref.tag);
    } catch (err) {
      // Names like `import-2026-11-22` (ctr import without a registry) are still walked for digests.
      log.debug('image name is not a registry reference, no tag key', { image: name, error: err });
    }
    const present = await this.walk(name, target, lookup, snap.entries);
    if (key && present) snap.tags.set(key, target.digest);
  }

  /** Returns whether the root descriptor itself is in the store. */
  private async walk(image: string, root: Descriptor, lookup: Lookup, out: Map<Digest, ContentEntry>): Promise<boolean> {
    const stack: { desc: Descriptor; depth: number }[] = [{ desc: root, depth: 0 }];
    let rootPresent = false;
    while (stack.length > 0) {
      const { desc, depth } = stack.pop()!;
      if (out.has(desc.digest)) {
        if (depth === 0) rootPresent = true;
        continue;
      }
      const info = await lookup(desc.digest);
      if (!info) {
        log.debug('descriptor not in the store, skipped', { image, digest: desc.digest, mediaType: desc.mediaType });
        continue;
      }
      if (depth === 0) rootPresent = true;
      if (info.size !== desc.size) {
        // The store verified the digest when the blob was written, so its size is the true one.
        log.warn('descriptor size differs from the stored blob, using the stored size', {
          image,
          digest: desc.digest,
          descriptorSize: desc.size,
          storedSize: info.size,
        });
      }
      out.set(desc.digest, ContentIndex.entry(desc.digest, info.size, desc.mediaType));
      if (!isManifestMediaType(desc.mediaType)) continue;
      if (depth >= MAX_DEPTH) {
        log.warn('manifest nesting too deep, children skipped', { image, digest: desc.digest, depth });
        continue;
      }
      for (const child of await this.childrenOf(image, desc.digest, desc.mediaType, info.size)) {
        stack.push({ desc: child, depth: depth + 1 });
      }
    }
    return rootPresent;
  }

  private async childrenOf(image: string, digest: Digest, mediaType: string, size: number): Promise<Descriptor[]> {
    const cached = this.children.get(digest);
    if (cached) return cached;
    let body: Uint8Array;
    try {
      body = await this.readSmall(digest, size);
    } catch (err) {
      // Gone between listing and reading (GC), or unreadable: the next resync decides again.
      log.warn('cannot read manifest, its children are skipped for now', { image, digest, error: err });
      return [];
    }
    let children: Descriptor[];
    try {
      // Only what the walk needs: annotations and platforms would multiply the cache's memory.
      children = childDescriptors(mediaType, body).map((d) => ({ mediaType: d.mediaType, digest: d.digest, size: d.size }));
    } catch (err) {
      log.warn('malformed manifest, its children are skipped', { image, digest, mediaType, error: err });
      children = [];
    }
    // Immutable by digest: a malformed body stays malformed, so the verdict is cached too.
    this.children.set(digest, children);
    return children;
  }

  private async readSmall(digest: Digest, size: number): Promise<Uint8Array> {
    if (size > MAX_MANIFEST_BYTES) throw new Error(`${digest} is ${size} bytes, over the ${MAX_MANIFEST_BYTES} byte manifest limit`);
    if (this.filesReadable) {
      try {
        const bytes = await readFile(this.blobPath(digest));
        if (bytes.length === size) return bytes;
      } catch {
        // fall through to gRPC, which is authoritative
      }
    }
    return this.requireClient().readAll(digest, size, MAX_MANIFEST_BYTES);
  }

  private async checkFilesReadable(): Promise<void> {
    const dir = path.join(this.contentPath, 'blobs', 'sha256');
    let ok: boolean;
    try {
      await access(dir, fsc.R_OK | fsc.X_OK);
      ok = true;
    } catch (err) {
      // A fresh store has no blobs/ yet; a readable root is enough, files will appear under it.
      ok = (err as NodeJS.ErrnoException).code === 'ENOENT' && (await access(this.contentPath, fsc.R_OK | fsc.X_OK).then(() => true, () => false));
    }
    if (ok !== this.filesReadable) {
      log.info(ok ? 'content store files readable, serving from files' : 'content store files not readable, serving through gRPC', {
        contentPath: this.contentPath,
      });
    }
    this.filesReadable = ok;
  }

  /**
   * A readable directory that is not this containerd's store (a wrong PEERPULL_CONTENT_PATH) would
   * turn every hit into a miss. Probe a few indexed blobs; if none is there, use gRPC instead.
   */
  private async checkFilesMatch(snap: Snapshot): Promise<void> {
    if (!this.filesReadable || snap.entries.size === 0) return;
    const sample = [...snap.entries.keys()].slice(0, 3);
    for (const d of sample) {
      if (await access(this.blobPath(d), fsc.R_OK).then(() => true, () => false)) return;
    }
    log.warn('content path does not hold containerd\'s blobs, serving through gRPC (check PEERPULL_CONTENT_PATH)', {
      contentPath: this.contentPath,
      probed: sample,
    });
    this.filesReadable = false;
  }

  // ---- events ----

  private subscribe(): void {
    const client = this.requireClient();
    const ns = JSON.stringify(this.namespace);
    this.subscription = client.subscribe(
      [`namespace==${ns},topic~="^/images/"`, `namespace==${ns},topic=="/content/delete"`],
      (e) => this.onEvent(e),
      (err) => this.onDisconnect(err),
    );
  }

  private onEvent(e: ContainerdEvent): void {
    if (e.namespace !== this.namespace) return;
    switch (e.topic) {
      case '/images/create':
      case '/images/update': {
        const name = protoStringField(e.payload, 1);
        if (!name) return log.warn('image event without a name, ignored', { topic: e.topic, type: e.type });
        void this.enqueue(() => this.onImageChanged(name)).catch((err) =>
          log.warn('image event not applied, the next resync catches up', { topic: e.topic, image: name, error: err }),
        );
        return;
      }
      case '/images/delete': {
        const name = protoStringField(e.payload, 1);
        if (!name) return log.warn('image event without a name, ignored', { topic: e.topic, type: e.type });
        void this.enqueue(async () => this.onImageDeleted(name));
        return;
      }
      case '/content/delete': {
        const raw = protoStringField(e.payload, 1);
        try {
          const digest = parseDigest(raw ?? '');
          void this.enqueue(async () => this.index.forget(digest));
        } catch (err) {
          log.debug('content delete event with an unsupported digest, ignored', { digest: raw, error: err });
        }
        return;
      }
      default:
        return;
    }
  }

  private async onImageChanged(name: string): Promise<void> {
    const client = this.requireClient();
    const image = await client.getImage(name);
    if (!image) {
      // Deleted again before we looked: its delete event follows and removes the tag.
      return;
    }
    const snap: Snapshot = { entries: new Map(), tags: new Map() };
    await this.walkImage(image.name, image.target, (d) => client.info(d), snap);
    const change = this.index.add(snap.entries.values(), snap.tags);
    log.debug('image indexed from event', { image: name, digests: snap.entries.size, added: change.added.length });
  }

  private onImageDeleted(name: string): void {
    let ref;
    try {
      ref = parseImageReference(name);
    } catch {
      return;
    }
    if (!ref.tag) return;
    // Blobs stay: other images may share them, and GC (seen by the next resync) decides when they go.
    this.index.removeTag(tagKey(ref.registry, ref.repository, ref.tag));
    log.debug('image tag removed by event', { image: name });
  }

  // ---- health and reconnection ----

  private onDisconnect(err: Error): void {
    this.subscription = undefined;
    // Before start() finished, start() itself notices the missing subscription.
    if (this.stopped || !this.started) return;
    log.warn('containerd event stream lost, reconnecting', { socket: this.socket, error: err });
    this.setConnected(false);
    this.reconnect();
  }

  private reconnect(): void {
    if (this.reconnecting || this.stopped) return;
    this.reconnecting = this.reconnectLoop().finally(() => (this.reconnecting = undefined));
  }

  private async reconnectLoop(): Promise<void> {
    const signal = this.stopController.signal;
    for (let attempt = 0; !this.stopped; attempt++) {
      const base = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** attempt);
      await sleep(base * (0.8 + Math.random() * 0.4), signal);
      if (this.stopped) return;
      try {
        await this.requireClient().ping(2000);
        this.subscription?.cancel();
        this.subscribe();
        await this.enqueue(() => this.resyncNow('reconnect'));
        this.setConnected(true);
        log.info('containerd reconnected', { socket: this.socket, attempts: attempt + 1 });
        this.scheduleResync();
        return;
      } catch (err) {
        this.subscription?.cancel();
        this.subscription = undefined;
        // Log the first failure and then rarely: a long outage must not flood the log.
        if (attempt === 0 || attempt % 20 === 0) {
          log.warn('containerd still unreachable', { socket: this.socket, attempt: attempt + 1, error: err });
        }
      }
    }
  }

  private scheduleResync(): void {
    clearTimeout(this.resyncTimer);
    if (this.stopped) return;
    this.resyncTimer = setTimeout(() => {
      this.enqueue(() => this.resyncNow('timer')).then(
        () => this.scheduleResync(),
        (err) => {
          if (this.stopped) return;
          log.warn('periodic resync failed', { socket: this.socket, error: err });
          // A failed resync means containerd is unreachable or broken: reconnect, which resyncs.
          this.setConnected(false);
          this.subscription?.cancel();
          this.subscription = undefined;
          this.reconnect();
        },
      );
    }, this.resyncInterval);
    // Never the reason a process stays alive.
    this.resyncTimer.unref();
  }

  private setConnected(up: boolean): void {
    this.connected = up;
    sourceHealthy.set({ source: this.kind }, up && !this.stopped ? 1 : 0);
  }

  private updateIndexMetrics(): void {
    indexEntries.set({ kind: 'digest' }, this.index.digestCount);
    indexEntries.set({ kind: 'tag' }, this.index.tagCount);
  }

  private enqueue<T>(fn: () => Promise<T> | T): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private requireClient(): ContainerdClient {
    if (!this.client) throw new Error('containerd source is not started');
    return this.client;
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

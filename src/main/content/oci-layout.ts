// The embedded content source: an OCI image-layout directory (`oci-layout`, `index.json`,
// `blobs/sha256/...`). It lets peerpull run with no containerd at all (quick start, the storm
// tool's local nodes) while exercising the same index, registry and pool as production.

import { watch, type FSWatcher } from 'node:fs';
import { access, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { BlobLocation } from '../../shared/messages.js';
import { childDescriptors, digestHex, isManifestMediaType, parseDescriptor, parseImageReference, tagKey, type Descriptor, type Digest } from '../../shared/oci.js';
import type { Logger } from '../log.js';
import { indexEntries, indexResyncs, sourceHealthy } from '../metrics.js';
import { ContentIndex, type ContentEntry, type ContentSource } from './index.js';
import { layoutInflight, type InflightBlob } from './inflight.js';

/** Manifests larger than this are not parsed (a real one is a few KiB; 4 MiB is the usual registry cap). */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

export class OciLayoutSource implements ContentSource {
  readonly kind = 'oci-layout';
  private timer: NodeJS.Timeout | null = null;
  private watcher: FSWatcher | null = null;
  private debounce: NodeJS.Timeout | null = null;
  private syncing: Promise<void> | null = null;
  private again = false;
  private ok = false;

  constructor(
    private readonly dir: string,
    readonly index: ContentIndex,
    private readonly resyncMs: number,
    private readonly log: Logger,
  ) {}

  readonly servesDownloads = true;

  inflight(digest: Digest): Promise<InflightBlob | undefined> {
    return layoutInflight(this.dir, digest);
  }

  async start(): Promise<void> {
    try {
      await access(path.join(this.dir, 'index.json'));
    } catch (err) {
      throw new Error(`OCI layout ${this.dir} has no readable index.json: ${(err as Error).message}`);
    }
    await this.resync();
    this.timer = setInterval(() => void this.resync(), this.resyncMs);
    this.timer.unref();
    // A writer (the storm tool's nodes, a user copying images in) replaces index.json: resync at
    // once instead of waiting for the timer, so new content is advertised within moments.
    try {
      this.watcher = watch(this.dir, (_event, file) => {
        if (file !== 'index.json') return;
        if (this.debounce) clearTimeout(this.debounce);
        this.debounce = setTimeout(() => void this.resync(), 50);
      });
      this.watcher.on('error', (err) => this.log.warn('oci-layout: watching index.json failed; the timer still resyncs', { error: err }));
    } catch (err) {
      this.log.warn('oci-layout: cannot watch index.json; the timer still resyncs', { error: err });
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.debounce) clearTimeout(this.debounce);
    this.watcher?.close();
    this.watcher = null;
  }

  healthy(): boolean {
    return this.ok;
  }

  locate(entry: ContentEntry): BlobLocation {
    return { kind: 'file', path: this.blobPath(entry.digest) };
  }

  private blobPath(d: Digest): string {
    return path.join(this.dir, 'blobs', 'sha256', digestHex(d));
  }

  /** Rebuilds the index from index.json; one at a time, and once more if asked again meanwhile. */
  async resync(): Promise<void> {
    if (this.syncing) {
      this.again = true;
      return this.syncing;
    }
    this.syncing = (async () => {
      do {
        this.again = false;
        await this.resyncOnce();
      } while (this.again);
    })().finally(() => (this.syncing = null));
    return this.syncing;
  }

  /** Rebuilds the index from index.json; a broken image is logged and skipped, never fatal. */
  private async resyncOnce(): Promise<void> {
    const started = performance.now();
    try {
      const raw = await readFile(path.join(this.dir, 'index.json'), 'utf8');
      const top = JSON.parse(raw) as { manifests?: unknown[] };
      const entries = new Map<string, ContentEntry>();
      const tags: [string, Digest][] = [];
      for (const m of top.manifests ?? []) {
        let d: Descriptor;
        try {
          d = parseDescriptor(m);
        } catch (err) {
          this.log.warn('oci-layout: skipping bad descriptor in index.json', { error: err });
          continue;
        }
        if (!(await this.walk(d, entries))) continue;
        const name = d.annotations?.['io.containerd.image.name'] ?? d.annotations?.['org.opencontainers.image.ref.name'];
        if (!name) continue;
        try {
          const ref = parseImageReference(name);
          if (ref.tag) tags.push([tagKey(ref.registry, ref.repository, ref.tag), d.digest]);
        } catch {
          // A bare tag (no registry/repository) cannot be addressed by a mirror request; served by digest only.
          this.log.debug('oci-layout: image name is not a full reference; served by digest only', { name });
        }
      }
      this.index.replace(entries.values(), tags);
      this.ok = true;
      indexResyncs.inc({ outcome: 'ok' });
      this.log.debug('oci-layout: index rebuilt', { digests: entries.size, tags: tags.length, ms: Math.round(performance.now() - started) });
    } catch (err) {
      this.ok = false;
      indexResyncs.inc({ outcome: 'error' });
      this.log.error('oci-layout: resync failed', { dir: this.dir, error: err });
    }
    sourceHealthy.set({ source: this.kind }, this.ok ? 1 : 0);
    indexEntries.set({ kind: 'digest' }, this.index.digestCount);
    indexEntries.set({ kind: 'tag' }, this.index.tagCount);
  }

  /** Adds d and everything below it that is present; false when d itself is absent or unreadable. */
  private async walk(d: Descriptor, into: Map<string, ContentEntry>): Promise<boolean> {
    if (into.has(d.digest)) return true;
    const size = await stat(this.blobPath(d.digest)).then((s) => s.size, () => -1);
    if (size !== d.size) return false; // missing (e.g. a platform never pulled) or not the described content
    into.set(d.digest, ContentIndex.entry(d.digest, d.size, d.mediaType));
    if (!isManifestMediaType(d.mediaType)) return true;
    if (d.size > MAX_MANIFEST_BYTES) {
      this.log.warn('oci-layout: manifest too large to walk', { digest: d.digest, size: d.size });
      return true;
    }
    let children: Descriptor[];
    try {
      children = childDescriptors(d.mediaType, await readFile(this.blobPath(d.digest)));
    } catch (err) {
      this.log.warn('oci-layout: unreadable manifest, children skipped', { digest: d.digest, error: err });
      return true;
    }
    for (const c of children) await this.walk(c, into);
    return true;
  }
}

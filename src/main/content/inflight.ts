// Finding a blob this node's containerd is downloading right now, so that a peer sent here as
// the node fetching it (a claimed download, src/p2p/claims.ts) can stream it as it grows.
//
// containerd writes a download into `<content root>/ingest/<dir>/`: `data` (the bytes so far,
// appended), `total` (the expected size, from the descriptor), `ref` (the writer's reference,
// ending in the digest, e.g. `k8s.io-12-layer-sha256:<hex>`). The directory name hashes that
// reference, which includes a sequence number, so it is found by reading the `ref` files (a
// node has a handful of ingests at a time). A finished download is renamed to
// `blobs/sha256/<hex>`. The embedded store's writer (the storm tool's nodes) uses
// `ingest/<hex>/` with the same files.

import { open, readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { digestHex, type Digest } from '../../shared/oci.js';

export interface InflightBlob {
  path: string;
  /** The whole blob's size (the ingest's `total`). */
  size: number;
  /** Already renamed into the store: no longer growing. */
  complete: boolean;
}

/** Ingest directories read at most per look (a content store with more is not a node's). */
const MAX_INGESTS = 512;

async function total(dir: string): Promise<number | undefined> {
  const t = Number((await readFile(path.join(dir, 'total'), 'utf8').catch(() => '')).trim());
  return Number.isSafeInteger(t) && t > 0 ? t : undefined;
}

async function finished(root: string, digest: Digest): Promise<InflightBlob | undefined> {
  const file = path.join(root, 'blobs', 'sha256', digestHex(digest));
  const st = await stat(file).catch(() => undefined);
  return st?.isFile() ? { path: file, size: st.size, complete: true } : undefined;
}

async function fromIngest(dir: string): Promise<InflightBlob | undefined> {
  const size = await total(dir);
  if (size === undefined) return undefined;
  const data = path.join(dir, 'data');
  // Opened and closed at once: only proves the file is there and readable now.
  const fh = await open(data, 'r').catch(() => undefined);
  if (!fh) return undefined;
  await fh.close();
  return { path: data, size, complete: false };
}

/** The blob in containerd's content store: finished, or an ingest in progress. */
export async function containerdInflight(contentRoot: string, digest: Digest): Promise<InflightBlob | undefined> {
  const done = await finished(contentRoot, digest);
  if (done) return done;
  const ingestRoot = path.join(contentRoot, 'ingest');
  const dirs = await readdir(ingestRoot).catch(() => [] as string[]);
  const suffix = `sha256:${digestHex(digest)}`;
  for (const d of dirs.slice(0, MAX_INGESTS)) {
    const dir = path.join(ingestRoot, d);
    const ref = await readFile(path.join(dir, 'ref'), 'utf8').catch(() => '');
    if (!ref.trim().endsWith(suffix)) continue;
    const found = await fromIngest(dir);
    if (found) return found;
  }
  // Renamed between the two looks.
  return finished(contentRoot, digest);
}

/** The blob in an OCI layout the storm tool's nodes write into. */
export async function layoutInflight(dir: string, digest: Digest): Promise<InflightBlob | undefined> {
  return (await finished(dir, digest)) ?? (await fromIngest(path.join(dir, 'ingest', digestHex(digest)))) ?? (await finished(dir, digest));
}

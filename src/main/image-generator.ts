// Generates real OCI images with random layers, written into an OCI image-layout directory
// (and optionally a tar of it that `ctr images import` accepts). Used by the demo store, the tests
// and the pull-storm tool: images like the reference benchmark's (N layers of random bytes,
// single-platform or a multi-platform index).

import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { once } from 'node:events';
import { MediaType, parseImageReference, type Descriptor, type Digest } from '../shared/oci.js';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface ImageSpec {
  /** Fully qualified name, e.g. `docker.io/library/demo:1.0`. */
  name: string;
  /** Byte size of each layer's file payload (the tar adds ~1.5 KiB). */
  layerSizes: number[];
  /** One platform gives a plain manifest; several give an index of per-platform manifests. */
  platforms?: Platform[];
}

export interface GeneratedManifest {
  platform: Platform;
  manifest: Descriptor;
  config: Descriptor;
  layers: Descriptor[];
}

export interface GeneratedImage {
  name: string;
  /** The descriptor the tag points at: an index for multi-platform images, else the manifest. */
  target: Descriptor;
  manifests: GeneratedManifest[];
  /** Every blob of the image, target first. */
  all: Descriptor[];
}

const LAYOUT_FILE = JSON.stringify({ imageLayoutVersion: '1.0.0' });

function blobPath(layout: string, digest: string): string {
  return path.join(layout, 'blobs', 'sha256', digest.slice('sha256:'.length));
}

async function writeBlob(layout: string, bytes: Uint8Array): Promise<Digest> {
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
  const p = blobPath(layout, digest);
  await writeFile(p + '.tmp', bytes);
  await rename(p + '.tmp', p);
  return digest;
}

/** A ustar header for one regular file. */
function tarHeader(name: string, size: number, mode = 0o644, type = '0'): Buffer {
  const h = Buffer.alloc(512);
  const put = (s: string, off: number, len: number) => h.write(s, off, Math.min(len, Buffer.byteLength(s)), 'utf8');
  const octal = (n: number, len: number) => n.toString(8).padStart(len - 1, '0') + '\0';
  if (Buffer.byteLength(name) > 100) throw new Error(`tar entry name too long: ${name}`);
  put(name, 0, 100);
  put(octal(mode, 8), 100, 8);
  put(octal(0, 8), 108, 8);
  put(octal(0, 8), 116, 8);
  put(octal(size, 12), 124, 12);
  put(octal(1_700_000_000, 12), 136, 12);
  h.fill(' ', 148, 156);
  put(type, 156, 1);
  put('ustar\0', 257, 6);
  put('00', 263, 2);
  let sum = 0;
  for (const b of h) sum += b;
  put(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8);
  return h;
}

function tarPadding(size: number): Buffer {
  return Buffer.alloc((512 - (size % 512)) % 512);
}

/** Streams a layer (a tar holding one file of random bytes) into the layout, hashing as it goes. */
async function writeRandomLayer(layout: string, payload: number, label: string): Promise<Descriptor> {
  const tmp = path.join(layout, 'blobs', 'sha256', `.layer-${randomBytes(8).toString('hex')}`);
  const out = createWriteStream(tmp);
  const hash = createHash('sha256');
  let size = 0;
  const emit = async (b: Buffer) => {
    hash.update(b);
    size += b.length;
    if (!out.write(b)) await once(out, 'drain');
  };
  await emit(tarHeader(`data/${label}.bin`, payload));
  let left = payload;
  while (left > 0) {
    const n = Math.min(left, 1024 * 1024);
    await emit(randomBytes(n));
    left -= n;
  }
  await emit(tarPadding(payload));
  await emit(Buffer.alloc(1024)); // end-of-archive marker
  out.end();
  await once(out, 'close');
  const digest = `sha256:${hash.digest('hex')}` as Digest;
  await rename(tmp, blobPath(layout, digest));
  return { mediaType: MediaType.OciLayer, digest, size };
}

async function readIndex(layout: string): Promise<{ schemaVersion: number; mediaType: string; manifests: Descriptor[] }> {
  try {
    return JSON.parse(await readFile(path.join(layout, 'index.json'), 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    return { schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] };
  }
}

/** Creates `layout` if needed and adds one image to it; the image's tag replaces any old one. */
export async function generateImage(layout: string, spec: ImageSpec): Promise<GeneratedImage> {
  const ref = parseImageReference(spec.name);
  if (!ref.tag) throw new Error(`image name ${spec.name} needs a tag`);
  await mkdir(path.join(layout, 'blobs', 'sha256'), { recursive: true });
  await writeFile(path.join(layout, 'oci-layout'), LAYOUT_FILE);
  const platforms = spec.platforms?.length ? spec.platforms : [{ os: 'linux', architecture: 'amd64' }];
  const manifests: GeneratedManifest[] = [];
  const all: Descriptor[] = [];
  const nonce = randomBytes(8).toString('hex');
  for (const platform of platforms) {
    const layers: Descriptor[] = [];
    for (const [i, payload] of spec.layerSizes.entries()) {
      layers.push(await writeRandomLayer(layout, payload, `${platform.architecture}-${i}`));
    }
    const configJson = Buffer.from(
      JSON.stringify({
        architecture: platform.architecture,
        os: platform.os,
        ...(platform.variant ? { variant: platform.variant } : {}),
        config: { Env: ['PATH=/bin'], Labels: { 'peerpull.generated': nonce } },
        rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
        history: layers.map(() => ({ created_by: 'peerpull image generator' })),
      }),
    );
    const config: Descriptor = { mediaType: MediaType.OciConfig, digest: await writeBlob(layout, configJson), size: configJson.length };
    const manifestJson = Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config, layers }),
    );
    const manifest: Descriptor = {
      mediaType: MediaType.OciManifest,
      digest: await writeBlob(layout, manifestJson),
      size: manifestJson.length,
      platform: { os: platform.os, architecture: platform.architecture, ...(platform.variant ? { variant: platform.variant } : {}) },
    };
    manifests.push({ platform, manifest, config, layers });
    all.push(manifest, config, ...layers);
  }
  let target: Descriptor;
  if (manifests.length === 1) {
    const { platform: _p, ...m } = manifests[0]!.manifest;
    target = m;
  } else {
    const indexJson = Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: manifests.map((m) => m.manifest) }),
    );
    target = { mediaType: MediaType.OciIndex, digest: await writeBlob(layout, indexJson), size: indexJson.length };
    all.unshift(target);
  }
  const index = await readIndex(layout);
  index.manifests = index.manifests.filter((m) => m.annotations?.['io.containerd.image.name'] !== spec.name);
  index.manifests.push({
    ...target,
    annotations: { 'io.containerd.image.name': spec.name, 'org.opencontainers.image.ref.name': ref.tag },
  });
  await writeFile(path.join(layout, 'index.json.tmp'), JSON.stringify(index));
  await rename(path.join(layout, 'index.json.tmp'), path.join(layout, 'index.json'));
  return { name: spec.name, target, manifests, all };
}

/**
 * Writes a tar of the layout holding just `images` (what `ctr images import` reads):
 * `oci-layout`, an `index.json` naming them, and their blobs.
 */
export async function writeLayoutTar(layout: string, images: GeneratedImage[], tarFile: string): Promise<void> {
  const out = createWriteStream(tarFile);
  const put = async (b: Buffer) => {
    if (!out.write(b)) await once(out, 'drain');
  };
  const putFile = async (name: string, bytes: Buffer) => {
    await put(tarHeader(name, bytes.length));
    await put(bytes);
    await put(tarPadding(bytes.length));
  };
  await putFile('oci-layout', Buffer.from(LAYOUT_FILE));
  const index = {
    schemaVersion: 2,
    mediaType: MediaType.OciIndex,
    manifests: images.map((img) => ({
      ...img.target,
      annotations: { 'io.containerd.image.name': img.name, 'org.opencontainers.image.ref.name': parseImageReference(img.name).tag },
    })),
  };
  await putFile('index.json', Buffer.from(JSON.stringify(index)));
  await put(tarHeader('blobs/', 0, 0o755, '5'));
  await put(tarHeader('blobs/sha256/', 0, 0o755, '5'));
  const seen = new Set<string>();
  for (const img of images) {
    for (const d of img.all) {
      if (seen.has(d.digest)) continue;
      seen.add(d.digest);
      const p = blobPath(layout, d.digest);
      const size = (await stat(p)).size;
      await put(tarHeader(`blobs/sha256/${d.digest.slice(7)}`, size));
      for await (const chunk of createReadStream(p)) await put(chunk as Buffer);
      await put(tarPadding(size));
    }
  }
  await put(Buffer.alloc(1024));
  out.end();
  await once(out, 'close');
}

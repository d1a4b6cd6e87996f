// One image pull exactly as containerd does it through a mirror (hosts.toml with the node's
// peerpull first, then the upstream): HEAD the tag with the four manifest types in Accept, GET the
// manifest or index by digest, pick the platform manifest, GET config and layers, every request with
// `?ns=<registry>`. Each request goes to the mirror first; a 404 or a refused connection moves it to
// the next host. Every byte is hashed: a digest mismatch fails the pull, as containerd fails it.
// A LayoutSink writes what was pulled into the node's store, as containerd's content store does.

import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Agent, request, type Dispatcher } from 'undici';

export const ACCEPT_MANIFESTS = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  '*/*',
].join(', ');

const INDEX_TYPES = new Set(['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json']);

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os: string; architecture: string; variant?: string };
}

export type HostKind = 'mirror' | 'upstream';
export type Phase = 'resolve' | 'manifest' | 'config' | 'layers';
export const PHASES: Phase[] = ['resolve', 'manifest', 'config', 'layers'];

export class PullError extends Error {
  constructor(
    readonly kind: 'digest-mismatch' | 'size-mismatch' | 'not-found' | 'http' | 'network' | 'bad-manifest' | 'aborted',
    message: string,
  ) {
    super(message);
    this.name = 'PullError';
  }
}

export interface PullResult {
  node: string;
  image: string;
  wave: number;
  ok: boolean;
  error?: string;
  errorKind?: string;
  /** ms since the run started */
  start: number;
  end: number;
  totalMs: number;
  phases: Record<Phase, number>;
  bytes: Record<HostKind, number>;
  requests: number;
  /** Time to each 404 the mirror answered (the cost peerpull adds before the fallback). */
  mirrorMissMs: number[];
  /** Mirror requests that failed without an answer, or broke mid-body, and went on to the next host. */
  mirrorErrors: number;
  /** Blobs already in the sink (not fetched). */
  skipped: number;
}

/** A pull that has not done anything yet: both pull paths (HTTP and containerd) fill one in. */
export function newPullResult(node: string, image: string, wave: number, start: number): PullResult {
  return {
    node,
    image,
    wave,
    ok: false,
    start,
    end: 0,
    totalMs: 0,
    phases: { resolve: 0, manifest: 0, config: 0, layers: 0 },
    bytes: { mirror: 0, upstream: 0 },
    requests: 0,
    mirrorMissMs: [],
    mirrorErrors: 0,
    skipped: 0,
  };
}

/** Where pulled content goes: an OCI layout the node's peerpull serves (its "containerd"). */
export class LayoutSink {
  private indexLock: Promise<void> = Promise.resolve();
  constructor(readonly dir: string) {}

  static async create(dir: string): Promise<LayoutSink> {
    await mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
    await writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    const idx = path.join(dir, 'index.json');
    const exists = await stat(idx).then(() => true, () => false);
    if (!exists) await writeFile(idx, JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [] }));
    return new LayoutSink(dir);
  }

  blobPath(digest: string): string {
    return path.join(this.dir, 'blobs', 'sha256', digest.slice(7));
  }

  tmpPath(): string {
    return path.join(this.dir, 'blobs', 'sha256', `.ingest-${randomBytes(8).toString('hex')}`);
  }

  async has(d: Descriptor): Promise<boolean> {
    return stat(this.blobPath(d.digest)).then((s) => s.size === d.size, () => false);
  }

  /** Names the image in index.json (what a finished containerd pull does); peerpull's resync picks it up. */
  addImage(name: string, target: Descriptor): Promise<void> {
    const run = this.indexLock.then(async () => {
      const file = path.join(this.dir, 'index.json');
      const index = JSON.parse(await readFile(file, 'utf8')) as { manifests: Record<string, unknown>[] };
      index.manifests = index.manifests.filter((m) => (m.annotations as Record<string, string> | undefined)?.['io.containerd.image.name'] !== name);
      const tag = name.slice(name.lastIndexOf(':') + 1);
      index.manifests.push({
        mediaType: target.mediaType,
        digest: target.digest,
        size: target.size,
        annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': tag },
      });
      const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
      await writeFile(tmp, JSON.stringify(index));
      await rename(tmp, file);
    });
    this.indexLock = run.catch(() => undefined);
    return run;
  }

  /** Drops everything (between scenarios): an empty index, no blobs. */
  async wipe(): Promise<void> {
    await this.indexLock;
    await writeFile(path.join(this.dir, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [] }));
    await rm(path.join(this.dir, 'blobs'), { recursive: true, force: true });
    await mkdir(path.join(this.dir, 'blobs', 'sha256'), { recursive: true });
  }
}

/**
 * A blob file written in batches of about 1 MiB (one writev each), one batch in flight while the
 * next arrives. A write stream costs a write per received chunk: that was 0.13 of the puller's 0.3
 * CPU-s per 100 MB, on a machine where the puller shares 2 cores with the nodes it measures.
 */
class BlobWriter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private pos = 0;
  private inflight: Promise<void> = Promise.resolve();
  private failed: Error | null = null;
  private constructor(
    private readonly fh: FileHandle,
    readonly file: string,
  ) {}

  static async open(file: string): Promise<BlobWriter> {
    return new BlobWriter(await open(file, 'w'), file);
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.failed) throw this.failed;
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    if (this.pendingBytes >= 1 << 20) await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.pendingBytes === 0) return;
    const batch = this.pending;
    const at = this.pos;
    this.pos += this.pendingBytes;
    this.pending = [];
    this.pendingBytes = 0;
    await this.inflight;
    // Kept as a rejection-free promise: a failure surfaces on the next write or at close.
    this.inflight = this.fh.writev(batch, at).then(
      () => undefined,
      (err: Error) => void (this.failed ??= err),
    );
  }

  async close(): Promise<void> {
    await this.flush();
    await this.inflight;
    await this.fh.close();
    if (this.failed) throw this.failed;
  }

  async discard(): Promise<void> {
    await this.inflight;
    await this.fh.close().catch(() => undefined);
    await rm(this.file, { force: true }).catch(() => undefined);
  }
}

export interface PullOptions {
  node: string;
  wave?: number;
  /** Fully qualified `registry/repository:tag`. */
  image: string;
  /** The node's peerpull (http://ip:port); absent for a baseline pull straight from the upstream. */
  mirror?: string;
  /** The upstream registry; absent when the mirror alone must answer (a 404 is then a failure). */
  upstream?: string;
  platform?: { os: string; architecture: string };
  sink?: LayoutSink;
  /** Parallel blob downloads (containerd's max_concurrent_downloads, default 3). */
  concurrency?: number;
  dispatcher?: Dispatcher;
  /** Called with every body chunk's size as it arrives. */
  onBytes?: (n: number, host: HostKind) => void;
  signal?: AbortSignal;
  /** Time origin for start/end (performance.now() of the run start). */
  t0?: number;
}

export function splitReference(image: string): { registry: string; repository: string; tag: string } {
  const slash = image.indexOf('/');
  const colon = image.lastIndexOf(':');
  if (slash <= 0 || colon < slash) throw new PullError('bad-manifest', `image "${image}" must be registry/repository:tag`);
  return { registry: image.slice(0, slash), repository: image.slice(slash + 1, colon), tag: image.slice(colon + 1) };
}

let defaultAgent: Agent | undefined;
export function pullAgent(): Agent {
  defaultAgent ??= new Agent({ connections: 64, headersTimeout: 60_000, bodyTimeout: 60_000, keepAliveTimeout: 10_000 });
  return defaultAgent;
}

/** Pulls one image; never throws: failures are in the result. */
export async function pullImage(opts: PullOptions): Promise<PullResult> {
  const t0 = opts.t0 ?? performance.now();
  const started = performance.now();
  const result = newPullResult(opts.node, opts.image, opts.wave ?? 0, started - t0);
  const hosts: [HostKind, string][] = [];
  if (opts.mirror) hosts.push(['mirror', opts.mirror.replace(/\/+$/, '')]);
  if (opts.upstream) hosts.push(['upstream', opts.upstream.replace(/\/+$/, '')]);
  const dispatcher = opts.dispatcher ?? pullAgent();
  const platform = opts.platform ?? { os: 'linux', architecture: 'amd64' };
  try {
    if (hosts.length === 0) throw new PullError('http', 'no host to pull from');
    const ref = splitReference(opts.image);
    const ns = `?ns=${encodeURIComponent(ref.registry)}`;
    const url = (base: string, kind: 'manifests' | 'blobs', r: string) => `${base}/v2/${ref.repository}/${kind}/${r}${ns}`;

    // One request through the host list, as containerd's resolver/fetcher walks hosts.toml.
    const fetchOne = async (kind: 'manifests' | 'blobs', r: string, method: 'HEAD' | 'GET', expect?: Descriptor): Promise<{ headers: Record<string, string>; body: Buffer | null }> => {
      let lastErr: Error | null = null;
      let offset = 0; // bytes of a blob already received from a host that broke mid-body
      const keep = kind === 'manifests';
      // Blobs hash as they stream; manifests (small, may start over) hash once whole.
      const hash = expect && !keep ? createHash('sha256') : null;
      const small: Buffer[] = [];
      let out: BlobWriter | null = null;
      if (expect && opts.sink && !keep) out = await BlobWriter.open(opts.sink.tmpPath());
      try {
        for (const [host, base] of hosts) {
          const reqStarted = performance.now();
          result.requests++;
          const headers: Record<string, string> = {};
          if (kind === 'manifests') headers.accept = expect?.mediaType ? `${expect.mediaType}, ${ACCEPT_MANIFESTS}` : ACCEPT_MANIFESTS;
          if (offset > 0) headers.range = `bytes=${offset}-`;
          let res: Dispatcher.ResponseData;
          try {
            res = await request(url(base, kind, r), { method, headers, dispatcher, ...(opts.signal ? { signal: opts.signal } : {}) });
          } catch (err) {
            if (opts.signal?.aborted) throw new PullError('aborted', 'aborted');
            lastErr = err as Error;
            if (host === 'mirror') result.mirrorErrors++;
            continue;
          }
          if (res.statusCode === 404) {
            await res.body.dump().catch(() => undefined);
            if (host === 'mirror') result.mirrorMissMs.push(performance.now() - reqStarted);
            lastErr = new PullError('not-found', `${kind}/${r}: 404 from ${host}`);
            continue;
          }
          const ok = offset > 0 ? res.statusCode === 206 : res.statusCode === 200;
          if (!ok) {
            await res.body.dump().catch(() => undefined);
            if (host === 'mirror') {
              result.mirrorErrors++;
              lastErr = new PullError('http', `${kind}/${r}: HTTP ${res.statusCode} from mirror`);
              continue;
            }
            throw new PullError('http', `${kind}/${r}: HTTP ${res.statusCode} from ${host}`);
          }
          const h: Record<string, string> = {};
          for (const [k, v] of Object.entries(res.headers)) h[k] = Array.isArray(v) ? v.join(', ') : String(v);
          if (method === 'HEAD') {
            await res.body.dump().catch(() => undefined);
            return { headers: h, body: null };
          }
          try {
            for await (const c of res.body) {
              const chunk = c as Buffer;
              hash?.update(chunk);
              offset += chunk.length;
              result.bytes[host] += chunk.length;
              opts.onBytes?.(chunk.length, host);
              if (keep) small.push(chunk);
              else if (out) await out.write(chunk);
              if (expect && offset > expect.size) throw new PullError('size-mismatch', `${r}: more than the ${expect.size} bytes described`);
            }
          } catch (err) {
            if (err instanceof PullError) throw err;
            if (opts.signal?.aborted) throw new PullError('aborted', 'aborted');
            // Broken mid-body: containerd keeps the partial ingest and goes on from that offset.
            lastErr = err as Error;
            if (host === 'mirror') result.mirrorErrors++;
            if (keep) {
              offset = 0; // manifests are tiny: the next host sends it whole
              small.length = 0;
            }
            continue;
          }
          if (expect) {
            if (offset !== expect.size) throw new PullError('size-mismatch', `${r}: got ${offset} bytes from ${host}, descriptor says ${expect.size}`);
            const got = `sha256:${hash ? hash.digest('hex') : createHash('sha256').update(Buffer.concat(small)).digest('hex')}`;
            if (got !== expect.digest) throw new PullError('digest-mismatch', `${r}: content from ${host} hashes to ${got}`);
          }
          if (out) {
            const w = out;
            out = null;
            try {
              await w.close();
              await rename(w.file, opts.sink!.blobPath(expect!.digest));
            } catch (err) {
              await w.discard();
              throw err;
            }
          } else if (keep && expect && opts.sink) {
            await writeFile(opts.sink.blobPath(expect.digest), Buffer.concat(small));
          }
          return { headers: h, body: keep ? Buffer.concat(small) : null };
        }
        if (lastErr instanceof PullError) throw lastErr;
        throw new PullError('network', `${kind}/${r}: ${lastErr?.message ?? 'no host answered'}`);
      } finally {
        if (out) await out.discard();
      }
    };

    const timed = async <T>(phase: Phase, fn: () => Promise<T>): Promise<T> => {
      const s = performance.now();
      try {
        return await fn();
      } finally {
        result.phases[phase] += performance.now() - s;
      }
    };

    // 1. resolve the tag
    const head = await timed('resolve', () => fetchOne('manifests', ref.tag, 'HEAD'));
    const digest = head.headers['docker-content-digest'];
    const mediaType = (head.headers['content-type'] ?? '').split(';')[0]!.trim();
    const size = Number(head.headers['content-length']);
    if (!digest || !/^sha256:[a-f0-9]{64}$/.test(digest)) throw new PullError('bad-manifest', `HEAD ${ref.tag}: no Docker-Content-Digest`);
    const target: Descriptor = { digest, mediaType, size };

    // 2. manifest (and the platform's manifest when the tag names an index)
    const manifest = await timed('manifest', async () => {
      const top = await fetchOne('manifests', digest, 'GET', target);
      let body = top.body!;
      let type = (top.headers['content-type'] ?? mediaType).split(';')[0]!.trim();
      if (INDEX_TYPES.has(type)) {
        const idx = JSON.parse(body.toString('utf8')) as { manifests?: Descriptor[] };
        const pick = (idx.manifests ?? []).find((m) => m.platform?.os === platform.os && m.platform?.architecture === platform.architecture);
        if (!pick) throw new PullError('bad-manifest', `index ${digest} has no ${platform.os}/${platform.architecture} manifest`);
        const sub = await fetchOne('manifests', pick.digest, 'GET', pick);
        body = sub.body!;
        type = pick.mediaType;
      }
      try {
        return JSON.parse(body.toString('utf8')) as { config: Descriptor; layers: Descriptor[] };
      } catch {
        throw new PullError('bad-manifest', `manifest of ${opts.image} is not JSON`);
      }
    });
    if (!manifest.config?.digest || !Array.isArray(manifest.layers)) throw new PullError('bad-manifest', `manifest of ${opts.image} has no config or layers`);

    const blob = async (d: Descriptor) => {
      if (opts.sink && (await opts.sink.has(d))) {
        result.skipped++;
        return;
      }
      await fetchOne('blobs', d.digest, 'GET', d);
    };
    // 3. config, 4. layers (in parallel, bounded)
    await timed('config', () => blob(manifest.config));
    await timed('layers', async () => {
      const queue = [...manifest.layers];
      const workers = Array.from({ length: Math.min(opts.concurrency ?? 3, queue.length) }, async () => {
        for (let d = queue.shift(); d; d = queue.shift()) await blob(d);
      });
      await Promise.all(workers);
    });
    if (opts.sink) await opts.sink.addImage(opts.image, target);
    result.ok = true;
  } catch (err) {
    result.ok = false;
    result.error = (err as Error).message;
    result.errorKind = err instanceof PullError ? err.kind : 'network';
  }
  const ended = performance.now();
  result.end = ended - t0;
  result.totalMs = ended - started;
  return result;
}

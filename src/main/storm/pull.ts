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
import { peerRequest, type BodySink } from '../../workers/peer-http.js';

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

  /**
   * Where a download of `d` is written while in flight: `ingest/<hex>/data` beside its `total`,
   * as containerd keeps one, so the node's peerpull can serve it to peers as it grows
   * (content/inflight.ts). A second writer of the same blob on this node gets a private file.
   */
  async ingestPath(d: Descriptor): Promise<string> {
    const root = path.join(this.dir, 'ingest');
    await mkdir(root, { recursive: true });
    const dir = path.join(root, d.digest.slice(7));
    try {
      await mkdir(dir);
    } catch {
      return this.tmpPath();
    }
    await writeFile(path.join(dir, 'total'), String(d.size));
    return path.join(dir, 'data');
  }

  /** The download at `file` is over (renamed into the store, or dropped): its ingest goes. */
  async ingestDone(file: string): Promise<void> {
    if (path.basename(file) === 'data') await rm(path.dirname(file), { recursive: true, force: true }).catch(() => undefined);
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
    await rm(path.join(this.dir, 'ingest'), { recursive: true, force: true });
    await mkdir(path.join(this.dir, 'blobs', 'sha256'), { recursive: true });
  }
}

const BATCH = 1 << 20;

/**
 * One blob on its way into the store: every byte is hashed as it arrives and written in 1 MiB
 * batches from two buffers (one filling while the other is written), so a transfer allocates
 * nothing per chunk. The simple client reads the socket straight into these buffers
 * (space/filled); undici's chunks are copied in (push). Without a store it only hashes. More than
 * `limit` bytes is a size mismatch, raised as the bytes arrive.
 */
class BlobReceiver implements BodySink {
  received = 0;
  /** Told of every piece's length as it arrives (set per host asked). */
  onBytes: (n: number) => void = () => {};
  private readonly hash = createHash('sha256');
  private readonly bufs: Buffer[];
  private cur = 0;
  private fill = 0;
  private pos = 0;
  /** Each buffer's write in progress, if any. */
  private readonly writes: (Promise<void> | null)[] = [null, null];
  private lastWrite: Promise<void> = Promise.resolve();
  private failed: Error | null = null;

  private constructor(
    private readonly fh: FileHandle | null,
    readonly file: string | null,
    private readonly limit: number,
    private readonly what: string,
  ) {
    this.bufs = fh ? [Buffer.allocUnsafe(BATCH), Buffer.allocUnsafe(BATCH)] : [Buffer.allocUnsafe(256 * 1024)];
  }

  static async open(file: string | null, limit: number, what: string): Promise<BlobReceiver> {
    return new BlobReceiver(file ? await open(file, 'w') : null, file, limit, what);
  }

  digest(): string {
    return `sha256:${this.hash.digest('hex')}`;
  }

  space(max: number): Uint8Array {
    const b = this.bufs[this.cur]!;
    const at = this.fh ? this.fill : 0;
    return b.subarray(at, Math.min(b.length, at + max));
  }

  filled(view: Uint8Array): boolean | Promise<boolean> {
    this.take(view);
    if (!this.fh) return true;
    this.fill += view.length;
    return this.fill === BATCH ? this.rotate() : true;
  }

  push(piece: Uint8Array): boolean | Promise<boolean> {
    if (!this.fh) {
      this.take(piece);
      return true;
    }
    let off = 0;
    while (off < piece.length) {
      const n = Math.min(BATCH - this.fill, piece.length - off);
      const part = piece.subarray(off, off + n);
      this.take(part);
      this.bufs[this.cur]!.set(part, this.fill);
      this.fill += n;
      off += n;
      if (this.fill === BATCH) {
        const r = this.rotate();
        // The caller keeps `piece` until the promise settles (undici's chunk is ours; the simple
        // client's socket is paused meanwhile).
        if (r !== true) return off < piece.length ? r.then((ok) => ok && this.push(piece.subarray(off))) : r;
      }
    }
    return true;
  }

  /** Writes what is left and closes the file. */
  async finish(): Promise<void> {
    if (!this.fh) return;
    if (this.fill > 0) this.startWrite(this.cur, this.fill);
    await Promise.all(this.writes);
    await this.fh.close();
    if (this.failed) throw this.failed;
  }

  async discard(): Promise<void> {
    if (!this.fh) return;
    await Promise.all(this.writes);
    await this.fh.close().catch(() => undefined);
    await rm(this.file!, { force: true }).catch(() => undefined);
  }

  private take(view: Uint8Array): void {
    this.received += view.length;
    if (this.received > this.limit) throw new PullError('size-mismatch', `${this.what}: more than the ${this.limit} bytes described`);
    this.hash.update(view);
    this.onBytes(view.length);
  }

  /** The current buffer is full: write it, and go on in the other one once its own write is done. */
  private rotate(): true | Promise<boolean> {
    this.startWrite(this.cur, BATCH);
    this.cur ^= 1;
    this.fill = 0;
    if (this.failed) throw this.failed;
    const pending = this.writes[this.cur];
    return pending
      ? pending.then(() => {
          if (this.failed) throw this.failed;
          return true;
        })
      : true;
  }

  private startWrite(i: number, len: number): void {
    const buf = this.bufs[i]!;
    const at = this.pos;
    this.pos += len;
    const fh = this.fh!;
    const run = async () => {
      for (let done = 0; done < len; ) done += (await fh.write(buf, done, len - done, at + done)).bytesWritten;
    };
    // One write at a time, in file order: peerpull may be serving this file to peers as it grows
    // (a shared download), and a later batch landing first would leave a hole that reads as zeros.
    // Kept rejection-free: a failure surfaces on the next rotation or at finish().
    const p: Promise<void> = this.lastWrite.then(run).then(
      () => {
        if (this.writes[i] === p) this.writes[i] = null;
      },
      (err: Error) => {
        this.failed ??= err;
        if (this.writes[i] === p) this.writes[i] = null;
      },
    );
    this.writes[i] = p;
    this.lastWrite = p;
  }
}

/** One host's answer to one request, whichever client asked. */
interface Answer {
  status: number;
  /** Lower-case names. */
  headers: Record<string, string>;
  /** Streams the body into the receiver; rejects if it breaks or the receiver refuses it. */
  stream(into: BlobReceiver): Promise<void>;
  /** The whole body (small: manifests), refusing more than `limit` bytes. */
  whole(limit: number): Promise<Buffer>;
  /** Drops the body. */
  drop(): Promise<void>;
}

async function askUndici(url: string, method: 'HEAD' | 'GET', headers: Record<string, string>, dispatcher: Dispatcher, signal: AbortSignal | undefined): Promise<Answer> {
  const res = await request(url, { method, headers, dispatcher, ...(signal ? { signal } : {}) });
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) h[k] = Array.isArray(v) ? v.join(', ') : String(v);
  return {
    status: res.statusCode,
    headers: h,
    async stream(into) {
      for await (const c of res.body) {
        const r = into.push(c as Buffer);
        if (r !== true && !(await r)) throw new Error('receiver stopped');
      }
    },
    async whole(limit) {
      const parts: Buffer[] = [];
      let n = 0;
      for await (const c of res.body) {
        n += (c as Buffer).length;
        if (n > limit) throw new PullError('size-mismatch', `${url}: more than the ${limit} bytes described`);
        parts.push(c as Buffer);
      }
      return Buffer.concat(parts);
    },
    drop: () => res.body.dump().catch(() => undefined),
  };
}

const NEVER = new AbortController().signal;

/** The client peerpull's pool threads use for peers: plain HTTP/1.1, Content-Length bodies only. */
async function askSimple(base: string, pathAndQuery: string, method: 'HEAD' | 'GET', headers: Record<string, string>, signal: AbortSignal | undefined): Promise<Answer> {
  const u = new URL(base);
  const res = await peerRequest({
    host: u.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: Number(u.port || 80),
    method,
    path: pathAndQuery,
    headers,
    signal: signal ?? NEVER,
    headersTimeoutMs: 60_000,
    idleTimeoutMs: 60_000,
  });
  return {
    status: res.status,
    headers: Object.fromEntries(res.headers),
    stream: (into) => res.read(into),
    whole: (limit) => res.readAll(limit),
    // Answers to HEAD and small bodies (404s) are read, so that the connection stays warm.
    drop: () => (method === 'HEAD' || res.contentLength <= 64 * 1024 ? res.readAll(64 * 1024).then(() => undefined, () => undefined) : Promise.resolve(res.discard())),
  };
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
  /**
   * The upstream speaks the plain HTTP peerpull speaks (no TLS, no redirects, Content-Length
   * bodies): storm's own upstream. The mirror (a peerpull node) always does. Such hosts are asked
   * with peerpull's own peer client (workers/peer-http.ts), which reads blobs straight into the
   * receiver's buffers: undici's per-chunk buffers made the puller the largest CPU user of a
   * rolling wave on 2 cores. Any other upstream (a real registry) is asked with undici.
   */
  simpleUpstream?: boolean;
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

    const simple = (host: HostKind, base: string) => base.startsWith('http://') && (host === 'mirror' || opts.simpleUpstream === true);
    const ask = (host: HostKind, base: string, kind: 'manifests' | 'blobs', r: string, method: 'HEAD' | 'GET', headers: Record<string, string>) =>
      simple(host, base)
        ? askSimple(base, `/v2/${ref.repository}/${kind}/${r}${ns}`, method, headers, opts.signal)
        : askUndici(url(base, kind, r), method, headers, dispatcher, opts.signal);

    // One request through the host list, as containerd's resolver/fetcher walks hosts.toml.
    const fetchOne = async (kind: 'manifests' | 'blobs', r: string, method: 'HEAD' | 'GET', expect?: Descriptor): Promise<{ headers: Record<string, string>; body: Buffer | null }> => {
      let lastErr: Error | null = null;
      // Blobs hash as they stream (into the store, when there is one); a host that breaks
      // mid-body leaves its bytes in the receiver and the next one is asked for the rest, as
      // containerd keeps a partial ingest. Manifests (small, may start over) hash once whole.
      const blob = expect && kind === 'blobs' ? await BlobReceiver.open(opts.sink ? await opts.sink.ingestPath(expect) : null, expect.size, r) : null;
      let kept = false;
      try {
        for (const [host, base] of hosts) {
          const reqStarted = performance.now();
          result.requests++;
          const offset = blob?.received ?? 0;
          const headers: Record<string, string> = {};
          if (kind === 'manifests') headers.accept = expect?.mediaType ? `${expect.mediaType}, ${ACCEPT_MANIFESTS}` : ACCEPT_MANIFESTS;
          if (offset > 0) headers.range = `bytes=${offset}-`;
          let res: Answer;
          try {
            res = await ask(host, base, kind, r, method, headers);
          } catch (err) {
            if (opts.signal?.aborted) throw new PullError('aborted', 'aborted');
            lastErr = err as Error;
            if (host === 'mirror') result.mirrorErrors++;
            continue;
          }
          if (res.status === 404) {
            await res.drop();
            if (host === 'mirror') result.mirrorMissMs.push(performance.now() - reqStarted);
            lastErr = new PullError('not-found', `${kind}/${r}: 404 from ${host}`);
            continue;
          }
          const ok = offset > 0 ? res.status === 206 : res.status === 200;
          if (!ok) {
            await res.drop();
            if (host === 'mirror') {
              result.mirrorErrors++;
              lastErr = new PullError('http', `${kind}/${r}: HTTP ${res.status} from mirror`);
              continue;
            }
            throw new PullError('http', `${kind}/${r}: HTTP ${res.status} from ${host}`);
          }
          if (method === 'HEAD') {
            await res.drop();
            return { headers: res.headers, body: null };
          }
          let body: Buffer | null = null;
          try {
            if (blob) {
              blob.onBytes = (n) => {
                result.bytes[host] += n;
                opts.onBytes?.(n, host);
              };
              await res.stream(blob);
            } else {
              body = await res.whole(expect?.size ?? 16 * 1024 * 1024);
              result.bytes[host] += body.length;
              opts.onBytes?.(body.length, host);
            }
          } catch (err) {
            if (err instanceof PullError) throw err;
            if (opts.signal?.aborted) throw new PullError('aborted', 'aborted');
            // Broken mid-body: go on from this offset with the next host.
            lastErr = err as Error;
            if (host === 'mirror') result.mirrorErrors++;
            continue;
          }
          if (expect) {
            const size = blob ? blob.received : body!.length;
            if (size !== expect.size) throw new PullError('size-mismatch', `${r}: got ${size} bytes from ${host}, descriptor says ${expect.size}`);
            const got = blob ? blob.digest() : `sha256:${createHash('sha256').update(body!).digest('hex')}`;
            if (got !== expect.digest) throw new PullError('digest-mismatch', `${r}: content from ${host} hashes to ${got}`);
          }
          if (blob?.file) {
            kept = true;
            try {
              await blob.finish();
              await rename(blob.file, opts.sink!.blobPath(expect!.digest));
            } catch (err) {
              await rm(blob.file, { force: true }).catch(() => undefined);
              throw err;
            }
          } else if (body && expect && opts.sink) {
            await writeFile(opts.sink.blobPath(expect.digest), body);
          }
          return { headers: res.headers, body };
        }
        if (lastErr instanceof PullError) throw lastErr;
        throw new PullError('network', `${kind}/${r}: ${lastErr?.message ?? 'no host answered'}`);
      } finally {
        if (blob && !kept) await blob.discard();
        if (blob?.file) await opts.sink!.ingestDone(blob.file);
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

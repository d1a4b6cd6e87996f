// The registry front end on uWebSockets.js: the OCI pull API (GET/HEAD manifests and blobs),
// probes. Requests are parsed once into typed values; the answer comes from the content index
// (local), and later from peers. Blob bytes are streamed by the pool; manifests are served
// from a small in-memory cache because they are tiny and asked for on every pull.

import { App, us_listen_socket_close, us_socket_local_port, type HttpRequest, type HttpResponse, type TemplatedApp, type us_listen_socket } from 'uWebSockets.js';
import { stat } from 'node:fs/promises';
import { LRUCache } from 'lru-cache';
import type { Config } from '../config.js';
import type { ContentEntry, ContentSource } from '../content/index.js';
import type { Logger } from '../log.js';
import { bytesServed, httpDuration, httpRequests, inflightRequests } from '../metrics.js';
import type { BlobPool } from '../pool.js';
import { MediaType, tagKey, type Digest } from '../../shared/oci.js';
import { HttpError, STATUS, errorBody, parseRange, parseRegistryPath, type OciErrorCode, type RegistryRequest } from './http.js';
import { streamBlob, type ActiveStream } from './stream.js';

/** Header a peerpull sets on requests it forwards to another peerpull: answer locally only. */
export const PEER_HOP_HEADER = 'x-peerpull-hop';

export interface RegistryDeps {
  config: Config;
  source: ContentSource;
  pool: BlobPool;
  log: Logger;
  /** true when /readyz should answer 200. */
  ready(): boolean;
}

type Route = 'base' | 'manifests' | 'blobs' | 'probe' | 'other';

/** What a handler needs from a request; uWS invalidates `req` when the handler returns. */
interface Incoming {
  method: 'GET' | 'HEAD';
  range: string;
  started: number;
  aborted: boolean;
  /** Counted in `inflight` (until done). */
  counted: boolean;
  route: Route;
  onAbort?: () => void;
}

export class Registry {
  readonly app: TemplatedApp;
  private readonly streams = new Set<ActiveStream>();
  private readonly manifests: LRUCache<string, Uint8Array>;
  private listenSocket: us_listen_socket | null = null;
  private inflight = 0;

  constructor(private readonly deps: RegistryDeps) {
    const cacheBytes = deps.config.manifestCacheBytes;
    this.manifests = new LRUCache<string, Uint8Array>({
      maxSize: Math.max(1, cacheBytes),
      sizeCalculation: (v) => Math.max(1, v.byteLength),
      max: cacheBytes === 0 ? 1 : 100_000,
    });
    // GC'd or replaced content must not linger in the cache.
    deps.source.index.onChange(({ removed }) => {
      for (const k of removed) this.manifests.delete(k);
    });
    this.app = App();
    this.app.any('/*', (res, req) => this.handle(res, req));
  }

  /** Starts listening; resolves with the bound port (useful with port 0). */
  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const cb = (sock: us_listen_socket | false) => {
        if (!sock) return reject(new Error(`registry: cannot listen on ${host || '*'}:${port}`));
        this.listenSocket = sock;
        resolve(us_socket_local_port(sock));
      };
      if (host) this.app.listen(host, port, cb);
      else this.app.listen(port, cb);
    });
  }

  /** Stops accepting; lets transfers run for `graceMs`, then cuts the rest. */
  async shutdown(graceMs: number): Promise<void> {
    if (this.listenSocket) us_listen_socket_close(this.listenSocket);
    this.listenSocket = null;
    const deadline = Date.now() + graceMs;
    while (this.inflight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const s of this.streams) s.cut();
    // The last bytes of a finished transfer may still sit in socket buffers a slow client has not
    // drained: give it a moment before the connections are closed under it.
    const linger = Math.min(1000, Math.max(0, deadline - Date.now()));
    if (linger > 0) await new Promise((r) => setTimeout(r, linger));
    this.app.close();
  }

  get inflightCount(): number {
    return this.inflight;
  }

  private handle(res: HttpResponse, req: HttpRequest): void {
    const method = req.getMethod().toUpperCase();
    const path = req.getUrl();
    if (path === '/readyz' || path === '/livez') {
      const ok = path === '/livez' || this.deps.ready();
      res.writeStatus(ok ? STATUS[200]! : STATUS[503]!).end(ok ? 'ok\n' : 'not ready\n');
      httpRequests.inc({ route: 'probe', method, code: ok ? '200' : '503' });
      return;
    }
    const inc: Incoming = { method: 'GET', range: '', started: performance.now(), aborted: false, counted: false, route: 'other' };
    if (method !== 'GET' && method !== 'HEAD') {
      this.reply(res, inc, 405, errorBody('UNSUPPORTED', `method ${method} is not allowed on a pull-only mirror`), method);
      return;
    }
    inc.method = method;
    inc.range = req.getHeader('range');
    let request: RegistryRequest;
    try {
      request = parseRegistryPath(path, req.getQuery('ns') || undefined, this.deps.config.defaultRegistry);
    } catch (err) {
      this.fail(res, inc, err);
      return;
    }
    this.inflight++;
    inc.counted = true;
    inflightRequests.inc();
    res.onAborted(() => {
      inc.aborted = true;
      inc.onAbort?.();
    });
    try {
      switch (request.kind) {
        case 'base':
          inc.route = 'base';
          res.writeHeader('Docker-Distribution-API-Version', 'registry/2.0');
          this.reply(res, inc, 200, '{}');
          return;
        case 'manifest':
          inc.route = 'manifests';
          void this.serveManifest(res, inc, request).catch((err) => this.fail(res, inc, err));
          return;
        case 'blob':
          inc.route = 'blobs';
          this.serveBlob(res, inc, request.digest);
          return;
      }
    } catch (err) {
      this.fail(res, inc, err);
    }
  }

  private lookup(request: Extract<RegistryRequest, { kind: 'manifest' }>): ContentEntry | undefined {
    const index = this.deps.source.index;
    const digest: Digest | undefined = request.digest ?? index.resolveTag(tagKey(request.registry, request.repository, request.tag!));
    return digest ? index.get(digest) : undefined;
  }

  private async serveManifest(res: HttpResponse, inc: Incoming, request: Extract<RegistryRequest, { kind: 'manifest' }>): Promise<void> {
    const entry = this.lookup(request);
    if (!entry || !entry.manifest) {
      const what = request.tag ? `${request.repository}:${request.tag}` : request.digest;
      throw new HttpError(404, 'MANIFEST_UNKNOWN', `manifest ${what} is not on this node`);
    }
    let body = this.manifests.get(entry.digest);
    if (!body) {
      const r = await this.deps.pool.readSmall({ location: this.deps.source.locate(entry), size: entry.size });
      if (!r.ok) {
        if (r.missing) this.deps.source.index.forget(entry.digest);
        else this.deps.log.warn('manifest read failed', { digest: entry.digest, error: r.error });
        throw new HttpError(404, 'MANIFEST_UNKNOWN', `manifest ${entry.digest} is not readable on this node`);
      }
      body = new Uint8Array(r.bytes);
      this.manifests.set(entry.digest, body);
    }
    if (inc.aborted) return this.done(inc, 0);
    const b = body;
    res.cork(() => {
      res.writeStatus(STATUS[200]!);
      res.writeHeader('Content-Type', entry.mediaType);
      res.writeHeader('Docker-Content-Digest', entry.digest);
      res.writeHeader('Docker-Distribution-API-Version', 'registry/2.0');
      if (inc.method === 'HEAD') res.endWithoutBody(b.byteLength);
      else res.end(b);
    });
    if (inc.method === 'GET') bytesServed.inc({ route: 'manifests' }, b.byteLength);
    this.done(inc, 200);
  }

  private serveBlob(res: HttpResponse, inc: Incoming, digest: Digest): void {
    const entry = this.deps.source.index.get(digest);
    if (!entry || entry.manifest) throw new HttpError(404, 'BLOB_UNKNOWN', `blob ${digest} is not on this node`);
    const range = parseRange(inc.range, entry.size);
    const start = range?.start ?? 0;
    const end = range?.end ?? entry.size;
    const contentType = entry.mediaType === MediaType.OciConfig || entry.mediaType === MediaType.DockerConfig ? entry.mediaType : MediaType.OctetStream;
    const writeHead = (r: HttpResponse) => {
      r.writeStatus(range ? STATUS[206]! : STATUS[200]!);
      r.writeHeader('Content-Type', contentType);
      r.writeHeader('Docker-Content-Digest', entry.digest);
      r.writeHeader('Accept-Ranges', 'bytes');
      if (range) r.writeHeader('Content-Range', `bytes ${start}-${end - 1}/${entry.size}`);
    };
    const location = this.deps.source.locate(entry);
    if (inc.method === 'HEAD') {
      void this.headBlob(res, inc, entry, writeHead, end - start).catch((err) => this.fail(res, inc, err));
      return;
    }
    const stream = streamBlob(
      res,
      this.deps.pool,
      { location, size: entry.size, start, end, chunkSize: this.deps.config.chunkSize, credits: this.deps.config.streamCredits, writeHead },
      (fn) => (inc.onAbort = fn),
    );
    this.streams.add(stream);
    void stream.done.then((o) => {
      this.streams.delete(stream);
      switch (o.kind) {
        case 'done':
          bytesServed.inc({ route: 'blobs' }, o.bytes);
          this.done(inc, range ? 206 : 200);
          break;
        case 'failed-before-headers':
          if (o.missing) this.deps.source.index.forget(entry.digest);
          else this.deps.log.warn('blob read failed', { digest, error: o.error });
          this.fail(res, inc, new HttpError(404, 'BLOB_UNKNOWN', `blob ${digest} is not readable on this node`));
          break;
        case 'broken':
          bytesServed.inc({ route: 'blobs' }, o.bytes);
          this.deps.log.warn('blob transfer broken', { digest, bytes: o.bytes, error: o.error });
          this.done(inc, 500);
          break;
        case 'aborted':
          bytesServed.inc({ route: 'blobs' }, o.bytes);
          this.done(inc, 499);
          break;
      }
    });
  }

  private async headBlob(res: HttpResponse, inc: Incoming, entry: ContentEntry, writeHead: (r: HttpResponse) => void, length: number): Promise<void> {
    // HEAD must not claim content that GC removed. A stat is metadata, not bytes: it stays here.
    const location = this.deps.source.locate(entry);
    if (location.kind === 'file') {
      const size = await stat(location.path).then((s) => s.size, () => -1);
      if (size !== entry.size) {
        this.deps.source.index.forget(entry.digest);
        throw new HttpError(404, 'BLOB_UNKNOWN', `blob ${entry.digest} is not on this node`);
      }
    }
    if (inc.aborted) return this.done(inc, 0);
    res.cork(() => {
      writeHead(res);
      res.endWithoutBody(length);
    });
    this.done(inc, 200);
  }

  private fail(res: HttpResponse, inc: Incoming, err: unknown): void {
    let status = 404;
    let code: OciErrorCode = 'BLOB_UNKNOWN';
    let message = 'not found';
    if (err instanceof HttpError) {
      status = err.status;
      code = err.code;
      message = err.message;
    } else {
      // Any internal failure becomes a fast 404 so containerd moves on to the next host.
      this.deps.log.error('request failed', { error: err });
    }
    if (inc.aborted) return this.done(inc, 0);
    this.reply(res, inc, status, errorBody(code, message));
  }

  private reply(res: HttpResponse, inc: Incoming, status: number, body: string, method: string = inc.method): void {
    res.cork(() => {
      res.writeStatus(STATUS[status] ?? `${status} Error`);
      res.writeHeader('Content-Type', 'application/json');
      if (method === 'HEAD') res.endWithoutBody(Buffer.byteLength(body));
      else res.end(body);
    });
    this.done(inc, status, method);
  }

  private done(inc: Incoming, status: number, method: string = inc.method): void {
    const seconds = (performance.now() - inc.started) / 1000;
    httpRequests.inc({ route: inc.route, method, code: String(status) });
    httpDuration.observe({ route: inc.route, method }, seconds);
    if (inc.counted) {
      inc.counted = false;
      this.inflight--;
      inflightRequests.dec();
    }
  }
}

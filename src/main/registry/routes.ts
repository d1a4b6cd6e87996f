// The registry front end on uWebSockets.js: the OCI pull API (GET/HEAD manifests and blobs),
// probes. Requests are parsed once into typed values; the answer comes from the content index
// (local), and later from peers. Blob bytes are streamed by the pool; manifests are served
// from a small in-memory cache because they are tiny and asked for on every pull.

import { App, us_listen_socket_close, us_socket_local_port, type HttpRequest, type HttpResponse, type TemplatedApp, type us_listen_socket, type ListenOptions } from 'uWebSockets.js';
import { stat } from 'node:fs/promises';
import { LRUCache } from 'lru-cache';
import type { Config } from '../config.js';
import type { ContentEntry, ContentSource } from '../content/index.js';
import type { Logger } from '../log.js';
import { bytesServed, httpDuration, httpRequests, inflightRequests } from '../metrics.js';
import type { BlobPool } from '../pool.js';
import { HOP_INFLIGHT, PEER_HOP_HEADER, type PeerFetchReport, type PeerManifestResult, type PeerOpen } from '../../shared/messages.js';
import { MediaType, tagKey, type Digest } from '../../shared/oci.js';
import type { Mirror } from '../mirror.js';
import { HttpError, STATUS, errorBody, parseRange, parseRegistryPath, type OciErrorCode, type RegistryRequest } from './http.js';
import { streamBlob, type ActiveStream } from './stream.js';


export interface RegistryDeps {
  config: Config;
  source: ContentSource;
  pool: BlobPool;
  log: Logger;
  /** true when /readyz should answer 200. */
  ready(): boolean;
  /** The peer path for content this node lacks; absent when p2p is off (local content only). */
  mirror?: Mirror;
}

/** uWS's LIBUS_LISTEN_EXCLUSIVE_PORT (the typings declare the enum, the module exports only the number). */
const EXCLUSIVE_PORT = 1 as ListenOptions;
/** How often a node asked for its own claimed download looks for it in the content store. */
const DOWNLOAD_POLL_MS = 20;

/**
 * Listens without SO_REUSEPORT: by default uWS lets a second process bind the same port, so two
 * peerpulls on one node would silently split the traffic instead of the second one failing.
 */
export function listenExclusive(app: TemplatedApp, host: string, port: number, cb: (sock: us_listen_socket | false) => void): void {
  if (host) (app.listen as unknown as (h: string, p: number, o: ListenOptions, c: typeof cb) => void)(host, port, EXCLUSIVE_PORT, cb);
  else app.listen(port, EXCLUSIVE_PORT, cb);
}

type Route = 'base' | 'manifests' | 'blobs' | 'probe' | 'other';

interface CachedManifest {
  body: Uint8Array;
  mediaType: string;
}

/** What a handler needs from a request; uWS invalidates `req` when the handler returns. */
interface Incoming {
  method: 'GET' | 'HEAD';
  range: string;
  /** Came from another peerpull: local content only, never a lookup. */
  hop: boolean;
  /** ...sent here as the node downloading the blob right now: serve the download as it grows. */
  inflight: boolean;
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
  /** Manifest bodies by digest: local ones, and ones fetched (and verified) from peers. */
  private readonly manifests: LRUCache<string, CachedManifest>;
  private listenSocket: us_listen_socket | null = null;
  private inflight = 0;

  constructor(private readonly deps: RegistryDeps) {
    const cacheBytes = deps.config.manifestCacheBytes;
    this.manifests = new LRUCache<string, CachedManifest>({
      maxSize: Math.max(1, cacheBytes),
      sizeCalculation: (v) => Math.max(1, v.body.byteLength),
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
      listenExclusive(this.app, host, port, cb);
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
    const inc: Incoming = { method: 'GET', range: '', hop: false, inflight: false, started: performance.now(), aborted: false, counted: false, route: 'other' };
    if (method !== 'GET' && method !== 'HEAD') {
      this.reply(res, inc, 405, errorBody('UNSUPPORTED', `method ${method} is not allowed on a pull-only mirror`), method);
      return;
    }
    inc.method = method;
    inc.range = req.getHeader('range');
    const hop = req.getHeader(PEER_HOP_HEADER);
    inc.hop = hop !== '';
    inc.inflight = hop === HOP_INFLIGHT;
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
          this.serveBlob(res, inc, request);
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
    const what: string = request.tag ? tagKey(request.registry, request.repository, request.tag) : request.digest!;
    const entry = this.lookup(request);
    let m: ({ digest: Digest } & CachedManifest) | undefined;
    if (entry && entry.manifest) {
      let cached = this.manifests.get(entry.digest);
      if (!cached) {
        const r = await this.deps.pool.readSmall({ location: this.deps.source.locate(entry), size: entry.size });
        if (r.ok) {
          cached = { body: new Uint8Array(r.bytes), mediaType: entry.mediaType };
          this.manifests.set(entry.digest, cached);
        } else if (r.missing) {
          // Garbage collected without an event: not here any more, so peers may have it.
          this.deps.source.index.forget(entry.digest);
        } else {
          this.deps.log.warn('manifest read failed', { digest: entry.digest, error: r.error });
          throw new HttpError(404, 'MANIFEST_UNKNOWN', `manifest ${entry.digest} is not readable on this node`);
        }
      }
      if (cached) {
        m = { digest: entry.digest, ...cached };
        this.deps.mirror?.outcome('manifest', what, 'local');
      }
    } else if (entry) {
      throw new HttpError(404, 'MANIFEST_UNKNOWN', `${what} is a blob, not a manifest`);
    }
    m ??= await this.manifestFromPeers(inc, request, what);
    if (inc.aborted) return this.done(inc, 0);
    res.cork(() => {
      res.writeStatus(STATUS[200]!);
      res.writeHeader('Content-Type', m.mediaType);
      res.writeHeader('Docker-Content-Digest', m.digest);
      res.writeHeader('Docker-Distribution-API-Version', 'registry/2.0');
      if (inc.method === 'HEAD') res.writeHeader('Content-Length', String(m.body.byteLength)).endWithoutBody();
      else res.end(m.body);
    });
    if (inc.method === 'GET') bytesServed.inc({ route: 'manifests' }, m.body.byteLength);
    this.done(inc, 200);
  }

  /** A manifest this node does not hold: a verified copy fetched earlier, or peers, or 404. */
  private async manifestFromPeers(inc: Incoming, request: Extract<RegistryRequest, { kind: 'manifest' }>, what: string): Promise<{ digest: Digest } & CachedManifest> {
    const mirror = this.deps.mirror;
    const miss = (why: string): never => {
      mirror?.outcome('manifest', what, 'miss', why, inc.hop ? undefined : inc.started);
      throw new HttpError(404, 'MANIFEST_UNKNOWN', `manifest ${what} is not on this node${why ? ` (${why})` : ''}`);
    };
    if (inc.hop) return miss('');
    if (request.digest) {
      // containerd asks HEAD by tag, then GET by digest: the tag's answer is already here.
      const cached = this.manifests.get(request.digest);
      if (cached) {
        mirror?.outcome('manifest', what, 'peer');
        return { digest: request.digest, ...cached };
      }
    }
    if (!mirror || !mirror.mirrors(request.registry)) return miss(mirror ? 'registry not mirrored' : '');
    if (request.tag && !mirror.resolvesTags(request.registry)) return miss('tags are not resolved through peers');
    const ns = `?ns=${encodeURIComponent(request.registry)}`;
    const path = `/v2/${request.repository}/manifests/${request.tag ?? request.digest}${ns}`;
    let r: PeerManifestResult | undefined;
    // A second round only when every provider of the first failed: the answer may have come from
    // a cache that still listed a node that just went away (its failures are reported in between).
    for (let round = 0; round < 2; round++) {
      const providers = (await mirror.providers(what)).filter((p) => !r?.failedPeers.includes(p.peerId));
      if (providers.length === 0) {
        if (r) break;
        return miss('no peer has it');
      }
      if (inc.aborted) return miss('client gone');
      r = await this.deps.pool.fetchManifest({ providers, path, ...(request.digest ? { digest: request.digest } : {}), ...mirror.policy() });
      mirror.record('manifest', what, r, r.ok, r.ok ? undefined : r.error);
      if (r.ok) break;
    }
    if (!r || !r.ok) {
      const error = r && !r.ok ? r.error : 'no provider';
      mirror.outcome('manifest', what, 'error', error);
      throw new HttpError(404, 'MANIFEST_UNKNOWN', `manifest ${what}: no peer could serve it`);
    }
    const cached = { body: new Uint8Array(r.body), mediaType: r.mediaType };
    this.manifests.set(r.digest, cached);
    mirror.outcome('manifest', what, 'peer');
    return { digest: r.digest, ...cached };
  }

  private serveBlob(res: HttpResponse, inc: Incoming, request: Extract<RegistryRequest, { kind: 'blob' }>): void {
    const digest = request.digest;
    const entry = this.deps.source.index.get(digest);
    if (entry?.manifest) throw new HttpError(404, 'BLOB_UNKNOWN', `${digest} is a manifest, not a blob`);
    if (!entry) {
      if (inc.inflight && inc.method === 'GET') this.serveDownload(res, inc, request);
      else this.blobFromPeers(res, inc, request);
      return;
    }
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
      void this.headBlob(res, inc, request, entry, writeHead, end - start).catch((err) => this.fail(res, inc, err));
      return;
    }
    const { chunkSize, streamCredits: credits } = this.deps.config;
    this.pipe(res, inc, digest, range ? 206 : 200, {
      run: (port) => this.deps.pool.readBlob({ location, size: entry.size, start, end, chunkSize, credits, port }),
      credits,
      total: end - start,
      writeHead,
    }, {
      from: 'local',
      fallback: (o) => {
        if (!o.missing) return false;
        // Garbage collected without an event: forget it and let peers serve it.
        this.deps.source.index.forget(digest);
        this.blobFromPeersOr404(res, inc, request);
        return true;
      },
    });
  }

  private blobFromPeersOr404(res: HttpResponse, inc: Incoming, request: Extract<RegistryRequest, { kind: 'blob' }>, round = 0, failed: string[] = []): void {
    try {
      this.blobFromPeers(res, inc, request, round, failed);
    } catch (err) {
      this.fail(res, inc, err);
    }
  }

  /**
   * A blob this node does not hold: stream it from peers (hedged, resumable), or from the node
   * already downloading it (a shared download), or 404 fast.
   */
  private blobFromPeers(res: HttpResponse, inc: Incoming, request: Extract<RegistryRequest, { kind: 'blob' }>, round = 0, failed: string[] = []): void {
    const { digest } = request;
    const mirror = this.deps.mirror;
    const miss = (why: string) => {
      mirror?.outcome('blob', digest, 'miss', why, inc.hop ? undefined : inc.started);
      return new HttpError(404, 'BLOB_UNKNOWN', `blob ${digest} is not on this node${why ? ` (${why})` : ''}`);
    };
    if (inc.hop || !mirror) throw miss('');
    if (!mirror.mirrors(request.registry)) throw miss('registry not mirrored');
    const head = inc.method === 'HEAD';
    void (async () => {
      let providers = (await mirror.providers(digest, failed.length > 0 ? failed : undefined)).filter((p) => !failed.includes(p.peerId));
      let joining = false;
      if (providers.length === 0) {
        // Nobody holds it. Unless another node is fetching it already, this node's containerd
        // goes upstream for it (the 404 below), and later askers are sent here.
        // A node that could not serve its own download (content files unreadable) claims none.
        if (round > 0 || head || !mirror.sharesDownloads || !this.deps.source.servesDownloads) throw miss(round === 0 ? 'no peer has it' : 'no other peer has it');
        const claim = await mirror.claim(digest);
        if (claim.kind === 'go') throw miss('no peer has it: this node fetches it for the cluster');
        if (claim.kind === 'none') throw miss('no peer has it');
        providers = [{ peerId: claim.provider.peerId, host: claim.provider.host, port: claim.provider.registryPort }];
        joining = true;
      }
      if (inc.aborted) return this.done(inc, 0);
      const { chunkSize, streamCredits: credits } = this.deps.config;
      const path = `/v2/${request.repository}/blobs/${digest}?ns=${encodeURIComponent(request.registry)}`;
      // A HEAD asks for one byte: the peer's Content-Range carries the size without moving the blob.
      const range = head ? 'bytes=0-0' : inc.range;
      let report: Promise<PeerFetchReport> | undefined;
      const writeHead = (r: HttpResponse, peer?: PeerOpen) => {
        const p = peer!;
        const partial = p.status === 206 && !head;
        r.writeStatus(partial ? STATUS[206]! : STATUS[200]!);
        r.writeHeader('Content-Type', p.contentType);
        r.writeHeader('Docker-Content-Digest', digest);
        r.writeHeader('Accept-Ranges', 'bytes');
        if (partial) r.writeHeader('Content-Range', `bytes ${p.start}-${p.end - 1}/${p.size}`);
        if (head) r.writeHeader('Content-Length', String(p.size)).endWithoutBody();
      };
      const policy = joining ? mirror.inflightPolicy() : mirror.policy();
      this.pipe(res, inc, digest, 200, {
        run: (port) =>
          (report = this.deps.pool.fetchBlob({ providers, digest, path, range, verify: this.deps.config.peerVerify && !head, chunkSize, credits, port, ...(joining ? { inflight: { headersMs: this.deps.config.downloadWait + this.deps.config.peerStallTimeout } } : {}), ...policy })),
        writeHead,
        headOnly: head,
        credits,
        moreProviders: (exclude) => mirror.providers(digest, exclude),
      }, {
        from: 'peers',
        fallback: (o) => {
          // The node fetching it could not serve its download: containerd goes upstream itself.
          if (joining) return false;
          // Every provider failed before sending anything. Once, look again without them: a cached
          // answer may have listed a node that just went away.
          if (round > 0 || o.status === 416) return false;
          void (report ?? Promise.resolve(undefined)).catch(() => undefined).then((r) => {
            if (r) mirror.record('blob', digest, r, false, o.error);
            if (inc.aborted) return this.done(inc, 0);
            this.blobFromPeersOr404(res, inc, request, 1, [...failed, ...(r?.failedPeers ?? []), ...providers.map((p) => p.peerId)]);
          });
          return true;
        },
        onFinish: async (ok, detail) => {
          const r = await report?.catch(() => undefined);
          // A download in flight that could not be served is no fault of its node's liveness.
          if (r) mirror.record('blob', digest, joining ? { ...r, failedPeers: [] } : r, ok, detail);
          if (joining) {
            mirror.shared(ok ? 'joined' : 'join_failed');
            if (!ok) this.deps.log.info('could not stream a download in flight: 404, containerd goes upstream', { digest, peer: providers[0]!.peerId, detail });
          }
          mirror.outcome('blob', digest, ok ? 'peer' : 'error', detail);
        },
      });
    })().catch((err) => this.fail(res, inc, err));
  }

  /**
   * A peer was sent here as the node downloading `digest` (a claimed download): stream the
   * download from the content store as it grows. containerd opened it before it asked this node,
   * so it is normally there at once; a claimed one that never appears is released.
   */
  private serveDownload(res: HttpResponse, inc: Incoming, request: Extract<RegistryRequest, { kind: 'blob' }>, tries = 0): void {
    const { digest } = request;
    const mirror = this.deps.mirror;
    const { downloadWait, downloadStallTimeout, chunkSize, streamCredits: credits } = this.deps.config;
    void (async () => {
      const claimed = mirror?.claimed(digest) === true;
      const until = performance.now() + (claimed ? downloadWait : 0);
      let found = await this.deps.source.inflight(digest);
      while (!found && !inc.aborted && performance.now() < until) {
        await new Promise((r) => setTimeout(r, DOWNLOAD_POLL_MS));
        found = await this.deps.source.inflight(digest);
      }
      if (inc.aborted) return this.done(inc, 0);
      if (!found) {
        if (claimed) {
          mirror!.release(digest);
          mirror!.shared('unavailable');
          this.deps.log.info('claimed download never appeared: released', { digest, waitedMs: downloadWait });
        } else {
          this.deps.log.info('asked for a download in flight this node has not claimed', { digest });
        }
        throw new HttpError(404, 'BLOB_UNKNOWN', `blob ${digest}: no download of it on this node`);
      }
      const blob = found;
      const range = parseRange(inc.range, blob.size);
      const start = range?.start ?? 0;
      const end = range?.end ?? blob.size;
      const writeHead = (r: HttpResponse) => {
        r.writeStatus(range ? STATUS[206]! : STATUS[200]!);
        r.writeHeader('Content-Type', MediaType.OctetStream);
        r.writeHeader('Docker-Content-Digest', digest);
        r.writeHeader('Accept-Ranges', 'bytes');
        if (range) r.writeHeader('Content-Range', `bytes ${start}-${end - 1}/${blob.size}`);
      };
      this.pipe(res, inc, digest, range ? 206 : 200, {
        run: (port) =>
          this.deps.pool.readBlob({
            location: { kind: 'file', path: blob.path },
            size: blob.size,
            start,
            end,
            chunkSize,
            credits,
            port,
            ...(blob.complete ? {} : { growing: { stallMs: downloadStallTimeout } }),
          }),
        credits,
        total: end - start,
        writeHead,
      }, {
        from: 'download',
        // The download finished and was renamed into the store between the look and the open:
        // look again (the finished blob is there now).
        fallback: (o) => {
          if (!o.missing || tries >= 2) return false;
          this.serveDownload(res, inc, request, tries + 1);
          return true;
        },
        onFinish: (ok) => {
          if (ok) mirror?.shared('served');
        },
      });
    })().catch((err) => this.fail(res, inc, err));
  }

  /** Streams a pool task into the response and settles the request's bookkeeping. */
  private pipe(
    res: HttpResponse,
    inc: Incoming,
    digest: Digest,
    okStatus: number,
    opts: Parameters<typeof streamBlob>[1],
    how: {
      from: 'local' | 'peers' | 'download';
      /** Nothing was sent and the source failed: return true to take the response over (another source). */
      fallback?: (o: { missing: boolean; error: string; status?: 416 }) => boolean;
      onFinish?: (ok: boolean, detail?: string) => void;
    },
  ): void {
    const { fallback, onFinish } = how;
    const local = how.from !== 'peers';
    const stream = streamBlob(res, opts, (fn) => (inc.onAbort = fn));
    this.streams.add(stream);
    void stream.done.then((o) => {
      this.streams.delete(stream);
      switch (o.kind) {
        case 'done':
          bytesServed.inc({ route: 'blobs' }, o.bytes);
          if (local) this.deps.mirror?.outcome('blob', digest, 'local');
          onFinish?.(true);
          this.done(inc, okStatus);
          break;
        case 'failed-before-headers':
          if (!inc.aborted && fallback?.(o)) break;
          onFinish?.(false, o.error);
          if (!o.missing) this.deps.log.warn('blob read failed', { digest, error: o.error });
          if (o.status === 416) this.fail(res, inc, new HttpError(416, 'RANGE_INVALID', `range not satisfiable for ${digest}`));
          else this.fail(res, inc, new HttpError(404, 'BLOB_UNKNOWN', `blob ${digest} is not readable${local ? ' on this node' : ' from any peer'}`));
          break;
        case 'broken':
          bytesServed.inc({ route: 'blobs' }, o.bytes);
          onFinish?.(false, o.error);
          this.deps.log.warn('blob transfer broken', { digest, bytes: o.bytes, error: o.error });
          this.done(inc, 500);
          break;
        case 'aborted':
          bytesServed.inc({ route: 'blobs' }, o.bytes);
          onFinish?.(false, 'client went away');
          this.done(inc, 499);
          break;
      }
    });
  }

  private async headBlob(res: HttpResponse, inc: Incoming, request: Extract<RegistryRequest, { kind: 'blob' }>, entry: ContentEntry, writeHead: (r: HttpResponse) => void, length: number): Promise<void> {
    // HEAD must not claim content that GC removed. A stat is metadata, not bytes: it stays here.
    const location = this.deps.source.locate(entry);
    if (location.kind === 'file') {
      const size = await stat(location.path).then((s) => s.size, () => -1);
      if (size !== entry.size) {
        this.deps.source.index.forget(entry.digest);
        return this.blobFromPeers(res, inc, request);
      }
    }
    this.deps.mirror?.outcome('blob', entry.digest, 'local');
    if (inc.aborted) return this.done(inc, 0);
    res.cork(() => {
      writeHead(res);
      res.writeHeader('Content-Length', String(length)).endWithoutBody();
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
      if (method === 'HEAD') res.writeHeader('Content-Length', String(Buffer.byteLength(body))).endWithoutBody();
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

// The upstream registry of a local storm: a small OCI distribution server (node:http) over an
// OCI image layout, with one token bucket shared by every connection (the bandwidth limit of the
// "internet" link) and byte counters per blob, so egress saved is measured, not estimated.
// `corrupt` makes it serve wrong bytes for chosen digests: the storm must report that as a failure.

import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { once } from 'node:events';

/** A shared bandwidth limit: each chunk reserves its slot in a virtual timeline (FIFO-fair). */
export class TokenBucket {
  private next = 0;
  constructor(
    /** bytes per second; 0 = unlimited */
    readonly rate: number,
    private readonly burstMs = 50,
  ) {}

  async take(n: number): Promise<void> {
    if (this.rate <= 0) return;
    const now = performance.now();
    this.next = Math.max(this.next, now - this.burstMs) + (n / this.rate) * 1000;
    const wait = this.next - now;
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
  }
}

export interface UpstreamStats {
  /** Body bytes written (blobs and manifests). */
  bytes: number;
  requests: number;
  /** Completed or started blob GETs per digest (a Range resume counts too). */
  blobGets: Record<string, number>;
  manifestGets: number;
  /** Body bytes per client listener (see `listenFor`). */
  bytesBy: Record<string, number>;
}

export interface UpstreamOptions {
  layout: string;
  host?: string;
  port?: number;
  /** Bytes per second across all connections; 0 = unlimited. */
  rate?: number;
  corrupt?: (digest: string) => boolean;
}

interface Meta {
  mediaType: string;
  size: number;
}

const CHUNK = 64 * 1024;

function drainOrClose(res: http.ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

export class UpstreamRegistry {
  readonly bucket: TokenBucket;
  private server: http.Server | null = null;
  private extra: http.Server[] = [];
  private tags = new Map<string, string>(); // `repo:tag` -> digest
  private meta = new Map<string, Meta>();
  stats: UpstreamStats = { bytes: 0, requests: 0, blobGets: {}, manifestGets: 0, bytesBy: {} };
  url = '';

  constructor(private readonly opts: UpstreamOptions) {
    this.bucket = new TokenBucket(opts.rate ?? 0);
  }

  /** Re-reads index.json: call after adding images to the layout. */
  async reload(): Promise<void> {
    const index = JSON.parse(await readFile(path.join(this.opts.layout, 'index.json'), 'utf8')) as {
      manifests: { digest: string; mediaType: string; size: number; annotations?: Record<string, string> }[];
    };
    const tags = new Map<string, string>();
    for (const m of index.manifests) {
      const name = m.annotations?.['io.containerd.image.name'];
      if (!name) continue;
      const slash = name.indexOf('/');
      const colon = name.lastIndexOf(':');
      if (slash < 0 || colon < slash) continue;
      tags.set(name.slice(slash + 1), m.digest);
      this.meta.set(m.digest, { mediaType: m.mediaType, size: m.size });
    }
    this.tags = tags;
  }

  snapshot(): UpstreamStats {
    return { ...this.stats, blobGets: { ...this.stats.blobGets }, bytesBy: { ...this.stats.bytesBy } };
  }

  private async listen(port: number, client?: string): Promise<http.Server> {
    const server = http.createServer((req, res) => {
      this.handle(req, res, client).catch((err: unknown) => {
        if (!res.headersSent) res.writeHead(500).end(String(err));
        else res.destroy();
      });
    });
    server.keepAliveTimeout = 30_000;
    server.listen(port, this.opts.host ?? '127.0.0.1');
    await once(server, 'listening');
    return server;
  }

  private urlOf(server: http.Server): string {
    const a = server.address() as AddressInfo;
    return `http://${a.address}:${a.port}`;
  }

  async start(): Promise<string> {
    await this.reload();
    this.server = await this.listen(this.opts.port ?? 0);
    this.url = this.urlOf(this.server);
    return this.url;
  }

  /**
   * One more port, same registry and the same bandwidth limit, whose body bytes are also counted
   * under `client`: a containerd's bytes from the upstream, where storm cannot see them itself.
   */
  async listenFor(client: string): Promise<string> {
    const server = await this.listen(0, client);
    this.extra.push(server);
    this.stats.bytesBy[client] ??= 0;
    return this.urlOf(server);
  }

  async close(): Promise<void> {
    const all = [...(this.server ? [this.server] : []), ...this.extra];
    this.server = null;
    this.extra = [];
    await Promise.all(
      all.map((s) => {
        s.closeAllConnections();
        return new Promise((r) => s.close(r));
      }),
    );
  }

  private blobFile(digest: string): string {
    return path.join(this.opts.layout, 'blobs', 'sha256', digest.slice(7));
  }

  private async mediaTypeOf(digest: string): Promise<Meta | null> {
    const known = this.meta.get(digest);
    if (known) return known;
    try {
      const body = await readFile(this.blobFile(digest));
      const mt = (JSON.parse(body.toString('utf8')) as { mediaType?: string }).mediaType;
      if (!mt) return null;
      const m = { mediaType: mt, size: body.length };
      this.meta.set(digest, m);
      return m;
    } catch {
      return null;
    }
  }

  private notFound(res: http.ServerResponse, code: string): void {
    const body = JSON.stringify({ errors: [{ code, message: code.toLowerCase().replace('_', ' ') }] });
    res.writeHead(404, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) }).end(body);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse, client?: string): Promise<void> {
    this.stats.requests++;
    const u = new URL(req.url ?? '/', 'http://x');
    if (req.method !== 'GET' && req.method !== 'HEAD') return void res.writeHead(405).end();
    if (u.pathname === '/v2/' || u.pathname === '/v2') return void res.writeHead(200, { 'Content-Type': 'application/json' }).end('{}');
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(u.pathname);
    if (!m) return this.notFound(res, 'NAME_UNKNOWN');
    const [, repo, kind, ref] = m as unknown as [string, string, string, string];
    let digest = ref;
    if (!ref.startsWith('sha256:')) {
      const d = kind === 'manifests' ? this.tags.get(`${repo}:${ref}`) : undefined;
      if (!d) return this.notFound(res, 'MANIFEST_UNKNOWN');
      digest = d;
    }
    if (!/^sha256:[a-f0-9]{64}$/.test(digest)) return this.notFound(res, 'DIGEST_INVALID');
    const size = await stat(this.blobFile(digest)).then((s) => s.size, () => -1);
    if (size < 0) return this.notFound(res, kind === 'manifests' ? 'MANIFEST_UNKNOWN' : 'BLOB_UNKNOWN');
    const headers: Record<string, string | number> = { 'Docker-Content-Digest': digest };
    if (kind === 'manifests') {
      const meta = await this.mediaTypeOf(digest);
      if (!meta) return this.notFound(res, 'MANIFEST_UNKNOWN');
      headers['Content-Type'] = meta.mediaType;
    } else {
      headers['Content-Type'] = 'application/octet-stream';
      headers['Accept-Ranges'] = 'bytes';
    }
    let start = 0;
    let end = size; // exclusive
    let status = 200;
    const range = req.headers.range;
    if (range && kind === 'blobs') {
      const r = /^bytes=(\d+)-(\d*)$/.exec(range);
      if (r) {
        start = Number(r[1]);
        end = r[2] ? Math.min(size, Number(r[2]) + 1) : size;
        if (start >= size || start >= end) {
          res.writeHead(416, { 'Content-Range': `bytes */${size}` }).end();
          return;
        }
        status = 206;
        headers['Content-Range'] = `bytes ${start}-${end - 1}/${size}`;
      }
    }
    headers['Content-Length'] = end - start;
    res.writeHead(status, headers);
    if (req.method === 'HEAD') return void res.end();
    if (kind === 'manifests') this.stats.manifestGets++;
    else this.stats.blobGets[digest] = (this.stats.blobGets[digest] ?? 0) + 1;
    const corrupt = this.opts.corrupt?.(digest) ?? false;
    let closed = false;
    res.on('close', () => (closed = true));
    let pos = start;
    for await (const c of createReadStream(this.blobFile(digest), { start, end: end - 1, highWaterMark: CHUNK })) {
      if (closed) break;
      const chunk = c as Buffer;
      if (corrupt && pos <= start + Math.floor((end - start) / 2) && start + Math.floor((end - start) / 2) < pos + chunk.length) {
        const i = start + Math.floor((end - start) / 2) - pos;
        chunk[i] = chunk[i]! ^ 0xff;
      }
      pos += chunk.length;
      await this.bucket.take(chunk.length);
      if (closed) break;
      this.stats.bytes += chunk.length;
      if (client !== undefined) this.stats.bytesBy[client] = (this.stats.bytesBy[client] ?? 0) + chunk.length;
      if (!res.write(chunk)) await drainOrClose(res);
    }
    if (!closed) res.end();
  }
}

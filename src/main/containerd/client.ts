// A minimal containerd gRPC client over its unix socket: images List/Get, content Info/List/Read,
// events Subscribe, version. It holds no main-thread state (no logger, no metrics), so Piscina
// workers import it too. Everything containerd returns is parsed here, at the edge.

import { access } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { parseDescriptor, type Descriptor, type Digest, isDigest } from '../../shared/oci.js';

const PROTO_FILES = ['images.proto', 'content.proto', 'events.proto', 'events_content.proto', 'version.proto'];
const PROTO_SUBDIR = path.join('src', 'main', 'containerd', 'proto');

/**
 * tsc does not copy .proto files, so they are found in the source tree: walk up from this module
 * (src/main/containerd or dist/src/main/containerd) to the directory that holds src/main/containerd/proto.
 */
async function findProtoDir(): Promise<string> {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  const tried: string[] = [];
  for (;;) {
    const candidate = path.join(dir, PROTO_SUBDIR);
    tried.push(candidate);
    try {
      await access(path.join(candidate, 'images.proto'));
      return candidate;
    } catch {
      // keep walking up
    }
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`containerd proto files not found (looked in ${tried.join(', ')})`);
    dir = parent;
  }
}

interface Services {
  Images: grpc.ServiceClientConstructor;
  Content: grpc.ServiceClientConstructor;
  Events: grpc.ServiceClientConstructor;
  Version: grpc.ServiceClientConstructor;
}

let servicesPromise: Promise<Services> | undefined;

/** Loads the proto subset once per thread. */
export function loadServices(): Promise<Services> {
  servicesPromise ??= (async () => {
    const dir = await findProtoDir();
    const def = await protoLoader.load(PROTO_FILES, {
      includeDirs: [dir],
      keepCase: true,
      // int64 as strings: parseDescriptor refuses sizes that are not safe integers instead of rounding.
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    const root = grpc.loadPackageDefinition(def) as any;
    const c = root.containerd.services;
    return {
      Images: c.images.v1.Images,
      Content: c.content.v1.Content,
      Events: c.events.v1.Events,
      Version: c.version.v1.Version,
    };
  })();
  // A failed load (e.g. a missing file) must not poison every later attempt.
  servicesPromise.catch(() => (servicesPromise = undefined));
  return servicesPromise;
}

export interface ContainerdImage {
  name: string;
  target: Descriptor;
  labels: Record<string, string>;
}

export interface ContentInfo {
  digest: Digest;
  size: number;
  labels: Record<string, string>;
}

export interface ContainerdEvent {
  namespace: string;
  topic: string;
  /** The Any's type name without any URL prefix, e.g. `containerd.services.images.v1.ImageCreate`. */
  type: string;
  payload: Uint8Array;
}

export interface Subscription {
  cancel(): void;
}

/** gRPC status codes peerpull acts on. */
export const GrpcCode = {
  NotFound: grpc.status.NOT_FOUND,
  Unavailable: grpc.status.UNAVAILABLE,
  Cancelled: grpc.status.CANCELLED,
  DeadlineExceeded: grpc.status.DEADLINE_EXCEEDED,
} as const;

export function grpcCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'number' ? code : undefined;
}

export function isNotFound(err: unknown): boolean {
  return grpcCode(err) === grpc.status.NOT_FOUND;
}

/** Adds what was being done to a gRPC error while keeping its numeric `code` (callers branch on it). */
function withContext(err: unknown, what: string): Error {
  const e = err instanceof Error ? err : new Error(String(err));
  e.message = `${what}: ${e.message}`;
  return e;
}

function ignore(): void {}

const UNARY_TIMEOUT_MS = 10_000;

// The default reconnect backoff grows to 120 s; a restarted containerd must be found in seconds.
// No keepalive pings: over a unix socket a dead daemon closes the connection at once, and
// containerd's gRPC server (Go defaults) answers pings more often than every 5 minutes with
// GOAWAY too_many_pings, which would drop the event stream.
const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.initial_reconnect_backoff_ms': 200,
  'grpc.max_reconnect_backoff_ms': 3000,
  'grpc.max_receive_message_length': 32 * 1024 * 1024,
};

type Unary = (req: object, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: any) => void) => grpc.ClientUnaryCall;
type ServerStream = (req: object, md: grpc.Metadata, opts?: grpc.CallOptions) => grpc.ClientReadableStream<any>;

export class ContainerdClient {
  readonly socket: string;
  readonly namespace: string;
  private readonly images: grpc.Client;
  private readonly content: grpc.Client;
  private readonly events: grpc.Client;
  private readonly version: grpc.Client;
  private closed = false;

  private constructor(socket: string, namespace: string, s: Services) {
    this.socket = socket;
    this.namespace = namespace;
    // One channel (one HTTP/2 connection) shared by every service.
    this.images = new s.Images(`unix://${socket}`, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
    const channelOverride = this.images.getChannel();
    this.content = new s.Content(`unix://${socket}`, grpc.credentials.createInsecure(), { ...CHANNEL_OPTIONS, channelOverride });
    this.events = new s.Events(`unix://${socket}`, grpc.credentials.createInsecure(), { ...CHANNEL_OPTIONS, channelOverride });
    this.version = new s.Version(`unix://${socket}`, grpc.credentials.createInsecure(), { ...CHANNEL_OPTIONS, channelOverride });
  }

  /** Creates a client; connecting is lazy (the first call dials). */
  static async create(socket: string, namespace: string): Promise<ContainerdClient> {
    if (!path.isAbsolute(socket)) throw new Error(`containerd socket "${socket}" must be an absolute path`);
    return new ContainerdClient(socket, namespace, await loadServices());
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set('containerd-namespace', this.namespace);
    return md;
  }

  private unary<T>(client: grpc.Client, method: string, req: object, what: string, timeoutMs = UNARY_TIMEOUT_MS): Promise<T> {
    return new Promise((resolve, reject) => {
      const fn = (client as unknown as Record<string, Unary>)[method]!.bind(client);
      fn(req, this.metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (err) reject(withContext(err, `containerd ${what} (${this.socket}, namespace ${this.namespace})`));
        else resolve(res as T);
      });
    });
  }

  private stream(client: grpc.Client, method: string, req: object, opts?: grpc.CallOptions): grpc.ClientReadableStream<any> {
    const fn = (client as unknown as Record<string, ServerStream>)[method]!.bind(client);
    return fn(req, this.metadata(), opts);
  }

  /** containerd's version; the cheapest proof that the daemon answers. */
  async ping(timeoutMs = 2000): Promise<{ version: string; revision: string }> {
    const res = await this.unary<{ version: string; revision: string }>(this.version, 'Version', {}, 'Version', timeoutMs);
    return { version: res.version, revision: res.revision };
  }

  /** Every image record in the namespace. Records whose target does not parse are returned in `bad`. */
  async listImages(): Promise<{ images: ContainerdImage[]; bad: { name: string; error: string }[] }> {
    const res = await this.unary<{ images: RawImage[] }>(this.images, 'List', { filters: [] }, 'Images.List');
    const images: ContainerdImage[] = [];
    const bad: { name: string; error: string }[] = [];
    for (const raw of res.images ?? []) {
      try {
        images.push(parseImage(raw));
      } catch (err) {
        bad.push({ name: String(raw?.name ?? ''), error: (err as Error).message });
      }
    }
    return { images, bad };
  }

  /** One image record; undefined when there is no image of that name. Throws on a malformed record. */
  async getImage(name: string): Promise<ContainerdImage | undefined> {
    try {
      const res = await this.unary<{ image: RawImage }>(this.images, 'Get', { name }, `Images.Get ${name}`);
      return parseImage(res.image);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** Size and labels of a blob; undefined when the store does not hold it. */
  async info(digest: Digest): Promise<ContentInfo | undefined> {
    try {
      const res = await this.unary<{ info: RawInfo }>(this.content, 'Info', { digest }, `Content.Info ${digest}`);
      return parseInfo(res.info);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** Every blob in the store (containerd's content metadata is per namespace). Unparseable records are skipped. */
  async listContent(): Promise<Map<Digest, ContentInfo>> {
    const out = new Map<Digest, ContentInfo>();
    const call = this.stream(this.content, 'List', { filters: [] }, { deadline: Date.now() + 60_000 });
    call.on('error', ignore);
    try {
      for await (const res of call as AsyncIterable<{ info: RawInfo[] }>) {
        for (const raw of res.info ?? []) {
          try {
            const info = parseInfo(raw);
            out.set(info.digest, info);
          } catch {
            // Digests of other algorithms cannot be served; skipping them is the right outcome.
          }
        }
      }
    } catch (err) {
      throw withContext(err, `containerd Content.List (${this.socket}, namespace ${this.namespace})`);
    }
    return out;
  }

  /**
   * Streams bytes [offset, end) of a blob. Throws (with the gRPC `code`, 5 = NotFound when the blob
   * is gone) on failure, and when the store returns fewer bytes than asked for.
   */
  async *read(digest: Digest, offset: number, end: number, signal?: AbortSignal): AsyncGenerator<Uint8Array> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(end) || offset < 0 || end < offset) {
      throw new RangeError(`invalid range [${offset}, ${end}) for ${digest}`);
    }
    if (end === offset) return;
    // size 0 would mean "to the end": never send it for an empty range (handled above).
    const call = this.stream(this.content, 'Read', { digest, offset: String(offset), size: String(end - offset) });
    // The status of a call cancelled after the loop ended arrives as an 'error' event with nobody
    // iterating any more; without a listener it would be an uncaught exception.
    call.on('error', ignore);
    const onAbort = () => call.cancel();
    signal?.addEventListener('abort', onAbort, { once: true });
    let got = 0;
    try {
      for await (const res of call as AsyncIterable<{ data: Buffer }>) {
        const data = res.data;
        if (!data || data.length === 0) continue;
        const room = end - offset - got;
        const piece = data.length > room ? data.subarray(0, room) : data;
        got += piece.length;
        yield piece;
        if (got >= end - offset) break;
      }
    } catch (err) {
      throw withContext(err, `containerd Content.Read ${digest} [${offset}, ${end}) (${this.socket}, namespace ${this.namespace})`);
    } finally {
      signal?.removeEventListener('abort', onAbort);
      // Stops the server side too when the reader stopped early.
      call.cancel();
    }
    if (got < end - offset) {
      throw new Error(`containerd Content.Read ${digest}: got ${got} of ${end - offset} bytes from offset ${offset} (blob shorter than expected)`);
    }
  }

  /** Reads a whole small blob (a manifest or index) into memory, refusing anything over maxBytes. */
  async readAll(digest: Digest, size: number, maxBytes: number): Promise<Buffer> {
    if (size > maxBytes) throw new Error(`${digest} is ${size} bytes, more than the ${maxBytes} allowed for a manifest`);
    const parts: Uint8Array[] = [];
    for await (const p of this.read(digest, 0, size)) parts.push(p);
    return Buffer.concat(parts);
  }

  /**
   * Follows the event stream. `onEvent` gets every envelope; `onEnd` is called once when the stream
   * ends for any reason other than cancel() (containerd restarted, socket gone).
   */
  subscribe(filters: string[], onEvent: (e: ContainerdEvent) => void, onEnd: (err: Error) => void): Subscription {
    const call = this.stream(this.events, 'Subscribe', { filters });
    let done = false;
    const finish = (err: Error) => {
      if (done) return;
      done = true;
      onEnd(err);
    };
    call.on('data', (env: RawEnvelope) => {
      if (done) return;
      const typeUrl = env.event?.type_url ?? '';
      onEvent({
        namespace: env.namespace ?? '',
        topic: env.topic ?? '',
        type: typeUrl.slice(typeUrl.lastIndexOf('/') + 1),
        payload: env.event?.value ?? new Uint8Array(0),
      });
    });
    call.on('error', (err: grpc.ServiceError) => {
      if (err.code === grpc.status.CANCELLED && done) return;
      finish(withContext(err, `containerd Events.Subscribe (${this.socket})`));
    });
    call.on('end', () => finish(new Error(`containerd Events.Subscribe (${this.socket}): stream ended`)));
    return {
      cancel: () => {
        done = true;
        call.cancel();
      },
    };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.content.close();
    this.events.close();
    this.version.close();
    this.images.close();
  }
}

interface RawDescriptor {
  media_type?: string;
  digest?: string;
  size?: string | number;
  annotations?: Record<string, string>;
}
interface RawImage {
  name?: string;
  labels?: Record<string, string>;
  target?: RawDescriptor;
}
interface RawInfo {
  digest?: string;
  size?: string | number;
  labels?: Record<string, string>;
}
interface RawEnvelope {
  namespace?: string;
  topic?: string;
  event?: { type_url?: string; value?: Buffer };
}

function parseImage(raw: RawImage | undefined): ContainerdImage {
  if (!raw || typeof raw.name !== 'string' || raw.name === '') throw new Error('image record without a name');
  if (!raw.target) throw new Error(`image ${raw.name} has no target`);
  const target = parseDescriptor({
    mediaType: raw.target.media_type,
    digest: raw.target.digest,
    size: raw.target.size,
    ...(raw.target.annotations && Object.keys(raw.target.annotations).length ? { annotations: raw.target.annotations } : {}),
  });
  return { name: raw.name, target, labels: raw.labels ?? {} };
}

function parseInfo(raw: RawInfo | undefined): ContentInfo {
  const digest = raw?.digest ?? '';
  if (!isDigest(digest)) throw new Error(`content record with unsupported digest "${digest.slice(0, 80)}"`);
  const size = typeof raw!.size === 'number' ? raw!.size : Number(raw!.size);
  if (!Number.isSafeInteger(size) || size < 0) throw new Error(`content ${digest} has invalid size ${String(raw!.size)}`);
  return { digest, size, labels: raw!.labels ?? {} };
}

/**
 * Reads string field `field` from a protobuf message. The event payloads peerpull follows
 * (ImageCreate/Update/Delete.name, ContentDelete.digest) are all field 1 strings, so a small wire
 * reader is enough and avoids a second decoder stack. Returns undefined when absent or malformed.
 */
export function protoStringField(buf: Uint8Array, field: number): string | undefined {
  let i = 0;
  const varint = (): number | undefined => {
    let result = 0;
    let mul = 1;
    for (let n = 0; n < 10; n++) {
      if (i >= buf.length) return undefined;
      const b = buf[i++]!;
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
    return undefined;
  };
  let found: string | undefined;
  while (i < buf.length) {
    const key = varint();
    if (key === undefined) return undefined;
    const wire = key % 8;
    const num = Math.floor(key / 8);
    if (wire === 0) {
      if (varint() === undefined) return undefined;
    } else if (wire === 1) {
      i += 8;
    } else if (wire === 5) {
      i += 4;
    } else if (wire === 2) {
      const len = varint();
      if (len === undefined || i + len > buf.length) return undefined;
      // proto3: the last occurrence of a scalar field wins.
      if (num === field) found = Buffer.from(buf.buffer, buf.byteOffset + i, len).toString('utf8');
      i += len;
    } else {
      return undefined;
    }
  }
  return i === buf.length ? found : undefined;
}

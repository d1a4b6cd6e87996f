// A minimal HTTP/1.1 client for talking to other peerpull nodes, built for moving blob bytes:
// the socket reads (net `onread`) straight into the buffer the body's sink offers, which for a
// blob is the chunk that is then transferred to the main thread, so body bytes are not copied in
// user space at all. Headers (and the body bytes that arrive with them) go to a per-connection
// scratch buffer. A general client (undici) measured ~3x the CPU per GiB here. It speaks only what
// peerpull answers: GET and HEAD, Content-Length bodies, keep-alive. Anything else is a failed peer.

import net from 'node:net';

export interface PeerRequest {
  host: string;
  port: number;
  method: 'GET' | 'HEAD';
  path: string;
  headers: Record<string, string>;
  signal: AbortSignal;
  /** No response headers within this: the peer is stalled. */
  headersTimeoutMs: number;
  /** No body bytes for this long: the peer is stalled. */
  idleTimeoutMs: number;
}

/**
 * Receives body bytes. Each method returns true to go on, false to stop, or a promise to pause
 * reading until it settles.
 */
export interface BodySink {
  /** Bytes that arrived elsewhere (with the headers): the view is only valid during the call. */
  push(piece: Uint8Array): boolean | Promise<boolean>;
  /**
   * Where up to `max` (> 0) next body bytes may be read to. The region must stay the caller's
   * (not transferred) until filled() or until space() is asked again.
   */
  space?(max: number): Uint8Array;
  /** The socket read `view.length` bytes into the start of the last space(); `view` is them. */
  filled?(view: Uint8Array): boolean | Promise<boolean>;
}

export interface PeerResponse {
  status: number;
  /** Lower-case names. */
  headers: Map<string, string>;
  contentLength: number;
  /** Streams the body into `sink`; resolves when complete, rejects on error, stall or short body. */
  read(sink: BodySink): Promise<void>;
  /** Reads the whole body into memory, refusing more than `limit` bytes. */
  readAll(limit: number): Promise<Buffer>;
  /** Drops the response (and the connection, if the body was not read). */
  discard(): void;
}

const MAX_HEADER_BYTES = 64 * 1024;
const READ_BUFFER = 256 * 1024;
const IDLE_KEEPALIVE_MS = 30_000;
const MAX_IDLE_PER_ORIGIN = 16;

/** Idle keep-alive sockets by origin: connections to peers stay warm between requests. */
const idle = new Map<string, net.Socket[]>();

interface Conn {
  socket: net.Socket;
  /** Where bytes read from the socket go now; `inPlace`: they were read into target()'s region. */
  onBytes: (view: Uint8Array, inPlace: boolean) => boolean;
  onEnd: (err: Error) => void;
  /** Where the socket reads next while a body streams; null (or no target): the scratch buffer. */
  target: (() => Uint8Array | null) | null;
}

const conns = new WeakMap<net.Socket, Conn>();

function takeIdle(origin: string): net.Socket | undefined {
  const list = idle.get(origin);
  while (list && list.length > 0) {
    const s = list.pop()!;
    if (!s.destroyed && s.readyState === 'open') {
      s.setTimeout(0);
      return s;
    }
  }
  return undefined;
}

function giveBack(origin: string, socket: net.Socket): void {
  const list = idle.get(origin) ?? [];
  if (list.length >= MAX_IDLE_PER_ORIGIN || socket.destroyed) {
    socket.destroy();
    return;
  }
  const conn = conns.get(socket)!;
  conn.target = null;
  conn.onBytes = () => {
    // A peer must not send anything unasked: drop the connection.
    socket.destroy();
    return false;
  };
  conn.onEnd = () => {
    const l = idle.get(origin);
    if (l) idle.set(origin, l.filter((s) => s !== socket));
  };
  // The 'timeout' listener is added once, in connect(): adding one per release leaked them.
  socket.setTimeout(IDLE_KEEPALIVE_MS);
  // Keep reading while idle, so a peer closing the connection is noticed before it is reused.
  socket.resume();
  list.push(socket);
  idle.set(origin, list);
}

function connect(host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    // Headers, and anything outside a body being streamed, are read here.
    const scratch = Buffer.allocUnsafe(READ_BUFFER);
    let conn: Conn | undefined;
    const socket: net.Socket = net.connect({
      host,
      port,
      noDelay: true,
      onread: {
        // Asked once at connect and after every read: the next read lands in what this returns.
        buffer: () => conn?.target?.() ?? scratch,
        callback: (n: number, buf: Uint8Array): boolean => conn?.onBytes(buf.subarray(0, n), buf !== scratch) ?? false,
      },
    });
    conn = { socket, onBytes: () => false, onEnd: () => {}, target: null };
    conns.set(socket, conn);
    const timer = setTimeout(() => socket.destroy(new Error(`connect timed out after ${timeoutMs} ms`)), timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (err: Error) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on('error', () => {});
    socket.on('close', () => conn!.onEnd(new Error('connection closed by the peer')));
    // Armed only while the socket idles in the pool (giveBack); takeIdle disarms it.
    socket.on('timeout', () => socket.destroy());
  });
}

function parseHead(head: string): { status: number; headers: Map<string, string> } {
  const lines = head.split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
  if (!m) throw new Error(`not an HTTP response: "${(lines[0] ?? '').slice(0, 60)}"`);
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
  }
  return { status: Number(m[1]), headers };
}

/** Sends one request and resolves with the response head; the body is read through the response. */
export async function peerRequest(req: PeerRequest): Promise<PeerResponse> {
  const origin = `${req.host}|${req.port}`;
  const warm = takeIdle(origin);
  if (warm) {
    try {
      return await exchange(req, origin, warm, true);
    } catch (err) {
      // A kept-alive connection the peer closed meanwhile is not the peer's failure: dial afresh.
      if (req.signal.aborted || !(err as { stale?: boolean }).stale) throw err;
    }
  }
  return exchange(req, origin, await connect(req.host, req.port, req.headersTimeoutMs), false);
}

function exchange(req: PeerRequest, origin: string, socket: net.Socket, reused: boolean): Promise<PeerResponse> {
  const conn = conns.get(socket)!;
  const hostHeader = req.host.includes(':') ? `[${req.host}]:${req.port}` : `${req.host}:${req.port}`;
  let text = `${req.method} ${req.path} HTTP/1.1\r\nHost: ${hostHeader}\r\nConnection: keep-alive\r\n`;
  for (const [k, v] of Object.entries(req.headers)) text += `${k}: ${v}\r\n`;
  text += '\r\n';

  return new Promise<PeerResponse>((resolve, reject) => {
    const s = socket;
    let settled = false;
    let headBuf = Buffer.alloc(0);
    let timer: NodeJS.Timeout | null = setTimeout(() => fail(new Error(`no response headers within ${req.headersTimeoutMs} ms`)), req.headersTimeoutMs);
    const onAbort = () => fail(new Error('aborted'));
    req.signal.addEventListener('abort', onAbort, { once: true });
    const cleanup = () => {
      if (timer) clearTimeout(timer);
      timer = null;
      req.signal.removeEventListener('abort', onAbort);
    };
    function fail(err: Error) {
      if (settled) return;
      settled = true;
      cleanup();
      s.destroy();
      reject(err);
    }
    conn.onEnd = (err) => {
      if (reused && headBuf.length === 0) fail(Object.assign(new Error(`kept-alive connection closed: ${err.message}`), { stale: true }));
      else fail(err);
    };
    conn.onBytes = (view) => {
      headBuf = headBuf.length === 0 ? Buffer.from(view) : Buffer.concat([headBuf, view]);
      const end = headBuf.indexOf('\r\n\r\n');
      if (end < 0) {
        if (headBuf.length > MAX_HEADER_BYTES) fail(new Error('response headers too large'));
        return true;
      }
      let head: { status: number; headers: Map<string, string> };
      try {
        head = parseHead(headBuf.subarray(0, end).toString('latin1'));
      } catch (err) {
        fail(err as Error);
        return false;
      }
      const te = head.headers.get('transfer-encoding');
      const cl = Number(head.headers.get('content-length'));
      if (te || !Number.isSafeInteger(cl) || cl < 0) {
        fail(new Error(te ? `unsupported transfer-encoding "${te}"` : 'response without a valid Content-Length'));
        return false;
      }
      settled = true;
      cleanup();
      const bodyLen = req.method === 'HEAD' ? 0 : cl;
      let leftover: Buffer | null = headBuf.subarray(end + 4);
      headBuf = Buffer.alloc(0);
      if (leftover.length > bodyLen) {
        // More than the body: the peer broke the protocol; the connection cannot be reused.
        leftover = leftover.subarray(0, bodyLen);
      }
      // Nothing reads until read() is called: hold the socket still.
      s.pause();
      let received = 0;
      let done = false;
      let reading = false;
      const keepAlive = head.headers.get('connection')?.toLowerCase() !== 'close';
      const finishOk = () => {
        done = true;
        if (keepAlive && !s.destroyed) giveBack(origin, s);
        else s.destroy();
      };
      const response: PeerResponse = {
        status: head.status,
        headers: head.headers,
        contentLength: cl,
        discard() {
          if (!done) {
            done = true;
            s.destroy();
          }
        },
        async readAll(limit) {
          if (bodyLen > limit) {
            response.discard();
            throw new Error(`body of ${bodyLen} bytes is over the ${limit} byte limit`);
          }
          const out = Buffer.allocUnsafe(bodyLen);
          let at = 0;
          await response.read({
            push(p) {
              out.set(p, at);
              at += p.length;
              return true;
            },
            space: (max) => out.subarray(at, at + max),
            filled(view) {
              at += view.length;
              return true;
            },
          });
          return out;
        },
        read(sink) {
          if (reading) return Promise.reject(new Error('body already being read'));
          reading = true;
          return new Promise<void>((res, rej) => {
            let idleTimer: NodeJS.Timeout | null = null;
            /** When body bytes last arrived (or reading last resumed): one timer checks it, not one per read. */
            let lastProgress = 0;
            let waiting = false;
            const stop = (err?: Error) => {
              if (idleTimer) clearTimeout(idleTimer);
              idleTimer = null;
              conn.target = null;
              req.signal.removeEventListener('abort', abortRead);
              if (err) {
                done = true;
                s.destroy();
                rej(err);
              } else res();
            };
            const abortRead = () => stop(new Error('aborted'));
            req.signal.addEventListener('abort', abortRead, { once: true });
            const checkIdle = () => {
              idleTimer = null;
              if (waiting) return; // paused for the sink: not the peer's stall
              const quiet = performance.now() - lastProgress;
              if (quiet >= req.idleTimeoutMs) return stop(new Error(`no body bytes for ${req.idleTimeoutMs} ms (stalled at ${received} of ${bodyLen})`));
              idleTimer = setTimeout(checkIdle, req.idleTimeoutMs - quiet);
            };
            const armIdle = () => {
              lastProgress = performance.now();
              idleTimer ??= setTimeout(checkIdle, req.idleTimeoutMs);
            };
            // Delivers body bytes; returns whether the socket may keep reading now.
            const deliver = (piece: Uint8Array, inPlace: boolean): boolean => {
              const want = bodyLen - received;
              const p = piece.length > want ? piece.subarray(0, want) : piece;
              received += p.length;
              let r: boolean | Promise<boolean>;
              try {
                r = inPlace ? sink.filled!(p) : sink.push(p);
              } catch (err) {
                stop(err as Error);
                return false;
              }
              if (received === bodyLen) {
                const complete = () => {
                  finishOk();
                  stop();
                };
                if (r instanceof Promise) r.then((ok) => (ok ? complete() : stop(new Error('reader stopped'))), (e: Error) => stop(e));
                else if (r) complete();
                else stop(new Error('reader stopped'));
                return false;
              }
              if (r === false) {
                stop(new Error('reader stopped'));
                return false;
              }
              if (r instanceof Promise) {
                s.pause();
                waiting = true;
                r.then(
                  (ok) => {
                    waiting = false;
                    if (!ok) return stop(new Error('reader stopped'));
                    armIdle();
                    s.resume();
                  },
                  (e: Error) => stop(e),
                );
                return false;
              }
              return true;
            };
            conn.onEnd = () => stop(new Error(`connection closed after ${received} of ${bodyLen} body bytes`));
            conn.onBytes = (view, inPlace) => {
              armIdle();
              return deliver(view, inPlace);
            };
            // Reads land in the sink's own buffer, at most up to the body's end (bytes past it
            // would break the protocol and must not overwrite anything the sink holds).
            if (sink.space && sink.filled) {
              const space = sink.space.bind(sink);
              conn.target = () => (received < bodyLen ? space(bodyLen - received) : null);
            }
            if (bodyLen === 0) {
              finishOk();
              return stop();
            }
            armIdle();
            if (leftover && leftover.length > 0) {
              const first = leftover;
              leftover = null;
              if (!deliver(first, false)) return;
            }
            s.resume();
          });
        },
      };
      resolve(response);
      return false;
    };
    s.resume();
    s.write(text);
  });
}

// Connection heartbeats: every connection is pinged once per interval at the muxer level, so a
// peer that vanished without closing its sockets (power loss, a partition: no FIN, no RST) loses
// its connection within the dead-peer bound, and everything that watches disconnects follows.
//
// libp2p's connection monitor does the same job with a ping *stream*: per connection and
// interval, from both ends, every connection in the same tick, it opens a yamux stream,
// negotiates the protocol (multistream-select), echoes 32 bytes and closes the stream. At N = 100
// nodes (bound 64) that was 70% of a node's idle CPU, and its burst every interval delayed
// lookups (scale runs: steady lookups 83% -> 100% found without it). A yamux ping frame (12 bytes
// each way, no stream, no negotiation) proves the same thing: the peer's process read our frame
// and answered. Connections are spread over the interval instead of pinged all at once.
//
// Anything received proves the same as a pong: a connection that was heard from within the
// interval (the peer's own heartbeat, a lookup, a record) is not pinged. Both ends ran a ping
// per interval before; now the first ping of a pair stands for both, so a quiet connection
// costs one round trip per interval instead of two. The dead-peer bound is unchanged: a peer
// silent for an interval is pinged, and fails after the timeout, as before.

import type { Connection } from '@libp2p/interface';

/** What a connection's muxer must offer (yamux does; libp2p does not type it as public API). */
interface PingableMuxer {
  ping(): Promise<number>;
  /** Called with every chunk the connection receives (yamux and libp2p's stream muxer base). */
  onData?: (buf: unknown) => void;
}

export interface HeartbeatOptions {
  intervalMs: number;
  /** A ping unanswered this long fails the connection. */
  timeoutMs: number;
  connections: () => Connection[];
  onFailure: (conn: Connection, err: Error) => void;
  /** Called once if a connection's muxer cannot be pinged (a libp2p or yamux change). */
  onUnsupported: (conn: Connection) => void;
}

function muxerOf(conn: Connection): PingableMuxer | undefined {
  const m = (conn as unknown as { muxer?: Partial<PingableMuxer> }).muxer;
  return m && typeof m.ping === 'function' ? (m as PingableMuxer) : undefined;
}

export class Heartbeat {
  /** When each connection is next due; new connections get a random offset into the interval. */
  private readonly due = new WeakMap<Connection, number>();
  private readonly inFlight = new WeakSet<Connection>();
  /** When each connection last received anything (muxers whose input could be observed). */
  private readonly heard = new WeakMap<Connection, number>();
  private timer: NodeJS.Timeout | undefined;
  private warned = false;
  /** skipped: a ping not sent because the connection had been heard from within the interval. */
  readonly counters = { ok: 0, failed: 0, skipped: 0 };

  constructor(private readonly o: HeartbeatOptions) {}

  start(): void {
    if (this.timer) return;
    // Five ticks per interval: pings are spread, and a connection is pinged at most a fifth late.
    this.timer = setInterval(() => this.tick(), Math.max(50, Math.floor(this.o.intervalMs / 5)));
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Pings the connections that are due (exposed for tests). */
  tick(now = Date.now()): void {
    for (const conn of this.o.connections()) {
      if (conn.status !== 'open' || this.inFlight.has(conn)) continue;
      const due = this.due.get(conn);
      if (due === undefined) {
        this.due.set(conn, now + Math.random() * this.o.intervalMs);
        this.listen(conn);
        continue;
      }
      if (due > now) continue;
      const heard = this.heard.get(conn);
      if (heard !== undefined && now - heard < this.o.intervalMs) {
        this.due.set(conn, heard + this.o.intervalMs);
        this.counters.skipped++;
        continue;
      }
      this.due.set(conn, now + this.o.intervalMs);
      this.ping(conn);
    }
  }

  /**
   * Notes the time of every chunk the connection receives, by wrapping its muxer's input
   * handler (the muxer base calls `this.onData` per message). A muxer without one is pinged
   * every interval, as before.
   */
  private listen(conn: Connection): void {
    const muxer = muxerOf(conn);
    const onData = muxer?.onData;
    if (!muxer || typeof onData !== 'function') return;
    const heard = this.heard;
    muxer.onData = function (this: PingableMuxer, buf: unknown) {
      heard.set(conn, Date.now());
      return onData.call(this, buf);
    };
  }

  private ping(conn: Connection): void {
    const muxer = muxerOf(conn);
    if (!muxer) {
      if (!this.warned) this.o.onUnsupported(conn);
      this.warned = true;
      return;
    }
    this.inFlight.add(conn);
    let settled = false;
    const settle = (err?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      this.inFlight.delete(conn);
      if (!err) {
        this.counters.ok++;
        return;
      }
      if (conn.status !== 'open') return; // closed meanwhile: nothing to judge
      this.counters.failed++;
      this.o.onFailure(conn, err);
    };
    // The timer fires before pending socket reads are handled when our own event loop ran late,
    // so a ping answered in time would look lost. Look again after the poll phase (setImmediate)
    // and fail only if the answer is still not there.
    const timer = setTimeout(
      () => setImmediate(() => settle(new Error(`no answer to a heartbeat ping within ${this.o.timeoutMs} ms`))),
      this.o.timeoutMs,
    );
    timer.unref();
    muxer.ping().then(
      () => settle(),
      (err: Error) => settle(err),
    );
  }
}

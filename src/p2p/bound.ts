// The connection bound (PEERPULL_MAX_CONNECTIONS), kept as a bound.
//
// libp2p's own limit refuses an inbound connection only once that many are established (all
// upgrades in flight pass), never an outbound one, and prunes when a connection opens, closing
// only connections without streams at that instant. Measured at N = 50 with a bound of 12, 40 of
// 50 nodes sat at 13-19 connections in steady state, every extra one idle for minutes: opened by
// bootstrap, kad-dht queries and routing-table pings, record pushes, and inbound upgrades that
// all finished together at the cold start.
//
// Here every connection passes one gate once its upgrade is done, just before it exists. Below the
// bound it is admitted. At the bound, an idle connection (no streams, open for a few seconds,
// not to a ring neighbour) is closed to make room, so a newcomer or a lookup that needs a new
// peer still gets in; with no idle one, the new connection is refused and its opener falls back
// (lookups and record pushes go by datagram, bootstrap tries the next address).

import type { Connection, ConnectionGater, PeerId } from '@libp2p/interface';

/** A connection younger than this is not evicted: whoever opened it is about to use it. */
export const EVICT_MIN_AGE_MS = 3000;
/** An admission whose connection never appears stops holding its slot after this long. */
const ADMISSION_TTL_MS = 5000;

export interface BoundDeps {
  max: number;
  connections(): Connection[];
  /** Connections kept at the bound whatever they cost: ring neighbours keep the cluster one piece. */
  isProtected(conn: Connection): boolean;
  /** Peers refused outright (another cluster's nodes): a connection to them is closed at once anyway. */
  isUnwanted?(peer: PeerId): boolean;
  /** Told of each connection closed to make room (its peer is alive: no need to probe it). */
  onEvict?(conn: Connection): void;
  /** Default EVICT_MIN_AGE_MS. */
  minAgeMs?: number;
  log(level: 'debug' | 'info', msg: string, fields?: Record<string, unknown>): void;
}

export class ConnectionBound {
  /** Expiry times of admissions whose connections have not opened yet (they hold a slot). */
  private admitted: number[] = [];
  /** Connections closed to make room, until libp2p drops them from its list. */
  private readonly leaving = new Set<string>();
  readonly counters = { evicted: 0, refusedInbound: 0, refusedOutbound: 0, unwanted: 0 };

  constructor(private readonly d: BoundDeps) {}

  /** For libp2p's `connectionGater`: the last check before a connection exists. */
  gater(): ConnectionGater {
    return {
      denyInboundUpgradedConnection: (peer) => this.deny('inbound', peer),
      denyOutboundUpgradedConnection: (peer) => this.deny('outbound', peer),
    };
  }

  /** Call on every `connection:open`: the connection now counts itself, its admission stops. */
  opened(): void {
    this.admitted.shift();
  }

  /** Call on every `connection:close`. */
  closed(conn: Connection): void {
    this.leaving.delete(conn.id);
  }

  /** Connections that count: open ones not on their way out, plus admissions about to open. */
  used(conns = this.d.connections()): number {
    const now = Date.now();
    if (this.admitted.length > 0 && this.admitted[0] < now) this.admitted = this.admitted.filter((t) => t >= now);
    let n = this.admitted.length;
    for (const c of conns) if (c.status === 'open' && !this.leaving.has(c.id)) n++;
    return n;
  }

  private deny(direction: 'inbound' | 'outbound', peer: PeerId): boolean {
    if (this.d.isUnwanted?.(peer)) {
      this.counters.unwanted++;
      return true;
    }
    const conns = this.d.connections();
    if (this.used(conns) >= this.d.max) {
      const victim = this.victim(conns);
      if (!victim) {
        if (direction === 'inbound') this.counters.refusedInbound++;
        else this.counters.refusedOutbound++;
        this.d.log('debug', 'connection refused: at the connection bound, none idle', { direction, peer: peer.toString(), max: this.d.max });
        return true;
      }
      this.leaving.add(victim.id);
      this.counters.evicted++;
      this.d.log('debug', 'idle connection closed to make room', { direction, peer: peer.toString(), evicted: victim.remotePeer.toString() });
      victim.abort(new Error('closed to make room at the connection bound'));
      this.d.onEvict?.(victim);
    }
    this.admitted.push(Date.now() + ADMISSION_TTL_MS);
    return false;
  }

  /**
   * The connection to give up: idle (no streams) and old enough, not protected; inbound before
   * outbound (its dialler chose it, ours were chosen by us), then the newest (the long-lived
   * mesh stays, the one-off connections of lookups and pushes go first).
   */
  private victim(conns: Connection[]): Connection | undefined {
    const oldest = Date.now() - (this.d.minAgeMs ?? EVICT_MIN_AGE_MS);
    let best: Connection | undefined;
    for (const c of conns) {
      if (c.status !== 'open' || this.leaving.has(c.id) || c.streams.length > 0 || c.timeline.open > oldest) continue;
      if (this.d.isProtected(c)) continue;
      if (!best || better(c, best)) best = c;
    }
    return best;
  }
}

function better(a: Connection, b: Connection): boolean {
  if (a.direction !== b.direction) return a.direction === 'inbound';
  return a.timeline.open > b.timeline.open;
}

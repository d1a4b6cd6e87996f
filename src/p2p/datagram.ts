// Provider asks in one UDP datagram each way, on the p2p port number.
//
// Beyond a full mesh a lookup asks the key's IP holders (node.ts, ipHolders), nodes it often has
// no connection to. Over libp2p that is a dial first: TCP, the noise handshake, yamux, identify,
// then the request, every step waiting for both event loops, and at the connection bound no dial
// is made at all. A holder answers a datagram from the records it holds: one round trip, no
// connection, no bound. A lost datagram costs only its wait: the lookup then dials as before.
//
// Ask:     "PP1" + JSON {c: cluster, n: nonce, k: key multihash (base64url)}
// Answer:  "PP1" + JSON {n: nonce, i: holder peer id, p: [[provider peer id, [multiaddr, ...]], ...]}
// The records of a node for its IP holders travel the same way, acknowledged:
// Provide: "PP1" + JSON {c, n, i: provider peer id, a: [its multiaddrs], r: [key multihashes]}
// Ack:     "PP1" + JSON {n, ok: records taken}
// Claims of downloads in flight (claims.ts), sent to a key's first IP holder when nobody has it:
// Claim:   "PP1" + JSON {c, n, w: key multihash, i: asker peer id, a: its multiaddrs}
// Answer:  "PP1" + JSON {n, g: 1} (fetch it: you are recorded as fetching) or {n, f: [peer id, [multiaddr, ...]]}
// Release: "PP1" + JSON {c, n, u: key multihash, i: claimant peer id}, acknowledged {n, ok: 1 or 0}
// Claims, like provides, are taken only from the address they name.
// A provide is taken only if the provider's addresses include the address it came from.
// A member of another cluster behind the same DNS name answers either with {n, x: "cluster"}:
// the asker then stops counting that address among its record holders (without a connection,
// identify never tells it so).
// With a cluster key each datagram ends in a 16-byte HMAC-SHA256 tag of what precedes it, so
// only members answer and only answers from members count. Only addresses of DNS members are
// answered (an answer is bigger than a request: no reflection off this port for strangers).

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import dgram from 'node:dgram';
import { isIPv6 } from 'node:net';
import type { ClaimAnswer, Claimant } from './claims.js';

const MAGIC = Buffer.from('PP1');
const TAG_BYTES = 16;
/** Unanswered requests remembered, to tell a late answer from a forged one (~1 minute of a busy node's asks). */
const LATE_NONCES = 2048;
/** Kept under the smallest path MTU worth caring about (IPv6 minimum 1280, minus headers). */
export const MAX_DATAGRAM = 1200;

export interface DatagramProvider {
  id: string;
  addrs: string[];
}

export interface DatagramAnswer {
  /** The holder's peer id (as it says; with a cluster key, tagged). */
  from: string;
  providers: DatagramProvider[];
}

/** Records a node sent for its IP holders to keep. */
export interface DatagramRecords {
  provider: string;
  addrs: string[];
  keys: Uint8Array[];
}

export interface DatagramOptions {
  /** '' = all interfaces. */
  host: string;
  cluster: string;
  /** The cluster key (32 bytes), or undefined for an open network. */
  key: Uint8Array | undefined;
  self: string;
  /** Whether an address may be answered (a DNS member). */
  member(ip: string): boolean;
  /** The providers this node holds a record of for a key multihash (live ones, with addresses). */
  providers(keyMultihash: Uint8Array): Promise<DatagramProvider[]>;
  /** Keeps records another node sent; resolves with how many were taken. */
  take(records: DatagramRecords): Promise<number>;
  /** A member asks to fetch a key nobody provides (key: multihash, base64url). */
  claim(key: string, who: Claimant): ClaimAnswer;
  /** A member gives up its claim; whether it held one. */
  release(key: string, id: string): boolean;
  /** The node at `ip`, asked by us, runs another cluster. */
  foreign(ip: string): void;
  log(level: 'debug' | 'warn', msg: string, fields?: Record<string, unknown>): void;
}

export class Datagrams {
  private socket: dgram.Socket | undefined;
  /** An IPv6 socket on all interfaces, which reaches IPv4 peers as ::ffff:a.b.c.d. */
  private dualStack = false;
  private readonly pending = new Map<string, { ip: string; resolve: (a: Record<string, unknown> | undefined) => void }>();
  /**
   * Requests that ended without an answer (timed out, or the lookup was over), nonce -> the IP
   * asked, newest last: an answer to one is late, not forged. The last LATE_NONCES only.
   */
  private readonly ended = new Map<string, string>();
  /** late: answers that came after their request had ended (busy holders, or our loop late). */
  readonly counters = { asked: 0, answered: 0, unanswered: 0, late: 0, served: 0, refused: 0, provided: 0, taken: 0, claimsAsked: 0, claimsUnanswered: 0 };
  /** The UDP port: the p2p TCP listener's port number, on every node alike. */
  private port = 0;
  /** When a member's datagram (an answer to us, or a request it may send) last arrived. */
  private heardAt = -Infinity;

  constructor(private readonly o: DatagramOptions) {}

  /** Binds the UDP port; false (and a warning) if it cannot, and lookups then only dial. */
  async start(port: number): Promise<boolean> {
    this.port = port;
    // All interfaces: dual-stack if the host has IPv6, else IPv4 only.
    const tries: Array<{ type: 'udp4' | 'udp6'; address: string }> =
      this.o.host === '' ? [{ type: 'udp6', address: '::' }, { type: 'udp4', address: '0.0.0.0' }] : [{ type: isIPv6(this.o.host) ? 'udp6' : 'udp4', address: this.o.host }];
    let last: Error | undefined;
    for (const t of tries) {
      const sock = dgram.createSocket({ type: t.type, ipv6Only: false });
      const err = await new Promise<Error | undefined>((resolve) => {
        sock.once('error', resolve);
        sock.bind({ port: this.port, address: t.address, exclusive: true }, () => resolve(undefined));
      });
      if (err) {
        last = err;
        sock.close();
        continue;
      }
      sock.removeAllListeners('error');
      sock.on('error', (e) => this.o.log('debug', 'p2p datagram socket error', { error: e.message }));
      sock.on('message', (msg, rinfo) => void this.receive(msg, rinfo.address.replace(/^::ffff:/, ''), rinfo.port));
      sock.unref();
      this.socket = sock;
      this.dualStack = t.type === 'udp6' && t.address === '::';
      return true;
    }
    this.o.log('warn', 'p2p datagram port not bound: lookups dial record holders instead', { port: this.port, error: last?.message });
    return false;
  }

  stop(): void {
    for (const p of this.pending.values()) p.resolve(undefined);
    this.pending.clear();
    this.ended.clear();
    this.socket?.close();
    this.socket = undefined;
  }

  get running(): boolean {
    return this.socket !== undefined;
  }

  /**
   * Whether members' datagrams arrived within `withinMs`: the port is open between us, so an
   * answer that is late means a busy holder, not a firewall dropping UDP.
   */
  heardWithin(withinMs: number): boolean {
    return performance.now() - this.heardAt < withinMs;
  }

  /** Asks the node at `ip` for a key's providers; undefined if no (valid) answer in time. */
  async ask(ip: string, keyMultihash: Uint8Array, timeoutMs: number, signal?: AbortSignal): Promise<DatagramAnswer | undefined> {
    if (!this.socket || signal?.aborted) return undefined;
    this.counters.asked++;
    const m = await this.request(ip, { k: Buffer.from(keyMultihash).toString('base64url') }, timeoutMs, signal);
    if (!m || typeof m.i !== 'string' || !Array.isArray(m.p)) {
      this.counters.unanswered++;
      return undefined;
    }
    const providers: DatagramProvider[] = [];
    for (const e of m.p as unknown[]) {
      if (!Array.isArray(e) || typeof e[0] !== 'string' || !Array.isArray(e[1])) continue;
      providers.push({ id: e[0], addrs: (e[1] as unknown[]).filter((x): x is string => typeof x === 'string') });
    }
    this.counters.answered++;
    return { from: m.i, providers };
  }

  /** Asks the key's holder at `ip` to record us as fetching it; undefined if no (valid) answer in time. */
  async claim(ip: string, keyMultihash: Uint8Array, addrs: string[], timeoutMs: number): Promise<ClaimAnswer | undefined> {
    if (!this.socket) return undefined;
    this.counters.claimsAsked++;
    const m = await this.request(ip, { w: Buffer.from(keyMultihash).toString('base64url'), i: this.o.self, a: addrs }, timeoutMs);
    if (m?.g === 1) return { go: true };
    const f = m?.f;
    if (Array.isArray(f) && typeof f[0] === 'string' && Array.isArray(f[1])) {
      return { go: false, at: { id: f[0], addrs: (f[1] as unknown[]).filter((x): x is string => typeof x === 'string') } };
    }
    this.counters.claimsUnanswered++;
    return undefined;
  }

  /** Tells the key's holder at `ip` that our claim is over; whether it acknowledged dropping one. */
  async release(ip: string, keyMultihash: Uint8Array, timeoutMs: number): Promise<boolean> {
    if (!this.socket) return false;
    const m = await this.request(ip, { u: Buffer.from(keyMultihash).toString('base64url'), i: this.o.self }, timeoutMs);
    return m?.ok === 1;
  }

  /**
   * Sends our records for `keys` to the node at `ip` (as many datagrams as they need); the
   * number of keys it acknowledged taking.
   */
  async provide(ip: string, addrs: string[], keys: Uint8Array[], timeoutMs: number): Promise<number> {
    // Sized as the JSON grows (base64url needs no escaping: a key adds its length, two quotes and
    // a comma), not by encoding every candidate datagram.
    const base = this.sizeOf(JSON.stringify({ c: this.o.cluster, n: '0123456789abcdef', i: this.o.self, a: addrs, r: [] }));
    const chunks: string[][] = [];
    let cur: string[] = [];
    let size = base;
    for (const k of keys) {
      const enc = Buffer.from(k).toString('base64url');
      if (cur.length > 0 && size + enc.length + 3 > MAX_DATAGRAM) {
        chunks.push(cur);
        cur = [];
        size = base;
      }
      cur.push(enc);
      size += enc.length + 3;
    }
    if (cur.length > 0) chunks.push(cur);
    if (chunks.some((c) => base + c.reduce((t, e) => t + e.length + 3, 0) > MAX_DATAGRAM)) return 0; // our own addresses do not fit
    const acks = await Promise.all(chunks.map((r) => this.request(ip, { i: this.o.self, a: addrs, r }, timeoutMs)));
    let taken = 0;
    acks.forEach((m, i) => {
      if (m && m.ok === chunks[i]!.length) taken += chunks[i]!.length;
    });
    this.counters.provided += taken;
    return taken;
  }

  /** Sends one request; the answer's JSON, or undefined when none came in time. */
  private request(ip: string, fields: Record<string, unknown>, timeoutMs: number, signal?: AbortSignal): Promise<Record<string, unknown> | undefined> {
    const sock = this.socket;
    if (!sock || signal?.aborted) return Promise.resolve(undefined);
    const nonce = randomBytes(8).toString('hex');
    const body = JSON.stringify({ c: this.o.cluster, n: nonce, ...fields });
    return new Promise((resolve) => {
      const finish = (a: Record<string, unknown> | undefined) => {
        if (!this.pending.delete(nonce)) return;
        if (!a) {
          this.ended.set(nonce, ip);
          if (this.ended.size > LATE_NONCES) this.ended.delete(this.ended.keys().next().value!);
        }
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve(a);
      };
      const onAbort = () => finish(undefined);
      // Like the heartbeat: a late event loop looks at what arrived before giving up.
      // Referenced: a request in flight keeps the thread alive (the socket itself does not).
      const timer = setTimeout(() => setImmediate(() => finish(undefined)), timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(nonce, { ip, resolve: finish });
      sock.send(this.seal(body), this.port, this.dest(ip), (err) => {
        if (err) finish(undefined);
      });
    });
  }

  /** A datagram's length for this JSON (magic and, with a cluster key, the tag around it). */
  private sizeOf(json: string): number {
    return MAGIC.length + Buffer.byteLength(json) + (this.o.key ? TAG_BYTES : 0);
  }

  private seal(json: string): Buffer {
    const payload = Buffer.concat([MAGIC, Buffer.from(json)]);
    if (!this.o.key) return payload;
    return Buffer.concat([payload, this.tag(payload)]);
  }

  /** The JSON of a datagram whose magic (and tag) check out, else undefined. */
  private open(msg: Buffer): unknown {
    if (msg.length < MAGIC.length || !msg.subarray(0, MAGIC.length).equals(MAGIC)) return undefined;
    let payload = msg;
    if (this.o.key) {
      if (msg.length < MAGIC.length + TAG_BYTES) return undefined;
      payload = msg.subarray(0, msg.length - TAG_BYTES);
      if (!timingSafeEqual(this.tag(payload), msg.subarray(msg.length - TAG_BYTES))) return undefined;
    }
    try {
      return JSON.parse(payload.subarray(MAGIC.length).toString('utf8'));
    } catch {
      return undefined;
    }
  }

  private tag(payload: Buffer): Buffer {
    return createHmac('sha256', this.o.key!).update(payload).digest().subarray(0, TAG_BYTES);
  }

  private async receive(msg: Buffer, ip: string, port: number): Promise<void> {
    const m = this.open(msg) as Record<string, unknown> | undefined;
    if (!m || typeof m.n !== 'string') {
      this.counters.refused++;
      return;
    }
    if (typeof m.k === 'string') return this.serve(m, ip, port);
    if (Array.isArray(m.r)) return this.keep(m, ip, port);
    if (typeof m.w === 'string' || typeof m.u === 'string') return this.claimOrRelease(m, ip, port);
    const p = this.pending.get(m.n);
    // An answer must come from the address asked, to a nonce we sent.
    if (!p || p.ip !== ip) {
      // From the address asked, to a request that gave up on it: the holder was slower than the
      // lookup's deadline (in the scale harness's partition, up to a third of all answers).
      if (!p && this.ended.get(m.n) === ip) {
        this.ended.delete(m.n);
        this.counters.late++;
        return;
      }
      this.counters.refused++;
      return;
    }
    if (m.x === 'cluster') {
      p.resolve(undefined);
      this.o.foreign(ip);
      return;
    }
    this.heardAt = performance.now();
    p.resolve(m);
  }

  private async keep(m: Record<string, unknown>, ip: string, port: number): Promise<void> {
    if (!this.admitted(m, ip, port)) return;
    const addrs = Array.isArray(m.a) ? (m.a as unknown[]).filter((x): x is string => typeof x === 'string') : [];
    const keys: Uint8Array[] = [];
    for (const r of m.r as unknown[]) {
      if (typeof r !== 'string') continue;
      const k = Buffer.from(r, 'base64url');
      if (k.length > 0 && k.length <= 64) keys.push(k);
    }
    // The records name the sender, at the address it sent from: no records for somebody else.
    const fromHere = addrs.some((a) => a.startsWith(`/ip4/${ip}/`) || a.startsWith(`/ip6/${ip}/`));
    if (typeof m.i !== 'string' || !fromHere || keys.length === 0) {
      this.counters.refused++;
      return;
    }
    const taken = await this.o.take({ provider: m.i, addrs, keys }).catch(() => 0);
    this.counters.taken += taken;
    this.socket?.send(this.seal(JSON.stringify({ n: m.n, ok: taken })), port, this.dest(ip));
  }

  private claimOrRelease(m: Record<string, unknown>, ip: string, port: number): void {
    if (!this.admitted(m, ip, port)) return;
    const key = (m.w ?? m.u) as string;
    const bytes = Buffer.from(key, 'base64url');
    if (bytes.length === 0 || bytes.length > 64 || typeof m.i !== 'string' || m.i.length === 0 || m.i.length > 128) {
      this.counters.refused++;
      return;
    }
    let reply: Record<string, unknown>;
    if (typeof m.u === 'string') {
      reply = { n: m.n, ok: this.o.release(key, m.i) ? 1 : 0 };
    } else {
      const addrs = Array.isArray(m.a) ? (m.a as unknown[]).filter((x): x is string => typeof x === 'string').slice(0, 8) : [];
      // A claim names the node at the address it came from, like records: nobody claims for another.
      if (!addrs.some((a) => a.startsWith(`/ip4/${ip}/`) || a.startsWith(`/ip6/${ip}/`))) {
        this.counters.refused++;
        return;
      }
      const a = this.o.claim(key, { id: m.i, addrs });
      reply = a.go ? { n: m.n, g: 1 } : { n: m.n, f: [a.at.id, a.at.addrs] };
    }
    this.socket?.send(this.seal(JSON.stringify(reply)), port, this.dest(ip));
  }

  /**
   * Whether a request may be served: our cluster, from a DNS member. A member asking with another
   * cluster's name is told so (and nothing else); anything else is dropped unanswered.
   */
  private admitted(m: Record<string, unknown>, ip: string, port: number): boolean {
    if (m.c === this.o.cluster && this.o.member(ip)) {
      this.heardAt = performance.now();
      return true;
    }
    this.counters.refused++;
    if (typeof m.c === 'string' && m.c !== this.o.cluster && this.o.member(ip)) this.socket?.send(this.seal(JSON.stringify({ n: m.n, x: 'cluster' })), port, this.dest(ip));
    return false;
  }

  private async serve(m: Record<string, unknown>, ip: string, port: number): Promise<void> {
    if (!this.admitted(m, ip, port)) return;
    const key = Buffer.from(m.k as string, 'base64url');
    if (key.length === 0 || key.length > 64) {
      this.counters.refused++;
      return;
    }
    const all = (await this.o.providers(key).catch(() => [])).slice(0, 16);
    // As many providers as fit in one datagram (each adds its JSON and a comma).
    const answer = { n: m.n, i: this.o.self, p: [] as Array<[string, string[]]> };
    let size = this.sizeOf(JSON.stringify(answer));
    for (const pr of all) {
      const entry: [string, string[]] = [pr.id, pr.addrs];
      const add = Buffer.byteLength(JSON.stringify(entry)) + 1;
      if (size + add > MAX_DATAGRAM) break;
      answer.p.push(entry);
      size += add;
    }
    const out = this.seal(JSON.stringify(answer));
    this.counters.served++;
    this.socket?.send(out, port, this.dest(ip));
  }

  private dest(ip: string): string {
    return this.dualStack && !isIPv6(ip) ? `::ffff:${ip}` : ip;
  }
}

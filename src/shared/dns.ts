// The bootstrap names' A and AAAA records, asked over UDP and, for an answer too large for a
// datagram, over TCP (RFC 1035 4.2.2, RFC 7766), and parsed here instead of through node:dns.
// The p2p thread's bootstrap and `peerpull doctor` both ask through it, so they see the same.
//
// Why: every node resolves the headless name every bootstrap interval, and the answer lists every
// node. c-ares (node:dns) took 5.7 ms of CPU to resolve 1,000 records and 48 ms for 4,000
// (native-bench/dns-resolve.ts), time V8's profiler even shows as idle. Parsing the records
// here is a loop over 16- or 28-byte entries. A query goes by UDP first, as c-ares's did; past ~28
// records the answer comes back truncated and is asked again over TCP, and from then on that
// record type goes straight to TCP (the cluster is that large; asking twice was a second query
// per resolve for every node).
//
// Same contract as the c-ares query it replaces: the name is asked as given, without search
// domains; an answer without records of the type is ENODATA, a name that does not exist
// ENOTFOUND, and a malformed message EBADRESP.

import dgram from 'node:dgram';
import { readFile } from 'node:fs/promises';
import net from 'node:net';

export type DnsErrorCode = 'ENODATA' | 'ENOTFOUND' | 'ETIMEOUT' | 'EBADRESP' | 'ESERVFAIL' | 'EREFUSED' | 'ECONNREFUSED' | 'EFORMERR' | 'ENOTIMP' | 'ECONNRESET';

/** Encoded size of one answer record with a compressed owner name: name pointer, type, class, TTL, length, data. */
const A_RECORD_BYTES = 2 + 2 + 2 + 4 + 2 + 4;
const AAAA_RECORD_BYTES = 2 + 2 + 2 + 4 + 2 + 16;
/** Header plus the longest question (a 255-byte name, type, class). */
const DNS_OVERHEAD_BYTES = 12 + 255 + 4;
const DNS_MESSAGE_MAX = 65_535;

/** Records of one family that fill a DNS message: an answer this large may have been cut. */
export const DNS_MESSAGE_CAPACITY = {
  a: Math.floor((DNS_MESSAGE_MAX - DNS_OVERHEAD_BYTES) / A_RECORD_BYTES),
  aaaa: Math.floor((DNS_MESSAGE_MAX - DNS_OVERHEAD_BYTES) / AAAA_RECORD_BYTES),
};

/** An answer of one name this large may have been cut to what one DNS message holds. */
export function possiblyTruncated(ips: readonly string[]): boolean {
  let v4 = 0;
  for (const ip of ips) if (net.isIPv4(ip)) v4++;
  return v4 >= DNS_MESSAGE_CAPACITY.a || ips.length - v4 >= DNS_MESSAGE_CAPACITY.aaaa;
}

export class DnsError extends Error {
  /** The message starts with the code, as node:dns's do ("queryA ENOTFOUND name"). */
  constructor(readonly code: DnsErrorCode | string, message: string) {
    super(`${code} ${message}`);
    this.name = 'DnsError';
  }
}

export interface DnsServer {
  host: string;
  port: number;
}

const TYPE_A = 1;
const TYPE_AAAA = 28;
const CLASS_IN = 1;

/**
 * `ip`, `ip:port`, `[ipv6]:port` or a bare IPv6 address (the forms PEERPULL_DNS_SERVERS takes,
 * validated by the config parser), as a host and port.
 */
export function parseServer(s: string): DnsServer {
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(s);
  if (bracketed) return { host: bracketed[1], port: bracketed[2] ? Number(bracketed[2]) : 53 };
  const v4 = /^([0-9.]+)(?::(\d+))?$/.exec(s);
  if (v4) return { host: v4[1], port: v4[2] ? Number(v4[2]) : 53 };
  if (net.isIPv6(s)) return { host: s, port: 53 };
  throw new Error(`not a DNS server address: "${s}"`);
}

/** The `nameserver` lines of a resolv.conf; none means the local resolver, as libc assumes. */
export function resolvConfServers(text: string): DnsServer[] {
  const out: DnsServer[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    // net.isIP takes a scoped link-local address (fe80::1%eth0) too, and so do connect and send.
    if (m && net.isIP(m[1])) out.push({ host: m[1], port: 53 });
  }
  return out.length > 0 ? out : [{ host: '127.0.0.1', port: 53 }];
}

/** The query message for `name` (without a trailing dot) and `type`, recursion desired. */
export function encodeQuery(id: number, name: string, type: number): Buffer {
  const labels = name.replace(/\.$/, '').split('.');
  const qname = Buffer.alloc(labels.reduce((t, l) => t + 1 + Buffer.byteLength(l), 1));
  let o = 0;
  for (const l of labels) {
    const n = Buffer.byteLength(l);
    if (n === 0 || n > 63) throw new DnsError('EBADNAME', `bad DNS name "${name}"`);
    qname[o++] = n;
    o += qname.write(l, o, 'ascii');
  }
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(0x0100, 2); // RD
  header.writeUInt16BE(1, 4); // QDCOUNT
  const tail = Buffer.alloc(4);
  tail.writeUInt16BE(type, 0);
  tail.writeUInt16BE(CLASS_IN, 2);
  return Buffer.concat([header, qname, tail]);
}

/** Offset just past the (possibly compressed) name at `o`; EBADRESP past the message's end. */
function skipName(msg: Buffer, o: number): number {
  for (let labels = 0; labels < 128; labels++) {
    if (o >= msg.length) break;
    const len = msg[o];
    if (len === 0) return o + 1;
    if ((len & 0xc0) === 0xc0) {
      if (o + 2 > msg.length) break;
      return o + 2;
    }
    if (len & 0xc0) break;
    o += 1 + len;
  }
  throw new DnsError('EBADRESP', 'malformed name in DNS answer');
}

const RCODES: Record<number, DnsErrorCode> = { 1: 'EFORMERR', 2: 'ESERVFAIL', 3: 'ENOTFOUND', 4: 'ENOTIMP', 5: 'EREFUSED' };

/** IPv6 text as inet_ntop writes it: lower case, the longest run of two or more zero groups as `::`. */
function formatIPv6(b: Buffer, o: number): string {
  const g = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(o + 2 * i));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (from: number, to: number) => g.slice(from, to).map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(0, 8) : `${hex(0, best)}::${hex(best + bestLen, 8)}`;
}

/** Whether a reply says it was cut to fit (TC): over UDP, ask again over TCP. */
export function isTruncated(msg: Buffer): boolean {
  return msg.length >= 4 && (msg.readUInt16BE(2) & 0x0200) !== 0;
}

/** The addresses of `type` in the answer section of a reply to query `id`. */
export function parseAnswer(msg: Buffer, id: number, type: number, name: string): string[] {
  const bad = (why: string) => new DnsError('EBADRESP', `DNS answer for ${name}: ${why}`);
  if (msg.length < 12) throw bad('shorter than a header');
  if (msg.readUInt16BE(0) !== id) throw bad('for another query');
  const flags = msg.readUInt16BE(2);
  if (!(flags & 0x8000)) throw bad('not a response');
  const rcode = flags & 0x000f;
  if (rcode !== 0) throw new DnsError(RCODES[rcode] ?? 'EBADRESP', `DNS server answered ${RCODES[rcode] ?? `rcode ${rcode}`} for ${name}`);
  const qd = msg.readUInt16BE(4);
  const an = msg.readUInt16BE(6);
  let o = 12;
  for (let i = 0; i < qd; i++) o = skipName(msg, o) + 4;
  const size = type === TYPE_A ? 4 : 16;
  const out: string[] = [];
  for (let i = 0; i < an; i++) {
    o = skipName(msg, o);
    if (o + 10 > msg.length) throw bad('record header past the end');
    const rtype = msg.readUInt16BE(o);
    const rclass = msg.readUInt16BE(o + 2);
    const rdlen = msg.readUInt16BE(o + 8);
    o += 10;
    if (o + rdlen > msg.length) throw bad('record data past the end');
    // Records of other types (a CNAME on the way) are passed over, as c-ares does.
    if (rtype === type && rclass === CLASS_IN) {
      if (rdlen !== size) throw bad(`address record of ${rdlen} bytes`);
      out.push(size === 4 ? `${msg[o]}.${msg[o + 1]}.${msg[o + 2]}.${msg[o + 3]}` : formatIPv6(msg, o));
    }
    o += rdlen;
  }
  if (out.length === 0) throw new DnsError('ENODATA', `no ${type === TYPE_A ? 'A' : 'AAAA'} records for ${name}`);
  return out;
}

/**
 * A timeout that gives the reply a last chance: timers run before the poll for I/O in each turn
 * of the event loop, so after a stall (a busy node, or hundreds of nodes sharing a core in the
 * scale harness) an answer that arrived in time would otherwise lose to its own timeout. The
 * verdict waits for that turn's reads (setImmediate runs after them).
 */
function lateTimeout(fire: () => void, ms: number): NodeJS.Timeout {
  return setTimeout(() => setImmediate(fire), ms);
}

type Finish = (err: Error | undefined, msg?: Buffer) => void;

/** A socket set up for one exchange: how to close it, and what starts the query (may throw). */
interface Exchange {
  close(): void;
  start(): void;
}

/**
 * One exchange with one server: `open` makes the socket and wires it to `finish`, which reports
 * the reply or a failure. The first report wins; it closes the socket and cancels the timeout,
 * also when starting the query throws.
 */
function exchange(server: DnsServer, name: string, timeoutMs: number, open: (finish: Finish) => Exchange): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let settled = false;
    let close = () => {};
    const finish: Finish = (err, msg) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      close();
      if (err) reject(err);
      else resolve(msg!);
    };
    const timer = lateTimeout(() => finish(new DnsError('ETIMEOUT', `DNS query for ${name} to ${server.host}:${server.port} timed out after ${timeoutMs} ms`)), timeoutMs);
    try {
      const x = open(finish);
      close = () => x.close();
      x.start();
    } catch (err) {
      finish(err as Error);
    }
  });
}

/** A socket's error as the query's, naming the server and the name asked. */
function socketError(err: NodeJS.ErrnoException, server: DnsServer, name: string): DnsError {
  return new DnsError(err.code ?? 'ECONNREFUSED', `DNS query for ${name} to ${server.host}:${server.port}: ${err.message}`);
}

/** One query over one TCP connection: a 2-byte length, the message, and the same back. */
function queryTcp(server: DnsServer, query: Buffer, timeoutMs: number, name: string): Promise<Buffer> {
  return exchange(server, name, timeoutMs, (finish) => {
    const socket = net.connect({ host: server.host, port: server.port });
    const chunks: Buffer[] = [];
    let got = 0;
    let want = -1;
    socket.on('connect', () => {
      const len = Buffer.alloc(2);
      len.writeUInt16BE(query.length, 0);
      socket.write(Buffer.concat([len, query]));
    });
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      got += d.length;
      // The length prefix is read once; the message is joined once, when all of it is in.
      if (want < 0 && got >= 2) want = (chunks[0].length >= 2 ? chunks[0] : Buffer.concat(chunks)).readUInt16BE(0);
      if (want >= 0 && got >= 2 + want) finish(undefined, Buffer.concat(chunks, got).subarray(2, 2 + want));
    });
    socket.on('error', (err) => finish(socketError(err, server, name)));
    socket.on('end', () => finish(new DnsError('ECONNRESET', `DNS server ${server.host}:${server.port} closed the connection before answering for ${name}`)));
    // Connecting started with the socket; the query goes out on 'connect'.
    return { close: () => socket.destroy(), start: () => {} };
  });
}

/** One query in one datagram; the reply must come from the server asked, for this query id. */
function queryUdp(server: DnsServer, query: Buffer, id: number, timeoutMs: number, name: string): Promise<Buffer> {
  return exchange(server, name, timeoutMs, (finish) => {
    const socket = dgram.createSocket(net.isIPv6(server.host) ? 'udp6' : 'udp4');
    socket.on('message', (msg, from) => {
      // Anything else arriving on this port is not the answer (and not trusted as one).
      if (from.port !== server.port || msg.length < 2 || msg.readUInt16BE(0) !== id) return;
      finish(undefined, msg);
    });
    socket.on('error', (err) => finish(socketError(err, server, name)));
    return { close: () => socket.close(), start: () => socket.send(query, server.port, server.host) };
  });
}

/** Answers that end the search: the server has spoken about the name itself. */
const FINAL = new Set(['ENODATA', 'ENOTFOUND', 'EBADRESP']);

/**
 * Resolves one family of a name: each server in turn, then again with twice the timeout
 * (c-ares's schedule for `tries`), until one answers.
 */
export class DnsClient {
  private readonly serverList: Promise<DnsServer[]>;
  /** Record types whose answer was truncated over UDP once: asked over TCP directly since. */
  private readonly overTcp = new Set<number>();

  /** `servers`: as PEERPULL_DNS_SERVERS lists them; empty: the nameservers of /etc/resolv.conf. */
  constructor(servers: string[], private readonly timeoutMs = 2000, private readonly tries = 2, resolvConf = '/etc/resolv.conf') {
    this.serverList =
      servers.length > 0
        ? Promise.resolve(servers.map(parseServer))
        : readFile(resolvConf, 'utf8').then(resolvConfServers, () => resolvConfServers(''));
  }

  /** The servers asked, in order, as `host:port` (for messages). */
  async servers(): Promise<string[]> {
    return (await this.serverList).map((s) => (net.isIPv6(s.host) ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`));
  }

  /** Both families at once: each one's addresses ([] when it failed) and its error, if any. */
  async resolveBoth(name: string): Promise<{ v4: string[]; v6: string[]; errors: Array<DnsError | Error | undefined> }> {
    const settled = await Promise.allSettled([this.resolve4(name), this.resolve6(name)]);
    const [v4, v6] = settled.map((r) => (r.status === 'fulfilled' ? r.value : []));
    return { v4, v6, errors: settled.map((r) => (r.status === 'rejected' ? (r.reason as Error) : undefined)) };
  }

  resolve4(name: string): Promise<string[]> {
    return this.resolve(name, TYPE_A);
  }

  resolve6(name: string): Promise<string[]> {
    return this.resolve(name, TYPE_AAAA);
  }

  private async resolve(name: string, type: number): Promise<string[]> {
    const servers = await this.serverList;
    let last: Error | undefined;
    for (let attempt = 0; attempt < this.tries; attempt++) {
      for (const server of servers) {
        const id = Math.floor(Math.random() * 0x10000);
        try {
          const query = encodeQuery(id, name, type);
          const timeoutMs = this.timeoutMs * 2 ** attempt;
          if (!this.overTcp.has(type)) {
            const msg = await queryUdp(server, query, id, timeoutMs, name);
            if (!isTruncated(msg)) return parseAnswer(msg, id, type, name);
            this.overTcp.add(type);
          }
          return parseAnswer(await queryTcp(server, query, timeoutMs, name), id, type, name);
        } catch (err) {
          if (err instanceof DnsError && FINAL.has(err.code)) throw err;
          last = err as Error;
        }
      }
    }
    throw last ?? new DnsError('ETIMEOUT', `no DNS server to ask for ${name}`);
  }
}

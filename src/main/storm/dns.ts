// The local cluster's headless-service name: a tiny authoritative DNS server (UDP and TCP on
// 127.0.0.1) answering one name with the nodes' A records, so `storm --local` nodes bootstrap
// the way a DaemonSet does (PEERPULL_BOOTSTRAP_DNS) on a laptop without a DNS server installed.
// Nodes that know every member from DNS answer misses from their own records (see the p2p
// section of README); with static peers every miss would be a DHT query.
//
// Only what the resolver asks here: a query for the name, type A (the records), AAAA or anything
// else for the name (no data), any other name (NXDOMAIN). UDP answers over 512 bytes are
// truncated (TC), which makes the resolver ask again over TCP, as with a real server.

import dgram from 'node:dgram';
import net from 'node:net';

const TYPE_A = 1;
const CLASS_IN = 1;
const UDP_MAX = 512;

interface Question {
  id: number;
  flags: number;
  name: string;
  type: number;
  /** Bytes of the question section, copied into the answer. */
  section: Buffer;
}

function parseQuestion(msg: Buffer): Question | undefined {
  if (msg.length < 12 || msg.readUInt16BE(4) !== 1) return undefined;
  const labels: string[] = [];
  let at = 12;
  for (;;) {
    if (at >= msg.length) return undefined;
    const len = msg[at]!;
    if (len === 0) break;
    // A query never uses compression pointers in its question; anything else is refused.
    if (len > 63 || at + 1 + len > msg.length) return undefined;
    labels.push(msg.subarray(at + 1, at + 1 + len).toString('latin1').toLowerCase());
    at += 1 + len;
  }
  at += 1;
  if (at + 4 > msg.length) return undefined;
  return { id: msg.readUInt16BE(0), flags: msg.readUInt16BE(2), name: labels.join('.'), type: msg.readUInt16BE(at), section: msg.subarray(12, at + 4) };
}

export class LocalDns {
  private readonly sockets = new Set<net.Socket>();

  private constructor(
    readonly name: string,
    private ips: string[],
    private readonly udp: dgram.Socket,
    private readonly tcp: net.Server,
    readonly port: number,
  ) {}

  /** `host:port` for PEERPULL_DNS_SERVERS. */
  get server(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Starts serving `name` -> `ips` on one port (UDP and TCP) of 127.0.0.1. */
  static async start(name: string, ips: string[]): Promise<LocalDns> {
    for (let attempt = 0; ; attempt++) {
      const tcp = net.createServer();
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject);
        tcp.listen(0, '127.0.0.1', () => resolve());
      });
      const port = (tcp.address() as net.AddressInfo).port;
      const udp = dgram.createSocket('udp4');
      const bound = await new Promise<boolean>((resolve) => {
        udp.once('error', () => resolve(false));
        udp.bind(port, '127.0.0.1', () => resolve(true));
      });
      if (!bound) {
        tcp.close();
        udp.close();
        if (attempt >= 20) throw new Error('local DNS: no port free for both UDP and TCP on 127.0.0.1');
        continue;
      }
      const dns = new LocalDns(name.toLowerCase().replace(/\.$/, ''), ips, udp, tcp, port);
      dns.serve();
      return dns;
    }
  }

  /** Replaces the records (a node replaced in churn comes back on the same address here). */
  setAddresses(ips: string[]): void {
    this.ips = ips;
  }

  private answer(q: Question, maxSize: number): Buffer {
    const ours = q.name === this.name;
    const records = ours && q.type === TYPE_A ? this.ips.filter((ip) => net.isIPv4(ip)) : [];
    const rrs = records.map((ip) => {
      const rr = Buffer.alloc(16);
      rr.writeUInt16BE(0xc00c, 0); // the name: a pointer to the question
      rr.writeUInt16BE(TYPE_A, 2);
      rr.writeUInt16BE(CLASS_IN, 4);
      rr.writeUInt32BE(1, 6); // TTL 1 s: membership changes show at the next resolve
      rr.writeUInt16BE(4, 10);
      ip.split('.').forEach((o, i) => rr.writeUInt8(Number(o), 12 + i));
      return rr;
    });
    let truncated = false;
    let fit = rrs.length;
    while (12 + q.section.length + fit * 16 > maxSize && fit > 0) {
      fit--;
      truncated = true;
    }
    const header = Buffer.alloc(12);
    header.writeUInt16BE(q.id, 0);
    // QR, opcode 0, AA, TC when cut, RD copied; RCODE 3 (NXDOMAIN) for a name not ours.
    header.writeUInt16BE(0x8000 | 0x0400 | (truncated ? 0x0200 : 0) | (q.flags & 0x0100) | (ours ? 0 : 3), 2);
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(truncated ? 0 : fit, 6);
    return Buffer.concat([header, q.section, ...(truncated ? [] : rrs.slice(0, fit))]);
  }

  private serve(): void {
    this.udp.on('message', (msg, rinfo) => {
      const q = parseQuestion(msg);
      if (q) this.udp.send(this.answer(q, UDP_MAX), rinfo.port, rinfo.address);
    });
    this.udp.on('error', () => {});
    this.tcp.on('connection', (sock) => {
      this.sockets.add(sock);
      sock.on('close', () => this.sockets.delete(sock));
      let buf = Buffer.alloc(0);
      sock.on('error', () => sock.destroy());
      sock.setTimeout(5000, () => sock.destroy());
      sock.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          const len = buf.readUInt16BE(0);
          const q = parseQuestion(buf.subarray(2, 2 + len));
          buf = buf.subarray(2 + len);
          if (!q) return sock.destroy();
          const a = this.answer(q, 65_535);
          const prefix = Buffer.alloc(2);
          prefix.writeUInt16BE(a.length);
          sock.write(Buffer.concat([prefix, a]));
        }
        if (buf.length > 4096) sock.destroy();
      });
    });
  }

  async stop(): Promise<void> {
    // The resolver may keep its TCP connection open: close() would wait for it.
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.udp.close(() => resolve()));
    await new Promise<void>((resolve) => this.tcp.close(() => resolve()));
  }
}

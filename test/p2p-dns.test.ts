// The bootstrap resolver (src/shared/dns.ts): the wire format on hand-built messages, hostile and
// broken answers, and real servers: dnsmasq over UDP and TCP, and servers that misbehave on
// purpose (silent, hanging up, answering with another query's id). Then the members of several
// bootstrap names (src/p2p/bootstrap.ts, DnsMembers): their union, and a name that fails.

import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { after, describe, test } from 'node:test';
import { DnsMembers, DnsResolveError } from '../src/p2p/bootstrap.js';
import { DNS_MESSAGE_CAPACITY, DnsClient, DnsError, encodeQuery, isTruncated, parseAnswer, parseServer, possiblyTruncated, resolvConfServers } from '../src/shared/dns.js';
import { Dnsmasq } from './support/dnsmasq.js';

const A = 1;
const AAAA = 28;
const CNAME = 5;

/** A reply to `query` (an encodeQuery result) with these answer records and header bits. */
function reply(query: Buffer, records: Array<{ type: number; data: Buffer; owner?: Buffer }>, opts: { rcode?: number; tc?: boolean; id?: number } = {}): Buffer {
  const head = Buffer.from(query);
  head.writeUInt16BE(opts.id ?? query.readUInt16BE(0), 0);
  head.writeUInt16BE(0x8180 | (opts.tc ? 0x0200 : 0) | (opts.rcode ?? 0), 2);
  head.writeUInt16BE(records.length, 6);
  const body = records.map((r) => {
    const fixed = Buffer.alloc(10);
    fixed.writeUInt16BE(r.type, 0);
    fixed.writeUInt16BE(1, 2);
    fixed.writeUInt32BE(30, 4);
    fixed.writeUInt16BE(r.data.length, 8);
    // Owner name: a pointer to the question's name at offset 12, as servers compress it.
    return Buffer.concat([r.owner ?? Buffer.from([0xc0, 12]), fixed, r.data]);
  });
  return Buffer.concat([head, ...body]);
}

const v4 = (s: string) => Buffer.from(s.split('.').map(Number));
const v6 = (s: string) => {
  const [l, r] = s.split('::');
  const parts = (x: string | undefined) => (x ? x.split(':') : []);
  const groups = r === undefined ? parts(l) : [...parts(l), ...Array(8 - parts(l).length - parts(r).length).fill('0'), ...parts(r)];
  const b = Buffer.alloc(16);
  groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), 2 * i));
  return b;
};

describe('DNS answers, parsed', () => {
  const q = encodeQuery(0x1234, 'peerpull-p2p.kube-system.svc.cluster.local', A);
  const q6 = encodeQuery(0x4321, 'peerpull-p2p.kube-system.svc.cluster.local', AAAA);
  const name = 'peerpull-p2p';
  const cases: Array<{ name: string; msg: Buffer; type?: number; id?: number; want: string[] | string }> = [
    { name: 'A records, owner compressed', msg: reply(q, [{ type: A, data: v4('10.0.0.1') }, { type: A, data: v4('10.0.0.2') }]), want: ['10.0.0.1', '10.0.0.2'] },
    { name: 'a CNAME on the way is passed over', msg: reply(q, [{ type: CNAME, data: Buffer.from([1, 0x78, 0xc0, 12]) }, { type: A, data: v4('10.0.0.9') }]), want: ['10.0.0.9'] },
    { name: 'owner name written out', msg: reply(q, [{ type: A, data: v4('192.168.1.1'), owner: Buffer.from([1, 0x61, 0]) }]), want: ['192.168.1.1'] },
    { name: 'AAAA records as inet_ntop writes them', type: AAAA, id: 0x4321, msg: reply(q6, [{ type: AAAA, data: v6('2001:db8::1') }, { type: AAAA, data: v6('fd00:0:0:1:0:0:0:2') }, { type: AAAA, data: v6('::') }]), want: ['2001:db8::1', 'fd00:0:0:1::2', '::'] },
    { name: 'no records of the type: ENODATA', msg: reply(q, []), want: 'ENODATA' },
    { name: 'NXDOMAIN: ENOTFOUND', msg: reply(q, [], { rcode: 3 }), want: 'ENOTFOUND' },
    { name: 'SERVFAIL', msg: reply(q, [], { rcode: 2 }), want: 'ESERVFAIL' },
    { name: 'REFUSED', msg: reply(q, [], { rcode: 5 }), want: 'EREFUSED' },
    { name: 'another query id', msg: reply(q, [{ type: A, data: v4('10.0.0.1') }], { id: 0x9999 }), want: 'EBADRESP' },
    { name: 'a query, not a response', msg: q, want: 'EBADRESP' },
    { name: 'shorter than a header', msg: Buffer.from([0x12, 0x34, 0x81]), want: 'EBADRESP' },
    { name: 'a record cut off', msg: reply(q, [{ type: A, data: v4('10.0.0.1') }]).subarray(0, -2), want: 'EBADRESP' },
    { name: 'more records counted than sent', msg: ((m) => (m.writeUInt16BE(5, 6), m))(reply(q, [{ type: A, data: v4('10.0.0.1') }])), want: 'EBADRESP' },
    { name: 'an A record of 6 bytes', msg: reply(q, [{ type: A, data: Buffer.alloc(6) }]), want: 'EBADRESP' },
    { name: 'a label with reserved bits', msg: reply(q, [{ type: A, data: v4('10.0.0.1'), owner: Buffer.from([0x41, 0]) }]), want: 'EBADRESP' },
    { name: 'a name running past the end', msg: Buffer.concat([reply(q, []).subarray(0, 12), Buffer.from([60, 1, 2])]), want: 'EBADRESP' },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const run = () => parseAnswer(c.msg, c.id ?? 0x1234, c.type ?? A, name);
      if (typeof c.want === 'string') assert.throws(run, (err: DnsError) => err instanceof DnsError && err.code === c.want && err.message.startsWith(c.want));
      else assert.deepEqual(run(), c.want);
    });
  }

  test('IPv6 text matches the canonical form for random and zero-heavy addresses', () => {
    for (let i = 0; i < 2000; i++) {
      const b = Buffer.alloc(16);
      // Mostly zero groups, so runs of every length and position occur.
      for (let g = 0; g < 8; g++) if (Math.random() < 0.4) b.writeUInt16BE(Math.floor(Math.random() * 0x10000), 2 * g);
      const [got] = parseAnswer(reply(q6, [{ type: AAAA, data: b }]), 0x4321, AAAA, name);
      const groups = Array.from({ length: 8 }, (_, g) => b.readUInt16BE(2 * g).toString(16)).join(':');
      // WHATWG URL serializes IPv6 hosts compressed the same way (longest zero run of two or more, first on a tie).
      assert.equal(`[${got}]`, new URL(`http://[${groups}]/`).hostname, groups);
    }
  });

  test('the TC bit is read', () => {
    assert.equal(isTruncated(reply(q, [], { tc: true })), true);
    assert.equal(isTruncated(reply(q, [])), false);
  });

  test('queries: labels written out, a bad name refused', () => {
    assert.deepEqual([...encodeQuery(1, 'a.bc.', A).subarray(12)], [1, 0x61, 2, 0x62, 0x63, 0, 0, 1, 0, 1]);
    assert.throws(() => encodeQuery(1, 'a..b', A), /EBADNAME/);
    assert.throws(() => encodeQuery(1, `${'x'.repeat(64)}.b`, A), /EBADNAME/);
  });

  test('servers: PEERPULL_DNS_SERVERS forms and resolv.conf', () => {
    assert.deepEqual(parseServer('10.96.0.10'), { host: '10.96.0.10', port: 53 });
    assert.deepEqual(parseServer('127.0.0.1:5353'), { host: '127.0.0.1', port: 5353 });
    assert.deepEqual(parseServer('[fd00::a]:5353'), { host: 'fd00::a', port: 5353 });
    assert.deepEqual(parseServer('fd00::a'), { host: 'fd00::a', port: 53 });
    assert.throws(() => parseServer('dns.example'), /not a DNS server address/);
    const conf = 'search kube-system.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\n# nameserver 1.1.1.1\nnameserver fe80::1%eth0\n  nameserver fd00::53\noptions ndots:5\n';
    assert.deepEqual(resolvConfServers(conf), [{ host: '10.96.0.10', port: 53 }, { host: 'fe80::1%eth0', port: 53 }, { host: 'fd00::53', port: 53 }]);
    assert.deepEqual(resolvConfServers('nameserver not-an-ip\n'), [{ host: '127.0.0.1', port: 53 }]);
    assert.deepEqual(resolvConfServers('search x\n'), [{ host: '127.0.0.1', port: 53 }]);
  });
});

describe('DNS over the network', () => {
  const closers: Array<() => unknown> = [];
  after(() => closers.forEach((c) => c()));

  test('dnsmasq: a small answer over UDP, a large one over TCP after the truncated UDP reply, a name it does not serve', async () => {
    const ips = (n: number) => Array.from({ length: n }, (_, i) => `10.7.${i >> 8}.${i & 255}`);
    const dns = await Dnsmasq.start({ 'small.dns.test': ips(5), 'big.dns.test': ips(1000) });
    closers.push(() => dns.stop());
    const r = new DnsClient([dns.server], 2000, 2);
    assert.deepEqual((await r.resolve4('small.dns.test')).sort(), ips(5).sort());
    const big = await r.resolve4('big.dns.test');
    assert.equal(new Set(big).size, 1000);
    // Asked over TCP directly from now on (the same answer either way).
    assert.equal((await r.resolve4('big.dns.test')).length, 1000);
    // A name dnsmasq does not serve: its answer (REFUSED without upstream), not a timeout.
    await assert.rejects(r.resolve4('absent.dns.test'), (err: DnsError) => err instanceof DnsError && err.code === 'EREFUSED');
  });

  test('a server that stays silent times out and the next one answers; one that hangs up, too', async () => {
    const silent = dgram.createSocket('udp4');
    await new Promise<void>((res) => silent.bind(0, '127.0.0.1', res));
    closers.push(() => silent.close());
    const hangup = net.createServer((s) => s.destroy());
    await new Promise<void>((res) => hangup.listen(0, '127.0.0.1', res));
    closers.push(() => hangup.close());
    const dns = await Dnsmasq.start({ 'ok.dns.test': ['10.8.0.1'] });
    closers.push(() => dns.stop());
    const silentAddr = `127.0.0.1:${silent.address().port}`;
    const t0 = Date.now();
    assert.deepEqual(await new DnsClient([silentAddr, dns.server], 300, 1).resolve4('ok.dns.test'), ['10.8.0.1']);
    assert.ok(Date.now() - t0 >= 250, 'waited for the silent server first');
    // Alone, the silent server is a timeout, after both tries.
    await assert.rejects(new DnsClient([silentAddr], 100, 2).resolve4('ok.dns.test'), (err: DnsError) => err.code === 'ETIMEOUT' && /timed out after 200 ms/.test(err.message));
    // Nothing listens on UDP at the TCP server's port either: refused or timed out, never an answer.
    await assert.rejects(new DnsClient([`127.0.0.1:${(hangup.address() as net.AddressInfo).port}`], 200, 1).resolve4('ok.dns.test'), DnsError);
  });

  test('a reply with another query id, or from another port, is not taken for the answer', async () => {
    const server = dgram.createSocket('udp4');
    const other = dgram.createSocket('udp4');
    await new Promise<void>((res) => server.bind(0, '127.0.0.1', res));
    await new Promise<void>((res) => other.bind(0, '127.0.0.1', res));
    closers.push(() => server.close(), () => other.close());
    server.on('message', (q, from) => {
      // First a forged reply from another port, then one for another id, then the real one.
      other.send(reply(q, [{ type: A, data: v4('6.6.6.6') }]), from.port, from.address);
      server.send(reply(q, [{ type: A, data: v4('6.6.6.7') }], { id: (q.readUInt16BE(0) + 1) & 0xffff }), from.port, from.address);
      setTimeout(() => server.send(reply(q, [{ type: A, data: v4('10.9.0.1') }]), from.port, from.address), 20);
    });
    assert.deepEqual(await new DnsClient([`127.0.0.1:${server.address().port}`], 1000, 1).resolve4('x.dns.test'), ['10.9.0.1']);
  });

  test('a truncated UDP reply is asked again over TCP', async () => {
    const port = await new Promise<number>((res) => {
      const s = net.createServer();
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => res(p));
      });
    });
    const udp = dgram.createSocket('udp4');
    await new Promise<void>((res) => udp.bind(port, '127.0.0.1', res));
    udp.on('message', (q, from) => udp.send(reply(q, [{ type: A, data: v4('10.1.0.1') }], { tc: true }), from.port, from.address));
    let tcpQueries = 0;
    const tcp = net.createServer((s) => {
      let buf = Buffer.alloc(0);
      s.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length < 2 || buf.length < 2 + buf.readUInt16BE(0)) return;
        tcpQueries++;
        const answer = reply(buf.subarray(2), [{ type: A, data: v4('10.1.0.1') }, { type: A, data: v4('10.1.0.2') }]);
        const len = Buffer.alloc(2);
        len.writeUInt16BE(answer.length, 0);
        // In two writes, so the reader must join them.
        s.write(Buffer.concat([len, answer.subarray(0, 5)]));
        setTimeout(() => s.end(answer.subarray(5)), 10);
      });
    });
    await new Promise<void>((res) => tcp.listen(port, '127.0.0.1', res));
    closers.push(() => udp.close(), () => tcp.close());
    const r = new DnsClient([`127.0.0.1:${port}`], 1000, 1);
    assert.deepEqual(await r.resolve4('t.dns.test'), ['10.1.0.1', '10.1.0.2']);
    assert.deepEqual(await r.resolve4('t.dns.test'), ['10.1.0.1', '10.1.0.2']);
    assert.equal(tcpQueries, 2);
  });
});

describe('members of several bootstrap names', () => {
  const closers: Array<() => unknown> = [];
  after(() => closers.forEach((c) => c()));

  /** The name and type a query asks (an uncompressed question at offset 12). */
  function question(q: Buffer): { name: string; type: number } {
    const labels: string[] = [];
    let o = 12;
    while (q[o] !== 0) {
      labels.push(q.subarray(o + 1, o + 1 + q[o]).toString());
      o += 1 + q[o];
    }
    return { name: labels.join('.'), type: q.readUInt16BE(o + 1) };
  }

  /** A UDP server answering from `zone`, read at each query; no AAAA records anywhere (ENODATA, as for an IPv4 cluster). */
  async function scriptedServer(zone: ReadonlyMap<string, string[] | 'servfail' | 'nxdomain'>): Promise<dgram.Socket> {
    const server = dgram.createSocket('udp4');
    await new Promise<void>((res) => server.bind(0, '127.0.0.1', res));
    server.on('message', (q, from) => {
      const { name, type } = question(q);
      const z = zone.get(name) ?? 'nxdomain';
      const msg = z === 'servfail' ? reply(q, [], { rcode: 2 }) : z === 'nxdomain' ? reply(q, [], { rcode: 3 }) : reply(q, type === A ? z.map((ip) => ({ type: A, data: v4(ip) })) : []);
      server.send(msg, from.port, from.address);
    });
    return server;
  }

  test("a name that never answered fails the first rounds (no half view to bootstrap from), then the others' members are used", async () => {
    const zone = new Map<string, string[] | 'servfail'>([['a.first.test', ['10.0.2.1']], ['b.first.test', 'servfail']]);
    const server = await scriptedServer(zone);
    closers.push(() => server.close());
    const m = new DnsMembers(['a.first.test', 'b.first.test'], [`127.0.0.1:${server.address().port}`], 300);
    for (let round = 1; round <= 3; round++) {
      await assert.rejects(m.resolve(), (err: Error) => err instanceof DnsResolveError && err.message.includes(`waiting for every name's first answer, ${round} of 3`), `round ${round}`);
    }
    assert.deepEqual(await m.resolve(), ['10.0.2.1']);
    assert.deepEqual([...m.failing.keys()], ['b.first.test']);
    // Once it answers, and after: a later failure keeps its members and never fails a round.
    zone.set('b.first.test', ['10.0.3.1']);
    assert.deepEqual(await m.resolve(), ['10.0.2.1', '10.0.3.1']);
    zone.set('b.first.test', 'servfail');
    assert.deepEqual(await m.resolve(), ['10.0.2.1', '10.0.3.1']);
  });

  test('the union of their records; a failing name keeps its last answer, a name that is gone lists nobody; all failing is an error', async () => {
    const zone = new Map<string, string[] | 'servfail' | 'nxdomain'>();
    const server = await scriptedServer(zone);
    closers.push(() => server.close());
    const m = new DnsMembers(['a.pool.test', 'b.pool.test'], [`127.0.0.1:${server.address().port}`], 500);
    const steps: Array<{ a: string[] | 'servfail' | 'nxdomain'; b: string[] | 'servfail' | 'nxdomain'; want: string[] | RegExp; failing: string[] }> = [
      { a: ['10.0.0.2', '10.0.0.1'], b: ['10.0.1.1', '10.0.0.1'], want: ['10.0.0.1', '10.0.0.2', '10.0.1.1'], failing: [] },
      // A server failure for one name is not its pods leaving: they stay members.
      { a: ['10.0.0.1', '10.0.0.2'], b: 'servfail', want: ['10.0.0.1', '10.0.0.2', '10.0.1.1'], failing: ['b.pool.test'] },
      { a: ['10.0.0.1'], b: ['10.0.1.1', '10.0.1.2'], want: ['10.0.0.1', '10.0.1.1', '10.0.1.2'], failing: [] },
      // The server says the name does not exist (its Service deleted): nobody under it.
      { a: ['10.0.0.1'], b: 'nxdomain', want: ['10.0.0.1'], failing: ['b.pool.test'] },
      { a: 'servfail', b: 'nxdomain', want: /a\.pool\.test.*ESERVFAIL.*b\.pool\.test.*ENOTFOUND/, failing: ['a.pool.test', 'b.pool.test'] },
    ];
    for (const [i, step] of steps.entries()) {
      zone.set('a.pool.test', step.a).set('b.pool.test', step.b);
      const got = await m.resolve().catch((err: Error) => err);
      if (step.want instanceof RegExp) {
        assert.ok(got instanceof DnsResolveError, `step ${i}: ${String(got)}`);
        assert.match(got.message, step.want, `step ${i}`);
      } else assert.deepEqual(got, step.want, `step ${i}`);
      assert.deepEqual([...m.failing.keys()].sort(), step.failing, `step ${i}: failing names`);
      assert.equal(m.truncated, false);
    }
  });

  test('two names of 3,000 nodes each (dnsmasq, over TCP): 6,000 members, and no answer is taken for a cut one', async () => {
    const ips = (prefix: number, n: number) => Array.from({ length: n }, (_, i) => `10.${prefix}.${i >> 8}.${i & 255}`);
    const dns = await Dnsmasq.start({ 'a.big.test': ips(20, 3000), 'b.big.test': ips(21, 3000), 'c.big.test': ips(22, 4500) });
    closers.push(() => dns.stop());
    const m = new DnsMembers(['a.big.test', 'b.big.test'], [dns.server]);
    const got = await m.resolve();
    assert.equal(got.length, 6000);
    assert.equal(new Set(got).size, 6000);
    // More than one message holds, together, and each name's answer is whole.
    assert.ok(possiblyTruncated(got));
    assert.equal(m.truncated, false);
    // A name past the capacity is flagged, whatever the others answer (dnsmasq cuts it, or sends
    // what no resolver reads).
    const cut = new DnsMembers(['a.big.test', 'c.big.test'], [dns.server]);
    const answer = await cut.resolve().catch((err: Error) => err);
    if (answer instanceof Error) assert.match(answer.message, /EBADRESP/);
    else {
      assert.ok(answer.length >= 3000 + DNS_MESSAGE_CAPACITY.a && answer.length < 7500, `${answer.length} members`);
      assert.equal(cut.truncated, true);
    }
  });
});

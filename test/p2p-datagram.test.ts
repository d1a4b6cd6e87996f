// Provider asks over UDP (src/p2p/datagram.ts) between real sockets on loopback addresses: an
// answer carries the holder's records; strangers, other clusters, wrong cluster keys, forged and
// unasked answers get nothing; an answer never outgrows one datagram.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { after, describe, test } from 'node:test';
import { FetchClaims } from '../src/p2p/claims.js';
import { Datagrams, MAX_DATAGRAM, type DatagramOptions, type DatagramProvider, type DatagramRecords } from '../src/p2p/datagram.js';

const PORT = 17301;
const KEY = randomBytes(34); // a multihash's length
const PROVIDERS: DatagramProvider[] = [
  { id: '12D3KooWHolderAAAA', addrs: ['/ip4/127.0.0.170/tcp/17301', '/ip4/127.0.0.170/tcp/5000/http'] },
  { id: '12D3KooWHolderBBBB', addrs: ['/ip4/127.0.0.171/tcp/17301'] },
];

const started: Datagrams[] = [];
after(() => started.forEach((d) => d.stop()));

/** Records each test node took, by its address. */
const kept = new Map<string, DatagramRecords[]>();
/** Addresses each test node was told run another cluster. */
const foreignSeen = new Map<string, string[]>();

/** Each test node's claims table, by its address. */
const claimTables = new Map<string, FetchClaims>();

async function node(ip: string, over: Partial<DatagramOptions> = {}, held: DatagramProvider[] = PROVIDERS): Promise<Datagrams> {
  const claims = new FetchClaims();
  claimTables.set(ip, claims);
  const d = new Datagrams({
    claim: (k, who) => claims.ask(k, who),
    release: (k, id) => claims.release(k, id),
    host: ip,
    cluster: 'c1',
    key: undefined,
    self: `self-${ip}`,
    member: (from) => /^127\.0\.0\.1[67]\d$/.test(from),
    providers: async (mh) => (Buffer.from(mh).equals(KEY) ? held : []),
    take: async (r) => {
      kept.set(ip, [...(kept.get(ip) ?? []), r]);
      return r.keys.length;
    },
    foreign: (other) => foreignSeen.set(ip, [...(foreignSeen.get(ip) ?? []), other]),
    log: () => {},
    ...over,
  });
  assert.equal(await d.start(PORT), true, `bound ${ip}:${PORT}/udp`);
  started.push(d);
  return d;
}

async function waitUntil(ok: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) assert.fail(`timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('provider asks over UDP', () => {
  test('a member is answered with the records held; an unknown key gets an empty answer', async () => {
    const asker = await node('127.0.0.160');
    const holder = await node('127.0.0.161');
    const a = await asker.ask('127.0.0.161', KEY, 2000);
    assert.deepEqual(a, { from: 'self-127.0.0.161', providers: PROVIDERS });
    const none = await asker.ask('127.0.0.161', randomBytes(34), 2000);
    assert.deepEqual(none, { from: 'self-127.0.0.161', providers: [] });
    assert.equal(holder.counters.served, 2);
    assert.equal(asker.counters.answered, 2);
  });

  test('no answer for a non-member, another cluster or another cluster key (and nothing hangs)', async () => {
    const stranger = await node('127.0.0.150');
    await node('127.0.0.162');
    assert.equal(await stranger.ask('127.0.0.162', KEY, 300), undefined, 'not a DNS member');
    const other = await node('127.0.0.163', { cluster: 'c2' });
    assert.equal(await other.ask('127.0.0.162', KEY, 2000), undefined, 'another cluster');
    // ... which it is told, so it stops counting that address among its record holders.
    assert.deepEqual(foreignSeen.get('127.0.0.163'), ['127.0.0.162']);
    assert.equal(foreignSeen.get('127.0.0.150'), undefined, 'a non-member is told nothing');
    const keyA = randomBytes(32);
    const keyed = await node('127.0.0.164', { key: keyA });
    const holderB = await node('127.0.0.165', { key: randomBytes(32) });
    assert.equal(await keyed.ask('127.0.0.165', KEY, 300), undefined, 'another cluster key');
    assert.ok(holderB.counters.refused >= 1);
    const holderA = await node('127.0.0.166', { key: keyA });
    assert.deepEqual((await keyed.ask('127.0.0.166', KEY, 2000))?.providers, PROVIDERS, 'the same key');
    assert.equal(holderA.counters.served, 1);
    assert.equal(stranger.counters.unanswered, 1);
  });

  test('an answer from another address than the one asked, or to no ask, is dropped', async () => {
    const asker = await node('127.0.0.167');
    // A forger on another address answers whatever it sees asked.
    const forger = dgram.createSocket('udp4');
    await new Promise<void>((r) => forger.bind(0, '127.0.0.168', r));
    const silent = dgram.createSocket('udp4');
    await new Promise<void>((r) => silent.bind(PORT, '127.0.0.169', r));
    silent.on('message', (msg) => {
      const ask = JSON.parse(msg.subarray(3).toString()) as { n: string };
      const forged = Buffer.concat([Buffer.from('PP1'), Buffer.from(JSON.stringify({ n: ask.n, i: 'forger', p: [['12D3KooWEvil', ['/ip4/6.6.6.6/tcp/1']]] }))]);
      forger.send(forged, PORT, '127.0.0.167');
    });
    try {
      assert.equal(await asker.ask('127.0.0.169', KEY, 400), undefined);
      const refusedBefore = asker.counters.refused;
      forger.send(Buffer.concat([Buffer.from('PP1'), Buffer.from(JSON.stringify({ n: 'nobody-asked', i: 'x', p: [] }))]), PORT, '127.0.0.167');
      forger.send(Buffer.from('not ours at all'), PORT, '127.0.0.167');
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(asker.counters.refused, refusedBefore + 2);
    } finally {
      forger.close();
      silent.close();
    }
  });

  test('an answer that comes after the ask gave up counts as late, not as refused; a forged one after it still as refused', async () => {
    const asker = await node('127.0.0.177');
    // A real holder whose store is slow to answer: its answer leaves ~300 ms after the ask.
    await node('127.0.0.178', { providers: async () => new Promise((r) => setTimeout(() => r(PROVIDERS), 300)) });
    assert.equal(await asker.ask('127.0.0.178', KEY, 100), undefined, 'gave up before the answer');
    assert.equal(asker.counters.unanswered, 1);
    await waitUntil(() => asker.counters.late === 1, 3000, 'the slow answer counted as late');
    assert.equal(asker.counters.refused, 0);
    // An ask that is aborted (the lookup was over) ends the same way.
    const ac = new AbortController();
    const asked = asker.ask('127.0.0.178', KEY, 2000, ac.signal);
    ac.abort();
    assert.equal(await asked, undefined);
    await waitUntil(() => asker.counters.late === 2, 3000, 'the answer to an aborted ask counted as late');
    // The same nonce answered again, or answered from another address: not an answer we waited for.
    const forger = dgram.createSocket('udp4');
    await new Promise<void>((r) => forger.bind(0, '127.0.0.153', r));
    const silent = dgram.createSocket('udp4');
    await new Promise<void>((r) => silent.bind(PORT, '127.0.0.179', r));
    let nonce = '';
    silent.on('message', (msg) => (nonce = (JSON.parse(msg.subarray(3).toString()) as { n: string }).n));
    try {
      assert.equal(await asker.ask('127.0.0.179', KEY, 150), undefined);
      assert.notEqual(nonce, '');
      const answer = Buffer.concat([Buffer.from('PP1'), Buffer.from(JSON.stringify({ n: nonce, i: 'forger', p: [] }))]);
      forger.send(answer, PORT, '127.0.0.177');
      await waitUntil(() => asker.counters.refused === 1, 3000, 'a late answer from another address is refused');
      assert.equal(asker.counters.late, 2);
    } finally {
      forger.close();
      silent.close();
    }
  });

  test('records sent to a holder are taken and acknowledged, in as many datagrams as they need; never for another address', async () => {
    const sender = await node('127.0.0.174');
    await node('127.0.0.175');
    const keys = Array.from({ length: 60 }, () => randomBytes(34));
    const addrs = ['/ip4/127.0.0.174/tcp/17301', '/ip4/127.0.0.174/tcp/5000/http'];
    assert.equal(await sender.provide('127.0.0.175', addrs, keys, 2000), 60);
    const got = kept.get('127.0.0.175') ?? [];
    assert.ok(got.length > 1, `${got.length} datagrams`);
    assert.deepEqual(got.flatMap((r) => r.keys.map((k) => Buffer.from(k).toString('hex'))), keys.map((k) => k.toString('hex')));
    assert.ok(got.every((r) => r.provider === 'self-127.0.0.174' && r.addrs.join() === addrs.join()));
    // Records naming addresses that are not the sender's: refused, nothing acknowledged.
    assert.equal(await sender.provide('127.0.0.175', ['/ip4/10.9.9.9/tcp/17301'], keys.slice(0, 2), 300), 0);
    assert.equal(kept.get('127.0.0.175')!.length, got.length);
    // A non-member's records: the same.
    const stranger = await node('127.0.0.151');
    assert.equal(await stranger.provide('127.0.0.175', ['/ip4/127.0.0.151/tcp/17301'], keys.slice(0, 2), 300), 0);
  });

  test('a holder of many records answers with as many as fit in one datagram', async () => {
    const many = Array.from({ length: 40 }, (_, i) => ({ id: `12D3KooW${'x'.repeat(44)}${i}`, addrs: [`/ip4/10.0.${i}.1/tcp/5001`, `/ip4/10.0.${i}.1/tcp/5000/http`] }));
    const asker = await node('127.0.0.173', {}, []);
    const raw = dgram.createSocket('udp4');
    await new Promise<void>((r) => raw.bind(0, '127.0.0.161', r));
    const holder = await node('127.0.0.172', { member: () => true }, many);
    try {
      const a = await asker.ask('127.0.0.172', KEY, 2000);
      assert.ok(a && a.providers.length > 3 && a.providers.length < many.length, `${a?.providers.length} providers`);
      assert.deepEqual(a.providers, many.slice(0, a.providers.length));
      // The datagram itself, seen by a plain socket asking the same way.
      const got = new Promise<Buffer>((r) => raw.once('message', r));
      raw.send(Buffer.concat([Buffer.from('PP1'), Buffer.from(JSON.stringify({ c: 'c1', n: 'n1', k: KEY.toString('base64url') }))]), PORT, '127.0.0.172');
      assert.ok((await got).length <= MAX_DATAGRAM);
      assert.ok(holder.counters.served >= 2);
    } finally {
      raw.close();
    }
  });

  test('download claims: the first asker goes, later ones learn where; a release frees the key; never for another address', async () => {
    const a = await node('127.0.0.168');
    const b = await node('127.0.0.169');
    await node('127.0.0.176');
    const key = randomBytes(34);
    const aAddrs = ['/ip4/127.0.0.168/tcp/17301'];
    assert.deepEqual(await a.claim('127.0.0.176', key, aAddrs, 2000), { go: true });
    // A repeated ask by the claimant renews its claim rather than pointing it at itself.
    assert.deepEqual(await a.claim('127.0.0.176', key, aAddrs, 2000), { go: true });
    assert.deepEqual(await b.claim('127.0.0.176', key, ['/ip4/127.0.0.169/tcp/17301'], 2000), { go: false, at: { id: 'self-127.0.0.168', addrs: aAddrs } });
    // Only the claimant can release: b's release changes nothing.
    assert.equal(await b.release('127.0.0.176', key, 2000), false);
    assert.equal(await a.release('127.0.0.176', key, 2000), true);
    assert.deepEqual(await b.claim('127.0.0.176', key, ['/ip4/127.0.0.169/tcp/17301'], 2000), { go: true });
    // A claim naming another node's address is dropped unanswered.
    const other = randomBytes(34);
    assert.equal(await a.claim('127.0.0.176', other, ['/ip4/127.0.0.169/tcp/17301'], 300), undefined);
    assert.equal(claimTables.get('127.0.0.176')!.size, 1);
    assert.deepEqual(claimTables.get('127.0.0.176')!.counters, { granted: 3, joined: 1, released: 1 });
    assert.equal(a.counters.claimsUnanswered, 1);
    // Strangers get nothing.
    const stranger = await node('127.0.0.152');
    assert.equal(await stranger.claim('127.0.0.176', other, ['/ip4/127.0.0.152/tcp/17301'], 300), undefined);
  });
});

describe('download claims table', () => {
  // [step, key, who, expected answer (claimant id, or "go")]
  const steps: Array<[string, 'ask' | 'release' | 'tick' | 'dead', string, string, string | boolean | number]> = [
    ['first asker goes', 'ask', 'k1', 'A', 'go'],
    ['second asker joins A', 'ask', 'k1', 'B', 'A'],
    ['another key is separate', 'ask', 'k2', 'B', 'go'],
    ['claimant asking again renews', 'ask', 'k1', 'A', 'go'],
    ['not the claimant: no release', 'release', 'k1', 'B', false],
    ['claimant releases', 'release', 'k1', 'A', true],
    ['after a release the next asker goes', 'ask', 'k1', 'C', 'go'],
    ['time passes beyond the TTL', 'tick', '', '', 1001],
    ['an expired claim is not handed out', 'ask', 'k1', 'D', 'go'],
    ['D dies', 'dead', '', 'D', ''],
    ['a dead claimant is forgotten', 'ask', 'k1', 'E', 'go'],
  ];
  test('each step', () => {
    let t = 0;
    const claims = new FetchClaims(1000, () => t);
    const who = (id: string) => ({ id, addrs: [`/ip4/127.0.0.1/tcp/${id.charCodeAt(0)}`] });
    for (const [name, op, key, id, want] of steps) {
      if (op === 'tick') t += want as number;
      else if (op === 'dead') claims.forgetPeer(id);
      else if (op === 'release') assert.equal(claims.release(key, id), want, name);
      else {
        const a = claims.ask(key, who(id));
        assert.deepEqual(a, want === 'go' ? { go: true } : { go: false, at: who(want as string) }, name);
      }
    }
  });
});

// The connection bound (src/p2p/bound.ts) on real libp2p nodes over loopback TCP: a node never
// holds more open connections than its bound, counted at every open; at the bound an idle,
// old enough, unprotected connection makes room (inbound first, newest first), and a newcomer is
// refused when every connection is busy, young or protected. Addresses 127.0.0.180-189.

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import type { Connection, Stream } from '@libp2p/interface';
import { tcp } from '@libp2p/tcp';
import { createLibp2p, type Libp2p } from 'libp2p';
import { ConnectionBound } from '../src/p2p/bound.js';

const HOLD = '/peerpull-test/hold/1';
const started: Libp2p[] = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, check: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function libp2pOn(ip: string, bound?: ConnectionBound): Promise<Libp2p> {
  const n = await createLibp2p({
    addresses: { listen: [`/ip4/${ip}/tcp/0`] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ enableKeepAlive: false })],
    connectionGater: bound?.gater(),
    // As in node.ts: libp2p's own limit above the bound, so that only the gate decides.
    connectionManager: { maxConnections: 100 },
  });
  started.push(n);
  return n;
}

/** A node under test: its bound, the most connections it held open at once, and who it closed. */
async function boundedNode(ip: string, max: number, opts: { minAgeMs?: number; protect?: (c: Connection) => boolean } = {}) {
  let node: Libp2p | undefined;
  const bound = new ConnectionBound({
    max,
    connections: () => node?.getConnections() ?? [],
    isProtected: (c) => opts.protect?.(c) ?? false,
    minAgeMs: opts.minAgeMs ?? 200,
    log: () => {},
  });
  node = await libp2pOn(ip, bound);
  const state = { node, bound, peak: 0 };
  node.addEventListener('connection:open', () => {
    bound.opened();
    state.peak = Math.max(state.peak, node.getConnections().filter((c) => c.status === 'open').length);
  });
  node.addEventListener('connection:close', (e) => bound.closed(e.detail));
  // A stream on this protocol stays open until the test ends: a busy connection.
  const held: Stream[] = [];
  await node.handle(HOLD, (stream) => {
    held.push(stream);
  });
  return state;
}

const openTo = (from: Libp2p, to: Libp2p) => from.getConnections(to.peerId).filter((c) => c.status === 'open').length;

after(async () => {
  await Promise.all(started.map((n) => Promise.resolve(n.stop()).catch(() => {})));
});

describe('the connection bound on real libp2p nodes', { timeout: 60_000 }, () => {
  test('below the bound every connection is admitted', async () => {
    const a = await boundedNode('127.0.0.180', 4);
    const dialers = await Promise.all(['127.0.0.181', '127.0.0.182', '127.0.0.183'].map((ip) => libp2pOn(ip)));
    for (const d of dialers) await d.dial(a.node.getMultiaddrs()[0]);
    await waitFor('three connections at the bounded node', () => a.node.getConnections().length === 3);
    assert.deepEqual(a.bound.counters, { evicted: 0, refusedInbound: 0, refusedOutbound: 0, unwanted: 0 });
    assert.equal(a.bound.used(), 3);
  });

  test('at the bound the newest idle inbound connection makes room; the count never passes the bound', async () => {
    const a = await boundedNode('127.0.0.184', 3);
    const dialers = await Promise.all(['127.0.0.181', '127.0.0.182', '127.0.0.183', '127.0.0.185'].map((ip) => libp2pOn(ip)));
    for (const d of dialers.slice(0, 3)) {
      await d.dial(a.node.getMultiaddrs()[0]);
      await sleep(30); // distinct open times: the newest is known
    }
    await waitFor('three connections', () => a.node.getConnections().length === 3);
    await sleep(300); // older than minAgeMs: evictable
    await dialers[3].dial(a.node.getMultiaddrs()[0]);
    await waitFor('the newest of the three to be dropped', () => openTo(dialers[2], a.node) === 0);
    assert.equal(openTo(dialers[3], a.node), 1, 'the newcomer is in');
    assert.equal(openTo(dialers[0], a.node) + openTo(dialers[1], a.node), 2, 'the older two stay');
    assert.equal(a.bound.counters.evicted, 1);
    assert.ok(a.peak <= 3, `held ${a.peak} at a bound of 3`);
  });

  test('outbound at the bound: an idle inbound connection goes before an idle outbound one', async () => {
    const a = await boundedNode('127.0.0.186', 2);
    const [inDialer, outTarget, newTarget] = await Promise.all(['127.0.0.181', '127.0.0.182', '127.0.0.183'].map((ip) => libp2pOn(ip)));
    await a.node.dial(outTarget.getMultiaddrs()[0]);
    await sleep(30);
    await inDialer.dial(a.node.getMultiaddrs()[0]);
    await waitFor('two connections', () => a.node.getConnections().length === 2);
    await sleep(300);
    await a.node.dial(newTarget.getMultiaddrs()[0]);
    await waitFor('the inbound one to be dropped', () => openTo(inDialer, a.node) === 0);
    assert.equal(openTo(a.node, outTarget), 1, 'our own older outbound connection stays');
    assert.equal(openTo(a.node, newTarget), 1);
    assert.ok(a.peak <= 2, `held ${a.peak} at a bound of 2`);
  });

  test('a peer known to run another cluster is refused below the bound, without evicting anyone', async () => {
    let foreignId = '';
    let node: Libp2p | undefined;
    const bound = new ConnectionBound({ max: 4, connections: () => node?.getConnections() ?? [], isProtected: () => false, isUnwanted: (p) => p.toString() === foreignId, minAgeMs: 0, log: () => {} });
    node = await libp2pOn('127.0.0.185', bound);
    node.addEventListener('connection:open', () => bound.opened());
    node.addEventListener('connection:close', (e) => bound.closed(e.detail));
    const [friend, foreign] = await Promise.all(['127.0.0.181', '127.0.0.182'].map((ip) => libp2pOn(ip)));
    foreignId = foreign.peerId.toString();
    await friend.dial(node.getMultiaddrs()[0]);
    await foreign.dial(node.getMultiaddrs()[0]).catch(() => {});
    await waitFor('the foreign peer to be refused', () => bound.counters.unwanted === 1);
    await waitFor('the foreign peer to hold no connection', () => openTo(foreign, node) === 0);
    assert.equal(openTo(friend, node), 1);
    assert.equal(bound.counters.evicted, 0);
  });

  // Each case fills a bound of 2, then a third node dials in and must be turned away.
  const refusals: Array<{ name: string; minAgeMs: number; busy: boolean; protectAll: boolean }> = [
    { name: 'every connection has a stream open', minAgeMs: 200, busy: true, protectAll: false },
    { name: 'every connection is younger than the minimum age', minAgeMs: 60_000, busy: false, protectAll: false },
    { name: 'every connection is protected (ring neighbours)', minAgeMs: 200, busy: false, protectAll: true },
  ];
  let octet = 187;
  for (const c of refusals) {
    test(`a newcomer is refused when ${c.name}`, async () => {
      const a = await boundedNode(`127.0.0.${octet++}`, 2, { minAgeMs: c.minAgeMs, protect: () => c.protectAll });
      const dialers = await Promise.all(['127.0.0.181', '127.0.0.182', '127.0.0.183'].map((ip) => libp2pOn(ip)));
      for (const d of dialers.slice(0, 2)) {
        const conn = await d.dial(a.node.getMultiaddrs()[0]);
        if (c.busy) await conn.newStream(HOLD);
      }
      await waitFor('two connections', () => a.node.getConnections().length === 2);
      await sleep(300);
      // The dialler may see its side open for a moment: the refusal happens at the other end.
      await dialers[2].dial(a.node.getMultiaddrs()[0]).catch(() => {});
      await waitFor('the refusal to be counted', () => a.bound.counters.refusedInbound === 1);
      await waitFor('the newcomer to hold no connection', () => openTo(dialers[2], a.node) === 0);
      assert.equal(a.bound.counters.evicted, 0);
      assert.equal(openTo(dialers[0], a.node) + openTo(dialers[1], a.node), 2, 'the first two keep theirs');
      assert.ok(a.peak <= 2, `held ${a.peak} at a bound of 2`);
    });
  }
});

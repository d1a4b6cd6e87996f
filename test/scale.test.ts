// Scale properties in CI: DNS answers larger than one message, liveness under partial answers,
// and a 50-node cluster of real p2p stacks (native-bench/scale) checked for readiness, the
// connection bound, isolation by cluster name and recovery from churn. The full runs (N = 100
// to 1,000) are `npm run bench:scale`; figures in README, "Scale (issue 7)".

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Bootstrapper, DnsMembers, DnsResolveError, RING_LINKS, type BootstrapDeps, bootstrapCount, ringNeighbours, selectRing, sortAddresses, unconnectedRetryDelay } from '../src/p2p/bootstrap.js';
import { Liveness } from '../src/p2p/liveness.js';
import { DNS_MESSAGE_CAPACITY, possiblyTruncated } from '../src/shared/dns.js';
import { DEFAULTS, runScale, type ScaleResult } from '../native-bench/scale/scenarios.js';
import { Dnsmasq } from './support/dnsmasq.js';

const ip = (i: number) => `127.101.${1 + Math.floor(i / 250)}.${1 + (i % 250)}`;
const ips = (from: number, to: number) => Array.from({ length: to - from }, (_, k) => ip(from + k));

describe('liveness with partial DNS answers', () => {
  test('an IP no answer ever listed is not condemned; one that left a complete answer is', () => {
    const l = new Liveness();
    l.setDnsMembers(ips(0, 10));
    assert.equal(l.isLive('p', [ip(50)], false), true, 'never listed: unknown, not dead');
    l.setDnsMembers(ips(1, 10));
    assert.equal(l.isLive('p', [ip(0)], false), false, 'listed before, gone now: departed');
    assert.equal(l.isLive('p', [ip(0)], true), true, 'a live connection wins');
    assert.equal(l.isLive('p', [ip(5)], false), true);
  });

  test('an answer at the size of a full DNS message condemns nobody', () => {
    const l = new Liveness();
    const all = ips(0, 5000);
    l.setDnsMembers(all.slice(0, 4500));
    // What dnsmasq does past 64 KiB: a different cut of the members each time, no error.
    const cut = all.slice(500, 500 + DNS_MESSAGE_CAPACITY.a);
    assert.ok(possiblyTruncated(cut));
    l.setDnsMembers(cut);
    assert.equal(l.isLive('p', [ip(10)], false), true, 'missing from a possibly cut answer');
    assert.equal(l.isLive('p', [ip(4800)], false), true);
  });

  test('a rotating subset is not believed; a large drop repeated by the next answer is', () => {
    const l = new Liveness();
    l.setDnsMembers(ips(0, 100));
    l.setDnsMembers(ips(0, 40)); // 60 of 100 gone at once: suspicious
    assert.equal(l.isLive('p', [ip(70)], false), true);
    l.setDnsMembers(ips(40, 80)); // a different subset: still not believed
    assert.equal(l.isLive('p', [ip(10)], false), true);
    assert.equal(l.isLive('p', [ip(90)], false), true);
    l.setDnsMembers(ips(40, 80)); // the same answer twice: the cluster really shrank
    assert.equal(l.isLive('p', [ip(10)], false), false);
    assert.equal(l.isLive('p', [ip(90)], false), false);
    assert.equal(l.isLive('p', [ip(50)], false), true);
  });

  test('ordinary churn (a few pods replaced) is believed at once; an empty answer suspends the check', () => {
    const l = new Liveness();
    l.setDnsMembers(ips(0, 100));
    l.setDnsMembers([...ips(10, 100), ...ips(200, 210)]);
    assert.equal(l.isLive('p', [ip(3)], false), false);
    assert.equal(l.isLive('p', [ip(205)], false), true);
    l.setDnsMembers([]);
    assert.equal(l.isLive('p', [ip(3)], false), true, 'an outage is not evidence');
  });

  test('prune forgets long-departed IPs', () => {
    let now = 1_000_000;
    const l = new Liveness(() => now);
    l.setDnsMembers(ips(0, 10));
    l.setDnsMembers(ips(1, 10));
    assert.equal(l.isLive('p', [ip(0)], false), false);
    now += 60_000;
    l.prune(30_000);
    assert.equal(l.isLive('p', [ip(0)], false), true, 'back to unknown (its records expired too)');
    assert.equal(l.isLive('p', [ip(5)], false), true);
  });
});

describe('bootstrap selection at 1,000 nodes: one component, no hot spot', () => {
  const all = sortAddresses(ips(0, 1000));
  const count = bootstrapCount(all.length - 1, 64);
  const choice = new Map(all.map((self) => [self, selectRing(all, new Set([self]), `peer-${self}`, count)]));

  test('every address receives about the average number of dials', () => {
    const dials = new Map<string, number>();
    for (const [self, chosen] of choice) {
      assert.equal(chosen.length, count);
      assert.ok(!chosen.includes(self));
      assert.deepEqual(selectRing(all, new Set([self]), `peer-${self}`, count), chosen, 'deterministic');
      // A node with enough peers asks for its ring links only: the same first RING_LINKS.
      assert.deepEqual(selectRing(all, new Set([self]), `peer-${self}`, RING_LINKS), chosen.slice(0, RING_LINKS));
      for (const c of chosen) dials.set(c, (dials.get(c) ?? 0) + 1);
    }
    const max = Math.max(...dials.values());
    // The average is `count`; the old rule (everyone dials the lowest two) gave those 999.
    assert.ok(max <= 3 * count, `busiest address dialled ${max} times (average ${count})`);
    assert.ok((dials.get(all[0]) ?? 0) <= 3 * count, `lowest address dialled ${dials.get(all[0])} times`);
  });

  test('the ring neighbours a node keeps at its bound are exactly the nodes whose ring links reach it, and its own', () => {
    for (const self of all) {
      const kept = new Set(ringNeighbours(all, new Set([self])));
      const mine = choice.get(self)!.slice(0, RING_LINKS);
      for (const ip of mine) assert.ok(kept.has(ip), `${self} keeps its successor ${ip}`);
      for (const [other, chosen] of choice) if (chosen.slice(0, RING_LINKS).includes(self)) assert.ok(kept.has(other), `${self} keeps ${other}, which dials it as a ring link`);
      assert.equal(kept.size, 2 * RING_LINKS);
    }
    assert.deepEqual(ringNeighbours(all, new Set(['127.101.200.1'])), [], 'not listed: no position, nothing protected');
    assert.deepEqual(new Set(ringNeighbours(all.slice(0, 2), new Set([all[0]]))), new Set([all[1]]), 'two nodes: the other one');
  });

  test('the ring links alone join every node into one component, also for a node DNS does not list', () => {
    const outsider = '127.101.200.1';
    const links = new Map<string, string[]>(all.map((self) => [self, choice.get(self)!.slice(0, RING_LINKS)]));
    links.set(outsider, selectRing(all, new Set([outsider]), 'peer-outsider', count).slice(0, RING_LINKS));
    const adj = new Map<string, Set<string>>();
    for (const [a, bs] of links)
      for (const b of bs) {
        if (!adj.has(a)) adj.set(a, new Set());
        if (!adj.has(b)) adj.set(b, new Set());
        adj.get(a)!.add(b);
        adj.get(b)!.add(a);
      }
    const seen = new Set([all[0]]);
    const todo = [all[0]];
    while (todo.length) for (const n of adj.get(todo.pop()!) ?? []) if (!seen.has(n)) (seen.add(n), todo.push(n));
    assert.equal(seen.size, all.length + 1);
  });
});

/** A bootstrapper whose DNS lists `members`, at `self`; the test supplies dialling and counting. */
function bootstrapperFor(members: string[], self: string, rest: Pick<BootstrapDeps, 'connectionCount' | 'dial' | 'onDnsAnswer' | 'onAttempt' | 'log'> & Partial<Pick<BootstrapDeps, 'connectedIps' | 'dns'>>): Bootstrapper {
  return new Bootstrapper({
    seed: 'peer-self',
    selfIps: () => new Set([self]),
    p2pPort: 7001,
    maxConnections: 64,
    intervalMs: 60_000,
    dns: { hostname: 'x', resolve: async () => members, failing: new Map(), truncated: false },
    staticPeers: [],
    connectedIps: () => new Set(),
    ...rest,
  });
}

describe('bootstrap with another cluster behind the same name', () => {
  test('addresses marked foreign are dialled only after every other candidate', async () => {
    const members = ips(0, 10);
    const self = members[0];
    const run = async (foreign: string[]) => {
      const dialled: string[] = [];
      let done!: () => void;
      const finished = new Promise<void>((r) => (done = r));
      const b = bootstrapperFor(members, self, {
        connectionCount: () => dialled.length,
        dial: async (a) => {
          dialled.push(a.split('/')[2]);
        },
        onDnsAnswer: () => {},
        onAttempt: () => {
          if (dialled.length >= bootstrapCount(members.length - 1, 64)) done();
        },
        log: () => {},
      });
      for (const ip of foreign) b.markForeign(ip);
      // The bootstrapper's timers do not hold the process open; this does, until the round ran.
      const keepAlive = setInterval(() => {}, 1000);
      b.start();
      await finished;
      b.stop();
      clearInterval(keepAlive);
      return dialled;
    };
    const plain = await run([]);
    const foreign = plain.slice(0, 3);
    const avoiding = await run(foreign);
    assert.equal(avoiding.length, plain.length);
    for (const ip of foreign) assert.ok(!avoiding.includes(ip), `${ip} runs another cluster and was dialled first anyway`);
  });
});

describe('bootstrap rounds under failure', () => {
  test('a round dials at most twice its target; the next round starts with candidates not yet tried', async () => {
    const members = ips(0, 30);
    const target = bootstrapCount(members.length - 1, 64);
    const rounds: string[][] = [];
    let done!: () => void;
    const finished = new Promise<void>((r) => (done = r));
    const b = bootstrapperFor(members, members[0], {
      connectionCount: () => 0,
      // Every dial fails, as in a cluster too busy to answer.
      dial: async (a) => {
        rounds.at(-1)!.push(a.split('/')[2]);
        throw new Error('ETIMEDOUT');
      },
      onDnsAnswer: () => {
        rounds.push([]);
        if (rounds.length === 4) done();
      },
      onAttempt: () => {},
      log: () => {},
    });
    const keepAlive = setInterval(() => {}, 1000);
    b.start();
    await finished;
    b.stop();
    clearInterval(keepAlive);
    const [first, second, third] = rounds;
    assert.equal(first.length, 2 * target, 'the first round spends its budget');
    assert.equal(second.length, 2 * target);
    assert.deepEqual(second.filter((ip) => first.includes(ip)), [], 'untried candidates come before failed ones');
    // 29 candidates, 28 tried: the third round starts with the last one nobody tried yet.
    const untried = members.slice(1).filter((ip) => !first.includes(ip) && !second.includes(ip));
    assert.equal(untried.length, members.length - 1 - 4 * target);
    assert.deepEqual(third.slice(0, untried.length), untried);
    assert.equal(third.length, 2 * target);
  });
});

describe('bootstrap under congestion (dials that time out)', () => {
  // A node below its target (one connection) in a cluster too busy to finish handshakes: a dial
  // that times out ends the round (no new addresses) and halves how many it keeps in flight;
  // a round without timeouts widens it again by one. Refused dials are not congestion.
  const members = ips(0, 40);
  const timeout = () => Object.assign(new Error('The operation was aborted due to timeout'), { name: 'TimeoutError' });
  const refused = () => Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
  const cases: Array<{ outcome: 'timeout' | 'refused' | 'ok'; dials: number; widthAfter: number }> = [
    { outcome: 'timeout', dials: 4, widthAfter: 2 },
    { outcome: 'timeout', dials: 2, widthAfter: 1 },
    { outcome: 'timeout', dials: 1, widthAfter: 1 },
    { outcome: 'refused', dials: 2 * bootstrapCount(members.length - 1, 64), widthAfter: 1 },
    { outcome: 'ok', dials: 1, widthAfter: 2 },
    { outcome: 'ok', dials: 2, widthAfter: 3 },
  ];
  test('rounds: ' + cases.map((c) => `${c.outcome} -> ${c.dials} dials, width ${c.widthAfter}`).join('; '), async () => {
    let outcome: (typeof cases)[number]['outcome'] = 'timeout';
    let dials = 0;
    let connections = 1;
    const b = bootstrapperFor(members, members[0], {
      connectionCount: () => connections,
      dial: async () => {
        dials++;
        await new Promise((r) => setImmediate(r));
        if (outcome === 'timeout') throw timeout();
        if (outcome === 'refused') throw refused();
        // One success brings the node to its target: the dials already in flight end the round.
        connections = bootstrapCount(members.length - 1, 64);
      },
      onDnsAnswer: () => {},
      onAttempt: () => {},
      log: () => {},
    });
    for (const c of cases) {
      outcome = c.outcome;
      dials = 0;
      connections = 1;
      await b.roundNow();
      assert.equal(dials, c.dials, `${c.outcome}: dials in the round`);
      assert.equal(b.width, c.widthAfter, `${c.outcome}: width after the round`);
    }
  });
});

describe('bootstrap of a node without a connection', () => {
  // Nobody reachable yet: back off to 8 s. A dial that timed out waited 15 s already: try again soon.
  const cases: Array<{ aloneRounds: number; timedOut: boolean; intervalMs: number; delayMs: number }> = [
    { aloneRounds: 1, timedOut: false, intervalMs: 15_000, delayMs: 1000 },
    { aloneRounds: 2, timedOut: false, intervalMs: 15_000, delayMs: 2000 },
    { aloneRounds: 4, timedOut: false, intervalMs: 15_000, delayMs: 8000 },
    { aloneRounds: 9, timedOut: false, intervalMs: 15_000, delayMs: 8000 },
    { aloneRounds: 9, timedOut: false, intervalMs: 3000, delayMs: 3000 },
    { aloneRounds: 1, timedOut: true, intervalMs: 15_000, delayMs: 500 },
    { aloneRounds: 9, timedOut: true, intervalMs: 15_000, delayMs: 500 },
    { aloneRounds: 9, timedOut: true, intervalMs: 200, delayMs: 200 },
  ];
  for (const c of cases) {
    test(`round ${c.aloneRounds} alone, ${c.timedOut ? 'a dial timed out' : 'nothing timed out'}, interval ${c.intervalMs} ms: next round in ${c.delayMs} ms`, () => {
      assert.equal(unconnectedRetryDelay(c.aloneRounds, c.timedOut, c.intervalMs), c.delayMs);
    });
  }

  test('a round that ended on a timed-out dial is followed soon; refused dials and failed DNS queries (timed out or not) back off', async () => {
    const members = ips(0, 40);
    const rounds = async (fail: { dial?: () => Error; dns?: () => Error }): Promise<number> => {
      let resolves = 0;
      const b = bootstrapperFor(members, members[0], {
        connectionCount: () => 0,
        dial: async () => {
          throw fail.dial?.() ?? new Error('no dial expected');
        },
        ...(fail.dns ? { dns: { hostname: 'x', resolve: () => Promise.reject(fail.dns!()), failing: new Map(), truncated: false } } : {}),
        onDnsAnswer: () => resolves++,
        onAttempt: () => {},
        log: () => {},
      });
      b.start();
      // Backing off: rounds at 0, 1 and 3 s, the next at 7 s. Retrying: every ~500 ms, so 7 in
      // 3 s on time, and 5 even if each were 100 ms late.
      await new Promise((r) => setTimeout(r, 3100));
      b.stop();
      return resolves;
    };
    const counts = {
      dialTimedOut: await rounds({ dial: () => Object.assign(new Error('The operation was aborted due to timeout'), { name: 'TimeoutError' }) }),
      dialRefused: await rounds({ dial: () => Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }) }),
      dnsTimedOut: await rounds({ dns: () => new DnsResolveError('x', 'ETIMEOUT', 'ETIMEOUT DNS query for x timed out') }),
      dnsFailed: await rounds({ dns: () => new DnsResolveError('x', 'ESERVFAIL', 'ESERVFAIL DNS server answered ESERVFAIL for x') }),
    };
    assert.ok(counts.dialTimedOut >= 5, `rounds in 3 s: ${JSON.stringify(counts)}`);
    assert.ok(counts.dialRefused <= 3 && counts.dnsTimedOut <= 3 && counts.dnsFailed <= 3, `rounds in 3 s: ${JSON.stringify(counts)}`);
  });
});

describe('bootstrap after losing peers', () => {
  // A mass failure takes peers from every survivor in the same second: only a node left with
  // less than half its target (or none) runs a round at once; the others wait for their next
  // round (here 60 s away), so the whole cluster does not re-resolve and dial in one burst. A
  // node still coming up (never at its target) tops up at once.
  const members = ips(0, 40);
  const target = bootstrapCount(members.length - 1, 64);
  const cases = [
    { settled: true, connections: target - 1, roundSoon: false },
    { settled: true, connections: Math.ceil(target / 2), roundSoon: false },
    { settled: true, connections: Math.ceil(target / 2) - 1, roundSoon: true },
    { settled: true, connections: 0, roundSoon: true },
    { settled: false, connections: target - 1, roundSoon: true },
  ];
  for (const c of cases) {
    test(`${c.settled ? 'at its target before' : 'never at its target'}, ${c.connections} of ${target} connections left: ${c.roundSoon ? 'a round within a second' : 'no round before the next interval'}`, async () => {
      let resolves = 0;
      let connections = c.settled ? target : c.connections;
      const b = new Bootstrapper({
        seed: 'peer-self',
        selfIps: () => new Set([members[0]]),
        p2pPort: 7001,
        maxConnections: 64,
        intervalMs: 60_000,
        dns: { hostname: 'x', resolve: async () => (resolves++, members), failing: new Map(), truncated: false },
        staticPeers: [],
        connectedIps: () => new Set(),
        connectionCount: () => connections,
        dial: async () => {
          throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
        },
        onDnsAnswer: () => {},
        onAttempt: () => {},
        log: () => {},
      });
      try {
        await b.roundNow(); // learns the member count, so the target
        connections = c.connections;
        resolves = 0;
        b.peerLost();
        // The soon round is due after 500 ms; a late one is waited for, a missing one for 1.5 s.
        for (let t = 0; t < (c.roundSoon ? 5000 : 1500) && resolves === 0; t += 50) await new Promise((r) => setTimeout(r, 50));
        assert.equal(resolves > 0, c.roundSoon);
      } finally {
        b.stop();
      }
    });
  }
});

describe('bootstrap ring links', () => {
  // A node with enough connections, none of them to a ring successor (after a partition each
  // half has enough peers of its own): each round dials its ring successors until one stands.
  const members = ips(0, 40);
  const self = members[7];
  const ring = selectRing(members, new Set([self]), 'peer-self', RING_LINKS);
  const target = bootstrapCount(members.length - 1, 64);

  /** The addresses one round dials, given which IPs are connected and whether dials succeed. */
  async function oneRound(connected: string[], succeed: boolean): Promise<string[]> {
    const dialled: string[] = [];
    const b = bootstrapperFor(members, self, {
      connectionCount: () => target + 5,
      connectedIps: () => new Set(connected),
      dial: async (a) => {
        dialled.push(a.split('/')[2]);
        if (!succeed) throw new Error('ECONNREFUSED');
      },
      onDnsAnswer: () => {},
      onAttempt: () => {},
      log: () => {},
    });
    await b.roundNow();
    return dialled;
  }

  test('enough peers but no ring link: the first ring successor is dialled, and only it', async () => {
    assert.deepEqual(await oneRound(members.filter((ip) => ip !== self && !ring.includes(ip)).slice(0, target + 5), true), [ring[0]]);
  });

  test('a ring successor that refuses: the next one is tried', async () => {
    assert.deepEqual(await oneRound([], false), ring);
  });

  test('a ring link standing: nothing is dialled', async () => {
    assert.deepEqual(await oneRound([ring[1]], true), []);
  });
});

describe('bootstrap DNS past one UDP message', () => {
  test('1,000 A records arrive whole (TCP retry); past 64 KiB the answer is cut and flagged, or refused', async () => {
    const name = 'big.scale.test';
    const dns = await Dnsmasq.start({ [name]: ips(0, 10) });
    try {
      const m = new DnsMembers(name, [dns.server]);
      await dns.update({ [name]: ips(0, 1000) });
      const got = await m.resolve();
      assert.equal(got.length, 1000);
      assert.equal(possiblyTruncated(got), false);
      await dns.update({ [name]: ips(0, 4500) });
      // dnsmasq 2.90 either cuts the answer at the message size without saying so, or (seen for
      // some name lengths) sends one c-ares rejects as EBADRESP. Neither may pass as complete.
      const cut = await m.resolve().catch((err: Error) => err);
      if (cut instanceof Error) assert.match(cut.message, /EBADRESP/);
      else {
        assert.ok(cut.length < 4500 && cut.length >= DNS_MESSAGE_CAPACITY.a, `${cut.length} records`);
        assert.equal(possiblyTruncated(cut), true);
      }
    } finally {
      await dns.stop();
    }
  });
});

describe('a 50-node cluster of real p2p stacks', () => {
  const bound = 12;
  const deadMs = 10_000;
  let result: ScaleResult | undefined;

  test('ready, within the connection bound, isolated by name, dead providers gone within the bound', { timeout: 420_000 }, async () => {
    let r: ScaleResult;
    try {
      r = await runScale({
        ...DEFAULTS,
        n: 50,
        // A /16 of its own per run: two runs of the suite at once must not share addresses.
        prefix: `127.${110 + Math.floor(Math.random() * 40)}`,
        p2pPort: 7101,
        // Small enough that the bound binds (49 others) and eviction at the bound is exercised.
        maxConnections: bound,
        deadPeerTimeoutMs: deadMs,
        churnWindowMs: deadMs + 15_000,
        nodesPerHost: 25,
        steadyLookups: 100,
        // Correctness, not latency: a busy CI machine must not turn slow answers into failures.
        lookupDeadlineMs: 3000,
        readyTimeoutMs: 120_000,
        isolation: true,
        partition: false,
        log: (m) => process.stderr.write(`[scale N=50] ${m}\n`),
      });
    } catch (err) {
      const partial = (err as { partial?: unknown }).partial;
      throw new Error(`${(err as Error).message}${partial ? ` ${JSON.stringify(partial)}` : ''}`);
    }
    result = r;
    const brief = JSON.stringify({ peakConnections: r.peakConnections, crowd: r.crowd, coldStart: r.coldStart.readyMs, advertiseMs: r.steady.advertiseMs, steady: { connections: r.steady.connections, lookups: r.steady.lookups }, isolation: r.isolation, churn: r.churn, problems: r.problems });
    assert.equal(r.coldStart.allReady, true);
    // The bound holds at every instant (src/p2p/bound.ts): the hosts count each node's open
    // connections at every connection open, over the whole run. Before the gate, libp2p's own
    // limit let 40 of 50 nodes sit at 13-21.
    assert.ok(r.peakConnections <= bound, `a node held ${r.peakConnections} connections at a bound of ${bound}: ${brief}`);
    assert.ok(r.steady.connections.max <= bound, brief);
    // Steady state needs fewer connections than the bound (the busiest node held 10 of 12 in
    // some runs, none evicted), so the bound is exercised by a crowd: 36 nodes dial one at once.
    const crowd = r.crowd!;
    assert.ok(crowd.targetPeak <= bound, `the crowd's target held ${crowd.targetPeak} connections: ${JSON.stringify(crowd)}`);
    assert.ok(crowd.evicted + crowd.refusedInbound > 0, `the crowd never reached the bound: ${JSON.stringify(crowd)}`);
    assert.ok(crowd.holding > 0 && crowd.targetReady, `the crowd's target: ${JSON.stringify(crowd)}`);
    assert.ok(r.steady.lookups.successRate >= 0.95, `steady lookups: ${brief}`);
    // Beyond a mesh (50 nodes at a bound of 12) records reach IP holders and lookups ask them by
    // datagram: both must have happened, and most asks been answered.
    const dg = r.steady.datagrams;
    assert.ok(dg.provided > 0, `no record acknowledged by an IP holder: ${JSON.stringify(dg)}`);
    assert.ok(dg.asked > 0 && dg.answered >= dg.asked * 0.5, `datagram asks: ${JSON.stringify(dg)}`);
    // Records IP holders took need no provide query (its dials were most of advertising's cost):
    // most keys skip it. Some run one, where a holder was busy when the records went out.
    const pq = r.steady.provideQueries;
    assert.ok(pq.ipHolders > 0 && pq.ipHolders >= pq.run, `provide queries: ${JSON.stringify(pq)}`);

    const iso = r.isolation!;
    assert.equal(iso.otherAllReady, true, `the other cluster came up: ${brief}`);
    assert.equal(iso.crossLookupsFound, 0, `records crossed clusters: ${brief}`);
    assert.ok(iso.ownLookups.successRate >= 0.9, `the other cluster finds its own records: ${brief}`);
    assert.ok(iso.connectionsMaxDuring <= bound, brief);

    const ch = r.churn!;
    assert.ok(ch.deadLookups >= 50, `dead providers were looked for: ${brief}`);
    assert.ok(ch.deadReturnedLastMs === undefined || ch.deadReturnedLastMs <= deadMs, `dead providers returned past the bound: ${brief}`);
    assert.equal(ch.replacementsAllReady, true, brief);
    assert.ok(ch.connectionsMaxAfter <= bound, brief);
  });

  // A lookup during churn may time out on a busy machine (a load effect: 3 s deadline), but it
  // must not answer "not found" for content live nodes hold (a wrong answer containerd would act
  // on). Seen: 0 of 240 in most runs, 1 of 489 once; the bound leaves room for that.
  test('lookups of live content during churn do not answer "not found"', () => {
    assert.ok(result?.churn, 'the cluster scenario ran');
    const ch = result.churn;
    const wrong = ch.lookups.byOutcome.notfound ?? 0;
    assert.ok(wrong <= Math.ceil(ch.lookups.total * 0.01), `wrong misses during churn: ${JSON.stringify(ch.lookups)}`);
  });

  // A guard below the target: 93% at the start of session 3, 97-98% before asks went to IP
  // holders by datagram, 99.6-100% since (245 of 245 or 246 of 246 in the six runs of
  // 2026-12-07 15:35-16:10 UTC). Every failure so far was a timeout behind a late host loop.
  test('lookups of live content during churn: at least 98% found', () => {
    assert.ok(result?.churn, 'the cluster scenario ran');
    const ch = result.churn;
    assert.ok(ch.lookups.successRate >= 0.98, `during churn: ${JSON.stringify(ch.lookups)}`);
  });

  // Issue 7's targets for lookups under churn, not met yet. N=50, bound 12, 3 s deadline, 25 s
  // after 10% died: on a quiet machine (load 1-2, 03:12 and 03:32 UTC) 238 of 242 and 239 of 246
  // lookups of live content found (97-98%; before: 93%), under other benchmarks' load (10-30)
  // 69-92%. Every failure is a timeout: hosts' event loops run 0.3-1.7 s late while the dead
  // are found out and replaced. See README, Scale (issue 7).
  test('lookups stay successful through churn, and new nodes\' content is found', { todo: 'target 99.9%: 99.6-100% found in runs since records and asks to IP holders went by datagram (97-98% before); kept a todo until it holds over many CI runs' }, () => {
    assert.ok(result?.churn, 'the cluster scenario ran');
    const ch = result.churn;
    assert.ok(ch.lookups.successRate >= 0.999, `during churn: ${JSON.stringify(ch.lookups)}`);
    assert.ok(ch.replacementLookups.successRate >= 0.95, `replacements: ${JSON.stringify(ch.replacementLookups)}`);
  });
});

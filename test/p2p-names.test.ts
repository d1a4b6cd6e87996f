// One cluster listed under two bootstrap names, as a cluster past what one DNS answer holds
// (~4,090 A records) is, one headless name per node pool: 24 real node processes, half under
// each name (dnsmasq), every node configured with both. They are one cluster: each sees all 24
// members, finds what a node of the other half holds, and settles a miss by the key's IP
// holders, which are computed over both names' records. More nodes than a record's k = 20
// holders, so lookups leave some nodes. Addresses 127.0.1.151-174.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { LookupResult } from '../src/shared/messages.js';
import { Dnsmasq } from './support/dnsmasq.js';
import { P2PNodeProcess, missesOfUnknownKeys, nodeIp, stopAll, waitFor } from './support/p2p-cluster.js';

const N = 24;
const P2P_PORT = 17301;
const NAMES = ['pool-a.names.test', 'pool-b.names.test'];
const ips = Array.from({ length: N }, (_, i) => nodeIp(i, 400));
/** Node i is listed under NAMES[i % 2]. */
const poolOf = (i: number) => i % 2;
const keyOf = (i: number) => `sha256:${(i + 1).toString(16).padStart(64, 'c')}`;

describe('one cluster under two bootstrap names', { timeout: 300_000 }, () => {
  let dns: Dnsmasq;
  const nodes: P2PNodeProcess[] = [];
  const ids: string[] = [];

  before(async () => {
    dns = await Dnsmasq.start({
      [NAMES[0]]: ips.filter((_, i) => poolOf(i) === 0),
      [NAMES[1]]: ips.filter((_, i) => poolOf(i) === 1),
    });
    for (let i = 0; i < N; i++) {
      nodes.push(
        await P2PNodeProcess.start({
          ip: ips[i],
          p2pPort: P2P_PORT,
          registryPort: 16400 + i,
          // Each pool lists its own name first, as the chart does: the order must not matter.
          env: {
            PEERPULL_BOOTSTRAP_DNS: poolOf(i) === 0 ? NAMES.join(',') : [...NAMES].reverse().join(','),
            PEERPULL_DNS_SERVERS: dns.server,
            PEERPULL_BOOTSTRAP_INTERVAL: '2s',
            PEERPULL_MAX_CONNECTIONS: '8',
            PEERPULL_CLUSTER: 'names-test',
            PEERPULL_LOOKUP_CACHE_TTL: '0s',
            PEERPULL_NEGATIVE_CACHE_TTL: '0s',
          },
        }),
      );
    }
    for (const n of nodes) ids.push((await n.started)!.peerId);
    await waitFor('every node connected', async () => (await Promise.all(nodes.map((n) => n.status()))).every((s) => s.ready && s.peers >= 2), 90_000, 500);
  });

  after(async () => {
    await stopAll(nodes);
    await dns?.stop();
  });

  test('every node counts the members of both names', async () => {
    const counts = (await Promise.all(nodes.map((n) => n.status()))).map((s) => s.dnsMembers);
    assert.deepEqual(counts, Array(N).fill(N));
  });

  test('what a node of one pool holds is found from every node of the other', async () => {
    const holders = [0, 1];
    await Promise.all(holders.map((i) => nodes[i].call('advertise', { keys: [keyOf(i)], wait: true }, 120_000)));
    const misses: string[] = [];
    let overNetwork = 0;
    for (const i of holders) {
      for (const [j, n] of nodes.entries()) {
        if (poolOf(j) === poolOf(i)) continue;
        // Retried: on two busy cores a lookup may hit its deadline; finding is what must hold.
        let last: LookupResult | undefined;
        for (let attempt = 0; attempt < 5; attempt++) {
          last = await n.find(keyOf(i), { timeoutMs: 10_000 });
          if (last.providers.some((p) => p.peerId === ids[i])) break;
          await new Promise((r) => setTimeout(r, 500));
        }
        if (!last!.providers.some((p) => p.peerId === ids[i])) misses.push(`${j} -> ${i} (${last!.outcome}/${last!.source})`);
        if (last!.source === 'network') overNetwork++;
      }
    }
    assert.deepEqual(misses, []);
    // Not every node holds every record (24 > k = 20): some lookups left their node.
    assert.ok(overNetwork > 0, 'some lookups went over the network');
  });

  test('a key nobody has is settled by its IP holders', async () => {
    // The asker: a node holding no record of a key advertised earlier, so its lookups leave it.
    const asker = nodes[2];
    const { results, delta, seen } = await missesOfUnknownKeys(asker, 'b');
    assert.ok(results.every((r) => r.outcome === 'notfound' && r.providers.length === 0), `every lookup a miss: ${seen}`);
    // The IP-holder path is in use with several names (an answer taken for a cut one turns it
    // off: that case, two names together past one message's capacity, is in p2p-dns.test.ts).
    assert.ok(delta('ip_quorum_miss') >= 4, `settled by IP holders: ${seen}`);
  });
});

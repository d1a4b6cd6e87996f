// Clusters that can reach each other must never mix: a different cluster name (the DHT protocol
// id) keeps records apart, and a pre-shared key keeps out every node without it. All nodes
// below share one DNS name, so each one does dial the others.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Dnsmasq } from './support/dnsmasq.js';
import { P2PNodeProcess, nodeIp, stopAll, waitFor } from './support/p2p-cluster.js';

const NAME = 'mixed.p2p.test';
const P2P_PORT = 17101;
const KEY_A = '1f'.repeat(32);
const KEY_WRONG = '2e'.repeat(32);

interface Member {
  group: 'alpha' | 'beta' | 'gamma' | 'wrong-key';
  cluster: string;
  key: string;
}
const members: Member[] = [
  { group: 'alpha', cluster: 'alpha', key: KEY_A },
  { group: 'alpha', cluster: 'alpha', key: KEY_A },
  { group: 'beta', cluster: 'beta', key: '' },
  { group: 'beta', cluster: 'beta', key: '' },
  { group: 'gamma', cluster: 'gamma', key: '' },
  { group: 'gamma', cluster: 'gamma', key: '' },
  // Right cluster name, wrong key: must not get in.
  { group: 'wrong-key', cluster: 'alpha', key: KEY_WRONG },
];
const ips = members.map((_, i) => nodeIp(i, 120));
const keyFor = (g: string) => `registry.test/${g}:v1`;

describe('cluster isolation', { timeout: 180_000 }, () => {
  let dns: Dnsmasq;
  const nodes: P2PNodeProcess[] = [];
  const ids: string[] = [];

  before(async () => {
    dns = await Dnsmasq.start({ [NAME]: ips });
    for (const [i, m] of members.entries()) {
      const env: Record<string, string> = {
        PEERPULL_BOOTSTRAP_DNS: NAME,
        PEERPULL_DNS_SERVERS: dns.server,
        PEERPULL_BOOTSTRAP_INTERVAL: '1s',
        PEERPULL_CLUSTER: m.cluster,
        PEERPULL_NEGATIVE_CACHE_TTL: '0ms',
      };
      if (m.key) env.PEERPULL_CLUSTER_KEY = m.key;
      nodes.push(await P2PNodeProcess.start({ ip: ips[i], p2pPort: P2P_PORT, registryPort: 5000, env }));
    }
    for (const n of nodes) ids.push((await n.started)!.peerId);
    // Each real cluster has two members: both must find each other.
    await waitFor(
      'every cluster to connect its own members',
      async () => {
        const st = await Promise.all(nodes.slice(0, 6).map((n) => n.status()));
        return st.every((s) => s.ready && s.routingTable >= 1);
      },
      60_000,
      500,
    );
    await Promise.all(nodes.map((n, i) => n.call('advertise', { keys: [keyFor(members[i].group)], wait: true }, 60_000)));
    // Give bootstrap rounds time to try (and fail) across clusters.
    await new Promise((r) => setTimeout(r, 3000));
  });

  after(async () => {
    await stopAll(nodes);
    await dns?.stop();
  });

  test('members of one cluster find each other\'s records', async () => {
    for (const [a, b] of [
      [0, 1],
      [2, 3],
      [4, 5],
    ]) {
      await waitFor(
        `node ${b} to find node ${a}'s record`,
        async () => (await nodes[b].find(keyFor(members[a].group), { timeoutMs: 3000 })).providers.some((p) => p.peerId === ids[a]),
        30_000,
        300,
      );
    }
  });

  test('no node ever sees a record of another cluster, and the routing tables hold own members only', async () => {
    for (const [i, n] of nodes.entries()) {
      for (const [j, m] of members.entries()) {
        if (m.group === members[i].group) continue;
        const r = await n.find(keyFor(m.group), { timeoutMs: 1500 });
        assert.ok(!r.providers.some((p) => p.peerId === ids[j]), `node ${i} (${members[i].group}) saw ${m.group}'s record`);
      }
      const s = await n.status();
      const own = members.filter((m) => m.group === members[i].group).length - 1;
      assert.ok(s.routingTable <= own, `node ${i} (${members[i].group}) has ${s.routingTable} peers in its routing table`);
    }
  });

  test('the node with the wrong key connects to nobody and is not ready', async () => {
    const s = await nodes[6].status();
    assert.equal(s.peers, 0);
    assert.equal(s.ready, false);
  });

  test('a peer outside the cluster is hung up on, not kept', async () => {
    // beta and gamma are open networks, so their nodes can complete a handshake with each
    // other; identify shows the other DHT protocol and the connection is closed.
    await waitFor('a logged hang-up of a foreign peer', () => nodes.slice(2, 6).some((n) => n.logLines().some((l) => l.msg === 'closing connection to a peer outside this cluster')), 20_000);
    for (const n of nodes.slice(2, 6)) assert.ok((await n.status()).peers <= 3);
  });
});

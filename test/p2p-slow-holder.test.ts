// A key's nearest IP holders hung (SIGSTOP: their sockets stay open, nothing answers): a lookup
// asks the next holders by datagram rather than dialling the silent ones, and finds the key.
// Holders a datagram cannot even be sent to (a firewall on the asker's host drops it on output,
// and the send fails with EPERM; needs nft, Debian nftables) are passed over at once.
// 30 real node processes, the bound low enough (8) that the cluster is not a full mesh, and more
// nodes than a record's k = 20 table holders, so some node holds no record and its lookups go
// over the network (below 21 nodes every node holds every record and answers from its store).
// Addresses 127.0.1.11-40.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { ipHoldersOfKey } from '../src/p2p/node.js';
import type { LookupResult } from '../src/shared/messages.js';
import { nft } from '../native-bench/scale/netfilter.js';
import { Dnsmasq } from './support/dnsmasq.js';
import { P2PNodeProcess, lookupSteps, missesOfUnknownKeys, nodeIp, stopAll, waitFor } from './support/p2p-cluster.js';

const N = 30;
const P2P_PORT = 17201;
const NAME = 'slow.p2p.test';
const ips = Array.from({ length: N }, (_, i) => nodeIp(i, 260));
const KEY = `sha256:${'5'.repeat(64)}`;
const UNSENDABLE_KEY = `sha256:${'6'.repeat(64)}`;
/** nftables table of the EPERM test, in this (the test's) network namespace; removed in after() too. */
const NFT_TABLE = 'peerpull_test_unsendable';
const exec = promisify(execFile);

const dropNft = () => exec('nft', ['delete', 'table', 'inet', NFT_TABLE]).then(() => undefined, () => undefined);

/** A node holding no record of `key` whose lookup of it goes over the network and finds it. */
async function networkAsker(nodes: P2PNodeProcess[], candidates: string[], key: string): Promise<P2PNodeProcess | undefined> {
  for (const ip of candidates) {
    const n = nodes[ips.indexOf(ip)];
    // Misses of other keys first: holders answer them by datagram, so the node has heard
    // members' datagrams (what makes it patient).
    for (let i = 0; i < 4; i++) await n.find(`sha256:${i.toString(16).repeat(64)}`, { timeoutMs: 3000 });
    const r = await n.find(key, { timeoutMs: 3000 });
    if (r.source === 'network' && r.providers.length > 0) return n;
  }
  return undefined;
}

describe('a lookup whose nearest IP holders hang', { timeout: 300_000 }, () => {
  let dns: Dnsmasq;
  const nodes: P2PNodeProcess[] = [];
  const stopped: P2PNodeProcess[] = [];

  before(async () => {
    dns = await Dnsmasq.start({ [NAME]: ips });
    for (let i = 0; i < N; i++) {
      nodes.push(
        await P2PNodeProcess.start({
          ip: ips[i],
          p2pPort: P2P_PORT,
          registryPort: 16200 + i,
          // A short bootstrap interval: IP holders count for a miss once listed for two of them.
          env: { PEERPULL_BOOTSTRAP_DNS: NAME, PEERPULL_DNS_SERVERS: dns.server, PEERPULL_BOOTSTRAP_INTERVAL: '2s', PEERPULL_MAX_CONNECTIONS: '8', PEERPULL_CLUSTER: 'slow-test', PEERPULL_LOOKUP_CACHE_TTL: '0s', PEERPULL_NEGATIVE_CACHE_TTL: '0s' },
        }),
      );
    }
    await Promise.all(nodes.map((n) => n.started));
    await waitFor('every node connected', async () => (await Promise.all(nodes.map((n) => n.status()))).every((s) => s.ready && s.peers >= 2), 90_000, 500);
  });

  after(async () => {
    await dropNft();
    // A stopped process cannot exit: wake it first, also when the test failed.
    for (const n of stopped) if (n.child.exitCode === null) process.kill(n.pid, 'SIGCONT');
    await stopAll(nodes);
    await dns?.stop();
  });

  test('a key nobody has: its IP holders answer none, and the lookup ends as a miss without the DHT query', async () => {
    const asker = nodes[0];
    const { results, delta, seen } = await missesOfUnknownKeys(asker, 'a');
    assert.ok(results.every((r) => r.outcome === 'notfound' && r.providers.length === 0), `every lookup a miss: ${seen}`);
    // A holder answering after the 300 ms grace, while another has answered, lets the DHT query
    // start (by design: slow, not silent). On 30 processes sharing two cores that happened to
    // one lookup of five in one CI run: the count allows one, so it checks behaviour, not timing.
    assert.ok(delta('ip_quorum_miss') >= 4, `settled by IP holders: ${seen}`);
    assert.ok(delta('dht_query') <= 5 - delta('ip_quorum_miss'), `no DHT query for a miss the IP holders settled: ${seen}`);
  });

  test('holders a datagram cannot be sent to are passed over at once, and the key is found by the next ones', async () => {
    const order = ipHoldersOfKey(UNSENDABLE_KEY, ips, 6);
    const rest = ips.filter((ip) => !order.includes(ip));
    const provider = nodes[ips.indexOf(rest[rest.length - 1])];
    await provider.call('advertise', { keys: [UNSENDABLE_KEY], wait: true }, 120_000);
    const providerId = (await provider.status()).peerId;
    const asker = await networkAsker(nodes, rest.slice(0, -1), UNSENDABLE_KEY);
    assert.ok(asker, 'some node holds no record of the key and finds it over the network');
    // The asker's UDP to the three nearest holders is dropped on its way out: each send fails at
    // once (EPERM), where a network partition would be silence. Connections stay up.
    await nft(`table inet ${NFT_TABLE} {
      chain out {
        type filter hook output priority 0; policy accept;
        ip saddr ${asker.ip} ip daddr { ${order.slice(0, 3).join(', ')} } meta l4proto udp drop
      }
    }`);
    try {
      const before = await lookupSteps(asker);
      const results: LookupResult[] = [];
      for (let i = 0; i < 5; i++) results.push(await asker.find(UNSENDABLE_KEY, { timeoutMs: 3000 }));
      const afterSteps = await lookupSteps(asker);
      const delta = (k: string) => (afterSteps[k] ?? 0) - (before[k] ?? 0);
      const seen = JSON.stringify({ before, afterSteps, results: results.map((r) => ({ outcome: r.outcome, source: r.source, queried: r.queried })) });
      assert.ok(results.every((r) => r.providers.some((p) => p.peerId === providerId)), `every lookup found the provider: ${seen}`);
      // Each failed send had the next holder asked (before, a failed send counted as an answer
      // of none, and no further holder was asked: only the DHT query, after its grace, could help).
      assert.ok(delta('holder_retry') >= 5, `the next holders were asked: ${seen}`);
      assert.equal(delta('dht_query'), 0, `no DHT query: ${seen}`);
      assert.equal(delta('holder_dial'), 0, `no holder dialled: ${seen}`);
    } finally {
      await dropNft();
    }
  });

  test('the key is found without dialling the silent holders or starting the DHT query', async () => {
    const order = ipHoldersOfKey(KEY, ips, 6);
    // The provider: not among the key's IP holders.
    const rest = ips.filter((ip) => !order.includes(ip));
    const provider = nodes[ips.indexOf(rest[0])];
    await provider.call('advertise', { keys: [KEY], wait: true }, 120_000);
    // The asker: a node that holds no record of the key, so its lookups leave it. Warmed up
    // first: misses of other keys ask holders by datagram, so it has heard members' datagrams
    // (what makes it patient).
    const asker = await networkAsker(nodes, rest.slice(1), KEY);
    assert.ok(asker, 'some node holds no record of the key and finds it over the network');
    const before = await lookupSteps(asker);
    for (const ip of order.slice(0, 3)) {
      const n = nodes[ips.indexOf(ip)];
      process.kill(n.pid, 'SIGSTOP');
      stopped.push(n);
    }
    const results: LookupResult[] = [];
    for (let i = 0; i < 5; i++) results.push(await asker.find(KEY, { timeoutMs: 3000 }));
    const afterSteps = await lookupSteps(asker);
    const delta = (k: string) => (afterSteps[k] ?? 0) - (before[k] ?? 0);
    const found = results.filter((r) => r.providers.some((p) => p.peerId === results[0].providers[0]?.peerId)).length;
    assert.ok(results.every((r) => r.source === 'network'), `looked up over the network: ${JSON.stringify(results.map((r) => r.source))}`);
    assert.ok(results.every((r) => r.providers.length > 0), `every lookup found the provider: ${JSON.stringify(results.map((r) => r.outcome))}`);
    assert.equal(found, 5);
    // Found by the next holders (or a connected peer) in one hop: neither a dial of a silent
    // holder nor the DHT query, which dials on (before, both started at 250-300 ms).
    const seen = JSON.stringify({ before, afterSteps, results: results.map((r) => ({ outcome: r.outcome, source: r.source, queried: r.queried })) });
    assert.equal(delta('holder_dial'), 0, `no silent holder was dialled: ${seen}`);
    assert.equal(delta('dht_query'), 0, `no DHT query: ${seen}`);
    // Datagrams work here: the nearest connected peers were asked by datagram too, not by a
    // GET_PROVIDERS stream each.
    assert.equal(delta('stream_ask'), 0, `nothing asked over a connection: ${seen}`);
    assert.ok(delta('datagram_ask') >= 5, `asked by datagram: ${seen}`);
  });
});

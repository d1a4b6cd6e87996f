// Connection heartbeats (src/p2p/heartbeat.ts) on real nodes: pings are answered over real
// connections, and a peer that stops answering without closing its sockets loses its
// connection. The silence is real: the peer's process is frozen with SIGSTOP, so its kernel
// still holds the TCP connection open and ACKs every byte, but nothing answers a ping.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Dnsmasq } from './support/dnsmasq.js';
import { P2PNodeProcess, nodeIp, stopAll, waitFor } from './support/p2p-cluster.js';

const NAME = 'heartbeat.p2p.test';
const P2P_PORT = 17102;
const ips = [nodeIp(0, 140), nodeIp(1, 140)];

/** A sample of a metric with the given labels from the Prometheus text, or 0. */
function sample(text: string, name: string, labels: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

describe('connection heartbeats', { timeout: 120_000 }, () => {
  let dns: Dnsmasq;
  const nodes: P2PNodeProcess[] = [];

  before(async () => {
    dns = await Dnsmasq.start({ [NAME]: ips });
    for (const ip of ips) {
      nodes.push(
        await P2PNodeProcess.start({
          ip,
          p2pPort: P2P_PORT,
          env: {
            PEERPULL_BOOTSTRAP_DNS: NAME,
            PEERPULL_DNS_SERVERS: dns.server,
            PEERPULL_BOOTSTRAP_INTERVAL: '1s',
            // Pings every 1.5 s; a ping unanswered for 1.2 s fails.
            PEERPULL_DEAD_PEER_TIMEOUT: '3s',
          },
        }),
      );
    }
    for (const n of nodes) await n.started;
    await waitFor('both nodes to connect', async () => (await Promise.all(nodes.map((n) => n.status()))).every((s) => s.peers >= 1), 30_000);
  });

  after(async () => {
    // A stopped process ignores everything but SIGKILL and SIGCONT: wake it so it can stop.
    for (const n of nodes) if (n.child.exitCode === null && n.child.signalCode === null) process.kill(n.pid, 'SIGCONT');
    await stopAll(nodes);
    await dns?.stop();
  });

  test('live peers answer: pings succeed and the connection stays', async () => {
    const [a] = nodes;
    await waitFor('answered heartbeats on both sides', async () => {
      const texts = await Promise.all(nodes.map((n) => n.call<string>('metrics')));
      return texts.every((t) => sample(t, 'peerpull_p2p_heartbeats_total', 'outcome="ok"') >= 3);
    }, 30_000);
    const text = await a.call<string>('metrics');
    assert.equal(sample(text, 'peerpull_p2p_heartbeats_total', 'outcome="failed"'), 0, 'no heartbeat failed between two live nodes');
    assert.equal((await a.status()).peers, 1);
  });

  test('a connection heard from within the interval is not pinged: one round trip stands for both ends', async () => {
    // Each end hears the other's pings (and their answers), so over a quiet connection the two
    // take turns instead of both pinging every interval.
    await waitFor('skipped heartbeats on both sides', async () => {
      const texts = await Promise.all(nodes.map((n) => n.call<string>('metrics')));
      return texts.every((t) => sample(t, 'peerpull_p2p_heartbeats_total', 'outcome="skipped"') >= 2);
    }, 30_000);
    // Without the rule both ends ping every interval and nothing is ever skipped; with it the
    // skipped pings cost nothing: no failure, the connection stays.
    const texts = await Promise.all(nodes.map((n) => n.call<string>('metrics')));
    for (const t of texts) assert.equal(sample(t, 'peerpull_p2p_heartbeats_total', 'outcome="failed"'), 0);
    for (const n of nodes) assert.equal((await n.status()).peers, 1);
  });

  test('a frozen peer (sockets open, nobody answering) loses its connection', async () => {
    const [a, b] = nodes;
    const before = sample(await a.call<string>('metrics'), 'peerpull_p2p_heartbeats_total', 'outcome="failed"');
    process.kill(b.pid, 'SIGSTOP');
    try {
      // Interval 1.5 s + timeout 1.2 s: a few seconds; 20 s leaves room for a busy machine.
      await waitFor('A to drop its connection to the frozen B', async () => (await a.status()).peers === 0, 20_000, 250);
      // The thread's counters reach main's metrics with its next status push (every 2 s).
      await waitFor('the failed heartbeat to be counted', async () => sample(await a.call<string>('metrics'), 'peerpull_p2p_heartbeats_total', 'outcome="failed"') > before, 10_000);
      assert.ok(
        a.logLines().some((l) => l.msg === 'closing a connection whose peer stopped answering'),
        'the closed connection is logged',
      );
    } finally {
      process.kill(b.pid, 'SIGCONT');
    }
    // Thawed, B is reachable again and the two reconnect.
    await waitFor('A and B to reconnect after B thaws', async () => (await Promise.all(nodes.map((n) => n.status()))).every((s) => s.peers >= 1), 30_000);
  });
});

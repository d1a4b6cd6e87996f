// Benchmark of the p2p thread: N real nodes (separate processes on 127.0.0.x, bootstrapped from
// a real dnsmasq), 1,000 keys advertised across them, then provider lookups arriving at a steady
// rate across the cluster. Reports advertise time, lookup latency (p50/p99, measured in each
// node's main thread, i.e. what the registry sees), lookup CPU, connections and RSS per node.
//
//   npx tsc -p tsconfig.json && node_modules/.bin/node dist/native-bench/p2p-lookup.js [--nodes 10,30] [--keys 1000] [--rate 20] [--seconds 30] [--json]

import { Dnsmasq } from '../test/support/dnsmasq.js';
import { P2PNodeProcess, nodeIp, stopAll, waitFor } from '../test/support/p2p-cluster.js';
import type { LookupResult } from '../src/shared/messages.js';

interface Args {
  nodes: number[];
  keys: number;
  rate: number;
  seconds: number;
  timeoutMs: number;
  json: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { nodes: [10, 30], keys: 1000, rate: 20, seconds: 30, timeoutMs: 500, json: false };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--nodes':
        a.nodes = v.split(',').map(Number);
        i++;
        break;
      case '--keys':
        a.keys = Number(v);
        i++;
        break;
      case '--rate':
        a.rate = Number(v);
        i++;
        break;
      case '--seconds':
        a.seconds = Number(v);
        i++;
        break;
      case '--timeout-ms':
        a.timeoutMs = Number(v);
        i++;
        break;
      case '--json':
        a.json = true;
        break;
      default:
        throw new Error(`unknown argument ${argv[i]} (see the header of native-bench/p2p-lookup.ts)`);
    }
  }
  return a;
}

interface Stats {
  rss: number;
  cpuUserUs: number;
  cpuSystemUs: number;
  status?: { peers: number; routingTable: number };
  metrics?: { recordBatches: { ok: number; failed: number } };
  mainHeap: number;
  external: number;
  workerHeap?: { usedHeapSize: number; totalHeapSize: number };
  loops: { main: { p99: number; max: number }; p2p: { p99: number; max: number } };
}

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function cpuSeconds(nodes: P2PNodeProcess[], reset: boolean): Promise<{ total: number; stats: Stats[] }> {
  const stats = await Promise.all(nodes.map((n) => n.call<Stats>('stats', { reset })));
  return { total: stats.reduce((s, x) => s + (x.cpuUserUs + x.cpuSystemUs) / 1e6, 0), stats };
}

async function runOne(n: number, a: Args) {
  const ips = Array.from({ length: n }, (_, i) => nodeIp(i, 100));
  const name = 'bench.p2p.test';
  const dns = await Dnsmasq.start({ [name]: ips });
  const nodes: P2PNodeProcess[] = [];
  try {
    const t0 = Date.now();
    for (let i = 0; i < n; i++) {
      nodes.push(
        await P2PNodeProcess.start({
          ip: ips[i],
          p2pPort: 18001,
          registryPort: 18000,
          env: { PEERPULL_BOOTSTRAP_DNS: name, PEERPULL_DNS_SERVERS: dns.server, PEERPULL_LOG_LEVEL: 'warn', PEERPULL_CLUSTER: 'bench' },
        }),
      );
    }
    await Promise.all(nodes.map((x) => x.started));
    await waitFor('every node ready', async () => (await Promise.all(nodes.map((x) => x.status()))).every((s) => s.ready), 120_000, 500);
    const readyMs = Date.now() - t0;
    // Let the routing tables settle (self-queries, identify) before measuring.
    await sleep(5000);

    // Advertise: keys spread round-robin, every node at once, until the records reached the DHT.
    const keys = Array.from({ length: a.keys }, (_, i) => `sha256:${(0xbe000000 + i).toString(16).padStart(64, '0')}`);
    const owner = keys.map((_, i) => i % n);
    const tAdv = Date.now();
    await Promise.all(nodes.map((x, j) => x.call('advertise', { keys: keys.filter((_, i) => owner[i] === j), wait: true }, 600_000)));
    const advertiseMs = Date.now() - tAdv;
    await sleep(2000);

    // Idle CPU baseline over the same length as the lookup phase (pings, DNS, table upkeep).
    await cpuSeconds(nodes, true);
    await sleep(a.seconds * 1000);
    const idle = await cpuSeconds(nodes, true);

    // Lookups: a steady `rate` per second across the cluster, random node, random key it lacks.
    const results: Array<LookupResult & { elapsedMs: number }> = [];
    const inflight: Promise<void>[] = [];
    const total = a.rate * a.seconds;
    const start = Date.now();
    for (let k = 0; k < total; k++) {
      const due = start + (k * 1000) / a.rate;
      const wait = due - Date.now();
      if (wait > 0) await sleep(wait);
      let i = Math.floor(Math.random() * a.keys);
      const j = Math.floor(Math.random() * n);
      if (owner[i] === j) i = (i + 1) % a.keys;
      inflight.push(
        nodes[j].call<LookupResult & { elapsedMs: number }>('find', { key: keys[i], timeoutMs: a.timeoutMs }, 30_000).then((r) => {
          results.push(r);
        }),
      );
    }
    await Promise.all(inflight);
    const busy = await cpuSeconds(nodes, true);

    const lat = results.map((r) => r.elapsedMs).sort((x, y) => x - y);
    const bySource: Record<string, number> = {};
    const byOutcome: Record<string, number> = {};
    for (const r of results) {
      const k = `${r.outcome}/${r.source}`;
      bySource[k] = (bySource[k] ?? 0) + 1;
      byOutcome[r.outcome] = (byOutcome[r.outcome] ?? 0) + 1;
    }
    const queried = results.map((r) => r.queried ?? 0).sort((x, y) => x - y);
    const views: Record<string, number> = {};
    for (const s of busy.stats) if (s.status) views[(s.status as { view?: string }).view ?? '?'] = (views[(s.status as { view?: string }).view ?? '?'] ?? 0) + 1;
    const conns = busy.stats.map((s) => s.status?.peers ?? 0);
    const rss = busy.stats.map((s) => s.rss / 1048576);
    const mib = (f: (s: Stats) => number) => busy.stats.reduce((t, s) => t + f(s), 0) / n / 1048576;
    const memory = { mainHeapMiB: mib((s) => s.mainHeap), workerHeapMiB: mib((s) => s.workerHeap?.totalHeapSize ?? 0), workerUsedMiB: mib((s) => s.workerHeap?.usedHeapSize ?? 0), externalMiB: mib((s) => s.external) };
    const worst = (f: (s: Stats) => number) => Math.max(...busy.stats.map(f));
    const avg = (f: (s: Stats) => number) => busy.stats.reduce((t, s) => t + f(s), 0) / n;
    const loopDelayMs = {
      main: { p99Avg: avg((s) => s.loops.main.p99), max: worst((s) => s.loops.main.max) },
      p2p: { p99Avg: avg((s) => s.loops.p2p.p99), max: worst((s) => s.loops.p2p.max) },
    };
    return {
      loopDelayMs,
      nodes: n,
      keys: a.keys,
      readyMs,
      advertiseMs,
      lookups: results.length,
      rate: a.rate,
      p50Ms: pct(lat, 50),
      p90Ms: pct(lat, 90),
      p99Ms: pct(lat, 99),
      maxMs: lat[lat.length - 1],
      timeouts: byOutcome.timeout ?? 0,
      notFound: byOutcome.notfound ?? 0,
      errors: byOutcome.error ?? 0,
      bySource,
      queried: { p50: pct(queried, 50), p99: pct(queried, 99), max: queried[queried.length - 1] ?? 0 },
      views,
      recordBatches: busy.stats.reduce((t, s) => ({ ok: t.ok + (s.metrics?.recordBatches.ok ?? 0), failed: t.failed + (s.metrics?.recordBatches.failed ?? 0) }), { ok: 0, failed: 0 }),
      // Cluster CPU above the idle baseline, per lookup.
      lookupCpuMs: ((busy.total - idle.total) * 1000) / Math.max(1, results.length),
      idleCpuPerNodePct: (idle.total / n / a.seconds) * 100,
      connectionsPerNode: { min: Math.min(...conns), avg: conns.reduce((s, x) => s + x, 0) / n, max: Math.max(...conns) },
      memory,
      rssMiBPerNode: { min: Math.min(...rss), avg: rss.reduce((s, x) => s + x, 0) / n, max: Math.max(...rss) },
    };
  } finally {
    await stopAll(nodes);
    await dns.stop();
  }
}

const args = parseArgs(process.argv.slice(2));
const out = [];
for (const n of args.nodes) {
  const r = await runOne(n, args);
  out.push(r);
  if (!args.json) {
    console.log(
      [
        `N=${r.nodes}: ready in ${(r.readyMs / 1000).toFixed(1)} s; ${r.keys} keys advertised in ${(r.advertiseMs / 1000).toFixed(1)} s`,
        `  ${r.lookups} lookups at ${r.rate}/s: p50 ${r.p50Ms.toFixed(2)} ms, p90 ${r.p90Ms.toFixed(2)} ms, p99 ${r.p99Ms.toFixed(2)} ms, max ${r.maxMs.toFixed(2)} ms; timeouts ${r.timeouts}, not found ${r.notFound}, errors ${r.errors}`,
        `  outcome/source ${JSON.stringify(r.bySource)}; peers queried p50/p99/max ${r.queried.p50}/${r.queried.p99}/${r.queried.max}; views ${JSON.stringify(r.views)}; record batches ok/failed ${r.recordBatches.ok}/${r.recordBatches.failed}`,
        `  lookup CPU ${r.lookupCpuMs.toFixed(2)} ms each (cluster, above idle); idle CPU ${r.idleCpuPerNodePct.toFixed(1)} % of a core per node`,
        `  connections per node min/avg/max ${r.connectionsPerNode.min}/${r.connectionsPerNode.avg.toFixed(1)}/${r.connectionsPerNode.max}; RSS MiB per node min/avg/max ${r.rssMiBPerNode.min.toFixed(0)}/${r.rssMiBPerNode.avg.toFixed(0)}/${r.rssMiBPerNode.max.toFixed(0)}`,
        `  event loop delay during lookups (ms): main p99 avg ${r.loopDelayMs.main.p99Avg.toFixed(1)}, max ${r.loopDelayMs.main.max.toFixed(0)}; p2p thread worst-window p99 avg ${r.loopDelayMs.p2p.p99Avg.toFixed(1)}, max ${r.loopDelayMs.p2p.max.toFixed(0)}`,
        `  heaps MiB per node (avg): main ${r.memory.mainHeapMiB.toFixed(0)}, p2p thread ${r.memory.workerHeapMiB.toFixed(0)} (used ${r.memory.workerUsedMiB.toFixed(0)}), external ${r.memory.externalMiB.toFixed(0)}`,
      ].join('\n'),
    );
  }
}
if (args.json) console.log(JSON.stringify(out, null, 2));

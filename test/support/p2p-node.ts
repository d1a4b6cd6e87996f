// One p2p node as its own process, for tests and the benchmark: the main-thread handle
// (src/main/p2p.ts) with its Worker, configured from PEERPULL_* variables, driven by JSON lines
// on stdin and answering JSON lines on stdout. Logs go to stderr.
//
// Commands: {"id":1,"cmd":"advertise","keys":[..],"wait":true} | withdraw {keys} |
// find {key,count?,timeoutMs?} | status | stats (rss, cpu, connections) | raw {value} | stop.

import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { loadConfig } from '../../src/main/config.js';
import { setLogLevel, setLogSink } from '../../src/main/log.js';
import { registry } from '../../src/main/metrics.js';
import { P2P } from '../../src/main/p2p.js';

setLogSink((line) => process.stderr.write(line));
const config = loadConfig(process.env);
setLogLevel(config.logLevel);

function send(o: unknown): void {
  process.stdout.write(JSON.stringify(o) + '\n');
}

const p2p = await P2P.fromConfig(config, { restartMinMs: 200 });
try {
  await p2p.start();
} catch (err) {
  send({ event: 'start-failed', error: (err as Error).message });
}
// Busy machines answer slowly: ask until the thread answers (it queues requests until started).
let status: Awaited<ReturnType<P2P['status']>> | undefined;
for (let i = 0; i < 10 && !status; i++) status = await p2p.status().catch(() => undefined);
send({ event: 'started', status });

let cpuBase = process.cpuUsage();
// Loop delays since the last 'stats' with reset: main's own, and the worst of the p2p thread's
// 2-second windows (where a lookup's time goes when neither thread is slow to handle it).
const mainLoop = monitorEventLoopDelay({ resolution: 5 });
mainLoop.enable();
let p2pLoop = { p99: 0, max: 0 };
let lastWindow: unknown;
setInterval(() => {
  const m = p2p.lastMetrics();
  if (!m || m === lastWindow) return;
  lastWindow = m;
  p2pLoop = { p99: Math.max(p2pLoop.p99, m.eventLoopDelayMs.p99), max: Math.max(p2pLoop.max, m.eventLoopDelayMs.max) };
}, 500).unref();

async function run(m: Record<string, unknown>): Promise<unknown> {
  switch (m.cmd) {
    case 'advertise':
      await p2p.advertise(m.keys as string[], { wait: m.wait === true });
      return {};
    case 'withdraw':
      await p2p.withdraw(m.keys as string[]);
      return {};
    case 'find': {
      // Timed here, in the node's main thread: what the registry would see, without the pipe.
      const t0 = process.hrtime.bigint();
      const r = await p2p.lookup(m.key as string, { count: m.count as number | undefined, timeoutMs: m.timeoutMs as number | undefined });
      return { ...r, elapsedMs: Number(process.hrtime.bigint() - t0) / 1e6 };
    }
    case 'status':
      return p2p.status();
    case 'ready':
      return p2p.ready();
    case 'stats': {
      // CPU of the whole process (both threads) since the last 'stats' with reset.
      const cpu = process.cpuUsage(cpuBase);
      const loops = { main: { p99: mainLoop.percentile(99) / 1e6, max: mainLoop.max / 1e6 }, p2p: p2pLoop };
      if (m.reset) {
        cpuBase = process.cpuUsage();
        mainLoop.reset();
        p2pLoop = { p99: 0, max: 0 };
      }
      const mem = process.memoryUsage();
      return { loops, rss: mem.rss, mainHeap: mem.heapTotal, external: mem.external, workerHeap: await p2p.heapStatistics(), cpuUserUs: cpu.user, cpuSystemUs: cpu.system, status: p2p.lastStatus(), metrics: p2p.lastMetrics() };
    }
    case 'metrics':
      return registry.metrics();
    case 'raw':
      p2p.postRaw(m.value);
      return {};
    case 'stop':
      await p2p.stop();
      setImmediate(() => process.exit(0));
      return {};
    default:
      throw new Error(`unknown command ${String(m.cmd)}`);
  }
}

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(line);
  } catch {
    send({ error: 'bad json' });
    return;
  }
  run(m).then(
    (result) => send({ id: m.id, ok: true, result }),
    (err: Error) => send({ id: m.id, ok: false, error: err.message }),
  );
});
// The test runner going away must not leave nodes behind.
rl.on('close', () => {
  void p2p.stop().finally(() => process.exit(0));
});

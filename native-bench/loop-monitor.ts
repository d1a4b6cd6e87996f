// What sampling a thread's event loop delay costs when the thread has nothing else to do: an
// idle p2p thread (a worker) with monitorEventLoopDelay at several sampling periods, each in a
// fresh process, against the same thread without a monitor (the baseline) in the same run.
// Rounds alternate the settings so drift on a noisy machine lands on all of them.
//
//   npm run bench:loop-monitor [-- --seconds 5 --rounds 3]

import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';

const run = promisify(execFile);
const PERIODS_MS = [0, 5, 10, 20, 50];

/** Child mode: one idle worker with a monitor at `periodMs` (0: none); prints CPU ms per second. */
async function measure(periodMs: number, seconds: number): Promise<void> {
  const w = new Worker(
    `const { monitorEventLoopDelay } = require('node:perf_hooks');
     if (${periodMs} > 0) monitorEventLoopDelay({ resolution: ${periodMs} }).enable();
     setInterval(() => {}, 60_000);`,
    { eval: true },
  );
  await new Promise((r) => setTimeout(r, 500)); // the worker's start is not what is measured
  const c0 = process.cpuUsage();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const c = process.cpuUsage(c0);
  process.stdout.write(String((c.user + c.system) / 1000 / seconds));
  await w.terminate();
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const opt = (name: string, def: number) => {
    const i = args.indexOf(name);
    if (i < 0) return def;
    const v = Number(args[i + 1]);
    if (!(v > 0)) throw new Error(`${name} needs a positive number`);
    return v;
  };
  if (args[0] === '--child') return measure(Number(args[1]), Number(args[2]));
  const seconds = opt('--seconds', 5);
  const rounds = opt('--rounds', 3);
  const samples = new Map<number, number[]>(PERIODS_MS.map((p) => [p, []]));
  for (let r = 0; r < rounds; r++) {
    for (const p of r % 2 === 0 ? PERIODS_MS : [...PERIODS_MS].reverse()) {
      const { stdout } = await run(process.execPath, [fileURLToPath(import.meta.url), '--child', String(p), String(seconds)]);
      samples.get(p)!.push(Number(stdout));
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const base = median(samples.get(0)!);
  console.log(`idle worker thread, CPU of the whole process per second (median of ${rounds} runs of ${seconds} s)`);
  console.log('| sampling period | CPU ms per s | added by the monitor | vs no monitor |');
  console.log('|---|---|---|---|');
  for (const p of PERIODS_MS) {
    const m = median(samples.get(p)!);
    console.log(`| ${p === 0 ? 'none (baseline)' : `${p} ms`} | ${m.toFixed(2)} | ${p === 0 ? '-' : (m - base).toFixed(2)} | ${(m / base).toFixed(1)}x |`);
  }
}

main().catch((err: Error) => {
  process.stderr.write(`loop-monitor: ${err.message}\n`);
  process.exit(1);
});

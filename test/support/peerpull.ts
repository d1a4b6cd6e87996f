// Starts a real `peerpull serve` process for tests and stops it by PID.

import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { JsonLines } from './json-lines.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const CLI = path.join(REPO_ROOT, 'dist/src/main/cli.js');

export interface PeerpullProcess {
  child: ChildProcess;
  registryPort: number;
  metricsPort: number;
  url: string;
  metricsUrl: string;
  /** Every log line so far, parsed. */
  logs: Record<string, unknown>[];
  stderr(): string;
  waitForLog(pred: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of running) if (c.exitCode === null) c.kill('SIGKILL');
});

/** Starts `peerpull <args>` with the given environment (merged over a clean base). */
export async function startPeerpull(env: Record<string, string>, args: string[] = ['serve'], host = '127.0.0.1'): Promise<PeerpullProcess> {
  const child = spawn(process.execPath, [CLI, ...args], {
    // p2p is off unless a test asks for it: a lone node needs no DHT and must not touch /var/lib.
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', PEERPULL_REGISTRY_ADDR: `${host}:0`, PEERPULL_METRICS_ADDR: `${host}:0`, PEERPULL_P2P: 'false', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  child.on('exit', () => running.delete(child));
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const out = new JsonLines(child, child.stdout!);
  const logs = out.lines;
  const waitForLog = (pred: (l: Record<string, unknown>) => boolean, timeoutMs = 15_000) =>
    out.waitFor(pred, timeoutMs, 'peerpull', () => `stderr: ${err}`);
  const listening = await waitForLog((l) => l.msg === 'listening');
  const registryPort = listening.registryPort as number;
  const metricsPort = listening.metricsPort as number;
  const hostPart = host.includes(':') ? `[${host}]` : host;
  return {
    child,
    registryPort,
    metricsPort,
    url: `http://${hostPart}:${registryPort}`,
    metricsUrl: `http://${hostPart}:${metricsPort}`,
    logs,
    stderr: () => err,
    waitForLog,
    stop: (signal = 'SIGTERM') =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
        const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
        child.once('exit', (code) => {
          clearTimeout(t);
          resolve(code);
        });
        child.kill(signal);
      }),
  };
}

/** Polls until `fn` returns true or the deadline passes. */
export async function eventually(fn: () => Promise<boolean> | boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// Runs `peerpull storm` as a child process for tests, collecting stdout, stderr and --events lines.

import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { JsonLines } from './json-lines.js';
import { CLI } from './peerpull.js';

export interface StormChild {
  child: ChildProcess;
  events: Record<string, unknown>[];
  stdout(): string;
  stderr(): string;
  waitEvent(pred: (e: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function startStorm(args: string[]): StormChild {
  const child = spawn(process.execPath, [CLI, 'storm', ...args], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  // --events writes JSON lines to stderr among the human-readable ones.
  const lines = new JsonLines(child, child.stderr!, (d) => (err += d), true);
  const events = lines.lines;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  process.on('exit', () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return {
    child,
    events,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitEvent: (pred, timeoutMs = 60_000) => lines.waitFor(pred, timeoutMs, 'storm', () => `stderr: ${err.slice(-2000)}`),
  };
}

/** Whether a PID is still a live process (not a zombie of ours). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    // A zombie (exited, not yet reaped) counts as gone.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

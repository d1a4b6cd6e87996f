// Every process the benchmark starts is recorded here and stopped by its PID: on normal exit, on
// failure, on Ctrl-C. Nothing is ever killed by name.

import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';

const children = new Set<ChildProcess>();
/** Processes we did not spawn ourselves but own (nginx workers), with the command name they had. */
const adopted = new Map<number, string>();
const tempDirs = new Set<string>();

export function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

export function start(cmd: string, args: string[], opts: SpawnOptions): ChildProcess {
  return track(spawn(cmd, args, opts));
}

function comm(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return null;
  }
}

/** Records a process that a child of ours started (so cleanup can stop it by PID). */
export function adopt(pid: number): void {
  const c = comm(pid);
  if (c) adopted.set(pid, c);
}

function killAdopted(signal: NodeJS.Signals): void {
  for (const [pid, name] of adopted) {
    // Only the very process we adopted: a reused PID would carry another name.
    if (comm(pid) !== name) {
      adopted.delete(pid);
      continue;
    }
    try {
      process.kill(pid, signal);
    } catch {
      adopted.delete(pid);
    }
  }
}

export function tempDir(dir: string): string {
  tempDirs.add(dir);
  return dir;
}

/** Stops one child: `signal`, then SIGKILL after `graceMs`. */
export function stop(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill(signal);
  });
}

/** Waits until none of `pids` (adopted processes) is alive, SIGKILLing them after `graceMs`. */
export async function reapAdopted(pids: number[], graceMs = 3000): Promise<void> {
  const deadline = Date.now() + graceMs;
  const alive = () => pids.filter((p) => adopted.has(p) && comm(p) === adopted.get(p));
  while (alive().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  for (const p of alive()) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
  for (const p of pids) adopted.delete(p);
}

/** Stops everything still running and removes temp dirs. */
export async function cleanupAll(): Promise<void> {
  await Promise.all([...children].map((c) => stop(c, 'SIGTERM', 3000)));
  killAdopted('SIGTERM');
  await reapAdopted([...adopted.keys()], 2000);
  removeTempDirs();
}

function removeTempDirs(): void {
  for (const d of tempDirs) {
    try {
      if (existsSync(d)) rmSync(d, { recursive: true, force: true });
    } catch {
      // Best effort; reported nowhere because we are exiting.
    }
    tempDirs.delete(d);
  }
}

/** Last resort on process exit: synchronous, SIGKILL by PID, delete temp dirs. */
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  killAdopted('SIGKILL');
  removeTempDirs();
});

let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    process.stderr.write(`\n${sig}: stopping benchmark servers and removing temp files...\n`);
    void cleanupAll().finally(() => process.exit(130));
  });
}

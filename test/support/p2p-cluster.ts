// Real p2p nodes as separate processes (test/support/p2p-node.ts) on 127.0.0.x addresses,
// each with its own data dir; started, driven and stopped by PID.

import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { LookupResult, P2PStatus } from '../../src/shared/messages.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const NODE_SCRIPT = path.join(REPO_ROOT, 'dist/test/support/p2p-node.js');

/** How many of a node's last log lines a timed-out call reports. */
const CALL_TIMEOUT_LOG_LINES = 25;

const running = new Set<ChildProcess>();
const ownedDirs = new Set<string>();
// A test that fails or is cancelled midway must not leave nodes or temp dirs behind.
process.on('exit', () => {
  for (const c of running) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const d of ownedDirs) rmSync(d, { recursive: true, force: true });
});
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => process.exit(128 + (sig === 'SIGTERM' ? 15 : 2)));

export interface NodeOptions {
  ip: string;
  p2pPort: number;
  registryPort?: number;
  env?: Record<string, string>;
  dataDir?: string;
}

export class P2PNodeProcess {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  stderr = '';
  started: Promise<P2PStatus | undefined>;
  readonly exited: Promise<number | null>;

  private constructor(
    readonly ip: string,
    readonly child: ChildProcess,
    readonly dataDir: string,
    private readonly ownsDataDir: boolean,
  ) {
    let startedResolve!: (s: P2PStatus | undefined) => void;
    let startedReject!: (e: Error) => void;
    this.started = new Promise((res, rej) => {
      startedResolve = res;
      startedReject = rej;
    });
    this.started.catch(() => {});
    this.exited = new Promise((res) => child.once('exit', (code) => res(code)));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
      if (this.stderr.length > 4_000_000) this.stderr = this.stderr.slice(-2_000_000);
    });
    createInterface({ input: child.stdout! }).on('line', (line) => {
      let m: Record<string, unknown>;
      try {
        m = JSON.parse(line);
      } catch {
        return;
      }
      if (m.event === 'started') startedResolve(m.status as P2PStatus | undefined);
      else if (m.event === 'start-failed') startedReject(new Error(`node ${ip} failed to start: ${String(m.error)}`));
      else if (typeof m.id === 'number') {
        const w = this.waiting.get(m.id);
        if (!w) return;
        this.waiting.delete(m.id);
        if (m.ok) w.resolve(m.result);
        else w.reject(new Error(`node ${ip}: ${String(m.error)}`));
      }
    });
    void this.exited.then((code) => {
      startedReject(new Error(`node ${ip} exited (${code}) before starting: ${this.stderr.slice(-3000)}`));
      for (const w of this.waiting.values()) w.reject(new Error(`node ${ip} exited`));
      this.waiting.clear();
    });
  }

  static async start(o: NodeOptions): Promise<P2PNodeProcess> {
    const dataDir = o.dataDir ?? (await mkdtemp(path.join(os.tmpdir(), 'peerpull-p2p-')));
    // P2P_NODE_ARGS: node options for the children (e.g. --cpu-prof); with P2P_NODE_ARGS_IP, for
    // that node only (one profiled node among 30 that are not).
    const child = spawn(process.execPath, [...((process.env.P2P_NODE_ARGS_IP ?? o.ip) === o.ip ? (process.env.P2P_NODE_ARGS ?? '') : '').split(' ').filter(Boolean), NODE_SCRIPT], {
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        PEERPULL_P2P_ADDR: `${o.ip}:${o.p2pPort}`,
        PEERPULL_REGISTRY_ADDR: `${o.ip}:${o.registryPort ?? 5000}`,
        PEERPULL_DATA_DIR: dataDir,
        PEERPULL_LOG_LEVEL: 'info',
        ...o.env,
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    running.add(child);
    if (o.dataDir === undefined) ownedDirs.add(dataDir);
    child.once('exit', () => running.delete(child));
    return new P2PNodeProcess(o.ip, child, dataDir, o.dataDir === undefined);
  }

  get pid(): number {
    return this.child.pid!;
  }

  call<T = unknown>(cmd: string, args: Record<string, unknown> = {}, timeoutMs = 60_000): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        reject(new Error(`node ${this.ip} is not running`));
        return;
      }
      const t = setTimeout(() => {
        this.waiting.delete(id);
        // What the node was doing: a CI run once failed on an advertise that takes ~0.1 s here.
        const tail = this.stderr.trimEnd().split('\n').slice(-CALL_TIMEOUT_LOG_LINES).join('\n');
        reject(new Error(`node ${this.ip}: ${cmd} timed out after ${timeoutMs} ms; its last log lines:\n${tail}`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (v) => {
          clearTimeout(t);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      });
      this.child.stdin!.write(JSON.stringify({ id, cmd, ...args }) + '\n');
    });
  }

  status(): Promise<P2PStatus> {
    return this.call<P2PStatus>('status');
  }

  find(key: string, opts: { count?: number; timeoutMs?: number } = {}): Promise<LookupResult> {
    return this.call<LookupResult>('find', { key, ...opts });
  }

  logLines(): Record<string, unknown>[] {
    return this.stderr
      .split('\n')
      .filter(Boolean)
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as Record<string, unknown>];
        } catch {
          return [{ raw: l }];
        }
      });
  }

  /** SIGKILL: the node dies without saying goodbye, like a node that loses power. */
  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      process.kill(this.pid, 'SIGKILL');
      await this.exited;
    }
  }

  /** Graceful stop, then SIGKILL after a grace period; removes the data dir it created. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.stdin!.end();
      const t = setTimeout(() => {
        if (this.child.exitCode === null && this.child.signalCode === null) process.kill(this.pid, 'SIGKILL');
      }, 3000);
      await this.exited;
      clearTimeout(t);
    }
    if (this.ownsDataDir) {
      await rm(this.dataDir, { recursive: true, force: true });
      ownedDirs.delete(this.dataDir);
    }
  }
}

/** Polls `fn` until it returns true; throws with `what` at the deadline. */
export async function waitFor(what: string, fn: () => Promise<boolean> | boolean, timeoutMs = 30_000, everyMs = 200): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      if (await fn()) return;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * peerpull_p2p_lookup_steps_total by step, from a node's Prometheus text. The p2p thread sends
 * its counters with each status push (every 2 s): wait for two, so the lookups just made count.
 */
export async function lookupSteps(n: P2PNodeProcess): Promise<Record<string, number>> {
  await new Promise((r) => setTimeout(r, 4500));
  const text = await n.call<string>('metrics');
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^peerpull_p2p_lookup_steps_total\{[^}]*step="([a-z_]+)"[^}]*\} (\d+)/gm)) out[m[1]] = Number(m[2]);
  return out;
}

/**
 * Five lookups from `asker` of keys nobody has (`sha256:<digit x 63><i>`), after two warm-up
 * misses and 5 s (members' datagrams heard, every IP listed for two bootstrap intervals): their
 * results, and how much each lookup step's counter grew over them.
 */
export async function missesOfUnknownKeys(asker: P2PNodeProcess, digit: string): Promise<{ results: LookupResult[]; delta(step: string): number; seen: string }> {
  for (let i = 0; i < 2; i++) await asker.find(`sha256:${'9'.repeat(63)}${i}`, { timeoutMs: 3000 });
  await new Promise((r) => setTimeout(r, 5000));
  const before = await lookupSteps(asker);
  const results: LookupResult[] = [];
  for (let i = 0; i < 5; i++) results.push(await asker.find(`sha256:${digit.repeat(63)}${i}`, { timeoutMs: 3000 }));
  const after = await lookupSteps(asker);
  const seen = JSON.stringify({ before, after, results: results.map((r) => ({ outcome: r.outcome, source: r.source, queried: r.queried })) });
  return { results, delta: (k) => (after[k] ?? 0) - (before[k] ?? 0), seen };
}

/** 127.0.0.<base + i>: distinct loopback addresses stand in for distinct hosts. */
export function nodeIp(i: number, base = 10): string {
  return `127.0.${Math.floor((base + i) / 250)}.${((base + i) % 250) + 1}`;
}

export async function stopAll(nodes: Iterable<P2PNodeProcess | undefined>): Promise<void> {
  await Promise.all([...nodes].map((n) => n?.stop().catch(() => {})));
}

// A real containerd per storm node (`peerpull storm --local N --containerd`): a plain background
// process with its own root, state, temp dir and gRPC socket inside the node's directory, no CRI,
// no systemd. A node's pull is `ctr content fetch` (or `ctr images pull` with --unpack) through a
// hosts.toml that lists the node's peerpull first and the storm's upstream as the server, so
// containerd itself does the fallback and writes what it fetched into its own content store.
// Processes are stopped by PID; mounts under the node dir (left by an unpack cut short) are
// unmounted before the dir is removed.

import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { access, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { newPullResult, type Descriptor, type HostKind, type PullResult } from './pull.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { UsageError } from './options.js';

const execFileP = promisify(execFile);

/** The namespace peerpull serves (what kubelet's CRI pulls into). */
export const K8S_NAMESPACE = 'k8s.io';
/** Baseline pulls go here: peerpull does not watch it, so nothing pulled without it is advertised. */
export const BASELINE_NAMESPACE = 'storm-baseline';
/** miss pulls go here: through the mirror, but never indexed, so every request stays a miss. */
export const MISS_NAMESPACE = 'storm-miss';

// Plugins a pull never needs; dropping them makes startup fast and keeps containerd inside its
// dir (`opt` would create /opt/containerd).
export const DISABLED_PLUGINS = [
  'io.containerd.internal.v1.opt',
  'io.containerd.snapshotter.v1.aufs',
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.tracing.processor.v1.otlp',
  'io.containerd.internal.v1.tracing',
];

/** The common part of a private containerd's config.toml: everything under `dir`, one socket. */
export function containerdConfigLines(dir: string, socket: string, disabled: string[]): string[] {
  const q = (s: string) => JSON.stringify(s);
  return [
    'version = 2',
    `root = ${q(path.join(dir, 'root'))}`,
    `state = ${q(path.join(dir, 'state'))}`,
    `temp = ${q(path.join(dir, 'tmp'))}`,
    `disabled_plugins = [${disabled.map(q).join(', ')}]`,
    '',
    '[grpc]',
    `  address = ${q(socket)}`,
    '',
    '[ttrpc]',
    `  address = ${q(socket + '.ttrpc')}`,
    '',
    '[debug]',
    '  address = ""',
    '  level = "info"',
    '',
    '[metrics]',
    '  address = ""',
    '',
  ];
}

/**
 * A containerd killed mid-unpack can leave a mount under its dir; removing the dir would then fail
 * (EBUSY) or reach into the mount. Synchronous: it also runs from an 'exit' handler.
 */
export function unmountUnder(dir: string): void {
  let mounts: string;
  try {
    mounts = readFileSync('/proc/self/mounts', 'utf8');
  } catch {
    return;
  }
  const points = mounts
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((mp) => mp.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length);
  for (const mp of points) {
    try {
      execFileSync('umount', ['-l', mp]);
    } catch {
      // best effort: the rm that follows reports what is left
    }
  }
}

/** Why --containerd cannot run here, or null: root, and both binaries on PATH. */
export async function containerdPrerequisites(): Promise<string | null> {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root (containerd needs it for its root and state dirs; run storm as root)');
  for (const bin of ['containerd', 'ctr']) {
    try {
      await execFileP(bin, ['--version'], { timeout: 10_000 });
    } catch (err) {
      missing.push(`${bin} (${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'not on PATH' : (err as Error).message.split('\n')[0]}; Debian: apt-get install containerd)`);
    }
  }
  return missing.length ? `--containerd needs ${missing.join(' and ')}` : null;
}

/** ctr processes in flight, across nodes, so a signal or 'exit' can stop them by PID. */
const liveCtr = new Set<ChildProcess>();

export function killCtrProcesses(): void {
  for (const c of liveCtr) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}

export interface CtrPullSpec {
  node: string;
  wave: number;
  image: string;
  namespace: string;
  /** A dir holding `<registry>/hosts.toml`. */
  hostsDir: string;
  platform: { os: string; architecture: string };
  /** The blobs of the platform's image (manifest(s), config, layers): received bytes are measured on them. */
  blobs: Descriptor[];
  /** Upstream body bytes sent to this node so far (its own upstream listener counts them). */
  upstreamBytes: () => number;
  unpack: boolean;
  concurrency: number;
  onBytes?: (n: number, host: HostKind) => void;
  signal?: AbortSignal;
  t0: number;
}

export class ContainerdNode {
  readonly socket: string;
  readonly root: string;
  readonly contentPath: string;
  readonly configFile: string;
  private readonly logFile: string;
  private proc: ChildProcess | null = null;
  snapshotter = 'native';

  constructor(readonly dir: string) {
    this.socket = path.join(dir, 'c.sock');
    this.root = path.join(dir, 'root');
    this.contentPath = path.join(this.root, 'io.containerd.content.v1.content');
    this.configFile = path.join(dir, 'config.toml');
    this.logFile = path.join(dir, 'containerd.log');
  }

  get pid(): number | undefined {
    return this.alive ? this.proc?.pid : undefined;
  }

  get alive(): boolean {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Starts containerd (CRI off) and waits until its socket answers; picks overlayfs when it works. */
  async start(timeoutMs = 60_000): Promise<void> {
    // sockaddr_un holds 108 bytes.
    if (Buffer.byteLength(this.socket) > 100) throw new UsageError(`containerd socket path ${this.socket} is too long for a unix socket: use a shorter --dir`);
    await mkdir(this.dir, { recursive: true });
    await writeFile(this.configFile, containerdConfigLines(this.dir, this.socket, ['io.containerd.grpc.v1.cri', ...DISABLED_PLUGINS]).join('\n'));
    const fd = openSync(this.logFile, 'a');
    const child = spawn('containerd', ['--config', this.configFile], { stdio: ['ignore', fd, fd] });
    closeSync(fd);
    this.proc = child;
    let exited: string | undefined;
    child.once('exit', (code, sig) => (exited = `exit ${code ?? sig}`));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (exited) throw new Error(`containerd in ${this.dir} exited while starting (${exited}): ${await this.logTail()}`);
      const up = await access(this.socket).then(
        () => execFileP('ctr', ['-a', this.socket, 'version'], { timeout: 5000 }).then(() => true, () => false),
        () => false,
      );
      if (up) break;
      if (Date.now() > deadline) throw new Error(`containerd in ${this.dir} did not answer within ${timeoutMs} ms: ${await this.logTail()}`);
      await sleep(50);
    }
    // overlayfs is "ok" only when containerd's own test mount worked (nested sandboxes often refuse it).
    const { stdout } = await this.ctr(['plugins', 'ls']);
    const overlay = stdout.split('\n').find((l) => /\bio\.containerd\.snapshotter\.v1\s+overlayfs\b/.test(l));
    this.snapshotter = overlay && /\bok\s*$/.test(overlay) ? 'overlayfs' : 'native';
  }

  async logTail(): Promise<string> {
    const text = await readFile(this.logFile, 'utf8').catch(() => '');
    return text.trim().split('\n').slice(-5).join(' | ') || '(no log)';
  }

  async ctr(args: string[]): Promise<{ stdout: string; stderr: string }> {
    try {
      return await execFileP('ctr', ['-a', this.socket, ...args], { maxBuffer: 16 * 1024 * 1024, timeout: 120_000 });
    } catch (err) {
      const e = err as Error & { stderr?: string };
      throw new Error(`ctr ${args.join(' ')}: ${(e.stderr ?? '').trim() || e.message}`);
    }
  }

  /** Removes the image and waits for containerd's garbage collection to delete its blobs. */
  async removeImage(namespace: string, image: string): Promise<void> {
    await this.ctr(['-n', namespace, 'images', 'rm', '--sync', image]).catch((err: Error) => {
      if (!/not found/i.test(err.message)) throw err;
    });
  }

  /** Bytes of this pull in the content store: committed blobs plus ingests in progress. */
  async received(blobs: Descriptor[]): Promise<number> {
    let n = 0;
    await Promise.all(
      blobs.map(async (d) => {
        const s = await stat(path.join(this.contentPath, 'blobs', 'sha256', d.digest.slice(7))).catch(() => null);
        if (s) n += s.size;
      }),
    );
    const ingest = path.join(this.contentPath, 'ingest');
    const refs = await readdir(ingest).catch(() => [] as string[]);
    await Promise.all(
      refs.map(async (r) => {
        const s = await stat(path.join(ingest, r, 'data')).catch(() => null);
        if (s) n += s.size;
      }),
    );
    return n;
  }

  /**
   * One pull by containerd: `ctr content fetch` (fetch, verify, commit, create the image: what
   * peerpull needs, without unpacking) or `ctr images pull` (also unpacks). Bytes are followed
   * live from the content store (ingests and committed blobs) and this node's upstream counter; the
   * rest came through peerpull. Never throws: failures are in the result.
   */
  async pull(spec: CtrPullSpec): Promise<PullResult> {
    const started = performance.now();
    const result = newPullResult(spec.node, spec.image, spec.wave, started - spec.t0);
    const platform = `${spec.platform.os}/${spec.platform.architecture}`;
    const args = spec.unpack
      ? ['-a', this.socket, '-n', spec.namespace, 'images', 'pull', '--snapshotter', this.snapshotter, '--max-concurrent-downloads', String(spec.concurrency), '--platform', platform, '--hosts-dir', spec.hostsDir, spec.image]
      : ['-a', this.socket, '-n', spec.namespace, 'content', 'fetch', '--platform', platform, '--hosts-dir', spec.hostsDir, spec.image];
    const up0 = spec.upstreamBytes();
    // What an earlier pull cut short left behind (a partial ingest containerd resumes) is not this pull's.
    const had = await this.received(spec.blobs);
    let seen = 0;
    let seenUp = 0;
    // Hands out what arrived since the last look: upstream from its counter, the rest via the mirror.
    const account = async () => {
      const total = (await this.received(spec.blobs)) - had;
      const up = spec.upstreamBytes() - up0;
      if (up > seenUp) {
        spec.onBytes?.(up - seenUp, 'upstream');
        seenUp = up;
      }
      const mirror = Math.max(0, total - up);
      if (mirror > seen) {
        spec.onBytes?.(mirror - seen, 'mirror');
        seen = mirror;
      }
    };
    const child = spawn('ctr', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    liveCtr.add(child);
    let out = '';
    const keep = (d: Buffer) => {
      out = (out + d.toString('utf8')).slice(-4000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    const onAbort = () => child.kill('SIGKILL');
    spec.signal?.addEventListener('abort', onAbort, { once: true });
    const exit = new Promise<{ code: number | null; sig: NodeJS.Signals | null; err?: Error }>((resolve) => {
      child.once('error', (err) => resolve({ code: null, sig: null, err }));
      child.once('close', (code, sig) => resolve({ code, sig }));
    });
    let done = false;
    void exit.then(() => (done = true));
    while (!done) {
      await Promise.race([exit, sleep(250)]);
      await account();
    }
    const { code, sig, err } = await exit;
    liveCtr.delete(child);
    spec.signal?.removeEventListener('abort', onAbort);
    await account();
    result.bytes = { mirror: seen, upstream: seenUp };
    if (code === 0) result.ok = true;
    else if (spec.signal?.aborted) {
      result.error = 'aborted';
      result.errorKind = 'aborted';
    } else {
      const msg = err?.message ?? (out.trim().split('\n').filter((l) => !/^\s*(elapsed|[a-z]+-sha256:|manifest-|config-|layer-|index-)/.test(l)).slice(-3).join(' | ') || `ctr exited ${code ?? sig}`);
      result.error = `containerd: ${msg}`;
      result.errorKind = /unexpected commit digest|digest mismatch|failed precondition/i.test(msg) ? 'digest-mismatch' : /not found/i.test(msg) ? 'not-found' : 'containerd';
    }
    const ended = performance.now();
    result.end = ended - spec.t0;
    result.totalMs = ended - started;
    return result;
  }

  /** Stops containerd by PID: `signal` first, SIGKILL after `graceMs`. Keeps the dir. */
  async kill(signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<void> {
    const child = this.proc;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill(signal);
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await gone;
    clearTimeout(t);
  }

  /** Synchronous last resort ('exit' handler): SIGKILL by PID. */
  killSync(): void {
    if (this.alive) this.proc!.kill('SIGKILL');
  }
}

/**
 * hosts.toml for the storm's registry: the node's peerpull first, then the upstream as `server`
 * (plain http: the scheme says so). Without a mirror (the baseline) the upstream is the one host:
 * containerd 1.6 rejects a hosts.toml without any `[host]` table.
 */
export async function writeHostsToml(hostsDir: string, registry: string, upstream: string, mirror?: string): Promise<void> {
  const dir = path.join(hostsDir, registry);
  await mkdir(dir, { recursive: true });
  const lines = [`server = ${JSON.stringify(upstream)}`, ''];
  if (mirror) lines.push(`[host.${JSON.stringify(mirror)}]`, '  capabilities = ["pull", "resolve"]', '  dial_timeout = "200ms"', '');
  else lines.push(`[host.${JSON.stringify(upstream)}]`, '  capabilities = ["pull", "resolve"]', '');
  await writeFile(path.join(dir, 'hosts.toml'), lines.join('\n'));
}

// Several "nodes" on one machine, the full way: one network namespace per node, joined by veth
// pairs to a bridge that lives in a namespace of its own, with 10.x addresses that exist only inside
// those namespaces (never in the root namespace, so nothing here can route anywhere else).
// Processes run inside a namespace through `ip netns exec`, which execs the command in place, so
// the PID we get is the PID of the real process and stopping by PID works. Unix sockets and files
// are not namespaced: the test process still talks to each containerd socket directly, but it
// cannot reach the 10.x addresses itself, so HTTP and DNS checks run as short Node processes
// inside the namespace (`nsHttp`, `nsResolve4`).
// Root and iproute2 are required; a missing one is a loud error, never a skip.

import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, rmSync, type WriteStream } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startContainerd, type Containerd, type StartOptions } from './containerd.js';
import { JsonLines } from './json-lines.js';
import { CLI } from './peerpull.js';

const execFileP = promisify(execFile);

/** Namespaces this process created and has not deleted yet. */
const liveNamespaces = new Set<string>();
const liveChildren = new Set<ChildProcess>();
const liveDirs = new Set<string>();

// Last line of defence when the test process dies without running `after`: no process and no
// namespace may outlive the run. Children first, so the namespaces are free to go.
process.on('exit', () => {
  for (const c of liveChildren) {
    if (c.exitCode === null && c.signalCode === null && c.pid !== undefined) {
      try {
        process.kill(c.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  for (const ns of liveNamespaces) {
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    } catch {
      // best effort
    }
  }
  for (const d of liveDirs) rmSync(d, { recursive: true, force: true });
});

/** A temp dir that is removed at exit too, if `removeTempDir` never ran (a crash, a signal). */
export async function makeTempDir(prefix: string): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), prefix));
  liveDirs.add(d);
  return d;
}

export async function removeTempDir(d: string): Promise<void> {
  await rm(d, { recursive: true, force: true });
  liveDirs.delete(d);
}

// A run stopped by Ctrl-C or by the runner's SIGTERM would skip both `after` and the 'exit'
// handlers (a signal's default action ends the process without 'exit'). Turning those signals into
// process.exit() runs every module's 'exit' cleanup (containerd.ts and peerpull.ts kill by PID too).
let signalsHooked = false;
function hookSignals(): void {
  if (signalsHooked) return;
  signalsHooked = true;
  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.once(sig, () => process.exit(code));
  }
}

/**
 * Deletes namespaces `<prefix><pid>-*` left by an earlier run whose process is gone (it was
 * SIGKILLed, so nothing of it could clean up). Only names of this scheme, and only dead owners.
 */
export async function sweepStaleNamespaces(prefix: string): Promise<string[]> {
  const { stdout } = await execFileP('ip', ['netns', 'list']);
  const swept: string[] = [];
  for (const ns of stdout.split('\n').map((l) => l.trim().split(/\s+/)[0] ?? '')) {
    const m = new RegExp(`^${prefix}(\\d+)-`).exec(ns);
    if (!m || Number(m[1]) === process.pid) continue;
    let alive = true;
    try {
      process.kill(Number(m[1]), 0);
    } catch (err) {
      alive = (err as NodeJS.ErrnoException).code !== 'ESRCH';
    }
    if (alive) continue;
    await ip(['netns', 'del', ns]).catch(() => undefined);
    swept.push(ns);
  }
  return swept;
}

let checked: Promise<void> | undefined;

/** Throws unless this process is root and iproute2's `ip` with netns support runs. */
export function requireNetns(): Promise<void> {
  checked ??= (async () => {
    if (process.getuid?.() !== 0) {
      throw new Error(
        `the network-namespace e2e suite needs root (uid is ${process.getuid?.()}): it creates namespaces, veth pairs and a bridge. ` +
          'CI runs it as root; it never skips.',
      );
    }
    try {
      await execFileP('ip', ['netns', 'list']);
    } catch (err) {
      throw new Error(`\`ip netns\` does not run (${(err as Error).message}); install the Debian package iproute2. This suite never skips.`);
    }
  })();
  return checked;
}

async function ip(args: string[]): Promise<void> {
  try {
    await execFileP('ip', args);
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`ip ${args.join(' ')} failed: ${(e.stderr ?? '').trim() || e.message}`);
  }
}

export interface LanNode {
  name: string;
  /** The network namespace. */
  ns: string;
  ip: string;
}

export interface Lan {
  /** The namespace holding the bridge (and the DNS server). */
  bridgeNs: string;
  /** The bridge's own address inside `bridgeNs`. */
  bridgeIp: string;
  prefixLength: number;
  nodes: LanNode[];
  /** Adds one more node namespace on the same bridge. */
  addNode(name: string, ip: string): Promise<LanNode>;
  /** Deletes every namespace (veths and the bridge go with them). Stop the processes inside first. */
  destroy(): Promise<void>;
}

export interface LanOptions {
  /** Unique per run, short: namespace names are `<tag>-<node>` and `<tag>-br`. */
  tag: string;
  bridgeIp: string;
  prefixLength: number;
  nodes: { name: string; ip: string }[];
}

/**
 * Creates the bridge namespace and one namespace per node. Each veth pair is created inside the
 * bridge namespace with its peer placed straight into the node namespace, so no interface or
 * address ever appears in the root namespace, even for a moment.
 */
export async function createLan(o: LanOptions): Promise<Lan> {
  await requireNetns();
  hookSignals();
  const bridgeNs = `${o.tag}-br`;
  const created: string[] = [];
  const addNs = async (ns: string) => {
    await ip(['netns', 'add', ns]);
    liveNamespaces.add(ns);
    created.push(ns);
    await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
  };
  const nodes: LanNode[] = [];
  const lan: Lan = {
    bridgeNs,
    bridgeIp: o.bridgeIp,
    prefixLength: o.prefixLength,
    nodes,
    addNode: async (name, addr) => {
      const ns = `${o.tag}-${name}`;
      await addNs(ns);
      // veth names are at most 15 bytes; they only need to be unique inside the bridge namespace.
      const brSide = `v${nodes.length}-${name}`.slice(0, 15);
      await ip(['-n', bridgeNs, 'link', 'add', brSide, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      await ip(['-n', bridgeNs, 'link', 'set', brSide, 'master', 'br0']);
      await ip(['-n', bridgeNs, 'link', 'set', brSide, 'up']);
      await ip(['-n', ns, 'addr', 'add', `${addr}/${o.prefixLength}`, 'dev', 'eth0']);
      await ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
      const node = { name, ns, ip: addr };
      nodes.push(node);
      return node;
    },
    destroy: async () => {
      const errors: string[] = [];
      // Nodes first: deleting a node namespace removes its veth pair from the bridge too.
      for (const ns of [...created].reverse()) {
        try {
          await ip(['netns', 'del', ns]);
          liveNamespaces.delete(ns);
        } catch (err) {
          errors.push((err as Error).message);
        }
      }
      created.length = 0;
      if (errors.length) throw new Error(`namespace cleanup failed: ${errors.join('; ')}`);
    },
  };
  try {
    await addNs(bridgeNs);
    await ip(['-n', bridgeNs, 'link', 'add', 'br0', 'type', 'bridge']);
    await ip(['-n', bridgeNs, 'addr', 'add', `${o.bridgeIp}/${o.prefixLength}`, 'dev', 'br0']);
    await ip(['-n', bridgeNs, 'link', 'set', 'br0', 'up']);
    for (const n of o.nodes) await lan.addNode(n.name, n.ip);
  } catch (err) {
    await lan.destroy().catch(() => undefined);
    throw err;
  }
  return lan;
}

/** Namespaces whose names start with `tag-` (for asserting cleanup). */
export async function namespacesWithTag(tag: string): Promise<string[]> {
  const { stdout } = await execFileP('ip', ['netns', 'list']);
  return stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n.startsWith(`${tag}-`));
}

/** Stops a child by PID: `signal`, then SIGKILL after `graceMs`; resolves once it has exited. */
export async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 10_000): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((r) => child.once('exit', () => r()));
  try {
    process.kill(child.pid, signal);
  } catch {
    // exited meanwhile
  }
  const t = setTimeout(() => {
    try {
      if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
    } catch {
      // exited meanwhile
    }
  }, graceMs);
  await gone;
  clearTimeout(t);
}

function track(child: ChildProcess): ChildProcess {
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  return child;
}

// ---- containerd in a namespace ----

let containerdBin: string | undefined;

/**
 * Starts test/support/containerd.ts's containerd inside `ns`. That module spawns `containerd` by
 * name; a wrapper of that name first in PATH (for the duration of this call only) turns the spawn
 * into `ip netns exec <ns> containerd ...`, which execs in place, so the module's PID-based stop and
 * crash cleanup keep working. `ctr` is not wrapped: it talks to the unix socket from here.
 * Calls must not overlap (PATH is process-wide).
 */
export async function startContainerdIn(ns: string, opts: StartOptions = {}): Promise<Containerd> {
  containerdBin ??= (await execFileP('sh', ['-c', 'command -v containerd'])).stdout.trim();
  if (!containerdBin) throw new Error('containerd is not installed (apt-get install -y containerd); this suite never skips');
  const wrapDir = await mkdtemp(path.join(os.tmpdir(), 'ppns-wrap-'));
  const oldPath = process.env.PATH;
  try {
    const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
    await writeFile(path.join(wrapDir, 'containerd'), `#!/bin/sh\nexec ip netns exec ${q(ns)} ${q(containerdBin)} "$@"\n`);
    await chmod(path.join(wrapDir, 'containerd'), 0o755);
    process.env.PATH = `${wrapDir}:${oldPath ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`;
    return await startContainerd(opts);
  } finally {
    process.env.PATH = oldPath;
    await rm(wrapDir, { recursive: true, force: true });
  }
}

// ---- short Node programs inside a namespace ----

/** Runs `node -e script args...` inside `ns` and returns its stdout. */
async function nsNode(ns: string, script: string, args: string[], timeoutMs = 15_000): Promise<string> {
  try {
    const { stdout } = await execFileP('ip', ['netns', 'exec', ns, process.execPath, '-e', script, ...args], { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`node in ${ns} failed: ${(e.stderr ?? '').trim() || e.message}`);
  }
}

export interface NsResponse {
  status: number;
  headers: Record<string, string>;
  /** The body as text (callers only read text bodies: metrics, errors). */
  text: string;
  bodyLength: number;
  bodySha256: string;
}

// CommonJS on purpose (the -e default): one request, printed as JSON; a transport error is status 0.
const HTTP_SCRIPT = `
const http = require('node:http');
const { createHash } = require('node:crypto');
const [url, method, headers] = process.argv.slice(1);
const req = http.request(url, { method, headers: JSON.parse(headers), timeout: 5000 }, (res) => {
  const h = createHash('sha256');
  const chunks = [];
  let n = 0;
  res.on('data', (d) => { h.update(d); n += d.length; if (n <= 4 * 1024 * 1024) chunks.push(d); });
  res.on('end', () => process.stdout.write(JSON.stringify({ status: res.statusCode, headers: res.headers,
    text: Buffer.concat(chunks).toString('utf8'), bodyLength: n, bodySha256: 'sha256:' + h.digest('hex') })));
});
req.on('timeout', () => req.destroy(new Error('timeout')));
req.on('error', (e) => process.stdout.write(JSON.stringify({ status: 0, headers: {}, text: String(e && e.message), bodyLength: 0, bodySha256: '' })));
req.end();
`;

/** One HTTP request made from inside `ns` (the test process cannot reach the namespaces' addresses). */
export async function nsHttp(ns: string, url: string, method: 'GET' | 'HEAD' = 'GET', headers: Record<string, string> = {}): Promise<NsResponse> {
  return JSON.parse(await nsNode(ns, HTTP_SCRIPT, [url, method, JSON.stringify(headers)])) as NsResponse;
}

const RESOLVE_SCRIPT = `
const { Resolver } = require('node:dns/promises');
const [server, name] = process.argv.slice(1);
const r = new Resolver({ timeout: 1000, tries: 2 });
r.setServers([server]);
r.resolve4(name).then((a) => process.stdout.write(JSON.stringify(a.sort())), (e) => { process.stderr.write(String(e)); process.exit(1); });
`;

/** A records of `name` as the DNS server at `server` answers them, asked from inside `ns`. */
export async function nsResolve4(ns: string, server: string, name: string): Promise<string[]> {
  return JSON.parse(await nsNode(ns, RESOLVE_SCRIPT, [server, name])) as string[];
}

// ---- peerpull in a namespace ----

export interface NsPeerpull {
  ns: string;
  child: ChildProcess;
  /** Every log line so far, parsed (peerpull logs JSON lines on stdout). */
  logs: Record<string, unknown>[];
  logFile: string;
  stderr(): string;
  waitForLog(pred: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Starts `peerpull serve` inside `ns` with exactly `env` (plus PATH): no PEERPULL_* variable of the
 * test process leaks in. Output also goes to `<logDir>/peerpull.log` for post-mortems.
 */
export async function startPeerpullIn(ns: string, env: Record<string, string>, logDir: string): Promise<NsPeerpull> {
  await mkdir(logDir, { recursive: true });
  const logFile = path.join(logDir, 'peerpull.log');
  const out: WriteStream = createWriteStream(logFile, { flags: 'a' });
  const child = track(
    spawn('ip', ['netns', 'exec', ns, process.execPath, CLI, 'serve'], {
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    out.write(d);
    err += d;
    if (err.length > 1_000_000) err = err.slice(-500_000);
  });
  child.once('exit', () => out.end());
  const lines = new JsonLines(child, child.stdout!, (d) => out.write(d));
  const logs = lines.lines;
  const waitForLog = (pred: (l: Record<string, unknown>) => boolean, timeoutMs = 20_000) =>
    lines.waitFor(pred, timeoutMs, `peerpull in ${ns}`, () => `stderr: ${err.slice(-2000)}`);
  return { ns, child, logs, logFile, stderr: () => err, waitForLog, stop: (signal = 'SIGTERM') => stopChild(child, signal, 15_000) };
}

// ---- dnsmasq in a namespace ----

export interface NsDnsmasq {
  child: ChildProcess;
  /** `ip:port` for PEERPULL_DNS_SERVERS. */
  server: string;
  output(): string;
  stop(): Promise<void>;
}

/**
 * Starts Debian's dnsmasq inside `ns`, answering A records for `records` on `listenIp` port 53 and
 * nowhere else: no upstream, no /etc files, no cache, so every answer comes from the hosts file.
 */
export async function startDnsmasqIn(ns: string, listenIp: string, records: Record<string, string[]>, dir: string): Promise<NsDnsmasq> {
  const bin = (await execFileP('sh', ['-c', 'command -v dnsmasq || ls /usr/sbin/dnsmasq'])).stdout.trim().split('\n')[0];
  if (!bin) throw new Error('dnsmasq is not installed (apt-get install -y dnsmasq-base); this suite never skips');
  await mkdir(dir, { recursive: true });
  const hostsFile = path.join(dir, 'hosts');
  await writeFile(hostsFile, Object.entries(records).flatMap(([name, ips]) => ips.map((a) => `${a} ${name}`)).join('\n') + '\n');
  const child = track(
    spawn(
      'ip',
      [
        'netns',
        'exec',
        ns,
        bin,
        '--keep-in-foreground',
        '--conf-file=/dev/null',
        '--no-resolv',
        '--no-hosts',
        '--bind-interfaces',
        `--listen-address=${listenIp}`,
        '--port=53',
        `--addn-hosts=${hostsFile}`,
        `--pid-file=${path.join(dir, 'dnsmasq.pid')}`,
        '--cache-size=0',
        '--local-ttl=1',
        '--log-facility=-',
        '--user=root',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    ),
  );
  let text = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (text += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (text += d));
  return { child, server: listenIp, output: () => text, stop: () => stopChild(child, 'SIGTERM', 2000) };
}

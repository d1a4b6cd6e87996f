// The scale orchestrator's view of a simulated cluster: a real dnsmasq answering the headless
// name with every node's A record, and host processes (host.ts) each running many real p2p
// stacks. Nodes are placed on hosts by the caller, so a group that will be killed together
// (churn) can share a host and die by SIGKILL, sockets and all, as a crashed node does.

import { fork, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Dnsmasq } from '../../test/support/dnsmasq.js';
import type { DialResult, FindResult, HostReply, HostRequest, HostSnapshot, NodeSpec } from './protocol.js';

const HOST_SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'host.js');

/** Node i of a range: 250 addresses per /24, starting at <prefix>.1.1 (the harness owns the /16). */
export function scaleIp(prefix: string, i: number): string {
  return `${prefix}.${1 + Math.floor(i / 250)}.${1 + (i % 250)}`;
}

export class Host {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  readonly exited: Promise<void>;
  readonly ips = new Set<string>();

  constructor(readonly name: string, private readonly child: ChildProcess) {
    child.on('message', (m: HostReply) => {
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (m.ok) w.resolve(m.result);
      else w.reject(new Error(`host ${name}: ${m.error}`));
    });
    this.exited = new Promise((res) =>
      child.once('exit', () => {
        for (const w of this.waiting.values()) w.reject(new Error(`host ${name} exited`));
        this.waiting.clear();
        res();
      }),
    );
  }

  get pid(): number {
    return this.child.pid!;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  call<T>(req: HostRequest, timeoutMs = 120_000): Promise<T> {
    if (!this.alive) return Promise.reject(new Error(`host ${this.name} is not running`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`host ${this.name}: ${req.type} timed out after ${timeoutMs} ms`));
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
      this.child.send({ id, req });
    });
  }

  /** Like a machine losing power: every node on this host dies at once, the kernel closes their sockets. */
  async kill(): Promise<void> {
    if (this.alive) {
      process.kill(this.pid, 'SIGKILL');
      await this.exited;
    }
  }

  async stop(): Promise<void> {
    if (!this.alive) return;
    this.child.disconnect();
    const t = setTimeout(() => this.alive && process.kill(this.pid, 'SIGKILL'), 5000);
    await this.exited;
    clearTimeout(t);
  }
}

const hostsAlive = new Set<Host>();
// Whatever happens to the orchestrator, no host outlives it.
process.on('exit', () => {
  for (const h of hostsAlive) if (h.alive) process.kill(h.pid, 'SIGKILL');
});
// A signal ends the process without 'exit' handlers (hosts, dnsmasq and its temp dir would be
// left behind, e.g. when the test runner times a test out): exit properly instead, unless the
// program handles the signal itself (run.ts saves partial results first).
for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.on(sig, () => {
    if (process.listenerCount(sig) === 1) process.exit(sig === 'SIGTERM' ? 143 : 130);
  });
}

export interface ClusterOptions {
  /** First two octets of the harness's loopback range, e.g. "127.100". */
  prefix: string;
  dnsName: string;
  p2pPort: number;
  registryPort: number;
  /** PEERPULL_* settings for every node (bound, dead-peer timeout, ...). */
  env: Record<string, string>;
  /** V8 heap limit per host process, MiB. */
  hostHeapMiB?: number;
}

export class ScaleCluster {
  readonly hosts: Host[] = [];
  /** Where each node runs, by IP. */
  readonly hostOf = new Map<string, Host>();
  readonly specs = new Map<string, NodeSpec>();
  /** What the DNS name lists, in the order given. */
  private records = new Map<string, string[]>();

  private constructor(
    readonly o: ClusterOptions,
    readonly dns: Dnsmasq,
  ) {}

  /**
   * `initial`: each bootstrap name's first records (dnsmasq refuses names it has no record of).
   * `o.dnsName` is what the nodes are given: those names, comma-separated.
   */
  static async create(o: ClusterOptions, initial: Record<string, string[]>): Promise<ScaleCluster> {
    // Answers past ~28 A records go over TCP, one forked dnsmasq per connection: allow as many
    // as a cold start of a large cluster opens at once (CoreDNS has no such per-server limit).
    const dns = await Dnsmasq.start(initial, { maxTcpConnections: 1000 });
    const c = new ScaleCluster(o, dns);
    for (const [name, ips] of Object.entries(initial)) c.records.set(name, ips);
    return c;
  }

  async spawnHost(name: string): Promise<Host> {
    const child = fork(HOST_SCRIPT, [], {
      // PEERPULL_SCALE_HOST_ARGS: extra node flags for the hosts, e.g. --cpu-prof to see where upkeep goes.
      execArgv: [`--max-old-space-size=${this.o.hostHeapMiB ?? 4096}`, ...(process.env.PEERPULL_SCALE_HOST_ARGS ?? '').split(' ').filter(Boolean)],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const h = new Host(name, child);
    hostsAlive.add(h);
    void h.exited.then(() => hostsAlive.delete(h));
    this.hosts.push(h);
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
    return h;
  }

  /** Sets the DNS records of `name` (SIGHUP: dnsmasq re-reads them). */
  async setDns(name: string, ips: string[]): Promise<void> {
    this.records.set(name, ips);
    await this.dns.update(Object.fromEntries(this.records));
  }

  dnsRecords(name: string): string[] {
    return this.records.get(name) ?? [];
  }

  /** Starts `specs` on `host` all at once; resolves when their listeners are up. */
  async startNodes(host: Host, specs: NodeSpec[]): Promise<{ ms: number }> {
    for (const s of specs) {
      this.specs.set(s.ip, s);
      this.hostOf.set(s.ip, host);
      host.ips.add(s.ip);
    }
    const r = await host.call<{ started: number; failed: string[]; ms: number }>(
      { type: 'start', nodes: specs, p2pPort: this.o.p2pPort, registryPort: this.o.registryPort, dnsServer: this.dns.server },
      300_000,
    );
    if (r.failed.length > 0) throw new Error(`${r.failed.length} nodes failed to start on ${host.name}: ${r.failed.slice(0, 3).join('; ')}`);
    return { ms: r.ms };
  }

  spec(ip: string, cluster = 'scale', dnsName = this.o.dnsName): NodeSpec {
    return { ip, cluster, dnsName, env: this.o.env };
  }

  liveHosts(): Host[] {
    return this.hosts.filter((h) => h.alive);
  }

  /** Most connections any node held at once over the run (hosts count at every open). */
  peakConnections = 0;

  async snapshot(resetCounters = false): Promise<HostSnapshot[]> {
    const snaps = await Promise.all(this.liveHosts().map((h) => h.call<HostSnapshot>({ type: 'snapshot', resetCounters })));
    for (const s of snaps) for (const x of s.nodes) this.peakConnections = Math.max(this.peakConnections, x.peakConnections);
    return snaps;
  }

  /** Starts a CPU profile in every live host, or stops them, writing `<dir>/<phase>-<host>.cpuprofile`. */
  async profile(action: 'start' | 'stop', dir = '', phase = ''): Promise<string[]> {
    if (action === 'start') {
      await Promise.all(this.liveHosts().map((h) => h.call({ type: 'profile', action })));
      return [];
    }
    await mkdir(dir, { recursive: true });
    return Promise.all(this.liveHosts().map((h) => h.call<{ file: string }>({ type: 'profile', action, file: path.join(dir, `${phase}-${h.name}.cpuprofile`) }).then((r) => r.file)));
  }

  find(ip: string, key: string, count = 2, deadlineMs = 500): Promise<FindResult> {
    const h = this.hostOf.get(ip);
    if (!h) return Promise.reject(new Error(`unknown node ${ip}`));
    return h.call<FindResult>({ type: 'find', ip, key, count, deadlineMs }, 30_000);
  }

  /** Each node in `from` opens a connection to `to` (multiaddr with peer id), all hosts at once. */
  async dial(from: string[], to: string, timeoutMs: number): Promise<DialResult> {
    const byHost = new Map<Host, string[]>();
    for (const ip of from) {
      const h = this.hostOf.get(ip);
      if (!h) throw new Error(`unknown node ${ip}`);
      byHost.set(h, [...(byHost.get(h) ?? []), ip]);
    }
    const parts = await Promise.all([...byHost].map(([h, ips]) => h.call<DialResult>({ type: 'dial', ips, to, timeoutMs }, timeoutMs + 30_000)));
    const out: DialResult = { connected: 0, failedBy: {} };
    for (const p of parts) {
      out.connected += p.connected;
      for (const [why, n] of Object.entries(p.failedBy)) out.failedBy[why] = (out.failedBy[why] ?? 0) + n;
    }
    return out;
  }

  /** The nodes (every live host) whose stores hold a record for `key`. */
  async holders(key: string): Promise<string[]> {
    const lists = await Promise.all(this.liveHosts().map((h) => h.call<string[]>({ type: 'holders', key })));
    return lists.flat();
  }

  /** Advertises per node, every host at once; `wait`: until the records reached the DHT. */
  async advertise(items: Map<string, string[]>, wait: boolean, timeoutMs = 600_000): Promise<number> {
    const t0 = Date.now();
    const byHost = new Map<Host, Array<{ ip: string; keys: string[] }>>();
    for (const [ip, keys] of items) {
      const h = this.hostOf.get(ip)!;
      if (!byHost.has(h)) byHost.set(h, []);
      byHost.get(h)!.push({ ip, keys });
    }
    await Promise.all([...byHost].map(([h, list]) => h.call({ type: 'advertise', items: list, wait }, timeoutMs)));
    return Date.now() - t0;
  }

  /** Graceful stop of some nodes (their hosts keep running). */
  async stopNodes(ips: string[]): Promise<void> {
    const byHost = new Map<Host, string[]>();
    for (const ip of ips) {
      const h = this.hostOf.get(ip);
      if (!h) continue;
      this.hostOf.delete(ip);
      h.ips.delete(ip);
      if (!byHost.has(h)) byHost.set(h, []);
      byHost.get(h)!.push(ip);
    }
    await Promise.all([...byHost].map(([h, list]) => h.alive && h.call({ type: 'stop', ips: list })));
  }

  /** SIGKILL of a whole host: its nodes vanish mid-flight. */
  async killHost(h: Host): Promise<string[]> {
    const ips = [...h.ips];
    await h.kill();
    for (const ip of ips) this.hostOf.delete(ip);
    h.ips.clear();
    return ips;
  }

  async close(): Promise<void> {
    await Promise.all(this.hosts.map((h) => h.stop().catch(() => {})));
    await this.dns.stop();
  }
}

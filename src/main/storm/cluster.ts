// A local peerpull cluster for storm: N `peerpull serve` processes on loopback addresses
// (127.0.90.1, .2, ...; every 127/8 address is local on Linux, as pods on different hosts),
// each with its own OCI-layout store (or, with `containerd`, its own real containerd) and peer
// identity, p2p on, joined by static bootstrap addresses.
// Processes are stopped by PID (the ChildProcess handles this module spawned), never by name, and
// the temp dir is removed on stop, on errors and on the signals storm's entry point catches.

import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { LocalDns } from './dns.js';
import { ContainerdNode, K8S_NAMESPACE, killCtrProcesses, unmountUnder } from './containerd.js';
import { LayoutSink } from './pull.js';
import { setTimeout as sleep } from 'node:timers/promises';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'cli.js');

export interface LocalNode {
  index: number;
  name: string;
  ip: string;
  url: string;
  metricsUrl: string;
  /** The embedded store; absent with containerd. */
  store?: LayoutSink;
  /** The node's own containerd, peerpull's content source (--containerd). */
  containerd?: ContainerdNode;
  child: ChildProcess;
  pid: number;
  alive: boolean;
  /** Last lines of the node's log, for error messages. */
  tail: string[];
}

export interface ClusterOptions {
  nodes: number;
  /** Parent directory of the cluster's temp dir. */
  dir: string;
  /** First three octets of the node addresses, e.g. `127.0.90`. */
  ipBase: string;
  /** Extra PEERPULL_* settings for every node. */
  env?: Record<string, string>;
  onEvent?: (e: Record<string, unknown>) => void;
  startTimeoutMs?: number;
  /** A real containerd per node as peerpull's content source, instead of the OCI-layout store. */
  containerd?: boolean;
}

/**
 * Settings the local cluster decides for its nodes (addresses, stores, bootstrap): `--node-env`
 * may not change them. PEERPULL_WORKERS and PEERPULL_RESYNC_INTERVAL are defaults it may.
 */
export const CLUSTER_SETTINGS = [
  'PEERPULL_STORE', 'PEERPULL_CONTAINERD_SOCK', 'PEERPULL_CONTAINERD_NAMESPACE', 'PEERPULL_CONTENT_PATH', 'PEERPULL_CONTAINERD_CONFIG_FILE',
  'PEERPULL_REGISTRY_ADDR', 'PEERPULL_METRICS_ADDR', 'PEERPULL_P2P', 'PEERPULL_P2P_ADDR', 'PEERPULL_BOOTSTRAP_DNS', 'PEERPULL_DNS_SERVERS',
  'PEERPULL_DATA_DIR', 'PEERPULL_CLUSTER',
];

function nodeIp(base: string, i: number): string {
  const [a, b, c] = base.split('.').map(Number) as [number, number, number];
  const third = c + Math.floor(i / 250);
  if (a !== 127 || third > 255) throw new Error(`no loopback address for node ${i} under ${base}`);
  return `${a}.${b}.${third}.${(i % 250) + 1}`;
}

/** A port free right now on `host` (bound, then released): the local cluster's p2p port, and tests' closed upstreams. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

const live = new Set<LocalCluster>();

/** Last-resort cleanup when the process exits with clusters still up (sync: it runs in 'exit'). */
process.on('exit', () => {
  for (const c of live) c.stopSync();
});

export class LocalCluster {
  readonly nodes: LocalNode[] = [];
  private containerds: ContainerdNode[] = [];
  private dns: LocalDns | undefined;
  private stopped = false;

  private constructor(
    readonly dir: string,
    private readonly opts: ClusterOptions,
  ) {}

  static async start(opts: ClusterOptions): Promise<LocalCluster> {
    await mkdir(opts.dir, { recursive: true });
    const { mkdtemp } = await import('node:fs/promises');
    const dir = await mkdtemp(path.join(opts.dir, 'peerpull-storm-'));
    const cluster = new LocalCluster(dir, opts);
    live.add(cluster);
    try {
      await cluster.boot();
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return cluster;
  }

  pids(): number[] {
    return this.nodes.map((n) => n.pid);
  }

  /** PIDs of the nodes' containerd processes (--containerd). */
  containerdPids(): number[] {
    return this.nodes.flatMap((n) => (n.containerd?.pid !== undefined ? [n.containerd.pid] : []));
  }

  private async boot(): Promise<void> {
    const n = this.opts.nodes;
    const ips = Array.from({ length: n }, (_, i) => nodeIp(this.opts.ipBase, i));
    const p2pPort = await freePort(ips[0]!);
    const clusterName = `storm-${process.pid}-${Date.now().toString(36)}`;
    const ready: Promise<void>[] = [];
    // A headless-service name, as a DaemonSet has: nodes that know every member answer misses
    // from their own records instead of asking the DHT.
    this.dns = await LocalDns.start(`${clusterName}.peerpull.local`, ips);
    // containerd first: peerpull's content source must answer when it starts. Created before
    // starting, so that a failure part-way still stops the ones that did start.
    const ctds = this.opts.containerd ? ips.map((_, i) => new ContainerdNode(path.join(this.dir, `node-${i}`, 'ctd'))) : [];
    this.containerds = ctds;
    if (ctds.length) {
      await Promise.all(ctds.map((c) => c.start(this.opts.startTimeoutMs ?? 60_000)));
      this.opts.onEvent?.({ event: 'containerd', pids: ctds.map((c) => c.pid), snapshotter: ctds[0]!.snapshotter });
    }
    for (let i = 0; i < n; i++) {
      const ip = ips[i]!;
      const nodeDir = path.join(this.dir, `node-${i}`);
      const ctd = ctds[i];
      const store = ctd ? undefined : await LayoutSink.create(path.join(nodeDir, 'store'));
      const source: Record<string, string> = ctd
        ? {
            PEERPULL_STORE: 'containerd',
            PEERPULL_CONTAINERD_SOCK: ctd.socket,
            PEERPULL_CONTAINERD_NAMESPACE: K8S_NAMESPACE,
            PEERPULL_CONTENT_PATH: ctd.contentPath,
            // Its own config, not the host's /etc/containerd (the preflight only reads it).
            PEERPULL_CONTAINERD_CONFIG_FILE: ctd.configFile,
          }
        : { PEERPULL_STORE: `oci-layout:${store!.dir}` };
      const env: Record<string, string> = {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        ...source,
        PEERPULL_REGISTRY_ADDR: `${ip}:0`,
        PEERPULL_METRICS_ADDR: `${ip}:0`,
        PEERPULL_P2P: 'true',
        PEERPULL_P2P_ADDR: `${ip}:${p2pPort}`,
        PEERPULL_BOOTSTRAP_DNS: this.dns.name,
        PEERPULL_DNS_SERVERS: this.dns.server,
        PEERPULL_BOOTSTRAP_INTERVAL: '2s',
        PEERPULL_DATA_DIR: path.join(nodeDir, 'data'),
        PEERPULL_CLUSTER: clusterName,
        PEERPULL_RESYNC_INTERVAL: '1s',
        PEERPULL_WORKERS: '1',
        ...this.opts.env,
      };
      const child = spawn(process.execPath, [CLI, 'serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      const node: LocalNode = { index: i, name: `node-${i}`, ip, url: '', metricsUrl: '', ...(store ? { store } : {}), ...(ctd ? { containerd: ctd } : {}), child, pid: child.pid ?? -1, alive: true, tail: [] };
      this.nodes.push(node);
      child.on('exit', () => (node.alive = false));
      ready.push(this.watch(node));
    }
    this.opts.onEvent?.({ event: 'cluster', dir: this.dir, pids: this.pids(), containerdPids: this.containerdPids(), nodes: this.nodes.map((x) => x.ip) });
    await Promise.all(ready);
    await this.waitReady();
  }

  /** Reads the node's log for the listening ports; keeps a short tail. */
  private watch(node: LocalNode): Promise<void> {
    return new Promise((resolve, reject) => {
      let buf = '';
      let done = false;
      const timer = setTimeout(() => fail(new Error(`${node.name} did not start listening in time`)), this.opts.startTimeoutMs ?? 60_000);
      const fail = (err: Error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        reject(new Error(`${err.message}; last log: ${node.tail.slice(-5).join(' | ')}`));
      };
      const onLine = (line: string) => {
        node.tail.push(line.length > 400 ? line.slice(0, 400) + '...' : line);
        if (node.tail.length > 50) node.tail.shift();
        if (done || !line.includes('"listening"')) return;
        try {
          const l = JSON.parse(line) as { registryPort: number; metricsPort: number };
          node.url = `http://${node.ip}:${l.registryPort}`;
          node.metricsUrl = `http://${node.ip}:${l.metricsPort}`;
          done = true;
          clearTimeout(timer);
          resolve();
        } catch {
          // not the line we want
        }
      };
      node.child.stdout!.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          onLine(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      });
      node.child.stderr!.setEncoding('utf8').on('data', (d: string) => onLine(d.trim()));
      node.child.once('exit', (code, sig) => fail(new Error(`${node.name} exited (${code ?? sig}) while starting`)));
    });
  }

  /** Every node answers /readyz (content source up and p2p connected to the cluster). */
  private async waitReady(): Promise<void> {
    const deadline = Date.now() + (this.opts.startTimeoutMs ?? 60_000);
    for (const node of this.nodes) {
      for (;;) {
        if (!node.alive) throw new Error(`${node.name} died: ${node.tail.slice(-5).join(' | ')}`);
        const ok = await request(`${node.metricsUrl}/readyz`, { headersTimeout: 2000, bodyTimeout: 2000 }).then(
          async (r) => {
            await r.body.dump();
            return r.statusCode === 200;
          },
          () => false,
        );
        if (ok) break;
        if (Date.now() > deadline) throw new Error(`${node.name} not ready in time: ${node.tail.slice(-3).join(' | ')}`);
        await sleep(200);
      }
    }
    // Steady state before measuring: every node knows every other (p2p view "exact", held for
    // the 5 s the node waits before answering misses itself). Not fatal when it takes longer:
    // lookups then ask the network, which the results show.
    const viewDeadline = Date.now() + 30_000;
    for (const node of this.nodes) {
      while (Date.now() < viewDeadline && node.alive) {
        const view = await request(`${node.metricsUrl}/status?format=json`, { headersTimeout: 2000, bodyTimeout: 2000 }).then(
          async (r) => ((await r.body.json()) as { p2p?: { view?: string } }).p2p?.view,
          () => undefined,
        );
        if (view === 'exact') break;
        await sleep(250);
      }
    }
    await sleep(5500);
  }

  /** SIGKILL one node (churn): it vanishes as a crashed host would, its containerd with it. */
  async kill(node: LocalNode): Promise<void> {
    const ctd = node.containerd?.kill('SIGKILL');
    if (node.alive) {
      const exited = new Promise<void>((r) => node.child.once('exit', () => r()));
      node.child.kill('SIGKILL');
      await exited;
    }
    await ctd;
  }

  /** Empties every live node's store (between scenarios, like image garbage collection). */
  async wipeStores(image?: string): Promise<void> {
    await Promise.all(
      this.nodes
        .filter((n) => n.alive)
        .map((n) => (n.containerd ? (image ? n.containerd.removeImage(K8S_NAMESPACE, image) : Promise.resolve()) : n.store!.wipe())),
    );
  }

  /** SIGTERM every node, SIGKILL what is left after a grace period, remove the temp dir. */
  async stop(graceMs = 5000): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const waits = this.nodes.map(
      (n) =>
        new Promise<void>((resolve) => {
          if (n.child.exitCode !== null || n.child.signalCode !== null) return resolve();
          const t = setTimeout(() => n.child.kill('SIGKILL'), graceMs);
          n.child.once('exit', () => {
            clearTimeout(t);
            resolve();
          });
          n.child.kill('SIGTERM');
        }),
    );
    await Promise.all(waits);
    await this.dns?.stop().catch(() => {});
    // containerd after peerpull (its content source), and any ctr still pulling.
    killCtrProcesses();
    await Promise.all(this.containerds.map((c) => c.kill('SIGTERM', graceMs)));
    unmountUnder(this.dir);
    await rm(this.dir, { recursive: true, force: true });
    live.delete(this);
    this.opts.onEvent?.({ event: 'cluster-stopped', dir: this.dir });
  }

  /** Synchronous last resort (process 'exit'): SIGKILL by PID, remove the dir. */
  stopSync(): void {
    for (const n of this.nodes) if (n.child.exitCode === null && n.child.signalCode === null) n.child.kill('SIGKILL');
    killCtrProcesses();
    for (const c of this.containerds) c.killSync();
    unmountUnder(this.dir);
    try {
      rmSync(this.dir, { recursive: true, force: true });
    } catch {
      // nothing more can be done while exiting
    }
    live.delete(this);
  }
}

/** Every live cluster, for signal handlers. */
export function liveClusters(): LocalCluster[] {
  return [...live];
}

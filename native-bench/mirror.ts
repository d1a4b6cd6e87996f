// The peer-mirror benchmark (issue 4): N real peerpull nodes on loopback (127.0.88.x, p2p on, each
// with its own OCI-layout store), node 1 holding the content. In one run it measures:
//   - blob throughput when node 2 serves node 1's blob through the peer path, against node 1
//     serving it locally (the baseline), alternating runs, as a ratio (target >= 0.7x);
//   - time to first byte of peer hits from every other node (p50/p99; target p99 < 30 ms);
//   - miss-to-404 latency for content nobody has (p50/p99; target p99 < 30 ms).
//
//   npm run build && node_modules/.bin/node dist/native-bench/mirror.js [--nodes 10] [--blob-mib 256] [--json]
//     [--threads]          also print CPU-s per GiB of every thread of node 1 (holder) and node 2 (proxy)
//     [--cpu-prof <dir>]   run nodes 1 and 2 under `node --cpu-prof` (one .cpuprofile per thread, written at exit)
//
// PEERPULL_* variables in the environment are passed to every node. All processes are stopped by
// PID and the temp dir removed, also on Ctrl-C or failure.

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { request } from 'undici';
import { generateImage, type GeneratedImage } from '../src/main/image-generator.js';
import { cleanupAll, start, stop, tempDir } from './children.js';
import { readFileSync, readdirSync } from 'node:fs';
import { clockTicks, cpuSeconds } from './proc.js';
import { PEERPULL_CLI } from './servers.js';
import { Dnsmasq } from '../test/support/dnsmasq.js';

const execFileP = promisify(execFile);
const MiB = 2 ** 20;

interface Options {
  nodes: number;
  blobMiB: number;
  rounds: number;
  samples: number;
  json: boolean;
  threads: boolean;
  cpuProf: string;
}

function parseOptions(argv: string[]): Options {
  const o: Options = { nodes: 10, blobMiB: 256, rounds: 3, samples: 300, json: false, threads: false, cpuProf: '' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const num = () => {
      const v = Number(argv[++i]);
      if (!Number.isFinite(v) || v <= 0) throw new Error(`${a} needs a positive number`);
      return v;
    };
    if (a === '--nodes') o.nodes = Math.max(2, Math.floor(num()));
    else if (a === '--blob-mib') o.blobMiB = num();
    else if (a === '--rounds') o.rounds = Math.floor(num());
    else if (a === '--samples') o.samples = Math.floor(num());
    else if (a === '--json') o.json = true;
    else if (a === '--threads') o.threads = true;
    else if (a === '--cpu-prof') {
      o.cpuProf = path.resolve(argv[++i] ?? '');
      if (!argv[i]) throw new Error('--cpu-prof needs a directory');
    }
    else throw new Error(`unknown option ${a} (see the header of native-bench/mirror.ts)`);
  }
  return o;
}

const ip = (i: number) => `127.0.88.${i + 1}`;
const REGISTRY_PORT = 5000;
const METRICS_PORT = 9090;
const P2P_PORT = 5001;

function say(msg: string): void {
  process.stderr.write(msg + '\n');
}

async function waitFor(fn: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await fn().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function status(url: string, method: 'GET' | 'HEAD' = 'HEAD'): Promise<number> {
  const r = await request(url, { method });
  await r.body.dump();
  return r.statusCode;
}

/** Downloads with curl (a client cheaper than any Node one) and returns MiB/s. */
async function curlMiBps(url: string): Promise<number> {
  const { stdout } = await execFileP('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code} %{speed_download}', url]);
  const [code, speed] = stdout.trim().split(' ');
  if (code !== '200') throw new Error(`curl ${url}: HTTP ${code}`);
  return Number(speed) / MiB;
}

/** Time to the response headers and the status, with the body drained. */
async function ttfb(url: string): Promise<{ ms: number; status: number }> {
  const t0 = performance.now();
  const r = await request(url);
  const ms = performance.now() - t0;
  await r.body.dump();
  return { ms, status: r.statusCode };
}

/** CPU seconds of every thread of a process, by "comm/tid" (threads that exited meanwhile are lost). */
function threadCpu(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const raw = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const comm = raw.slice(raw.indexOf('(') + 1, raw.lastIndexOf(')'));
      const rest = raw.slice(raw.lastIndexOf(')') + 2).split(' ');
      out.set(`${comm}/${tid}`, (Number(rest[11]) + Number(rest[12])) / clockTicks());
    } catch {
      // The thread exited between the listing and the read.
    }
  }
  return out;
}

function addDelta(into: Map<string, number>, before: Map<string, number>, after: Map<string, number>): void {
  for (const [k, v] of after) into.set(k, (into.get(k) ?? 0) + v - (before.get(k) ?? 0));
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor(s.length * p))]!;
}

function median(xs: number[]): number {
  return pct(xs, 0.5);
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  const root = tempDir(await mkdtemp(path.join(os.tmpdir(), 'peerpull-mirror-bench-')));
  say(`generating content (${o.blobMiB} MiB blob + small blobs) ...`);
  const holder = path.join(root, 'store-0');
  const big: GeneratedImage = await generateImage(holder, { name: 'docker.io/library/big:1', layerSizes: [o.blobMiB * MiB] });
  // Many small distinct blobs: each TTFB sample is a blob the asking node has not fetched before
  // (peerpull keeps no copies), and the lookup of a fresh key is part of what is measured.
  const small: GeneratedImage = await generateImage(holder, { name: 'docker.io/library/small:1', layerSizes: Array.from({ length: 60 }, () => 16 * 1024) });
  const passEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (k.startsWith('PEERPULL_') && v !== undefined) passEnv[k] = v;

  say(`starting ${o.nodes} nodes on 127.0.88.1-${o.nodes}, bootstrapped from a headless-service name on dnsmasq ...`);
  // As in a cluster: every node resolves one name listing every node (dnsmasq stops itself at exit).
  const dnsName = 'peerpull.mirror-bench.test';
  const dns = await Dnsmasq.start({ [dnsName]: Array.from({ length: o.nodes }, (_, i) => ip(i)) });
  const children: import("node:child_process").ChildProcess[] = [];
  for (let i = 0; i < o.nodes; i++) {
    const store = i === 0 ? holder : path.join(root, `store-${i}`);
    if (i > 0) await generateImage(store, { name: `docker.io/library/own-${i}:1`, layerSizes: [1024] });
    children.push(
      start(process.execPath, [...(o.cpuProf && i < 3 ? ['--cpu-prof', `--cpu-prof-dir=${path.join(o.cpuProf, `node-${i + 1}`)}`] : []), PEERPULL_CLI, 'serve'], {
        env: {
          PATH: process.env.PATH ?? '/usr/bin:/bin',
          PEERPULL_STORE: `oci-layout:${store}`,
          PEERPULL_REGISTRY_ADDR: `${ip(i)}:${REGISTRY_PORT}`,
          PEERPULL_METRICS_ADDR: `${ip(i)}:${METRICS_PORT}`,
          PEERPULL_P2P_ADDR: `${ip(i)}:${P2P_PORT}`,
          PEERPULL_BOOTSTRAP_DNS: dnsName,
          PEERPULL_DNS_SERVERS: dns.server,
          PEERPULL_DATA_DIR: path.join(root, `data-${i}`),
          PEERPULL_CLUSTER: 'bench',
          PEERPULL_WORKERS: '2',
          PEERPULL_LOG_LEVEL: 'warn',
          ...passEnv,
        },
        stdio: ['ignore', 'ignore', 'inherit'],
      }),
    );
  }
  const url = (i: number, p: string) => `http://${ip(i)}:${REGISTRY_PORT}${p}`;
  for (let i = 0; i < o.nodes; i++) await waitFor(async () => (await status(url(i, '/readyz'), 'GET')) === 200, 60_000, `node ${i + 1} ready`);
  const layer = big.manifests[0]!.layers[0]!;
  const blobPath = `/v2/library/big/blobs/${layer.digest}?ns=docker.io`;
  for (let i = 1; i < o.nodes; i++) await waitFor(async () => (await status(url(i, blobPath))) === 200, 60_000, `node ${i + 1} finding the blob`);
  // Steady state: every node knows every other (what a running cluster looks like).
  const metricsUrl = (i: number, p: string) => `http://${ip(i)}:${METRICS_PORT}${p}`;
  for (let i = 0; i < o.nodes; i++) {
    await waitFor(async () => {
      const r = await request(metricsUrl(i, '/status?format=json'));
      const snap = (await r.body.json()) as { p2p?: { view?: string } };
      return snap.p2p?.view === 'exact';
    }, 90_000, `node ${i + 1} knowing the whole cluster`);
  }
  await new Promise((r) => setTimeout(r, 6000)); // past the exact-view settle time
  // A node's start keeps it busy for 10-20 s after it is ready (module compilation, the DHT's
  // first refresh, record catch-up): measured at N = 10, the eight nodes that only idle used 0.5
  // of the 2 cores in the first seconds after every view was exact, 0.07 from 20 s on. Steady
  // state is what a running cluster looks like: wait until they are quiet (bounded).
  const bystanders = () => children.slice(2).reduce((a, c) => a + cpuSeconds(c.pid!), 0);
  const quietCores = 0.02 * Math.max(1, o.nodes - 2);
  let idleCores = Infinity;
  for (let waited = 0; waited < 60_000 && idleCores > quietCores; waited += 2000) {
    const c0 = bystanders();
    await new Promise((r) => setTimeout(r, 2000));
    idleCores = (bystanders() - c0) / 2;
  }
  say(`cluster ready (the ${o.nodes - 2} idle nodes use ${idleCores.toFixed(2)} cores); measuring`);

  // 1. Throughput: local (node 1) vs peer path (node 2 proxying node 1), alternating.
  const local: number[] = [];
  const peer: number[] = [];
  // Server CPU per GiB moved: throughput on a shared 2-core machine is noisy, CPU time is not.
  const cpu = () => cpuSeconds(children[0]!.pid!) + cpuSeconds(children[1]!.pid!);
  let localCpu = 0;
  let peerCpu = 0;
  // Per thread, by node: where each path's CPU goes (--threads).
  const threads = () => [threadCpu(children[0]!.pid!), threadCpu(children[1]!.pid!)];
  const localThreads = [new Map<string, number>(), new Map<string, number>()];
  const peerThreads = [new Map<string, number>(), new Map<string, number>()];
  await curlMiBps(url(0, blobPath)); // warm page cache
  // The other nodes only idle meanwhile, but on 2 shared cores their upkeep is taken from the
  // three processes that move the bytes: reported as the cores they used.
  const b0 = bystanders();
  const w0 = performance.now();
  for (let r = 0; r < o.rounds; r++) {
    let t0 = threads();
    let c0 = cpu();
    local.push(await curlMiBps(url(0, blobPath)));
    localCpu += cpu() - c0;
    let t1 = threads();
    for (const n of [0, 1]) addDelta(localThreads[n]!, t0[n]!, t1[n]!);
    t0 = threads();
    c0 = cpu();
    peer.push(await curlMiBps(url(1, blobPath)));
    peerCpu += cpu() - c0;
    t1 = threads();
    for (const n of [0, 1]) addDelta(peerThreads[n]!, t0[n]!, t1[n]!);
  }
  const gib = (o.rounds * layer.size) / 2 ** 30;
  const bystanderCores = (bystanders() - b0) / ((performance.now() - w0) / 1000);

  // 2. Peer-hit TTFB: each sample asks a node other than the holder for a small blob.
  const hits: number[] = [];
  let hitErrors = 0;
  const smallLayers = small.manifests[0]!.layers;
  for (let s = 0; s < o.samples; s++) {
    const node = 1 + (s % (o.nodes - 1));
    const d = smallLayers[s % smallLayers.length]!.digest;
    const r = await ttfb(url(node, `/v2/library/small/blobs/${d}?ns=docker.io`));
    if (r.status === 200) hits.push(r.ms);
    else hitErrors++;
  }

  // 3. Miss-to-404: fresh random digests (no negative cache can help).
  const misses: number[] = [];
  let missWrong = 0;
  for (let s = 0; s < o.samples; s++) {
    const node = s % o.nodes;
    const d = `sha256:${randomBytes(32).toString('hex')}`;
    const r = await ttfb(url(node, `/v2/library/nothing/blobs/${d}?ns=docker.io`));
    if (r.status === 404) misses.push(r.ms);
    else missWrong++;
  }

  const results = {
    nodes: o.nodes,
    blobMiB: o.blobMiB,
    throughput: { localMiBps: median(local), peerMiBps: median(peer), ratio: median(peer) / median(local), target: 0.7, runs: { local, peer } },
    serverCpuSecondsPerGiB: { local: localCpu / gib, peer: peerCpu / gib },
    idleNodesCores: { nodes: o.nodes - 2, cores: bystanderCores },
    peerHitTtfbMs: { p50: median(hits), p99: pct(hits, 0.99), max: Math.max(...hits), samples: hits.length, errors: hitErrors, target: 30 },
    missTo404Ms: { p50: median(misses), p99: pct(misses, 0.99), max: Math.max(...misses), samples: misses.length, wrongStatus: missWrong, target: 30 },
  };
  await Promise.all(children.map((c) => stop(c)));
  if (o.threads) {
    const lines = ['CPU-s per GiB by thread (node 1 holds the blob, node 2 proxies it):', '| node | thread | local path | peer path |', '|---|---|--:|--:|'];
    for (const n of [0, 1]) {
      const names = [...new Set([...localThreads[n]!.keys(), ...peerThreads[n]!.keys()])];
      const rows = names.map((k) => ({ k, l: (localThreads[n]!.get(k) ?? 0) / gib, p: (peerThreads[n]!.get(k) ?? 0) / gib })).filter((r) => r.l >= 0.005 || r.p >= 0.005);
      rows.sort((a, b) => b.p + b.l - (a.p + a.l));
      for (const r of rows) lines.push(`| ${n + 1} | ${r.k} | ${r.l.toFixed(3)} | ${r.p.toFixed(3)} |`);
      const sum = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0) / gib;
      lines.push(`| ${n + 1} | all threads | ${sum(localThreads[n]!).toFixed(3)} | ${sum(peerThreads[n]!).toFixed(3)} |`);
    }
    process.stderr.write(lines.join('\n') + '\n\n');
  }
  if (o.json) {
    process.stdout.write(JSON.stringify(results, null, 2) + '\n');
    return;
  }
  const f = (n: number) => n.toFixed(1);
  const met = (ok: boolean) => (ok ? 'met' : 'NOT met');
  process.stdout.write(
    [
      `peer mirror benchmark: ${o.nodes} nodes, ${o.blobMiB} MiB blob, ${o.rounds} rounds, ${o.samples} samples`,
      '',
      '| measure | value | baseline | ratio | target |',
      '|---|---|---|---|---|',
      `| blob throughput via peer (MiB/s) | ${f(results.throughput.peerMiBps)} | ${f(results.throughput.localMiBps)} (local) | ${results.throughput.ratio.toFixed(2)}x | >= 0.7x: ${met(results.throughput.ratio >= 0.7)} |`,
      `| server CPU-s per GiB (holder + proxy) | ${results.serverCpuSecondsPerGiB.peer.toFixed(2)} | ${results.serverCpuSecondsPerGiB.local.toFixed(2)} (local) | ${(results.serverCpuSecondsPerGiB.peer / results.serverCpuSecondsPerGiB.local).toFixed(2)}x | |`,
      `| cores used by the ${o.nodes - 2} idle nodes meanwhile | ${results.idleNodesCores.cores.toFixed(3)} | | | |`,
      `| peer hit TTFB p50 / p99 (ms) | ${f(results.peerHitTtfbMs.p50)} / ${f(results.peerHitTtfbMs.p99)} | | | p99 < 30: ${met(results.peerHitTtfbMs.p99 < 30)} |`,
      `| miss-to-404 p50 / p99 (ms) | ${f(results.missTo404Ms.p50)} / ${f(results.missTo404Ms.p99)} | | | p99 < 30: ${met(results.missTo404Ms.p99 < 30)} |`,
      '',
      `errors: peer hits not 200: ${hitErrors}; misses not 404: ${missWrong}`,
      '',
    ].join('\n'),
  );
}

let exiting = false;
const bail = (code: number) => {
  if (exiting) return;
  exiting = true;
  void cleanupAll().finally(() => process.exit(code));
};
process.on('SIGINT', () => bail(130));
process.on('SIGTERM', () => bail(143));
main().then(
  () => bail(0),
  (err: unknown) => {
    process.stderr.write(`mirror benchmark failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    bail(1);
  },
);

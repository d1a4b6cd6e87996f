// The registry benchmark: peerpull beside nginx (sendfile) and a plain node:http server, serving
// the same generated OCI layout on 127.0.0.1, measured one server at a time in one run.
//
//   npm run build && node_modules/.bin/node dist/native-bench/registry.js [--quick] [--json]
//
// Measures, per server: GET throughput of a 256 MiB blob with 1 and 32 connections (wrk); server
// CPU-seconds per GiB served during those runs (utime+stime of the server processes from /proc);
// requests/s and p99 latency of HEAD and GET of a ~2 KiB manifest with 1 and 32 connections; RSS
// growth over idle while 32 slow clients download a 1 GiB blob. Prints absolute figures, ratios
// against nginx and node:http, and the targets of issue 2. PEERPULL_* variables in the
// environment (e.g. PEERPULL_CHUNK_SIZE, PEERPULL_STREAM_CREDITS, PEERPULL_WORKERS) are passed to
// peerpull. Generated content lives in a temp dir that is always removed; every process started
// is stopped by PID, also on Ctrl-C or failure.

import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { generateImage } from '../src/main/image-generator.js';
import { cleanupAll, tempDir } from './children.js';
import { buildReqload, lastClientCpuSeconds, REQLOAD_SOURCE, runReqload, runWrk, slowClients, WRK, wrkErrorCount, type SlowClientsResult, type WrkResult } from './load.js';
import { cpuSeconds, hwmBytes, machineBusySeconds, rssBytes, sumOver } from './proc.js';
import { NGINX, PEERPULL_CLI, SERVER_NAMES, startServer, type RunningServer, type ServerName } from './servers.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
/** A layer blob is a tar: 512-byte header + payload + 1024-byte end marker (payloads here are 512-aligned). */
const TAR_OVERHEAD = 1536;
const IMAGE = 'docker.io/library/bench:latest';
const REPO_PATH = '/v2/library/bench';
const NS = '?ns=docker.io';

const TESTS = ['memory', 'blob', 'manifest'] as const;
type TestName = (typeof TESTS)[number];

interface Options {
  quick: boolean;
  json: boolean;
  jsonFile: string | undefined;
  servers: ServerName[];
  peerpullNodeArgs: string[];
  peerpullCli: string | undefined;
  wrkThreads: number;
  strict: boolean;
  tests: Set<TestName>;
  /** Longest wait for a quiet machine before each load run, seconds. */
  quietWait: number;
  /** Load runs disturbed by other work are repeated up to this many attempts in all. */
  attempts: number;
}

interface Plan {
  blobSeconds: number;
  manifestSeconds: number;
  warmupSeconds: number;
  slowClients: number;
  slowBytesPerSec: number;
  slowSeconds: number;
  /** Size of the blob the slow clients download. */
  slowBlobSize: number;
}

const USAGE = `usage: node dist/native-bench/registry.js [options]

  --quick               short runs (about a minute): 1-2 s per load run, no waiting for a quiet machine,
                        a 256 MiB blob for the slow clients
  --json                print the results as JSON on stdout (progress stays on stderr)
  --json-file path      also write the JSON results to a file (the table still goes to stdout)
  --servers a,b,c       which servers to run (default peerpull,nginx,node:http)
  --peerpull-node-args  extra node flags for peerpull, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"
  --tests a,b,c         which measurements (default memory,blob,manifest)
  --quiet-wait s        before each load run, wait up to s seconds for other work to stop (default 30)
  --attempts n          repeat a load run disturbed by other work, n attempts in all (default 3)
  --peerpull-cli path   run this peerpull cli.js instead of the build's (A/B of a patched copy)
  --wrk-threads n       wrk threads (default 1: client and servers share this machine's cores)
  --strict              exit 1 when a target is not met (default: exit 0 whenever the run completed)

PEERPULL_* variables in the environment are passed to peerpull (e.g. PEERPULL_CHUNK_SIZE=1Mi).`;

function parseOptions(argv: string[]): Options {
  const o: Options = { quick: false, json: false, jsonFile: undefined, servers: [...SERVER_NAMES], peerpullNodeArgs: [], peerpullCli: undefined, wrkThreads: 1, strict: false, tests: new Set(TESTS), quietWait: 30, attempts: 3 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--quick':
        o.quick = true;
        break;
      case '--json':
        o.json = true;
        break;
      case '--json-file':
        o.jsonFile = path.resolve(value());
        break;
      case '--strict':
        o.strict = true;
        break;
      case '--servers': {
        const names = value().split(',').map((s) => s.trim()) as ServerName[];
        for (const n of names) if (!SERVER_NAMES.includes(n)) throw new Error(`unknown server "${n}" (known: ${SERVER_NAMES.join(', ')})`);
        o.servers = SERVER_NAMES.filter((n) => names.includes(n));
        break;
      }
      case '--peerpull-node-args':
        o.peerpullNodeArgs = value().split(/\s+/).filter(Boolean);
        break;
      case '--tests': {
        const names = value().split(',').map((t) => t.trim()) as TestName[];
        for (const t of names) if (!TESTS.includes(t)) throw new Error(`unknown test "${t}" (known: ${TESTS.join(', ')})`);
        o.tests = new Set(names);
        break;
      }
      case '--quiet-wait':
        o.quietWait = Math.max(0, Number(value()) || 0);
        break;
      case '--attempts':
        o.attempts = Math.max(1, Math.floor(Number(value()) || 1));
        break;
      case '--peerpull-cli':
        o.peerpullCli = path.resolve(value());
        break;
      case '--wrk-threads':
        o.wrkThreads = Math.max(1, Number(value()) || 1);
        break;
      case '--help':
      case '-h':
        process.stdout.write(USAGE + '\n');
        process.exit(0);
      // eslint-disable-next-line no-fallthrough
      default:
        throw new Error(`unknown option ${a}\n${USAGE}`);
    }
  }
  return o;
}

function progress(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The compiled HEAD load generator (built once per run into the temp dir). */
let reqload = '';

// ---------------------------------------------------------------- content

interface Content {
  layout: string;
  manifest: { digest: string; size: number; mediaType: string };
  blob256: { digest: string; size: number };
  slowBlob: { digest: string; size: number };
}

async function makeContent(layout: string, plan: Plan): Promise<Content> {
  const big = 256 * MiB - TAR_OVERHEAD;
  const layerSizes = [big];
  if (plan.slowBlobSize !== 256 * MiB) layerSizes.push(plan.slowBlobSize - TAR_OVERHEAD);
  // Ten tiny layers bring the manifest to ~2 KiB, the size of a typical real image manifest.
  const filler = plan.slowBlobSize !== 256 * MiB ? 10 : 11;
  for (let i = 0; i < filler; i++) layerSizes.push(512 * (i + 1));
  const img = await generateImage(layout, { name: IMAGE, layerSizes });
  const m = img.manifests[0]!;
  const blob256 = m.layers[0]!;
  const slow = plan.slowBlobSize !== 256 * MiB ? m.layers[1]! : blob256;
  return {
    layout,
    manifest: { digest: m.manifest.digest, size: m.manifest.size, mediaType: m.manifest.mediaType },
    blob256: { digest: blob256.digest, size: blob256.size },
    slowBlob: { digest: slow.digest, size: slow.size },
  };
}

// ---------------------------------------------------------------- per-server suite

interface LoadFigures extends WrkResult {
  cpuSeconds: number;
  cpuSecondsPerGiB: number;
  cpuMicrosPerRequest: number;
  /** CPU of the load generator. */
  clientCpuSeconds: number;
  /** Cores used by anything but server and client during the run (other sessions on this machine). */
  foreignCores: number;
  attempts: number;
}

interface ServerResult {
  name: ServerName;
  notes: string[];
  /** Most cores other work on the machine used during one of this server's load runs (should be ~0). */
  foreignCoresMax: number;
  blob?: { c1: LoadFigures; c32: LoadFigures } | undefined;
  manifest?: { headC1: LoadFigures; headC32: LoadFigures; getC1: LoadFigures; getC32: LoadFigures } | undefined;
  memory?: { idleRssMiB: number; peakRssMiB: number; growthMiB: number; slow: SlowClientsResult } | undefined;
}

function url(s: RunningServer, p: string): string {
  return `http://${s.host}:${s.port}${p}`;
}

async function verify(s: RunningServer, c: Content): Promise<void> {
  const mPath = `${REPO_PATH}/manifests/${c.manifest.digest}${NS}`;
  const get = await fetch(url(s, mPath));
  const body = Buffer.from(await get.arrayBuffer());
  const digest = `sha256:${createHash('sha256').update(body).digest('hex')}`;
  const problems: string[] = [];
  if (get.status !== 200) problems.push(`manifest GET status ${get.status}`);
  if (digest !== c.manifest.digest) problems.push(`manifest GET body hashes to ${digest}`);
  if (get.headers.get('content-type') !== c.manifest.mediaType) problems.push(`manifest Content-Type ${get.headers.get('content-type')}`);
  if (get.headers.get('docker-content-digest') !== c.manifest.digest) problems.push(`manifest Docker-Content-Digest ${get.headers.get('docker-content-digest')}`);
  const head = await fetch(url(s, mPath), { method: 'HEAD' });
  await head.arrayBuffer();
  if (head.status !== 200 || head.headers.get('content-length') !== String(c.manifest.size)) {
    problems.push(`manifest HEAD status ${head.status}, Content-Length ${head.headers.get('content-length')}`);
  }
  const blob = await fetch(url(s, `${REPO_PATH}/blobs/${c.blob256.digest}${NS}`));
  const h = createHash('sha256');
  let n = 0;
  for await (const chunk of blob.body as unknown as AsyncIterable<Uint8Array>) {
    h.update(chunk);
    n += chunk.byteLength;
  }
  const blobDigest = `sha256:${h.digest('hex')}`;
  if (blob.status !== 200 || n !== c.blob256.size || blobDigest !== c.blob256.digest) {
    problems.push(`blob GET status ${blob.status}, ${n} bytes, digest ${blobDigest}`);
  }
  if (problems.length) throw new Error(`${s.name} serves wrong content: ${problems.join('; ')}`);
}

/** Other work on the machine above this many cores makes a load run suspect: it is retried. */
const FOREIGN_LIMIT_CORES = 0.25;

/** Waits (up to `maxMs`) until the machine is quiet apart from the server under test. */
async function waitQuiet(s: RunningServer, maxMs: number): Promise<void> {
  const deadline = Date.now() + maxMs;
  let warned = false;
  for (;;) {
    const pids = s.pids();
    const m0 = machineBusySeconds();
    const s0 = sumOver(pids, cpuSeconds);
    await sleep(500);
    const foreign = (machineBusySeconds() - m0 - (sumOver(pids, cpuSeconds) - s0)) / 0.5;
    if (foreign < FOREIGN_LIMIT_CORES || Date.now() > deadline) return;
    if (!warned) progress(`${s.name}:   machine busy with other work (${foreign.toFixed(2)} cores): waiting up to ${Math.round(maxMs / 1000)} s for quiet`);
    warned = true;
  }
}

async function measuredOnce(s: RunningServer, scratch: string, opts: Options, run: { path: string; method: 'GET' | 'HEAD'; connections: number; seconds: number; timeoutSeconds: number }): Promise<LoadFigures> {
  const pids = s.pids();
  const before = sumOver(pids, cpuSeconds);
  const machineBefore = machineBusySeconds();
  const r =
    run.method === 'HEAD'
      ? await runReqload(reqload, { host: s.host, port: s.port, path: run.path, method: 'HEAD', connections: run.connections, seconds: run.seconds })
      : await runWrk({ url: url(s, run.path), method: run.method, connections: run.connections, threads: Math.min(opts.wrkThreads, run.connections), seconds: run.seconds, timeoutSeconds: run.timeoutSeconds, scratch });
  const cpu = sumOver(s.pids(), cpuSeconds) - before;
  const client = lastClientCpuSeconds;
  const foreignCores = Math.max(0, machineBusySeconds() - machineBefore - cpu - client) / r.seconds;
  if (r.requests === 0 && r.bytes === 0) throw new Error(`${s.name}: ${run.method} ${run.path} got nothing: ${JSON.stringify(r.errors)}`);
  return {
    ...r,
    cpuSeconds: cpu,
    cpuSecondsPerGiB: r.bytes > 0 ? cpu / (r.bytes / GiB) : NaN,
    cpuMicrosPerRequest: r.requests > 0 ? (cpu / r.requests) * 1e6 : NaN,
    clientCpuSeconds: client,
    foreignCores,
    attempts: 1,
  };
}

/**
 * One load run with the server's CPU time. Another session's work on this shared machine would
 * skew it: wait for quiet first, measure the CPU nobody of ours used during the run, and retry
 * (twice at most) when it was above FOREIGN_LIMIT_CORES, keeping the cleanest attempt.
 */
async function measured(s: RunningServer, scratch: string, opts: Options, run: { path: string; method: 'GET' | 'HEAD'; connections: number; seconds: number; timeoutSeconds: number }): Promise<LoadFigures> {
  let best: LoadFigures | null = null;
  for (let attempt = 1; attempt <= opts.attempts; attempt++) {
    if (opts.quietWait > 0) await waitQuiet(s, opts.quietWait * 1000);
    const r = await measuredOnce(s, scratch, opts, run);
    r.attempts = attempt;
    if (!best || r.foreignCores < best.foreignCores) best = { ...r };
    if (r.foreignCores < FOREIGN_LIMIT_CORES) break;
    progress(`${s.name}:   other work used ${r.foreignCores.toFixed(2)} cores during the run${attempt < opts.attempts ? ': again' : ': keeping the cleanest attempt'}`);
    if (attempt === opts.attempts) break;
    await sleep(1000);
  }
  best!.attempts = Math.max(best!.attempts, 1);
  // Errors are reported, not fatal: a server that drops keep-alive connections is a finding.
  if (wrkErrorCount(best!) > 0) progress(`${s.name}:   WARNING: ${run.method} with ${run.connections} connection(s): ${JSON.stringify(best!.errors)} (connect = connections the server closed, so the client reconnected)`);
  return best!;
}

async function memoryUnderSlowClients(s: RunningServer, c: Content, plan: Plan): Promise<NonNullable<ServerResult['memory']>> {
  await sleep(500);
  const pids = s.pids();
  const idle = new Map(pids.map((p) => [p, rssBytes(p)]));
  const hwmBefore = new Map(pids.map((p) => [p, hwmBytes(p)]));
  const sampled = new Map(idle);
  const sampler = setInterval(() => {
    for (const p of pids) {
      try {
        sampled.set(p, Math.max(sampled.get(p)!, rssBytes(p)));
      } catch {
        // Process gone (a failure the load run reports).
      }
    }
  }, 20);
  let slow: SlowClientsResult;
  try {
    slow = await slowClients(s.host, s.port, `${REPO_PATH}/blobs/${c.slowBlob.digest}${NS}`, plan.slowClients, plan.slowBytesPerSec, plan.slowSeconds);
  } finally {
    clearInterval(sampler);
  }
  let idleSum = 0;
  let peakSum = 0;
  for (const p of pids) {
    const hwmAfter = hwmBytes(p);
    // A high-water mark that rose during the test is the exact peak; otherwise the samples are.
    const peak = hwmAfter > hwmBefore.get(p)! ? hwmAfter : sampled.get(p)!;
    idleSum += idle.get(p)!;
    peakSum += peak;
  }
  if (slow.ok !== slow.clients || slow.failed > 0) throw new Error(`${s.name}: slow clients: ${slow.ok}/${slow.clients} got 200, ${slow.failed} failed`);
  return { idleRssMiB: idleSum / MiB, peakRssMiB: peakSum / MiB, growthMiB: (peakSum - idleSum) / MiB, slow };
}

async function runSuite(name: ServerName, c: Content, scratchRoot: string, plan: Plan, opts: Options): Promise<ServerResult> {
  const scratch = path.join(scratchRoot, name.replace(':', '-'));
  await mkdir(scratch, { recursive: true });
  progress(`${name}: starting`);
  const s = await startServer(name, { layout: c.layout, scratch, peerpullEnv: peerpullEnv(), peerpullNodeArgs: opts.peerpullNodeArgs, peerpullCli: opts.peerpullCli });
  try {
    progress(`${name}: listening on ${s.host}:${s.port} (pids ${s.pids().join(',')}); checking content`);
    await verify(s, c);

    let memory: ServerResult['memory'];
    if (opts.tests.has('memory')) {
      progress(`${name}: ${plan.slowClients} slow clients at ${plan.slowBytesPerSec / MiB} MiB/s each for ${plan.slowSeconds} s (${c.slowBlob.size / MiB} MiB blob)`);
      memory = await memoryUnderSlowClients(s, c, plan);
      progress(`${name}:   idle RSS ${memory.idleRssMiB.toFixed(1)} MiB, peak ${memory.peakRssMiB.toFixed(1)} MiB, growth ${memory.growthMiB.toFixed(1)} MiB, clients read ${(memory.slow.bytes / MiB).toFixed(0)} MiB`);
      await sleep(1000);
    }

    const blobPath = `${REPO_PATH}/blobs/${c.blob256.digest}${NS}`;
    const blob: Partial<NonNullable<ServerResult['blob']>> = {};
    for (const conns of opts.tests.has('blob') ? ([1, 32] as const) : []) {
      progress(`${name}: GET 256 MiB blob, ${conns} connection(s), ${plan.blobSeconds} s`);
      const r = await measured(s, scratch, opts, { path: blobPath, method: 'GET', connections: conns, seconds: plan.blobSeconds, timeoutSeconds: 60 });
      progress(`${name}:   ${r.mibPerSec.toFixed(0)} MiB/s, ${r.cpuSecondsPerGiB.toFixed(3)} CPU-s/GiB (client ${r.clientCpuSeconds.toFixed(1)} CPU-s, other work ${r.foreignCores.toFixed(2)} cores)`);
      blob[conns === 1 ? 'c1' : 'c32'] = r;
      await sleep(500);
    }

    const mPath = `${REPO_PATH}/manifests/${c.manifest.digest}${NS}`;
    const manifest: Partial<NonNullable<ServerResult['manifest']>> = {};
    if (opts.tests.has('manifest')) {
      // JIT warm-up for the Node servers; nginx does not care.
      await runReqload(reqload, { host: s.host, port: s.port, path: mPath, method: 'HEAD', connections: 32, seconds: plan.warmupSeconds });
      await runWrk({ url: url(s, mPath), method: 'GET', connections: 32, threads: Math.min(opts.wrkThreads, 32), seconds: plan.warmupSeconds, timeoutSeconds: 5, scratch });
    }
    for (const method of opts.tests.has('manifest') ? (['HEAD', 'GET'] as const) : []) {
      for (const conns of [1, 32] as const) {
        progress(`${name}: ${method} manifest, ${conns} connection(s), ${plan.manifestSeconds} s`);
        const r = await measured(s, scratch, opts, { path: mPath, method, connections: conns, seconds: plan.manifestSeconds, timeoutSeconds: 5 });
        progress(`${name}:   ${r.requestsPerSec.toFixed(0)} req/s, p99 ${r.p99Ms.toFixed(3)} ms, ${r.cpuMicrosPerRequest.toFixed(1)} CPU-us/req (other work ${r.foreignCores.toFixed(2)} cores)`);
        manifest[`${method === 'HEAD' ? 'head' : 'get'}C${conns}` as keyof NonNullable<ServerResult['manifest']>] = r;
        await sleep(300);
      }
    }
    const runs = [...Object.values(blob), ...Object.values(manifest)] as LoadFigures[];
    return {
      name,
      notes: s.notes,
      foreignCoresMax: Math.max(0, ...runs.map((r) => r.foreignCores)),
      blob: opts.tests.has('blob') ? (blob as ServerResult['blob']) : undefined,
      manifest: opts.tests.has('manifest') ? (manifest as ServerResult['manifest']) : undefined,
      memory: memory!,
    };
  } finally {
    progress(`${name}: stopping`);
    await s.stop();
  }
}

function peerpullEnv(): Record<string, string> {
  const fixed = new Set(['PEERPULL_STORE', 'PEERPULL_REGISTRY_ADDR', 'PEERPULL_METRICS_ADDR']);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (k.startsWith('PEERPULL_') && !fixed.has(k) && v !== undefined) out[k] = v;
  return out;
}

// ---------------------------------------------------------------- report

interface Check {
  id: string;
  metric: string;
  unit: string;
  /** Which way is better. */
  better: 'higher' | 'lower';
  /** A check on the measurement itself (not a performance target): no ratios, not counted as a target. */
  validity?: boolean;
  values: Partial<Record<ServerName, number>>;
  target?: { text: string; met: boolean | null };
}

function ratio(a: number | undefined, b: number | undefined): number | null {
  return a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0 ? null : a / b;
}

function buildChecks(results: Partial<Record<ServerName, ServerResult>>): Check[] {
  const pick = (f: (r: ServerResult) => number | undefined): Partial<Record<ServerName, number>> => {
    const o: Partial<Record<ServerName, number>> = {};
    for (const n of SERVER_NAMES) {
      const v = results[n] ? f(results[n]!) : undefined;
      if (v !== undefined) o[n] = v;
    }
    return o;
  };
  const checks: Check[] = [];
  const vsNginx = (v: Partial<Record<ServerName, number>>, min: number) => {
    const r = ratio(v.peerpull, v.nginx);
    return { text: `>= ${min}x nginx`, met: r === null ? null : r >= min };
  };
  const vsNode = (v: Partial<Record<ServerName, number>>, op: '<=' | '>=', k: number) => {
    const r = ratio(v.peerpull, v['node:http']);
    return { text: `${op} ${k}x node:http`, met: r === null ? null : op === '<=' ? r <= k : r >= k };
  };
  for (const [key, conns] of [['c1', 1], ['c32', 32]] as const) {
    const v = pick((r) => r.blob?.[key].mibPerSec);
    checks.push({ id: `blob-throughput-${key}`, metric: `256 MiB blob GET, ${conns} conn`, unit: 'MiB/s', better: 'higher', values: v, target: vsNginx(v, 0.9) });
  }
  for (const [key, conns] of [['c1', 1], ['c32', 32]] as const) {
    const v = pick((r) => r.blob?.[key].cpuSecondsPerGiB);
    checks.push({ id: `blob-cpu-${key}`, metric: `server CPU per GiB, ${conns} conn`, unit: 'CPU-s/GiB', better: 'lower', values: v, target: vsNode(v, '<=', 1) });
  }
  for (const [key, label] of [['headC1', 'HEAD, 1 conn'], ['headC32', 'HEAD, 32 conn'], ['getC1', 'GET, 1 conn'], ['getC32', 'GET, 32 conn']] as const) {
    const rps = pick((r) => r.manifest?.[key].requestsPerSec);
    checks.push({ id: `manifest-rps-${key}`, metric: `manifest ${label}`, unit: 'req/s', better: 'higher', values: rps, target: vsNode(rps, '>=', 2) });
    const p99 = pick((r) => r.manifest?.[key].p99Ms);
    checks.push({
      id: `manifest-p99-${key}`,
      metric: `manifest ${label} p99`,
      unit: 'ms',
      better: 'lower',
      values: p99,
      target: { text: '< 2 ms', met: p99.peerpull === undefined ? null : p99.peerpull < 2 },
    });
  }
  for (const [key, label] of [['headC32', 'HEAD'], ['getC32', 'GET']] as const) {
    checks.push({ id: `manifest-cpu-${key}`, metric: `server CPU per manifest ${label}, 32 conn`, unit: 'CPU-us/req', better: 'lower', values: pick((r) => r.manifest?.[key].cpuMicrosPerRequest) });
  }
  checks.push({
    id: 'manifest-errors',
    metric: 'manifest runs: reconnects + errors',
    unit: 'count',
    better: 'lower',
    values: pick((r) => (r.manifest ? Object.values(r.manifest).reduce((a, f) => a + wrkErrorCount(f), 0) : undefined)),
    target: { text: '0 (keep-alive holds)', met: results.peerpull?.manifest ? Object.values(results.peerpull.manifest).every((f) => wrkErrorCount(f) === 0) : null },
  });
  const growth = pick((r) => r.memory?.growthMiB);
  checks.push({
    id: 'slow-clients-rss-growth',
    metric: '32 slow clients, RSS growth over idle',
    unit: 'MiB',
    better: 'lower',
    values: growth,
    target: { text: '< 64 MiB', met: growth.peerpull === undefined ? null : growth.peerpull < 64 },
  });
  checks.push({ id: 'idle-rss', metric: 'idle RSS', unit: 'MiB', better: 'lower', values: pick((r) => r.memory?.idleRssMiB) });
  checks.push({
    id: 'other-work',
    validity: true,
    metric: 'other work on the machine, worst load run',
    unit: 'cores',
    better: 'lower',
    values: pick((r) => (r.blob || r.manifest ? r.foreignCoresMax : undefined)),
    target: { text: `< ${FOREIGN_LIMIT_CORES} (figures trustworthy)`, met: Object.values(results).some((r) => r && (r.blob || r.manifest)) ? Object.values(results).every((r) => !r || r.foreignCoresMax < FOREIGN_LIMIT_CORES) : null },
  });
  return checks;
}

function fmt(v: number | undefined | null, unit: string): string {
  if (v === undefined || v === null || !Number.isFinite(v)) return 'n/a';
  if (unit === 'ms') return v.toFixed(v < 10 ? 2 : 1);
  if (unit === 'CPU-s/GiB') return v.toFixed(3);
  if (unit === 'CPU-us/req') return v.toFixed(1);
  if (unit === 'MiB') return v.toFixed(1);
  if (unit === 'cores') return v.toFixed(2);
  return Math.round(v).toString();
}

function fmtRatio(r: number | null): string {
  return r === null ? 'n/a' : `${r.toFixed(2)}x`;
}

function markdownTable(checks: Check[], servers: ServerName[]): string {
  const head = ['metric', ...servers, 'peerpull/nginx', 'peerpull/node:http', 'target', 'met'];
  const rows = checks.map((c) => [
    `${c.metric} (${c.unit})`,
    ...servers.map((n) => fmt(c.values[n], c.unit)),
    c.validity ? '' : fmtRatio(ratio(c.values.peerpull, c.values.nginx)),
    c.validity ? '' : fmtRatio(ratio(c.values.peerpull, c.values['node:http'])),
    c.target?.text ?? '',
    c.target ? (c.target.met === null ? 'n/a' : c.target.met ? 'met' : 'NOT MET') : '',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (i === 0 ? `-${'-'.repeat(w)}-` : `-${'-'.repeat(w - 1)}:-`)).join('|')}|`;
  return [line(head), sep, ...rows.map(line)].join('\n');
}

function machine(): Record<string, unknown> {
  const cpu = os.cpus()[0]?.model ?? 'unknown';
  let nginxVersion = 'unknown';
  try {
    // nginx prints its version on stderr.
    nginxVersion = execFileSync('sh', ['-c', `${NGINX} -v 2>&1`], { encoding: 'utf8' }).trim().replace(/^nginx version: /, '');
  } catch {
    // keep unknown
  }
  let wrkVersion = 'unknown';
  try {
    wrkVersion = execFileSync('sh', ['-c', `${WRK} -v 2>&1 | head -1`], { encoding: 'utf8' }).trim();
  } catch {
    // keep unknown
  }
  let peerpullCommit = 'unknown';
  try {
    const repo = path.resolve(path.dirname(PEERPULL_CLI), '../../..');
    const head = execFileSync('git', ['-C', repo, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['-C', repo, 'status', '--porcelain', '--', 'src'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() !== '';
    peerpullCommit = `${head}${dirty ? ' + uncommitted src changes' : ''}`;
  } catch {
    // Not a git checkout.
  }
  return { peerpull: peerpullCommit, cpu, cores: os.availableParallelism(), memoryGiB: Math.round(os.totalmem() / GiB), kernel: os.release(), node: process.version, nginx: nginxVersion, wrk: wrkVersion };
}

// ---------------------------------------------------------------- main

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  // Quick mode has no time to wait out other work: it measures once and reports what it saw.
  if (opts.quick && !process.argv.includes('--quiet-wait')) opts.quietWait = 0;
  if (opts.quick && !process.argv.includes('--attempts')) opts.attempts = 1;
  if (process.platform !== 'linux') throw new Error('the benchmark reads /proc: Linux only');
  const major = Number(process.versions.node.split('.')[0]);
  if (major < 22) throw new Error(`run it on the pinned Node 22 (node_modules/.bin/node), not ${process.version}`);
  for (const [f, what] of [
    [WRK, 'wrk (apt-get install wrk)'],
    [REQLOAD_SOURCE, 'native-bench/reqload.c (the HEAD load generator)'],
    [PEERPULL_CLI, 'the build (npm run build)'],
    ...(opts.servers.includes('nginx') ? [[NGINX, 'nginx (apt-get install nginx-light)'] as const] : []),
  ] as const) {
    if (!existsSync(f)) throw new Error(`${f} is missing: install ${what}`);
  }
  const plan: Plan = opts.quick
    ? { blobSeconds: 2, manifestSeconds: 1, warmupSeconds: 1, slowClients: 32, slowBytesPerSec: 2 * MiB, slowSeconds: 3, slowBlobSize: 256 * MiB }
    : { blobSeconds: 8, manifestSeconds: 6, warmupSeconds: 1, slowClients: 32, slowBytesPerSec: 2 * MiB, slowSeconds: 15, slowBlobSize: GiB };

  const root = tempDir(await mkdtemp(path.join(os.tmpdir(), 'peerpull-bench-')));
  const layout = path.join(root, 'layout');
  const started = performance.now();
  progress(`generating content in ${root} (256 MiB blob${plan.slowBlobSize === GiB ? ', 1 GiB blob' : ''}, ~2 KiB manifest)`);
  reqload = await buildReqload(root);
  const content = await makeContent(layout, plan);
  // Bring every blob into the page cache, so no server pays for the first disk read.
  for (const d of [content.blob256, content.slowBlob]) await readFile(path.join(layout, 'blobs', 'sha256', d.digest.slice(7))).then(() => undefined);
  progress(`manifest ${content.manifest.size} bytes; blobs ${content.blob256.size} and ${content.slowBlob.size} bytes`);

  const results: Partial<Record<ServerName, ServerResult>> = {};
  for (const name of opts.servers) results[name] = await runSuite(name, content, root, plan, opts);

  const checks = buildChecks(results);
  const report = {
    command: `node dist/native-bench/registry.js ${process.argv.slice(2).join(' ')}`.trim(),
    date: new Date().toISOString(),
    machine: machine(),
    plan: { ...plan, wrkThreads: opts.wrkThreads, note: 'one server at a time; client and server share the machine; GET load: wrk (HTTP/1.1 keep-alive); HEAD load: native-bench/reqload.c (HTTP/1.1 keep-alive, one thread, compiled with cc at start), because wrk 4.1 and h2load wait for a body after a HEAD response and ab speaks only HTTP/1.0, which uWebSockets.js refuses with 505' },
    peerpullEnv: peerpullEnv(),
    content: { manifestBytes: content.manifest.size, blobBytes: content.blob256.size, slowBlobBytes: content.slowBlob.size },
    servers: results,
    checks: checks.map((c) => ({
      ...c,
      ratioVsNginx: ratio(c.values.peerpull, c.values.nginx),
      ratioVsNodeHttp: ratio(c.values.peerpull, c.values['node:http']),
    })),
    seconds: (performance.now() - started) / 1000,
  };
  if (opts.jsonFile) await writeFile(opts.jsonFile, JSON.stringify(report, null, 2) + '\n');
  if (opts.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  else {
    const m = report.machine;
    const out = [
      '',
      `peerpull registry benchmark (${opts.quick ? 'quick' : 'full'}), ${report.date}`,
      `peerpull build: ${m.peerpull} (dist/ as built by npm run build)`,
      `machine: ${m.cpu}, ${m.cores} cores (client and server share them), ${m.memoryGiB} GiB, Linux ${m.kernel}; node ${m.node}; ${m.nginx}; ${m.wrk}`,
      `load: wrk -t${opts.wrkThreads} (GET, HTTP/1.1 keep-alive), native-bench/reqload.c (HEAD, HTTP/1.1 keep-alive, one thread); blob runs ${plan.blobSeconds} s, manifest runs ${plan.manifestSeconds} s; slow clients: ${plan.slowClients} x ${plan.slowBytesPerSec / MiB} MiB/s for ${plan.slowSeconds} s on a ${content.slowBlob.size / MiB} MiB blob`,
      `content: ${content.manifest.size} B manifest, ${content.blob256.size} B blob, all in page cache`,
      ...opts.servers.map((n) => `${n}: ${results[n]!.notes.join('; ')}; other work on the machine during its load runs: at most ${results[n]!.foreignCoresMax.toFixed(2)} cores`),
      '',
      markdownTable(checks, opts.servers),
      '',
      `${checks.filter((c) => !c.validity && c.target?.met === true).length} of ${checks.filter((c) => !c.validity && c.target && c.target.met !== null).length} targets met; ${report.seconds.toFixed(0)} s` +
        (checks.some((c) => c.validity && c.target?.met === false) ? `; WARNING: other work ran on this machine during some load runs (see the last row): rerun on a quiet machine` : ''),
      '',
    ];
    process.stdout.write(out.join('\n'));
  }
  return opts.strict && checks.some((c) => !c.validity && c.target?.met === false) ? 1 : 0;
}

let code = 2;
try {
  code = await main();
} catch (err) {
  process.stderr.write(`benchmark failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  code = 2;
} finally {
  await cleanupAll();
}
process.exit(code);

// Load generators: wrk (closed-loop, keep-alive) for throughput and small requests, and slow raw
// socket clients for the memory test.

import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { start, stop } from './children.js';
import { cpuSeconds } from './proc.js';

export const WRK = '/usr/bin/wrk';

export interface WrkResult {
  seconds: number;
  requests: number;
  bytes: number;
  errors: { connect: number; read: number; write: number; status: number; timeout: number };
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
  maxMs: number;
  requestsPerSec: number;
  mibPerSec: number;
}

export interface WrkRun {
  url: string;
  method: 'GET' | 'HEAD';
  connections: number;
  threads: number;
  seconds: number;
  /** Per-request timeout (a 256 MiB body over 32 shared connections takes seconds). */
  timeoutSeconds: number;
  /** Directory for the Lua script. */
  scratch: string;
}

/**
 * The Lua script sets the method and, at the end, prints wrk's exact counters as one JSON line
 * (wrk's own report rounds bytes and times for display).
 */
function luaScript(method: string): string {
  return `wrk.method = "${method}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,"p50_us":%.0f,"p99_us":%.0f,"mean_us":%.3f,"max_us":%.0f}\\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
`;
}

/** CPU seconds of the last load-generator run (sampled every 50 ms while it ran). */
export let lastClientCpuSeconds = 0;

async function runTool(cmd: string, args: string[], limitSeconds: number): Promise<{ code: number | null; out: string; err: string }> {
  const child = start(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  let cpu = 0;
  const sampler = setInterval(() => {
    try {
      cpu = cpuSeconds(child.pid!);
    } catch {
      // Exited between samples.
    }
  }, 50);
  const killer = setTimeout(() => void stop(child, 'SIGTERM', 2000), limitSeconds * 1000);
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  clearTimeout(killer);
  clearInterval(sampler);
  lastClientCpuSeconds = cpu;
  return { code, out, err };
}

export async function runWrk(run: WrkRun): Promise<WrkResult> {
  const script = path.join(run.scratch, `wrk-${run.method.toLowerCase()}.lua`);
  await writeFile(script, luaScript(run.method));
  const args = [
    `-t${run.threads}`,
    `-c${run.connections}`,
    `-d${run.seconds}s`,
    `--timeout`,
    `${run.timeoutSeconds}s`,
    '--latency',
    '-s',
    script,
    run.url,
  ];
  const { code, out, err } = await runTool(WRK, args, run.seconds + run.timeoutSeconds + 15);
  const line = out.split('\n').find((l) => l.startsWith('WRKJSON '));
  if (code !== 0 || !line) throw new Error(`wrk ${args.join(' ')} failed (exit ${code}): ${err}${out}`);
  const j = JSON.parse(line.slice('WRKJSON '.length)) as Record<string, number>;
  const seconds = j.duration_us! / 1e6;
  return {
    seconds,
    requests: j.requests!,
    bytes: j.bytes!,
    errors: { connect: j.connect!, read: j.read!, write: j.write!, status: j.status!, timeout: j.timeout! },
    p50Ms: j.p50_us! / 1000,
    p99Ms: j.p99_us! / 1000,
    meanMs: j.mean_us! / 1000,
    maxMs: j.max_us! / 1000,
    requestsPerSec: j.requests! / seconds,
    mibPerSec: j.bytes! / seconds / 2 ** 20,
  };
}

/** Where the benchmark keeps its compiled reqload (see reqload.c). */
export const REQLOAD_SOURCE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../native-bench/reqload.c');

/** Compiles reqload.c into `dir` with the system C compiler ($CC, default cc). */
export async function buildReqload(dir: string): Promise<string> {
  const bin = path.join(dir, 'reqload');
  const cc = process.env.CC || 'cc';
  const { code, out, err } = await runTool(cc, ['-O2', '-o', bin, REQLOAD_SOURCE], 60);
  if (code !== 0) throw new Error(`${cc} -O2 ${REQLOAD_SOURCE} failed (exit ${code}): ${err}${out}`);
  return bin;
}

/**
 * HEAD (or GET) load with reqload: HTTP/1.1 keep-alive, one thread, one request in flight per
 * connection, 1 us latency histogram. Used for HEAD, which wrk 4.1 and h2load cannot do.
 */
export async function runReqload(bin: string, run: { host: string; port: number; path: string; method: 'GET' | 'HEAD'; connections: number; seconds: number }): Promise<WrkResult> {
  const args = [run.method, run.host, String(run.port), run.path, String(run.connections), String(run.seconds)];
  const { code, out, err } = await runTool(bin, args, run.seconds + 15);
  const line = out.split('\n').find((l) => l.startsWith('{'));
  if (code !== 0 || !line) throw new Error(`reqload ${args.join(' ')} failed (exit ${code}): ${err}${out}`);
  const j = JSON.parse(line) as Record<string, number>;
  return {
    seconds: j.seconds!,
    requests: j.requests!,
    bytes: j.bytes!,
    errors: { connect: j.conn_errors!, read: j.protocol_errors!, write: 0, status: j.status_errors!, timeout: 0 },
    p50Ms: j.p50_us! / 1000,
    p99Ms: j.p99_us! / 1000,
    meanMs: j.mean_us! / 1000,
    maxMs: j.max_us! / 1000,
    requestsPerSec: j.requests! / j.seconds!,
    mibPerSec: j.bytes! / j.seconds! / 2 ** 20,
  };
}

export function wrkErrorCount(r: WrkResult): number {
  // A transfer still running when wrk stops is not an error; failures to connect, bad statuses
  // and read errors (the server cut the connection) are.
  return r.errors.connect + r.errors.status + r.errors.read + r.errors.write;
}

export interface SlowClientsResult {
  clients: number;
  /** Clients that got a 200 status line. */
  ok: number;
  bytes: number;
  seconds: number;
  /** Clients whose connection failed before the end (should be 0). */
  failed: number;
}

/**
 * `clients` raw TCP clients each GET `path` and read the body at about `bytesPerSec` (a token
 * bucket: the socket is paused when ahead of schedule, so the kernel window closes and the server
 * sees backpressure), for `seconds`, then disconnect mid-body.
 */
export async function slowClients(host: string, port: number, urlPath: string, clients: number, bytesPerSec: number, seconds: number): Promise<SlowClientsResult> {
  const started = performance.now();
  const endAt = started + seconds * 1000;
  let bytes = 0;
  let ok = 0;
  let failed = 0;
  const one = () =>
    new Promise<void>((resolve) => {
      const s = net.connect(port, host);
      let got = 0;
      let head = '';
      let inBody = false;
      let timer: NodeJS.Timeout | null = null;
      const t0 = performance.now();
      const finish = () => {
        if (timer) clearTimeout(timer);
        clearTimeout(stopper);
        s.destroy();
        resolve();
      };
      const stopper = setTimeout(finish, Math.max(0, endAt - performance.now()));
      s.once('connect', () => s.write(`GET ${urlPath} HTTP/1.1\r\nHost: ${host}:${port}\r\nUser-Agent: peerpull-bench-slow\r\n\r\n`));
      s.on('data', (d: Buffer) => {
        if (!inBody) {
          head += d.toString('latin1');
          const i = head.indexOf('\r\n\r\n');
          if (i < 0) return;
          if (/^HTTP\/1\.1 200 /.test(head)) ok++;
          inBody = true;
          got += head.length - i - 4;
        } else got += d.length;
        bytes += d.length;
        // Ahead of schedule: stop reading until the schedule catches up.
        const dueMs = (got / bytesPerSec) * 1000 - (performance.now() - t0);
        if (dueMs > 5) {
          s.pause();
          timer = setTimeout(() => {
            timer = null;
            s.resume();
          }, dueMs);
        }
      });
      s.once('error', () => {
        failed++;
        finish();
      });
      s.once('end', () => {
        // The server closed before we were done reading: only a failure if the body was not complete.
        if (performance.now() < endAt - 50) failed++;
        finish();
      });
    });
  await Promise.all(Array.from({ length: clients }, one));
  return { clients, ok, bytes, seconds: (performance.now() - started) / 1000, failed };
}

// The three servers under test, all serving one OCI image layout on 127.0.0.1 with the same URL
// shape: peerpull (`peerpull serve`, oci-layout store), nginx with sendfile (one worker process),
// and a plain node:http + fs.createReadStream server. Each is its own OS process, so its CPU time
// and memory can be read from /proc.

import type { ChildProcess } from 'node:child_process';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { adopt, reapAdopted, start, stop } from './children.js';
import { childPids } from './proc.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** dist/ of the repository: this file is dist/native-bench/servers.js. */
const DIST = path.resolve(HERE, '..');
export const PEERPULL_CLI = path.join(DIST, 'src/main/cli.js');
const NODE_HTTP_SERVER = path.join(HERE, 'node-http-server.js');
export const NGINX = '/usr/sbin/nginx';

export type ServerName = 'peerpull' | 'nginx' | 'node:http';
export const SERVER_NAMES: ServerName[] = ['peerpull', 'nginx', 'node:http'];

export interface RunningServer {
  name: ServerName;
  host: string;
  port: number;
  /** Every process whose CPU and memory count for this server. */
  pids(): number[];
  /** How it was run, for the report. */
  notes: string[];
  stop(): Promise<void>;
}

export interface ServeOptions {
  layout: string;
  /** Scratch directory for this server's config, logs and pid files. */
  scratch: string;
  /** Extra PEERPULL_* settings for peerpull (chunk size, credits, workers...). */
  peerpullEnv: Record<string, string>;
  /** Extra node flags for peerpull (e.g. --cpu-prof). */
  peerpullNodeArgs: string[];
  /** The peerpull CLI to run (default: this build's dist/src/main/cli.js); for A/B runs of a patched build. */
  peerpullCli?: string;
}

const HOST = '127.0.0.1';

function lines(stream: NodeJS.ReadableStream, onLine: (line: string) => void): void {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  });
}

function exitError(child: ChildProcess, what: string, stderr: () => string): Promise<never> {
  return new Promise((_, reject) =>
    child.once('exit', (code, signal) => reject(new Error(`${what} exited early (code ${code}, signal ${signal}): ${stderr().slice(-2000)}`))),
  );
}

function timeout(ms: number, what: string): { promise: Promise<never>; clear(): void } {
  let t: NodeJS.Timeout;
  const promise = new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms)));
  return { promise, clear: () => clearTimeout(t) };
}

export async function startPeerpull(opts: ServeOptions): Promise<RunningServer> {
  const dataDir = path.join(opts.scratch, 'data');
  await mkdir(dataDir, { recursive: true });
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    PEERPULL_STORE: `oci-layout:${opts.layout}`,
    PEERPULL_REGISTRY_ADDR: `${HOST}:0`,
    PEERPULL_METRICS_ADDR: `${HOST}:0`,
    PEERPULL_P2P_ADDR: `${HOST}:0`,
    PEERPULL_DATA_DIR: dataDir,
    PEERPULL_SHUTDOWN_GRACE: '1s',
    PEERPULL_LOG_LEVEL: 'info',
    ...opts.peerpullEnv,
  };
  const child = start(process.execPath, [...opts.peerpullNodeArgs, opts.peerpullCli ?? PEERPULL_CLI, 'serve'], { env, stdio: ['ignore', 'pipe', 'pipe'], cwd: opts.scratch });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  let registryPort = 0;
  let workers: unknown;
  const ready = new Promise<void>((resolve) => {
    lines(child.stdout!, (line) => {
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      if (rec.msg === 'listening') {
        registryPort = rec.registryPort as number;
        workers = rec.workers;
      }
      if (rec.msg === 'content source ready') resolve();
      if (rec.level === 'error' || rec.level === 'warn') process.stderr.write(`  peerpull: ${line}\n`);
    });
  });
  const t = timeout(30_000, 'peerpull start');
  try {
    await Promise.race([ready, exitError(child, 'peerpull', () => stderr), t.promise]);
  } catch (err) {
    await stop(child);
    throw err;
  } finally {
    t.clear();
  }
  const settings = Object.entries(opts.peerpullEnv).map(([k, v]) => `${k}=${v}`);
  return {
    name: 'peerpull',
    host: HOST,
    port: registryPort,
    pids: () => [child.pid!],
    notes: [
      `peerpull serve${opts.peerpullCli ? ` (${opts.peerpullCli})` : ''} (oci-layout store), ${workers} pool threads${settings.length ? `, ${settings.join(' ')}` : ', default settings'}${opts.peerpullNodeArgs.length ? `, node ${opts.peerpullNodeArgs.join(' ')}` : ''}`,
    ],
    stop: () => stop(child, 'SIGTERM', 10_000),
  };
}

/** A free loopback port (nginx cannot listen on port 0 and report it). */
async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve, reject) => srv.once('error', reject).listen(0, HOST, resolve));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

async function waitForPort(port: number, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, HOST);
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${HOST}:${port} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export function nginxConfig(opts: { layout: string; prefix: string; port: number; user: string | null }): string {
  const p = (f: string) => path.join(opts.prefix, f);
  const blobs = path.join(opts.layout, 'blobs', 'sha256');
  return `# generated by peerpull native-bench: one worker, sendfile, no access log
${opts.user ? `user ${opts.user};\n` : ''}worker_processes 1;
pid ${p('nginx.pid')};
error_log ${p('error.log')} warn;
events {
  worker_connections 1024;
}
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path ${p('client_body')};
  proxy_temp_path ${p('proxy')};
  fastcgi_temp_path ${p('fastcgi')};
  uwsgi_temp_path ${p('uwsgi')};
  scgi_temp_path ${p('scgi')};
  types { }
  default_type application/octet-stream;
  server {
    listen ${HOST}:${opts.port};
    server_name bench;
    location ~ "^/v2/.+/blobs/sha256:(?<hex>[0-9a-f]{64})$" {
      alias ${blobs}/$hex;
      add_header Docker-Content-Digest sha256:$hex;
    }
    location ~ "^/v2/.+/manifests/sha256:(?<hex>[0-9a-f]{64})$" {
      default_type application/vnd.oci.image.manifest.v1+json;
      alias ${blobs}/$hex;
      add_header Docker-Content-Digest sha256:$hex;
      add_header Docker-Distribution-API-Version registry/2.0;
    }
    location / {
      return 404;
    }
  }
}
`;
}

export async function startNginx(opts: ServeOptions): Promise<RunningServer> {
  await mkdir(opts.scratch, { recursive: true });
  const port = await freePort();
  const conf = path.join(opts.scratch, 'nginx.conf');
  // As root, nginx's workers drop to `nobody` unless told otherwise: keep them as root so they
  // can read the layout in our private temp dir.
  const user = process.getuid?.() === 0 ? 'root' : null;
  await writeFile(conf, nginxConfig({ layout: opts.layout, prefix: opts.scratch, port, user }));
  await chmod(opts.scratch, 0o755);
  const child = start(NGINX, ['-p', opts.scratch, '-e', path.join(opts.scratch, 'error.log'), '-c', conf, '-g', 'daemon off;'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: opts.scratch,
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdout!.resume();
  const t = timeout(15_000, 'nginx start');
  try {
    await Promise.race([waitForPort(port, 15_000), exitError(child, 'nginx', () => stderr), t.promise]);
    // The master forks its worker right after binding: wait for it, then own it by PID.
    const deadline = Date.now() + 5000;
    while (childPids(child.pid!).length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  } catch (err) {
    await stop(child);
    throw err;
  } finally {
    t.clear();
  }
  const workers = childPids(child.pid!);
  if (workers.length === 0) {
    await stop(child);
    throw new Error('nginx started no worker process');
  }
  for (const w of workers) adopt(w);
  return {
    name: 'nginx',
    host: HOST,
    port,
    // Workers may be respawned by the master; read them fresh every time.
    pids: () => [child.pid!, ...childPids(child.pid!)],
    notes: [`nginx (${NGINX}) 1 worker process, sendfile on, access_log off; CPU and RSS summed over master + worker`],
    async stop() {
      const all = [...workers, ...childPids(child.pid!)];
      for (const w of all) adopt(w);
      // SIGTERM: nginx's fast shutdown of master and workers; the workers are then reaped by PID.
      await stop(child, 'SIGTERM', 5000);
      await reapAdopted(all);
    },
  };
}

export async function startNodeHttp(opts: ServeOptions): Promise<RunningServer> {
  const child = start(process.execPath, [NODE_HTTP_SERVER, opts.layout, HOST, '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const portP = new Promise<number>((resolve) => lines(child.stdout!, (l) => resolve((JSON.parse(l) as { port: number }).port)));
  const t = timeout(15_000, 'node:http start');
  let port: number;
  try {
    port = await Promise.race([portP, exitError(child, 'node:http server', () => stderr), t.promise]);
  } catch (err) {
    await stop(child);
    throw err;
  } finally {
    t.clear();
  }
  return {
    name: 'node:http',
    host: HOST,
    port,
    pids: () => [child.pid!],
    notes: [`node:http ${process.version}: stat + fs.createReadStream (64 KiB reads) piped to the response, per request`],
    stop: () => stop(child, 'SIGTERM', 5000),
  };
}

export function startServer(name: ServerName, opts: ServeOptions): Promise<RunningServer> {
  switch (name) {
    case 'peerpull':
      return startPeerpull(opts);
    case 'nginx':
      return startNginx(opts);
    case 'node:http':
      return startNodeHttp(opts);
  }
}

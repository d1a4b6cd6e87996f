// A real DNS server for bootstrap tests: Debian's dnsmasq serving A records for one name from
// an addn-hosts file, on 127.0.0.1 and a port of our own. Reload with SIGHUP; stop by PID.

import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { constants, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Resolver } from 'node:dns/promises';

const live = new Map<ChildProcess, string>();
process.on('exit', () => {
  for (const [c, dir] of live) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

const CANDIDATES = ['/usr/sbin/dnsmasq', '/usr/bin/dnsmasq', '/sbin/dnsmasq'];

export async function findDnsmasq(): Promise<string> {
  for (const c of CANDIDATES) {
    try {
      await access(c, constants.X_OK);
      return c;
    } catch {
      // next
    }
  }
  throw new Error(`dnsmasq not found (looked in ${CANDIDATES.join(', ')}): install the Debian package dnsmasq-base (npm test does, via scripts/test-deps.sh)`);
}

/** A free UDP+TCP port on 127.0.0.1 (dnsmasq listens on both). */
async function freePort(): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = net.createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const udpFree = await new Promise<boolean>((resolve) => {
      import('node:dgram').then(({ createSocket }) => {
        const u = createSocket('udp4');
        u.once('error', () => resolve(false));
        u.bind(port, '127.0.0.1', () => u.close(() => resolve(true)));
      });
    });
    if (udpFree) return port;
  }
  throw new Error('no free port for dnsmasq');
}

export interface DnsmasqOptions {
  /**
   * Concurrent TCP queries (dnsmasq forks one process per connection; its default is 20).
   * Answers past 512 bytes (~28 A records) go over TCP, so a cold start of hundreds of nodes
   * needs more: with the default, 1,000 simultaneous resolves of a 1,000-record name lost
   * about 80% to timeouts here.
   */
  maxTcpConnections?: number;
}

export class Dnsmasq {
  private constructor(
    readonly port: number,
    readonly dir: string,
    readonly hostsFile: string,
    private readonly child: ChildProcess,
    private output: { text: string },
  ) {}

  /** The server address for PEERPULL_DNS_SERVERS / Resolver.setServers. */
  get server(): string {
    return `127.0.0.1:${this.port}`;
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Starts dnsmasq serving `records` (name -> IPs). Fails loudly when dnsmasq is missing. */
  static async start(records: Record<string, string[]>, opts: DnsmasqOptions = {}): Promise<Dnsmasq> {
    const bin = await findDnsmasq();
    const dir = await mkdtemp(path.join(os.tmpdir(), 'peerpull-dns-'));
    const hostsFile = path.join(dir, 'hosts');
    await writeFile(hostsFile, hostsText(records));
    const port = await freePort();
    const child = spawn(
      bin,
      [
        '--keep-in-foreground',
        '--no-resolv',
        '--no-hosts',
        '--bind-interfaces',
        '--listen-address=127.0.0.1',
        `--port=${port}`,
        `--addn-hosts=${hostsFile}`,
        `--pid-file=${path.join(dir, 'pid')}`,
        // No caching of answers from elsewhere and no upstream: everything is local.
        '--cache-size=0',
        '--local-ttl=0',
        '--log-facility=-',
        '--user=' + (process.getuid?.() === 0 ? 'root' : os.userInfo().username),
        ...(opts.maxTcpConnections ? [`--max-tcp-connections=${opts.maxTcpConnections}`] : []),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    live.set(child, dir);
    child.once('exit', () => live.delete(child));
    const output = { text: '' };
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (output.text += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (output.text += d));
    const d = new Dnsmasq(port, dir, hostsFile, child, output);
    const exited = new Promise<never>((_, reject) =>
      child.once('exit', (code) => reject(new Error(`dnsmasq exited with code ${code}: ${output.text.slice(-2000)}`))),
    );
    exited.catch(() => {});
    // Ready when it answers.
    const r = new Resolver({ timeout: 200, tries: 1 });
    r.setServers([d.server]);
    const name = Object.keys(records)[0] ?? 'localhost';
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (child.exitCode !== null) await exited;
      try {
        await Promise.race([r.resolve4(name), exited]);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENODATA' || code === 'ENOTFOUND') break;
        if (child.exitCode !== null) await exited;
        if (Date.now() > deadline) {
          await d.stop();
          throw new Error(`dnsmasq did not answer on ${d.server}: ${(err as Error).message}; output: ${output.text.slice(-2000)}`);
        }
        await new Promise((res) => setTimeout(res, 50));
      }
    }
    return d;
  }

  /** Rewrites the records and makes dnsmasq reload them (SIGHUP re-reads addn-hosts). */
  async update(records: Record<string, string[]>): Promise<void> {
    await writeFile(this.hostsFile, hostsText(records));
    process.kill(this.pid, 'SIGHUP');
    // dnsmasq reloads synchronously on the signal; give it a moment to get to it.
    await new Promise((res) => setTimeout(res, 100));
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const done = new Promise((res) => this.child.once('exit', res));
      process.kill(this.pid, 'SIGTERM');
      const t = setTimeout(() => {
        if (this.child.exitCode === null) process.kill(this.pid, 'SIGKILL');
      }, 2000);
      await done;
      clearTimeout(t);
    }
    await rm(this.dir, { recursive: true, force: true });
  }

  logs(): string {
    return this.output.text;
  }
}

function hostsText(records: Record<string, string[]>): string {
  return Object.entries(records)
    .flatMap(([name, ips]) => ips.map((ip) => `${ip} ${name}`))
    .join('\n') + '\n';
}

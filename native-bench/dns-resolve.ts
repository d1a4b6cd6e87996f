// What one bootstrap DNS resolve costs as the cluster grows: CPU of the resolving process and of
// the DNS server (dnsmasq) per resolve of a headless name listing N addresses, the way
// src/p2p/bootstrap.ts resolves it (DnsMembers: one kept resolver per node, A and AAAA). Every
// node resolves every PEERPULL_BOOTSTRAP_INTERVAL, so this per-node figure times N / interval is
// what the whole cluster spends on membership, and in the scale harness it comes out of the same
// two cores as everything else.
//
// Two resolvers per size, in the same run: peerpull's (src/shared/dns.ts) and the baseline, Node's
// own (node:dns, c-ares), which DnsMembers used before; each prints ms of CPU per resolve, and
// peerpull's the ratio to the baseline.
//
//   npx tsc -p tsconfig.json && node_modules/.bin/node dist/native-bench/dns-resolve.js [--sizes 20,250,1000,2000,4000] [--resolvers 100] [--rounds 3] [--json]
//
// CPU profiles do not show the baseline's cost: c-ares parses answers in the event loop's poll
// phase, outside JavaScript, which V8's profiler counts as idle. Thread CPU time does show it.

import { readFileSync } from 'node:fs';
import { Resolver } from 'node:dns/promises';
import { DnsMembers } from '../src/p2p/bootstrap.js';
import { Dnsmasq } from '../test/support/dnsmasq.js';

interface Args {
  sizes: number[];
  resolvers: number;
  rounds: number;
  json: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { sizes: [20, 250, 1000, 2000, 4000], resolvers: 100, rounds: 3, json: false };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    if (key === '--json') {
      a.json = true;
      continue;
    }
    const v = argv[++i];
    if (key === '--sizes') {
      a.sizes = (v ?? '').split(',').map(Number);
      // One DNS message holds at most ~4,090 A records (README, What DNS does at this size).
      if (a.sizes.length === 0 || a.sizes.some((n) => !Number.isInteger(n) || n < 1 || n > 4090)) throw new Error('--sizes takes record counts from 1 to 4090, comma-separated');
      continue;
    }
    const field = ({ '--resolvers': 'resolvers', '--rounds': 'rounds' } as const)[key as '--resolvers'];
    const n = Number(v);
    if (!field || !Number.isInteger(n) || n < 1) throw new Error(`unknown argument or not a positive integer: ${key} ${v ?? ''} (see the header of native-bench/dns-resolve.ts)`);
    a[field] = n;
  }
  return a;
}

/** CPU seconds a process has used, children reaped included (dnsmasq forks one per TCP query). */
function processCpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]);
  return (ticks * 1000) / 100; // USER_HZ is 100 on Linux
}

interface Resolves {
  resolve(): Promise<string[]>;
}

/** The baseline: Node's resolver, asked as DnsMembers asked it before peerpull had its own (5bb9417). */
function nodeDns(name: string, server: string): Resolves {
  const r = new Resolver({ timeout: 10_000, tries: 2 });
  r.setServers([server]);
  return {
    resolve: async () => {
      const [v4, v6] = await Promise.allSettled([r.resolve4(name), r.resolve6(name)]);
      if (v4.status === 'rejected') throw v4.reason;
      return v6.status === 'fulfilled' ? [...v4.value, ...v6.value] : v4.value;
    },
  };
}

type Row = { size: number; resolver: string; clientMs: number; serverMs: number; wallMs: number };

async function measure(size: number, a: Args, which: 'peerpull' | 'node:dns'): Promise<Row> {
  const name = 'peerpull.bench.test';
  const ips = Array.from({ length: size }, (_, i) => `10.${9 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`);
  const dns = await Dnsmasq.start({ [name]: ips }, { maxTcpConnections: 1000 });
  try {
    const nodes: Resolves[] = Array.from({ length: a.resolvers }, () => (which === 'peerpull' ? new DnsMembers(name, [dns.server], 10_000) : nodeDns(name, dns.server)));
    // A first round fills the nodes' caches as a running node's are (an unchanged answer is not
    // sorted again): what is measured is a settled node's periodic resolve.
    await Promise.all(nodes.map((n) => n.resolve()));
    const s0 = processCpuMs(dns.pid);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    for (let r = 0; r < a.rounds; r++) {
      const got = await Promise.all(nodes.map((n) => n.resolve()));
      const short = got.find((g) => g.length !== size);
      if (short) throw new Error(`a resolve of ${size} records returned ${short.length}`);
    }
    const c = process.cpuUsage(c0);
    const count = a.resolvers * a.rounds;
    return { size, resolver: which, clientMs: (c.user + c.system) / 1000 / count, serverMs: (processCpuMs(dns.pid) - s0) / count, wallMs: (performance.now() - t0) / a.rounds };
  } finally {
    await dns.stop();
  }
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const rows: Array<{ base: Row; ours: Row }> = [];
  for (const size of a.sizes) rows.push({ base: await measure(size, a, 'node:dns'), ours: await measure(size, a, 'peerpull') });
  if (a.json) {
    process.stdout.write(`${JSON.stringify({ resolvers: a.resolvers, rounds: a.rounds, rows: rows.map((r) => ({ ...r, clientRatio: r.ours.clientMs / r.base.clientMs })) })}\n`);
    return;
  }
  process.stdout.write(`CPU per resolve (${a.resolvers} resolvers at once, ${a.rounds} rounds; resolver, then dnsmasq), peerpull's against node:dns:\n`);
  for (const { base, ours } of rows) {
    process.stdout.write(
      `  ${String(base.size).padStart(5)} records  node:dns ${base.clientMs.toFixed(2)} ms, ${base.serverMs.toFixed(2)} ms  peerpull ${ours.clientMs.toFixed(2)} ms (${(ours.clientMs / base.clientMs).toFixed(2)}x), ${ours.serverMs.toFixed(2)} ms\n`,
    );
  }
}

main().catch((err: Error) => {
  process.stderr.write(`dns-resolve: ${err.message}\n`);
  process.exit(1);
});

// What one bootstrap DNS resolve costs as the cluster grows: CPU of the resolving process (Node's
// resolver, c-ares) and of the DNS server (dnsmasq) per resolve of a headless name listing N
// addresses, the way src/p2p/bootstrap.ts resolves it (one kept Resolver per node, A then
// AAAA). Every node resolves every PEERPULL_BOOTSTRAP_INTERVAL, so this per-node figure times
// N / interval is what the whole cluster spends on membership, and in the scale harness it comes
// out of the same two cores as everything else.
//
// The first size given is the baseline; each size prints ms of CPU per resolve and the ratio to
// the baseline of the same run.
//
//   npx tsc -p tsconfig.json && node_modules/.bin/node dist/native-bench/dns-resolve.js [--sizes 20,250,1000,2000,4000] [--resolvers 100] [--rounds 3] [--json]
//
// CPU profiles do not show this cost: c-ares parses answers in the event loop's poll phase,
// outside JavaScript, which V8's profiler counts as idle. Thread CPU time does show it.

import { readFileSync } from 'node:fs';
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

async function measure(size: number, a: Args): Promise<{ size: number; clientMs: number; serverMs: number; wallMs: number }> {
  const name = 'peerpull.bench.test';
  const ips = Array.from({ length: size }, (_, i) => `10.${9 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`);
  const dns = await Dnsmasq.start({ [name]: ips }, { maxTcpConnections: 1000 });
  try {
    const nodes = Array.from({ length: a.resolvers }, () => new DnsMembers(name, [dns.server], 10_000));
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
    return { size, clientMs: (c.user + c.system) / 1000 / count, serverMs: (processCpuMs(dns.pid) - s0) / count, wallMs: (performance.now() - t0) / a.rounds };
  } finally {
    await dns.stop();
  }
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const rows = [];
  for (const size of a.sizes) rows.push(await measure(size, a));
  const base = rows[0];
  if (a.json) {
    process.stdout.write(`${JSON.stringify({ resolvers: a.resolvers, rounds: a.rounds, rows: rows.map((r) => ({ ...r, clientRatio: r.clientMs / base.clientMs })) })}\n`);
    return;
  }
  process.stdout.write(`CPU per resolve (${a.resolvers} resolvers at once, ${a.rounds} rounds), against ${base.size} records:\n`);
  for (const r of rows) {
    process.stdout.write(
      `  ${String(r.size).padStart(5)} records  resolver ${r.clientMs.toFixed(2)} ms (${(r.clientMs / base.clientMs).toFixed(1)}x)  dnsmasq ${r.serverMs.toFixed(2)} ms  round of ${a.resolvers} ${r.wallMs.toFixed(0)} ms\n`,
    );
  }
}

main().catch((err: Error) => {
  process.stderr.write(`dns-resolve: ${err.message}\n`);
  process.exit(1);
});

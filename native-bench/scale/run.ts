// The scale harness: N real peerpull p2p stacks (src/p2p/node.ts, production configuration)
// on their own loopback IPs, several host processes of up to --per-host nodes each, a real
// dnsmasq answering the headless name with every A record; the scenarios of scenarios.ts for
// each N. Writes docs/scale/results.json and the SVG plots beside it.
//
//   npm run bench:scale -- --nodes 100,300,1000 [--scenarios crowd,isolation,churn,partition]
//                          [--per-host 200] [--keys 1] [--rate 20] [--lookups 400] [--deadline 500] [--settle 5] [--held 15] [--replace-after 0] [--bootstrap-interval 15] [--names 1] [--dilation 1]
//                          [--out docs/scale] [--no-plots] [--no-netns]
//
// Cold start and steady state always run; --scenarios picks the rest (default: all four,
// partition only where it can run). --names K lists the nodes under K bootstrap names (crowd is
// then the only other scenario). As root with unshare it re-executes itself in a private
// network namespace (everything it starts lives and dies there); the partition scenario needs
// that and nft (Debian nftables). --dilation K runs every clock and timer of the run K times
// slower than the wall clock (dilation.ts): the cores' work per second of protocol time is
// divided by K, as if the machine had K times the cores.

import { spawn } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { installDilation } from './dilation.js';
import { loopbackUp, nftAvailable } from './netfilter.js';
import { writePlots } from './plots.js';
import { DEFAULTS, runScale, type ScaleResult } from './scenarios.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const IN_NETNS = 'PEERPULL_SCALE_NETNS';

interface Args {
  nodes: number[];
  scenarios: Set<string> | undefined;
  perHost: number;
  keys: number;
  rate: number;
  lookups: number;
  deadline: number;
  settle: number;
  held: number;
  replaceAfter: number;
  bootstrapInterval: number;
  names: number;
  dilation: number;
  out: string;
  plots: boolean;
  netns: boolean;
}

/** The options that take one positive number, and the field each sets. */
const NUMERIC_OPTIONS: Record<string, 'perHost' | 'keys' | 'rate' | 'lookups' | 'deadline' | 'settle' | 'held' | 'replaceAfter' | 'bootstrapInterval' | 'names' | 'dilation'> = {
  '--per-host': 'perHost',
  '--keys': 'keys',
  '--rate': 'rate',
  '--lookups': 'lookups',
  '--deadline': 'deadline',
  '--settle': 'settle',
  '--held': 'held',
  '--replace-after': 'replaceAfter',
  '--bootstrap-interval': 'bootstrapInterval',
  '--names': 'names',
  '--dilation': 'dilation',
};

function parseArgs(argv: string[]): Args {
  const a: Args = { nodes: [100, 300, 1000], scenarios: undefined, perHost: DEFAULTS.nodesPerHost, keys: DEFAULTS.keysPerNode, rate: DEFAULTS.lookupRate, lookups: DEFAULTS.steadyLookups, deadline: DEFAULTS.lookupDeadlineMs, settle: DEFAULTS.settleMs / 1000, held: DEFAULTS.heldMs / 1000, replaceAfter: DEFAULTS.replaceAfterMs / 1000, bootstrapInterval: DEFAULTS.bootstrapIntervalMs / 1000, names: DEFAULTS.names, dilation: 1, out: path.join(REPO, 'docs/scale'), plots: true, netns: true };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    const num = () => {
      i++;
      const x = Number(v);
      if (!Number.isFinite(x) || x <= 0) throw new Error(`${argv[i - 1]} needs a positive number`);
      return x;
    };
    const numeric = NUMERIC_OPTIONS[argv[i]!];
    if (numeric) {
      a[numeric] = num();
      continue;
    }
    switch (argv[i]) {
      case '--nodes':
        a.nodes = v.split(',').map(Number);
        i++;
        break;
      case '--scenarios':
        a.scenarios = new Set(v.split(',').filter(Boolean));
        for (const x of a.scenarios) if (!['crowd', 'isolation', 'churn', 'partition'].includes(x)) throw new Error(`unknown scenario ${x}`);
        i++;
        break;
      case '--out':
        a.out = path.resolve(v);
        i++;
        break;
      case '--no-plots':
        a.plots = false;
        break;
      case '--no-netns':
        a.netns = false;
        break;
      default:
        throw new Error(`unknown argument ${argv[i]} (see the header of native-bench/scale/run.ts)`);
    }
  }
  return a;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.netns && process.env[IN_NETNS] !== '1' && process.getuid?.() === 0) {
    // Re-run inside a network namespace of our own: loopback traffic and nftables rules stay there.
    const child = spawn('unshare', ['--net', '--', process.execPath, ...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
      stdio: 'inherit',
      env: { ...process.env, [IN_NETNS]: '1' },
    });
    const forward = (sig: NodeJS.Signals) => child.kill(sig);
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    child.once('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
    // The child does the work; this process only waits for it to exit.
    await new Promise<never>(() => {});
  }
  if (process.env[IN_NETNS] === '1') await loopbackUp();
  // Before anything starts: the hosts forked later inherit it (and the epoch) through the environment.
  if (args.dilation !== 1) {
    installDilation(args.dilation, Date.now());
    process.stderr.write(`scale: time dilated ${args.dilation}x: every duration below is protocol time, ${args.dilation}x as long on the wall clock\n`);
  }
  const canPartition = process.env[IN_NETNS] === '1' && (await nftAvailable());
  const want = (s: string) => args.scenarios?.has(s) ?? (args.names <= 1 || s === 'crowd');
  if (args.scenarios?.has('partition') && !canPartition) {
    throw new Error('the partition scenario needs root, unshare and nft (Debian nftables): it is a real packet drop in a private network namespace');
  }
  if (!args.scenarios && !canPartition && args.names <= 1) process.stderr.write('scale: no partition scenario (needs root, unshare and nft)\n');
  const resultsFile = path.join(args.out, 'results.json');
  let previous: Record<string, ScaleResult> = {};
  try {
    previous = JSON.parse(await readFile(resultsFile, 'utf8'));
  } catch {
    // first run
  }
  let failedSizes = 0;
  for (const n of args.nodes) {
    const log = (m: string) => process.stderr.write(`[N=${n} ${new Date().toISOString().slice(11, 19)}] ${m}\n`);
    const t0 = Date.now();
    const progress: Partial<ScaleResult> = {};
    // A time box (timeout, Ctrl-C) keeps what was measured so far; the cluster dies with us.
    const cut = (sig: NodeJS.Signals) => {
      if (progress.coldStart) previous[String(n)] = { ...progress, incomplete: `stopped by ${sig} after ${Math.round((Date.now() - t0) / 1000)} s` } as ScaleResult;
      void mkdir(args.out, { recursive: true })
        .then(() => writeFile(resultsFile, JSON.stringify(previous, null, 1) + '\n'))
        .then(() => (args.plots ? writePlots(previous, args.out) : undefined))
        .finally(() => process.exit(130));
    };
    process.once('SIGTERM', cut);
    process.once('SIGINT', cut);
    try {
      const r = await runScale({ progress, ...DEFAULTS, n, nodesPerHost: args.perHost, keysPerNode: args.keys, lookupRate: args.rate, steadyLookups: args.lookups, lookupDeadlineMs: args.deadline, settleMs: args.settle * 1000, heldMs: args.held * 1000, replaceAfterMs: args.replaceAfter * 1000, bootstrapIntervalMs: args.bootstrapInterval * 1000, names: args.names, crowd: want('crowd'), isolation: want('isolation'), churn: want('churn'), partition: want('partition') && canPartition, log });
      log(`done in ${Math.round((Date.now() - t0) / 1000)} s`);
      process.stdout.write(JSON.stringify(r) + '\n');
      previous[String(n)] = r;
      await mkdir(args.out, { recursive: true });
      await writeFile(resultsFile, JSON.stringify(previous, null, 1) + '\n');
    } catch (err) {
      failedSizes++;
      log(`failed: ${(err as Error).message}`);
      if (progress.coldStart) {
        previous[String(n)] = { ...progress, incomplete: (err as Error).message } as ScaleResult;
        await mkdir(args.out, { recursive: true });
        await writeFile(resultsFile, JSON.stringify(previous, null, 1) + '\n');
      }
      const partial = (err as { partial?: unknown }).partial;
      if (partial) process.stdout.write(JSON.stringify({ n, failed: (err as Error).message, ...partial }) + '\n');
    }
    process.removeAllListeners('SIGTERM');
    process.removeAllListeners('SIGINT');
  }
  if (args.plots && Object.keys(previous).length > 0) {
    await mkdir(args.out, { recursive: true });
    await writePlots(previous, args.out);
  }
  // A size that failed is kept in the results as incomplete, and the run says so by its exit code.
  if (failedSizes > 0) throw new Error(`${failedSizes} of ${args.nodes.length} sizes failed (see above)`);
}

main().then(
  // Host processes hold IPC channels open: leave explicitly once the results are written.
  () => process.exit(0),
  (err: Error) => {
    process.stderr.write(`scale: ${err.message}\n`);
    process.exit(1);
  },
);

// What finding a key's IP holders costs (src/p2p/ip-holders.ts): a scan of the whole DNS answer
// per key (the baseline, how node.ts did it until 2026-12-07) against the index sorted once per
// answer. Two uses are timed, each as the baseline and the index in the same run, in rotating
// order, and printed as a ratio:
//   lookup   the 6 holders of one key (every lookup, every record pushed);
//   change   the DNS answer changed (100 of N replaced) and a node advertising K keys finds, per
//            key, its holders under the old and the new answer (ipRehome); the index is built
//            for the new answer inside the timing.
//
//   npx tsc -p tsconfig.json && node_modules/.bin/node dist/native-bench/ip-holders.js [--members 1000,4000] [--keys 1,100,2000] [--reps 5] [--json]

import { randomBytes } from 'node:crypto';
import { IpHolderIndex, ipPosition, kadIdOf, nearestIps } from '../src/p2p/ip-holders.js';

interface Args {
  members: number[];
  keys: number[];
  reps: number;
  json: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { members: [1000, 4000], keys: [1, 100, 2000], reps: 5, json: false };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    if (key === '--json') {
      a.json = true;
      continue;
    }
    const list = (argv[++i] ?? '').split(',').map(Number);
    if (!list.every((v) => Number.isInteger(v) && v > 0)) throw new Error(`bad argument ${key} ${argv[i] ?? ''} (see the header of native-bench/ip-holders.ts)`);
    if (key === '--members') a.members = list;
    else if (key === '--keys') a.keys = list;
    else if (key === '--reps' && list.length === 1) a.reps = list[0];
    else throw new Error(`unknown argument ${key} (see the header of native-bench/ip-holders.ts)`);
  }
  return a;
}

const HOLDERS = 6;

function answerOf(size: number, offset = 0): string[] {
  return Array.from({ length: size }, (_, i) => {
    const n = i + offset;
    return `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`;
  });
}

function ms(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median ms of the baseline and of the contender, each warmed once, then run alternately first. */
function pair(baseline: () => void, contender: () => void, reps: number): { scanMs: number; indexMs: number } {
  baseline();
  contender();
  const b: number[] = [];
  const c: number[] = [];
  for (let r = 0; r < reps; r++) {
    if (r % 2) (c.push(ms(contender)), b.push(ms(baseline)));
    else (b.push(ms(baseline)), c.push(ms(contender)));
  }
  return { scanMs: median(b), indexMs: median(c) };
}

const args = parseArgs(process.argv.slice(2));
const rows: Array<{ use: string; members: number; keys: number; scanMs: number; indexMs: number; ratio: number }> = [];
let sink = 0;

for (const members of args.members) {
  const before = answerOf(members);
  // 100 nodes replaced (the harness's churn at N = 1,000): the first 100 gone, 100 new ones.
  const after = [...before.slice(100), ...answerOf(100, members)];
  // Every position hashed before timing, as a running node has them (ipPosition keeps them).
  for (const ip of [...before, ...after]) ipPosition(ip);
  const beforeIndex = new IpHolderIndex(before);

  // lookup: the holders of 2,000 random keys, one at a time
  const lookupKeys = Array.from({ length: 2000 }, () => kadIdOf(randomBytes(34)));
  const scan = () => lookupKeys.forEach((t) => (sink += nearestIps(t, before, HOLDERS).length));
  const index = () => lookupKeys.forEach((t) => (sink += beforeIndex.nearest(t, HOLDERS).length));
  const lookup = pair(scan, index, args.reps);
  const perKey = (v: number) => v / lookupKeys.length;
  rows.push({ use: 'lookup', members, keys: 1, scanMs: perKey(lookup.scanMs), indexMs: perKey(lookup.indexMs), ratio: lookup.scanMs / lookup.indexMs });

  // change: every advertised key's holders under the old and the new answer
  for (const keys of args.keys) {
    const targets = Array.from({ length: keys }, () => kadIdOf(randomBytes(34)));
    const scanChange = () => targets.forEach((t) => (sink += nearestIps(t, before, HOLDERS).length + nearestIps(t, after, HOLDERS).length));
    const indexChange = () => {
      const afterIndex = new IpHolderIndex(after);
      targets.forEach((t) => (sink += beforeIndex.nearest(t, HOLDERS).length + afterIndex.nearest(t, HOLDERS).length));
    };
    const change = pair(scanChange, indexChange, args.reps);
    rows.push({ use: 'change', members, keys, ...change, ratio: change.scanMs / change.indexMs });
  }
}

if (sink < 0) console.log(sink); // keeps the work from being optimised away
if (args.json) console.log(JSON.stringify({ reps: args.reps, rows }));
else {
  console.log(`IP holders (${HOLDERS} per key), median of ${args.reps} runs; scan = the whole answer per key (baseline), index = src/p2p/ip-holders.ts:`);
  for (const r of rows) {
    const what = r.use === 'lookup' ? `lookup, ${r.members} members (per key)` : `answer change, ${r.members} members, ${r.keys} keys`;
    console.log(`  ${what.padEnd(42)} scan ${r.scanMs.toFixed(4)} ms, index ${r.indexMs.toFixed(4)} ms: ${r.ratio >= 1 ? `${r.ratio.toFixed(1)}x faster` : `${(1 / r.ratio).toFixed(1)}x slower`}`);
  }
}

// What one p2p connection costs: CPU (both ends, in one process) to open a connection between
// two nodes on loopback, let identify finish where the stack runs it, and close it again. A
// cluster-wide event (a cold start, a partition healing its halves, a kill) is mostly
// connections opening at once, and the scale harness runs hundreds of nodes on two cores, so
// this figure is what its saturated minutes are made of.
//
// Three stacks, each measured in every repetition, in rotating order:
//   libp2p   the baseline: bare libp2p with peerpull's transport, encryption and muxer (TCP, Noise,
//            yamux without keep-alive), nothing else;
//   identify the same plus libp2p's identify service (run on every new connection);
//   peerpull src/p2p/node.ts as the DaemonSet runs it (identify, ping, kad-dht, the connection
//            bound, heartbeats and its own listeners), bootstrapping from nobody.
// Each is printed as ms of CPU per connection and as a ratio of the baseline of the same run.
//
//   npx tsc -p tsconfig.json && node_modules/.bin/node dist/native-bench/p2p-connect.js [--peers 30] [--rounds 4] [--reps 3] [--json] [--only peerpull]
//
// PEERPULL_BENCH_PROFILE=<file.cpuprofile>: a CPU profile of the measured rounds of the first
// stack measured (with --only, that stack), without the nodes' start and stop.

import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { identify } from '@libp2p/identify';
import type { Libp2p } from '@libp2p/interface';
import { tcp, type TCPSocketOptions } from '@libp2p/tcp';
import { writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import { createLibp2p } from 'libp2p';
import { loadConfig } from '../src/main/config.js';
import { p2pWorkerConfig } from '../src/main/p2p.js';
import { P2PNode } from '../src/p2p/node.js';

type Stack = 'libp2p' | 'identify' | 'peerpull';
const STACKS: Stack[] = ['libp2p', 'identify', 'peerpull'];

interface Args {
  peers: number;
  rounds: number;
  reps: number;
  json: boolean;
  only?: Stack;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { peers: 30, rounds: 4, reps: 3, json: false };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    if (key === '--json') {
      a.json = true;
      continue;
    }
    if (key === '--only') {
      // One stack alone (to profile it, e.g. under node --cpu-prof): no baseline, no ratio.
      const only = argv[++i] as Stack;
      if (!STACKS.includes(only)) throw new Error(`--only takes one of ${STACKS.join(', ')}`);
      a.only = only;
      continue;
    }
    const field = ({ '--peers': 'peers', '--rounds': 'rounds', '--reps': 'reps' } as const)[key as '--peers'];
    const v = Number(argv[++i]);
    if (!field || !Number.isInteger(v) || v < 1) throw new Error(`bad argument ${key} ${argv[i] ?? ''} (see the header of native-bench/p2p-connect.ts)`);
    a[field] = v;
  }
  return a;
}

interface Started {
  libp2p: Libp2p;
  stop(): Promise<void>;
}

async function start(stack: Stack, ip: string, port: number): Promise<Started> {
  if (stack === 'peerpull') {
    const config = loadConfig({ PEERPULL_P2P_ADDR: `${ip}:${port}`, PEERPULL_REGISTRY_ADDR: `${ip}:${port + 1}`, PEERPULL_ADVERTISE_IP: ip, PEERPULL_BOOTSTRAP_DNS: '', PEERPULL_BOOTSTRAP_PEERS: '' });
    const node = await P2PNode.create(await p2pWorkerConfig(config), await generateKeyPair('Ed25519'), () => {}, () => {});
    const libp2p = (node as unknown as { node?: Libp2p }).node;
    if (!libp2p?.dial) throw new Error('P2PNode no longer keeps its libp2p node in `node`: update native-bench/p2p-connect.ts');
    return { libp2p, stop: () => node.stop() };
  }
  const services: Record<string, unknown> = stack === 'identify' ? { identify: identify() } : {};
  const libp2p = await createLibp2p({
    privateKey: await generateKeyPair('Ed25519'),
    addresses: { listen: [`/ip4/${ip}/tcp/${port}`] },
    // As P2PNode: dial from the node's own address.
    transports: [tcp({ dialOpts: { localAddress: ip } as TCPSocketOptions })],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ enableKeepAlive: false })],
    connectionMonitor: { enabled: false },
    services: services as Record<string, never>,
  });
  return { libp2p, stop: async () => libp2p.stop() };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** How long the inbound end may take to identify us before the connection counts as a stall. */
const IDENTIFY_WAIT_MS = 2000;
/** Per stack: connections not identified by the inbound end within IDENTIFY_WAIT_MS, and dials answered by an existing connection. */
const anomalies: Record<Stack, { stalls: number; reused: number }> = { libp2p: { stalls: 0, reused: 0 }, identify: { stalls: 0, reused: 0 }, peerpull: { stalls: 0, reused: 0 } };

/** Whether the profile (PEERPULL_BENCH_PROFILE) was taken already. */
let profiled = false;

/**
 * ms of CPU per connection, opening (with identify) and closing, for each measured round. Every
 * round dials peers the dialler has never met (hanging up and re-dialling the same peers measured
 * re-dials by kad-dht's table upkeep instead); the first round warms the JIT and is not kept.
 */
async function measure(stack: Stack, a: Args, subnet: number): Promise<Array<{ open: number; close: number }>> {
  const port = 4100;
  const nodes: Started[] = [];
  try {
    const count = 1 + a.peers * (a.rounds + 1);
    for (let i = 0; i < count; i++) nodes.push(await start(stack, `127.${101 + subnet}.${Math.floor(i / 250)}.${(i % 250) + 1}`, port));
    const from = nodes[0].libp2p;
    const perRound: Array<{ open: number; close: number }> = [];
    const profile = process.env.PEERPULL_BENCH_PROFILE && !profiled ? new Session() : undefined;
    profiled ||= profile !== undefined;
    for (let r = 0; r <= a.rounds; r++) {
      if (profile && r === 1) {
        profile.connect();
        await profile.post('Profiler.enable');
        await profile.post('Profiler.start');
      }
      const to = nodes.slice(1 + r * a.peers, 1 + (r + 1) * a.peers).map((n) => n.libp2p);
      const c0 = process.cpuUsage();
      for (const b of to) {
        // Done when the inbound end has its connection and, where identify runs, has identified us.
        const done = new Promise<void>((resolve) => b.addEventListener(stack === 'libp2p' ? 'connection:open' : 'peer:identify', () => resolve(), { once: true }));
        const t0 = Date.now();
        const conn = await from.dial(b.getMultiaddrs()[0]);
        if (conn.timeline.open < t0) anomalies[stack].reused++;
        if ((await Promise.race([done.then(() => true), sleep(IDENTIFY_WAIT_MS).then(() => false)])) === false) anomalies[stack].stalls++;
      }
      // The answers to identify, kad-dht's table additions: what a new connection sets off.
      await sleep(200);
      const opened = process.cpuUsage(c0);
      const c1 = process.cpuUsage();
      for (const b of to) await from.hangUp(b.peerId);
      await sleep(200);
      const closed = process.cpuUsage(c1);
      if (r > 0) perRound.push({ open: (opened.user + opened.system) / 1000 / to.length, close: (closed.user + closed.system) / 1000 / to.length });
    }
    if (profile) {
      const { profile: p } = await profile.post('Profiler.stop');
      await writeFile(process.env.PEERPULL_BENCH_PROFILE!, JSON.stringify(p));
      profile.disconnect();
    }
    return perRound;
  } finally {
    await Promise.all(nodes.map((n) => n.stop().catch(() => {})));
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const args = parseArgs(process.argv.slice(2));
const open: Record<Stack, number[]> = { libp2p: [], identify: [], peerpull: [] };
const close: Record<Stack, number[]> = { libp2p: [], identify: [], peerpull: [] };
const ratios: Record<Stack, number[]> = { libp2p: [], identify: [], peerpull: [] };
const stacks = args.only ? [args.only] : STACKS;
for (let rep = 0; rep < args.reps; rep++) {
  const order = stacks.map((_, i) => stacks[(i + rep) % stacks.length]);
  const byStack = {} as Record<Stack, number>;
  for (const stack of order) {
    const rounds = await measure(stack, args, STACKS.indexOf(stack));
    byStack[stack] = median(rounds.map((x) => x.open));
    open[stack].push(byStack[stack]);
    close[stack].push(median(rounds.map((x) => x.close)));
  }
  if (!args.only) for (const stack of STACKS) ratios[stack].push(byStack[stack] / byStack.libp2p);
  if (!args.json) console.log(`rep ${rep + 1}, open: ${stacks.map((s) => `${s} ${byStack[s].toFixed(1)} ms`).join(', ')}`);
}
const result = Object.fromEntries(stacks.map((s) => [s, { openMs: median(open[s]), closeMs: median(close[s]), ...(args.only ? {} : { openVsLibp2p: median(ratios[s]) }), ...anomalies[s] }]));
if (args.json) console.log(JSON.stringify({ peers: args.peers, rounds: args.rounds, reps: args.reps, result }));
else {
  console.log(`CPU per connection (both ends, one process), median of ${args.reps} runs of ${args.rounds} rounds x ${args.peers} new peers:`);
  for (const s of stacks) {
    const r = result[s];
    const ratio = r.openVsLibp2p === undefined ? '' : ` (${r.openVsLibp2p.toFixed(2)}x the libp2p baseline)`;
    console.log(`  ${s.padEnd(9)} open ${r.openMs.toFixed(1)} ms${ratio}, close ${r.closeMs.toFixed(1)} ms${r.stalls || r.reused ? `; ${r.stalls} not identified within ${IDENTIFY_WAIT_MS} ms, ${r.reused} dials answered by an existing connection` : ''}`);
  }
}
process.exit(0);

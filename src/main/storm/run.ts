// Runs pulls in waves and measures them: per-pull results, bytes per host over time, the nodes'
// counters before and after, the upstream's counters. Used by both the local cluster scenarios and
// runs against a live cluster's endpoints.

import { readFileSync } from 'node:fs';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { delta, emptyCounters, histogramSummary, scrape, type NodeCounters } from './metrics.js';
import { PHASES, pullImage, type HostKind, type LayoutSink, type Phase, type PullOptions, type PullResult } from './pull.js';
import { summarize, type Summary } from './summary.js';
import type { UpstreamRegistry, UpstreamStats } from './upstream.js';

export type Mode = 'peerpull' | 'baseline';

export interface Target {
  name: string;
  /** The node's peerpull; absent in a baseline. */
  mirror?: string;
  metricsUrl?: string;
  sink?: LayoutSink;
  /** The node's process, when storm started it (CPU accounting). */
  pid?: number;
  /** Further processes of the node storm started (its containerd), for CPU accounting. */
  pids?: number[];
  /** The image this node pulls, when not the run's (miss: an image of its own). */
  image?: string;
  /** Pulls another way than storm's own HTTP client (a real containerd: see containerd.ts). */
  pull?: (o: PullOptions) => Promise<PullResult>;
}

export interface Progress {
  label: string;
  wave: number;
  waves: number;
  started: number;
  done: number;
  failed: number;
  total: number;
  bytes: Record<HostKind, number>;
  elapsedMs: number;
  note?: string;
}

export interface RunSpec {
  scenario: string;
  mode: Mode;
  image: string;
  /** Bytes one pull moves (manifest(s), config, layers of one platform). */
  imageBytes: number;
  layers: number;
  targets: Target[];
  /** Indices into targets, wave by wave. */
  waves: number[][];
  waveGapMs: number;
  upstream?: string;
  upstreamServer?: UpstreamRegistry;
  platform?: { os: string; architecture: string };
  concurrency: number;
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
  /** Called once the given wave has moved `fraction` of its bytes (churn kills here). */
  midWave?: { wave: number; fraction: number; action: () => Promise<string[]> };
}

export interface RunResult {
  scenario: string;
  mode: Mode;
  label: string;
  image: string;
  imageBytes: number;
  layers: number;
  nodes: number;
  waves: number;
  wallMs: number;
  pulls: PullResult[];
  ok: number;
  failed: number;
  failures: { node: string; error: string; kind: string }[];
  pullMs: Summary;
  phaseMs: Record<Phase, Summary>;
  /** Time to the mirror's 404s: what peerpull adds before containerd falls back. */
  missMs: Summary;
  /**
   * The same misses timed inside the nodes, from a request's arrival to its 404 (lookup and
   * shared-download claim included; their histogram, bucketed): without the puller's own waits
   * for a CPU, which on one machine running every node include everyone's.
   */
  nodeMissMs: Summary;
  mirrorErrors: number;
  bytes: {
    /** Counted by the upstream server (body bytes it sent). */
    upstream: number;
    /** Received by the pullers from the mirror / from the upstream. */
    viaMirror: number;
    viaUpstream: number;
    /** From other peerpull nodes: sum of peerpull_bytes_served_total minus what the pullers received (served to peers). */
    peer: number;
    /** Sum of peerpull_peer_bytes_total as the nodes report it. */
    peerMetric: number;
    /** Served by the node from its own store to its own puller: viaMirror - peer. */
    local: number;
  };
  upstreamBlobGets: { max: number; total: number; perBlob: Record<string, number> };
  counters: NodeCounters;
  /** [ms since start, bytes via mirror, bytes via upstream] cumulative, every 250 ms. */
  series: [number, number, number][];
  killed?: { atMs: number | null; nodes: string[] };
  /** CPU seconds per second during the run: the whole machine, and storm with its nodes (Linux). */
  cpu?: { machine: number; ours: number; others: number; cores: number };
}

function diffUpstream(a: UpstreamStats | undefined, b: UpstreamStats | undefined): { bytes: number; perBlob: Record<string, number> } {
  if (!a || !b) return { bytes: 0, perBlob: {} };
  const perBlob: Record<string, number> = {};
  for (const [d, n] of Object.entries(b.blobGets)) {
    const x = n - (a.blobGets[d] ?? 0);
    if (x > 0) perBlob[d] = x;
  }
  return { bytes: b.bytes - a.bytes, perBlob };
}

export async function runWaves(spec: RunSpec): Promise<RunResult> {
  const label = `${spec.scenario}/${spec.mode}`;
  const metricsUrls = spec.targets.map((t) => t.metricsUrl);
  const scrapeAll = () => Promise.all(metricsUrls.map((u) => (u ? scrape(u) : Promise.resolve(null))));
  const before = spec.mode === 'peerpull' ? await scrapeAll() : [];
  let lastSeen = before;
  const up0 = spec.upstreamServer?.snapshot();
  const pids = [process.pid, ...spec.targets.flatMap((t) => [...(t.pid ? [t.pid] : []), ...(t.pids ?? [])])];
  const cpu0 = cpuSnapshot(pids);
  const t0 = performance.now();
  const bytes: Record<HostKind, number> = { mirror: 0, upstream: 0 };
  const series: [number, number, number][] = [[0, 0, 0]];
  const total = spec.waves.reduce((a, w) => a + w.length, 0);
  const pulls: PullResult[] = [];
  const prog: Progress = { label, wave: 0, waves: spec.waves.length, started: 0, done: 0, failed: 0, total, bytes, elapsedMs: 0 };
  const tick = setInterval(() => {
    prog.elapsedMs = performance.now() - t0;
    series.push([Math.round(prog.elapsedMs), bytes.mirror, bytes.upstream]);
    spec.onProgress?.(prog);
  }, 250);
  let killed: RunResult['killed'];
  try {
    for (const [w, wave] of spec.waves.entries()) {
      if (spec.signal?.aborted) break;
      prog.wave = w + 1;
      let waveBytes = 0;
      let fired = false;
      const mid = spec.midWave?.wave === w ? spec.midWave : undefined;
      const threshold = mid ? mid.fraction * wave.length * spec.imageBytes : Infinity;
      let midDone: Promise<void> = Promise.resolve();
      const fire = () => {
        if (fired || !mid) return;
        fired = true;
        const at = performance.now() - t0;
        // Counters of the nodes about to die, taken just before.
        midDone = scrapeAll()
          .then((s) => {
            lastSeen = s.map((x, i) => x ?? lastSeen[i] ?? null);
            return mid.action();
          })
          .then((nodes) => {
            killed = { atMs: at, nodes };
            prog.note = `killed ${nodes.length} node(s)`;
          });
      };
      const results = await Promise.all(
        wave.map((i) => {
          const t = spec.targets[i]!;
          prog.started++;
          return (t.pull ?? pullImage)({
            node: t.name,
            wave: w + 1,
            image: t.image ?? spec.image,
            ...(t.mirror ? { mirror: t.mirror } : {}),
            ...(spec.upstream ? { upstream: spec.upstream } : {}),
            // storm's own upstream speaks the plain HTTP of peerpull's peer client.
            ...(spec.upstreamServer ? { simpleUpstream: true } : {}),
            ...(t.sink ? { sink: t.sink } : {}),
            ...(spec.platform ? { platform: spec.platform } : {}),
            ...(spec.signal ? { signal: spec.signal } : {}),
            concurrency: spec.concurrency,
            t0,
            onBytes: (n, host) => {
              bytes[host] += n;
              waveBytes += n;
              if (waveBytes >= threshold) fire();
            },
          }).then((r) => {
            prog.done++;
            if (!r.ok) prog.failed++;
            return r;
          });
        }),
      );
      pulls.push(...results);
      if (mid && !fired) {
        fire();
        await midDone;
        if (killed) killed.atMs = null; // the wave finished before the threshold: not mid-run
      }
      await midDone;
      if (w < spec.waves.length - 1 && spec.waveGapMs > 0) await sleep(spec.waveGapMs, undefined, spec.signal ? { signal: spec.signal } : {}).catch(() => undefined);
    }
  } finally {
    clearInterval(tick);
  }
  const wallMs = performance.now() - t0;
  const cpu1 = cpuSnapshot(pids);
  series.push([Math.round(wallMs), bytes.mirror, bytes.upstream]);
  prog.elapsedMs = wallMs;
  spec.onProgress?.(prog);
  const after = spec.mode === 'peerpull' ? await scrapeAll() : [];
  const counters = spec.mode === 'peerpull' ? delta(before, after.map((a, i) => a ?? lastSeen[i] ?? null)) : emptyCounters();
  const up = diffUpstream(up0, spec.upstreamServer?.snapshot());
  const okPulls = pulls.filter((p) => p.ok);
  // A containerd pull has no phases storm can see: only pulls that measured them count.
  const phased = okPulls.filter((p) => PHASES.some((ph) => p.phases[ph] > 0));
  const phaseMs = Object.fromEntries(PHASES.map((ph) => [ph, summarize(phased.map((p) => p.phases[ph]))])) as Record<Phase, Summary>;
  // Mirror 404s storm saw itself; containerd's are read from the nodes' histogram instead.
  const nodeMisses = counters.missAnswer.count > 0 ? counters.missAnswer : counters.missLookup;
  const ownMisses = pulls.flatMap((p) => p.mirrorMissMs);
  const missMs = ownMisses.length > 0 || !spec.targets.some((t) => t.pull) ? summarize(ownMisses) : histogramSummary(nodeMisses);
  const viaMirror = pulls.reduce((a, p) => a + p.bytes.mirror, 0);
  const viaUpstream = pulls.reduce((a, p) => a + p.bytes.upstream, 0);
  const gets = Object.values(up.perBlob);
  // Bytes from peers: peerpull_peer_bytes_total, cross-checked with what the nodes served beyond what
  // their pullers received (that went to other nodes). Before 50e702c the counter missed every full
  // chunk; against a live cluster the nodes also serve other clients, so the second is an upper bound.
  const peer = spec.mode === 'peerpull' ? Math.max(counters.peerBytes, Math.min(viaMirror, counters.servedBytes - viaMirror)) : 0;
  return {
    scenario: spec.scenario,
    mode: spec.mode,
    label,
    image: spec.image,
    imageBytes: spec.imageBytes,
    layers: spec.layers,
    nodes: total,
    waves: spec.waves.length,
    wallMs,
    pulls,
    ok: okPulls.length,
    failed: pulls.length - okPulls.length,
    failures: pulls.filter((p) => !p.ok).map((p) => ({ node: p.node, error: p.error ?? '', kind: p.errorKind ?? '' })),
    pullMs: summarize(okPulls.map((p) => p.totalMs)),
    phaseMs,
    missMs,
    nodeMissMs: histogramSummary(nodeMisses),
    mirrorErrors: pulls.reduce((a, p) => a + p.mirrorErrors, 0),
    bytes: {
      upstream: spec.upstreamServer ? up.bytes : viaUpstream,
      viaMirror,
      viaUpstream,
      peer,
      peerMetric: counters.peerBytes,
      local: Math.max(0, viaMirror - peer),
    },
    upstreamBlobGets: { max: gets.length ? Math.max(...gets) : 0, total: gets.reduce((a, b) => a + b, 0), perBlob: up.perBlob },
    counters,
    series,
    ...(killed ? { killed } : {}),
    ...(cpu0 && cpu1
      ? (() => {
          const sec = wallMs / 1000;
          const machine = (cpu1.machine - cpu0.machine) / sec;
          let used = 0;
          // A process gone by the end (killed, exited) was one of ours and reaped: its whole
          // lifetime is in the children time, so only what it had used before the run comes off.
          for (const [pid, t0_] of cpu0.perPid) used += (cpu1.perPid.get(pid) ?? 0) - t0_;
          used += cpu1.children - cpu0.children;
          const ours = used / sec;
          return { cpu: { machine, ours, others: Math.max(0, machine - ours), cores: os.availableParallelism() } };
        })()
      : {}),
  };
}

/**
 * CPU seconds used so far by the whole machine (busy time), by the given processes, and by this
 * process's reaped children (short-lived `ctr` pulls, killed nodes) (Linux /proc; null elsewhere).
 * Synchronous: a few small /proc files, read once before and once after a run by the storm CLI.
 */
export function cpuSnapshot(pids: number[]): { machine: number; ours: number; perPid: Map<number, number>; children: number } | null {
  try {
    const hz = 100;
    const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal
    const busy = cpu[0]! + cpu[1]! + cpu[2]! + cpu[5]! + cpu[6]! + cpu[7]!;
    let ours = 0;
    const perPid = new Map<number, number>();
    for (const pid of pids) {
      try {
        const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
        const t = (Number(rest[11]) + Number(rest[12])) / hz; // utime stime
        perPid.set(pid, t);
        ours += t;
      } catch {
        // exited
      }
    }
    const self = readFileSync('/proc/self/stat', 'utf8');
    const selfRest = self.slice(self.lastIndexOf(')') + 2).split(' ');
    const children = (Number(selfRest[13]) + Number(selfRest[14])) / hz; // cutime cstime
    return { machine: busy / hz, ours, perPid, children };
  } catch {
    return null;
  }
}

// `peerpull storm --local N`: a cluster of N peerpull nodes on loopback, an upstream registry
// served here with a bandwidth limit, and the scenarios, each with its baseline (the same pulls
// straight from the upstream, as nodes without peerpull would do) in the same invocation.
// With `containerd`, every node has a real containerd: peerpull's content source, and the puller
// (`ctr` through a hosts.toml that lists the node's peerpull, then the upstream).

import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { generateImage, type Platform } from '../image-generator.js';
import { LocalCluster, type LocalNode } from './cluster.js';
import { BASELINE_NAMESPACE, K8S_NAMESPACE, MISS_NAMESPACE, writeHostsToml } from './containerd.js';
import { LayoutSink, type Descriptor } from './pull.js';
import { runWaves, type Progress, type RunResult, type Target } from './run.js';
import { UpstreamRegistry } from './upstream.js';

export type ScenarioName = 'storm' | 'rolling' | 'miss' | 'churn';
export const SCENARIOS: ScenarioName[] = ['rolling', 'storm', 'miss', 'churn'];

export interface LocalOptions {
  nodes: number;
  scenarios: ScenarioName[];
  baseline: boolean;
  imageBytes: number;
  layers: number;
  platforms: Platform[];
  /** bytes/s, 0 = unlimited */
  upstreamRate: number;
  wavePercent: number;
  waveGapMs: number;
  /** churn: fraction of the second wave's bytes moved when the holders are killed */
  churnAt: number;
  concurrency: number;
  dir: string;
  ipBase: string;
  /** A real containerd per node; `unpack` pulls with `ctr images pull` (fetch and unpack) instead of `ctr content fetch`. */
  containerd?: { unpack: boolean };
  nodeEnv?: Record<string, string>;
  signal?: AbortSignal;
  onEvent?: (e: Record<string, unknown>) => void;
  onProgress?: (p: Progress) => void;
  /** Set as soon as the cluster exists, so a signal handler can stop it. */
  onCluster?: (c: LocalCluster) => void;
}

export function wavesOf(n: number, percent: number): number[][] {
  const size = Math.max(1, Math.ceil((n * percent) / 100));
  const waves: number[][] = [];
  for (let i = 0; i < n; i += size) waves.push(Array.from({ length: Math.min(size, n - i) }, (_, j) => i + j));
  return waves;
}

const REGISTRY = 'storm.local';

export async function runLocal(opts: LocalOptions): Promise<RunResult[]> {
  const cluster = await LocalCluster.start({
    nodes: opts.nodes,
    dir: opts.dir,
    ipBase: opts.ipBase,
    ...(opts.containerd ? { containerd: true } : {}),
    ...(opts.nodeEnv ? { env: opts.nodeEnv } : {}),
    ...(opts.onEvent ? { onEvent: opts.onEvent } : {}),
  });
  opts.onCluster?.(cluster);
  const upstreamDir = path.join(cluster.dir, 'upstream');
  await mkdir(upstreamDir, { recursive: true });
  const upstream = new UpstreamRegistry({ layout: upstreamDir, host: '127.0.0.1', rate: opts.upstreamRate });
  const runs: RunResult[] = [];
  try {
    // An empty layout first, so the server can start before any image exists.
    await LayoutSink.create(upstreamDir);
    await upstream.start();
    opts.onEvent?.({ event: 'upstream', url: upstream.url, rateBytesPerSec: opts.upstreamRate });
    // containerd mode: each node reaches the upstream on a port of its own (its bytes are counted
    // there), through two hosts dirs: with its peerpull first, and straight (the baseline).
    const ctdHosts = new Map<LocalNode, { mirror: string; direct: string }>();
    if (opts.containerd) {
      for (const node of cluster.nodes) {
        const own = await upstream.listenFor(node.name);
        const base = path.dirname(node.containerd!.dir);
        const h = { mirror: path.join(base, 'hosts-mirror'), direct: path.join(base, 'hosts-direct') };
        await writeHostsToml(h.mirror, REGISTRY, own, node.url);
        await writeHostsToml(h.direct, REGISTRY, own);
        ctdHosts.set(node, h);
      }
    }
    const ctdTarget = (node: LocalNode, namespace: string, hostsDir: string, blobs: Descriptor[], platform: { os: string; architecture: string }): Target => ({
      name: node.name,
      pids: node.containerd!.pid !== undefined ? [node.containerd!.pid] : [],
      pull: (o) =>
        node.containerd!.pull({
          node: node.name,
          wave: o.wave ?? 0,
          image: o.image,
          namespace,
          hostsDir,
          platform,
          blobs,
          upstreamBytes: () => upstream.stats.bytesBy[node.name] ?? 0,
          unpack: opts.containerd!.unpack,
          concurrency: o.concurrency ?? 3,
          t0: o.t0 ?? performance.now(),
          ...(o.onBytes ? { onBytes: o.onBytes } : {}),
          ...(o.signal ? { signal: o.signal } : {}),
        }),
    });
    // churn kills nodes: it runs last.
    const order = [...opts.scenarios].sort((a, b) => Number(a === 'churn') - Number(b === 'churn'));
    for (const scenario of order) {
      if (opts.signal?.aborted) break;
      const n = opts.nodes;
      const tag = `${scenario}-${randomBytes(4).toString('hex')}`;
      const makeImage = async (name: string, bytes: number) => {
        const layerSize = Math.max(1, Math.floor(bytes / opts.layers));
        const img = await generateImage(upstreamDir, { name, layerSizes: Array.from({ length: opts.layers }, () => layerSize), platforms: opts.platforms });
        const m = img.manifests[0]!;
        return {
          name,
          bytes: (img.manifests.length > 1 ? img.target.size : 0) + m.manifest.size + m.config.size + m.layers.reduce((a, l) => a + l.size, 0),
          platform: { os: m.platform.os, architecture: m.platform.architecture },
          blobs: [...(img.manifests.length > 1 ? [img.target] : []), m.manifest, m.config, ...m.layers] as Descriptor[],
        };
      };
      // miss: every node pulls an image of its own, so no other node has it or is fetching it
      // (with shared downloads, nodes pulling one image at once are the storm scenario). Each is
      // 1/N of --size: the upstream carries one image's bytes in all, as in the other scenarios.
      // One at a time: the generator rewrites the upstream's index.json for each.
      const images: Awaited<ReturnType<typeof makeImage>>[] = [];
      if (scenario !== 'miss') images.push(await makeImage(`${REGISTRY}/storm/${tag}:v1`, opts.imageBytes));
      else for (let i = 0; i < n; i++) images.push(await makeImage(`${REGISTRY}/storm/${tag}-${i}:v1`, Math.max(opts.layers, Math.floor(opts.imageBytes / n))));
      await upstream.reload();
      const imageOf = (i: number) => images[images.length === 1 ? 0 : i]!;
      const { name, bytes: imageBytes, platform } = images[0]!;
      const waves =
        scenario === 'rolling' ? wavesOf(n, opts.wavePercent)
        : scenario === 'churn' ? (() => {
            const first = Math.min(n - 1, Math.max(1, Math.ceil((n * opts.wavePercent) / 100)));
            return [Array.from({ length: first }, (_, i) => i), Array.from({ length: n - first }, (_, i) => first + i)];
          })()
        : [Array.from({ length: n }, (_, i) => i)];
      const common = { scenario, image: name, imageBytes, layers: opts.layers, waves, waveGapMs: opts.waveGapMs, upstream: upstream.url, upstreamServer: upstream, platform, concurrency: opts.concurrency, ...(opts.signal ? { signal: opts.signal } : {}), ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) };
      if (opts.baseline) {
        // Nodes without peerpull: straight to the upstream, writing into a scratch store each.
        // containerd: each node's own containerd, into a namespace peerpull does not watch.
        const scratch = path.join(cluster.dir, `baseline-${scenario}`);
        const targets: Target[] = [];
        for (let i = 0; i < n; i++) {
          const node = cluster.nodes[i]!;
          const own = imageOf(i);
          const t: Target = opts.containerd ? ctdTarget(node, BASELINE_NAMESPACE, ctdHosts.get(node)!.direct, own.blobs, own.platform) : { name: `node-${i}`, sink: await LayoutSink.create(path.join(scratch, `node-${i}`)) };
          targets.push(images.length > 1 ? { ...t, image: own.name } : t);
        }
        opts.onEvent?.({ event: 'run', scenario, mode: 'baseline' });
        runs.push(await runWaves({ ...common, mode: 'baseline', targets }));
        await rm(scratch, { recursive: true, force: true });
        // Gone before the peerpull run: a node's containerd would otherwise already hold the blobs.
        if (opts.containerd) await Promise.all(cluster.nodes.filter((x) => x.alive).map((x, i) => x.containerd!.removeImage(BASELINE_NAMESPACE, imageOf(i).name)));
      }
      if (opts.signal?.aborted) break;
      const targets: Target[] = cluster.nodes.map((node, i) => ({
        ...(opts.containerd
          ? {
              // miss: pulled into a namespace peerpull does not serve, so no peer ever has it.
              ...ctdTarget(node, scenario === 'miss' ? MISS_NAMESPACE : K8S_NAMESPACE, ctdHosts.get(node)!.mirror, imageOf(i).blobs, imageOf(i).platform),
              mirror: node.url,
              metricsUrl: node.metricsUrl,
              pid: node.pid,
            }
          : {
              name: node.name,
              mirror: node.url,
              metricsUrl: node.metricsUrl,
              pid: node.pid,
              ...(node.store ? { sink: node.store } : {}),
            }),
        ...(images.length > 1 ? { image: imageOf(i).name } : {}),
      }));
      opts.onEvent?.({ event: 'run', scenario, mode: 'peerpull' });
      const holders = waves[0]!;
      runs.push(
        await runWaves({
          ...common,
          mode: 'peerpull',
          targets,
          ...(scenario === 'churn'
            ? {
                midWave: {
                  wave: 1,
                  fraction: opts.churnAt,
                  action: async () => {
                    const victims = holders.map((i) => cluster.nodes[i]!);
                    await Promise.all(victims.map((v) => cluster.kill(v)));
                    opts.onEvent?.({ event: 'killed', nodes: victims.map((v) => v.name), pids: victims.map((v) => v.pid) });
                    return victims.map((v) => v.name);
                  },
                },
              }
            : {}),
        }),
      );
      if (scenario === 'miss' && opts.containerd) await Promise.all(cluster.nodes.filter((x) => x.alive).map((x, i) => x.containerd!.removeImage(MISS_NAMESPACE, imageOf(i).name)));
      else if (scenario !== 'churn') for (const img of images) await cluster.wipeStores(img.name);
    }
  } finally {
    await upstream.close();
    await cluster.stop();
  }
  return runs;
}

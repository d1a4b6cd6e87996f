// The pull-storm tool: digests are verified (corrupt bytes from a node or the upstream fail the
// pull), the local cluster always cleans up (normal end, start failure, SIGINT to a storm process),
// and a small rolling storm on 3 real nodes shows later pulls served by peers with the upstream
// seeing each blob a bounded number of times.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { access, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { generateImage, type GeneratedImage } from '../src/main/image-generator.js';
import { LocalCluster } from '../src/main/storm/cluster.js';
import { parseNodeEnv } from '../src/main/storm/index.js';
import { delta, histogramSummary, parseCounters } from '../src/main/storm/metrics.js';
import { UsageError } from '../src/main/storm/options.js';
import { LayoutSink, pullImage } from '../src/main/storm/pull.js';
import { UpstreamRegistry } from '../src/main/storm/upstream.js';
import { startPeerpull, type PeerpullProcess } from './support/peerpull.js';
import { alive, startStorm } from './support/storm-run.js';

const exists = (p: string) => access(p).then(() => true, () => false);

interface JsonRun {
  label: string;
  mode: string;
  ok: number;
  failed: number;
  nodes: number;
  imageBytes: number;
  failures: { node: string; kind: string; error: string }[];
  pulls: { node: string; wave: number; ok: boolean; bytes: { mirror: number; upstream: number } }[];
  bytes: { upstream: number; viaMirror: number; peer: number };
  counters: { requests: Record<string, number>; servedBytes: number; shared: Record<string, number> };
  upstreamBlobGets: { max: number; perBlob: Record<string, number> };
}

describe('storm verifies every digest', () => {
  let root: string;
  let good: GeneratedImage;
  let bad: GeneratedImage;
  let node: PeerpullProcess;

  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'peerpull-storm-test-'));
    const layout = path.join(root, 'layout');
    good = await generateImage(layout, { name: 'storm.local/t/good:1', layerSizes: [300_000, 1000] });
    bad = await generateImage(layout, { name: 'storm.local/t/bad:1', layerSizes: [300_000, 1000] });
    // Same size, one byte flipped: the store still lists it, peerpull serves it without hashing.
    const layer = bad.manifests[0]!.layers[0]!;
    const file = path.join(layout, 'blobs', 'sha256', layer.digest.slice(7));
    const bytes = await readFile(file);
    bytes[1000] = bytes[1000]! ^ 0xff;
    await writeFile(file, bytes);
    node = await startPeerpull({ PEERPULL_STORE: `oci-layout:${layout}` }, ['serve'], '127.0.94.1');
  });

  after(async () => {
    await node?.stop('SIGKILL');
    if (root) await rm(root, { recursive: true, force: true });
  });

  test('a peerpull node serving corrupt bytes: that pull fails, the sound image passes', async () => {
    const s = startStorm([
      '--endpoints', node.url, '--metrics-port', String(node.metricsPort),
      '--image', `${good.name},${bad.name}`, '--scenario', 'storm', '--json',
    ]);
    const { code } = await s.exited;
    assert.equal(code, 1, s.stderr());
    const report = JSON.parse(s.stdout()) as { ok: boolean; runs: JsonRun[] };
    assert.equal(report.ok, false);
    const g = report.runs.find((r) => r.label.includes(good.name))!;
    const b = report.runs.find((r) => r.label.includes(bad.name))!;
    assert.equal(g.ok, 1);
    assert.equal(g.failed, 0);
    assert.equal(b.ok, 0);
    assert.equal(b.failed, 1);
    assert.equal(b.failures[0]!.kind, 'digest-mismatch');
    assert.match(b.failures[0]!.error, new RegExp(bad.manifests[0]!.layers[0]!.digest));
    // Counters were read from the node's /metrics (a lone node without p2p has no mirror counters).
    assert.ok(g.counters.servedBytes >= 300_000);
  });

  test('an upstream serving corrupt bytes after a mirror 404: the pull fails', async () => {
    // An image only the upstream has: every request goes to the mirror first, gets 404, falls back.
    const layout = path.join(root, 'upstream');
    const only = await generateImage(layout, { name: 'storm.local/t/only:1', layerSizes: [300_000, 1000] });
    const corrupt = new Set<string>([only.manifests[0]!.layers[1]!.digest]);
    const upstream = new UpstreamRegistry({ layout, corrupt: (d) => corrupt.has(d) });
    await upstream.start();
    try {
      const r = await pullImage({ node: 'n', image: only.name, mirror: node.url, upstream: upstream.url });
      assert.equal(r.ok, false);
      assert.equal(r.errorKind, 'digest-mismatch', r.error);
      assert.ok(r.mirrorMissMs.length >= 3, 'the mirror was asked first and said 404');
      // The same pull against an honest upstream passes and is counted per blob.
      corrupt.clear();
      const ok = await pullImage({ node: 'n', image: only.name, mirror: node.url, upstream: upstream.url });
      assert.equal(ok.ok, true, ok.error);
      assert.equal(ok.bytes.mirror, 0);
      assert.ok(ok.bytes.upstream > 300_000);
      assert.equal(upstream.stats.blobGets[only.manifests[0]!.layers[0]!.digest], 2);
    } finally {
      await upstream.close();
    }
  });
});

describe('a mirror that breaks mid-blob', () => {
  // A real server misbehaving on purpose: it answers the big layer with its full Content-Length,
  // sends the first 2.5 MiB and closes the connection; everything else is a 404. containerd keeps
  // the partial ingest and asks the next host for the rest; so does storm, with either client.
  for (const simpleUpstream of [false, true]) {
    test(`the pull resumes from the upstream with a Range and the stored blob hashes right (${simpleUpstream ? "peerpull's client" : 'undici'} for the upstream)`, async () => {
      const root = await mkdtemp(path.join(os.tmpdir(), 'peerpull-storm-resume-'));
      const layout = path.join(root, 'upstream');
      const img = await generateImage(layout, { name: 'storm.local/t/resume:1', layerSizes: [5 * 1024 * 1024, 1000] });
      const big = img.manifests[0]!.layers[0]!;
      const bigBytes = await readFile(path.join(layout, 'blobs', 'sha256', big.digest.slice(7)));
      const sent = 2.5 * 1024 * 1024;
      const mirror = http.createServer((req, res) => {
        if (req.method === 'GET' && req.url?.includes(`/blobs/${big.digest}`)) {
          res.writeHead(200, { 'Content-Length': String(big.size), 'Content-Type': 'application/octet-stream' });
          res.write(bigBytes.subarray(0, sent), () => res.socket?.destroy());
          return;
        }
        res.writeHead(404, { 'Content-Length': '0' }).end();
      });
      await new Promise<void>((r) => mirror.listen(0, '127.0.94.2', r));
      const upstream = new UpstreamRegistry({ layout });
      await upstream.start();
      try {
        const sink = await LayoutSink.create(path.join(root, 'node'));
        const r = await pullImage({
          node: 'n',
          image: img.name,
          mirror: `http://127.0.94.2:${(mirror.address() as AddressInfo).port}`,
          upstream: upstream.url,
          simpleUpstream,
          sink,
        });
        assert.equal(r.ok, true, r.error);
        assert.equal(r.mirrorErrors, 1, 'the broken transfer is counted once');
        assert.ok(r.bytes.mirror > 2 * 1024 * 1024 && r.bytes.mirror <= sent, `bytes from the mirror: ${r.bytes.mirror}`);
        // The upstream sent only the rest of the big layer (plus manifest, config, small layer).
        assert.equal(upstream.stats.blobGets[big.digest], 1);
        assert.ok(upstream.stats.bytes < big.size - r.bytes.mirror + 64 * 1024, `upstream sent ${upstream.stats.bytes}`);
        assert.equal(r.bytes.upstream, upstream.stats.bytes);
        const stored = await readFile(sink.blobPath(big.digest));
        assert.equal(stored.length, big.size);
        assert.equal(`sha256:${createHash('sha256').update(stored).digest('hex')}`, big.digest);
      } finally {
        await upstream.close();
        await new Promise((r) => mirror.close(r));
        mirror.closeAllConnections();
        await rm(root, { recursive: true, force: true });
      }
    });
  }
});

describe('the local cluster cleans up', () => {
  test('on stop, and when a node fails to start', async () => {
    const parent = await mkdtemp(path.join(os.tmpdir(), 'peerpull-storm-clean-'));
    try {
      const c = await LocalCluster.start({ nodes: 2, dir: parent, ipBase: '127.0.93' });
      const pids = c.pids();
      assert.equal(pids.length, 2);
      assert.ok(pids.every(alive));
      assert.ok(await exists(c.dir));
      await c.stop();
      assert.ok(!pids.some(alive), 'no node process left');
      assert.ok(!(await exists(c.dir)), 'temp dir removed');

      let seen: { pids: number[]; dir: string } | undefined;
      await assert.rejects(
        LocalCluster.start({
          nodes: 2, dir: parent, ipBase: '127.0.93',
          env: { PEERPULL_CHUNK_SIZE: 'nonsense' }, // every node exits at once with a configuration error
          onEvent: (e) => {
            if (e.event === 'cluster') seen = e as unknown as { pids: number[]; dir: string };
          },
        }),
        /exited/,
      );
      assert.ok(seen);
      assert.ok(!seen.pids.some(alive));
      assert.ok(!(await exists(seen.dir)));
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  });

  test('on SIGINT to a running storm: node PIDs gone, temp dir removed', async () => {
    const parent = await mkdtemp(path.join(os.tmpdir(), 'peerpull-storm-sigint-'));
    try {
      // A slow upstream keeps the run going while it is interrupted.
      const s = startStorm(['--local', '3', '--size', '64MB', '--layers', '1', '--upstream-rate', '4MB', '--scenario', 'storm', '--ip-base', '127.0.92', '--dir', parent, '--events']);
      const cluster = (await s.waitEvent((e) => e.event === 'cluster')) as { pids: number[]; dir: string };
      await s.waitEvent((e) => e.event === 'run');
      assert.ok(cluster.pids.every(alive));
      s.child.kill('SIGINT');
      const { code } = await s.exited;
      assert.equal(code, 130, s.stderr());
      assert.ok(!cluster.pids.some(alive), 'every node process is gone');
      assert.ok(!(await exists(cluster.dir)), 'the cluster temp dir is removed');
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  });
});

describe('a small rolling storm on 3 nodes', () => {
  test('later waves are served by peers; the upstream sees each blob a bounded number of times', async () => {
    const parent = await mkdtemp(path.join(os.tmpdir(), 'peerpull-storm-small-'));
    const html = path.join(parent, 'report.html');
    try {
      const s = startStorm([
        '--local', '3', '--size', '3MB', '--layers', '2', '--scenario', 'rolling', '--wave', '33', '--wave-gap', '3s',
        '--baseline', '--upstream-rate', '50MB', '--ip-base', '127.0.91', '--dir', parent, '--json', '--html', html,
      ]);
      const { code } = await s.exited;
      assert.equal(code, 0, s.stderr());
      const report = JSON.parse(s.stdout()) as { ok: boolean; runs: JsonRun[]; comparisons: { scenario: string; speedupP50: number }[] };
      assert.equal(report.ok, true);
      const base = report.runs.find((r) => r.mode === 'baseline')!;
      const pp = report.runs.find((r) => r.mode === 'peerpull')!;
      assert.equal(base.ok, 3);
      assert.equal(pp.ok, 3);
      // Baseline: every node went upstream for every blob.
      assert.equal(base.upstreamBlobGets.max, 3);
      assert.equal(base.bytes.viaMirror, 0);
      // peerpull: the first wave went upstream, later waves came (at least partly) from peers.
      const first = pp.pulls.find((p) => p.wave === 1)!;
      assert.equal(first.bytes.mirror, 0);
      const later = pp.pulls.filter((p) => p.wave > 1);
      assert.ok(later.reduce((a, p) => a + p.bytes.mirror, 0) > 0, 'later pulls got bytes through peerpull');
      assert.ok(pp.bytes.peer > 0, 'bytes moved between peers');
      assert.ok((pp.counters.requests['blob/peer'] ?? 0) >= 1, 'the nodes counted peer hits');
      assert.ok(pp.upstreamBlobGets.max <= 2, `upstream saw a blob ${pp.upstreamBlobGets.max} times`);
      assert.ok(pp.bytes.upstream < base.bytes.upstream);
      assert.ok(typeof report.comparisons[0]!.speedupP50 === 'number');
      // The HTML report is self-contained: inline SVG, nothing fetched.
      const page = await readFile(html, 'utf8');
      assert.ok(page.includes('<svg'));
      assert.ok(!/\s(src|href)=/i.test(page), 'no external resources');
      assert.ok(!/https?:\/\/(?!www\.w3\.org\/2000\/svg)/.test(page.replace(/<pre>[\s\S]*?<\/pre>/g, '')), 'no network URLs');
      // Its cluster is gone.
      const leftovers = (await import('node:fs/promises')).readdir(parent);
      assert.deepEqual((await leftovers).filter((f) => f.startsWith('peerpull-storm-')), []);
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  });
});

describe('a pull storm on 3 nodes shares downloads in flight', () => {
  test('every blob crosses the upstream once; the other nodes stream it from the node fetching it', async () => {
    const parent = await mkdtemp(path.join(os.tmpdir(), 'peerpull-storm-shared-'));
    try {
      // A slow upstream (8 MB in 2 layers at 8 MB/s: a second per pull) so that every node asks
      // while the first download is still running.
      const s = startStorm([
        '--local', '3', '--size', '8MB', '--layers', '2', '--scenario', 'storm',
        '--baseline', '--upstream-rate', '8MB', '--ip-base', '127.0.97', '--dir', parent, '--json',
      ]);
      const { code } = await s.exited;
      assert.equal(code, 0, s.stderr());
      const report = JSON.parse(s.stdout()) as { ok: boolean; runs: JsonRun[] };
      const base = report.runs.find((r) => r.mode === 'baseline')!;
      const pp = report.runs.find((r) => r.mode === 'peerpull')!;
      assert.equal(pp.ok, 3);
      assert.equal(base.upstreamBlobGets.max, 3, 'without peerpull every node fetches every blob');
      // Config and layers went upstream once each (manifests are not shared: small, and asked by tag).
      assert.equal(pp.upstreamBlobGets.max, 1, JSON.stringify(pp.upstreamBlobGets.perBlob));
      assert.equal(Object.keys(pp.upstreamBlobGets.perBlob).length, 3);
      assert.ok(pp.bytes.upstream < 1.2 * pp.imageBytes, `upstream sent ${pp.bytes.upstream} bytes for a ${pp.imageBytes}-byte image`);
      assert.ok(pp.bytes.peer >= 1.8 * pp.imageBytes * 0.9, `bytes from peers: ${pp.bytes.peer}`);
      // The nodes say how: downloads fetched for the cluster and joined in flight.
      assert.ok((pp.counters.shared.fetching ?? 0) >= 3, `fetching: ${JSON.stringify(pp.counters.shared)}`);
      assert.ok((pp.counters.shared.joined ?? 0) >= 4, `joined: ${JSON.stringify(pp.counters.shared)}`);
      assert.equal(pp.counters.shared.join_failed ?? 0, 0);
      // Every pull was verified (storm hashes every blob): no failures.
      assert.equal(pp.failed, 0);
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  });
});

describe('--node-env sets PEERPULL_* settings on every local node', () => {
  const cases: { raw: string; want?: Record<string, string>; error?: RegExp }[] = [
    { raw: '', want: {} },
    { raw: 'PEERPULL_SHARE_DOWNLOADS=false\nPEERPULL_PEER_VERIFY=true', want: { PEERPULL_SHARE_DOWNLOADS: 'false', PEERPULL_PEER_VERIFY: 'true' } },
    { raw: 'PEERPULL_MIRRORED_REGISTRIES=a.io,b.io', want: { PEERPULL_MIRRORED_REGISTRIES: 'a.io,b.io' } },
    { raw: 'PEERPULL_SHARE_DOWNLOADS=maybe', error: /PEERPULL_SHARE_DOWNLOADS: "maybe"/ },
    { raw: 'PEERPULL_NO_SUCH=1', error: /PEERPULL_NO_SUCH: unknown setting/ },
    { raw: 'PEERPULL_STORE=oci-layout:/x', error: /PEERPULL_STORE is set by the local cluster/ },
    { raw: 'HOME=/root', error: /not PEERPULL_NAME=VALUE/ },
    { raw: 'PEERPULL_SHARE_DOWNLOADS', error: /not PEERPULL_NAME=VALUE/ },
  ];
  for (const c of cases) {
    test(`parse ${JSON.stringify(c.raw)}`, () => {
      if (c.want) assert.deepEqual(parseNodeEnv(c.raw), c.want);
      else assert.throws(() => parseNodeEnv(c.raw), (e: Error) => e instanceof UsageError && c.error!.test(e.message));
    });
  }

  test('with PEERPULL_SHARE_DOWNLOADS=false a storm sends every node upstream for every blob', async () => {
    const parent = await mkdtemp(path.join(os.tmpdir(), 'peerpull-storm-nodeenv-'));
    try {
      const s = startStorm([
        '--local', '3', '--size', '8MB', '--layers', '2', '--scenario', 'storm', '--upstream-rate', '8MB',
        '--ip-base', '127.0.98', '--dir', parent, '--json', '--node-env', 'PEERPULL_SHARE_DOWNLOADS=false',
      ]);
      const { code } = await s.exited;
      assert.equal(code, 0, s.stderr());
      const report = JSON.parse(s.stdout()) as { runs: JsonRun[]; settings: { nodeEnv: Record<string, string> } };
      assert.deepEqual(report.settings.nodeEnv, { PEERPULL_SHARE_DOWNLOADS: 'false' });
      const pp = report.runs.find((r) => r.mode === 'peerpull')!;
      assert.equal(pp.ok, 3);
      assert.equal(pp.upstreamBlobGets.max, 3, JSON.stringify(pp.upstreamBlobGets.perBlob));
      assert.equal(pp.counters.shared.joined ?? 0, 0);
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  });

  test('a bad --node-env stops storm before it starts anything', async () => {
    const s = startStorm(['--local', '2', '--node-env', 'PEERPULL_PEER_STALL_TIMEOUT=soon']);
    const { code } = await s.exited;
    assert.equal(code, 2);
    assert.match(s.stderr(), /--node-env: PEERPULL_PEER_STALL_TIMEOUT: "soon"/);
  });
});

describe("storm reads the nodes' metrics", () => {
  const exposition = (missCount: number) => [
    '# HELP peerpull_mirror_requests_total x',
    'peerpull_mirror_requests_total{kind="blob",outcome="miss"} 4',
    'peerpull_mirror_requests_total{kind="blob",outcome="peer"} 2',
    'peerpull_shared_downloads_total{event="joined"} 3',
    'peerpull_mirror_lookup_seconds_bucket{le="0.001",result="none"} 9',
    'peerpull_mirror_lookup_seconds_bucket{le="+Inf",result="none"} 9',
    'peerpull_mirror_lookup_seconds_count{result="none"} 9',
    'peerpull_mirror_lookup_seconds_count{result="found"} 5',
    `peerpull_mirror_miss_seconds_bucket{le="0.001",kind="blob"} ${missCount - 2}`,
    `peerpull_mirror_miss_seconds_bucket{le="0.02",kind="blob"} ${missCount - 1}`,
    'peerpull_mirror_miss_seconds_bucket{le="0.25",kind="blob"} ' + missCount,
    'peerpull_mirror_miss_seconds_bucket{le="+Inf",kind="blob"} ' + missCount,
    'peerpull_mirror_miss_seconds_sum{kind="blob"} 0.05',
    'peerpull_mirror_miss_seconds_count{kind="blob"} ' + missCount,
    'peerpull_mirror_miss_seconds_bucket{le="0.001",kind="manifest"} 1',
    'peerpull_mirror_miss_seconds_bucket{le="0.02",kind="manifest"} 1',
    'peerpull_mirror_miss_seconds_bucket{le="0.25",kind="manifest"} 1',
    'peerpull_mirror_miss_seconds_bucket{le="+Inf",kind="manifest"} 1',
    'peerpull_mirror_miss_seconds_count{kind="manifest"} 1',
    'peerpull_mirror_miss_seconds_sum{kind="manifest"} 0.001',
  ].join('\n');

  test('counters, lookups that found nobody, and the time to a miss\'s 404 (all kinds)', () => {
    const c = parseCounters(exposition(100));
    assert.deepEqual(c.requests, { 'blob/miss': 4, 'blob/peer': 2 });
    assert.deepEqual(c.shared, { joined: 3 });
    assert.equal(c.missLookup.count, 9, 'found lookups are not misses');
    assert.equal(c.missAnswer.count, 101);
    assert.equal(c.missAnswer.buckets['+Inf'], 101);
    assert.equal(c.missAnswer.buckets['0.02'], 100);
  });

  test('percentiles of a histogram are its bucket bounds, the average exact; deltas per run', () => {
    const run = delta([parseCounters(exposition(100))], [parseCounters(exposition(200))]);
    assert.equal(run.missAnswer.count, 100);
    const s = histogramSummary(run.missAnswer);
    assert.equal(s.bucketed, true);
    assert.equal(s.p50, 1, 'p50 in the 1 ms bucket');
    assert.equal(s.p99, 1);
    assert.equal(s.max, 1);
    const all = histogramSummary(parseCounters(exposition(100)).missAnswer);
    assert.equal(all.p99, 20, '99 of 101 are within 20 ms');
    assert.equal(all.max, 250);
    assert.equal(all.aboveMax, undefined);
    assert.ok(Math.abs(all.avg - (0.051 / 101) * 1000) < 1e-9);
  });
});

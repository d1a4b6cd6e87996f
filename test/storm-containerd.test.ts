// `peerpull storm --local N --containerd`: every node has its own real containerd, and a pull is a
// real containerd pull (`ctr content fetch` through a hosts.toml listing the node's peerpull, then
// the storm's upstream). Later waves come from peers, the upstream sees each blob a bounded number
// of times, and containerd processes, ctr processes and dirs are gone afterwards, also on SIGINT.
// Needs root and containerd: missing either fails loudly (npm test installs containerd).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { access, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { requireContainerd } from './support/containerd.js';
import { CLI } from './support/peerpull.js';
import { alive, startStorm } from './support/storm-run.js';

const exists = (p: string) => access(p).then(() => true, () => false);

interface JsonRun {
  label: string;
  mode: string;
  ok: number;
  failed: number;
  failures: { node: string; kind: string; error: string }[];
  pulls: { node: string; wave: number; ok: boolean; bytes: { mirror: number; upstream: number } }[];
  bytes: { upstream: number; viaMirror: number; viaUpstream: number; peer: number };
  counters: { shared: Record<string, number>; requests: Record<string, number> };
  upstreamBlobGets: { max: number; perBlob: Record<string, number> };
  imageBytes: number;
}

/** PIDs of live processes whose command line mentions `dir` (containerd, ctr, peerpull of that cluster). */
async function processesUnder(dir: string): Promise<number[]> {
  const found: number[] = [];
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    const cmd = await readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(dir) && alive(Number(e))) found.push(Number(e));
  }
  return found;
}

async function mountsUnder(dir: string): Promise<string[]> {
  const m = await readFile('/proc/self/mounts', 'utf8');
  return m.split('\n').map((l) => l.split(' ')[1] ?? '').filter((p) => p.startsWith(dir + '/'));
}

describe('storm --containerd', () => {
  before(async () => {
    assert.equal(process.getuid?.(), 0, 'the --containerd storm tests need root (containerd); run them as root, they never skip');
    await requireContainerd();
  });

  test('a small rolling storm and a pull storm on 3 containerd nodes: later waves from peers, shared downloads, bounded upstream GETs, everything cleaned up', async () => {
    const parent = await mkdtemp(path.join(os.tmpdir(), 'ppsc-'));
    try {
      const s = startStorm([
        '--local', '3', '--containerd', '--size', '3MB', '--layers', '2', '--scenario', 'rolling,storm', '--wave', '33', '--wave-gap', '3s',
        '--baseline', '--upstream-rate', '50MB', '--ip-base', '127.0.95', '--dir', parent, '--json', '--events',
      ]);
      const ctd = (await s.waitEvent((e) => e.event === 'containerd', 120_000)) as { pids: number[] };
      const cluster = (await s.waitEvent((e) => e.event === 'cluster', 120_000)) as { pids: number[]; dir: string };
      assert.equal(ctd.pids.length, 3, 'one containerd per node');
      const { code } = await s.exited;
      assert.equal(code, 0, s.stderr().slice(-3000));
      const report = JSON.parse(s.stdout()) as { ok: boolean; settings: { store: string }; runs: JsonRun[] };
      assert.equal(report.ok, true);
      assert.match(report.settings.store, /containerd/);
      const base = report.runs.find((r) => r.label === 'rolling/baseline')!;
      const pp = report.runs.find((r) => r.label === 'rolling/peerpull')!;
      assert.equal(base.ok, 3, JSON.stringify(base.failures));
      assert.equal(pp.ok, 3, JSON.stringify(pp.failures));
      // Baseline: every containerd fetched every blob from the upstream itself.
      assert.equal(base.upstreamBlobGets.max, 3);
      assert.equal(base.bytes.viaMirror, 0);
      assert.equal(base.bytes.upstream, 3 * base.imageBytes, 'each baseline pull moved one image from the upstream');
      // peerpull: the first wave's containerd fell back to the upstream after peerpull's 404s ...
      const first = pp.pulls.find((p) => p.wave === 1)!;
      assert.equal(first.bytes.mirror, 0);
      assert.equal(first.bytes.upstream, pp.imageBytes);
      assert.ok((pp.counters.requests['manifest/miss'] ?? 0) >= 1, 'the first wave asked peerpull first and got a miss');
      // ... and later waves' containerd got the image through their peerpull, from the peer that
      // holds it in its containerd (peerpull saw that pull through containerd's events).
      for (const p of pp.pulls.filter((x) => x.wave > 1)) {
        assert.equal(p.bytes.mirror, pp.imageBytes, `${p.node} got the whole image through its peerpull`);
        assert.equal(p.bytes.upstream, 0, `${p.node} needed nothing from the upstream`);
      }
      assert.ok((pp.counters.requests['blob/peer'] ?? 0) >= 2, 'the pulling nodes counted peer hits');
      assert.ok((pp.counters.requests['blob/local'] ?? 0) >= 2, 'the holder served blobs from its containerd content store');
      assert.ok(pp.bytes.peer >= 2 * (pp.imageBytes - 10_000), `bytes from peers: ${pp.bytes.peer}`);
      assert.ok(pp.upstreamBlobGets.max <= 1, `upstream saw a blob ${pp.upstreamBlobGets.max} times`);
      assert.equal(pp.bytes.upstream, pp.imageBytes);
      // All three at once: one node fetches each blob (containerd's ingest), the others stream
      // it from there, so the upstream still sends one image, not three.
      const storm = report.runs.find((r) => r.label === 'storm/peerpull')!;
      assert.equal(storm.ok, 3, JSON.stringify(storm.failures));
      assert.equal(storm.upstreamBlobGets.max, 1, JSON.stringify(storm.upstreamBlobGets.perBlob));
      assert.ok(storm.bytes.upstream < 1.1 * storm.imageBytes, `storm upstream ${storm.bytes.upstream} for a ${storm.imageBytes}-byte image`);
      assert.ok((storm.counters.shared.fetching ?? 0) >= 3, JSON.stringify(storm.counters.shared));
      assert.ok((storm.counters.shared.joined ?? 0) >= 2, JSON.stringify(storm.counters.shared));
      // Cleaned up: peerpull and containerd PIDs, no ctr or other process of the cluster, no mounts, no dir.
      assert.ok(!cluster.pids.some(alive), 'no peerpull process left');
      assert.ok(!ctd.pids.some(alive), 'no containerd process left');
      assert.deepEqual(await processesUnder(cluster.dir), []);
      assert.deepEqual(await mountsUnder(cluster.dir), []);
      assert.ok(!(await exists(cluster.dir)), 'the cluster dir is removed');
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  });

  test('SIGINT while containerd pulls: containerd, ctr and peerpull processes gone, dir removed', async () => {
    const parent = await mkdtemp(path.join(os.tmpdir(), 'ppsc-'));
    try {
      // A slow upstream keeps the pulls (ctr processes) running when the signal comes.
      const s = startStorm(['--local', '2', '--containerd', '--size', '64MB', '--layers', '1', '--upstream-rate', '4MB', '--scenario', 'storm', '--ip-base', '127.0.95', '--dir', parent, '--events']);
      const ctd = (await s.waitEvent((e) => e.event === 'containerd', 120_000)) as { pids: number[] };
      const cluster = (await s.waitEvent((e) => e.event === 'cluster', 120_000)) as { pids: number[]; dir: string };
      await s.waitEvent((e) => e.event === 'run', 120_000);
      // Wait until containerd is really fetching: a ctr process of this cluster exists.
      const deadline = Date.now() + 60_000;
      let pullers: number[] = [];
      while (pullers.length === 0 && Date.now() < deadline) {
        pullers = (await processesUnder(cluster.dir)).filter((p) => !cluster.pids.includes(p) && !ctd.pids.includes(p));
        if (pullers.length === 0) await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok(pullers.length > 0, 'a ctr pull was running');
      s.child.kill('SIGINT');
      const { code } = await s.exited;
      assert.equal(code, 130, s.stderr().slice(-3000));
      assert.ok(![...cluster.pids, ...ctd.pids, ...pullers].some(alive), 'every process of the cluster is gone');
      assert.deepEqual(await processesUnder(cluster.dir), []);
      assert.ok(!(await exists(cluster.dir)), 'the cluster dir is removed');
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  });

  test('without containerd and ctr on PATH: a clear error naming both, exit 2, nothing started', async () => {
    const parent = await mkdtemp(path.join(os.tmpdir(), 'ppsc-'));
    try {
      const child = spawn(process.execPath, [CLI, 'storm', '--local', '2', '--containerd', '--dir', parent], { env: { PATH: path.join(parent, 'empty-bin') }, stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
      const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
      assert.equal(code, 2, err);
      assert.match(err, /--containerd needs containerd \(not on PATH.*\) and ctr \(not on PATH/);
      assert.deepEqual(await readdir(parent), [], 'no cluster dir was made');

      // Not root: said as plainly (nobody's uid, the rest as installed).
      const user = spawn(process.execPath, [CLI, 'storm', '--local', '2', '--containerd', '--dir', parent], { uid: 65534, gid: 65534, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, stdio: ['ignore', 'pipe', 'pipe'] });
      let userErr = '';
      user.stderr!.setEncoding('utf8').on('data', (d: string) => (userErr += d));
      const userCode = await new Promise<number | null>((r) => user.once('exit', (c) => r(c)));
      assert.equal(userCode, 2, userErr);
      assert.match(userErr, /--containerd needs root/);
      assert.doesNotMatch(userErr, /needs root.*containerd \(/, 'containerd itself is installed');
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  });
});

// /status on the metrics port and `peerpull status`, against real `peerpull serve` processes with
// p2p on: node A holds an image, node B (configured as containerd's mirror by a real
// `peerpull configure`) pulls it from A through the DHT. B's status must show it all.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { generateImage, type GeneratedImage } from '../src/main/image-generator.js';
import type { StatusSnapshot } from '../src/main/status.js';
import { get, freePort } from './support/http.js';
import { CLI, eventually, REPO_ROOT, startPeerpull, type PeerpullProcess } from './support/peerpull.js';

const execFileP = promisify(execFile);
// Own addresses: test files run in parallel, and other suites use 127.0.77.x.
const IPS = ['127.0.78.1', '127.0.78.2'];
const P2P_PORT = 5001;


async function statusJson(pp: PeerpullProcess): Promise<StatusSnapshot> {
  const r = await get(`${pp.metricsUrl}/status?format=json`);
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type']!, /^application\/json/);
  return JSON.parse(r.body.toString()) as StatusSnapshot;
}

describe('/status and peerpull status', () => {
  let root: string;
  let a: PeerpullProcess | undefined;
  let b: PeerpullProcess | undefined;
  let img: GeneratedImage;
  let bPort: number;
  const missing = 'sha256:' + '5'.repeat(64);
  let version: string;

  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'peerpull-status-'));
    version = JSON.parse(await readFile(path.join(REPO_ROOT, 'package.json'), 'utf8')).version;
    img = await generateImage(path.join(root, 'A'), { name: 'docker.io/library/statusdemo:1', layerSizes: [200_000, 3000] });
    await generateImage(path.join(root, 'B'), { name: 'docker.io/library/bown:1', layerSizes: [100] });
    bPort = await freePort(IPS[1]!);
    const common = (i: number) => ({
      PEERPULL_P2P: 'true',
      PEERPULL_P2P_ADDR: `${IPS[i]}:${P2P_PORT}`,
      PEERPULL_BOOTSTRAP_PEERS: `/ip4/${IPS[1 - i]}/tcp/${P2P_PORT}`,
      PEERPULL_BOOTSTRAP_INTERVAL: '1s',
      PEERPULL_DATA_DIR: path.join(root, `data-${i}`),
      PEERPULL_CLUSTER: 'status-test',
      PEERPULL_CONTAINERD_CONFIG_PATH: path.join(root, `certs-${i}`),
      PEERPULL_MIRRORED_REGISTRIES: 'docker.io',
      PEERPULL_WORKERS: '2',
    });
    // containerd on B would be told to use B: the real configure writes docker.io/hosts.toml.
    const bEnv = { ...common(1), PEERPULL_NODE_IP: IPS[1]!, PEERPULL_REGISTRY_ADDR: `${IPS[1]}:${bPort}` };
    await execFileP(process.execPath, [CLI, 'configure'], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...bEnv } });
    a = await startPeerpull({ ...common(0), PEERPULL_STORE: `oci-layout:${path.join(root, 'A')}` }, ['serve'], IPS[0]);
    b = await startPeerpull({ ...bEnv, PEERPULL_STORE: `oci-layout:${path.join(root, 'B')}` }, ['serve'], IPS[1]);
    for (const n of [a, b]) await eventually(async () => (await get(`${n.url}/readyz`)).status === 200, 30_000, 'node ready');
    await eventually(async () => (await get(`${b!.url}/v2/library/statusdemo/manifests/1?ns=docker.io`, {}, 'HEAD')).status === 200, 30_000, "B finding A's tag");
    // A peer pull (a blob only A holds) and a miss on B.
    const layer = img.manifests[0]!.layers[0]!;
    assert.equal((await get(`${b.url}/v2/library/statusdemo/blobs/${layer.digest}?ns=docker.io`)).status, 200);
    assert.equal((await get(`${b.url}/v2/library/statusdemo/blobs/${missing}?ns=docker.io`)).status, 404);
  });

  after(async () => {
    for (const n of [a, b]) await n?.stop('SIGKILL');
    if (root) await rm(root, { recursive: true, force: true });
  });

  test('JSON: identity, peers, content, last peer pull, misses, mirror config; all true', async () => {
    const s = await statusJson(b!);
    const sa = await statusJson(a!);
    assert.equal(s.healthy, true, `problems: ${s.problems.join('; ')}`);
    assert.deepEqual(s.problems, []);
    assert.equal(s.ready, true);
    // identity
    assert.match(s.node.peerId ?? '', /^12D3KooW/);
    assert.notEqual(s.node.peerId, sa.node.peerId);
    assert.equal(s.node.cluster, 'status-test');
    assert.equal(s.node.version, version);
    assert.equal(s.node.nodeIp, IPS[1]);
    assert.equal(s.node.listen.registry, `${IPS[1]}:${bPort}`);
    assert.equal(s.node.listen.metrics, `${IPS[1]}:${b!.metricsPort}`);
    assert.equal(s.node.listen.p2p, `${IPS[1]}:${P2P_PORT}`);
    assert.ok(s.node.advertised.some((m) => m.startsWith(`/ip4/${IPS[1]}/tcp/${P2P_PORT}/p2p/${s.node.peerId}`)), s.node.advertised.join(' '));
    assert.ok(s.node.uptimeSeconds >= 0);
    // p2p
    assert.equal(s.p2p.enabled, true);
    assert.equal(s.p2p.running, true);
    assert.equal(s.p2p.ready, true);
    assert.ok(s.p2p.peers >= 1);
    assert.ok(s.p2p.routingTable >= 1);
    assert.equal(s.p2p.bootstrapPeers, 1);
    // A's records reached B, and B's main thread holds a copy of them (A is the one provider).
    assert.ok(s.p2p.storeCopy.keys >= 1 && s.p2p.storeCopy.providers === 1, JSON.stringify(s.p2p.storeCopy));
    assert.equal(s.p2p.storeCopy.finalMisses, false, 'static bootstrap: no exact view, misses go to the thread');
    // B holds its own image: 1 tag + manifest, config, layer (and the index digest if any).
    assert.equal(s.content.kind, 'oci-layout');
    assert.equal(s.content.healthy, true);
    assert.equal(s.content.tags, 1);
    assert.ok(s.content.digests >= 3);
    assert.ok(s.p2p.advertisedKeys >= s.content.digests + s.content.tags, `advertised ${s.p2p.advertisedKeys}`);
    // the last peer pull came from A; the miss is listed
    assert.equal(s.mirror.lastPeerHit?.outcome, 'peer');
    assert.equal(s.mirror.lastPeerHit?.kind, 'blob');
    assert.equal(s.mirror.lastPeerHit?.key, img.manifests[0]!.layers[0]!.digest);
    assert.equal(s.mirror.lastPeerHit?.peer, sa.node.peerId);
    assert.ok(s.mirror.recentMisses.some((m) => m.key.includes(missing) && m.kind === 'blob'), JSON.stringify(s.mirror.recentMisses));
    assert.equal(sa.mirror.lastPeerHit, null);
    // containerd is not used by an OCI-layout node
    assert.equal(s.containerd.used, false);
    // mirror config written by configure, pointing at B
    const mc = s.mirrorConfig;
    assert.equal(mc.exists, true);
    assert.deepEqual(mc.wanted, ['docker.io']);
    assert.deepEqual(mc.missing, []);
    const d = mc.registries.find((r) => r.registry === 'docker.io');
    assert.ok(d, JSON.stringify(mc));
    assert.equal(d.managed, true);
    assert.equal(d.pointsHere, true);
    assert.equal(d.server, 'https://registry-1.docker.io');
    assert.deepEqual(d.hosts, [`http://${IPS[1]}:${bPort}`]);
    // A has no mirror config: that is reported as a problem, in words.
    assert.equal(sa.healthy, false);
    assert.ok(sa.problems.some((p) => /hosts\.toml|mirror config/.test(p)), sa.problems.join('; '));
  });

  test('Accept: application/json gives JSON; a browser gets a self-contained HTML page', async () => {
    const j = await get(`${b!.metricsUrl}/status`, { accept: 'application/json' });
    assert.match(j.headers['content-type']!, /^application\/json/);
    assert.equal(JSON.parse(j.body.toString()).node.cluster, 'status-test');

    const h = await get(`${b!.metricsUrl}/status`, { accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8' });
    assert.equal(h.status, 200);
    assert.match(h.headers['content-type']!, /^text\/html/);
    const html = h.body.toString();
    const s = await statusJson(b!);
    assert.match(html, /^<!doctype html>/);
    assert.ok(html.includes(s.node.peerId!), 'peer id shown');
    assert.ok(html.includes('Working'), 'verdict shown');
    assert.ok(html.includes(`http://${IPS[1]}:${bPort}`), 'mirror endpoint shown');
    assert.ok(html.includes(missing), 'miss shown');
    assert.ok(html.includes(img.manifests[0]!.layers[0]!.digest), 'last peer pull shown');
    // No external assets, no scripts.
    assert.doesNotMatch(html, /<script|<link|<img|<iframe|\bsrc=|url\(|@import/i);
    assert.doesNotMatch(html, /href="(?![?/])/i, 'links stay on the node');
    assert.ok(html.trimEnd().endsWith('</html>'));
  });

  test('the Grafana dashboard in the chart uses metric names and labels a real node exports', async () => {
    const dash = JSON.parse(await readFile(path.join(REPO_ROOT, 'charts/peerpull/dashboards/peerpull.json'), 'utf8')) as {
      panels: { title: string; targets: { expr: string }[] }[];
      templating: { list: { name: string; definition?: string }[] };
    };
    // B has p2p on, fetched from a peer and missed: most series have samples by now.
    const text = (await get(`${b!.metricsUrl}/metrics`)).body.toString();
    const families = new Map<string, string>(); // name -> type
    const labels = new Map<string, Set<string>>(); // family -> label names seen
    for (const line of text.split('\n')) {
      const t = /^# TYPE (\S+) (\S+)/.exec(line);
      if (t) families.set(t[1]!, t[2]!);
      const m = /^([a-zA-Z0-9_:]+)\{([^}]*)\}/.exec(line);
      if (m) {
        const fam = [...families.keys()].find((f) => m[1] === f || (families.get(f) === 'histogram' && /^(.*)_(bucket|sum|count)$/.exec(m[1]!)?.[1] === f));
        if (!fam) continue;
        const set = labels.get(fam) ?? new Set<string>();
        for (const kv of m[2]!.matchAll(/([a-zA-Z_]+)="/g)) set.add(kv[1]!);
        labels.set(fam, set);
      }
    }
    // Labels Prometheus adds to every series (the chart's ServiceMonitor relabels node from the pod's node).
    const targetLabels = new Set(['instance', 'job', 'node', 'namespace', 'pod', 'le']);
    const exprs = [...dash.panels.flatMap((p) => p.targets.map((t) => t.expr)), ...dash.templating.list.map((v) => v.definition ?? '')];
    assert.ok(exprs.length >= 10);
    for (const expr of exprs) {
      const names = [...expr.matchAll(/\b(peerpull_[a-z0-9_]+)/g)].map((x) => x[1]!);
      const fams = names.map((n) => {
        const fam = families.has(n) ? n : (/^(.*)_(bucket|sum|count)$/.exec(n)?.[1] ?? n);
        assert.ok(families.has(fam) && (fam === n || families.get(fam) === 'histogram'), `${n} (in ${expr}) is not exported`);
        return fam;
      });
      const used = [
        ...[...expr.matchAll(/\b(?:by|on)\s*\(([^)]*)\)/g)].flatMap((x) => x[1]!.split(',').map((l) => l.trim()).filter(Boolean)),
        ...[...expr.matchAll(/\{([^}]*)\}/g)].flatMap((x) => [...x[1]!.matchAll(/([a-zA-Z_]+)\s*=~?/g)].map((y) => y[1]!)),
        ...[...expr.matchAll(/label_values\([^,]+,\s*([a-z_]+)\)/g)].map((x) => x[1]!),
      ];
      for (const l of used) {
        // A counter that never moved (p2p thread restarts) has no samples to read labels from.
        if (targetLabels.has(l) || fams.every((f) => !labels.has(f))) continue;
        assert.ok(fams.some((f) => labels.get(f)?.has(l)), `label ${l} (in ${expr}) is on none of ${fams.join(', ')}`);
      }
    }
  });

  test('peerpull status prints a readable summary, and --format json the snapshot', async () => {
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
    const text = await execFileP(process.execPath, [CLI, 'status', '--url', b!.metricsUrl], { env });
    const s = await statusJson(b!);
    assert.match(text.stdout, /cluster status-test - working/);
    assert.ok(text.stdout.includes(s.node.peerId!));
    assert.match(text.stdout, /peers\s+\d+ connected/);
    assert.match(text.stdout, /docker\.io\s+peerpull's, points here/);
    assert.match(text.stdout, /last peer pull \S+ blob /);
    const json = await execFileP(process.execPath, [CLI, 'status', '--url', b!.metricsUrl, '--format', 'json'], { env });
    assert.equal(JSON.parse(json.stdout).node.peerId, s.node.peerId);
    // Nothing listening: a clear error and exit 1.
    const closed = await freePort('127.0.0.1');
    await assert.rejects(execFileP(process.execPath, [CLI, 'status', '--url', `http://127.0.0.1:${closed}`], { env }), (err: Error & { code?: number; stderr?: string }) => {
      assert.equal(err.code, 1);
      assert.match(err.stderr ?? '', /no answer from .*is `peerpull serve` running\?/s);
      return true;
    });
  });
});

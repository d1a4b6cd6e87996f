// End to end, the full way: three nodes, each a network namespace with its own containerd (CRI
// plugin on, config_path written by peerpull's own `configure`) and its own `peerpull serve`, joined
// by a bridge in a namespace of its own, bootstrapped from a headless name served by dnsmasq.
// An image imported on node A is pulled by node B's containerd daemon through the CRI ImageService
// (the kubelet's path) and must arrive byte-identical, served by A through B's peerpull; then node C
// pulls it; then A's peerpull and containerd die, and B's fresh re-pull is served from C's copy.
// Every upstream is pinned to a closed loopback port inside the node namespaces, so a pull can only
// succeed through peerpull. Root and iproute2 are required: this suite fails loudly, never skips.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../src/main/config.js';
import { configure } from '../src/main/hosts-config.js';
import type { GeneratedImage } from '../src/main/image-generator.js';
import { MediaType } from '../src/shared/oci.js';
import { makeImage, requireContainerd, type Containerd } from './support/containerd.js';
import { CriImageClient } from './support/cri.js';
import {
  createLan,
  namespacesWithTag,
  nsHttp,
  nsResolve4,
  requireNetns,
  startContainerdIn,
  startDnsmasqIn,
  startPeerpullIn,
  sweepStaleNamespaces,
  makeTempDir,
  removeTempDir,
  type Lan,
  type LanNode,
  type NsDnsmasq,
  type NsPeerpull,
} from './support/netns.js';

const HOST_ARCH = process.arch === 'arm64' ? 'arm64' : 'amd64';
const TAG = `ppe2e${process.pid}`;
const SUBNET = '10.77.0';
const BRIDGE_IP = `${SUBNET}.254`;
const HEADLESS = 'peerpull-headless.e2e.svc.cluster.local';
const REGISTRY_PORT = 5000;
// Inside a node namespace nothing listens on loopback, so this upstream refuses every connection:
// a pull that does not go through peerpull fails instead of leaving the machine.
const CLOSED_UPSTREAM = 'http://127.0.0.1:1';
const IMAGE = `docker.io/library/e2e-netns-${process.pid}:v1`;
const REPO = `library/e2e-netns-${process.pid}`;
const MANIFEST_ACCEPT = [MediaType.OciManifest, MediaType.OciIndex, MediaType.DockerManifest, MediaType.DockerManifestList].join(', ');

interface Node {
  lan: LanNode;
  dir: string;
  hostsDir: string;
  ctd?: Containerd;
  cri?: CriImageClient;
  pp?: NsPeerpull;
}

/** Sum of the samples of `name` whose labels include `labels` (other labels, e.g. cluster, ignored). */
function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const ls = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => ls[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

async function eventually(what: string, fn: () => Promise<boolean>, timeoutMs: number, intervalMs = 200): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(() => true, () => false);
}

async function tail(file: string, lines = 25): Promise<string> {
  try {
    return (await readFile(file, 'utf8')).trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(none)';
  }
}

describe('e2e: three nodes in network namespaces, CRI pulls through peerpull', { timeout: 240_000 }, () => {
  let work: string;
  let layout: string;
  let lan: Lan | undefined;
  let dns: NsDnsmasq | undefined;
  let img: GeneratedImage;
  // D joins later (a fresh node), so it is optional.
  const nodes = {} as Record<'a' | 'b' | 'c', Node> & { d?: Node };
  const all = (): Node[] => Object.values(nodes);
  const layerBytes = () => img.manifests[0]!.layers.reduce((s, l) => s + l.size, 0);
  const blobFiles = (n: Node) => img.all.map((d) => path.join(n.ctd!.contentPath, 'blobs', 'sha256', d.digest.slice('sha256:'.length)));

  const metricsText = async (n: Node) => {
    const r = await nsHttp(n.lan.ns, `http://${n.lan.ip}:9090/metrics`);
    assert.equal(r.status, 200, `metrics of ${n.lan.name}: ${r.text.slice(0, 200)}`);
    return r.text;
  };

  /** Post-mortem: the tail of every node's logs goes into the failure message. */
  async function withLogs(fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      const parts: string[] = [];
      for (const n of all()) {
        if (n.pp) parts.push(`--- peerpull ${n.lan.name} (${n.lan.ip}) ---\n${await tail(n.pp.logFile)}`);
        if (n.pp && n.pp.child.exitCode === null && n.pp.child.signalCode === null) {
          // What the node itself says about its misses and peers: the mirror's recent history and counters.
          const st = await nsHttp(n.lan.ns, `http://${n.lan.ip}:9090/status?format=json`).catch(() => undefined);
          if (st?.status === 200) {
            try {
              const s = JSON.parse(st.text) as { mirror?: unknown };
              parts.push(`--- status ${n.lan.name}: mirror ${JSON.stringify(s.mirror)}`);
            } catch {
              // not JSON: nothing to add
            }
          }
          const m = await nsHttp(n.lan.ns, `http://${n.lan.ip}:9090/metrics`).catch(() => undefined);
          if (m?.status === 200) {
            const lines = m.text.split('\n').filter((l) => /^peerpull_(mirror_requests|peer_|p2p_(peers|routing|lookups|advertised))/.test(l) && !/_bucket\{/.test(l));
            parts.push(`--- metrics ${n.lan.name} ---\n${lines.join('\n')}`);
          }
        }
        if (n.ctd) parts.push(`--- containerd ${n.lan.name} ---\n${await tail(path.join(n.ctd.dir, 'containerd.log'), 10)}`);
      }
      if (dns) parts.push(`--- dnsmasq ---\n${dns.output().slice(-1500)}`);
      (err as Error).message += '\n' + parts.join('\n');
      throw err;
    }
  }

  /** Every blob of the image is in the node's content store with exactly the bytes its digest names. */
  async function assertHoldsImage(n: Node): Promise<void> {
    for (const d of img.all) {
      const file = path.join(n.ctd!.contentPath, 'blobs', 'sha256', d.digest.slice('sha256:'.length));
      const bytes = await readFile(file);
      assert.equal(bytes.length, d.size, `${n.lan.name}: size of ${d.digest}`);
      assert.equal('sha256:' + createHash('sha256').update(bytes).digest('hex'), d.digest, `${n.lan.name}: content of ${d.digest}`);
    }
    const st = await n.cri!.imageStatus(IMAGE);
    assert.ok(st, `${n.lan.name}: CRI knows ${IMAGE}`);
    assert.ok(st.repo_tags.includes(IMAGE), `${n.lan.name}: repo tags ${JSON.stringify(st.repo_tags)}`);
    assert.equal(st.id, img.manifests[0]!.config.digest, `${n.lan.name}: CRI image id is the config digest`);
  }

  async function startNode(n: Node): Promise<void> {
    // hosts.toml the way a node's init container makes it: an operator's file whose upstream is
    // kept, rewritten by peerpull's own `configure` to put this node's peerpull first.
    await mkdir(path.join(n.hostsDir, 'docker.io'), { recursive: true });
    await writeFile(path.join(n.hostsDir, 'docker.io', 'hosts.toml'), `server = "${CLOSED_UPSTREAM}"\n`);
    const report = await configure(
      loadConfig({
        PEERPULL_CONTAINERD_CONFIG_PATH: n.hostsDir,
        PEERPULL_MIRRORED_REGISTRIES: 'docker.io',
        PEERPULL_NODE_IP: n.lan.ip,
        PEERPULL_REGISTRY_ADDR: `${n.lan.ip}:${REGISTRY_PORT}`,
      }),
    );
    assert.ok(report.ok, JSON.stringify(report));
    const hosts = await readFile(path.join(n.hostsDir, 'docker.io', 'hosts.toml'), 'utf8');
    // Safety first: the file containerd reads must not name any upstream but the closed port.
    assert.match(hosts, new RegExp(`^server = "${CLOSED_UPSTREAM.replaceAll('.', '\\.')}"$`, 'm'), hosts);
    assert.doesNotMatch(hosts, /registry-1|https:/, hosts);
    assert.match(hosts, new RegExp(`\\[host\\."http://${n.lan.ip.replaceAll('.', '\\.')}:${REGISTRY_PORT}"\\]`), hosts);
    assert.match(hosts, /capabilities = \["pull", "resolve"\]/);
    assert.match(hosts, /dial_timeout = "200ms"/);

    n.ctd = await startContainerdIn(n.lan.ns, { name: `ppe2e-${n.lan.name}`, cri: { configPath: n.hostsDir } });
    n.cri = await CriImageClient.connect(n.ctd.socket);
  }

  function peerpullEnv(n: Node): Record<string, string> {
    return {
      PEERPULL_STORE: 'containerd',
      PEERPULL_CONTAINERD_SOCK: n.ctd!.socket,
      PEERPULL_CONTENT_PATH: n.ctd!.contentPath,
      PEERPULL_REGISTRY_ADDR: `${n.lan.ip}:${REGISTRY_PORT}`,
      PEERPULL_P2P_ADDR: `${n.lan.ip}:5001`,
      PEERPULL_METRICS_ADDR: `${n.lan.ip}:9090`,
      PEERPULL_DATA_DIR: path.join(n.dir, 'data'),
      PEERPULL_BOOTSTRAP_DNS: HEADLESS,
      PEERPULL_DNS_SERVERS: dns!.server,
      PEERPULL_CLUSTER: 'e2e',
      PEERPULL_LOG_LEVEL: 'info',
      // The default 50ms deadline is a latency target, not what this suite checks (the mirror
      // benchmark does): a node's first DHT lookups were seen taking 50-150ms on a loaded CI machine,
      // and with the upstream closed a missed lookup fails the pull. E2E_MIRROR_LOOKUP_TIMEOUT=50ms
      // runs the suite with the production default.
      PEERPULL_MIRROR_LOOKUP_TIMEOUT: process.env.E2E_MIRROR_LOOKUP_TIMEOUT ?? '1s',
    };
  }

  async function waitReady(n: Node): Promise<void> {
    await eventually(
      `${n.lan.name}'s peerpull /readyz`,
      async () => (await nsHttp(n.lan.ns, `http://${n.lan.ip}:9090/readyz`)).status === 200,
      // Seconds when the machine is idle; a CI box at a load of 30x its cores was seen needing 25 s
      // just to start the p2p thread.
      60_000,
    );
  }

  before(async () => {
    // Loud preconditions: never a skip.
    await requireNetns();
    await requireContainerd();
    const swept = await sweepStaleNamespaces('ppe2e');
    if (swept.length) console.log(`# deleted namespaces of earlier runs that were killed: ${swept.join(', ')}`);
    work = await makeTempDir('ppe2e-');
    layout = path.join(work, 'layout');
    lan = await createLan({
      tag: TAG,
      bridgeIp: BRIDGE_IP,
      prefixLength: 24,
      nodes: [
        { name: 'a', ip: `${SUBNET}.1` },
        { name: 'b', ip: `${SUBNET}.2` },
        { name: 'c', ip: `${SUBNET}.3` },
      ],
    });
    for (const l of lan.nodes) {
      const dir = path.join(work, l.name);
      nodes[l.name as 'a' | 'b' | 'c'] = { lan: l, dir, hostsDir: path.join(dir, 'certs.d') };
    }
    dns = await startDnsmasqIn(lan.bridgeNs, BRIDGE_IP, { [HEADLESS]: lan.nodes.map((l) => l.ip) }, path.join(work, 'dns'));
    // The headless name answers across the bridge before any peerpull depends on it.
    await eventually(
      'dnsmasq to answer the headless name across the bridge',
      async () => (await nsResolve4(nodes.a.lan.ns, dns!.server, HEADLESS).catch(() => [])).join(',') === lan!.nodes.map((l) => l.ip).join(','),
      10_000,
      100,
    );
    // One at a time: startContainerdIn changes PATH for the duration of a call.
    for (const n of all()) await startNode(n);
    await Promise.all(all().map((n) => n.cri!.waitReady()));
    for (const n of all()) n.pp = await startPeerpullIn(n.lan.ns, peerpullEnv(n), n.dir);
    await withLogs(async () => {
      await Promise.all(all().map((n) => n.pp!.waitForLog((l) => l.msg === 'listening')));
      await Promise.all(all().map(waitReady));
    });
  });

  after(async () => {
    const problems: string[] = [];
    const attempt = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (err) {
        problems.push(`${what}: ${(err as Error).message}`);
      }
    };
    // Processes first (by PID), then the namespaces they lived in, then files.
    await Promise.all(all().map((n) => attempt(`stop peerpull ${n.lan.name}`, async () => n.pp?.stop())));
    for (const n of all()) n.cri?.close();
    await Promise.all(all().map((n) => attempt(`stop containerd ${n.lan.name}`, async () => n.ctd?.stop())));
    await attempt('stop dnsmasq', async () => dns?.stop());
    await attempt('delete namespaces', async () => lan?.destroy());
    if (work) await attempt('remove temp dir', () => removeTempDir(work));
    const left = await namespacesWithTag(TAG);
    if (left.length) problems.push(`namespaces left behind: ${left.join(', ')}`);
    if (problems.length) throw new Error(`cleanup failed: ${problems.join('; ')}`);
  });

  test('an image imported on A is pulled by B\'s containerd daemon (CRI) from A through peerpull, byte-identical', async () => {
    await withLogs(async () => {
      const { a, b } = nodes;
      img = await makeImage(a.ctd!, layout, {
        name: IMAGE,
        layerSizes: [3 * 1024 * 1024 + 5, 2 * 1024 * 1024, 512 * 1024 + 3],
        platforms: [{ os: 'linux', architecture: HOST_ARCH }],
      });
      assert.equal(img.all.length, 5, 'manifest, config and three layers');
      const tagUrl = (n: Node) => `http://${n.lan.ip}:${REGISTRY_PORT}/v2/${REPO}/manifests/v1?ns=docker.io`;
      // A serves it locally first (its index saw the import), then B finds it through the DHT.
      await eventually('A to serve the imported tag', async () => (await nsHttp(a.lan.ns, tagUrl(a), 'HEAD', { Accept: MANIFEST_ACCEPT })).status === 200, 15_000);
      await eventually(
        'B to resolve the tag through its peerpull (A advertised it)',
        async () => {
          const r = await nsHttp(b.lan.ns, tagUrl(b), 'HEAD', { Accept: MANIFEST_ACCEPT });
          return r.status === 200 && r.headers['docker-content-digest'] === img.target.digest;
        },
        30_000,
        250,
      );
      assert.equal(await b.cri!.imageStatus(IMAGE), undefined, 'B does not have the image before the pull');

      const started = Date.now();
      const ref = await b.cri!.pullImage(IMAGE);
      const pullMs = Date.now() - started;
      assert.equal(ref, img.manifests[0]!.config.digest);
      await assertHoldsImage(b);

      const m = await metricsText(b);
      const peerBlobs = metric(m, 'peerpull_mirror_requests_total', { kind: 'blob', outcome: 'peer' });
      // config + three layers, each fetched from A (a HEAD before GET may count a blob twice).
      assert.ok(peerBlobs >= 4, `B's peer blob hits: ${peerBlobs}\n${m.split('\n').filter((l) => l.startsWith('peerpull_mirror')).join('\n')}`);
      assert.ok(metric(m, 'peerpull_mirror_requests_total', { kind: 'manifest', outcome: 'peer' }) >= 1, 'B resolved the manifest through a peer');
      // The pool reports a peer fetch's byte count after the client has its last byte: allow a moment.
      let peerBytes = 0;
      const bytesSeenAt = Date.now();
      await eventually(
        `B's peerpull_peer_bytes_total to reach the layers' ${layerBytes()} bytes`,
        async () => (peerBytes = metric(await metricsText(b), 'peerpull_peer_bytes_total')) >= layerBytes(),
        5000,
      ).catch((err: Error) => {
        throw new Error(`${err.message} (last value ${peerBytes})`);
      });
      if (Date.now() - bytesSeenAt > 500) console.log(`# B's peer byte count lagged the pull by ${Date.now() - bytesSeenAt} ms`);
      const am = await metricsText(a);
      const aServed = metric(am, 'peerpull_bytes_served_total', { route: 'blobs' });
      assert.ok(aServed >= layerBytes(), `A served the layers (${aServed} bytes)`);
      console.log(`# CRI pull on B: ${pullMs} ms; B peer blob hits ${peerBlobs}`);
    });
  });

  test('node C pulls it too (CRI), from the nodes that have it', async () => {
    await withLogs(async () => {
      const { c } = nodes;
      assert.equal(await c.cri!.imageStatus(IMAGE), undefined, 'C does not have the image before the pull');
      const started = Date.now();
      await c.cri!.pullImage(IMAGE);
      await assertHoldsImage(c);
      const m = await metricsText(c);
      assert.ok(metric(m, 'peerpull_mirror_requests_total', { kind: 'blob', outcome: 'peer' }) >= 4, 'C got the blobs from peers');
      console.log(`# CRI pull on C: ${Date.now() - started} ms`);
    });
  });

  test('with A\'s peerpull and containerd stopped and B\'s copy garbage-collected, a fresh node D is served from C\'s copy', async () => {
    await withLogs(async () => {
      const { a, b, c } = nodes;
      await a.pp!.stop();
      await a.ctd!.kill('SIGTERM');

      // B forgets the image the way kubelet's image GC does it: CRI RemoveImage, after which
      // containerd's garbage collection deletes the blobs (without telling anyone). B's peerpull may
      // still list them for a while; a peer asking B must then fail over to the next provider.
      await b.cri!.removeImage(IMAGE);
      assert.equal(await b.cri!.imageStatus(IMAGE), undefined);
      const { stdout } = await b.ctd!.ctr(['-n', 'k8s.io', 'images', 'ls', '-q']);
      const leftovers = stdout.split('\n').filter((l) => l.includes(REPO) || img.all.some((d) => l.includes(d.digest)));
      if (leftovers.length) await b.ctd!.ctr(['-n', 'k8s.io', 'images', 'rm', '--sync', ...leftovers]);
      await eventually('B\'s blobs to be garbage-collected', async () => !(await Promise.all(blobFiles(b).map(exists))).some(Boolean), 15_000);

      // A new node joins: its own namespace on the bridge, hosts.toml, containerd, peerpull.
      const d: Node = { lan: await lan!.addNode('d', `${SUBNET}.4`), dir: path.join(work, 'd'), hostsDir: path.join(work, 'd', 'certs.d') };
      nodes.d = d;
      await startNode(d);
      await d.cri!.waitReady();
      d.pp = await startPeerpullIn(d.lan.ns, peerpullEnv(d), d.dir);
      await waitReady(d);

      const before = await metricsText(c);
      const started = Date.now();
      // No warm-up request through D's peerpull: the pull itself has to find C.
      await d.cri!.pullImage(IMAGE);
      const pullMs = Date.now() - started;
      await assertHoldsImage(d);

      const after = await metricsText(c);
      const served = metric(after, 'peerpull_bytes_served_total', { route: 'blobs' }) - metric(before, 'peerpull_bytes_served_total', { route: 'blobs' });
      const blobReqs =
        metric(after, 'peerpull_http_requests_total', { route: 'blobs', method: 'GET', code: '200' }) -
        metric(before, 'peerpull_http_requests_total', { route: 'blobs', method: 'GET', code: '200' });
      assert.ok(served >= layerBytes(), `C served ${served} blob bytes during D's pull, expected ≥ ${layerBytes()}`);
      assert.ok(blobReqs >= 4, `C answered ${blobReqs} blob GETs with 200 during D's pull (config + 3 layers)`);
      const dm = await metricsText(d);
      assert.ok(metric(dm, 'peerpull_mirror_requests_total', { kind: 'blob', outcome: 'peer' }) >= 4, 'D got the blobs from peers');
      const lookups = metric(dm, 'peerpull_mirror_lookup_seconds_count');
      const over50 = lookups - metric(dm, 'peerpull_mirror_lookup_seconds_bucket', { le: '0.05' });
      console.log(`# CRI pull on fresh node D with A down and B emptied: ${pullMs} ms; C served ${served} blob bytes in ${blobReqs} GETs; D's lookups: ${lookups}, ${over50} over 50 ms, sum ${metric(dm, 'peerpull_mirror_lookup_seconds_sum').toFixed(3)} s`);
    });
  });

  // A blob whose index entry outlived garbage collection (no event tells peerpull) must fall
  // through to peers, or the first re-pull after kubelet's image GC would go upstream.
  test(
    'B re-pulls the image after its own copy was garbage-collected, from the nodes that still have it',
    async () => {
      await withLogs(async () => {
        const { b } = nodes;
        assert.equal(await b.cri!.imageStatus(IMAGE), undefined, 'B no longer has the image');
        await b.cri!.pullImage(IMAGE);
        await assertHoldsImage(b);
      });
    },
  );
});

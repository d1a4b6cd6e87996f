// Mirror from peers, end to end on loopback: real peerpull processes, each with its own store and
// its own libp2p node on its own 127.0.77.x address (as pods on different hosts), bootstrapped
// from static peer addresses. Node A holds the content; B and C fetch it through the DHT.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { cp, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { request } from 'undici';
import { generateImage, type GeneratedImage } from '../src/main/image-generator.js';
import { PEER_HOP_HEADER } from '../src/shared/messages.js';
import { get, sha256 } from './support/http.js';
import { eventually, startPeerpull, type PeerpullProcess } from './support/peerpull.js';

const IPS = ['127.0.77.1', '127.0.77.2', '127.0.77.3'];
const P2P_PORT = 5001;

async function metric(pp: PeerpullProcess, re: RegExp): Promise<number> {
  const text = (await get(`${pp.metricsUrl}/metrics`)).body.toString();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = re.exec(line);
    if (m) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

describe('mirror from peers (3 loopback nodes)', () => {
  let root: string;
  const nodes: PeerpullProcess[] = [];
  let img: GeneratedImage;
  let big: GeneratedImage;
  let layoutA: string;
  let bonly: GeneratedImage;

  async function startNode(i: number, store: string, extra: Record<string, string> = {}): Promise<PeerpullProcess> {
    const peers = IPS.filter((_, j) => j !== i).map((ip) => `/ip4/${ip}/tcp/${P2P_PORT}`).join(',');
    const pp = await startPeerpull(
      {
        PEERPULL_STORE: `oci-layout:${store}`,
        PEERPULL_P2P: 'true',
        PEERPULL_P2P_ADDR: `${IPS[i]}:${P2P_PORT}`,
        PEERPULL_BOOTSTRAP_PEERS: peers,
        PEERPULL_BOOTSTRAP_INTERVAL: '1s',
        PEERPULL_DATA_DIR: path.join(root, `data-${i}`),
        PEERPULL_CLUSTER: 'mirror-test',
        PEERPULL_PEER_STALL_TIMEOUT: '1s',
        PEERPULL_CHUNK_SIZE: '64Ki',
        ...extra,
      },
      ['serve'],
      IPS[i],
    );
    nodes.push(pp);
    return pp;
  }

  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'peerpull-mirror-'));
    layoutA = path.join(root, 'A');
    img = await generateImage(layoutA, { name: 'docker.io/library/shared:1', layerSizes: [3 * 1024 * 1024 + 5, 70_000] });
    big = await generateImage(layoutA, { name: 'docker.io/library/big:1', layerSizes: [48 * 1024 * 1024] });
    // C holds a copy of the big image too, so a transfer can move from one provider to the other.
    await cp(layoutA, path.join(root, 'C'), { recursive: true });
    bonly = await generateImage(path.join(root, 'B'), { name: 'docker.io/library/bonly:1', layerSizes: [10] });
    await startNode(0, layoutA);
    await startNode(1, path.join(root, 'B'));
    await startNode(2, path.join(root, 'C'), { PEERPULL_RESOLVE_TAGS: 'false', PEERPULL_MIRRORED_REGISTRIES: 'docker.io' });
    for (const n of nodes) await eventually(async () => (await get(`${n.url}/readyz`)).status === 200, 30_000, 'node ready');
    // A's records reach the DHT shortly after it connects.
    await eventually(async () => (await get(`${nodes[1]!.url}/v2/library/shared/manifests/1?ns=docker.io`, {}, 'HEAD')).status === 200, 30_000, "B finding A's tag");
  });

  after(async () => {
    for (const n of nodes) await n.stop('SIGKILL');
    if (root) await rm(root, { recursive: true, force: true });
  });

  test('B serves A\'s image: manifest by tag (HEAD then GET by digest) and every blob byte-identical', async () => {
    const b = nodes[1]!;
    const head = await get(`${b.url}/v2/library/shared/manifests/1?ns=docker.io`, {}, 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.headers['docker-content-digest'], img.target.digest);
    assert.equal(head.headers['content-type'], img.target.mediaType);
    for (const d of img.all) {
      const kind = d.mediaType.includes('manifest') ? 'manifests' : 'blobs';
      const r = await get(`${b.url}/v2/library/shared/${kind}/${d.digest}?ns=docker.io`);
      assert.equal(r.status, 200, d.digest);
      assert.equal(sha256(r.body), d.digest);
      assert.equal(r.headers['content-length'], String(d.size));
    }
    // The pool's report arrives just after the last byte: metrics follow within moments.
    await eventually(async () => (await metric(b, /^peerpull_mirror_requests_total\{kind="blob",outcome="peer"\}/)) >= 2, 5000, 'peer hits counted');
    await eventually(async () => (await metric(b, /^peerpull_peer_bytes_total/)) >= img.manifests[0]!.layers[0]!.size, 5000, `peer bytes counted (${await metric(b, /^peerpull_peer_bytes_total/)} of ${img.manifests[0]!.layers[0]!.size})`);
    // A and C (which holds a copy) served them as peer hops, from their own content.
    const local = async (n: PeerpullProcess) => metric(n, /^peerpull_mirror_requests_total\{kind="blob",outcome="local"\}/);
    assert.ok((await local(nodes[0]!)) + (await local(nodes[2]!)) >= 2);
  });

  test('client ranges and HEAD go through the peer path too', async () => {
    const b = nodes[1]!;
    const layer = img.manifests[0]!.layers[0]!;
    const whole = await readFile(path.join(layoutA, 'blobs', 'sha256', layer.digest.slice(7)));
    const url = `${b.url}/v2/library/shared/blobs/${layer.digest}?ns=docker.io`;
    const r = await get(url, { range: 'bytes=1000-2999' });
    assert.equal(r.status, 206);
    assert.equal(r.headers['content-range'], `bytes 1000-2999/${layer.size}`);
    assert.ok(r.body.equals(whole.subarray(1000, 3000)));
    const h = await get(url, {}, 'HEAD');
    assert.equal(h.status, 200);
    assert.equal(h.headers['content-length'], String(layer.size));
    assert.equal(h.body.length, 0);
  });

  test('a request with the peer-hop marker is answered from local content only: 404, no lookup', async () => {
    const b = nodes[1]!;
    const layer = img.manifests[0]!.layers[0]!;
    const before = await metric(b, /^peerpull_mirror_lookup_seconds_count/);
    const missesTimed = await metric(b, /^peerpull_mirror_miss_seconds_count/);
    const r = await get(`${b.url}/v2/library/shared/blobs/${layer.digest}?ns=docker.io`, { [PEER_HOP_HEADER]: '1' });
    assert.equal(r.status, 404);
    const m = await get(`${b.url}/v2/library/shared/manifests/1?ns=docker.io`, { [PEER_HOP_HEADER]: '1' }, 'HEAD');
    assert.equal(m.status, 404);
    assert.equal(await metric(b, /^peerpull_mirror_lookup_seconds_count/), before, 'no lookup was made');
    // A peer's ask is not a miss containerd waits for: not in the miss-time histogram.
    assert.equal(await metric(b, /^peerpull_mirror_miss_seconds_count/), missesTimed);
    // B's own content is still served to a peer.
    const own = await get(`${b.url}/v2/library/bonly/manifests/1?ns=docker.io`, { [PEER_HOP_HEADER]: '1' }, 'HEAD');
    assert.equal(own.status, 200);
  });

  test('content nobody has: a 404 with an OCI error, counted as a miss', async () => {
    const b = nodes[1]!;
    const zero = 'sha256:' + '7'.repeat(64);
    const timed = { blob: await metric(b, /^peerpull_mirror_miss_seconds_count\{kind="blob"\}/), manifest: await metric(b, /^peerpull_mirror_miss_seconds_count\{kind="manifest"\}/) };
    const r = await get(`${b.url}/v2/library/shared/blobs/${zero}?ns=docker.io`);
    assert.equal(r.status, 404);
    assert.equal(JSON.parse(r.body.toString()).errors[0].code, 'BLOB_UNKNOWN');
    const t = await get(`${b.url}/v2/library/shared/manifests/nope?ns=docker.io`, {}, 'HEAD');
    assert.equal(t.status, 404);
    assert.ok((await metric(b, /^peerpull_mirror_requests_total\{kind="blob",outcome="miss"\}/)) >= 1);
    // Each miss was timed from its arrival to its 404, by kind.
    assert.equal(await metric(b, /^peerpull_mirror_miss_seconds_count\{kind="blob"\}/), timed.blob + 1);
    assert.equal(await metric(b, /^peerpull_mirror_miss_seconds_count\{kind="manifest"\}/), timed.manifest + 1);
    assert.ok((await metric(b, /^peerpull_mirror_miss_seconds_bucket\{le="\+Inf",kind="blob"\}/)) >= 1);
  });

  test('settings: no tag resolution through peers, and only listed registries are mirrored', async () => {
    const c = nodes[2]!;
    const before = await metric(c, /^peerpull_mirror_lookup_seconds_count/);
    // C holds big:1 itself, so a local tag still works; B's tag is only on B.
    assert.equal((await get(`${c.url}/v2/library/big/manifests/1?ns=docker.io`, {}, 'HEAD')).status, 200);
    assert.equal((await get(`${c.url}/v2/library/bonly/manifests/1?ns=docker.io`, {}, 'HEAD')).status, 404);
    const bDigest = (await get(`${nodes[1]!.url}/v2/library/bonly/manifests/1?ns=docker.io`, {}, 'HEAD')).headers['docker-content-digest']!;
    // By digest, B's manifest is found through peers.
    await eventually(async () => (await get(`${c.url}/v2/library/bonly/manifests/${bDigest}?ns=docker.io`)).status === 200, 15_000, 'digest through peers');
    // A registry not in the list is never looked up (a blob only B holds, asked for under ghcr.io).
    const lookups = await metric(c, /^peerpull_mirror_lookup_seconds_count/);
    const bLayer = bonly.manifests[0]!.layers[0]!.digest;
    assert.equal((await get(`${c.url}/v2/library/bonly/blobs/${bLayer}?ns=ghcr.io`)).status, 404);
    assert.equal(await metric(c, /^peerpull_mirror_lookup_seconds_count/), lookups);
    assert.ok(lookups > before);
    // The same blob under docker.io is found.
    assert.equal((await get(`${c.url}/v2/library/bonly/blobs/${bLayer}?ns=docker.io`)).status, 200);
  });

  test('the serving peer killed mid-blob: the client download completes and hashes right', async () => {
    const b = nodes[1]!;
    const layer = big.manifests[0]!.layers[0]!;
    const r = await request(`${b.url}/v2/library/big/blobs/${layer.digest}?ns=docker.io`);
    assert.equal(r.statusCode, 200);
    const hash = createHash('sha256');
    let got = 0;
    let killed: string | undefined;
    for await (const chunk of r.body) {
      hash.update(chunk as Buffer);
      got += (chunk as Buffer).length;
      if (!killed && got > 4 * 1024 * 1024) {
        // Whichever of A and C is serving B right now (a blob stream in flight) is killed.
        for (const i of [0, 2]) {
          const n = nodes[i]!;
          if ((await metric(n, /^peerpull_inflight_requests/)) > 0) {
            n.child.kill('SIGKILL');
            killed = IPS[i];
            break;
          }
        }
        assert.ok(killed, 'a provider was serving');
      }
      // A slow reader keeps the transfer open long enough to be interrupted.
      await new Promise((res) => setTimeout(res, 1));
    }
    assert.equal(got, layer.size);
    assert.equal('sha256:' + hash.digest('hex'), layer.digest);
    await eventually(async () => (await metric(b, /^peerpull_peer_resumes_total/)) >= 1, 5000, 'the transfer resumed on the other provider');
  });
});

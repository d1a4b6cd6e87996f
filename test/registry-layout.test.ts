// The registry front end on the embedded OCI-layout store, through a real `peerpull serve` process.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { appendFile, mkdir, mkdtemp, rename, rm, unlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { generateImage, type GeneratedImage } from '../src/main/image-generator.js';
import { get, sha256 } from './support/http.js';
import { startPeerpull, type PeerpullProcess } from './support/peerpull.js';
import { registryContract, type ContractContext } from './support/registry-contract.js';

describe('registry on an OCI layout', () => {
  let dir: string;
  let pp: PeerpullProcess;
  let single: GeneratedImage;
  let multi: GeneratedImage;
  let extra: GeneratedImage;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'peerpull-layout-'));
    single = await generateImage(dir, { name: 'docker.io/library/contract-single:v1', layerSizes: [3 * 1024 * 1024 + 17, 64 * 1024, 1] });
    multi = await generateImage(dir, {
      name: 'ghcr.io/peerpull/contract-multi:v2',
      layerSizes: [200 * 1024, 10],
      platforms: [
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 'arm64', variant: 'v8' },
      ],
    });
    extra = await generateImage(dir, { name: 'docker.io/library/doomed:gc', layerSizes: [100_000] });
    pp = await startPeerpull({ PEERPULL_STORE: `oci-layout:${dir}`, PEERPULL_CHUNK_SIZE: '64Ki', PEERPULL_RESYNC_INTERVAL: '1s' });
    await pp.waitForLog((l) => l.msg === 'content source ready');
  });

  after(async () => {
    await pp?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  registryContract((): ContractContext => ({ url: pp.url, port: pp.registryPort, single, multi, layout: dir }));

  test('a blob deleted behind our back (GC) is a 404, not a 500, for HEAD and GET', async () => {
    const layer = extra.manifests[0]!.layers[0]!;
    const url = `${pp.url}/v2/library/doomed/blobs/${layer.digest}?ns=docker.io`;
    assert.equal((await get(url)).status, 200);
    await unlink(path.join(dir, 'blobs', 'sha256', layer.digest.slice(7)));
    assert.equal((await get(url, {}, 'HEAD')).status, 404);
    const r = await get(url);
    assert.equal(r.status, 404);
    assert.equal(JSON.parse(r.body.toString()).errors[0].code, 'BLOB_UNKNOWN');
  });

  test('metrics endpoint exposes request counts and index size; probes answer', async () => {
    const m = await get(`${pp.metricsUrl}/metrics`);
    assert.equal(m.status, 200);
    const text = m.body.toString();
    assert.match(text, /peerpull_http_requests_total\{route="blobs",method="GET",code="200"\} \d+/);
    assert.match(text, /peerpull_index_entries\{kind="digest"\} [1-9]/);
    assert.match(text, /peerpull_bytes_served_total\{route="blobs"\} [1-9]/);
    assert.equal((await get(`${pp.url}/readyz`)).status, 200);
    assert.equal((await get(`${pp.url}/livez`)).status, 200);
    assert.equal((await get(`${pp.metricsUrl}/readyz`)).status, 200);
  });
});

describe('configuration errors', () => {
  const cases: [string, Record<string, string>, RegExp][] = [
    ['bad address', { PEERPULL_REGISTRY_ADDR: 'nonsense' }, /PEERPULL_REGISTRY_ADDR/],
    ['bad store', { PEERPULL_STORE: 'redis:x' }, /PEERPULL_STORE/],
    ['bad duration', { PEERPULL_RESYNC_INTERVAL: '10 minutes' }, /PEERPULL_RESYNC_INTERVAL/],
    ['bad size', { PEERPULL_CHUNK_SIZE: '1Ti' }, /PEERPULL_CHUNK_SIZE/],
    ['relative socket', { PEERPULL_CONTAINERD_SOCK: 'run/c.sock' }, /PEERPULL_CONTAINERD_SOCK/],
    ['typo in a variable name', { PEERPULL_REGISTRY_ADR: ':5000' }, /PEERPULL_REGISTRY_ADR: unknown setting/],
  ];
  for (const [name, env, re] of cases) {
    test(`${name}: exit 2 with a message naming the variable`, async () => {
      const r = await startPeerpull(env).then(
        () => assert.fail('should not start'),
        (err: Error) => err.message,
      );
      assert.match(r, re);
      assert.match(r, /exited \(2\)/);
    });
  }
});

describe('graceful shutdown', () => {
  test('SIGTERM stops accepting, lets an in-flight download finish, then exits 0', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'peerpull-shutdown-'));
    let pp: PeerpullProcess | undefined;
    try {
      const img = await generateImage(dir, { name: 'docker.io/library/big:1', layerSizes: [24 * 1024 * 1024] });
      pp = await startPeerpull({ PEERPULL_STORE: `oci-layout:${dir}`, PEERPULL_SHUTDOWN_GRACE: '20s', PEERPULL_CHUNK_SIZE: '64Ki', PEERPULL_STREAM_CREDITS: '2' });
      await pp.waitForLog((l) => l.msg === 'content source ready');
      const layer = img.manifests[0]!.layers[0]!;
      // A slow reader: pauses after every chunk so the transfer is still running at SIGTERM.
      const { request } = await import('undici');
      const r = await request(`${pp.url}/v2/library/big/blobs/${layer.digest}`, { highWaterMark: 64 * 1024 } as never);
      assert.equal(r.statusCode, 200);
      const hash = (await import('node:crypto')).createHash('sha256');
      let got = 0;
      let signalled = false;
      const exit = new Promise<number | null>((resolve) => pp!.child.once('exit', (c) => resolve(c)));
      for await (const chunk of r.body) {
        hash.update(chunk as Buffer);
        got += (chunk as Buffer).length;
        if (!signalled && got > 1024 * 1024) {
          signalled = true;
          pp.child.kill('SIGTERM');
          await pp.waitForLog((l) => l.msg === 'shutting down');
          // New connections are refused once shutdown has begun.
          await assert.rejects(get(`${pp.url}/v2/`));
        }
        await new Promise((res) => setTimeout(res, 2));
      }
      assert.ok(signalled, 'SIGTERM was sent mid-transfer');
      assert.equal(got, layer.size);
      assert.equal('sha256:' + hash.digest('hex'), layer.digest);
      assert.equal(await exit, 0);
    } finally {
      await pp?.stop('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('OCI layout follows index.json', () => {
  test('an image added after start is served without waiting for the resync timer', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'peerpull-watch-'));
    let pp: PeerpullProcess | undefined;
    try {
      await generateImage(dir, { name: 'docker.io/library/first:1', layerSizes: [10] });
      pp = await startPeerpull({ PEERPULL_STORE: `oci-layout:${dir}`, PEERPULL_RESYNC_INTERVAL: '1h' });
      await pp.waitForLog((l) => l.msg === 'content source ready');
      const url = `${pp.url}/v2/library/later/manifests/2?ns=docker.io`;
      assert.equal((await get(url, {}, 'HEAD')).status, 404);
      const later = await generateImage(dir, { name: 'docker.io/library/later:2', layerSizes: [20] });
      const deadline = Date.now() + 10_000;
      let r = await get(url, {}, 'HEAD');
      while (r.status !== 200 && Date.now() < deadline) {
        await new Promise((res) => setTimeout(res, 50));
        r = await get(url, {}, 'HEAD');
      }
      // With a one-hour timer, only the watch can have made it visible.
      assert.equal(r.status, 200);
      assert.equal(r.headers['docker-content-digest'], later.target.digest);
    } finally {
      await pp?.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('a download in flight, served to a peer as it grows', () => {
  let dir: string;
  let pp: PeerpullProcess;
  const hop = { 'x-peerpull-hop': 'inflight' };

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'peerpull-inflight-'));
    await generateImage(dir, { name: 'docker.io/library/present:v1', layerSizes: [10] });
    pp = await startPeerpull({ PEERPULL_STORE: `oci-layout:${dir}`, PEERPULL_CHUNK_SIZE: '64Ki', PEERPULL_DOWNLOAD_STALL_TIMEOUT: '1s' });
    await pp.waitForLog((l) => l.msg === 'content source ready');
  });

  after(async () => {
    await pp?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** Starts an ingest as the storm's puller (and containerd) lay one out: `total`, then `data` growing. */
  async function ingest(bytes: Buffer): Promise<{ digest: string; data: string; dir: string }> {
    const digest = sha256(bytes);
    const d = path.join(dir, 'ingest', digest.slice(7));
    await mkdir(d, { recursive: true });
    await writeFile(path.join(d, 'total'), String(bytes.length));
    await writeFile(path.join(d, 'data'), '');
    return { digest, data: path.join(d, 'data'), dir: d };
  }

  /** A GET that collects what arrives, and how it ended (complete, or cut short). */
  function fetchRaw(digest: string): Promise<{ status: number; length: number; body: Buffer; complete: boolean }> {
    const u = new URL(`${pp.url}/v2/library/x/blobs/${digest}?ns=docker.io`);
    return new Promise((resolve, reject) => {
      const req = http.get({ host: u.hostname, port: u.port, path: u.pathname + u.search, headers: hop }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        const finish = () => resolve({ status: res.statusCode ?? 0, length: Number(res.headers['content-length'] ?? -1), body: Buffer.concat(parts), complete: res.complete });
        res.on('end', finish);
        res.on('aborted', finish);
        res.on('error', finish);
      });
      req.on('error', reject);
    });
  }

  test('bytes written after the request arrive; the finished file renamed into the store is followed', async () => {
    const bytes = randomBytes(3 * 1024 * 1024 + 5);
    const ing = await ingest(bytes);
    const got = fetchRaw(ing.digest);
    const step = Math.ceil(bytes.length / 6);
    for (let off = 0; off < bytes.length; off += step) {
      await new Promise((r) => setTimeout(r, 100));
      await appendFile(ing.data, bytes.subarray(off, off + step));
    }
    // As a finished pull does: the data file moves into the store, the ingest goes.
    await rename(ing.data, path.join(dir, 'blobs', 'sha256', ing.digest.slice(7)));
    await rm(ing.dir, { recursive: true });
    const r = await got;
    assert.equal(r.status, 200);
    assert.equal(r.length, bytes.length);
    assert.equal(r.complete, true);
    assert.equal(sha256(r.body), ing.digest);
  });

  test('a download that stops growing is cut after the stall timeout, short of its length', async () => {
    const bytes = randomBytes(1024 * 1024);
    const ing = await ingest(bytes);
    await appendFile(ing.data, bytes.subarray(0, 300_000));
    const r = await fetchRaw(ing.digest);
    assert.equal(r.status, 200);
    assert.equal(r.length, bytes.length);
    assert.equal(r.complete, false, 'the transfer is cut, not completed');
    assert.ok(r.body.length <= 300_000, `got ${r.body.length} bytes`);
    assert.ok(r.body.equals(bytes.subarray(0, r.body.length)), 'what came is the download so far');
    await rm(ing.dir, { recursive: true });
  });

  test('no such download: 404 at once; without the in-flight hop an ingest is never served', async () => {
    const none = await fetchRaw(sha256(randomBytes(8)));
    assert.equal(none.status, 404);
    const bytes = randomBytes(1000);
    const ing = await ingest(bytes);
    await appendFile(ing.data, bytes);
    const plain = await get(`${pp.url}/v2/library/x/blobs/${ing.digest}?ns=docker.io`, { 'x-peerpull-hop': '1' });
    assert.equal(plain.status, 404);
    const shared = await fetchRaw(ing.digest);
    assert.equal(shared.status, 200);
    assert.ok(shared.body.equals(bytes));
  });
});

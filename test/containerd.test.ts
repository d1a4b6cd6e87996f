// The containerd content source against a real containerd 1.6: real images imported with ctr,
// real events, real garbage collection, a real restart.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../src/main/config.js';
import { ContentIndex, type IndexChange } from '../src/main/content/index.js';
import { ContainerdSource } from '../src/main/containerd/index.js';
import { protoStringField } from '../src/main/containerd/client.js';
import { indexEntries, sourceHealthy } from '../src/main/metrics.js';
import { setLogSink } from '../src/main/log.js';
import { readContent } from '../src/workers/containerd-read.js';
import { tagKey, parseImageReference, type Digest, type Descriptor } from '../src/shared/oci.js';
import type { GeneratedImage, Platform } from '../src/main/image-generator.js';
import { NAMESPACE, makeImage, startContainerd, type Containerd } from './support/containerd.js';

const execFileP = promisify(execFile);

const HOST: Platform = { os: 'linux', architecture: process.arch === 'arm64' ? 'arm64' : 'amd64' };
const OTHER: Platform = { os: 'linux', architecture: HOST.architecture === 'amd64' ? 'arm64' : 'amd64' };

// Keep the source's logs for failure messages instead of flooding the test output.
const logLines: string[] = [];
setLogSink((line) => {
  logLines.push(line);
  if (logLines.length > 2000) logLines.shift();
});

function sha256(b: Uint8Array): string {
  return 'sha256:' + createHash('sha256').update(b).digest('hex');
}

function keyOf(name: string): string {
  const r = parseImageReference(name);
  return tagKey(r.registry, r.repository, r.tag!);
}

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}\nrecent source logs:\n${logLines.slice(-30).join('')}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function collect(gen: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const p of gen) parts.push(p);
  return Buffer.concat(parts);
}

async function gaugeValue(g: typeof sourceHealthy | typeof indexEntries, labels: Record<string, string>): Promise<number | undefined> {
  const m = await g.get();
  return m.values.find((v) => Object.entries(labels).every(([k, val]) => (v.labels as Record<string, unknown>)[k] === val))?.value;
}

function configFor(ctd: Containerd, contentPath = ctd.contentPath) {
  return loadConfig({
    PEERPULL_CONTAINERD_SOCK: ctd.socket,
    PEERPULL_CONTAINERD_NAMESPACE: NAMESPACE,
    PEERPULL_CONTENT_PATH: contentPath,
    PEERPULL_RESYNC_INTERVAL: '1s',
  });
}

/** Asserts that the index holds exactly what the store has of `img`: every stored blob, correctly typed. */
function assertIndexed(index: ContentIndex, descs: Descriptor[]): void {
  for (const d of descs) {
    const e = index.get(d.digest);
    assert.ok(e, `${d.digest} (${d.mediaType}) is indexed`);
    assert.equal(e.size, d.size, `size of ${d.digest}`);
    assert.equal(e.mediaType, d.mediaType, `media type of ${d.digest}`);
    const manifest = d.mediaType.includes('manifest') || d.mediaType.includes('index');
    assert.equal(e.manifest, manifest, `manifest flag of ${d.digest}`);
  }
}

function hostParts(img: GeneratedImage): Descriptor[] {
  const m = img.manifests.find((x) => x.platform.architecture === HOST.architecture)!;
  return [img.target, m.manifest, m.config, ...m.layers];
}

function otherParts(img: GeneratedImage): Descriptor[] {
  const m = img.manifests.find((x) => x.platform.architecture === OTHER.architecture)!;
  return [m.manifest, m.config, ...m.layers];
}

test('containerd content source on a real containerd', { timeout: 600_000 }, async (t) => {
  const ctd = await startContainerd();
  const layout = await mkdtemp(path.join(os.tmpdir(), 'pplayout-'));
  const sources: ContainerdSource[] = [];
  try {
    t.diagnostic(`containerd ${ctd.socket}, snapshotter ${ctd.snapshotter}`);
    // Images present before the source starts: one plain manifest, one index imported for the host
    // platform only (the other platform's blobs are absent), one index with every platform.
    const single = await makeImage(ctd, layout, { name: 'docker.io/library/single:1.0', layerSizes: [4096, 100_000, 3_000_000] });
    const partial = await makeImage(ctd, layout, { name: 'ghcr.io/peerpull/partial:2', layerSizes: [2048, 5000], platforms: [HOST, OTHER] });
    const full = await makeImage(
      ctd,
      layout,
      { name: 'localhost:5000/team/full:v3', layerSizes: [1000, 7000], platforms: [HOST, OTHER] },
      { allPlatforms: true },
    );

    const index = new ContentIndex(10_000);
    const changes: IndexChange[] = [];
    index.onChange((c) => changes.push(c));
    const source = new ContainerdSource(configFor(ctd), index);
    sources.push(source);
    await source.start();
    assert.equal(source.healthy(), true);

    await t.test('indexes every stored digest with size, media type, manifest flag, and the tags', async () => {
      assertIndexed(index, single.all);
      assertIndexed(index, full.all);
      assertIndexed(index, hostParts(partial));
      assert.equal(index.resolveTag(keyOf(single.name)), single.target.digest);
      assert.equal(index.resolveTag(keyOf(partial.name)), partial.target.digest);
      assert.equal(index.resolveTag(keyOf(full.name)), full.target.digest);
      assert.equal(index.get(single.target.digest)!.manifest, true);
      assert.equal(index.get(full.target.digest)!.mediaType, 'application/vnd.oci.image.index.v1+json');
      assert.equal(index.get(single.manifests[0]!.config.digest)!.manifest, false);
      // Exactly the stored blobs, nothing else.
      const expected = new Set([...single.all, ...full.all, ...hostParts(partial)].map((d) => d.digest));
      assert.equal(index.digestCount, expected.size);
      assert.equal(index.tagCount, 3);
      // The start emitted every key once, for the p2p thread to advertise.
      const added = new Set(changes.flatMap((c) => c.added));
      for (const d of expected) assert.ok(added.has(d), `${d} announced as added`);
      assert.ok(added.has(keyOf(single.name)));
      assert.equal(await gaugeValue(indexEntries, { kind: 'digest' }), expected.size);
      assert.equal(await gaugeValue(indexEntries, { kind: 'tag' }), 3);
      assert.equal(await gaugeValue(sourceHealthy, { source: 'containerd' }), 1);
    });

    await t.test('skips descriptors the store does not hold (other platforms not imported)', () => {
      for (const d of otherParts(partial)) assert.equal(index.get(d.digest), undefined, `${d.digest} must not be indexed`);
    });

    await t.test('locate() gives the content file, whose bytes hash to the digest', async () => {
      assert.equal(source.contentReadable, true);
      for (const d of single.all) {
        const loc = source.locate(index.get(d.digest)!);
        assert.deepEqual(loc, { kind: 'file', path: path.join(ctd.contentPath, 'blobs', 'sha256', d.digest.slice(7)) });
        assert.equal(sha256(await readFile(loc.path)), d.digest);
      }
    });

    await t.test('gRPC Content.Read path: whole blobs and sub-ranges, NotFound for absent blobs', async () => {
      for (const d of [...single.all, ...full.all]) {
        const bytes = await collect(readContent(ctd.socket, NAMESPACE, d.digest, 0, d.size));
        assert.equal(bytes.length, d.size);
        assert.equal(sha256(bytes), d.digest);
      }
      const big = single.manifests[0]!.layers[2]!;
      const file = await readFile(path.join(ctd.contentPath, 'blobs', 'sha256', big.digest.slice(7)));
      for (const [a, b] of [
        [0, 1],
        [1000, 250_000],
        [big.size - 10, big.size],
        [1_048_570, 2_100_000], // crosses containerd's 1 MiB message boundaries
        [5, 5],
      ] as const) {
        const part = await collect(readContent(ctd.socket, NAMESPACE, big.digest, a, b));
        assert.equal(part.length, b - a, `length of [${a}, ${b})`);
        assert.ok(part.equals(file.subarray(a, b)), `bytes of [${a}, ${b})`);
      }
      // Stopping early cancels the call and leaves the client usable.
      for await (const chunk of readContent(ctd.socket, NAMESPACE, big.digest, 0, big.size)) {
        assert.ok(chunk.length > 0);
        break;
      }
      const absent = ('sha256:' + createHash('sha256').update(randomBytes(16)).digest('hex')) as Digest;
      await assert.rejects(collect(readContent(ctd.socket, NAMESPACE, absent, 0, 10)), (err: { code?: number; message: string }) => {
        assert.equal(err.code, 5, 'gRPC NotFound');
        assert.match(err.message, new RegExp(absent));
        return true;
      });
      // Asking past the end is an error, never a silently short body.
      const small = single.manifests[0]!.config;
      await assert.rejects(collect(readContent(ctd.socket, NAMESPACE, small.digest, 0, small.size + 100)));
    });

    await t.test('unreadable content path: locate() falls back to gRPC and the index is the same', async () => {
      const index2 = new ContentIndex(10_000);
      const s2 = new ContainerdSource(configFor(ctd, path.join(ctd.dir, 'no-such-content-dir')), index2);
      sources.push(s2);
      await s2.start();
      assert.equal(s2.contentReadable, false);
      assert.deepEqual([...index2.keys()].sort(), [...index.keys()].sort());
      const e = index2.get(single.target.digest)!;
      assert.deepEqual(s2.locate(e), { kind: 'containerd', socket: ctd.socket, namespace: NAMESPACE, digest: single.target.digest });
      await s2.stop();
      assert.equal(s2.healthy(), false);
    });

    await t.test('a content path that is not this store falls back to gRPC', async () => {
      const index3 = new ContentIndex(10_000);
      const s3 = new ContainerdSource(configFor(ctd, layout.replace(/\/$/, '') + '-elsewhere'), index3);
      // layout-elsewhere does not exist: same as unreadable. An existing but foreign dir:
      const s4 = new ContainerdSource(configFor(ctd, layout), new ContentIndex(10_000));
      sources.push(s3, s4);
      await s3.start();
      assert.equal(s3.contentReadable, false);
      // The generator's layout holds the same blobs (it made them), so it passes the probe: use a
      // dir with a blobs/sha256 that holds none of them.
      const foreign = await mkdtemp(path.join(os.tmpdir(), 'ppforeign-'));
      try {
        await mkdir(path.join(foreign, 'blobs', 'sha256'), { recursive: true });
        const s5 = new ContainerdSource(configFor(ctd, foreign), new ContentIndex(10_000));
        sources.push(s5);
        await s5.start();
        assert.equal(s5.contentReadable, false, 'a store without our blobs is not used');
        await s5.stop();
      } finally {
        await rm(foreign, { recursive: true, force: true });
      }
      await s3.stop();
    });

    await t.test('an image imported after start appears through the event stream', async () => {
      const late = await makeImage(ctd, layout, { name: 'docker.io/library/late:1', layerSizes: [3000, 4000] });
      const key = keyOf(late.name);
      await until('late image tag indexed', () => index.resolveTag(key) === late.target.digest);
      await until('late image blobs indexed', () => late.all.every((d) => index.get(d.digest) !== undefined));
      assertIndexed(index, late.all);
      // A second tag on the same target: /images/create with an existing target.
      await ctd.ctr(['-n', NAMESPACE, 'images', 'tag', late.name, 'docker.io/library/late:alias']);
      await until('alias tag indexed', () => index.resolveTag('docker.io/library/late:alias') === late.target.digest);
      // Moving a tag to another image is an /images/update: the key follows the new target.
      const moved = 'docker.io/library/moving:1';
      await ctd.ctr(['-n', NAMESPACE, 'images', 'tag', late.name, moved]);
      await until('moving tag on late', () => index.resolveTag(moved) === late.target.digest);
      await ctd.ctr(['-n', NAMESPACE, 'images', 'tag', '--force', full.name, moved]);
      await until('moving tag on full', () => index.resolveTag(moved) === full.target.digest);
      await ctd.ctr(['-n', NAMESPACE, 'images', 'rm', moved]);
      await until('moving tag removed', () => index.resolveTag(moved) === undefined);
    });

    await t.test('deleting an image removes its tag through the event stream', async () => {
      const mark = changes.length;
      await ctd.ctr(['-n', NAMESPACE, 'images', 'rm', 'docker.io/library/late:alias']);
      await until('alias tag removed', () => index.resolveTag('docker.io/library/late:alias') === undefined);
      assert.ok(changes.slice(mark).some((c) => c.removed.includes('docker.io/library/late:alias')));
      // The other tag on the same content stays.
      assert.equal(index.resolveTag('docker.io/library/late:1') !== undefined, true);
    });

    await t.test('after image removal and GC, a resync drops the gone digests and reports them removed', async () => {
      const mark = changes.length;
      const gone = single.all.map((d) => d.digest);
      await ctd.ctr(['-n', NAMESPACE, 'images', 'rm', '--sync', single.name]);
      for (const d of gone) {
        await assert.rejects(access(path.join(ctd.contentPath, 'blobs', 'sha256', d.slice(7))), `${d} garbage collected`);
      }
      // The periodic resync (1 s here) notices: no event exists for garbage collection.
      await until('collected digests leave the index', () => gone.every((d) => index.get(d) === undefined));
      const removed = new Set(changes.slice(mark).flatMap((c) => c.removed));
      for (const d of gone) assert.ok(removed.has(d), `${d} reported removed`);
      assert.ok(removed.has(keyOf(single.name)), 'tag reported removed');
      assert.equal(index.resolveTag(keyOf(single.name)), undefined);
      // Everything else stays; an explicit resync now changes nothing.
      assertIndexed(index, full.all);
      const again = await source.resync();
      assert.deepEqual(again, { added: [], removed: [] });
    });

    await t.test('an explicit content delete (no GC) removes the digest through its event', async () => {
      // A long resync interval proves the event did it, not a resync.
      const slowIndex = new ContentIndex(10_000);
      const slow = new ContainerdSource(
        loadConfig({ PEERPULL_CONTAINERD_SOCK: ctd.socket, PEERPULL_CONTENT_PATH: ctd.contentPath, PEERPULL_RESYNC_INTERVAL: '1h' }),
        slowIndex,
      );
      sources.push(slow);
      await slow.start();
      const victim = full.manifests[1]!.layers[0]!.digest;
      assert.ok(slowIndex.get(victim));
      await ctd.ctr(['-n', NAMESPACE, 'content', 'rm', victim]);
      await until('deleted blob leaves the index', () => slowIndex.get(victim) === undefined);
      await slow.stop();
    });

    await t.test('a malformed manifest is logged and skipped, never a crash', async () => {
      const bad = await importMalformed(ctd, layout);
      await until('malformed image indexed', () => index.resolveTag(bad.key) === bad.digest);
      assert.equal(index.get(bad.digest)!.manifest, true);
      await source.resync();
      assert.equal(source.healthy(), true);
      assert.ok(logLines.some((l) => l.includes('malformed manifest')), 'malformed manifest logged');
    });

    await t.test('containerd going away makes healthy() false; it recovers when containerd returns', async () => {
      let n = 0;
      for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
        const mark = logLines.length;
        await ctd.kill(signal);
        await until(`source unhealthy after ${signal}`, () => !source.healthy());
        assert.equal(await gaugeValue(sourceHealthy, { source: 'containerd' }), 0);
        // The index keeps what it had (the files are still there) while containerd is away.
        assert.ok(index.get(full.target.digest));
        await ctd.restart();
        await until(`source healthy again after ${signal}`, () => source.healthy(), 30_000);
        assert.equal(await gaugeValue(sourceHealthy, { source: 'containerd' }), 1);
        const logs = logLines.slice(mark).join('');
        assert.match(logs, /containerd event stream lost/);
        assert.match(logs, /containerd reconnected/);
        // Events are followed again after the reconnect.
        const after = await makeImage(ctd, layout, { name: `docker.io/library/after-restart:${++n}`, layerSizes: [1234] });
        await until('image after restart indexed', () => index.resolveTag(keyOf(after.name)) === after.target.digest);
        assertIndexed(index, after.all);
        // And the gRPC read path reconnects as well.
        const bytes = await collect(readContent(ctd.socket, NAMESPACE, after.target.digest, 0, after.target.size));
        assert.equal(sha256(bytes), after.target.digest);
      }
    });

    await t.test('start() rejects with context when containerd is not there', async () => {
      const cfg = loadConfig({ PEERPULL_CONTAINERD_SOCK: path.join(ctd.dir, 'nothing.sock'), PEERPULL_CONTENT_PATH: ctd.contentPath });
      const s = new ContainerdSource(cfg, new ContentIndex(1000));
      await assert.rejects(s.start(), /containerd source: cannot start on .*nothing\.sock/);
      await s.stop();
    });

    await source.stop();
    assert.equal(source.healthy(), false);
  } finally {
    for (const s of sources) await s.stop().catch(() => undefined);
    await ctd.stop();
    await rm(layout, { recursive: true, force: true });
  }
});

test('protoStringField reads event payloads and refuses malformed bytes', () => {
  // ImageCreate{name: "docker.io/a:1", labels: {k: v}}
  const name = Buffer.from('docker.io/a:1');
  const entry = Buffer.concat([Buffer.from([0x0a, 1]), Buffer.from('k'), Buffer.from([0x12, 1]), Buffer.from('v')]);
  const msg = Buffer.concat([Buffer.from([0x0a, name.length]), name, Buffer.from([0x12, entry.length]), entry]);
  assert.equal(protoStringField(msg, 1), 'docker.io/a:1');
  assert.equal(protoStringField(msg, 3), undefined);
  assert.equal(protoStringField(Buffer.from([0x0a, 50, 1, 2]), 1), undefined, 'length beyond the buffer');
  assert.equal(protoStringField(Buffer.from([0x0f]), 1), undefined, 'unknown wire type');
  assert.equal(protoStringField(new Uint8Array(0), 1), undefined);
});

/**
 * Puts an image whose manifest does not parse (its config digest is not a digest) into containerd.
 * containerd 1.6 refuses non-JSON manifests on import, and unpacking refuses this one too, but
 * `--no-unpack` stores it as is, which is exactly the bad data a source must survive.
 */
async function importMalformed(ctd: Containerd, layout: string): Promise<{ key: string; digest: Digest }> {
  const dir = await mkdtemp(path.join(layout, 'malformed-'));
  try {
    await mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
    const body = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: 'sha256:zz', size: 2 },
        layers: [],
      }),
    );
    const digest = sha256(body) as Digest;
    const name = 'docker.io/library/malformed:1';
    await writeFile(path.join(dir, 'blobs', 'sha256', digest.slice(7)), body);
    await writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    await writeFile(
      path.join(dir, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          {
            mediaType: 'application/vnd.oci.image.manifest.v1+json',
            digest,
            size: body.length,
            annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': '1' },
          },
        ],
      }),
    );
    const tar = path.join(dir, 'malformed.tar');
    await execFileP('tar', ['-C', dir, '-cf', tar, 'oci-layout', 'index.json', 'blobs']);
    await ctd.ctr(['-n', NAMESPACE, 'images', 'import', '--no-unpack', tar]);
    return { key: keyOf(name), digest };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('test support: CRI can be enabled with a config_path, and stop() leaves nothing behind', async () => {
  const certs = await mkdtemp(path.join(os.tmpdir(), 'ppcerts-'));
  const ctd = await startContainerd({ name: 'ppcri', cri: { configPath: certs } });
  let stopped = false;
  try {
    const { stdout } = await ctd.ctr(['plugins', 'ls']);
    const cri = stdout.split('\n').find((l) => /\bio\.containerd\.grpc\.v1\s+cri\b/.test(l));
    assert.match(cri ?? '', /\bok\s*$/, `CRI plugin loaded:\n${stdout}`);
    const config = await readFile(path.join(ctd.dir, 'config.toml'), 'utf8');
    assert.match(config, new RegExp(`config_path = "${certs}"`));
    assert.match(config, new RegExp(`snapshotter = "${ctd.snapshotter}"`));
    const pid = ctd.pid()!;
    await ctd.stop();
    stopped = true;
    assert.throws(() => process.kill(pid, 0), /ESRCH/, 'containerd process is gone');
    await assert.rejects(access(ctd.dir), /ENOENT/, 'temp dir is removed');
  } finally {
    if (!stopped) await ctd.stop();
    await rm(certs, { recursive: true, force: true });
  }
});

// The registry front end on a real containerd: the same contract as the OCI-layout store, through
// both read paths (content files and gRPC Content.Read), a real `ctr images pull` through peerpull
// as a mirror, and garbage-collected content answered with 404.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { GeneratedImage } from '../src/main/image-generator.js';
import { importImages, makeImage, startContainerd, type Containerd } from './support/containerd.js';
import { generateImage } from '../src/main/image-generator.js';
import { freePort, get } from './support/http.js';
import { eventually, startPeerpull, type PeerpullProcess } from './support/peerpull.js';
import { registryContract, type ContractContext } from './support/registry-contract.js';

const HOST_ARCH = process.arch === 'arm64' ? 'arm64' : 'amd64';


describe('registry on a real containerd', () => {
  let ctd: Containerd;
  let layout: string;
  let single: GeneratedImage;
  let multi: GeneratedImage;
  let doomed: GeneratedImage;

  before(async () => {
    ctd = await startContainerd({ name: 'pp-reg' });
    layout = await mkdtemp(path.join(os.tmpdir(), 'peerpull-images-'));
    single = await generateImage(layout, {
      name: 'docker.io/library/contract-single:v1',
      layerSizes: [3 * 1024 * 1024 + 17, 64 * 1024, 1],
      platforms: [{ os: 'linux', architecture: HOST_ARCH }],
    });
    multi = await generateImage(layout, {
      name: 'ghcr.io/peerpull/contract-multi:v2',
      layerSizes: [200 * 1024, 10],
      platforms: [
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 'arm64', variant: 'v8' },
      ],
    });
    await importImages(ctd, layout, [single, multi], { allPlatforms: true });
    doomed = await makeImage(ctd, layout, { name: 'docker.io/library/doomed:gc', layerSizes: [100_000], platforms: [{ os: 'linux', architecture: HOST_ARCH }] });
  });

  after(async () => {
    await ctd?.stop();
    if (layout) await rm(layout, { recursive: true, force: true });
  });

  for (const readPath of ['content files', 'gRPC Content.Read'] as const) {
    describe(`read through ${readPath}`, () => {
      let pp: PeerpullProcess;
      before(async () => {
        pp = await startPeerpull({
          PEERPULL_STORE: 'containerd',
          PEERPULL_CONTAINERD_SOCK: ctd.socket,
          // A content path that does not exist forces every read through gRPC.
          PEERPULL_CONTENT_PATH: readPath === 'content files' ? ctd.contentPath : path.join(ctd.dir, 'no-such-content-dir'),
          PEERPULL_CHUNK_SIZE: '64Ki',
        });
        await pp.waitForLog((l) => l.msg === 'content source ready', 20_000);
        // The read path under test really is the one in use.
        const fromFiles = pp.logs.some((l) => /serving from files/.test(String(l.msg)));
        assert.equal(fromFiles, readPath === 'content files', `serving from files: ${fromFiles}`);
      });
      after(async () => {
        await pp?.stop();
      });
      registryContract((): ContractContext => ({ url: pp.url, port: pp.registryPort, single, multi, layout }));
    });
  }

  describe('a real client pull through peerpull as the mirror', () => {
    let pp: PeerpullProcess;
    let client: Containerd;
    let hostsDir: string;
    before(async () => {
      pp = await startPeerpull({ PEERPULL_STORE: 'containerd', PEERPULL_CONTAINERD_SOCK: ctd.socket, PEERPULL_CONTENT_PATH: ctd.contentPath });
      await pp.waitForLog((l) => l.msg === 'content source ready', 20_000);
      client = await startContainerd({ name: 'pp-cli' });
      hostsDir = path.join(client.dir, 'certs.d');
      const upstream = await freePort(); // nothing listens there: the upstream is closed
      for (const registry of ['docker.io', 'ghcr.io']) {
        await mkdir(path.join(hostsDir, registry), { recursive: true });
        await writeFile(
          path.join(hostsDir, registry, 'hosts.toml'),
          [
            `server = "http://127.0.0.1:${upstream}"`,
            '',
            `[host."http://127.0.0.1:${pp.registryPort}"]`,
            '  capabilities = ["pull", "resolve"]',
            '  dial_timeout = "200ms"',
            '',
          ].join('\n'),
        );
      }
    });
    after(async () => {
      await client?.stop();
      await pp?.stop();
    });

    async function assertSameContent(img: GeneratedImage, digests = img.all.map((d) => d.digest)): Promise<void> {
      for (const d of digests) {
        const bytes = await readFile(path.join(client.contentPath, 'blobs', 'sha256', d.slice(7)));
        assert.equal('sha256:' + createHash('sha256').update(bytes).digest('hex'), d);
      }
      const { stdout } = await client.ctr(['-n', 'k8s.io', 'images', 'ls', '-q']);
      assert.ok(stdout.split('\n').includes(img.name), `${img.name} listed in the client: ${stdout}`);
    }

    test('ctr images pull of a single-platform image succeeds and ends with identical content', async () => {
      await client.ctr(['-n', 'k8s.io', 'images', 'pull', '--hosts-dir', hostsDir, single.name]);
      await assertSameContent(single);
      const m = await get(`${pp.metricsUrl}/metrics`);
      assert.match(m.body.toString(), /peerpull_http_requests_total\{route="manifests",method="HEAD",code="200"\} [1-9]/);
    });

    test('ctr images pull --all-platforms of an index succeeds with every platform', async () => {
      await client.ctr(['-n', 'k8s.io', 'images', 'pull', '--all-platforms', '--hosts-dir', hostsDir, multi.name]);
      await assertSameContent(multi);
    });

    test('an image the mirror does not have fails fast with the upstream unreachable, not a hang', async () => {
      const started = Date.now();
      await assert.rejects(client.ctr(['-n', 'k8s.io', 'images', 'pull', '--hosts-dir', hostsDir, 'docker.io/library/nobody-has-this:1']));
      // Not a timing assertion on peerpull: a sanity bound that the pull did not wait on a hang.
      assert.ok(Date.now() - started < 60_000);
    });
  });

  test('an image deleted with garbage collection: its blobs answer 404, never 500', async () => {
    const pp = await startPeerpull({ PEERPULL_STORE: 'containerd', PEERPULL_CONTAINERD_SOCK: ctd.socket, PEERPULL_CONTENT_PATH: ctd.contentPath });
    try {
      await pp.waitForLog((l) => l.msg === 'content source ready', 20_000);
      const layer = doomed.manifests[0]!.layers[0]!;
      const url = `${pp.url}/v2/library/doomed/blobs/${layer.digest}?ns=docker.io`;
      assert.equal((await get(url)).status, 200);
      await ctd.ctr(['-n', 'k8s.io', 'images', 'rm', '--sync', doomed.name]);
      await eventually(async () => (await get(url)).status === 404, 15_000, 'the GC-deleted blob to be a 404');
      const r = await get(url);
      assert.equal(JSON.parse(r.body.toString()).errors[0].code, 'BLOB_UNKNOWN');
      assert.equal((await get(url, {}, 'HEAD')).status, 404);
      const tag = await get(`${pp.url}/v2/library/doomed/manifests/gc?ns=docker.io`, {}, 'HEAD');
      assert.equal(tag.status, 404);
      // Unrelated content is still served.
      assert.equal((await get(`${pp.url}/v2/library/contract-single/manifests/v1?ns=docker.io`, {}, 'HEAD')).status, 200);
    } finally {
      await pp.stop();
    }
  });
});

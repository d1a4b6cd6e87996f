// The registry's behaviour as a client sees it, run against every content source
// (OCI layout and real containerd) so both are held to the same contract.

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import type { GeneratedImage } from '../../src/main/image-generator.js';
import type { Descriptor } from '../../src/shared/oci.js';
import { get, rawRequest, sameConnection, sha256, type Response } from './http.js';

export interface ContractContext {
  url: string;
  port: number;
  /** The generated images the server holds; `single` has one platform, `multi` an index. */
  single: GeneratedImage;
  multi: GeneratedImage;
  /** A directory holding every blob at blobs/sha256/<hex> (the generator's layout). */
  layout: string;
}

function blobFile(layout: string, d: Descriptor): string {
  return path.join(layout, 'blobs', 'sha256', d.digest.slice(7));
}

function repoOf(img: GeneratedImage): { repo: string; tag: string; ns: string } {
  const [host, ...rest] = img.name.split('/');
  const joined = rest.join('/');
  const colon = joined.lastIndexOf(':');
  return { ns: host!, repo: joined.slice(0, colon), tag: joined.slice(colon + 1) };
}

function assertOciError(r: Response, status: number, code: string): void {
  assert.equal(r.status, status, `expected ${status} ${code}, got ${r.status}: ${r.body.toString()}`);
  if (r.body.length > 0) {
    const body = JSON.parse(r.body.toString()) as { errors: { code: string; message: string }[] };
    assert.equal(body.errors[0]?.code, code);
    assert.ok(body.errors[0]?.message.length);
  }
}

export function registryContract(ctx: () => ContractContext): void {
  test('GET /v2/ answers the API version check', async () => {
    const r = await get(`${ctx().url}/v2/`);
    assert.equal(r.status, 200);
    assert.equal(r.headers['docker-distribution-api-version'], 'registry/2.0');
  });

  test('manifest by tag: HEAD and GET carry media type, digest and length; body hashes to the digest', async () => {
    for (const img of [ctx().single, ctx().multi]) {
      const { repo, tag, ns } = repoOf(img);
      const url = `${ctx().url}/v2/${repo}/manifests/${tag}?ns=${ns}`;
      const accept = { accept: 'application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json' };
      const head = await get(url, accept, 'HEAD');
      const body = await get(url, accept);
      for (const r of [head, body]) {
        assert.equal(r.status, 200, img.name);
        assert.equal(r.headers['content-type'], img.target.mediaType);
        assert.equal(r.headers['docker-content-digest'], img.target.digest);
        assert.equal(r.headers['content-length'], String(img.target.size));
      }
      assert.equal(head.body.length, 0);
      assert.equal(sha256(body.body), img.target.digest);
    }
  });

  test('every manifest, config and layer by digest is byte-identical', async () => {
    for (const img of [ctx().single, ctx().multi]) {
      const { repo, ns } = repoOf(img);
      for (const d of img.all) {
        const isManifest = d.mediaType.includes('manifest') || d.mediaType.includes('index');
        const url = `${ctx().url}/v2/${repo}/${isManifest ? 'manifests' : 'blobs'}/${d.digest}?ns=${ns}`;
        const r = await get(url);
        assert.equal(r.status, 200, `${d.digest} (${d.mediaType})`);
        assert.equal(r.body.length, d.size);
        assert.equal(sha256(r.body), d.digest);
        assert.equal(r.headers['docker-content-digest'], d.digest);
        assert.equal(r.headers['content-length'], String(d.size));
        if (!isManifest) assert.equal(r.headers['accept-ranges'], 'bytes');
      }
    }
  });

  test('a HEAD keeps the connection usable: HEAD tag, GET manifest, HEAD blob, GET blob on one socket', async () => {
    const { repo, tag, ns } = repoOf(ctx().single);
    const layer = ctx().single.manifests[0]!.layers[2]!;
    const statuses = await sameConnection(ctx().port, [
      { method: 'HEAD', path: `/v2/${repo}/manifests/${tag}?ns=${ns}` },
      { method: 'GET', path: `/v2/${repo}/manifests/${ctx().single.target.digest}?ns=${ns}` },
      { method: 'HEAD', path: `/v2/${repo}/blobs/${layer.digest}?ns=${ns}` },
      { method: 'HEAD', path: `/v2/${repo}/blobs/sha256:${'0'.repeat(64)}?ns=${ns}` },
      { method: 'GET', path: `/v2/${repo}/blobs/${layer.digest}?ns=${ns}` },
    ]);
    assert.deepEqual(statuses, [200, 200, 200, 404, 200]);
  });

  test('HEAD of a blob has the same status and headers as GET, and no body', async () => {
    const { repo, ns } = repoOf(ctx().single);
    for (const d of [ctx().single.manifests[0]!.config, ...ctx().single.manifests[0]!.layers]) {
      const url = `${ctx().url}/v2/${repo}/blobs/${d.digest}?ns=${ns}`;
      const [h, g] = [await get(url, {}, 'HEAD'), await get(url)];
      assert.equal(h.status, g.status);
      for (const k of ['content-type', 'content-length', 'docker-content-digest', 'accept-ranges']) assert.equal(h.headers[k], g.headers[k], k);
      assert.equal(h.body.length, 0);
    }
  });

  test('single ranges give 206 with Content-Range and the exact bytes; bad ones 416', async () => {
    const { repo, ns } = repoOf(ctx().single);
    const layer = ctx().single.manifests[0]!.layers[0]!;
    const whole = await readFile(blobFile(ctx().layout, layer));
    const url = `${ctx().url}/v2/${repo}/blobs/${layer.digest}?ns=${ns}`;
    const size = layer.size;
    const cases: { range: string; start: number; end: number }[] = [
      { range: 'bytes=0-0', start: 0, end: 1 },
      { range: 'bytes=10-1009', start: 10, end: 1010 },
      { range: `bytes=${size - 100}-`, start: size - 100, end: size },
      { range: 'bytes=-4096', start: size - 4096, end: size },
      { range: `bytes=5-${size + 1000}`, start: 5, end: size },
      { range: `bytes=${Math.floor(size / 3)}-${Math.floor((2 * size) / 3)}`, start: Math.floor(size / 3), end: Math.floor((2 * size) / 3) + 1 },
    ];
    for (const c of cases) {
      const r = await get(url, { range: c.range });
      assert.equal(r.status, 206, c.range);
      assert.equal(r.headers['content-range'], `bytes ${c.start}-${c.end - 1}/${size}`, c.range);
      assert.equal(r.headers['content-length'], String(c.end - c.start));
      assert.ok(r.body.equals(whole.subarray(c.start, c.end)), `body of ${c.range}`);
      const h = await get(url, { range: c.range }, 'HEAD');
      assert.equal(h.status, 206);
      assert.equal(h.headers['content-length'], String(c.end - c.start));
    }
    for (const bad of [`bytes=${size}-`, `bytes=${size + 5}-${size + 10}`, 'bytes=-0', 'bytes=0-1,5-6']) {
      const r = await get(url, { range: bad });
      assertOciError(r, 416, 'RANGE_INVALID');
    }
    // Syntax we do not understand is ignored (RFC 9110): the whole blob.
    const ignored = await get(url, { range: 'items=0-5' });
    assert.equal(ignored.status, 200);
    assert.equal(sha256(ignored.body), layer.digest);
  });

  test('a manifest asked for as a blob, or a blob as a manifest, is 404', async () => {
    const { repo, ns } = repoOf(ctx().single);
    const m = ctx().single.target;
    const layer = ctx().single.manifests[0]!.layers[0]!;
    assertOciError(await get(`${ctx().url}/v2/${repo}/blobs/${m.digest}?ns=${ns}`), 404, 'BLOB_UNKNOWN');
    assertOciError(await get(`${ctx().url}/v2/${repo}/manifests/${layer.digest}?ns=${ns}`), 404, 'MANIFEST_UNKNOWN');
  });

  test('unknown content, tags of another registry and malformed references give the right OCI errors', async () => {
    const { repo, tag, ns } = repoOf(ctx().single);
    const zero = 'sha256:' + '0'.repeat(64);
    const base = ctx().url;
    const cases: { path: string; method?: 'GET' | 'HEAD'; status: number; code: string }[] = [
      { path: `/v2/${repo}/blobs/${zero}?ns=${ns}`, status: 404, code: 'BLOB_UNKNOWN' },
      { path: `/v2/${repo}/blobs/${zero}?ns=${ns}`, method: 'HEAD', status: 404, code: 'BLOB_UNKNOWN' },
      { path: `/v2/${repo}/manifests/${zero}?ns=${ns}`, status: 404, code: 'MANIFEST_UNKNOWN' },
      { path: `/v2/${repo}/manifests/nosuchtag?ns=${ns}`, status: 404, code: 'MANIFEST_UNKNOWN' },
      { path: `/v2/${repo}/manifests/${tag}?ns=other.example.com`, status: 404, code: 'MANIFEST_UNKNOWN' },
      { path: `/v2/${repo}/blobs/sha256:abc?ns=${ns}`, status: 400, code: 'DIGEST_INVALID' },
      { path: `/v2/${repo}/blobs/sha256:${'A'.repeat(64)}?ns=${ns}`, status: 400, code: 'DIGEST_INVALID' },
      { path: `/v2/${repo}/blobs/sha512:${'a'.repeat(128)}?ns=${ns}`, status: 400, code: 'UNSUPPORTED' },
      { path: `/v2/${repo}/manifests/-bad?ns=${ns}`, status: 400, code: 'TAG_INVALID' },
      { path: `/v2/${repo}/manifests/${'t'.repeat(129)}?ns=${ns}`, status: 400, code: 'TAG_INVALID' },
      { path: `/v2/UPPER/case/manifests/${tag}?ns=${ns}`, status: 400, code: 'NAME_INVALID' },
      { path: `/v2/${'a'.repeat(300)}/manifests/${tag}?ns=${ns}`, status: 400, code: 'NAME_INVALID' },
      { path: `/v2/${repo}/manifests/${tag}?ns=bad_host!`, status: 400, code: 'NAME_INVALID' },
      { path: `/v2/${repo}/tags/list?ns=${ns}`, status: 404, code: 'UNSUPPORTED' },
      { path: `/v2/${repo}/blobs/uploads/?ns=${ns}`, status: 404, code: 'UNSUPPORTED' },
    ];
    for (const c of cases) {
      const r = await get(base + c.path, {}, c.method ?? 'GET');
      assertOciError(r, c.status, c.code);
    }
  });

  test('other methods are 405 UNSUPPORTED', async () => {
    const { repo, tag, ns } = repoOf(ctx().single);
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
      const r = await rawRequest(ctx().port, `${method} /v2/${repo}/manifests/${tag}?ns=${ns} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
      assertOciError(r, 405, 'UNSUPPORTED');
    }
  });

  test('hostile paths never reach a file: traversal, encoded separators, NUL, huge headers', async () => {
    const layer = ctx().single.manifests[0]!.layers[0]!;
    const hex = layer.digest.slice(7);
    const paths = [
      `/v2/../../../../etc/passwd/blobs/${layer.digest}`,
      `/v2/library/../../blobs/${layer.digest}`,
      `/v2/library%2f..%2f..%2fetc/blobs/${layer.digest}`,
      `/v2/x/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd`,
      `/v2/x/blobs/sha256:${hex}%00`,
      `/v2/x/blobs/sha256/${hex}`,
      `/v2/x/blobs/..%2Fsha256:${hex}`,
      `/v2//blobs/${layer.digest}`,
      `/v2/x//y/blobs/${layer.digest}`,
      `/../blobs/sha256/${hex}`,
      `/v2/x/blobs/${layer.digest}/..`,
      `/v2/${'a/'.repeat(1500)}blobs/${layer.digest}`,
    ];
    for (const p of paths) {
      const r = await rawRequest(ctx().port, `GET ${p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      assert.ok(r.status >= 400 && r.status < 500, `${p.slice(0, 80)} gave ${r.status}`);
      assert.ok(!r.body.includes('root:'), 'no file content');
    }
    // Headers far beyond any sane size: refused or cut, and the server keeps serving.
    const huge = `GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(256 * 1024)}\r\nConnection: close\r\n\r\n`;
    const r = await rawRequest(ctx().port, huge).catch(() => ({ status: 0 }) as Response);
    assert.notEqual(r.status, 200);
    const after = await get(`${ctx().url}/v2/`);
    assert.equal(after.status, 200);
  });

  test('without ?ns= the default registry applies', async () => {
    const { repo, tag } = repoOf(ctx().single);
    const r = await get(`${ctx().url}/v2/${repo}/manifests/${tag}`, {}, 'HEAD');
    assert.equal(r.status, 200);
    assert.equal(r.headers['docker-content-digest'], ctx().single.target.digest);
  });
}

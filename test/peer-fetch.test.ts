// The peer fetch tasks (hedging, resume, stall detection, verification) against a real peerpull
// holding the content and real HTTP servers that misbehave on purpose. The provider list is given
// in a fixed order so each fault is exercised deterministically; routing is tested elsewhere.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { MessageChannel } from 'node:worker_threads';
import { generateImage, type GeneratedImage } from '../src/main/image-generator.js';
import type { PeerBlobTask, PeerFetchReport, PeerOpen, PeerTarget, StreamFromWorker } from '../src/shared/messages.js';
import { PEER_HOP_HEADER } from '../src/shared/messages.js';
import type { Digest } from '../src/shared/oci.js';
import { fetchBlob, fetchManifest } from '../src/workers/peer-fetch.js';
import { startPeerpull, type PeerpullProcess } from './support/peerpull.js';

type Behaviour = 'status500' | 'stallHeaders' | 'stallBody' | 'short' | 'wrongDigest' | 'overlong' | 'corruptManifest' | 'notFound';

/** A real HTTP server that answers every request with the given fault, recording what it saw. */
async function faultyPeer(behaviour: Behaviour, blob: Buffer, digest: string): Promise<{ target: PeerTarget; hits: () => number; hopSeen: () => boolean; close(): Promise<void> }> {
  let hits = 0;
  let hop = false;
  const sockets = new Set<import('node:net').Socket>();
  const server = http.createServer((req, res) => {
    hits++;
    hop ||= req.headers[PEER_HOP_HEADER] === '1';
    switch (behaviour) {
      case 'status500':
        res.writeHead(500).end('boom');
        return;
      case 'notFound':
        res.writeHead(404).end();
        return;
      case 'stallHeaders':
        return; // never answers
      case 'stallBody':
        res.writeHead(200, { 'content-length': blob.length, 'docker-content-digest': digest });
        res.write(blob.subarray(0, 100 * 1024));
        return; // then nothing, forever
      case 'short':
        res.writeHead(200, { 'content-length': blob.length, 'docker-content-digest': digest });
        res.write(blob.subarray(0, Math.floor(blob.length / 2)), () => res.socket?.destroy());
        return;
      case 'wrongDigest':
        res.writeHead(200, { 'content-length': blob.length, 'docker-content-digest': 'sha256:' + 'f'.repeat(64) }).end(blob);
        return;
      case 'overlong':
        // Announces fewer bytes than it has: the HTTP layer stops at Content-Length, we see a short blob.
        res.writeHead(200, { 'content-length': blob.length - 10, 'docker-content-digest': digest }).end(blob.subarray(0, blob.length - 10));
        return;
      case 'corruptManifest': {
        const body = Buffer.from(blob);
        body[body.length - 2] ^= 1;
        res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'content-length': body.length, 'docker-content-digest': digest }).end(body);
        return;
      }
    }
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    target: { peerId: `faulty-${behaviour}`, host: '127.0.0.1', port },
    hits: () => hits,
    hopSeen: () => hop,
    close: () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

interface Collected {
  open?: PeerOpen;
  body: Buffer;
  error?: string;
  errorStatus?: number;
  ended: boolean;
  report: PeerFetchReport;
  /** Byte length of each chunk posted, in order. */
  chunkSizes: number[];
}

/** Runs fetchBlob in this thread, acting as the main thread: collects chunks and grants credit. */
async function runFetch(
  providers: PeerTarget[],
  digest: string,
  opts: Partial<PeerBlobTask> = {},
  /** Answers the task's asks for a fresh lookup, as routes.ts does (none: an empty answer). */
  moreProviders?: (exclude: string[]) => PeerTarget[],
): Promise<Collected> {
  const { port1, port2 } = new MessageChannel();
  const chunks: Buffer[] = [];
  const out: Partial<Collected> = { ended: false };
  port1.on('message', (m: StreamFromWorker) => {
    if (m instanceof ArrayBuffer) {
      chunks.push(Buffer.from(m));
      port1.postMessage({ type: 'credit', n: 1 });
    } else if (m.type === 'providers') port1.postMessage({ type: 'providers', providers: moreProviders?.(m.exclude) ?? [] });
    else if (m.type === 'open') out.open = m.peer;
    else if (m.type === 'end') out.ended = true;
    else if (m.type === 'error') {
      out.error = m.error;
      if (m.status) out.errorStatus = m.status;
    }
  });
  const report = await fetchBlob({
    providers,
    digest: digest as Digest,
    path: `/v2/library/fetchme/blobs/${digest}?ns=docker.io`,
    range: '',
    verify: true,
    chunkSize: 64 * 1024,
    credits: 4,
    hedgeDelayMs: 50,
    stallMs: 400,
    maxAttempts: 4,
    port: port2,
    ...opts,
  });
  // Let the last messages arrive.
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setTimeout(r, 20));
  port1.close();
  return { ...(out as Collected), body: Buffer.concat(chunks), report, chunkSizes: chunks.map((c) => c.length) };
}

function sha(b: Buffer): string {
  return 'sha256:' + createHash('sha256').update(b).digest('hex');
}

describe('peer fetch: hedging, resume, faults', () => {
  let dir: string;
  let good: PeerpullProcess;
  let img: GeneratedImage;
  let blob: Buffer;
  let digest: string;
  let goodTarget: PeerTarget;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'peerpull-fetch-'));
    img = await generateImage(dir, { name: 'docker.io/library/fetchme:1', layerSizes: [2 * 1024 * 1024 + 333] });
    const layer = img.manifests[0]!.layers[0]!;
    digest = layer.digest;
    blob = await readFile(path.join(dir, 'blobs', 'sha256', digest.slice(7)));
    good = await startPeerpull({ PEERPULL_STORE: `oci-layout:${dir}` });
    await good.waitForLog((l) => l.msg === 'content source ready');
    goodTarget = { peerId: 'good', host: '127.0.0.1', port: good.registryPort };
  });

  after(async () => {
    await good?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('a good peer alone: the whole blob, sent with the peer-hop marker', async () => {
    const r = await runFetch([goodTarget], digest);
    assert.equal(r.error, undefined);
    assert.ok(r.ended);
    assert.equal(r.open?.status, 200);
    assert.equal(r.open?.size, blob.length);
    assert.equal(sha(r.body), digest);
    assert.equal(r.report.winner, 'good');
    assert.deepEqual(r.report.failedPeers, []);
  });

  const faults: { behaviour: Behaviour; expect: 'failed-first' | 'hedged' | 'resumed' }[] = [
    { behaviour: 'status500', expect: 'failed-first' },
    { behaviour: 'notFound', expect: 'failed-first' },
    { behaviour: 'wrongDigest', expect: 'failed-first' },
    { behaviour: 'stallHeaders', expect: 'hedged' },
    { behaviour: 'stallBody', expect: 'resumed' },
    { behaviour: 'short', expect: 'resumed' },
  ];
  for (const f of faults) {
    test(`first provider ${f.behaviour}: the blob still arrives whole from the next (${f.expect})`, async () => {
      const bad = await faultyPeer(f.behaviour, blob, digest);
      try {
        const r = await runFetch([bad.target, goodTarget], digest);
        assert.equal(r.error, undefined, r.error);
        assert.ok(r.ended, 'ended');
        assert.equal(r.body.length, blob.length);
        assert.equal(sha(r.body), digest);
        assert.ok(bad.hits() >= 1, 'the faulty peer was asked first');
        assert.ok(bad.hopSeen(), 'peer requests carry the hop marker');
        assert.ok(r.report.failedPeers.includes(bad.target.peerId) || r.report.hedges > 0, 'the fault was noticed');
        if (f.expect === 'hedged') assert.ok(r.report.hedges >= 1);
        if (f.expect === 'resumed') {
          assert.equal(r.report.resumes, 1);
          assert.equal(r.report.winner, bad.target.peerId, 'the faulty peer won the headers, then broke');
        }
        if (f.expect === 'failed-first') assert.equal(r.report.winner, 'good');
      } finally {
        await bad.close();
      }
    });
  }

  test('a peer that announces and sends the wrong length: never passed on as a complete blob', async () => {
    const bad = await faultyPeer('overlong', blob, digest);
    try {
      const r = await runFetch([bad.target, goodTarget], digest);
      assert.ok(r.error, 'the transfer is reported broken');
      assert.ok(!r.ended);
      assert.ok(r.body.length < blob.length - 10, 'the last byte was held back');
      assert.ok(r.report.failedPeers.includes(bad.target.peerId));
      // Without verification the wrong blob would have gone through whole: the check is what stops it.
      const unverified = await runFetch([bad.target], digest, { verify: false });
      assert.ok(unverified.ended);
      assert.equal(unverified.body.length, blob.length - 10);
    } finally {
      await bad.close();
    }
  });

  test('a kept-alive connection the peer closed meanwhile is redialled, not counted as a failure', async () => {
    const server = http.createServer((req, res) => {
      res.writeHead(200, { 'content-length': blob.length, 'docker-content-digest': digest }).end(blob);
    });
    server.keepAliveTimeout = 100;
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const target = { peerId: 'short-keepalive', host: '127.0.0.1', port: (server.address() as AddressInfo).port };
    try {
      const first = await runFetch([target], digest);
      assert.equal(sha(first.body), digest);
      await new Promise((r) => setTimeout(r, 400)); // the server closes the idle connection
      const second = await runFetch([target], digest);
      assert.equal(second.error, undefined);
      assert.equal(sha(second.body), digest);
      assert.deepEqual(second.report.failedPeers, []);
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  test('bodies read in place: whole chunks only, held back and verified, and the connection reused after them', async () => {
    // The socket reads straight into chunk buffers that are then transferred: bodies that end on a
    // chunk boundary, and a connection reused after them, must still carry exactly the right bytes.
    let connections = 0;
    const server = http.createServer((req, res) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (!m) return res.writeHead(200, { 'content-length': blob.length, 'docker-content-digest': digest }).end(blob);
      const [start, last] = [Number(m[1]), Number(m[2])];
      res.writeHead(206, { 'content-length': last + 1 - start, 'content-range': `bytes ${start}-${last}/${blob.length}`, 'docker-content-digest': digest });
      res.end(blob.subarray(start, last + 1));
    });
    server.on('connection', () => connections++);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const target = { peerId: 'in-place', host: '127.0.0.1', port: (server.address() as AddressInfo).port };
    try {
      assert.equal(blob.length % 5, 0, 'the test blob splits into 5 whole chunks');
      const whole = await runFetch([target], digest, { chunkSize: blob.length / 5, verify: true });
      assert.equal(whole.error, undefined, whole.error);
      assert.ok(whole.ended);
      assert.deepEqual(whole.chunkSizes, Array(5).fill(blob.length / 5));
      assert.equal(sha(whole.body), digest);
      const ranged = await runFetch([target], digest, { range: 'bytes=0-1048575' });
      assert.equal(ranged.error, undefined, ranged.error);
      assert.deepEqual(ranged.chunkSizes, Array(16).fill(64 * 1024));
      assert.ok(ranged.body.equals(blob.subarray(0, 1048576)));
      const again = await runFetch([target], digest);
      assert.equal(again.error, undefined, again.error);
      assert.equal(sha(again.body), digest);
      assert.equal(connections, 1, 'one kept-alive connection served all three');
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  test('a resume inside a client range keeps the range exact', async () => {
    const bad = await faultyPeer('short', blob, digest);
    try {
      // The faulty server ignores ranges and sends 200: only a full-blob request can win on it,
      // so ask the good peer first for a range, check the bytes, then break a range mid-way.
      const r1 = await runFetch([goodTarget], digest, { range: 'bytes=1000-1999999' });
      assert.equal(r1.open?.status, 206);
      assert.equal(r1.open?.start, 1000);
      assert.equal(r1.open?.end, 2_000_000);
      assert.ok(r1.body.equals(blob.subarray(1000, 2_000_000)));
      const r2 = await runFetch([goodTarget], digest, { range: `bytes=-5000` });
      assert.ok(r2.body.equals(blob.subarray(blob.length - 5000)));
    } finally {
      await bad.close();
    }
  });

  test('the only provider breaks mid-body: a fresh lookup without it finds another, which finishes the blob', async () => {
    const bad = await faultyPeer('short', blob, digest);
    try {
      const asked: string[][] = [];
      const r = await runFetch([bad.target], digest, {}, (exclude) => {
        asked.push(exclude);
        // The answer may name the failed peer again (a stale record): the task must not retry it.
        return [bad.target, goodTarget];
      });
      assert.equal(r.error, undefined, r.error);
      assert.ok(r.ended);
      assert.equal(sha(r.body), digest);
      assert.deepEqual(asked, [[bad.target.peerId]], 'one lookup, without the failed peer');
      assert.equal(bad.hits(), 1, 'the failed peer was not asked again');
      assert.equal(r.report.resumes, 1);
      assert.deepEqual(r.report.relookups, { found: 1, none: 0 });
    } finally {
      await bad.close();
    }
  });

  test('the only provider breaks mid-body and nobody else has it: a cut transfer, the lookup counted', async () => {
    const bad = await faultyPeer('short', blob, digest);
    try {
      const r = await runFetch([bad.target], digest, {}, () => []);
      assert.match(r.error ?? '', /no other could resume/);
      assert.ok(!r.ended);
      assert.ok(r.body.length < blob.length);
      assert.deepEqual(r.report.relookups, { found: 0, none: 1 });
      // With one attempt in the budget, nothing is looked up: the provider was the last try.
      const once = await runFetch([bad.target], digest, { maxAttempts: 1 }, () => [goodTarget]);
      assert.ok(once.error);
      assert.deepEqual(once.report.relookups, { found: 0, none: 0 });
    } finally {
      await bad.close();
    }
  });

  test('every provider failing ends fast with a "missing" error and no bytes', async () => {
    const a = await faultyPeer('status500', blob, digest);
    const b = await faultyPeer('stallHeaders', blob, digest);
    try {
      const r = await runFetch([a.target, b.target], digest);
      assert.ok(r.error, 'an error is reported');
      assert.equal(r.open, undefined);
      assert.equal(r.body.length, 0);
      assert.deepEqual(new Set(r.report.failedPeers), new Set([a.target.peerId, b.target.peerId]));
    } finally {
      await a.close();
      await b.close();
    }
  });

  test('an unsatisfiable client range is answered 416, not retried on every peer', async () => {
    const r = await runFetch([goodTarget, goodTarget], digest, { range: `bytes=${blob.length + 10}-` });
    assert.equal(r.errorStatus, 416);
    assert.equal(r.body.length, 0);
  });

  test('manifests: a corrupt or wrong answer is rejected by hash, the next peer serves', async () => {
    const m = img.target;
    const body = await readFile(path.join(dir, 'blobs', 'sha256', m.digest.slice(7)));
    const bad = await faultyPeer('corruptManifest', body, m.digest);
    try {
      for (const byTag of [false, true]) {
        const r = await fetchManifest({
          providers: [bad.target, goodTarget],
          path: `/v2/library/fetchme/manifests/${byTag ? '1' : m.digest}?ns=docker.io`,
          ...(byTag ? {} : { digest: m.digest }),
          hedgeDelayMs: 50,
          stallMs: 400,
          maxAttempts: 3,
        });
        assert.ok(r.ok, r.ok ? '' : r.error);
        if (r.ok) {
          assert.equal(r.digest, m.digest);
          assert.equal(sha(Buffer.from(r.body)), m.digest);
          assert.equal(r.mediaType, m.mediaType);
        }
        assert.ok(r.failedPeers.includes(bad.target.peerId));
      }
    } finally {
      await bad.close();
    }
  });
});

// Piscina tasks that fetch content from other peerpull nodes over plain HTTP.
// Hedged: the next provider is asked when the current one is slow to answer or fails; the first
// good answer wins and the others are aborted. Resumable: a blob whose peer breaks mid-body goes on
// from the first missing byte on another provider (a Range request), so the client sees one body.
// Every request carries the peer-hop marker: the peer answers from its own content only.

import { createHash } from 'node:crypto';
import type {
  PeerBlobTask,
  PeerFetchPolicy,
  PeerFetchReport,
  PeerManifestResult,
  PeerManifestTask,
  PeerOpen,
  PeerTarget,
  StreamFromWorker,
  StreamToWorker,
} from '../shared/messages.js';
import { HOP_INFLIGHT, PEER_HOP_HEADER } from '../shared/messages.js';
import { isDigest, isManifestMediaType, type Digest } from '../shared/oci.js';
import { ChunkSender, Credit } from './channel.js';
import { peerRequest, type BodySink, type PeerResponse } from './peer-http.js';

/** Largest manifest accepted from a peer (registries cap manifests at 4 MiB). */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/** Fresh lookups one transfer may ask for once its providers are used up. */
const MAX_RELOOKUPS = 2;
/** Main answers a lookup within its deadline; this only keeps a lost answer from holding the task. */
const RELOOKUP_WAIT_MS = 30_000;

/** Asks the main thread to look the key up again without `exclude`; [] on no answer. */
function askForProviders(port: PeerBlobTask['port'], exclude: string[]): Promise<PeerTarget[]> {
  return new Promise((resolve) => {
    const done = (found: PeerTarget[]) => {
      clearTimeout(timer);
      port.off('message', onMessage);
      port.off('close', onClose);
      resolve(found);
    };
    const onMessage = (m: StreamToWorker) => {
      if (!Array.isArray(m) && m.type === 'providers') done(m.providers);
    };
    const onClose = () => done([]);
    const timer = setTimeout(() => done([]), RELOOKUP_WAIT_MS);
    port.on('message', onMessage);
    port.on('close', onClose);
    port.postMessage({ type: 'providers', exclude } satisfies StreamFromWorker);
  });
}

function origin(p: PeerTarget): string {
  return p.host.includes(':') ? `http://[${p.host}]:${p.port}` : `http://${p.host}:${p.port}`;
}

class PeerAnswerError extends Error {
  constructor(
    readonly peer: PeerTarget,
    message: string,
    /** The peer's answer is final for the request (e.g. 416), not a reason to try another. */
    readonly final?: 'range',
  ) {
    super(`peer ${peer.peerId} (${origin(peer)}): ${message}`);
  }
}

interface Attempt<T> {
  peer: PeerTarget;
  value: T;
}

/**
 * Asks providers in order, starting the next one when the current has not answered within the
 * hedge delay or has failed; resolves with the first accepted answer and aborts the rest.
 * `ask` must reject (PeerAnswerError) for answers it does not accept.
 */
async function hedge<T>(
  providers: PeerTarget[],
  policy: PeerFetchPolicy,
  budget: { attempts: number },
  report: PeerFetchReport,
  ask: (peer: PeerTarget, signal: AbortSignal) => Promise<T>,
  dispose: (v: T) => void,
): Promise<Attempt<T> | { error: string; final?: 'range' }> {
  let next = 0;
  let settled = false;
  let lastError = 'no provider to ask';
  const live = new Map<PeerTarget, AbortController>();
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | null = null;
    const finish = (v: Attempt<T> | { error: string; final?: 'range' }) => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      for (const [p, ac] of live) if (!('peer' in v) || p !== v.peer) ac.abort();
      resolve(v);
    };
    const launch = (isHedge: boolean): boolean => {
      if (settled || next >= providers.length || budget.attempts <= 0) return false;
      const peer = providers[next++]!;
      budget.attempts--;
      if (isHedge) report.hedges++;
      const ac = new AbortController();
      live.set(peer, ac);
      ask(peer, ac.signal).then(
        (value) => {
          live.delete(peer);
          if (settled) return dispose(value);
          finish({ peer, value });
        },
        (err: unknown) => {
          live.delete(peer);
          if (settled) return;
          lastError = err instanceof Error ? err.message : String(err);
          if (err instanceof PeerAnswerError && err.final) return finish({ error: lastError, final: err.final });
          report.failedPeers.push(peer.peerId);
          if (!launch(false) && live.size === 0) finish({ error: lastError });
        },
      );
      // Re-arm: while nobody has answered, one more provider joins every hedge delay.
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => {
        timer = null;
        if (!settled) launch(true);
      }, policy.hedgeDelayMs);
      return true;
    };
    if (!launch(false)) finish({ error: lastError });
  });
}

async function get(peer: PeerTarget, path: string, headers: Record<string, string>, signal: AbortSignal, stallMs: number, method: 'GET' | 'HEAD' = 'GET', inflight?: { headersMs: number }): Promise<PeerResponse> {
  try {
    return await peerRequest({
      host: peer.host,
      port: peer.port,
      method,
      path,
      headers: { ...headers, [PEER_HOP_HEADER]: inflight ? HOP_INFLIGHT : '1' },
      signal,
      headersTimeoutMs: inflight?.headersMs ?? stallMs,
      idleTimeoutMs: stallMs,
    });
  } catch (err) {
    throw new PeerAnswerError(peer, err instanceof Error ? err.message : String(err));
  }
}

/** Parses `bytes a-b/size`. */
function parseContentRange(v: string | undefined): { start: number; end: number; size: number } | undefined {
  const m = v ? /^bytes (\d+)-(\d+)\/(\d+)$/.exec(v.trim()) : null;
  if (!m) return undefined;
  const [start, last, size] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (!Number.isSafeInteger(size) || last < start || last >= size) return undefined;
  return { start, end: last + 1, size };
}

/** Checks a blob response's headers; returns what it promises, or throws after discarding the body. */
async function acceptBlob(peer: PeerTarget, res: PeerResponse, digest: Digest, want?: { start: number; end: number; size: number }): Promise<PeerOpen> {
  const fail = async (msg: string, final?: 'range'): Promise<never> => {
    res.discard();
    throw new PeerAnswerError(peer, msg, final);
  };
  const served = res.headers.get('docker-content-digest');
  if (served && served !== digest) return fail(`served ${served} for ${digest}`);
  const length = res.contentLength;
  if (res.status === 416 && !want) return fail('range not satisfiable', 'range');
  if (res.status === 200 && !want) {
    if (!Number.isSafeInteger(length) || length < 0) return fail('200 without a valid Content-Length');
    return { status: 200, size: length, start: 0, end: length, contentType: res.headers.get('content-type') ?? 'application/octet-stream', peerId: peer.peerId };
  }
  if (res.status === 206) {
    const cr = parseContentRange(res.headers.get('content-range'));
    if (!cr) return fail(`206 with a bad Content-Range "${res.headers.get('content-range')}"`);
    if (length !== cr.end - cr.start) return fail(`Content-Length ${length} does not match Content-Range ${cr.start}-${cr.end - 1}`);
    if (want && (cr.start !== want.start || cr.end !== want.end || cr.size !== want.size)) {
      return fail(`resume answered ${cr.start}-${cr.end - 1}/${cr.size}, wanted ${want.start}-${want.end - 1}/${want.size}`);
    }
    return { status: 206, size: cr.size, start: cr.start, end: cr.end, contentType: res.headers.get('content-type') ?? 'application/octet-stream', peerId: peer.peerId };
  }
  return fail(`answered ${res.status}`);
}

/** Streams a blob from peers; never throws: problems go over the port, the report is the result. */
export async function fetchBlob(task: PeerBlobTask): Promise<PeerFetchReport> {
  const { port } = task;
  const started = performance.now();
  const report: PeerFetchReport = { bytes: 0, hedges: 0, resumes: 0, relookups: { found: 0, none: 0 }, failedPeers: [] };
  const credit = new Credit(task.credits, port);
  const verify = task.verify && task.range === '';
  const sender = new ChunkSender(port, credit, task.chunkSize, verify);
  const hash = verify ? createHash('sha256') : null;
  const servedBy = new Set<string>();
  const budget = { attempts: task.maxAttempts };
  const post = (m: StreamFromWorker) => port.postMessage(m);
  try {
    const first = await hedge(
      task.providers,
      task,
      budget,
      report,
      async (peer, signal) => {
        const res = await get(peer, task.path, task.range ? { range: task.range } : {}, signal, task.stallMs, 'GET', task.inflight);
        return { res, open: await acceptBlob(peer, res, task.digest) };
      },
      (v) => v.res.discard(),
    );
    if (!('peer' in first)) {
      post({ type: 'error', missing: true, error: first.error, ...(first.final === 'range' ? { status: 416 as const } : {}) });
      return report;
    }
    report.winner = first.peer.peerId;
    report.ttfbMs = performance.now() - started;
    const open = first.value.open;
    post({ type: 'open', peer: open });
    const total = open.end - open.start;
    let current: { peer: PeerTarget; res: PeerResponse } = { peer: first.peer, res: first.value.res };
    const check = (n: number) => {
      if (sender.accepted + n > total) throw new Error(`sent more than the ${total} bytes it announced`);
    };
    // The socket reads straight into the sender's chunks; only bytes that came with the headers are copied.
    const sink: BodySink = {
      push(piece) {
        check(piece.length);
        hash?.update(piece);
        return sender.push(piece);
      },
      space: (max) => sender.space(Math.min(max, total - sender.accepted)),
      filled(view) {
        check(view.length);
        hash?.update(view);
        return sender.commit(view.length);
      },
    };
    const tried = new Set<string>([first.peer.peerId]);
    const providers = [...task.providers];
    for (;;) {
      let error = '';
      servedBy.add(current.peer.peerId);
      try {
        await current.res.read(sink);
        if (sender.accepted === total) break;
        error = `body ended at ${sender.accepted} of ${total} bytes`;
      } catch (err) {
        if (sender.cancelled) {
          report.bytes = sender.sent;
          return report;
        }
        error = err instanceof Error ? err.message : String(err);
      }
      // The peer broke mid-body: go on from the first missing byte elsewhere.
      current.res.discard();
      report.failedPeers.push(current.peer.peerId);
      report.resumes++;
      const want = { start: open.start + sender.accepted, end: open.end, size: open.size };
      const resume = (order: PeerTarget[]) =>
        hedge(
          order,
          task,
          budget,
          report,
          async (peer, signal) => {
            const res = await get(peer, task.path, { range: `bytes=${want.start}-${want.end - 1}` }, signal, task.stallMs, 'GET', task.inflight);
            await acceptBlob(peer, res, task.digest, want);
            return res;
          },
          (res) => res.discard(),
        );
      // Providers not yet used first; then, as a last resort, earlier ones that answered well.
      let next = await resume([...providers.filter((p) => !tried.has(p.peerId)), ...providers.filter((p) => tried.has(p.peerId) && p.peerId !== current.peer.peerId)]);
      // All of them failed: the ones that got the blob since the first lookup (or whose records
      // had not arrived) may take over. A long transfer outlives the answer it started from.
      while (!('peer' in next) && next.final !== 'range' && budget.attempts > 0 && report.relookups.found + report.relookups.none < MAX_RELOOKUPS && !sender.cancelled) {
        const failed = new Set(report.failedPeers);
        const fresh = (await askForProviders(port, [...failed])).filter((p) => !failed.has(p.peerId));
        if (fresh.length === 0) {
          report.relookups.none++;
          break;
        }
        report.relookups.found++;
        for (const p of fresh) if (!providers.some((q) => q.peerId === p.peerId)) providers.push(p);
        next = await resume(fresh);
      }
      if (sender.cancelled) {
        report.bytes = sender.sent;
        return report;
      }
      if (!('peer' in next)) {
        await sender.flush();
        post({ type: 'error', missing: false, error: `peer ${current.peer.peerId} broke (${error}) and no other could resume: ${next.error}` });
        report.bytes = sender.sent;
        return report;
      }
      tried.add(next.peer.peerId);
      current = { peer: next.peer, res: next.value };
    }
    if (hash && open.status === 200) {
      const actual = 'sha256:' + hash.digest('hex');
      if (actual !== task.digest) {
        // The last byte is still held back: the client gets a cut transfer, not a wrong blob.
        for (const p of servedBy) report.failedPeers.push(p);
        post({ type: 'error', missing: false, error: `peers ${[...servedBy].join(', ')} served bytes hashing to ${actual}, not ${task.digest}` });
        report.bytes = sender.sent;
        return report;
      }
    }
    if (await sender.flush()) post({ type: 'end' });
    report.bytes = sender.sent;
    return report;
  } catch (err) {
    post({ type: 'error', missing: false, error: err instanceof Error ? err.message : String(err) });
    report.bytes = sender.sent;
    return report;
  } finally {
    port.close();
  }
}

/** Fetches a manifest (by digest or tag) and checks that its bytes hash to the digest. */
export async function fetchManifest(task: PeerManifestTask): Promise<PeerManifestResult> {
  const started = performance.now();
  const report: PeerFetchReport = { bytes: 0, hedges: 0, resumes: 0, relookups: { found: 0, none: 0 }, failedPeers: [] };
  const budget = { attempts: task.maxAttempts };
  const r = await hedge(
    task.providers,
    task,
    budget,
    report,
    async (peer, signal) => {
      const res = await get(peer, task.path, {}, signal, task.stallMs);
      if (res.status !== 200) {
        res.discard();
        throw new PeerAnswerError(peer, `answered ${res.status}`);
      }
      const mediaType = (res.headers.get('content-type') ?? '').split(';')[0]!.trim();
      if (!isManifestMediaType(mediaType)) {
        res.discard();
        throw new PeerAnswerError(peer, `answered media type "${mediaType}" for a manifest`);
      }
      const claimed = res.headers.get('docker-content-digest');
      let body: Buffer;
      try {
        body = await res.readAll(MAX_MANIFEST_BYTES);
      } catch (err) {
        throw new PeerAnswerError(peer, err instanceof Error ? err.message : String(err));
      }
      // Hashing is right here: these bytes did not come from our store, and a tag's answer is trusted
      // by containerd (HEAD gives it the digest to pull), so a lying peer must be caught now.
      const actual = ('sha256:' + createHash('sha256').update(body).digest('hex')) as Digest;
      const expected = task.digest ?? (claimed && isDigest(claimed) ? claimed : undefined);
      if (!expected) throw new PeerAnswerError(peer, 'no Docker-Content-Digest for a tag');
      if (actual !== expected) throw new PeerAnswerError(peer, `manifest hashes to ${actual}, expected ${expected}`);
      return { body, mediaType, digest: actual };
    },
    () => undefined,
  );
  if (!('peer' in r)) return { ...report, ok: false, error: r.error };
  report.winner = r.peer.peerId;
  report.ttfbMs = performance.now() - started;
  report.bytes = r.value.body.length;
  const ab = r.value.body.buffer.slice(r.value.body.byteOffset, r.value.body.byteOffset + r.value.body.byteLength) as ArrayBuffer;
  return { ...report, ok: true, body: ab, mediaType: r.value.mediaType, digest: r.value.digest };
}

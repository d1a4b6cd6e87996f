// Writes a blob that a pool thread streams over a MessagePort into a uWS response.
// Backpressure is credit-based: the worker may have `credits` chunks in flight; the main thread
// returns one credit each time uWS accepted a whole chunk. A slow client therefore holds at most
// credits x chunkSize bytes of this process's memory, however large the blob.

import { MessageChannel, type MessagePort } from 'node:worker_threads';
import type { HttpResponse } from 'uWebSockets.js';
import type { PeerOpen, PeerTarget, StreamFromWorker, StreamToWorker } from '../../shared/messages.js';

export interface StreamOptions {
  /** Starts the pool task that feeds the worker end of the channel. */
  run(port: MessagePort): Promise<unknown>;
  /** Body length when known up front (local content); a peer announces it when it opens. */
  total?: number;
  /** Writes status and headers; called inside cork once the worker has opened the content. */
  writeHead(res: HttpResponse, peer?: PeerOpen): void;
  /** HEAD: writeHead ends the response; the body is not wanted and the source is cancelled. */
  headOnly?: boolean;
  /** The credits the source starts with: written chunks go back in batches of half of them. */
  credits?: number;
  /** A peer fetch ran out of providers mid-body: a fresh lookup without `exclude` (none: []). */
  moreProviders?(exclude: string[]): Promise<PeerTarget[]>;
}

export type StreamOutcome =
  | { kind: 'done'; bytes: number }
  /** Nothing was sent: the caller still owns the response and answers it (404 for `missing`). */
  | { kind: 'failed-before-headers'; missing: boolean; error: string; status?: 416 }
  /** Headers and part of the body were sent: the connection was closed, the client sees a short body. */
  | { kind: 'broken'; bytes: number; error: string }
  | { kind: 'aborted'; bytes: number };

export interface ActiveStream {
  readonly done: Promise<StreamOutcome>;
  /** Cuts the transfer (shutdown): closes the connection if it has not finished. */
  cut(): void;
}

/**
 * Starts streaming. The caller must already have registered `res.onAborted` and pass the
 * abort hook in `onAborted` registration: uWS allows one handler, so we take it over here.
 */
export function streamBlob(res: HttpResponse, opts: StreamOptions, abortHook: (fn: () => void) => void): ActiveStream {
  let total = opts.total ?? -1;
  const channel = new MessageChannel();
  const port = channel.port1;
  const queue: ArrayBuffer[] = [];
  /** The chunk uWS could not take whole, and the response offset where it began. */
  let stalled: { ab: ArrayBuffer; at: number } | null = null;
  let headersSent = false;
  let finished = false;
  let aborted = false;
  let written = 0;
  let resolve!: (o: StreamOutcome) => void;
  const done = new Promise<StreamOutcome>((r) => (resolve = r));

  const send = (m: StreamToWorker) => {
    try {
      port.postMessage(m);
    } catch {
      // Port already closed: the worker has finished.
    }
  };
  // A written chunk's buffer goes back to the worker with its credit, to be read into again: a
  // transfer allocates `credits` buffers once, not one zero-filled buffer per chunk for the GC.
  // They go back in batches of half the credits: each message wakes the pool thread, which mostly
  // still holds credit then. The source never starves for it: while it holds none, all its credits
  // are here, and fewer than a batch are written and held back, so some chunk is still queued, and
  // writing it (as fast as the client takes it) completes the batch.
  const batch = Math.max(1, Math.floor((opts.credits ?? 1) / 2));
  let back: ArrayBuffer[] = [];
  const giveBack = (ab: ArrayBuffer) => {
    back.push(ab);
    if (back.length < batch) return;
    const bufs = back;
    back = [];
    try {
      port.postMessage(bufs satisfies StreamToWorker, bufs);
    } catch {
      // Port already closed: the worker has finished.
    }
  };
  const finish = (o: StreamOutcome) => {
    if (finished) return;
    finished = true;
    if (o.kind !== 'done' || opts.headOnly) send({ type: 'cancel' });
    port.close();
    resolve(o);
  };

  abortHook(() => {
    aborted = true;
    finish({ kind: 'aborted', bytes: written });
  });

  // Writes queued chunks until uWS pushes back or the body is complete. Must run corked.
  const pump = () => {
    while (!finished && !stalled && queue.length > 0) {
      const ab = queue[0]!;
      const at = res.getWriteOffset();
      const [ok, responded] = res.tryEnd(ab, total);
      if (responded) {
        written = total;
        finish({ kind: 'done', bytes: total });
        return;
      }
      if (!ok) {
        stalled = { ab, at };
        return;
      }
      queue.shift();
      written += ab.byteLength;
      giveBack(ab);
    }
  };

  const onWritable = (offset: number): boolean => {
    if (!stalled || finished) return true;
    const { ab, at } = stalled;
    const [ok, responded] = res.tryEnd(new Uint8Array(ab, offset - at), total);
    if (responded) {
      written = total;
      finish({ kind: 'done', bytes: total });
      return true;
    }
    if (ok) {
      stalled = null;
      queue.shift();
      written += ab.byteLength;
      giveBack(ab);
      pump();
    }
    return ok;
  };

  port.on('message', (m: StreamFromWorker) => {
    if (finished) return;
    if (m instanceof ArrayBuffer) {
      queue.push(m);
      if (!stalled) res.cork(pump);
      return;
    }
    switch (m.type) {
      case 'open':
        if (m.peer) total = m.peer.end - m.peer.start;
        res.cork(() => {
          opts.writeHead(res, m.peer);
          headersSent = true;
          if (opts.headOnly) {
            finish({ kind: 'done', bytes: 0 });
          } else if (total === 0) {
            res.end();
            finish({ kind: 'done', bytes: 0 });
          }
        });
        // A finished uWS response must not be touched again.
        if (!finished) res.onWritable(onWritable);
        break;
      case 'end':
        // Every byte is queued; the last tryEnd completes the response.
        break;
      case 'providers':
        void (opts.moreProviders?.(m.exclude) ?? Promise.resolve([]))
          .catch(() => [])
          .then((providers) => {
            if (!finished) send({ type: 'providers', providers });
          });
        break;
      case 'error':
        if (!headersSent) finish({ kind: 'failed-before-headers', missing: m.missing, error: m.error, ...(m.status ? { status: m.status } : {}) });
        else {
          finish({ kind: 'broken', bytes: written, error: m.error });
          if (!aborted) res.close();
        }
        break;
    }
  });

  opts
    .run(channel.port2)
    .catch((err: unknown) => {
      // The pool itself failed (worker crashed, pool destroyed).
      if (finished) return;
      const error = err instanceof Error ? err.message : String(err);
      if (!headersSent) finish({ kind: 'failed-before-headers', missing: false, error });
      else {
        finish({ kind: 'broken', bytes: written, error });
        if (!aborted) res.close();
      }
    });

  return {
    done,
    cut() {
      if (finished) return;
      finish({ kind: 'broken', bytes: written, error: 'cut by shutdown' });
      if (!aborted) res.close();
    },
  };
}

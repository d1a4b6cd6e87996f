// The worker side of a transfer port: credit accounting and re-chunking. Every byte-moving task
// (local file, containerd gRPC, peer HTTP) sends chunks of exactly `chunkSize` bytes (the last may
// be shorter) and only while it holds credit, so memory per transfer is bounded by credits x chunkSize
// whatever the source's own chunking.

import type { MessagePort } from 'node:worker_threads';
import type { StreamFromWorker, StreamToWorker } from '../shared/messages.js';

/** Waits for credit; `take` resolves false once the transfer is cancelled or the port closes. */
export class Credit {
  private available: number;
  private cancelled = false;
  private wake: (() => void) | null = null;
  /** Chunk buffers the main thread gave back with credit. */
  private readonly free: ArrayBuffer[] = [];

  constructor(initial: number, port: MessagePort) {
    this.available = initial;
    port.on('message', (m: StreamToWorker) => {
      if (Array.isArray(m)) {
        this.available += m.length;
        this.free.push(...m);
      } else if (m.type === 'credit') this.available += m.n;
      else if (m.type === 'cancel') this.cancelled = true;
      this.wake?.();
    });
    port.on('close', () => {
      this.cancelled = true;
      this.wake?.();
    });
  }

  /** Takes one credit if there is one, without waiting. */
  tryTake(): boolean {
    if (this.cancelled || this.available <= 0) return false;
    this.available--;
    return true;
  }

  async take(): Promise<boolean> {
    while (!this.cancelled && this.available <= 0) {
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = null;
    }
    if (this.cancelled) return false;
    this.available--;
    return true;
  }

  /** A buffer of exactly `size` bytes to fill: a returned one when it fits, else a new one that is not zero-filled. */
  buffer(size: number): Uint8Array<ArrayBuffer> {
    const back = this.free.pop();
    // allocUnsafeSlow: an unpooled buffer of exactly `size` bytes (transferable), not zero-filled.
    return back && back.byteLength === size ? new Uint8Array(back) : new Uint8Array(Buffer.allocUnsafeSlow(size).buffer as ArrayBuffer);
  }

  get isCancelled(): boolean {
    return this.cancelled;
  }
}

/**
 * Cuts a byte stream into `chunkSize` chunks and posts each full one as a transfer, while it holds
 * credit. Bytes come in two ways: push() copies a piece (the caller may reuse its buffer at once),
 * or a reader fills space() in place and commit()s it: a socket reads straight into the chunk that
 * is then transferred, so those bytes are never copied in user space.
 * A chunk being filled (the last space() handed out) is never posted before it is full, and a new
 * one is taken as soon as it is, so a region handed to a reader is never detached under it.
 */
export class ChunkSender {
  private current: Uint8Array | null = null;
  private filled = 0;
  /** Full chunks waiting for credit (with holdBack, the last one also waits for more bytes). */
  private readonly ready: Uint8Array[] = [];
  /** Bytes posted to main so far. */
  sent = 0;
  private accepted_ = 0;

  /**
   * `holdBack`: a full chunk is posted only once more bytes follow it, so the body's last byte stays
   * here until flush(): a caller that verifies the whole body (a digest) can still refuse it.
   */
  constructor(
    private readonly port: MessagePort,
    private readonly credit: Credit,
    private readonly chunkSize: number,
    private readonly holdBack = false,
  ) {}

  /** Bytes accepted by push() and commit() so far, posted or not. */
  get accepted(): number {
    return this.accepted_;
  }

  get cancelled(): boolean {
    return this.credit.isCancelled;
  }

  /** Where up to `max` (> 0) next bytes may be written in place, then commit()ted. */
  space(max: number): Uint8Array {
    if (!this.current) {
      this.current = this.credit.buffer(this.chunkSize);
      this.filled = 0;
    }
    return this.current.subarray(this.filled, this.filled + Math.min(max, this.chunkSize - this.filled));
  }

  /**
   * `n` bytes were written at the start of the last space(). Returns like push(): true to go on,
   * false when cancelled, or a promise (of the same) while full chunks wait for credit.
   */
  commit(n: number): boolean | Promise<boolean> {
    if (this.credit.isCancelled) return false;
    if (!this.current || this.filled + n > this.chunkSize) throw new Error(`commit of ${n} bytes past the chunk (${this.filled} of ${this.chunkSize} filled)`);
    this.filled += n;
    this.accepted_ += n;
    if (this.filled === this.chunkSize) {
      this.ready.push(this.current);
      this.current = null;
    }
    return this.settle();
  }

  /**
   * Copies a piece in. Returns true when the caller may go on at once, false when cancelled, or a
   * promise (of the same) when chunks wait for credit: the caller should stop reading until it settles.
   */
  push(piece: Uint8Array): boolean | Promise<boolean> {
    if (this.credit.isCancelled) return false;
    let off = 0;
    while (off < piece.length) {
      const room = this.space(piece.length - off);
      room.set(off === 0 && room.length === piece.length ? piece : piece.subarray(off, off + room.length));
      off += room.length;
      this.filled += room.length;
      if (this.filled === this.chunkSize) {
        this.ready.push(this.current!);
        this.current = null;
      }
    }
    this.accepted_ += piece.length;
    return this.settle();
  }

  /** Posts everything left, waiting for credit; false when cancelled. */
  async flush(): Promise<boolean> {
    if (this.current && this.filled > 0) {
      // A short last chunk is a view: post a copy of exactly its size, so the buffer a reader may
      // still point into is never the one transferred.
      this.ready.push(this.current.slice(0, this.filled));
      this.current = null;
    }
    return this.drain(true);
  }

  /** How many ready chunks may go now: with holdBack, the newest full one waits until bytes follow it. */
  private postable(final: boolean): number {
    return this.holdBack && !final && !(this.current && this.filled > 0) ? this.ready.length - 1 : this.ready.length;
  }

  private settle(): boolean | Promise<boolean> {
    while (this.postable(false) > 0 && this.credit.tryTake()) this.post(this.ready.shift()!);
    if (this.postable(false) <= 0) return true;
    return this.drain(false);
  }

  private async drain(final: boolean): Promise<boolean> {
    while (this.postable(final) > 0) {
      if (!(await this.credit.take())) return false;
      this.post(this.ready.shift()!);
    }
    return !this.credit.isCancelled;
  }

  private post(chunk: Uint8Array): void {
    // Every chunk is a whole buffer here (full ones, or flush()'s copy of a short last one).
    const n = chunk.byteLength; // read before the transfer detaches the buffer
    const ab = chunk.buffer as ArrayBuffer;
    this.port.postMessage(ab satisfies StreamFromWorker, [ab]);
    this.sent += n;
  }
}

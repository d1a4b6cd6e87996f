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
      if (m.type === 'credit') {
        this.available += m.n;
        if (m.buf) this.free.push(m.buf);
      }
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
 * Copies pieces of any size into fresh `chunkSize` buffers and posts each full one as a transfer.
 * The piece is copied during push(), so callers may reuse their buffer (a socket's read buffer)
 * as soon as push() returns, even when it returns a promise.
 */
export class ChunkSender {
  private current: Uint8Array | null = null;
  private filled = 0;
  /** Full chunks waiting for credit. */
  private readonly ready: Uint8Array[] = [];
  /** Bytes posted to main so far. */
  sent = 0;
  private copied = 0;

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

  /** Bytes accepted by push() so far, posted or not. */
  get accepted(): number {
    return this.copied;
  }

  get cancelled(): boolean {
    return this.credit.isCancelled;
  }

  /**
   * Copies a piece in. Returns true when the caller may go on at once, false when cancelled, or a
   * promise (of the same) when chunks wait for credit: the caller should stop reading until it settles.
   */
  push(piece: Uint8Array): boolean | Promise<boolean> {
    if (this.credit.isCancelled) return false;
    let off = 0;
    while (off < piece.length) {
      if (this.current && this.filled === this.chunkSize) {
        this.ready.push(this.current);
        this.current = null;
      }
      if (!this.current) {
        this.current = this.credit.buffer(this.chunkSize);
        this.filled = 0;
      }
      const n = Math.min(piece.length - off, this.chunkSize - this.filled);
      this.current.set(n === piece.length && off === 0 ? piece : piece.subarray(off, off + n), this.filled);
      this.filled += n;
      off += n;
    }
    this.copied += piece.length;
    if (!this.holdBack && this.current && this.filled === this.chunkSize) {
      this.ready.push(this.current);
      this.current = null;
    }
    this.postReady();
    if (this.ready.length === 0) return true;
    return this.drain();
  }

  /** Posts everything left, waiting for credit; false when cancelled. */
  async flush(): Promise<boolean> {
    if (this.current && this.filled > 0) {
      this.ready.push(this.filled === this.chunkSize ? this.current : this.current.subarray(0, this.filled));
      this.current = null;
    }
    return this.drain();
  }

  private postReady(): void {
    while (this.ready.length > 0 && this.credit.tryTake()) this.post(this.ready.shift()!);
  }

  private async drain(): Promise<boolean> {
    while (this.ready.length > 0) {
      if (!(await this.credit.take())) return false;
      this.post(this.ready.shift()!);
    }
    return !this.credit.isCancelled;
  }

  private post(chunk: Uint8Array): void {
    // A short last chunk is a view: transfer a buffer of exactly its size.
    const n = chunk.byteLength; // read before the transfer detaches the buffer
    const ab = n === chunk.buffer.byteLength ? (chunk.buffer as ArrayBuffer) : chunk.slice().buffer;
    this.port.postMessage({ type: 'chunk', data: ab } satisfies StreamFromWorker, [ab]);
    this.sent += n;
  }
}

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

  constructor(initial: number, port: MessagePort) {
    this.available = initial;
    port.on('message', (m: StreamToWorker) => {
      if (m.type === 'credit') this.available += m.n;
      else if (m.type === 'cancel') this.cancelled = true;
      this.wake?.();
    });
    port.on('close', () => {
      this.cancelled = true;
      this.wake?.();
    });
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

  get isCancelled(): boolean {
    return this.cancelled;
  }
}

/**
 * Collects pieces of any size and posts them as transferred chunks of `chunkSize`.
 * Pieces are copied once into fresh buffers: a source's buffers may share memory (socket reads,
 * Buffer pools) and must never be detached by a transfer.
 */
export class ChunkSender {
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  /** Bytes posted to main so far. */
  sent = 0;

  /**
   * `holdBack`: keep at least one byte unsent until flush(), so a caller that verifies the whole
   * body (a digest) can still refuse to complete it.
   */
  constructor(
    private readonly port: MessagePort,
    private readonly credit: Credit,
    private readonly chunkSize: number,
    private readonly holdBack = false,
  ) {}

  /** Queues a piece and posts every full chunk; false when the transfer was cancelled. */
  async push(piece: Uint8Array): Promise<boolean> {
    if (piece.length === 0) return !this.credit.isCancelled;
    this.pending.push(piece);
    this.pendingBytes += piece.length;
    return this.drain(false);
  }

  /** Posts what is left (a short last chunk); false when cancelled. */
  flush(): Promise<boolean> {
    return this.drain(true);
  }

  /** Bytes accepted by push() so far, posted or not. */
  get accepted(): number {
    return this.sent + this.pendingBytes;
  }

  private async drain(all: boolean): Promise<boolean> {
    const keep = this.holdBack && !all ? 1 : 0;
    while (this.pendingBytes - keep >= this.chunkSize || (all && this.pendingBytes > 0)) {
      if (!(await this.credit.take())) return false;
      const n = Math.min(this.chunkSize, this.pendingBytes);
      const out = new Uint8Array(new ArrayBuffer(n));
      let filled = 0;
      while (filled < n) {
        const head = this.pending[0]!;
        const take = Math.min(head.length, n - filled);
        out.set(head.subarray(0, take), filled);
        filled += take;
        if (take === head.length) this.pending.shift();
        else this.pending[0] = head.subarray(take);
      }
      this.pendingBytes -= n;
      this.port.postMessage({ type: 'chunk', data: out.buffer } satisfies StreamFromWorker, [out.buffer]);
      this.sent += n;
    }
    return !this.credit.isCancelled;
  }
}

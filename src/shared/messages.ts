// Messages that cross thread boundaries. Both sides import these types, so a change
// to the protocol is a compile error on whichever side forgot it.

import type { MessagePort } from 'node:worker_threads';
import type { Digest } from './oci.js';

/** Where a worker reads a blob's bytes from. */
export type BlobLocation =
  | { kind: 'file'; path: string }
  | { kind: 'containerd'; socket: string; namespace: string; digest: Digest };

/** Task for the `readBlob` pool task: stream bytes [start, end) of a blob over `port`. */
export interface ReadBlobTask {
  location: BlobLocation;
  /** Expected total size: a file of another size is treated as missing (torn or replaced). */
  size: number;
  start: number;
  /** Exclusive. */
  end: number;
  chunkSize: number;
  /** Chunks the worker may send before it must wait for more credit. */
  credits: number;
  port: MessagePort;
}

/** Task for the `readSmall` pool task: read a whole (small) blob into memory. */
export interface ReadSmallTask {
  location: BlobLocation;
  size: number;
}

export type ReadSmallResult = { ok: true; bytes: ArrayBuffer } | { ok: false; missing: boolean; error: string };

/** Worker -> main, on the transfer port. */
export type StreamFromWorker =
  /** The source is open and has the expected size; headers can be sent now. */
  | { type: 'open' }
  | { type: 'chunk'; data: ArrayBuffer }
  | { type: 'end' }
  /** `missing`: the content is gone (GC), which becomes a 404 if nothing was sent yet. */
  | { type: 'error'; missing: boolean; error: string };

/** Main -> worker, on the transfer port. */
export type StreamToWorker = { type: 'credit'; n: number } | { type: 'cancel' };

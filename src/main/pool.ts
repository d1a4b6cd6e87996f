// The Piscina pool that moves blob bytes. Tasks are I/O-bound and long-lived (a slow client holds
// its transfer open for minutes), so each thread runs many tasks at once on its own event loop
// instead of one task per thread.

import { Piscina } from 'piscina';
import type { PeerBlobTask, PeerFetchReport, PeerManifestResult, PeerManifestTask, ReadBlobTask, ReadSmallResult, ReadSmallTask } from '../shared/messages.js';

export interface BlobPool {
  readBlob(task: ReadBlobTask): Promise<number>;
  readSmall(task: ReadSmallTask): Promise<ReadSmallResult>;
  fetchBlob(task: PeerBlobTask): Promise<PeerFetchReport>;
  fetchManifest(task: PeerManifestTask): Promise<PeerManifestResult>;
  readonly threads: number;
  destroy(): Promise<void>;
}

export function createPool(threads: number): BlobPool {
  const pool = new Piscina({
    filename: new URL('../workers/index.js', import.meta.url).href,
    minThreads: threads,
    maxThreads: threads,
    // Tasks await I/O and credit; blocking the worker's loop between tasks (Atomics.wait) would starve them.
    atomics: 'disabled',
    concurrentTasksPerWorker: 256,
    idleTimeout: 60_000,
  });
  return {
    threads,
    readBlob: (task) => pool.run(task, { name: 'readBlob', transferList: [task.port] }),
    readSmall: (task) => pool.run(task, { name: 'readSmall' }),
    fetchBlob: (task) => pool.run(task, { name: 'fetchBlob', transferList: [task.port] }),
    fetchManifest: (task) => pool.run(task, { name: 'fetchManifest' }),
    destroy: () => pool.destroy(),
  };
}

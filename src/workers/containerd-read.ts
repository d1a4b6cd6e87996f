// Reads blob bytes through containerd's gRPC Content.Read: the fallback when the content store
// files are not readable by this process. Imported by pool threads, so it keeps no main-thread
// state; each thread caches one client per socket and namespace (the clients share a connection).

import { ContainerdClient } from '../main/containerd/client.js';
import type { Digest } from '../shared/oci.js';

const clients = new Map<string, Promise<ContainerdClient>>();

function clientFor(socket: string, namespace: string): Promise<ContainerdClient> {
  const key = `${socket}\0${namespace}`;
  let c = clients.get(key);
  if (!c) {
    c = ContainerdClient.create(socket, namespace);
    // A failed creation (e.g. proto files missing) must be retried, not cached.
    c.catch(() => clients.delete(key));
    clients.set(key, c);
  }
  return c;
}

/**
 * Yields bytes [offset, end) of a blob as Uint8Array chunks (containerd sends up to 1 MiB each).
 * Errors carry the gRPC status `code`: 5 (NotFound) means the blob is gone (garbage collected).
 * A blob shorter than `end` is an error, never a silently short body. Breaking out of the loop
 * cancels the gRPC call.
 */
export async function* readContent(socket: string, namespace: string, digest: Digest, offset: number, end: number): AsyncGenerator<Uint8Array> {
  const client = await clientFor(socket, namespace);
  yield* client.read(digest, offset, end);
}

// Withdrawal of provider records. Kademlia has no "remove provider" message: a record stays on
// the record holders until it expires. peerpull adds a tiny protocol for it,
// `/peerpull/<cluster>/withdraw/1.0.0`: the sender writes the CIDs it no longer provides (one
// per line, base32) and closes; the receiver deletes the sender's records for them. Only the
// sender's own records can be removed: the remote peer id comes from the noise handshake.

import type { Connection, PeerId, Stream } from '@libp2p/interface';
import { CID } from 'multiformats/cid';

export const MAX_WITHDRAW_BYTES = 1 << 20;

export function withdrawProtocol(cluster: string): string {
  return `/peerpull/${cluster}/withdraw/1.0.0`;
}

export function encodeWithdraw(cids: CID[]): Uint8Array {
  return new TextEncoder().encode(cids.map((c) => c.toString()).join('\n'));
}

/** Parses a withdraw message; bad lines are skipped and counted, never thrown. */
export function decodeWithdraw(bytes: Uint8Array): { cids: CID[]; bad: number } {
  const cids: CID[] = [];
  let bad = 0;
  for (const line of new TextDecoder().decode(bytes).split('\n')) {
    if (!line) continue;
    try {
      cids.push(CID.parse(line));
    } catch {
      bad++;
    }
  }
  return { cids, bad };
}

/** Reads a whole (bounded) inbound message. */
export async function readAll(stream: Stream, limit = MAX_WITHDRAW_BYTES): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const chunk of stream) {
    const b = chunk instanceof Uint8Array ? chunk : chunk.subarray();
    n += b.byteLength;
    if (n > limit) throw new Error(`withdraw message larger than ${limit} bytes`);
    parts.push(b);
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
}

export type WithdrawHandler = (from: PeerId, cids: CID[], bad: number) => Promise<void>;

export function handleWithdrawStream(onWithdraw: WithdrawHandler, onError: (err: Error, from: PeerId) => void) {
  return async (stream: Stream, connection: Connection): Promise<void> => {
    try {
      const bytes = await readAll(stream);
      const { cids, bad } = decodeWithdraw(bytes);
      await onWithdraw(connection.remotePeer, cids, bad);
      await stream.close();
    } catch (err) {
      onError(err as Error, connection.remotePeer);
      stream.abort(err as Error);
    }
  };
}

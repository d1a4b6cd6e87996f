// Provider records pushed in batches, peerpull's two small protocols beside Kademlia:
//
// - `/peerpull/<cluster>/provide/1.0.0`: "I provide these CIDs". kad-dht provides one key per
//   query (find the k closest peers, then one ADD_PROVIDER message each): a node with 1,000
//   keys runs 1,000 queries. When the routing table already knows the closest peers, one
//   message per peer carries all of that peer's keys instead.
// - `/peerpull/<cluster>/withdraw/1.0.0`: "I no longer provide these CIDs". Kademlia has no
//   such message; records would stay until they expire.
//
// Both: the sender writes the CIDs (one per line, base32) and closes its side; the receiver
// applies them to the sender's own records (the peer id comes from the noise handshake, so
// nobody can add or remove records for another node), answers `ok <n>` and closes.

import type { Connection, PeerId, Stream } from '@libp2p/interface';
import { CID } from 'multiformats/cid';

/** Largest message accepted: about 17,000 CIDs. Senders split longer lists. */
export const MAX_RECORDS_BYTES = 1 << 20;
/** CIDs per message a sender puts in one batch (well under MAX_RECORDS_BYTES). */
export const MAX_BATCH = 4096;

export function provideProtocol(cluster: string): string {
  return `/peerpull/${cluster}/provide/1.0.0`;
}

export function withdrawProtocol(cluster: string): string {
  return `/peerpull/${cluster}/withdraw/1.0.0`;
}

export function encodeCids(cids: CID[]): Uint8Array {
  return new TextEncoder().encode(cids.map((c) => c.toString()).join('\n'));
}

/** Parses a batch; bad lines are skipped and counted, never thrown. */
export function decodeCids(bytes: Uint8Array): { cids: CID[]; bad: number } {
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
export async function readAll(stream: Stream, limit = MAX_RECORDS_BYTES): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const chunk of stream) {
    const b = chunk instanceof Uint8Array ? chunk : chunk.subarray();
    n += b.byteLength;
    if (n > limit) throw new Error(`record batch larger than ${limit} bytes`);
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

export type RecordsHandler = (from: PeerId, cids: CID[], bad: number) => Promise<void>;

/** Serves one of the two protocols: apply the batch, acknowledge it, close. */
export function handleRecordsStream(onBatch: RecordsHandler, onError: (err: Error, from: PeerId) => void) {
  return async (stream: Stream, connection: Connection): Promise<void> => {
    try {
      const bytes = await readAll(stream);
      const { cids, bad } = decodeCids(bytes);
      await onBatch(connection.remotePeer, cids, bad);
      stream.send(new TextEncoder().encode(`ok ${cids.length}`));
      await stream.close();
    } catch (err) {
      onError(err as Error, connection.remotePeer);
      stream.abort(err as Error);
    }
  };
}

/** Sends one batch and waits for the receiver's acknowledgement. */
export async function sendRecords(stream: Stream, cids: CID[], signal: AbortSignal): Promise<void> {
  stream.send(encodeCids(cids));
  await stream.close({ signal });
  const ack = new TextDecoder().decode(await readAll(stream, 64));
  if (ack !== `ok ${cids.length}`) throw new Error(`unexpected acknowledgement ${JSON.stringify(ack.slice(0, 40))} for ${cids.length} records`);
}

// Content keys (digests and `registry/repo:tag` strings) become DHT keys: CIDv1 with the raw
// codec and a sha2-256 multihash of the key string. Hashing the string (not decoding the
// digest) treats digests and tags alike and keeps the mapping one line everyone can recompute.
// Both threads use it: the p2p thread for the DHT, main to find a key in its copy of the
// provider store (keyed by the hash in hex, see src/p2p/store-feed.ts).

import { createHash } from 'node:crypto';
import { CID } from 'multiformats/cid';
import * as raw from 'multiformats/codecs/raw';
import * as Digest from 'multiformats/hashes/digest';

const SHA2_256 = 0x12;
/** Longest key accepted: tags are `registry/repo:tag` (<= 255 + 128 + host); digests are 71. */
export const MAX_KEY_LENGTH = 1024;

/** The sha-256 of a content key in hex: the key's DHT id without the CID around it. */
export function keyHashHex(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** The sha-256 hex inside a provider record's multihash, or undefined if it is not sha2-256. */
export function multihashToKeyHashHex(mh: Uint8Array): string | undefined {
  if (mh.length !== 34 || mh[0] !== SHA2_256 || mh[1] !== 32) return undefined;
  return Buffer.from(mh.buffer, mh.byteOffset + 2, 32).toString('hex');
}

export function keyToCid(key: string): CID {
  const hash = createHash('sha256').update(key, 'utf8').digest();
  return CID.createV1(raw.code, Digest.create(SHA2_256, new Uint8Array(hash.buffer, hash.byteOffset, hash.byteLength)));
}

/** The DHT key (as keyToCid makes it) around a multihash that came over the wire; throws if malformed. */
export function multihashToCid(mh: Uint8Array): CID {
  return CID.createV1(raw.code, Digest.decode(mh));
}

// Content keys (digests and `registry/repo:tag` strings) become DHT keys: CIDv1 with the raw
// codec and a sha2-256 multihash of the key string. Hashing the string (not decoding the
// digest) treats digests and tags alike and keeps the mapping one line everyone can recompute.

import { createHash } from 'node:crypto';
import { CID } from 'multiformats/cid';
import * as raw from 'multiformats/codecs/raw';
import * as Digest from 'multiformats/hashes/digest';

const SHA2_256 = 0x12;
/** Longest key accepted: tags are `registry/repo:tag` (<= 255 + 128 + host); digests are 71. */
export const MAX_KEY_LENGTH = 1024;

export function keyToCid(key: string): CID {
  const hash = createHash('sha256').update(key, 'utf8').digest();
  return CID.createV1(raw.code, Digest.create(SHA2_256, new Uint8Array(hash.buffer, hash.byteOffset, hash.byteLength)));
}

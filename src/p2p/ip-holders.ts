// Which IPs of the DNS answer hold a key's records: the ones whose Kademlia position (sha2-256
// of the address text) is nearest the key's, by XOR. Every node computes them alike from the
// same answer, so providers and askers agree without sharing a view of peer ids.
//
// A scan of the whole answer per key costs O(N), and it is paid per lookup, per record pushed,
// and twice per advertised key whenever the answer changes (ipRehome): a node advertising 2,000
// blobs in a 1,000-node cluster scanned 4 million entries on its p2p thread at every change of
// membership, while lookups waited behind it. The index sorts the positions once per answer and
// walks them as a binary trie: the entries sharing the longest prefix with the key come first.

import { createHash } from 'node:crypto';

/** A position in Kademlia's key space, as kad-dht computes it: sha2-256 of the key bytes. */
export function kadIdOf(bytes: Uint8Array): Uint8Array {
  return createHash('sha256').update(bytes).digest();
}

/** Positions of IPs seen, shared by the nodes of a process (the scale harness runs hundreds). */
const positions = new Map<string, Uint8Array>();

/** An IP's position in Kademlia's key space: sha2-256 of its text, hashed once and kept. */
export function ipPosition(ip: string): Uint8Array {
  let k = positions.get(ip);
  if (!k) {
    // Bounded: pod IPs come and go over a cluster's life, and 16 names hold at most ~65,000.
    if (positions.size >= 100_000) positions.clear();
    positions.set(ip, (k = kadIdOf(Buffer.from(ip))));
  }
  return k;
}

/** Negative when `a` is closer to `target` than `b` (XOR metric), positive when farther. */
export function compareDistance(a: Uint8Array, b: Uint8Array, target: Uint8Array): number {
  for (let i = 0; i < target.length; i++) {
    const d = (a[i] ^ target[i]) - (b[i] ^ target[i]);
    if (d !== 0) return d;
  }
  return 0;
}

/**
 * The `count` IPs of `answer` nearest `target`, nearest first, by a scan of the whole answer.
 * The reference the index is tested against, and the cheaper choice for a handful of keys.
 */
export function nearestIps(target: Uint8Array, answer: readonly string[], count: number, kadOf: (ip: string) => Uint8Array = ipPosition): string[] {
  // By insertion into a short sorted list: no sort of the whole answer per key.
  const best: Array<{ ip: string; k: Uint8Array }> = [];
  for (const ip of answer) {
    const k = kadOf(ip);
    if (best.length === count && compareDistance(k, best[count - 1].k, target) >= 0) continue;
    let i = best.length;
    while (i > 0 && compareDistance(k, best[i - 1].k, target) < 0) i--;
    best.splice(i, 0, { ip, k });
    if (best.length > count) best.pop();
  }
  return best.map((b) => b.ip);
}

/** Room for the index beside a 32-bit prefix in one double (2^20 IPs; 16 names of ~4,090 are 65,440). */
const INDEX_SPAN = 2 ** 20;

/** Ranges this small are ordered by distance directly instead of split further. */
const LEAF = 8;

function bitAt(id: Uint8Array, bit: number): number {
  return (id[bit >> 3] >> (7 - (bit & 7))) & 1;
}

/** The IPs of one DNS answer, sorted by Kademlia position, for nearest-first queries. */
export class IpHolderIndex {
  static readonly empty = new IpHolderIndex([]);

  private ids: Uint8Array[] = [];
  private ips: string[] = [];
  private sorted = false;
  /** The answer it indexes. */
  readonly answer: readonly string[];

  /** Sorts on first use: a node that neither looks up nor advertises between two answers never does. */
  constructor(
    answer: readonly string[],
    private readonly kadOf: (ip: string) => Uint8Array = ipPosition,
  ) {
    this.answer = answer;
  }

  get size(): number {
    return this.answer.length;
  }

  private sort(): void {
    const ids = this.answer.map((ip) => this.kadOf(ip));
    // By the first four bytes and the index packed into one number, sorted natively: a comparator
    // per pair made the sort of 1,000 positions cost eight scans of the answer. Equal first bytes
    // (about 1 in 10,000 answers of 1,000) are put in order by the whole id afterwards.
    const packed = new Float64Array(ids.length);
    ids.forEach((id, i) => (packed[i] = (((id[0] << 24) | (id[1] << 16) | (id[2] << 8) | id[3]) >>> 0) * INDEX_SPAN + i));
    packed.sort();
    const order = Array.from(packed, (v) => v % INDEX_SPAN);
    for (let i = 1; i < order.length; i++) {
      for (let j = i; j > 0 && Math.floor(packed[j] / INDEX_SPAN) === Math.floor(packed[j - 1] / INDEX_SPAN) && Buffer.compare(ids[order[j - 1]], ids[order[j]]) > 0; j--) {
        [order[j - 1], order[j]] = [order[j], order[j - 1]];
      }
    }
    this.ids = order.map((i) => ids[i]);
    this.ips = order.map((i) => this.answer[i]);
    this.sorted = true;
  }

  /** The `count` IPs nearest `target`, nearest first, passing over those `skip` rejects. */
  nearest(target: Uint8Array, count: number, skip?: (ip: string) => boolean): string[] {
    const out: string[] = [];
    if (count <= 0 || this.answer.length === 0) return out;
    if (!this.sorted) this.sort();
    this.walk(0, this.ids.length, 0, target, count, skip, out);
    return out;
  }

  /**
   * Appends the entries of [lo, hi), which share their first `depth` bits, in order of distance
   * to `target`. Within such a range the half whose next bit equals the target's is nearer than
   * the other half, whatever follows; returns true once `out` holds `count`.
   */
  private walk(lo: number, hi: number, depth: number, target: Uint8Array, count: number, skip: ((ip: string) => boolean) | undefined, out: string[]): boolean {
    if (hi - lo <= LEAF || depth >= target.length * 8) {
      const order = Array.from({ length: hi - lo }, (_, i) => lo + i).sort((a, b) => compareDistance(this.ids[a], this.ids[b], target));
      for (const i of order) {
        if (skip?.(this.ips[i])) continue;
        out.push(this.ips[i]);
        if (out.length >= count) return true;
      }
      return false;
    }
    // Sorted and sharing `depth` bits: the entries with bit `depth` clear come first.
    let a = lo;
    let b = hi;
    while (a < b) {
      const m = (a + b) >>> 1;
      if (bitAt(this.ids[m], depth) === 0) a = m + 1;
      else b = m;
    }
    const split = a;
    const [near, far] = bitAt(target, depth) === 0 ? [[lo, split], [split, hi]] : [[split, hi], [lo, split]];
    if (near[1] > near[0] && this.walk(near[0], near[1], depth + 1, target, count, skip, out)) return true;
    return far[1] > far[0] && this.walk(far[0], far[1], depth + 1, target, count, skip, out);
  }
}

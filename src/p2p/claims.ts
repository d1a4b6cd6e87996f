// Downloads in flight, shared with no central part.
//
// When every node asks for a blob nobody holds yet (a pull storm), each would go upstream. The
// key's first IP holder (node.ts ipHolders: every node computes the same one from the same DNS
// answer) serialises those misses instead: the first node to ask is told "go" and is recorded as
// fetching the key; every later asker, until the claim expires, is told where the download runs
// and streams it from that node's ingest as it grows.
//
// Only a node told "go" is ever named as fetching, and a node goes upstream whenever any holder
// told it "go", so an asker is never sent to a node that is itself waiting: no cycles, even when
// two nodes' views of the DNS answer differ and they ask different holders.

export interface Claimant {
  id: string;
  addrs: string[];
}

export type ClaimAnswer = { go: true } | { go: false; at: Claimant };

interface Claim {
  who: Claimant;
  expires: number;
}

/** How long a claim names its node: long enough to start a download, short enough that a failed one is soon forgotten. */
export const CLAIM_TTL_MS = 20_000;
/** Claims one holder keeps at most (a storm is a handful of blobs per image; this is a safety cap). */
const MAX_CLAIMS = 50_000;

export class FetchClaims {
  private readonly claims = new Map<string, Claim>();
  readonly counters = { granted: 0, joined: 0, released: 0 };

  constructor(
    private readonly ttlMs = CLAIM_TTL_MS,
    private readonly now: () => number = Date.now,
  ) {}

  /** A node asks for `key`, which nobody provides: it fetches it, or learns who already does. */
  ask(key: string, who: Claimant): ClaimAnswer {
    const t = this.now();
    const c = this.claims.get(key);
    if (c && c.expires > t && c.who.id !== who.id) {
      this.counters.joined++;
      return { go: false, at: c.who };
    }
    if (!c && this.claims.size >= MAX_CLAIMS) this.sweep(t);
    // A repeated ask by the claimant (a retry) renews its own claim.
    this.claims.delete(key);
    this.claims.set(key, { who, expires: t + this.ttlMs });
    this.counters.granted++;
    return { go: true };
  }

  /** The claimant could not fetch after all (or has the content now): later askers go upstream or find its record. */
  release(key: string, id: string): boolean {
    const c = this.claims.get(key);
    if (!c || c.who.id !== id) return false;
    this.claims.delete(key);
    this.counters.released++;
    return true;
  }

  /** A node died: its downloads went with it. */
  forgetPeer(id: string): void {
    for (const [k, c] of this.claims) if (c.who.id === id) this.claims.delete(k);
  }

  get size(): number {
    return this.claims.size;
  }

  private sweep(t: number): void {
    for (const [k, c] of this.claims) if (c.expires <= t) this.claims.delete(k);
    // Still full: drop the oldest tenth (Map keeps insertion order).
    let n = this.claims.size >= MAX_CLAIMS ? Math.ceil(MAX_CLAIMS / 10) : 0;
    for (const k of this.claims.keys()) {
      if (n-- <= 0) break;
      this.claims.delete(k);
    }
  }
}

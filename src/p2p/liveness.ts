// Which peers are alive, so lookups never hand the registry a provider that is gone.
//
// Provider records live on other nodes for PROVIDER_TTL and cannot be recalled when a node
// dies. Instead of short TTLs (keys x nodes of republish traffic), every node filters the
// providers it returns by what it knows for free: a live connection means alive; a lost
// connection that cannot be re-dialled, a failed dial, a fetch the registry reported failing,
// or an IP that left the headless Service's DNS answer means dead. Unknown peers pass (and get
// probed), so a big cluster where not everyone is connected still finds them.
//
// DNS answers can be partial. Measured with dnsmasq 2.90 and Node 22's resolver (c-ares): past
// 512 bytes (~28 A records) the UDP answer is truncated and c-ares retries over TCP, which
// carries the whole answer, but one DNS message holds at most 64 KiB: past 4,094 A records the
// TCP answer is cut silently (no error) and dnsmasq rotates which 4,094 it returns. Other
// servers may cap or rotate answers sooner. Treating "not in this answer" as dead would then
// condemn live peers at random, so only an IP that an earlier answer listed and a complete
// answer no longer lists counts as departed.

import { possiblyTruncated } from '../shared/dns.js';

export type DeathReason = 'disconnected' | 'dial-failed' | 'dns' | 'reported';

/**
 * An answer dropping more than this share of the members listed before (and at least
 * MIN_SUSPICIOUS_DROP of them) is believed only when the next answer repeats it exactly:
 * churn replaces a few pods per interval, a rotating or capped server replaces many every time.
 */
const SUSPICIOUS_DROP_SHARE = 0.25;
const MIN_SUSPICIOUS_DROP = 3;

export class Liveness {
  private readonly dead = new Map<string, { since: number; reason: DeathReason }>();
  /** Members of the last answer believed complete, plus every IP listed since. */
  private members: Set<string> | undefined;
  /** When each IP was last listed by any answer: "departed" needs an earlier sighting. */
  private readonly seen = new Map<string, number>();
  /** The answer `members` was set from, while nothing was added to it since. */
  private acceptedAnswer: readonly string[] | undefined;
  /** A suspicious answer waiting for the next one to confirm it. */
  private unconfirmed: string | undefined;
  /** After an empty answer (an outage, or every pod gone from the Service) DNS condemns nobody. */
  private suspended = false;
  private readonly listeners = new Set<(peerId: string) => void>();

  constructor(private readonly now: () => number = Date.now) {}

  /**
   * Latest DNS answer; undefined (or empty: a DNS outage) disables the membership check.
   * `truncated`: some name's answer filled a DNS message, so it may list only part of its members.
   */
  setDnsMembers(ips: string[] | undefined, truncated = ips !== undefined && possiblyTruncated(ips)): void {
    if (!ips || ips.length === 0) {
      // Keep the members: the next answer is still compared with the last good one.
      this.suspended = true;
      return;
    }
    this.suspended = false;
    const t = this.now();
    for (const ip of ips) this.seen.set(ip, t);
    // The answer the members were last set from, again: nothing to compare (a settled cluster).
    if (this.acceptedAnswer && sameAnswer(ips, this.acceptedAnswer)) return;
    this.acceptedAnswer = undefined;
    const answer = new Set(ips);
    if (this.members && (truncated || this.partial(ips, answer, this.members))) {
      // Add what it lists, condemn nobody.
      for (const ip of ips) this.members.add(ip);
      return;
    }
    this.members = answer;
    this.acceptedAnswer = ips;
    this.unconfirmed = undefined;
  }

  private partial(ips: string[], answer: Set<string>, before: Set<string>): boolean {
    let dropped = 0;
    for (const ip of before) if (!answer.has(ip)) dropped++;
    if (dropped < MIN_SUSPICIOUS_DROP || dropped <= SUSPICIOUS_DROP_SHARE * before.size) return false;
    const fingerprint = [...answer].sort().join(',');
    if (this.unconfirmed === fingerprint) return false;
    this.unconfirmed = fingerprint;
    return true;
  }

  /** false only when every host was listed by DNS before and is no longer. */
  inDns(hosts: string[]): boolean {
    if (!this.members || this.suspended || hosts.length === 0) return true;
    return hosts.some((h) => this.members!.has(h) || !this.seen.has(h));
  }

  markDead(peerId: string, reason: DeathReason): void {
    if (this.dead.has(peerId)) return;
    this.dead.set(peerId, { since: this.now(), reason });
    for (const fn of this.listeners) fn(peerId);
  }

  markAlive(peerId: string): void {
    this.dead.delete(peerId);
  }

  isDead(peerId: string): boolean {
    return this.dead.has(peerId);
  }

  /** `connected` wins over everything: a peer we hold a working connection to is alive. */
  isLive(peerId: string, hosts: string[], connected: boolean): boolean {
    if (connected) return true;
    if (this.dead.has(peerId)) return false;
    return this.inDns(hosts);
  }

  onDeath(fn: (peerId: string) => void): void {
    this.listeners.add(fn);
  }

  /** Forgets peers dead, and IPs unlisted, for longer than `ageMs` (their records expire by then too). */
  prune(ageMs: number): void {
    const cutoff = this.now() - ageMs;
    for (const [id, d] of this.dead) if (d.since < cutoff) this.dead.delete(id);
    for (const [ip, t] of this.seen) if (t < cutoff && !this.members?.has(ip)) this.seen.delete(ip);
  }

  get deadCount(): number {
    return this.dead.size;
  }
}

/** Whether two address lists are equal, element by element (DNS answers arrive sorted). */
export function sameAnswer(a: readonly string[], b: readonly string[] | undefined): boolean {
  if (!b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

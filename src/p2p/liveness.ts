// Which peers are alive, so lookups never hand the registry a provider that is gone.
//
// Provider records live on other nodes for PROVIDER_TTL and cannot be recalled when a node
// dies. Instead of short TTLs (keys x nodes of republish traffic), every node filters the
// providers it returns by what it knows for free: a live connection means alive; a lost
// connection that cannot be re-dialled, a failed dial, a fetch the registry reported failing,
// or an IP that left the headless Service's DNS answer means dead. Unknown peers pass (and get
// probed), so a big cluster where not everyone is connected still finds them.

export type DeathReason = 'disconnected' | 'dial-failed' | 'dns' | 'reported';

export class Liveness {
  private readonly dead = new Map<string, { since: number; reason: DeathReason }>();
  private dnsMembers: Set<string> | undefined;
  private readonly listeners = new Set<(peerId: string) => void>();

  /** Latest DNS answer; undefined (or empty: a DNS outage) disables the membership check. */
  setDnsMembers(ips: string[] | undefined): void {
    this.dnsMembers = ips && ips.length > 0 ? new Set(ips) : undefined;
  }

  inDns(hosts: string[]): boolean {
    if (!this.dnsMembers || hosts.length === 0) return true;
    return hosts.some((h) => this.dnsMembers!.has(h));
  }

  markDead(peerId: string, reason: DeathReason): void {
    if (this.dead.has(peerId)) return;
    this.dead.set(peerId, { since: Date.now(), reason });
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

  /** Forgets peers dead for longer than `ageMs` (their records expire by then too). */
  prune(ageMs: number): void {
    const cutoff = Date.now() - ageMs;
    for (const [id, d] of this.dead) if (d.since < cutoff) this.dead.delete(id);
  }

  get deadCount(): number {
    return this.dead.size;
  }
}

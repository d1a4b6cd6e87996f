// Bootstrap from the DNS of a headless Service: no Kubernetes API calls at all.
//
// Every node resolves the same name and sorts the answer the same way, which makes the members
// a ring. Each node dials the RING_LINKS addresses that follow its own in that ring, so the
// nodes form one component (no split brain) while every address receives the same few ring
// dials (no hot spot: when everyone dialled the lowest addresses instead, each of them took
// N - 1 dials at a cold start). The rest of its choices are spread with rendezvous hashing on
// its own peer id. How many it dials grows with log2 of the cluster size, within a quarter of
// the connection budget. Addresses are dialled without a peer id: the noise handshake reveals it.

import { createHash } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import { DnsClient, possiblyTruncated } from '../shared/dns.js';

/**
 * `list` with the entries marked within `maxAgeMs` moved to the end, each part in its order;
 * older marks are forgotten.
 */
function markedLast(list: string[], marks: Map<string, number>, maxAgeMs: number): string[] {
  if (marks.size === 0) return list;
  const cutoff = Date.now() - maxAgeMs;
  for (const [k, t] of marks) if (t < cutoff) marks.delete(k);
  return [...list.filter((x) => !marks.has(x)), ...list.filter((x) => marks.has(x))];
}

/** Bootstrap dials in flight at once, at most; the ring successors come first. */
const BOOTSTRAP_PARALLEL_DIALS = 4;

/**
 * A dial that ran out of time: the address answered (a dead pod's is mostly refused at once) but
 * the handshake did not finish, so the peers are too busy. That is congestion, and each such
 * dial cost both sides most of a handshake. A silent address (a partition, a pod gone without a
 * trace) looks the same: that only slows this node's top-up a little, and it goes last next round.
 */
export function isDialTimeout(err: unknown): boolean {
  // What libp2p's dial rejects with when its AbortSignal.timeout fires (a refused address
  // rejects with ECONNREFUSED at once).
  return (err as { name?: string } | undefined)?.name === 'TimeoutError';
}

/** Successors in the sorted ring each node dials and keeps connected. */
export const RING_LINKS = 2;

/**
 * The wait before the next round: the interval, spread by +-20%. Every node of a DaemonSet
 * starts its rounds in the same second (a rollout, a cold start), and a fixed interval keeps
 * them in step: N resolves of an N-record answer at the DNS server, and N sorts of it on the
 * nodes, in the same second every interval. The mean wait stays the interval.
 */
export function nextRoundDelay(intervalMs: number, random: number = Math.random()): number {
  return Math.round(intervalMs * (0.8 + 0.4 * Math.min(Math.max(random, 0), 1)));
}

/**
 * The wait before the next round of a node without a connection. Nobody reachable yet (dials
 * refused, an empty answer): 1, 2, 4, then 8 s, so a node that came up first joins within seconds
 * of the others appearing without knocking every 500 ms. A dial that timed out has waited its 15 s
 * already (the peer answered but was too busy to finish the handshake): no backoff on top. At
 * an N = 1,000 cold start the last nodes to be ready are unconnected ones whose dials time out,
 * and each timeout was followed by up to 8 s of doing nothing. A DNS query that timed out backs
 * off as before: retried at once, a cold start saw up to twice the failed resolves (history.md).
 */
export function unconnectedRetryDelay(aloneRounds: number, timedOut: boolean, intervalMs: number): number {
  return Math.min(intervalMs, timedOut ? 500 : 500 * 2 ** Math.min(Math.max(aloneRounds, 0), 4));
}

/** Bootstrap peers for a cluster of `members` other nodes: 3 at ~2 nodes, ~12 at 1000, capped. */
export function bootstrapCount(members: number, maxConnections: number): number {
  if (members <= 0) return 0;
  const wanted = 2 + Math.ceil(Math.log2(members + 1));
  return Math.min(members, Math.max(1, Math.floor(maxConnections / 4)), wanted);
}

/**
 * Sort keys by address, kept: every node sorts the whole DNS answer every round (and finds its
 * place in it twice more), 1,000 addresses at 1,000 nodes, and at a cold start rounds come every
 * second or two. Shared by the nodes of one process (the scale harness runs hundreds).
 */
const ipKeys = new Map<string, string>();

function ipKey(ip: string): string {
  let k = ipKeys.get(ip);
  if (k === undefined) {
    if (ipKeys.size >= 100_000) ipKeys.clear(); // departed pods' addresses
    ipKeys.set(ip, (k = computeIpKey(ip)));
  }
  return k;
}

function computeIpKey(ip: string): string {
  if (isIPv4(ip)) return '4' + ip.split('.').map((o) => Number(o).toString(16).padStart(2, '0')).join('');
  // Expand :: so that IPv6 addresses compare by value.
  const [head, tail] = ip.split('::');
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  return '6' + groups.map((g) => g.padStart(4, '0')).join('');
}

/** Numeric order, IPv4 before IPv6, duplicates removed: the same list on every node. */
export function sortAddresses(ips: Iterable<string>): string[] {
  // Keys computed once per address, not per comparison: every node sorts the whole DNS answer
  // (1,000 addresses at 1,000 nodes) every bootstrap interval.
  return [...new Set(ips)]
    .map((ip) => ({ ip, key: ipKey(ip) }))
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    .map((x) => x.ip);
}

/**
 * Addresses ordered by a hash of (seed, address): a spread that differs per node. `ranks` keeps
 * the hashes between rounds (each round ranks the whole DNS answer again): the first 48 bits as
 * a number, so 1,000 of them cost tens of KB.
 */
function rendezvous(ips: string[], seed: string, ranks = new Map<string, number>()): string[] {
  if (ranks.size > 2 * ips.length + 1024) ranks.clear(); // departed pods' addresses
  const rankOf = (ip: string) => {
    let r = ranks.get(ip);
    if (r === undefined) ranks.set(ip, (r = createHash('sha256').update(seed).update('\0').update(ip).digest().readUIntBE(0, 6)));
    return r;
  };
  return ips
    .map((ip) => ({ ip, rank: rankOf(ip) }))
    .sort((a, b) => a.rank - b.rank || (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : 0))
    .map((r) => r.ip);
}

/**
 * This node's dial order: its RING_LINKS successors in the sorted ring first, then every other
 * address spread by `seed`; the first `count` are the choice, the rest are fallbacks.
 * A node whose own address is not in the answer (not listed yet, or an answer cut at the DNS
 * message size) takes a position derived from `seed`: any position keeps it connected.
 */
export function selectRing(sorted: string[], self: ReadonlySet<string>, seed: string, count: number, ranks?: Map<string, number>): string[] {
  const others = sorted.filter((ip) => !self.has(ip));
  if (others.length === 0 || count <= 0) return [];
  const listed = sorted.filter((ip) => self.has(ip)).map(ipKey);
  let at: number;
  if (listed.length > 0) {
    const mine = listed[0];
    at = others.findIndex((ip) => ipKey(ip) > mine);
    if (at < 0) at = 0;
  } else {
    at = parseInt(createHash('sha256').update(seed).digest('hex').slice(0, 8), 16) % others.length;
  }
  const ring: string[] = [];
  for (let i = 0; i < Math.min(RING_LINKS, others.length); i++) ring.push(others[(at + i) % others.length]);
  // Only the ring wanted (a node with enough peers checks its ring links): no spread to rank.
  if (count <= ring.length) return ring.slice(0, count);
  const inRing = new Set(ring);
  return [...ring, ...rendezvous(others.filter((ip) => !inRing.has(ip)), seed, ranks)].slice(0, Math.max(count, 0));
}

/**
 * The RING_LINKS addresses on either side of ours in the sorted ring: our successors dial us
 * as we dial theirs, and these links keep the cluster one piece, so the connection bound keeps
 * them (bound.ts). Empty while our address is not in the answer.
 */
export function ringNeighbours(sorted: string[], self: ReadonlySet<string>): string[] {
  const mine = sorted.find((ip) => self.has(ip));
  const others = sorted.filter((ip) => !self.has(ip));
  if (mine === undefined || others.length === 0) return [];
  const key = ipKey(mine);
  let at = others.findIndex((ip) => ipKey(ip) > key);
  if (at < 0) at = 0;
  const out = new Set<string>();
  for (let i = 0; i < Math.min(RING_LINKS, others.length); i++) {
    out.add(others[(at + i) % others.length]);
    out.add(others[(at - 1 - i + 2 * others.length) % others.length]);
  }
  return [...out];
}

export class DnsResolveError extends Error {
  constructor(readonly name_: string, readonly code: string | undefined, message: string) {
    super(message);
    this.name = 'DnsResolveError';
  }
}

/** Rounds a resolve fails while some name has never answered, before the other names' members are used. */
const INCOMPLETE_ROUNDS = 3;

/**
 * The members: the A and AAAA records of one name, or of several (a cluster past what one DNS
 * message holds, ~4,090 A records, lists its nodes under a name per zone or node pool). One
 * family missing is normal, both failing is an error. A name that fails while others answer
 * keeps its previous addresses: a timeout is not a departure, and a shrinking view would move
 * keys' IP holders on this node only.
 */
export class DnsMembers {
  private readonly resolver: DnsClient;
  readonly hostnames: readonly string[];
  /** The last answer, sorted, and as a set: an unchanged answer (in any order) is not sorted again. */
  private last: { sorted: readonly string[]; set: ReadonlySet<string> } | undefined;
  /** Each name's last answer, standing in while it fails. */
  private readonly lastOf = new Map<string, string[]>();
  /** Rounds in a row that failed for want of some name's first answer. */
  private incompleteRounds = 0;
  /** Names whose last resolve failed, with the error. */
  readonly failing = new Map<string, string>();
  /**
   * Whether some name's answer in the last resolve filled a DNS message (it may be cut). Judged
   * per name: the union of several names is meant to be larger than one message.
   */
  truncated = false;

  constructor(hostnames: string | readonly string[], servers: string[], timeoutMs = 2000) {
    this.hostnames = typeof hostnames === 'string' ? [hostnames] : [...hostnames];
    if (this.hostnames.length === 0) throw new Error('DnsMembers needs at least one name');
    this.resolver = new DnsClient(servers, timeoutMs, 2);
  }

  /** The names, for logs. */
  get hostname(): string {
    return this.hostnames.join(',');
  }

  async resolve(): Promise<string[]> {
    // One name after another: a node then holds at most one TCP query at the DNS server, which
    // at a cold start is N of them, not N per name.
    const ips: string[] = [];
    const errors: DnsResolveError[] = [];
    // Names that failed without ever having answered (their members unknown yet).
    let unanswered = 0;
    let truncated = false;
    for (const name of this.hostnames) {
      let listed: string[];
      try {
        this.lastOf.set(name, (listed = await this.resolveName(name)));
        this.failing.delete(name);
      } catch (e) {
        const err = e as DnsResolveError;
        errors.push(err);
        this.failing.set(name, err.message);
        // The server says the name does not exist (its Service deleted): nobody is under it. Any
        // other failure (a timeout, SERVFAIL) keeps the name's last answer.
        if (err.code === 'ENOTFOUND') this.lastOf.delete(name);
        else if (!this.lastOf.has(name)) unanswered++;
        listed = this.lastOf.get(name) ?? [];
      }
      truncated ||= possiblyTruncated(listed);
      ips.push(...listed);
    }
    // A first view without a name's members puts every node's ring in the wrong place and its
    // dials among half the cluster (at N = 1,000 under two names: 2-4.6x the bootstrap dials of
    // one name in the minute after the cold start). So a name not heard from yet fails the round, as every name failing does,
    // for a few rounds; then the members known are used (that name may stay broken).
    const incomplete = unanswered > 0 && ++this.incompleteRounds <= INCOMPLETE_ROUNDS;
    if (errors.length === this.hostnames.length || incomplete) {
      this.truncated = false;
      if (this.hostnames.length === 1) throw errors[0];
      throw new DnsResolveError(this.hostname, errors[0].code, errors.map((e) => e.message).join('; ') + (incomplete ? ` (waiting for every name's first answer, ${this.incompleteRounds} of ${INCOMPLETE_ROUNDS} rounds)` : ''));
    }
    if (unanswered === 0) this.incompleteRounds = 0;
    this.truncated = truncated;
    const valid = new Set(ips.filter((ip) => isIPv4(ip) || isIPv6(ip)));
    // Sorting 1,000 addresses every interval on every node was ~1.5% of a host's time in the
    // scale runs; most answers are the last one again, often in another order.
    const last = this.last;
    if (last && last.set.size === valid.size && [...valid].every((ip) => last.set.has(ip))) return last.sorted as string[];
    const sorted = Object.freeze(sortAddresses(valid)) as string[];
    this.last = { sorted, set: valid };
    return sorted;
  }

  /** One name's addresses; [] when it exists and lists nobody (yet). */
  private async resolveName(name: string): Promise<string[]> {
    const { v4, v6, errors } = await this.resolver.resolveBoth(name);
    const ips = [...v4, ...v6];
    if (ips.length === 0) {
      // ENODATA for both: the name exists and lists nobody (yet), which is an answer. A name
      // that does not exist (ENOTFOUND) or a server that fails is not.
      const codes = errors.map((e) => (e as NodeJS.ErrnoException | undefined)?.code);
      if (codes.every((c) => c === 'ENODATA')) return [];
      const reason = errors.find(Boolean)!;
      throw new DnsResolveError(name, codes.find(Boolean), `resolving ${name}: ${reason.message}`);
    }
    return ips;
  }
}

export interface BootstrapDeps {
  /** Own peer id: the seed of the spread, stable across restarts. */
  seed: string;
  /** IPs this node listens on, never dialled. */
  selfIps(): ReadonlySet<string>;
  p2pPort: number;
  maxConnections: number;
  intervalMs: number;
  /** The members from DNS (a DnsMembers; tests hand in their own answers). */
  dns?: Pick<DnsMembers, 'hostname' | 'resolve' | 'failing' | 'truncated'>;
  staticPeers: string[];
  /** IPs of the peers we hold connections to right now. */
  connectedIps(): ReadonlySet<string>;
  connectionCount(): number;
  dial(addr: string): Promise<void>;
  /** `truncated`: some name's answer filled a DNS message, so it may list only part of its members. */
  onDnsAnswer(ips: string[] | undefined, seconds: number, ok: boolean, truncated: boolean): void;
  /** `ring`: a dial made with enough connections, to restore a link to a ring successor. */
  onAttempt(ok: boolean, addr: string, error: Error | undefined, ring: boolean): void;
  log(level: 'debug' | 'info' | 'warn', msg: string, fields?: Record<string, unknown>): void;
}

/** Runs bootstrap rounds: at start, every interval, fast while alone, and when peers are lost. */
export class Bootstrapper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private aloneRounds = 0;
  /** Whether the last round ended on a dial that timed out. */
  private timedOut = false;
  /** Other members in the last DNS answer (plus static peers): 0 means we are alone by design. */
  members = 0;
  /** Whether DNS answered at least once (so `members` means something). */
  resolvedOnce = false;
  private target = 0;
  /** Whether this node has held its target number of connections when a round began. */
  private reachedTarget = false;
  /** IPs found to run another cluster (or no DHT), with when: dialled last, until forgotten. */
  private readonly foreign = new Map<string, number>();
  /** Addresses whose last bootstrap dial failed, with when: tried after the others next round. */
  private readonly failed = new Map<string, number>();
  /** Rendezvous ranks of the addresses seen, kept between rounds. */
  private readonly ranks = new Map<string, number>();
  /**
   * Dials a round keeps in flight: halved after a round whose dials timed out, one more after a
   * round without timeouts (at most BOOTSTRAP_PARALLEL_DIALS). Public for tests.
   */
  width = BOOTSTRAP_PARALLEL_DIALS;

  constructor(private readonly d: BootstrapDeps) {}

  /**
   * The peer at `ip` speaks another cluster's protocol (seen at identify). A second cluster behind
   * the same DNS name would otherwise be re-dialled every round: measured at 300 + 30 nodes, its
   * nodes held about 330 short-lived connections into this cluster at any moment. Forgotten after
   * ten intervals, so a pod whose IP is reused by this cluster is dialled again.
   */
  markForeign(ip: string): void {
    this.foreign.set(ip, Date.now());
  }

  start(): void {
    this.schedule(0);
  }

  /** One round now, outside the schedule (exposed for tests). */
  roundNow(): Promise<void> {
    return this.round();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  /**
   * After losing peers: a node left with none, or with less than half its target, runs a round
   * soon; one that lost a few tops up at its next round (within one interval, at each node's own
   * point in it). A mass failure (a zone, 10% of the cluster killed at once) takes peers from
   * every survivor in the same second, and an immediate round each meant every survivor
   * resolving the whole member list and dialling at once: at N = 300 in the scale harness, the
   * lookups of the first seconds after a kill failed in that burst.
   */
  peerLost(): void {
    const n = this.d.connectionCount();
    // A node still coming up (never at its target yet) tops up at once, as it always did.
    const urgent = n === 0 || n < (this.reachedTarget ? Math.ceil(this.target / 2) : this.target);
    if (urgent) this.schedule(500);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.running ??= this.round()
        .catch((err: Error) => this.d.log('warn', 'bootstrap round failed', { error: err.message }))
        .finally(() => {
          this.running = undefined;
          this.scheduleNext();
        });
    }, ms);
    this.timer.unref?.();
  }

  private scheduleNext(): void {
    if (this.timer || this.stopped) return;
    // No connection yet: retry soon (unconnectedRetryDelay).
    if (this.d.connectionCount() === 0) {
      this.aloneRounds++;
      this.schedule(unconnectedRetryDelay(this.aloneRounds, this.timedOut, this.d.intervalMs));
    } else {
      this.aloneRounds = 0;
      this.schedule(nextRoundDelay(this.d.intervalMs));
    }
  }

  private async round(): Promise<void> {
    this.timedOut = false;
    const self = this.d.selfIps();
    let selected: string[] = [];
    let members = 0;
    if (this.d.dns) {
      const t0 = process.hrtime.bigint();
      try {
        const ips = await this.d.dns.resolve();
        for (const [name, error] of this.d.dns.failing) this.d.log('warn', 'bootstrap DNS name failed; its last answer, if any, stands in', { name, error });
        this.d.onDnsAnswer(ips, Number(process.hrtime.bigint() - t0) / 1e9, true, this.d.dns.truncated);
        const others = ips.filter((ip) => !self.has(ip));
        members = others.length;
        this.target = bootstrapCount(members, this.d.maxConnections);
        // The whole list in this node's order: the first `target` are the choice, the rest are
        // fallbacks for when those cannot be reached (another cluster on the name, dead pods).
        // A node that holds enough connections only checks its ring links: ranking the whole
        // answer every interval was most of a settled node's bootstrap CPU at 1,000 members.
        const enough = this.d.connectionCount() >= Math.max(1, this.target);
        selected = markedLast(selectRing(ips, self, this.d.seed, enough ? RING_LINKS + this.foreign.size : others.length, this.ranks), this.foreign, 10 * this.d.intervalMs);
        this.resolvedOnce = true;
      } catch (err) {
        this.d.onDnsAnswer(undefined, Number(process.hrtime.bigint() - t0) / 1e9, false, false);
        // Keep the last answer's member count: an outage is not an empty cluster.
        members = Math.max(0, this.members - this.d.staticPeers.length);
        this.d.log('warn', 'bootstrap DNS resolve failed', { name: this.d.dns.hostname, error: (err as Error).message });
      }
    }
    this.members = members + this.d.staticPeers.length;
    if (!this.d.dns) this.resolvedOnce = true;
    const connected = this.d.connectedIps();
    const haveEnough = this.d.connectionCount() >= Math.max(1, this.target);
    if (haveEnough && this.target > 0) this.reachedTarget = true;
    const addrs: string[] = [];
    // Set when we hold enough connections but no ring link: dial the ring until one stands.
    let ringOnly = false;
    // Static peers are few by nature: keep at least one of them connected.
    if (this.d.staticPeers.length > 0 && !haveEnough) addrs.push(...this.d.staticPeers);
    const addrOf = (ip: string) => `/ip${isIPv4(ip) ? 4 : 6}/${ip}/tcp/${this.d.p2pPort}`;
    if (!haveEnough) {
      for (const ip of selected) {
        if (connected.has(ip)) continue;
        addrs.push(addrOf(ip));
      }
    } else {
      // Enough peers, but none of them a ring successor: dial those anyway. Ring links are what
      // join two halves again after a partition, when each half has enough peers of its own.
      const ring = selected.slice(0, RING_LINKS);
      if (ring.length > 0 && !ring.some((ip) => connected.has(ip))) {
        addrs.push(...ring.map(addrOf));
        ringOnly = true;
      }
    }
    if (addrs.length === 0) return;
    this.d.log('debug', 'bootstrap dialling', { candidates: addrs.length, members: this.members });
    // In order, a few at a time, until enough connections stand, and at most twice the target
    // per round: the rest of the list waits for the next round. At a cold start of 1,000 nodes
    // on two cores, dialling the whole list in chunks of the target (the failed dials of a
    // saturated cluster time out, and each one cost its peer a handshake) kept the hosts'
    // event loops 10-17 s behind, so more dials timed out: a congestion collapse.
    // Recently failed addresses last: a round's budget goes to fresh candidates.
    const order = markedLast(addrs, this.failed, 4 * this.d.intervalMs);
    const budget = Math.min(order.length, Math.max(1, this.target) * 2);
    let next = 0;
    let ringUp = false;
    // Congestion: a dial timed out. The round stops taking new addresses (those in flight end on
    // their own) and the next one dials fewer at a time. At N = 1,000 on two cores a cold start
    // left 200-400 nodes below their target, each dialling four at a time and twice its target per
    // round into peers whose loops ran 3-5 s late: ~150 handshakes a second that timed out, which
    // kept the loops late (a congestion collapse that never ended).
    let congested = false;
    let succeeded = false;
    const dialer = async (): Promise<void> => {
      while (next < budget && !this.stopped && !congested) {
        // (A ring dial is made with enough connections by definition: it stops at the first that stands.)
        if (ringOnly ? ringUp : this.d.connectionCount() >= Math.max(1, this.target)) return;
        const a = order[next++];
        try {
          await this.d.dial(a);
          ringUp = true;
          succeeded = true;
          this.failed.delete(a);
          this.d.onAttempt(true, a, undefined, ringOnly);
        } catch (err) {
          this.failed.set(a, Date.now());
          if (isDialTimeout(err)) congested = true;
          this.d.onAttempt(false, a, err as Error, ringOnly);
        }
      }
    };
    // A node with no connection yet dials one address at a time: at a cold start every node is in
    // that state at once, and what decides whether the cluster comes up is the handshakes in
    // flight across it, not any one node's speed.
    const parallel = this.d.connectionCount() === 0 || ringOnly ? 1 : this.width;
    await Promise.all(Array.from({ length: Math.min(parallel, budget) }, dialer));
    this.timedOut = congested;
    if (congested) this.width = Math.max(1, Math.floor(this.width / 2));
    else if (succeeded) this.width = Math.min(BOOTSTRAP_PARALLEL_DIALS, this.width + 1);
  }
}

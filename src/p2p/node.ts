// The libp2p node of the p2p thread: tcp + noise + yamux (+ an optional private-network key),
// identify, ping and a server-mode Kademlia DHT whose protocol id carries the cluster name.
// It owns advertising (a bounded provide queue), withdrawal, liveness and lookups; the Worker
// entry (worker.ts) only translates messages.

import net from 'node:net';
import os from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { identify, type Identify } from '@libp2p/identify';
import type { Connection, PeerId, PrivateKey } from '@libp2p/interface';
import { kadDHT, MessageType, passthroughMapper, type KadDHT, type QueryEvent } from '@libp2p/kad-dht';
import { ping, type Ping } from '@libp2p/ping';
import { peerIdFromString } from '@libp2p/peer-id';
import { preSharedKey } from '@libp2p/pnet';
import { tcp, type TCPSocketOptions } from '@libp2p/tcp';
import { isMultiaddr, multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import { createLibp2p, type Libp2p } from 'libp2p';
import { CID } from 'multiformats/cid';
import type {
  FeedPeer,
  FetchClaimResult,
  LookupResult,
  P2PMetricsSnapshot,
  P2PStatus,
  P2PView,
  P2PWorkerConfig,
  ProviderPeer,
  StoreFeed as StoreFeedMessage,
} from '../shared/messages.js';
import { Bootstrapper, DnsMembers, nextRoundDelay, ringNeighbours } from './bootstrap.js';
import { ConnectionBound } from './bound.js';
import { FetchClaims, type ClaimAnswer } from './claims.js';
import { Datagrams, type DatagramAnswer, type DatagramRecords } from './datagram.js';
import { Heartbeat } from './heartbeat.js';
import { IpHolderIndex, compareDistance, kadIdOf, nearestIps } from './ip-holders.js';
import { IndexedMemoryDatastore } from './datastore.js';
import { keyToCid, multihashToCid } from '../shared/keys.js';
import { Liveness, sameAnswer } from './liveness.js';
import { Lookups } from './lookup.js';
import { hostsOf, isLoopback, parseTcpAddr, registryAnnounceFilter, registryEndpoint } from './peer-addr.js';
import { StoreFeed } from './store-feed.js';
import { MAX_BATCH, handleRecordsStream, provideProtocol, sendRecords, withdrawProtocol } from './records.js';

export type LogFn = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;

/** Provides running at once: enough to hide round trips, few enough to leave CPU for lookups. */
const PROVIDE_CONCURRENCY = 8;
/** How often the thread's status and metrics go to main. */
const STATUS_INTERVAL_MS = 2000;
/** How long our own IP set is reused (see selfIps): an interface gaining an address is seen this late. */
const SELF_IPS_TTL_MS = 10_000;
/** Where kad-dht keeps provider records in the datastore (its default prefix, /dht). */
const PROVIDER_PREFIX = '/dht/provider';
/** Kademlia's k: how many closest peers hold each record (kad-dht's default bucket size). */
const K = 20;
/**
 * Records also go to a few peers beyond the k closest, so that views that differ by a peer or
 * two (a dead peer not yet dropped, a new one not yet seen) still agree on who holds a key.
 */
const HOLDER_MARGIN = 3;
/**
 * How long the view must have been exact before this node answers misses from its own store:
 * time for peers that just saw it join to send it their records (catchUp, 1 s after the join).
 */
const EXACT_VIEW_SETTLE_MS = 5000;
/** A member of a small cluster that could not be dialled is tried again after this long. */
const MESH_RETRY_MS = 10_000;
/** How long a lookup waits for a knock on an unverified provider (a refusal takes < 1 ms). */
const SCREEN_WAIT_MS = 50;
/**
 * Connected peers closest to a key that a network lookup asks first, directly (see
 * networkProviders): one round trip on a warm connection, no dial, no handshake.
 */
const DIRECT_ASKS = 3;
/** How long the DHT query waits for the first direct answers. */
const DIRECT_GRACE_MS = 300;
/**
 * Beyond the mesh, each record also goes to the members whose IP hashes closest to the key
 * (ipHolders): every node reads the same DNS answer, so provider and asker agree on these
 * holders without sharing a view of peer ids, and a lookup asks them in one hop.
 */
const IP_HOLDERS = 6;
/** Of those, how many a lookup asks first. */
const IP_ASKS = 3;
/**
 * IP holders whose datagram answers name no provider that end a lookup as a miss, without the
 * DHT query. Each must have been listed by DNS for IP_HOLDER_SETTLE_INTERVALS bootstrap
 * intervals (as this node saw it), so that providers, which see the same answer within one
 * interval, had time to send it their records.
 */
const IP_MISS_QUORUM = 3;
const IP_HOLDER_SETTLE_INTERVALS = 2;
/**
 * How long a lookup waits for an IP holder's datagram answer (datagram.ts) before it dials the
 * holder instead (below the connection bound); a late answer still counts.
 */
const DATAGRAM_WAIT_MS = 250;
/** How long records sent to an IP holder by datagram wait for its acknowledgement before a dial. */
const DATAGRAM_ACK_MS = 1000;
/**
 * Members' datagrams heard within this long make a lookup wait for slow holders (networkProviders).
 * Long: a quiet cluster sends none for minutes (at N = 1,000, 1 minute after advertising most
 * nodes had heard none, and dialled again); UDP newly blocked costs misses for this long.
 */
const DATAGRAM_HEARD_MS = 600_000;
/** Dials at once to let an unconnected peer into the routing table (see the constructor). */
const TABLE_DIALS = 1;
/** Negative answers from record holders that make a miss final (see networkProviders). */
const MISS_QUORUM = 2;
/** Advertise calls arriving within this window go out as one batch. */
const BATCH_WINDOW_MS = 25;
const PROVIDE_TIMEOUT_MS = 30_000;
/** Dials and inbound upgrades (see connectionManager below for why this long). */
const DIAL_TIMEOUT_MS = 15_000;
/**
 * A connection whose peer identify has not described after this long is identified again
 * (fillEmptyTable): past identify's own timeout (DIAL_TIMEOUT_MS), so the first has failed.
 */
const IDENTIFY_RETRY_MS = 20_000;
/**
 * A key no holder took is tried again after 2 s, doubling per failure up to 60 s (+-20%), not at
 * every peer that connects: under saturation peers reconnect every second, and a retry per
 * connect was a publish loop that kept a node's queue from ever draining (N = 1,000 runs).
 */
const REPUBLISH_RETRY_MS = 2000;
const REPUBLISH_RETRY_MAX_MS = 60_000;
/** Liveness probes (dials) in flight at once. */
const MAX_PROBES = 4;
/**
 * After the first answer with providers, how long a lookup waits for more. 0: answer at once,
 * since a record holder's answer is complete (see lookup.ts).
 */
const LOOKUP_SETTLE_MS = 0;
/** Registry fetches want a spare provider to hedge with. */
export const DEFAULT_PROVIDER_COUNT = 2;

export function dhtProtocol(cluster: string): string {
  return `/peerpull/${cluster}/kad/1.0.0`;
}

/** The pnet key file format libp2p expects, from 64 hex characters. */
export function swarmKey(hex: string): Uint8Array {
  return new TextEncoder().encode(`/key/swarm/psk/1.0.0/\n/base16/\n${hex}`);
}

// Parts of kad-dht this node needs that its public interface does not expose. Checked at start,
// so a library update that moves them fails loudly instead of silently losing features.
interface DhtProviders {
  getProviders(cid: CID, options?: { signal?: AbortSignal }): Promise<PeerId[]>;
  addProvider(cid: CID, provider: PeerId): Promise<void>;
  removeProvider(cid: CID, provider: PeerId): Promise<void>;
}
interface DhtKBucket {
  /** Decides whether a peer not in the table yet may enter it (kad-dht: ping it, dialling if need be). */
  verify(contact: { peerId: PeerId }, options?: { signal?: AbortSignal }): Promise<boolean>;
}
interface DhtRoutingTable {
  size: number;
  add(peer: PeerId, options?: { signal?: AbortSignal }): Promise<void>;
  addEventListener(type: 'peer:add', fn: (e: CustomEvent<PeerId>) => void): void;
  kb: DhtKBucket;
}
interface DhtNetwork {
  sendRequest(to: PeerId, msg: { type: MessageType; key: Uint8Array }, options: { signal: AbortSignal }): AsyncIterable<QueryEvent>;
}
interface DhtTableRefresh {
  /** ms from the end of one refresh (a closest-peers query per bucket) to the next; 5 min in kad-dht. */
  refreshInterval: number;
}
interface DhtInternals {
  providers: DhtProviders;
  routingTable: DhtRoutingTable;
  network: DhtNetwork;
  routingTableRefresh: DhtTableRefresh;
}
function dhtInternals(dht: KadDHT): DhtInternals {
  const d = dht as unknown as Partial<DhtInternals>;
  if (
    typeof d.providers?.getProviders !== 'function' ||
    typeof d.providers.removeProvider !== 'function' ||
    typeof d.routingTable?.size !== 'number' ||
    typeof d.routingTable.addEventListener !== 'function' ||
    typeof d.routingTable.add !== 'function' ||
    typeof d.routingTable.kb?.verify !== 'function' ||
    typeof d.network?.sendRequest !== 'function' ||
    typeof d.routingTableRefresh?.refreshInterval !== 'number'
  ) {
    throw new Error('@libp2p/kad-dht internals changed: providers store, routing table, network or table refresh not found (pinned version 16.4.5 expected)');
  }
  return d as DhtInternals;
}

type Services = { dht: KadDHT; identify: Identify; ping: Ping };

/**
 * Whether a republish of a key needs its provide query again: not while the records the last
 * query placed (at `queriedAt`) outlive the next round (its latest start, +20%, and a query's
 * time), since this round's pushes refresh the holders we know. With the defaults (TTL 15 min,
 * rounds of 5) every other round queries instead of every one: a query dials its way to 20 peers,
 * and a node holding hundreds of blobs runs one per blob.
 */
export function republishNeedsQuery(queriedAt: number | undefined, now: number, providerTtlMs: number, reprovideIntervalMs: number): boolean {
  return queriedAt === undefined || queriedAt + providerTtlMs <= now + reprovideIntervalMs * 1.2 + PROVIDE_TIMEOUT_MS;
}

/**
 * Whether a republish round may pass over a key published at `publishedAt`: it was placed less
 * than half a round ago (a key advertised just before the round, as after a node's start, when
 * every key of a DaemonSet's nodes is) and its records outlive the next round's latest start.
 */
export function republishFresh(publishedAt: number | undefined, now: number, providerTtlMs: number, reprovideIntervalMs: number): boolean {
  return publishedAt !== undefined && now - publishedAt < reprovideIntervalMs / 2 && publishedAt + providerTtlMs > now + reprovideIntervalMs * 1.2 + PROVIDE_TIMEOUT_MS;
}

/** How long a key whose publish reached no holder `failures` times in a row waits to be tried again. */
export function publishRetryDelay(failures: number, random: number = Math.random()): number {
  const base = Math.min(REPUBLISH_RETRY_MAX_MS, REPUBLISH_RETRY_MS * 2 ** Math.min(Math.max(failures - 1, 0), 16));
  return nextRoundDelay(base, random);
}

/**
 * A key's IP holders among `answer`, in the order a lookup asks them (for tests and tools: the
 * node itself is left in; a node leaves itself out).
 */
export function ipHoldersOfKey(key: string, answer: readonly string[], count = IP_HOLDERS): string[] {
  return nearestIps(kadIdOf(keyToCid(key).multihash.bytes), answer, count);
}

interface ProvideJob {
  key: string;
  cid: CID;
  waiters: Array<() => void>;
  /** Queued by the periodic republish, not by advertise(): its provide query may be skipped. */
  republish?: boolean;
}

export class P2PNode {
  private readonly liveness = new Liveness();
  private readonly lookups: Lookups;
  private readonly dht: DhtInternals;
  private readonly bootstrapper: Bootstrapper;
  /** Keys this node advertises, by CID string (the reprovider republishes these). */
  private readonly advertised = new Map<string, string>();
  /** Keys waiting for the next batch publish. */
  private readonly queue = new Map<string, ProvideJob>();
  /** Keys waiting for kad-dht's provide query (clusters bigger than our routing table). */
  private readonly queryQueue = new Map<string, ProvideJob>();
  private provideRunning = 0;
  /**
   * Keys no peer took yet: provided while alone (due at once when peers appear) or whose
   * publish reached nobody (due after a backoff, see publishRetryDelay). `due` is Infinity
   * while the key is queued again.
   */
  private readonly unpublished = new Map<string, { failures: number; due: number }>();
  private unpublishedTimer: NodeJS.Timeout | undefined;
  private readonly probing = new Map<string, number>();
  private probesRunning = 0;
  /** Probes of a peer that timed out in a row. */
  private readonly strikes = new Map<string, number>();
  /** Knocks in flight, by peer id: one at a time per peer. */
  private readonly knocks = new Map<string, Promise<'alive' | 'dead' | 'timeout' | 'unknown'>>();
  /** When an unconnected peer last answered a knock (see screen()). */
  private readonly verifiedAt = new Map<string, number>();
  private readonly counters = { bootstrapOk: 0, bootstrapFailed: 0, ringOk: 0, ringFailed: 0, batchesSent: 0, batchesFailed: 0, recordsReceived: 0 };
  /** What network lookups did beyond asking connected peers: the cost of a lookup on the cluster. */
  private readonly lookupSteps = { datagramAsks: 0, streamAsks: 0, holderRetries: 0, holderDials: 0, dhtQueries: 0, ipQuorumMisses: 0 };
  /** fillEmptyTable(): members put in the routing table by us, connections identified again. */
  private readonly tableRepairs = { added: 0, reidentified: 0 };
  private fillingTable = false;
  /** Connections fillEmptyTable() identified again (once each). */
  private readonly reidentified = new WeakSet<Connection>();
  private readonly provideQueries = { run: 0, ipHolders: 0, recent: 0 };
  /** When each key's last provide query placed records (CID string -> ms). */
  private readonly queriedAt = new Map<string, number>();
  /** When a publish of each key last reached a holder (see republishFresh). */
  private readonly publishedAt = new Map<string, number>();
  /** Keys republish rounds queued (sent) and passed over as just published (fresh). */
  private readonly republishes = { sent: 0, fresh: 0 };
  private dnsTimes = { ok: [] as number[], failed: [] as number[] };
  private dnsMemberCount = 0;
  private statusTimer: NodeJS.Timeout | undefined;
  private statusTicks = 0;
  private reprovideTimer: NodeJS.Timeout | undefined;
  private batchTimer: NodeJS.Timeout | undefined;
  private batchRunning = false;
  private catchUpTimer: NodeJS.Timeout | undefined;
  /** Peers added to the routing table since the last catch-up. */
  private readonly newPeers = new Set<string>();
  /** Members that died since the last catch-up: their place among a key's holders passes on. */
  private departed: Array<{ id: PeerId; kadId: Uint8Array }> = [];
  private readonly selfKadId: Uint8Array;
  /**
   * Cluster peers this node knows: identified over a connection with our DHT protocol, or in
   * the routing table. Record holders are chosen among them (kad-dht's table alone drops peers
   * whose ping was late, and two nodes must agree on who holds a key).
   */
  private readonly members = new Map<string, { id: PeerId; kadId: Uint8Array; ips: string[] }>();
  /** The other IPs of the last DNS answer. */
  private dnsOthers: string[] = [];
  /** The same, as a set: who a datagram ask is answered for. */
  private dnsOtherSet = new Set<string>();
  /** Every IP of the last DNS answer (ours included), when it was complete; see ipHolders. */
  private dnsAll: string[] = [];
  /** dnsAll by Kademlia position: a key's IP holders without a scan of the answer. */
  private ipIndex = IpHolderIndex.empty;
  /** Which member announced which IP (identify's listen addresses). */
  private readonly peerByIp = new Map<string, string>();
  /** Our ring neighbours in the last DNS answer (bootstrap.ts): their connections survive the bound. */
  private ringSet = new Set<string>();
  private meshRunning = false;
  /** IPs of the DNS answer that belong to another cluster (seen at identify), with when. */
  private readonly foreignIps = new Map<string, number>();
  /**
   * Peer ids seen speaking another cluster's protocol, with when: refused at the connection
   * bound's gate, before they cost one of our connections (kept as long as foreign IPs).
   */
  private readonly foreignPeers = new Map<string, number>();
  /** Records a holder did not take after several tries: peer id -> CIDs, retried every few seconds. */
  private readonly undelivered = new Map<string, Map<string, CID>>();
  /** The same for IP holders (pushToIpHolders): IP -> CIDs. */
  private readonly undeliveredIp = new Map<string, Map<string, CID>>();
  private readonly redelivering = { peers: false, ips: false };
  private readonly meshFailures = new Map<string, number>();
  private lastReady = false;
  /** Since when the routing table has held every DNS member (see view()). */
  private exactSince: number | undefined;
  /** view() until membership or the DNS answer changes. */
  private cachedView: P2PView | undefined;
  private cachedListenAddrs: string[] | undefined;
  private cachedSelfIps: { ips: ReadonlySet<string>; at: number } | undefined;
  /** The last DNS answer and foreign-IP set (by version) its derived sets were computed from. */
  private lastDnsAnswer: string[] | undefined;
  /** When each IP of the DNS answer was first listed in an unbroken run of answers. */
  private readonly dnsListedSince = new Map<string, number>();
  private foreignVersion = 0;
  private lastForeignVersion = 0;
  private stopped = false;
  private readonly heartbeat: Heartbeat;
  /** Provider asks to IP holders over UDP (one datagram each way, no connection). */
  private readonly datagrams: Datagrams;
  /** Main's copy of our provider records (set right after construction). */
  private feed: StoreFeed | undefined;

  private constructor(
    private readonly cfg: P2PWorkerConfig,
    private readonly node: Libp2p<Services>,
    private readonly log: LogFn,
    private readonly onStatus: (s: P2PStatus, m: P2PMetricsSnapshot) => void,
    private readonly bound: ConnectionBound,
  ) {
    this.dht = dhtInternals(node.services.dht);
    // kad-dht refreshes its table every 5 minutes, a query per bucket (~10 at N = 1,000), on
    // every node of a DaemonSet in the same minute. Here membership comes from DNS every
    // BOOTSTRAP_INTERVAL and lookups ask IP holders first, so the refresh only keeps the DHT
    // fallback's table fresh: rarer, and spread so nodes started together do not refresh together.
    this.dht.routingTableRefresh.refreshInterval = nextRoundDelay(cfg.dhtRefreshIntervalMs);
    // Pings every connection half the dead-peer bound apart; a ping is sent at most a tenth of
    // the bound late (heartbeat ticks) and fails after 0.4 of it: a silent peer's connection is
    // gone within the bound. The timeout stays generous (a lagging event loop must not look like
    // a dead peer) and is capped at 10 s.
    this.heartbeat = new Heartbeat({
      intervalMs: Math.max(500, Math.floor(cfg.deadPeerTimeoutMs / 2)),
      timeoutMs: Math.floor(Math.min(cfg.deadPeerTimeoutMs * 0.4, 10_000)),
      connections: () => node.getConnections(),
      onFailure: (conn, err) => {
        log('info', 'closing a connection whose peer stopped answering', { peer: conn.remotePeer.toString(), remote: conn.remoteAddr.toString(), error: err.message });
        conn.abort(err);
      },
      onUnsupported: (conn) => log('error', 'cannot ping connections: the muxer has no ping (libp2p or yamux changed); silent peer deaths go unnoticed', { peer: conn.remotePeer.toString() }),
    });
    this.datagrams = new Datagrams({
      host: cfg.listenHost,
      cluster: cfg.cluster,
      key: cfg.clusterKey ? Buffer.from(cfg.clusterKey, 'hex') : undefined,
      self: node.peerId.toString(),
      member: (ip) => this.dnsOtherSet.has(ip) || this.peerByIp.has(ip),
      providers: (mh) => this.heldProviders(mh),
      take: (r) => this.takeRecords(r),
      claim: (key, who) => this.claims.ask(key, who),
      release: (key, id) => this.claims.release(key, id),
      // As identify would have told us over a connection: not a holder, not a member, dialled last.
      foreign: (ip) => {
        this.log('info', 'an IP holder runs another cluster: no longer counted as one', { ip });
        this.markForeign(ip);
        // Out of the current answer too: identify's verdict waits for the next one.
        this.dnsAll = this.dnsAll.filter((x) => x !== ip);
        this.ipIndex = new IpHolderIndex(this.dnsAll);
        this.dnsOthers = this.dnsOthers.filter((x) => x !== ip);
        this.dnsOtherSet.delete(ip);
        this.cachedView = undefined;
      },
      log,
    });
    // kad-dht offers every peer named in any DHT answer (up to 20 per answer) to its routing
    // table, and a peer enters only after a ping, which dials it when unconnected: a handshake
    // on both sides, identify, and at the connection bound the eviction of another connection.
    // Measured at N=50 (bound 12) that turned each lookup into a burst of dials, and the hosts'
    // event loops fell seconds behind during churn. A connected peer needs no ping: its open
    // connection (handshake, identify, heartbeats) already proves it alive, and at a cold start
    // of 1,000 nodes on 2 cores the pings over fresh connections timed out behind loops seconds
    // late, leaving connected nodes with empty tables (not ready). Unconnected ones are pinged
    // one at a time, the rest turned away (named again by a later answer, they get their turn),
    // so the table still fills beyond our connections.
    const kb = this.dht.routingTable.kb;
    const verify = kb.verify;
    let verifyDials = 0;
    kb.verify = async (contact, options) => {
      if (node.getConnections(contact.peerId).some((c) => c.status === 'open')) return true;
      // At the bound a ping would close an idle connection to make room for itself: a member
      // the DNS answer still lists stands in for the ping there.
      if (this.bound.used() >= cfg.maxConnections) return this.members.get(contact.peerId.toString())?.ips.some((ip) => this.dnsOtherSet.has(ip)) ?? false;
      if (verifyDials >= TABLE_DIALS) return false;
      verifyDials++;
      try {
        return await verify.call(kb, contact, options);
      } finally {
        verifyDials--;
      }
    };
    this.selfKadId = kadIdOf(node.peerId.toMultihash().bytes);
    this.lookups = new Lookups({
      local: (k) => this.localProviders(k),
      network: (k, signal, stats) => this.networkProviders(k, signal, stats),
      authoritative: (k) => this.isRecordHolder(k),
      isLive: (p) => this.isLive(p),
      routingTableSize: () => this.dht.routingTable.size,
      cacheTtlMs: cfg.lookupCacheTtlMs,
      negativeTtlMs: cfg.negativeCacheTtlMs,
      settleMs: LOOKUP_SETTLE_MS,
    });
    this.liveness.onDeath((id) => {
      this.claims.forgetPeer(id);
      this.lookups.forgetPeer(id);
      this.feed?.peerChanged(id);
      const m = this.members.get(id);
      if (m && this.members.delete(id)) {
        this.cachedView = undefined;
        // Our records it held must move to whoever is now among each key's holders.
        this.departed.push(m);
        this.scheduleCatchUp();
      }
      this.log('info', 'peer considered dead: no longer returned as a provider', { peer: id });
    });
    this.bootstrapper = new Bootstrapper({
      seed: node.peerId.toString(),
      selfIps: () => this.selfIps(),
      p2pPort: cfg.listenPort,
      maxConnections: cfg.maxConnections,
      intervalMs: cfg.bootstrapIntervalMs,
      dns: cfg.bootstrapDns.length > 0 ? new DnsMembers(cfg.bootstrapDns, cfg.dnsServers) : undefined,
      staticPeers: cfg.bootstrapPeers,
      connectedIps: () => this.connectedIps(),
      connectionCount: () => this.node.getConnections().length,
      dial: async (a) => {
        // The connection manager's timeout, not a shorter one of its own: until 2026-12-07 these
        // dials gave up after 5 s, and at N = 1,000 on two cores (loops 3-5 s late) nearly every
        // bootstrap dial of a node still below its target timed out, after costing both sides
        // a handshake.
        await this.node.dial(multiaddr(a), { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) });
      },
      onDnsAnswer: (ips, seconds, ok, truncated) => {
        (ok ? this.dnsTimes.ok : this.dnsTimes.failed).push(seconds);
        if (ok) {
          this.dnsMemberCount = ips?.length ?? 0;
          this.liveness.setDnsMembers(ips, truncated);
          const self = this.selfIps();
          // Foreign IPs are forgotten after ten intervals, as the bootstrapper does (a reused pod IP).
          const cutoff = Date.now() - 10 * cfg.bootstrapIntervalMs;
          for (const [ip, t] of this.foreignIps) if (t < cutoff && this.foreignIps.delete(ip)) this.foreignVersion++;
          for (const [id, t] of this.foreignPeers) if (t < cutoff) this.foreignPeers.delete(id);
          // The same answer as last time (a settled cluster, every interval): nothing below would
          // change. At 1,000 members the sets rebuilt here cost every node every interval.
          const same = ips !== undefined && sameAnswer(ips, this.lastDnsAnswer) && this.foreignVersion === this.lastForeignVersion;
          this.lastDnsAnswer = ips;
          this.lastForeignVersion = this.foreignVersion;
          if (same) return;
          if (ips) {
            const now = Date.now();
            const listed = new Set(ips);
            for (const ip of this.dnsListedSince.keys()) if (!listed.has(ip)) this.dnsListedSince.delete(ip);
            for (const ip of ips) if (!this.dnsListedSince.has(ip)) this.dnsListedSince.set(ip, now);
          }
          this.dnsOthers = (ips ?? []).filter((ip) => !self.has(ip) && !this.foreignIps.has(ip));
          this.dnsOtherSet = new Set(this.dnsOthers);
          this.ringSet = new Set(ringNeighbours(ips ?? [], self));
          const before = this.ipIndex;
          this.dnsAll = ips && !truncated ? ips.filter((ip) => !this.foreignIps.has(ip)) : [];
          this.ipIndex = new IpHolderIndex(this.dnsAll);
          if (this.dnsAll.length > 0) void this.ipRehome(before, this.ipIndex);
          this.cachedView = undefined;
          setImmediate(() => void this.meshDial());
        }
      },
      onAttempt: (ok, addr, err, ring) => {
        if (ring) this.counters[ok ? 'ringOk' : 'ringFailed']++;
        else this.counters[ok ? 'bootstrapOk' : 'bootstrapFailed']++;
        if (!ok) this.log('debug', 'bootstrap dial failed', { addr, ring, error: err?.message });
      },
      log: (level, msg, fields) => this.log(level, msg, fields),
    });
  }

  static async create(
    cfg: P2PWorkerConfig,
    privateKey: PrivateKey,
    log: LogFn,
    onStatus: (s: P2PStatus, m: P2PMetricsSnapshot) => void,
    onStore: (m: StoreFeedMessage) => void = () => {},
  ): Promise<P2PNode> {
    const ipv6 = cfg.listenHost.includes(':');
    const host = cfg.listenHost || '0.0.0.0';
    const listen = `/ip${ipv6 ? 6 : 4}/${host}/tcp/${cfg.listenPort}`;
    const announce = cfg.advertiseIp ? [`/ip${cfg.advertiseIp.includes(':') ? 6 : 4}/${cfg.advertiseIp}/tcp/${cfg.listenPort}`] : [];
    // Keep loopback addresses only when the node listens on loopback on purpose.
    const keepLoopback = isLoopback(host) || (cfg.advertiseIp !== '' && isLoopback(cfg.advertiseIp));
    // Bound to one address (hostNetwork on a multi-homed node, or several nodes on one machine):
    // dial from it too. Peers judge liveness, ring links and bootstrap by the address a
    // connection comes from; from a kernel-chosen source every inbound connection of nodes on
    // 127.100.x.y looked like 127.0.0.1, so ring links were dialled again every round.
    const wildcard = host === '0.0.0.0' || host === '::';
    // (@libp2p/tcp passes dialOpts on to net.connect whole; its type names only a few of them.
    // A test checks the source address a peer sees.)
    const dialOpts = wildcard ? undefined : ({ localAddress: host } as TCPSocketOptions);
    const datastore = new IndexedMemoryDatastore();
    // The bound needs the node and the node needs the bound's gate: filled in below.
    let libp2pRef: Libp2p<Services> | undefined;
    let selfRef: P2PNode | undefined;
    const bound = new ConnectionBound({
      max: cfg.maxConnections,
      connections: () => libp2pRef?.getConnections() ?? [],
      isProtected: (c) => selfRef?.isRingNeighbour(c) ?? false,
      isUnwanted: (peer) => selfRef?.isForeign(peer) ?? false,
      onEvict: (c) => selfRef?.evicted.set(c.remotePeer.toString(), Date.now()),
      log: (level, msg, fields) => log(level, msg, fields),
    });
    const node = await createLibp2p<Services>({
      privateKey,
      start: false,
      // Indexed: the default store walks every record for each provider lookup.
      datastore,
      nodeInfo: { userAgent: `peerpull (cluster ${cfg.cluster})` },
      addresses: { listen: [listen], announce, announceFilter: registryAnnounceFilter(cfg.registryPort, keepLoopback) },
      transports: [tcp({ dialOpts })],
      connectionEncrypters: [noise()],
      // Heartbeats (heartbeat.ts) ping every connection; yamux's own keep-alive would only add pings.
      streamMuxers: [yamux({ enableKeepAlive: false })],
      connectionProtector: cfg.clusterKey ? preSharedKey({ psk: swarmKey(cfg.clusterKey) }) : undefined,
      // The bound itself (bound.ts): admission after the upgrade, an idle connection given up
      // for a new one. libp2p's limit sits above it so that it never prunes (it would close
      // whichever connection opened last, in use or not) and lets upgrades reach the gate.
      connectionGater: bound.gater(),
      connectionManager: {
        maxConnections: cfg.maxConnections * 2,
        // Not an allow list: allow-listed addresses bypass maxConnections and pruning, and in a
        // cluster every peer is in a private range. Raise the per-host rate and the pending
        // upgrade limit instead, so hundreds of nodes joining at once are not refused.
        inboundConnectionThreshold: Math.max(100, cfg.maxConnections),
        maxIncomingPendingConnections: Math.max(64, Math.ceil(cfg.maxConnections / 2)),
        maxParallelDials: 64,
        // Generous: a handshake takes milliseconds, but when every node of a cluster starts at
        // once on a busy machine, event loops run seconds late, and a timer that fires before
        // the late answer is read fails a dial that had succeeded (at N = 1,000 on 2 cores with
        // 5 s: almost every dial, a congestion collapse). A dead address is refused at once;
        // only a silent one (a partition) waits this long, a few at a time.
        dialTimeout: DIAL_TIMEOUT_MS,
        addressDialTimeout: 10_000,
        inboundUpgradeTimeout: DIAL_TIMEOUT_MS,
      },
      // Replaced by heartbeat.ts: the same job at a fraction of the CPU.
      connectionMonitor: { enabled: false },
      services: {
        // As long as a dial may take (see dialTimeout): identify's 5 s default fired behind event
        // loops 4-9 s late at an N = 1,000 cold start, and libp2p does not run a failed identify
        // again, so the peer never entered the routing table (fillEmptyTable repairs that too).
        identify: identify({ timeout: DIAL_TIMEOUT_MS }),
        ping: ping(),
        dht: kadDHT({
          protocol: dhtProtocol(cfg.cluster),
          logPrefix: 'peerpull:dht',
          clientMode: false,
          // The default mapper drops private and loopback addresses: a cluster's are all private.
          peerInfoMapper: passthroughMapper,
          // A lone node answers at once instead of pausing queries until a peer appears.
          allowQueryWithZeroPeers: true,
          // The defaults (10 parallel requests on 10 disjoint paths) guard against adversarial
          // peers on the public DHT and cost tens of ms of CPU per query. Inside one cluster
          // (a private key or at least a private protocol id) 3 requests on 1 path reach the
          // k closest peers in a round or two.
          alpha: 3,
          disjointPaths: 1,
          // The adaptive default gives up on a peer after a few hundred ms, which a busy node (or
          // a busy us) exceeds; a lookup's own deadline bounds the total anyway.
          networkDialTimeout: { minTimeout: 1500, maxTimeout: 10_000 },
          // The periodic query for our own id (kad-dht's default: every 5 min) follows the table
          // refresh, spread per node for the same reason. Members come from DNS and the ring,
          // so it only tidies the table; every node of a DaemonSet started together ran it 4-6
          // min later, each a query of ~10 FIND_NODE round trips whose answers (20 peers each)
          // go through both peer stores: at N = 1,000 that minute tripled the hosts' allocation
          // rate and set their loops seconds late (scale harness heap profiles, 2026-12-07).
          querySelfInterval: nextRoundDelay(cfg.dhtRefreshIntervalMs),
          reprovide: {
            // The sweep that republishes our records and deletes expired ones of others; its period
            // spread per node (+-20%), or a DaemonSet started together sweeps in the same second.
            interval: nextRoundDelay(Math.max(1000, Math.min(60_000, Math.floor(cfg.reprovideIntervalMs / 2), Math.floor(cfg.providerTtlMs / 4)))),
            validity: cfg.providerTtlMs,
            // Our own timer republishes and refreshes our records (see reprovide()); kad-dht's
            // would run a query per key. 0: only a record that somehow expired is its business.
            threshold: 0,
            concurrency: PROVIDE_CONCURRENCY,
          },
        }),
      },
    });
    libp2pRef = node;
    const self = new P2PNode(cfg, node, log, onStatus, bound);
    selfRef = self;
    const feed = new StoreFeed({ self: node.peerId.toString(), post: onStore, peer: (id) => self.feedPeer(id), finalMisses: () => self.finalMisses() });
    self.feed = feed;
    datastore.watch(PROVIDER_PREFIX, (key, present) => feed.record(key, present));
    await self.start();
    return self;
  }

  private async start(): Promise<void> {
    const n = this.node;
    await n.handle(
      provideProtocol(this.cfg.cluster),
      handleRecordsStream(
        async (from, cids, bad) => {
          if (bad > 0) this.log('warn', 'provide batch with malformed CIDs', { peer: from.toString(), bad });
          for (const cid of cids) {
            await this.dht.providers.addProvider(cid, from);
            this.lookups.forgetMiss(cid.toString());
          }
          this.counters.recordsReceived += cids.length;
        },
        (err, from) => this.log('warn', 'bad provide batch', { peer: from.toString(), error: err.message }),
      ),
      { maxInboundStreams: 8 },
    );
    await n.handle(
      withdrawProtocol(this.cfg.cluster),
      handleRecordsStream(
        async (from, cids, bad) => {
          if (bad > 0) this.log('warn', 'withdraw message with malformed CIDs', { peer: from.toString(), bad });
          for (const cid of cids) {
            await this.dht.providers.removeProvider(cid, from);
            this.lookups.forgetProvider(cid.toString(), from.toString());
          }
        },
        (err, from) => this.log('warn', 'bad withdraw message', { peer: from.toString(), error: err.message }),
      ),
      { maxInboundStreams: 8 },
    );
    n.addEventListener('connection:open', () => this.bound.opened());
    n.addEventListener('self:peer:update', () => {
      this.cachedListenAddrs = undefined;
      this.cachedSelfIps = undefined;
    });
    n.addEventListener('connection:close', (e) => this.bound.closed(e.detail));
    n.addEventListener('peer:connect', (e) => {
      this.liveness.markAlive(e.detail.toString());
      this.feed?.peerChanged(e.detail.toString());
      if (this.anyUnpublishedDue()) this.scheduleCatchUp();
    });
    this.dht.routingTable.addEventListener('peer:add', (e) => this.addMember(e.detail));
    n.addEventListener('peer:disconnect', (e) => {
      const id = e.detail.toString();
      this.feed?.peerChanged(id);
      this.bootstrapper.peerLost();
      // We closed it to make room: it is alive, and a probe would only knock for nothing.
      const evictedAt = this.evicted.get(id);
      if (evictedAt !== undefined) {
        this.evicted.delete(id);
        if (Date.now() - evictedAt < 10_000) return;
      }
      if (this.evicted.size > 1024) this.evicted.clear();
      // A node that died closes its sockets with it: find out now, not at the next lookup. By
      // knocking on its port, not dialling: the question is only whether it died, and a dial
      // would re-open what the peer's connection bound may just have closed (measured at N = 50,
      // bound 12: each eviction dialled back, which evicted another, round and round).
      setTimeout(() => this.probe(id, [], 1, true), 300).unref();
    });
    n.addEventListener('peer:identify', (e) => {
      // A peer of another cluster (or no DHT at all) is useless and takes a connection slot.
      const { peerId, protocols, connection, listenAddrs } = e.detail;
      if (!protocols.includes(dhtProtocol(this.cfg.cluster))) {
        this.log('info', 'closing connection to a peer outside this cluster', { peer: peerId.toString(), remote: connection.remoteAddr.toString() });
        void connection.close().catch(() => {});
        // Behind the same DNS name (a shared or misconfigured Service): dial it last, and do
        // not count it among this cluster's members.
        const ips = new Set(listenAddrs.flatMap((a) => parseTcpAddr(a)?.ip ?? []));
        const remote = parseTcpAddr(connection.remoteAddr)?.ip;
        if (remote) ips.add(remote);
        for (const ip of ips) this.markForeign(ip);
        this.foreignPeers.set(peerId.toString(), Date.now());
        return;
      }
      // Its listen addresses, not the connection's source: that may be another address of its host.
      this.addMember(peerId, listenAddrs.flatMap((a) => parseTcpAddr(a)?.ip ?? []));
      this.feed?.peerChanged(peerId.toString());
    });
    await n.start();
    // The same port number as the TCP listener (which may have been given port 0).
    const tcpPort = n.getMultiaddrs().map((a) => parseTcpAddr(a)?.port).find((x) => x !== undefined);
    await this.datagrams.start(this.cfg.listenPort || tcpPort || 0);
    this.bootstrapper.start();
    this.heartbeat.start();
    threadLoop.users++;
    if (threadLoop.users === 1) threadLoop.histogram.enable();
    this.statusTimer = setInterval(() => this.pushStatus(), STATUS_INTERVAL_MS);
    this.statusTimer.unref();
    this.scheduleReprovide();
    this.log('info', 'p2p node started', { peerId: n.peerId.toString(), addrs: n.getMultiaddrs().map(String), cluster: this.cfg.cluster, private: this.cfg.clusterKey !== '' });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.feed?.stop();
    if (--threadLoop.users === 0) threadLoop.histogram.disable();
    this.bootstrapper.stop();
    this.heartbeat.stop();
    this.datagrams.stop();
    if (this.statusTimer) clearInterval(this.statusTimer);
    for (const t of [this.reprovideTimer, this.batchTimer, this.catchUpTimer, this.unpublishedTimer]) if (t) clearTimeout(t);
    this.queue.clear();
    this.queryQueue.clear();
    await this.node.stop();
  }

  // ---- advertise / withdraw ----

  async advertise(keys: string[], wait: boolean): Promise<{ queued: number }> {
    const waits: Promise<void>[] = [];
    let queued = 0;
    for (const key of keys) {
      const cid = keyToCid(key);
      const c = cid.toString();
      const fresh = !this.advertised.has(c);
      this.advertised.set(c, key);
      this.lookups.forgetMiss(c);
      // Into our own store first: peers asking us find it at once, before the DHT has it.
      await this.dht.providers.addProvider(cid, this.node.peerId);
      if (!fresh && !wait) continue;
      queued++;
      let job = this.queue.get(c);
      if (!job) {
        job = { key, cid, waiters: [] };
        this.queue.set(c, job);
      }
      job.republish = false; // asked for: its query runs, whatever the republish had queued
      if (wait) {
        const j = job;
        waits.push(new Promise<void>((resolve) => j.waiters.push(resolve)));
      }
    }
    this.schedulePublish();
    if (wait) await Promise.all(waits);
    return { queued };
  }

  /**
   * How much of the cluster the routing table holds. 'exact': every member the DNS answer
   * lists, so the k closest peers it names for a key are exactly the key's record holders (as
   * every other node with the same view computes them). 'near': all but a few, good enough to
   * ask the right holders first. 'partial': a bigger cluster, whose table holds a sample.
   */
  private view(): P2PView {
    // Asked on every lookup: recomputed only after membership or the DNS answer changed.
    if (this.cachedView) return this.cachedView;
    const v = this.computeView();
    if (v === 'exact') this.exactSince ??= Date.now();
    else this.exactSince = undefined;
    this.cachedView = v;
    return v;
  }

  private computeView(): P2PView {
    const others = this.dnsOthers;
    if (this.members.size === 0 || this.cfg.bootstrapDns.length === 0 || others.length === 0) return 'partial';
    if (this.members.size < Math.floor(others.length * 0.9)) return 'partial';
    const known = new Set<string>();
    for (const m of this.members.values()) for (const ip of m.ips) known.add(ip);
    let missing = 0;
    for (const ip of others) if (!known.has(ip)) missing++;
    if (missing === 0) return 'exact';
    return missing <= Math.ceil(others.length * 0.1) ? 'near' : 'partial';
  }

  /** Our store's "none" is the cluster's for every key (see isRecordHolder). */
  private finalMisses(): boolean {
    return this.settledExact() && this.meshEligible();
  }

  /** A provider's state for main's copy of the store. */
  private async feedPeer(peerId: string): Promise<FeedPeer> {
    const id = peerIdOf(peerId);
    let addrs: Multiaddr[] = [];
    try {
      addrs = (await this.node.peerStore.get(id)).addresses.map((a) => a.multiaddr);
    } catch {
      // Not in the peer store (yet): main cannot hand it out, this thread's lookups may.
    }
    const p = this.toProvider(id, addrs);
    const connected = this.node.getConnections(id).length > 0;
    return { peerId, host: p?.host, registryPort: p?.registryPort, addrs: p?.addrs ?? [], connected, dead: !connected && this.liveness.isDead(peerId) };
  }

  /** An exact view held long enough for peers to have sent us their records. */
  private settledExact(): boolean {
    return this.view() === 'exact' && Date.now() - this.exactSince! >= EXACT_VIEW_SETTLE_MS;
  }

  private addMember(id: PeerId, ips: string[] = []): void {
    const key = id.toString();
    if (id.equals(this.node.peerId)) return;
    if (this.peerByIp.size > 20_000) this.peerByIp.clear();
    for (const ip of ips) this.peerByIp.set(ip, key);
    const m = this.members.get(key);
    if (m) {
      if (ips.length > 0) {
        m.ips = ips;
        this.cachedView = undefined;
      }
      return;
    }
    this.cachedView = undefined;
    this.members.set(key, { id, kadId: kadIdOf(id.toMultihash().bytes), ips });
    this.newPeers.add(key);
    this.scheduleCatchUp();
  }

  /** The `count` known cluster peers closest to a Kademlia id. */
  private closestMembers(target: Uint8Array, count: number): PeerId[] {
    const list = [...this.members.values()];
    list.sort((a, b) => compareDistance(a.kadId, b.kadId, target));
    return list.slice(0, count).map((m) => m.id);
  }

  /**
   * A small cluster (members within half the connection budget) runs as a full mesh: every
   * node then knows every other, records reach their holders directly and misses are answered
   * locally. Bigger clusters stay with the bootstrap's logarithmic choice and Kademlia.
   */
  private meshEligible(): boolean {
    const n = this.dnsOthers.length;
    return n > 0 && n <= Math.floor(this.cfg.maxConnections / 2);
  }

  private async meshDial(): Promise<void> {
    if (this.meshRunning || this.stopped || !this.meshEligible()) return;
    const others = this.dnsOthers;
    this.meshRunning = true;
    try {
      // By listen address: an inbound connection's source may be another address of the peer's host.
      const connected = this.connectedIps();
      for (const m of this.members.values()) if (this.node.getConnections(m.id).length > 0) for (const ip of m.ips) connected.add(ip);
      const now = Date.now();
      const todo = others.filter((ip) => !connected.has(ip) && now - (this.meshFailures.get(ip) ?? 0) > MESH_RETRY_MS);
      let next = 0;
      const dialer = async (): Promise<void> => {
        while (next < todo.length && !this.stopped) {
          const ip = todo[next++];
          try {
            await this.node.dial(multiaddr(`/ip${ip.includes(':') ? 6 : 4}/${ip}/tcp/${this.cfg.listenPort}`), { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) });
            this.meshFailures.delete(ip);
          } catch {
            // A pod that is gone but still listed: try again later, not every round.
            this.meshFailures.set(ip, Date.now());
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(4, todo.length) }, dialer));
    } finally {
      this.meshRunning = false;
    }
  }

  private schedulePublish(): void {
    if (this.batchTimer || this.batchRunning || this.stopped) return;
    this.batchTimer = setTimeout(() => {
      this.batchTimer = undefined;
      void this.publishQueued();
    }, BATCH_WINDOW_MS);
    this.batchTimer.unref();
  }

  /**
   * Publishes the queued keys to their closest peers in our routing table, in batches. When
   * the table holds only part of the cluster, each key also takes kad-dht's provide query,
   * which finds holders beyond our table.
   */
  private async publishQueued(): Promise<void> {
    if (this.batchRunning || this.stopped || this.queue.size === 0) return;
    const jobs = [...this.queue.values()];
    this.queue.clear();
    if (this.dht.routingTable.size === 0) {
      // Alone: nobody to tell. Published when the first peers arrive (catchUp).
      for (const j of jobs) {
        const c = j.cid.toString();
        this.unpublished.set(c, { failures: this.unpublished.get(c)?.failures ?? 0, due: 0 });
        for (const w of j.waiters) w();
      }
      return;
    }
    this.batchRunning = true;
    // A small cluster still meshing is on its way to an exact view (catchUp covers the peers
    // that arrive); queries would only load it. A big cluster needs them.
    const queryToo = this.view() === 'partial' && !this.meshEligible();
    let reached = new Map<string, number>();
    let ipTook = new Map<string, number>();
    try {
      [reached, ipTook] = await Promise.all([this.pushRecords(jobs.map((j) => j.cid)), this.pushToIpHolders(jobs.map((j) => j.cid))]);
      for (const j of jobs) {
        const c = j.cid.toString();
        if ((reached.get(c) ?? 0) > 0) this.markPublished(c);
        else if (this.advertised.has(c)) this.publishFailed(c);
      }
      // Once per batch: the timer looks over every unpublished key.
      this.armUnpublishedTimer();
    } finally {
      this.batchRunning = false;
      if (queryToo) {
        for (const j of jobs) {
          // A record our pushes placed is in the DHT: its waiters go now, the query that looks
          // for holders beyond our view runs behind them (at N = 50 with a bound of 12, queries
          // dialling their way to 20 holders took up to the 30 s timeout).
          const c = j.cid.toString();
          const placed = (reached.get(c) ?? 0) > 0;
          // Enough of the key's IP holders took it: every lookup asks those first (each node
          // computes them from the same DNS answer), so the query's dials (~30 per key, the
          // bulk of advertising at N = 1,000) buy nothing. Without UDP, DNS or a complete
          // answer they take nothing, and the query runs as before.
          const skip = (ipTook.get(c) ?? 0) >= IP_ASKS ? 'ipHolders' : placed && j.republish && this.queryStillHolds(c) ? 'recent' : undefined;
          if (skip) {
            this.provideQueries[skip]++;
            // Published: IP holders have it (else catch-up would queue it again with every new peer).
            if (skip === 'ipHolders') this.markPublished(c);
            for (const w of j.waiters) w();
            continue;
          }
          const q = this.queryQueue.get(c);
          if (placed) for (const w of j.waiters) w();
          const waiters = placed ? [] : j.waiters;
          if (q) q.waiters.push(...waiters);
          else this.queryQueue.set(c, { ...j, waiters });
        }
        this.pump();
      } else for (const j of jobs) for (const w of j.waiters) w();
      if (this.queue.size > 0) this.schedulePublish();
    }
  }

  /**
   * Sends our records for `cids` to each key's k closest peers in the routing table (only to
   * `onlyTo` when given), one message per peer. Returns how many peers took each CID.
   */
  private async pushRecords(cids: CID[], onlyTo?: ReadonlySet<string>): Promise<Map<string, number>> {
    const byPeer = new Map<string, { peer: PeerId; cids: CID[] }>();
    for (const cid of cids) {
      for (const peer of this.closestMembers(kadIdOf(cid.multihash.bytes), this.holderCount() + HOLDER_MARGIN)) {
        const id = peer.toString();
        if (onlyTo && !onlyTo.has(id)) continue;
        let b = byPeer.get(id);
        if (!b) byPeer.set(id, (b = { peer, cids: [] }));
        b.cids.push(cid);
      }
    }
    const reached = new Map<string, number>();
    const batches = [...byPeer.values()].flatMap(({ peer, cids: list }) => {
      const out: Array<{ peer: PeerId; cids: CID[] }> = [];
      for (let i = 0; i < list.length; i += MAX_BATCH) out.push({ peer, cids: list.slice(i, i + MAX_BATCH) });
      return out;
    });
    const proto = provideProtocol(this.cfg.cluster);
    // A batch that fails (a busy peer, a dial that timed out) is tried again twice, a little
    // later: a holder left without our record would answer "nobody has it".
    for (let attempt = 1; batches.length > 0 && !this.stopped; attempt++) {
      const failed: typeof batches = [];
      let next = 0;
      const sender = async (): Promise<void> => {
        while (next < batches.length && !this.stopped) {
          const batch = batches[next++];
          const delivered = () => {
            this.counters.batchesSent++;
            for (const cid of batch.cids) {
              const c = cid.toString();
              reached.set(c, (reached.get(c) ?? 0) + 1);
            }
          };
          // Unconnected: by datagram to the address it announced, and only if not all are
          // taken over a connection. Beyond a mesh most holders are unconnected: one dial per
          // holder per batch kept nodes at their bound and took advertising from 8 to 43 s at
          // N = 50 once the bound was kept.
          if (this.node.getConnections(batch.peer).length === 0) {
            const ip = this.members.get(batch.peer.toString())?.ips.find((x) => this.dnsOtherSet.has(x));
            if (ip !== undefined && (await this.provideByDatagram(ip, batch.cids))) {
              delivered();
              continue;
            }
          }
          try {
            const stream = await this.node.dialProtocol(batch.peer, proto, { signal: AbortSignal.timeout(5000) });
            await sendRecords(stream, batch.cids, AbortSignal.timeout(10_000));
            delivered();
          } catch (err) {
            this.counters.batchesFailed++;
            failed.push(batch);
            this.log('debug', 'record batch not delivered', { peer: batch.peer.toString(), records: batch.cids.length, attempt, error: (err as Error).message });
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(PROVIDE_CONCURRENCY, batches.length) }, sender));
      if (failed.length === 0) break;
      if (attempt >= 3) {
        // Still failing: handed to the status timer, which tries again while the peer is a member.
        for (const b of failed) keepUndelivered(this.undelivered, b.peer.toString(), b.cids);
        break;
      }
      await new Promise((r) => setTimeout(r, 1000 * attempt).unref());
      // Only to peers still known: a dead one is not a holder any more.
      batches.splice(0, batches.length, ...failed.filter((b) => this.members.has(b.peer.toString())));
    }
    return reached;
  }

  /**
   * Records holders did not take after several tries: one more round, in the background. Peer
   * holders (by id) and IP holders (by IP) drain side by side, each one round at a time.
   */
  private async redeliver(which: 'peers' | 'ips'): Promise<void> {
    const map = which === 'peers' ? this.undelivered : this.undeliveredIp;
    if (map.size === 0 || this.redelivering[which]) return;
    this.redelivering[which] = true;
    try {
      const todo = [...map];
      map.clear();
      for (const [holder, cids] of todo) {
        if (this.stopped) return;
        const list = [...cids.values()].filter((cid) => this.advertised.has(cid.toString()));
        if (list.length === 0) continue;
        // pushToIpHolders sends each only while `holder` is still among its IP holders; a peer
        // gets them only while it is a member (a dead one is no holder any more).
        if (which === 'ips') await this.pushToIpHolders(list, new Set([holder]));
        else if (this.members.has(holder)) await this.pushRecords(list, new Set([holder]));
      }
    } finally {
      this.redelivering[which] = false;
    }
  }

  /** One key at a time through kad-dht's provide query: for clusters bigger than our view. */
  private pump(): void {
    while (!this.stopped && this.provideRunning < PROVIDE_CONCURRENCY && this.queryQueue.size > 0) {
      const [c, job] = this.queryQueue.entries().next().value as [string, ProvideJob];
      this.queryQueue.delete(c);
      this.provideRunning++;
      void this.provideOne(c, job).finally(() => {
        this.provideRunning--;
        for (const w of job.waiters) w();
        this.pump();
      });
    }
  }

  private queryStillHolds(c: string): boolean {
    return !republishNeedsQuery(this.queriedAt.get(c), Date.now(), this.cfg.providerTtlMs, this.cfg.reprovideIntervalMs);
  }

  private async provideOne(c: string, job: ProvideJob): Promise<void> {
    if (!this.advertised.has(c)) return;
    this.provideQueries.run++;
    let stored = 0;
    const t0 = Date.now();
    try {
      for await (const ev of this.node.services.dht.provide(job.cid, { signal: AbortSignal.timeout(PROVIDE_TIMEOUT_MS) })) {
        if (ev.name === 'PEER_RESPONSE' && ev.messageName === 'ADD_PROVIDER') stored++;
      }
      this.log('debug', 'provide query done', { key: job.key, stored, ms: Date.now() - t0 });
    } catch (err) {
      this.log('debug', 'provide failed', { key: job.key, stored, ms: Date.now() - t0, error: (err as Error).message });
    }
    // The batch may have reached holders the query did not: only a total failure is unpublished.
    if (stored > 0) {
      this.markPublished(c);
      this.queriedAt.set(c, t0);
    }
  }

  /**
   * Peers joined the routing table: give each the records it is now a holder of (a new node
   * close to a key must not answer "nobody has it"), and publish what waited for company.
   */
  private scheduleCatchUp(): void {
    if (this.catchUpTimer || this.stopped) return;
    // Wait a moment for identify and the routing table to take in the whole arriving group.
    this.catchUpTimer = setTimeout(() => {
      this.catchUpTimer = undefined;
      void this.catchUp();
    }, 1000);
    this.catchUpTimer.unref();
  }

  private markPublished(c: string): void {
    this.unpublished.delete(c);
    if (this.advertised.has(c)) this.publishedAt.set(c, Date.now());
  }

  /** A publish of `c` reached no holder: try again after the backoff (armUnpublishedTimer), not with the next peer. */
  private publishFailed(c: string): void {
    const failures = (this.unpublished.get(c)?.failures ?? 0) + 1;
    this.unpublished.set(c, { failures, due: Date.now() + publishRetryDelay(failures) });
  }

  private anyUnpublishedDue(now = Date.now()): boolean {
    for (const u of this.unpublished.values()) if (u.due <= now) return true;
    return false;
  }

  /** Wakes catch-up when the earliest backed-off key is due. */
  private armUnpublishedTimer(): void {
    if (this.stopped) return;
    let next = Infinity;
    for (const u of this.unpublished.values()) if (u.due > 0 && u.due < next) next = u.due;
    if (this.unpublishedTimer) clearTimeout(this.unpublishedTimer);
    this.unpublishedTimer = undefined;
    if (next === Infinity) return;
    this.unpublishedTimer = setTimeout(() => {
      this.unpublishedTimer = undefined;
      this.scheduleCatchUp();
    }, Math.max(0, next - Date.now()));
    this.unpublishedTimer.unref();
  }

  private async catchUp(): Promise<void> {
    if (this.stopped || this.dht.routingTable.size === 0) return;
    const fresh = new Set(this.newPeers);
    this.newPeers.clear();
    const now = Date.now();
    const waiting: ProvideJob[] = [];
    let retries = 0;
    for (const [c, u] of this.unpublished) {
      if (u.due > now) continue;
      const key = this.advertised.get(c);
      if (!key) {
        this.unpublished.delete(c);
        continue;
      }
      if (u.failures > 0) retries++;
      u.due = Infinity;
      waiting.push({ key, cid: keyToCid(key), waiters: [] });
    }
    this.armUnpublishedTimer();
    if (waiting.length > 0) {
      this.log('info', retries > 0 ? 'publishing records no peer took yet' : 'publishing records held back while alone', { keys: waiting.length, retries });
      for (const w of waiting) if (!this.queue.has(w.cid.toString())) this.queue.set(w.cid.toString(), w);
      this.schedulePublish();
    }
    const waitingSet = new Set(waiting.map((w) => w.cid.toString()));
    const others = [...this.advertised.keys()].filter((c) => !waitingSet.has(c)).map((c) => CID.parse(c));
    if (fresh.size > 0 && others.length > 0) await this.pushRecords(others, fresh);
    const gone = this.departed;
    this.departed = [];
    if (gone.length > 0 && others.length > 0) await this.rehome(others, gone);
  }

  /**
   * Holders died: for each of our keys they held, the members that moved up into its holder
   * set get the record now, not at the next reprovide (which may be minutes away, and each
   * death meanwhile leaves the key with one holder fewer).
   */
  private async rehome(cids: CID[], gone: Array<{ id: PeerId; kadId: Uint8Array }>): Promise<void> {
    const count = this.holderCount() + HOLDER_MARGIN;
    const affected: CID[] = [];
    const movedUp = new Set<string>();
    for (const cid of cids) {
      const target = kadIdOf(cid.multihash.bytes);
      const now = this.closestMembers(target, count);
      if (now.length < count) continue; // every member already holds it
      // How many of the dead were closer than the farthest holder now: that many moved up.
      const last = this.kadIdOfPeer(now[now.length - 1]);
      const moved = gone.filter((g) => compareDistance(g.kadId, last, target) < 0).length;
      if (moved === 0) continue;
      affected.push(cid);
      for (const peer of now.slice(now.length - moved)) movedUp.add(peer.toString());
    }
    // One message per peer; a peer that moved up for one key and already held another gets
    // that one again, which costs it nothing.
    if (affected.length > 0) await this.pushRecords(affected, movedUp);
  }

  /**
   * Each round's wait spread by +-20%: a fixed interval keeps the nodes of a DaemonSet, started
   * in the same minute, republishing (and running their provide queries) in the same second.
   */
  private scheduleReprovide(): void {
    if (this.stopped) return;
    this.reprovideTimer = setTimeout(() => {
      this.reprovide()
        .catch((err: Error) => this.log('warn', 'reprovide failed', { error: err.message }))
        .finally(() => this.scheduleReprovide());
    }, nextRoundDelay(this.cfg.reprovideIntervalMs));
    this.reprovideTimer.unref();
  }

  /**
   * Our own republish: refreshes our records in our store (so kad-dht's reprovider, which
   * would query once per key, never finds them due) and sends them to the current holders.
   */
  private async reprovide(): Promise<void> {
    if (this.stopped || this.advertised.size === 0) return;
    const cids = [...this.advertised.keys()].map((c) => CID.parse(c));
    for (const cid of cids) await this.dht.providers.addProvider(cid, this.node.peerId);
    if (this.dht.routingTable.size === 0) return;
    const now = Date.now();
    for (const cid of cids) {
      const c = cid.toString();
      const key = this.advertised.get(c);
      if (!key || this.queue.has(c)) continue;
      if (republishFresh(this.publishedAt.get(c), now, this.cfg.providerTtlMs, this.cfg.reprovideIntervalMs)) {
        this.republishes.fresh++;
        continue;
      }
      this.republishes.sent++;
      this.queue.set(c, { key, cid, waiters: [], republish: true });
    }
    this.schedulePublish();
  }

  async withdraw(keys: string[]): Promise<{ withdrawn: number }> {
    const cids: CID[] = [];
    for (const key of keys) {
      const cid = keyToCid(key);
      const c = cid.toString();
      if (!this.advertised.delete(c)) continue;
      this.queriedAt.delete(c);
      this.publishedAt.delete(c);
      this.queue.delete(c);
      this.queryQueue.delete(c);
      this.unpublished.delete(c);
      await this.dht.providers.removeProvider(cid, this.node.peerId);
      cids.push(cid);
    }
    if (cids.length > 0) void this.announceWithdraw(cids);
    return { withdrawn: cids.length };
  }

  /** Tells record holders to drop our records: every connected peer, plus each key's closest peers. */
  private async announceWithdraw(cids: CID[]): Promise<void> {
    const targets = new Map<string, { peer: PeerId; cids: CID[] }>();
    const addTarget = (peer: PeerId, cid: CID) => {
      const id = peer.toString();
      if (id === this.node.peerId.toString()) return;
      let t = targets.get(id);
      if (!t) targets.set(id, (t = { peer, cids: [] }));
      if (!t.cids.includes(cid)) t.cids.push(cid);
    };
    for (const conn of this.node.getConnections()) for (const cid of cids) addTarget(conn.remotePeer, cid);
    // In a cluster larger than our connection budget, the record holders are the closest peers.
    if (this.dht.routingTable.size > this.node.getConnections().length) {
      for (const cid of cids) {
        try {
          for await (const ev of this.node.services.dht.getClosestPeers(cid.multihash.bytes, { signal: AbortSignal.timeout(10_000) })) {
            if (ev.name === 'FINAL_PEER') addTarget(ev.peer.id, cid);
          }
        } catch (err) {
          this.log('debug', 'closest-peer query for withdraw failed', { error: (err as Error).message });
        }
      }
    }
    const proto = withdrawProtocol(this.cfg.cluster);
    await Promise.all(
      [...targets.values()].map(async ({ peer, cids: list }) => {
        try {
          const stream = await this.node.dialProtocol(peer, proto, { signal: AbortSignal.timeout(5000) });
          await sendRecords(stream, list, AbortSignal.timeout(5000));
        } catch (err) {
          this.log('debug', 'withdraw not delivered', { peer: peer.toString(), error: (err as Error).message });
        }
      }),
    );
  }

  // ---- lookups ----

  async findProviders(key: string, count: number, deadlineMs: number, exclude?: string[]): Promise<LookupResult> {
    const t0 = performance.now();
    const r = await this.lookups.find(keyToCid(key).toString(), count, deadlineMs, exclude && exclude.length > 0 ? new Set(exclude) : undefined);
    // Cached answers too (local and network ones, and lookups joined to them, were screened
    // where they came from): a provider that died since it was cached goes at its first return.
    if (r.source === 'cache' && r.providers.some((p) => !p.connected)) {
      r.providers = await this.screen(r.providers);
      if (r.providers.length === 0 && r.outcome === 'found') r.outcome = 'notfound';
    }
    if (r.outcome !== 'found') {
      this.log('debug', 'lookup without providers', { key, outcome: r.outcome, source: r.source, ms: Math.round(performance.now() - t0), routingTable: this.dht.routingTable.size, peers: this.node.getConnections().length });
    }
    return r;
  }

  /**
   * What this node knew when a lookup of `key` failed: for the scale harness's failure
   * breakdown (which view, whether it holds the key's records, how many holders it thinks dead).
   */
  /** How many records of other nodes for a key this node's store holds. */
  async recordCount(key: string): Promise<number> {
    return (await this.dht.providers.getProviders(keyToCid(key))).filter((id) => !id.equals(this.node.peerId)).length;
  }

  async diagnose(key: string): Promise<Record<string, unknown>> {
    const cid = keyToCid(key);
    const target = kadIdOf(cid.multihash.bytes);
    const holders = this.holdersOf(target);
    const records = await this.recordCount(key);
    return {
      view: this.view(),
      settled: this.settledExact(),
      holder: this.isRecordHolder(cid.toString()),
      members: this.members.size,
      dnsOthers: this.dnsOthers.length,
      routingTable: this.dht.routingTable.size,
      connections: this.node.getConnections().length,
      records,
      ipHolders: this.ipHolders(target, IP_HOLDERS),
      holdersDead: holders.filter((h) => this.liveness.isDead(h.toString())).length,
      deadKnown: this.liveness.deadCount,
    };
  }

  reportFailure(peerId: string): void {
    if (this.node.getConnections().some((c) => c.remotePeer.toString() === peerId)) {
      // Connected yet failing over HTTP: probe rather than condemn.
      this.probing.delete(peerId);
      return;
    }
    this.liveness.markDead(peerId, 'reported');
  }

  private toProvider(id: PeerId, addrs: Multiaddr[]): ProviderPeer | undefined {
    const ep = registryEndpoint(addrs, this.cfg.registryPort);
    if (!ep) return undefined;
    return {
      peerId: id.toString(),
      host: ep.host,
      registryPort: ep.port,
      addrs: [...new Set(addrs.map((a) => a.toString().replace(/\/p2p\/[^/]+$/, '')))],
      connected: this.node.getConnections(id).length > 0,
    };
  }

  /** An IP runs another cluster (or no DHT): not a member, dialled last (see bootstrap.ts). */
  private markForeign(ip: string): void {
    this.foreignIps.set(ip, Date.now());
    this.foreignVersion++;
    this.bootstrapper.markForeign(ip);
  }

  /** Records another node sent by datagram (datagram.ts checked cluster, membership, source). */
  private async takeRecords(r: DatagramRecords): Promise<number> {
    let id: PeerId;
    try {
      id = peerIdFromString(r.provider);
    } catch {
      return 0;
    }
    if (id.equals(this.node.peerId)) return 0;
    const addrs = r.addrs.flatMap((a) => {
      try {
        return [multiaddr(a)];
      } catch {
        return [];
      }
    });
    // Its addresses (the registry's among them), so this node can hand the record out.
    await this.node.peerStore.merge(id, { multiaddrs: addrs }).catch(() => {});
    let n = 0;
    for (const mh of r.keys) {
      let cid: CID;
      try {
        cid = multihashToCid(mh);
      } catch {
        continue;
      }
      await this.dht.providers.addProvider(cid, id);
      this.lookups.forgetMiss(cid.toString());
      n++;
    }
    this.counters.recordsReceived += n;
    return n;
  }

  /** Our addresses as a datagram's records carry them: those another node at `ip` can reach. */
  private addrsFor(ip: string): string[] {
    const loop = isLoopback(ip);
    return this.node.getMultiaddrs().flatMap((a) => {
      const t = parseTcpAddr(a);
      return t && isLoopback(t.ip) === loop ? [a.toString().replace(/\/p2p\/[^/]+$/, '')] : [];
    });
  }

  /** The providers this node holds a record of for a key (not itself), with the addresses it knows. */
  private async records(cid: CID): Promise<Array<{ id: PeerId; addrs: Multiaddr[] }>> {
    const out: Array<{ id: PeerId; addrs: Multiaddr[] }> = [];
    for (const id of await this.dht.providers.getProviders(cid)) {
      if (id.equals(this.node.peerId)) continue;
      // No addresses known for it: nothing to hand out (the network query may bring some).
      const addrs = await this.node.peerStore.get(id).then((p) => p.addresses.map((a) => a.multiaddr), () => []);
      if (addrs.length > 0) out.push({ id, addrs });
    }
    return out;
  }

  /** Records this node holds for a key (multihash), for a datagram answer: live providers. */
  private async heldProviders(mh: Uint8Array): Promise<Array<{ id: string; addrs: string[] }>> {
    const held = await this.records(multihashToCid(mh));
    return held.flatMap((r) => (this.liveness.isDead(r.id.toString()) ? [] : [{ id: r.id.toString(), addrs: r.addrs.map(String) }]));
  }

  private async localProviders(c: string): Promise<ProviderPeer[]> {
    const held = await this.records(CID.parse(c));
    return this.screen(held.flatMap((r) => this.toProvider(r.id, r.addrs) ?? []));
  }

  /**
   * Providers we hold no connection to and have not seen alive lately are knocked on (a TCP
   * connect to their p2p port) before they are handed out, waiting at most SCREEN_WAIT_MS:
   * a dead node is then dropped at its first lookup, not after it (each node learns deaths
   * on its own, and without this the first lookup after a death returned the dead provider).
   */
  private async screen(providers: ProviderPeer[]): Promise<ProviderPeer[]> {
    const now = Date.now();
    const out = await Promise.all(
      providers.map(async (p): Promise<ProviderPeer | undefined> => {
        if (p.connected || this.liveness.isDead(p.peerId)) return p;
        const seen = this.verifiedAt.get(p.peerId);
        if (seen !== undefined && now - seen < this.cfg.deadPeerTimeoutMs / 3) return p;
        let knocked = this.knocks.get(p.peerId);
        if (!knocked) {
          const addrs = p.addrs.map((a) => multiaddr(a));
          knocked = this.knock(peerIdOf(p.peerId), addrs, Math.floor(Math.max(1000, Math.min(5000, this.cfg.deadPeerTimeoutMs / 3)))).then((v) => {
            this.knocks.delete(p.peerId);
            this.judge(p.peerId, v);
            return v;
          });
          this.knocks.set(p.peerId, knocked);
        }
        // setImmediate after the timer: on a lagging event loop the refusal (an I/O event) is
        // taken in before the wait is given up.
        const v = await Promise.race([knocked, new Promise<'pending'>((r) => setTimeout(() => setImmediate(() => r('pending')), SCREEN_WAIT_MS).unref())]);
        return v === 'dead' || this.liveness.isDead(p.peerId) ? undefined : p;
      }),
    );
    return out.filter((p): p is ProviderPeer => p !== undefined);
  }

  /** A key's record holders among the members we know (meaningful with an exact view). */
  private holdersOf(target: Uint8Array): PeerId[] {
    return this.closestMembers(target, this.holderCount());
  }

  /**
   * How many peers hold each record: every member in a small (meshed) cluster, where that costs
   * one message per peer and makes every lookup local; Kademlia's k beyond.
   */
  private holderCount(): number {
    return this.meshEligible() ? Math.max(K, this.members.size) : K;
  }

  private kadIdOfPeer(id: PeerId): Uint8Array {
    return this.members.get(id.toString())?.kadId ?? kadIdOf(id.toMultihash().bytes);
  }

  /**
   * Whether this node is among a key's k record holders, by an exact view of the cluster: then
   * every provider sent us its record, and our store's "none" is the cluster's.
   */
  private isRecordHolder(c: string): boolean {
    if (!this.settledExact()) return false;
    if (this.meshEligible()) return true;
    const target = kadIdOf(CID.parse(c).multihash.bytes);
    const holders = this.holdersOf(target);
    if (holders.length < K) return true;
    return compareDistance(this.selfKadId, this.kadIdOfPeer(holders[holders.length - 1]), target) < 0;
  }

  /**
   * The IPs of the DNS answer whose hash is closest to a key, nearest first (ours excluded):
   * record holders every node computes alike from the same answer. Empty in a meshed cluster
   * (every member holds everything there), without DNS, or with an answer that may be cut.
   */
  private ipHolders(target: Uint8Array, count: number, index: IpHolderIndex = this.ipIndex): string[] {
    if (index.size === 0 || this.meshEligible()) return [];
    const self = this.selfIps();
    return index.nearest(target, count).filter((ip) => !self.has(ip));
  }

  /** Downloads in flight that this node, as a key's claim holder, knows of (claims.ts). */
  readonly claims = new FetchClaims();
  /** Our claims and the holder that granted each (key: multihash base64url), to release them. */
  private readonly ownClaims = new Map<string, { ip: string | null; at: number }>();

  /**
   * The member whose IP hashes closest to a key, ourselves included: every node computes the
   * same one from the same DNS answer, so it can serialise who fetches the key first. Dead
   * members are passed over (their claims went with them).
   */
  private claimHolder(target: Uint8Array): { ip: string; self: boolean } | undefined {
    const [ip] = this.ipIndex.nearest(target, 1, (x) => {
      const id = this.peerByIp.get(x);
      return id !== undefined && this.liveness.isDead(id);
    });
    return ip === undefined ? undefined : { ip, self: this.selfIps().has(ip) };
  }

  /** Nobody provides `key`: is another node fetching it already, or do we (see claims.ts)? */
  async claimFetch(key: string, deadlineMs: number): Promise<FetchClaimResult> {
    const cid = keyToCid(key);
    const mh = Buffer.from(cid.multihash.bytes).toString('base64url');
    const holder = this.claimHolder(kadIdOf(cid.multihash.bytes));
    if (!holder) return { kind: 'none' };
    let answer: ClaimAnswer | undefined;
    if (holder.self) {
      answer = this.claims.ask(mh, { id: this.node.peerId.toString(), addrs: this.addrsFor(holder.ip) });
    } else {
      answer = await this.datagrams.claim(holder.ip, cid.multihash.bytes, this.addrsFor(holder.ip), deadlineMs);
    }
    if (!answer) return { kind: 'none' };
    if (answer.go) {
      if (this.ownClaims.size > 10_000) this.ownClaims.clear();
      this.ownClaims.set(mh, { ip: holder.self ? null : holder.ip, at: Date.now() });
      return { kind: 'go' };
    }
    let id: PeerId;
    try {
      id = peerIdFromString(answer.at.id);
    } catch {
      return { kind: 'none' };
    }
    const addrs = answer.at.addrs.flatMap((a) => {
      try {
        return [multiaddr(a)];
      } catch {
        return [];
      }
    });
    const p = this.toProvider(id, addrs);
    if (!p || this.liveness.isDead(p.peerId)) return { kind: 'none' };
    return { kind: 'fetching', provider: p };
  }

  /** Our claim of `key` is over (the download did not start, or the content is here now). */
  async releaseFetch(key: string): Promise<{ released: boolean }> {
    const cid = keyToCid(key);
    const mh = Buffer.from(cid.multihash.bytes).toString('base64url');
    const own = this.ownClaims.get(mh);
    if (!own) return { released: false };
    this.ownClaims.delete(mh);
    if (own.ip === null) return { released: this.claims.release(mh, this.node.peerId.toString()) };
    return { released: await this.datagrams.release(own.ip, cid.multihash.bytes, DATAGRAM_ACK_MS) };
  }

  /** Peers whose connection the bound closed to make room, with when: alive, not probed. */
  readonly evicted = new Map<string, number>();

  /** Whether `peer` was seen speaking another cluster's protocol lately. */
  isForeign(peer: PeerId): boolean {
    return this.foreignPeers.has(peer.toString());
  }

  /** Whether `c` goes to one of our ring neighbours (by its source or the member's listen addresses). */
  isRingNeighbour(c: Connection): boolean {
    if (this.ringSet.size === 0) return false;
    const ip = parseTcpAddr(c.remoteAddr)?.ip;
    if (ip !== undefined && this.ringSet.has(ip)) return true;
    return this.members.get(c.remotePeer.toString())?.ips.some((x) => this.ringSet.has(x)) ?? false;
  }

  /** A peer id for an IP if a member announced it, else the bare address (the dial learns the id). */
  private ipTarget(ip: string): PeerId | Multiaddr {
    const id = this.peerByIp.get(ip);
    const m = id ? this.members.get(id) : undefined;
    if (m && m.ips.includes(ip)) return m.id;
    return multiaddr(`/ip${ip.includes(':') ? 6 : 4}/${ip}/tcp/${this.cfg.listenPort}`);
  }

  /**
   * Our records for `cids` to `ip` in one datagram each way, no connection (at the bound a dial
   * would close another connection): whether the node there took them all.
   */
  private async provideByDatagram(ip: string, cids: CID[]): Promise<boolean> {
    if (!this.datagrams.running) return false;
    const taken = await this.datagrams.provide(ip, this.addrsFor(ip), cids.map((c) => c.multihash.bytes), DATAGRAM_ACK_MS);
    return taken === cids.length;
  }

  /**
   * Sends our records for `cids` to their IP holders (only those in `onlyIps` when given).
   * Returns how many IP holders took each CID (string).
   */
  private async pushToIpHolders(cids: CID[], onlyIps?: ReadonlySet<string>): Promise<Map<string, number>> {
    const took = new Map<string, number>();
    const taken = (list: CID[]) => {
      for (const cid of list) took.set(cid.toString(), (took.get(cid.toString()) ?? 0) + 1);
    };
    const byIp = new Map<string, CID[]>();
    for (const cid of cids) {
      for (const ip of this.ipHolders(kadIdOf(cid.multihash.bytes), IP_HOLDERS)) {
        if (onlyIps && !onlyIps.has(ip)) continue;
        let list = byIp.get(ip);
        if (!list) byIp.set(ip, (list = []));
        list.push(cid);
      }
    }
    if (byIp.size === 0) return took;
    const proto = provideProtocol(this.cfg.cluster);
    let todo = [...byIp];
    // As in pushRecords: a busy holder gets two more tries, a little later (a holder left
    // without our record cannot answer the lookups that ask it).
    for (let attempt = 1; todo.length > 0 && !this.stopped; attempt++) {
      const failed: typeof todo = [];
      let next = 0;
      const sender = async (): Promise<void> => {
        while (next < todo.length && !this.stopped) {
          const [ip, list] = todo[next++];
          const target = this.ipTarget(ip);
          const warm = !isMultiaddr(target) && this.node.getConnections(target).length > 0;
          // No connection: the records go by datagram (no dial, no handshake), and only if the
          // holder does not acknowledge them all, over a connection.
          if (!warm && this.datagrams.running) {
            if (await this.provideByDatagram(ip, list)) {
              this.counters.batchesSent++;
              taken(list);
              continue;
            }
            // It answered that it runs another cluster: no holder of ours, nothing to dial.
            if (this.foreignIps.has(ip)) continue;
          }
          try {
            const conn = await this.node.dial(target, { signal: AbortSignal.timeout(5000) });
            for (let i = 0; i < list.length; i += MAX_BATCH) {
              const stream = await conn.newStream(proto, { signal: AbortSignal.timeout(5000) });
              await sendRecords(stream, list.slice(i, i + MAX_BATCH), AbortSignal.timeout(10_000));
              this.counters.batchesSent++;
            }
            taken(list);
          } catch (err) {
            this.counters.batchesFailed++;
            failed.push([ip, list]);
            this.log('debug', 'record batch to IP holder not delivered', { ip, records: list.length, attempt, error: (err as Error).message });
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(PROVIDE_CONCURRENCY, todo.length) }, sender));
      // Only to IPs still listed: a departed one is no holder any more.
      const listed = new Set(this.dnsAll);
      todo = failed.filter(([ip]) => listed.has(ip));
      if (todo.length === 0) break;
      if (attempt >= 3) {
        // Still not taken (at a cold start of hundreds of nodes, a holder can be busy for a
        // minute): left to the status timer's redelivery, every few seconds, until it is.
        // Measured at N = 300: failed lookups found the record on 0-5 of the key's 6 IP holders.
        for (const [ip, list] of todo) keepUndelivered(this.undeliveredIp, ip, list);
        break;
      }
      await new Promise((r) => setTimeout(r, 1000 * attempt).unref());
    }
    return took;
  }

  /** The DNS answer changed: IPs that became holders of our keys get those records now. */
  private async ipRehome(before: IpHolderIndex, after: IpHolderIndex): Promise<void> {
    if (this.advertised.size === 0 || this.stopped) return;
    const cids = [...this.advertised.keys()].map((c) => CID.parse(c));
    // The first usable answer: records published before it reached no IP holder.
    if (before.size === 0) {
      await this.pushToIpHolders(cids);
      return;
    }
    const old = new Set(before.answer);
    const added = after.answer.some((ip) => !old.has(ip));
    const now = new Set(after.answer);
    const gone = before.answer.some((ip) => !now.has(ip));
    if (!added && !gone) return;
    // A departure moves the next IP up into each key's holders; an arrival may be a holder itself.
    // Sending to the current holders that were not holders under the old answer covers both.
    const movedIn = new Set<string>();
    for (const cid of cids) {
      const target = kadIdOf(cid.multihash.bytes);
      const prev = new Set(this.ipHolders(target, IP_HOLDERS, before));
      for (const ip of this.ipHolders(target, IP_HOLDERS, after)) if (!prev.has(ip)) movedIn.add(ip);
    }
    if (movedIn.size > 0) await this.pushToIpHolders(cids, movedIn);
  }

  /** The connected cluster peers closest to a Kademlia id, nearest first. */
  private connectedClosest(target: Uint8Array, count: number): PeerId[] {
    const seen = new Set<string>();
    const list: Array<{ id: PeerId; kadId: Uint8Array }> = [];
    for (const conn of this.node.getConnections()) {
      const key = conn.remotePeer.toString();
      const m = this.members.get(key);
      if (!m || seen.has(key)) continue;
      seen.add(key);
      list.push(m);
    }
    list.sort((a, b) => compareDistance(a.kadId, b.kadId, target));
    return list.slice(0, count).map((m) => m.id);
  }

  /**
   * Providers from the network: first the few connected peers closest to the key, asked
   * directly (a warm connection: one round trip, no dial), then, if they had nothing or have not
   * answered within DIRECT_GRACE_MS, kad-dht's query, which dials its way to the key's closest
   * peers. Each of its hops costs a dial and a handshake on both sides; on busy nodes (the scale
   * test, N=50 during churn) those used up the 3 s deadline after 1-5 answers.
   */
  private async *networkProviders(c: string, signal: AbortSignal, stats: { queried: number }): AsyncIterable<ProviderPeer[]> {
    const cid = CID.parse(c);
    const target = kadIdOf(cid.multihash.bytes);
    // With a complete view, the record holders are known: when enough of them answer "none",
    // nobody has the key, and the query (which would go on to ask every other peer) ends.
    // Only with an exact, settled view: a 'near' one may name holders a new publisher has not
    // reached yet, and two of those saying "none" would be a wrong miss.
    const holders = this.settledExact() ? this.holdersOf(target) : undefined;
    const holderIds = holders ? new Set(holders.map(String)) : undefined;
    const quorum = holders ? Math.min(MISS_QUORUM, holders.length) : Infinity;
    let negatives = 0;
    const batches: ProviderPeer[][] = [];
    let wake: (() => void) | undefined;
    const notify = () => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    let finalMiss = false;
    let running = 0;
    let failure: Error | undefined;
    const answered = new Set<string>();
    const take = (providers: Array<{ id: PeerId; multiaddrs: Multiaddr[] }>) => {
      const batch: ProviderPeer[] = [];
      for (const info of providers) {
        if (info.id.equals(this.node.peerId)) continue;
        const p = this.toProvider(info.id, info.multiaddrs);
        if (p) batch.push(p);
      }
      if (batch.length > 0) batches.push(batch);
      notify();
    };
    const response = (from: PeerId, providers: Array<{ id: PeerId; multiaddrs: Multiaddr[] }>) => {
      if (from.equals(this.node.peerId)) return;
      const id = from.toString();
      // The DHT query may ask a peer we asked directly: one answer counts once.
      if (answered.has(id)) return;
      answered.add(id);
      stats.queried++;
      if (providers.length > 0) take(providers);
      else if (holderIds?.has(id) && ++negatives >= quorum) {
        finalMiss = true;
        notify();
      }
    };
    const track = (work: Promise<void>) => {
      running++;
      void work.then(
        () => {},
        (err: Error) => {
          if (!signal.aborted) failure ??= err;
        },
      ).finally(() => {
        running--;
        notify();
      });
    };
    const ask = (peer: PeerId, done?: () => void) => {
      this.lookupSteps.streamAsks++;
      track(
        (async () => {
          try {
            for await (const ev of this.dht.network.sendRequest(peer, { type: MessageType.GET_PROVIDERS, key: cid.multihash.bytes }, { signal })) {
              if (ev.name === 'PEER_RESPONSE') response(ev.from, ev.providers);
            }
          } finally {
            done?.();
          }
        })(),
      );
    };
    // Where members' datagrams arrive, an IP holder that has not answered yet is busy, not
    // unreachable: at N = 1,000 on loaded hosts, dialling it and starting the DHT query put
    // more dials and handshakes on the same busy hosts (357 and 124 in 400 lookups). So a
    // silent holder gets its next-closest IP holder asked by datagram instead,
    // and the query waits until some holder has answered (without enough) or all went silent.
    const patient = this.datagrams.running && this.datagrams.heardWithin(DATAGRAM_HEARD_MS);
    const first = this.connectedClosest(target, DIRECT_ASKS);
    let firstPending = first.length;
    for (const peer of first) {
      // Where datagrams work, by datagram: a kad GET_PROVIDERS costs both sides a stream, and
      // its answer names 20 closer peers, each merged into the asker's peer store, all unused
      // unless the DHT query runs (three streams and up to 60 merges per lookup).
      const ip = patient ? this.members.get(peer.toString())?.ips[0] : undefined;
      if (!ip) {
        ask(peer, () => firstPending--);
        continue;
      }
      this.lookupSteps.datagramAsks++;
      track(
        this.datagrams.ask(ip, cid.multihash.bytes, this.cfg.lookupTimeoutMs, signal).then((a) => {
          if (a) this.datagramAnswer(a, response);
          firstPending--;
        }),
      );
    }
    // Unconnected IP holders are dialled only below the connection bound: above it libp2p keeps
    // the new connection (its pruning spares connections with streams), and closing it again
    // made the peers re-dial (peer lost: bootstrap, probes). A datagram needs no connection, so
    // they are asked that way first, at the bound too, and dialled if no answer comes soon.
    const roomy = this.node.getConnections().length < this.cfg.maxConnections;
    const dialAsk = (t: PeerId | Multiaddr) => {
      this.lookupSteps.holderDials++;
      if (!isMultiaddr(t)) return ask(t, () => firstPending--);
      // Not known by id yet: the dial by address learns it.
      track(
        this.node.dial(t, { signal }).then(
          (conn) => {
            if (!answered.has(conn.remotePeer.toString())) ask(conn.remotePeer, () => firstPending--);
            else firstPending--;
          },
          () => {
            firstPending--;
          },
        ),
      );
    };
    const holderIps = this.ipHolders(target, IP_HOLDERS);
    let nextHolder = 0;
    // Holder asks waited on (connected ones, and datagram ones when patient), and their answers.
    let holderPending = 0;
    let holderAnswers = 0;
    let datagramsSent = 0;
    // IP holders listed long enough that every provider has sent them its record, and that
    // answered with none: at IP_MISS_QUORUM the key is nowhere, and the lookup ends as a miss
    // instead of starting the DHT query (which asks a few dozen peers to learn the same). A pull
    // of an image nobody has yet is all misses, on every node at once.
    let ipNegatives = 0;
    const settledBefore = Date.now() - IP_HOLDER_SETTLE_INTERVALS * this.cfg.bootstrapIntervalMs;
    const datagramAsk = (ip: string) => {
      datagramsSent++;
      firstPending++;
      if (patient) holderPending++;
      this.lookupSteps.datagramAsks++;
      let settled = false;
      const settle = () => {
        if (settled) return;
        settled = true;
        firstPending--;
        if (patient) holderPending--;
      };
      const t = this.ipTarget(ip);
      let movedOn = false;
      const moveOn = () => {
        if (movedOn || settled || signal.aborted) return;
        movedOn = true;
        if (patient) {
          // Still waiting on this one: its answer counts when it comes.
          askHolder(true);
          return;
        }
        settle();
        if (roomy) {
          firstPending++;
          dialAsk(t);
        }
      };
      const fallback = setTimeout(moveOn, DATAGRAM_WAIT_MS);
      track(
        this.datagrams.ask(ip, cid.multihash.bytes, this.cfg.lookupTimeoutMs, signal).then((a) => {
          clearTimeout(fallback);
          if (!a) {
            // No answer before the wait was over: the datagram could not be sent (a firewall's
            // EPERM, no route). That holder is out as surely as a silent one, and known sooner:
            // the next is asked now, not never (the wait's timer is gone).
            moveOn();
          } else {
            holderAnswers++;
            // Providers this node already knows dead (a refused probe, a lost heartbeat, gone
            // from DNS) are no providers: content only the dead held is a miss too.
            const none = a.providers.every((p) => this.knownDead(p.id, p.addrs));
            if (none && (this.dnsListedSince.get(ip) ?? Infinity) <= settledBefore && ++ipNegatives >= IP_MISS_QUORUM) {
              this.lookupSteps.ipQuorumMisses++;
              finalMiss = true;
            }
            this.datagramAnswer(a, response);
          }
          settle();
        }),
      );
    };
    // The next IP holder not asked yet: on a warm connection directly, else by datagram (or a dial).
    const askHolder = (retry: boolean): boolean => {
      while (nextHolder < holderIps.length) {
        const ip = holderIps[nextHolder++];
        const t = this.ipTarget(ip);
        // Asked already among the nearest connected peers.
        if (!isMultiaddr(t) && first.some((p) => p.equals(t))) continue;
        // Connected: over the connection, unless datagrams work (see the first asks above).
        if (!patient && !isMultiaddr(t) && this.node.getConnections(t).length > 0) {
          if (retry) this.lookupSteps.holderRetries++;
          firstPending++;
          holderPending++;
          let done = false;
          ask(t, () => {
            done = true;
            firstPending--;
            holderPending--;
            if (answered.has(t.toString())) holderAnswers++;
          });
          // A hung holder keeps its connection open: the next one is asked as for a datagram.
          setTimeout(() => !done && !signal.aborted && askHolder(true), DATAGRAM_WAIT_MS);
          return true;
        }
        if (this.datagrams.running) {
          if (retry) this.lookupSteps.holderRetries++;
          datagramAsk(ip);
          return true;
        }
        if (!roomy) continue;
        firstPending++;
        dialAsk(t);
        return true;
      }
      return false;
    };
    for (let i = 0; i < IP_ASKS && askHolder(false); i++);
    let queryStarted = false;
    // Nothing asked that could answer soon (dials at most): the query need not wait.
    let graceOver = first.length === 0 && holderPending === 0 && datagramsSent === 0;
    const startQuery = () => {
      if (queryStarted || signal.aborted || finalMiss) return;
      queryStarted = true;
      this.lookupSteps.dhtQueries++;
      track(
        (async () => {
          for await (const ev of this.node.services.dht.findProviders(cid, { signal })) {
            if (ev.name === 'PEER_RESPONSE') response(ev.from, ev.providers);
            // A peer's providers came with its PEER_RESPONSE; only our own store's come as PROVIDER alone.
            else if (ev.name === 'PROVIDER' && ev.from.equals(this.node.peerId)) take(ev.providers);
            if (finalMiss) return;
          }
        })(),
      );
    };
    const grace = setTimeout(() => {
      graceOver = true;
      notify();
    }, DIRECT_GRACE_MS);
    const onAbort = () => notify();
    signal.addEventListener('abort', onAbort);
    try {
      for (;;) {
        while (batches.length > 0) {
          const screened = await this.screen(batches.shift()!);
          if (screened.length > 0) yield screened;
        }
        if (finalMiss || signal.aborted) return;
        // The nearest peers had nothing: no need to wait out the grace period. After it, the
        // query waits only for IP holders none of which has answered yet (slow, not wrong).
        if (!queryStarted && (firstPending === 0 || (graceOver && !(holderPending > 0 && holderAnswers === 0)))) {
          startQuery();
          continue;
        }
        if (running === 0) {
          if (failure) throw failure;
          return;
        }
        await new Promise<void>((resolve) => (wake = resolve));
      }
    } finally {
      clearTimeout(grace);
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** Feeds a holder's datagram answer to a lookup as if it had come over libp2p. */
  private datagramAnswer(a: DatagramAnswer, response: (from: PeerId, providers: Array<{ id: PeerId; multiaddrs: Multiaddr[] }>) => void): void {
    let from: PeerId;
    try {
      from = peerIdFromString(a.from);
    } catch {
      return;
    }
    const providers: Array<{ id: PeerId; multiaddrs: Multiaddr[] }> = [];
    for (const p of a.providers) {
      try {
        providers.push({ id: peerIdFromString(p.id), multiaddrs: p.addrs.map((x) => multiaddr(x)) });
      } catch {
        // A malformed entry: the rest of the answer still counts.
      }
    }
    response(from, providers);
  }

  /** A provider a holder named that this node knows dead: unconnected, and condemned or gone from DNS. */
  private knownDead(id: string, addrs: string[]): boolean {
    try {
      return !this.liveVerdict(id, addrs).live;
    } catch {
      return false; // a malformed entry proves nothing
    }
  }

  /** What this node knows of a provider now: connected, or not condemned and still in DNS. */
  private liveVerdict(id: string, addrs: string[]): { live: boolean; connected: boolean } {
    const connected = this.node.getConnections(peerIdOf(id)).length > 0;
    return { live: this.liveness.isLive(id, hostsOf(addrs.map((a) => multiaddr(a))), connected), connected };
  }

  private isLive(p: ProviderPeer): boolean {
    const { live, connected } = this.liveVerdict(p.peerId, p.addrs);
    // Unconnected: find out in the background, with the addresses the record came with (the
    // peer store may know none). Dead ones are probed again too, more slowly, so a verdict
    // that was wrong (a busy peer) heals itself.
    // A knock that just answered (screen) or is under way says as much as a dial would, and a
    // dial costs a handshake on both sides plus, at the bound, another peer's connection.
    const seen = this.verifiedAt.get(p.peerId);
    const fresh = seen !== undefined && Date.now() - seen < this.cfg.deadPeerTimeoutMs / 3;
    if (!connected && !fresh && !this.knocks.has(p.peerId)) {
      const addrs = p.addrs.flatMap((a) => {
        const ma = multiaddr(a);
        const t = parseTcpAddr(ma);
        return t && !t.http ? [ma.encapsulate(`/p2p/${p.peerId}`)] : [];
      });
      setImmediate(() => this.probe(p.peerId, addrs, live ? 1 : 3));
    }
    return live;
  }

  /**
   * TCP connects to a peer's p2p addresses, closed at once: 'alive' if any answers, 'dead' if
   * every one refused or is unreachable, else 'timeout' (or 'unknown' without an address).
   */
  private async knock(id: PeerId, addrs: Multiaddr[], timeoutMs: number): Promise<'alive' | 'dead' | 'timeout' | 'unknown'> {
    let list = addrs;
    if (list.length === 0) list = await this.node.peerStore.get(id).then((p) => p.addresses.map((a) => a.multiaddr), () => []);
    const targets = [...new Map(list.flatMap((a) => {
      const t = parseTcpAddr(a);
      return t && !t.http ? [[`${t.ip}:${t.port}`, t] as const] : [];
    })).values()];
    if (targets.length === 0) return 'unknown';
    const one = (host: string, port: number) =>
      new Promise<'alive' | 'dead' | 'timeout'>((resolve) => {
        const sock = net.connect({ host, port });
        const done = (v: 'alive' | 'dead' | 'timeout') => {
          clearTimeout(timer);
          sock.destroy();
          resolve(v);
        };
        const timer = setTimeout(() => done('timeout'), timeoutMs);
        sock.once('connect', () => done('alive'));
        sock.once('error', (err: NodeJS.ErrnoException) => done(/ECONNREFUSED|EHOSTUNREACH|ENETUNREACH/.test(err.code ?? '') ? 'dead' : 'timeout'));
      });
    const verdicts = await Promise.all(targets.map((t) => one(t.ip, t.port)));
    if (verdicts.includes('alive')) return 'alive';
    return verdicts.every((v) => v === 'dead') ? 'dead' : 'timeout';
  }

  private judge(peerId: string, verdict: 'alive' | 'dead' | 'timeout' | 'unknown'): void {
    if (verdict === 'alive') {
      this.verifiedAt.set(peerId, Date.now());
      if (this.verifiedAt.size > 10_000) this.verifiedAt.clear();
      this.strikes.delete(peerId);
      const wasDead = this.liveness.isDead(peerId);
      this.liveness.markAlive(peerId);
      // Main's copy must not go on treating it as dead (it answers misses for dead providers).
      if (wasDead) this.feed?.peerChanged(peerId);
      return;
    }
    // A knock that times out says little (a full accept queue on a busy peer): no strike. Only
    // a refusal is a verdict; a silent dead peer is left to the dial probes, DNS and fetches.
    if (verdict !== 'dead') return;
    this.strikes.delete(peerId);
    this.liveness.markDead(peerId, 'dial-failed');
  }

  /**
   * Dials a peer we are not connected to (knocks on its port instead with `knockOnly` or near
   * the bound); a failure marks it dead. Rate-limited per peer.
   */
  private probe(peerId: string, addrs: Multiaddr[] = [], spacing = 1, knockOnly = false): void {
    if (this.stopped) return;
    const now = Date.now();
    const last = this.probing.get(peerId);
    if (last !== undefined && now - last < (spacing * this.cfg.deadPeerTimeoutMs) / 3) return;
    const id = peerIdOf(peerId);
    if (this.node.getConnections(id).length > 0) return;
    // Probes are background work: a handful at a time, never a dial storm.
    if (this.probesRunning >= MAX_PROBES) return;
    this.probing.set(peerId, now);
    if (this.probing.size > 4096) for (const [k, t] of this.probing) if (now - t > this.cfg.deadPeerTimeoutMs) this.probing.delete(k);
    const timeout = Math.floor(Math.max(1000, Math.min(5000, this.cfg.deadPeerTimeoutMs / 3)));
    this.probesRunning++;
    // Near the connection bound a libp2p dial would only evict another peer: knock on the TCP
    // port instead (refused or unreachable is a verdict; an answer means something listens).
    if (knockOnly || this.bound.used() >= this.cfg.maxConnections - 1) {
      void this.knock(id, addrs, timeout)
        .then((verdict) => this.judge(peerId, verdict))
        .finally(() => this.probesRunning--);
      return;
    }
    this.node.dial(addrs.length > 0 ? addrs : id, { signal: AbortSignal.timeout(timeout) }).finally(() => this.probesRunning--).then(
      () => {
        this.strikes.delete(peerId);
        this.liveness.markAlive(peerId);
      },
      (err: Error) => {
        if (this.node.getConnections(id).length > 0) return;
        // A refused or unreachable address is a verdict; a timeout may only be a busy peer (or a
        // busy us): two of those in a row, a third of the bound apart, are.
        const messages = [err.message, ...((err as Partial<AggregateError>).errors ?? []).map((e: Error) => e?.message ?? '')];
        const definitive = messages.some((m) => /ECONNREFUSED|EHOSTUNREACH|ENETUNREACH/.test(m));
        const strikes = (this.strikes.get(peerId) ?? 0) + 1;
        this.strikes.set(peerId, strikes);
        if (definitive || strikes >= 2) {
          this.strikes.delete(peerId);
          this.liveness.markDead(peerId, 'dial-failed');
        }
        this.log('debug', 'probe dial failed', { peer: peerId, error: err.message, strikes });
      },
    );
  }

  // ---- status ----

  /**
   * Our own IPs, kept for SELF_IPS_TTL_MS and dropped when libp2p's addresses change. Asked for
   * by every lookup (its IP holders), every record pushed and every bootstrap round; listening on
   * all interfaces (the chart's default) meant an os.networkInterfaces() each time, a netlink
   * dump that took 0.45 ms with two interfaces here, and a node with hostNetwork lists a veth per pod.
   */
  private selfIps(): ReadonlySet<string> {
    const now = Date.now();
    if (this.cachedSelfIps && now - this.cachedSelfIps.at < SELF_IPS_TTL_MS) return this.cachedSelfIps.ips;
    const ips = this.readSelfIps();
    this.cachedSelfIps = { ips, at: now };
    return ips;
  }

  private readSelfIps(): Set<string> {
    const ips = new Set<string>();
    if (this.cfg.advertiseIp) ips.add(this.cfg.advertiseIp);
    for (const ma of this.node.getMultiaddrs()) {
      const t = parseTcpAddr(ma);
      if (t) ips.add(t.ip);
    }
    if (this.cfg.listenHost === '' || this.cfg.listenHost === '0.0.0.0' || this.cfg.listenHost === '::') {
      for (const list of Object.values(os.networkInterfaces())) for (const a of list ?? []) ips.add(a.address);
    } else ips.add(this.cfg.listenHost);
    return ips;
  }

  private connectedIps(): Set<string> {
    const ips = new Set<string>();
    for (const c of this.node.getConnections()) {
      const t = parseTcpAddr(c.remoteAddr);
      if (t) ips.add(t.ip);
    }
    return ips;
  }

  /** Peers with an open connection. Not libp2p's getPeers(): it rebuilds a PeerId from its base58 string per peer, which every node paid every status interval (4% of an idle node's CPU at 1,000 nodes). */
  private peerCount(): number {
    const ids = new Set<string>();
    for (const c of this.node.getConnections()) ids.add(c.remotePeer.toString());
    return ids.size;
  }

  /** Our announced addresses, computed again only when libp2p says they changed. */
  private listenAddrs(): string[] {
    return (this.cachedListenAddrs ??= this.node.getMultiaddrs().map(String));
  }

  status(): P2PStatus {
    const peers = this.peerCount();
    const routingTable = this.dht.routingTable.size;
    const cfg = this.cfg;
    // Ready = connected to the cluster. A node whose DNS lists nobody else (and has no static
    // peers) is the whole cluster, which is ready too: a one-node cluster must serve.
    const alone = cfg.bootstrapPeers.length === 0 && (cfg.bootstrapDns.length === 0 || (this.bootstrapper.resolvedOnce && this.bootstrapper.members === 0));
    const ready = (peers > 0 && routingTable > 0) || (alone && peers === 0);
    return {
      peerId: this.node.peerId.toString(),
      cluster: cfg.cluster,
      ready,
      peers,
      routingTable,
      advertisedKeys: this.advertised.size,
      pendingProvides: this.queue.size + this.queryQueue.size + this.provideRunning,
      unpublishedKeys: this.unpublished.size,
      listenAddrs: this.listenAddrs(),
      dnsMembers: this.dnsMemberCount,
      view: this.view(),
    };
  }

  metrics(s: P2PStatus = this.status()): P2PMetricsSnapshot {
    const dns = this.dnsTimes;
    this.dnsTimes = { ok: [], failed: [] };
    return {
      peers: s.peers,
      routingTable: s.routingTable,
      advertisedKeys: s.advertisedKeys,
      bootstrapAttempts: { ok: this.counters.bootstrapOk, failed: this.counters.bootstrapFailed, ringOk: this.counters.ringOk, ringFailed: this.counters.ringFailed },
      recordBatches: { ok: this.counters.batchesSent, failed: this.counters.batchesFailed },
      recordsReceived: this.counters.recordsReceived,
      lookupSteps: { ...this.lookupSteps },
      provideQueries: { ...this.provideQueries },
      republishes: { ...this.republishes },
      heartbeats: { ...this.heartbeat.counters },
      tableRepairs: { ...this.tableRepairs },
      datagrams: { ...this.datagrams.counters },
      fetchClaims: { ...this.claims.counters },
      connectionBound: { ...this.bound.counters },
      dnsResolveSeconds: dns,
      eventLoopDelayMs: this.loopDelay(),
    };
  }

  /** Percentiles of the thread's loop delay over the last status interval: every request to this thread waits it. */
  private loopDelay(): { p50: number; p99: number; max: number } {
    const now = Date.now();
    // Read and reset at most once per interval, whichever of the thread's nodes asks.
    if (now - threadLoop.readAt >= STATUS_INTERVAL_MS / 2) {
      const h = threadLoop.histogram;
      // The histogram holds the time between samples: how late a sample ran is that less the period.
      const ms = (ns: number) => (Number.isFinite(ns) ? Math.max(0, ns / 1e6 - LOOP_SAMPLE_MS) : 0);
      threadLoop.last = h.count > 0 ? { p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max) } : { p50: 0, p99: 0, max: 0 };
      threadLoop.readAt = now;
      h.reset();
    }
    return threadLoop.last;
  }

  /**
   * Connected with an empty routing table: not ready, and no lookups beyond our own store.
   * kad-dht enters a peer through libp2p's topology notification once identify has described
   * it. At N = 1,000 cold starts (host loops 3-9 s late) nodes stayed like that for 30-60 s,
   * most of their connections never described: identify had given up (then after 5 s) and
   * libp2p does not run it again. A described member missing from the table is possible too
   * (libp2p reports a peer once per connected spell, and ends a spell only after a peer-store
   * read that may time out). So: members known to speak our DHT protocol are put in the table
   * by us, and a connection identify never described is identified again, once, after
   * IDENTIFY_RETRY_MS.
   */
  private async fillEmptyTable(): Promise<void> {
    const proto = dhtProtocol(this.cfg.cluster);
    for (const conn of this.node.getConnections()) {
      if (this.stopped || this.dht.routingTable.size > 0) return;
      if (conn.status !== 'open') continue;
      const peer = await this.node.peerStore.get(conn.remotePeer).catch(() => undefined);
      // (Protocols also enter the peer store when a stream of ours opens; the agent version only
      // from identify, which our nodes always send.)
      const described = peer?.metadata.has('AgentVersion') ?? false;
      if (peer?.protocols.includes(proto)) {
        try {
          await this.dht.routingTable.add(conn.remotePeer, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) });
          this.tableRepairs.added++;
          this.log('info', 'put a connected member in the empty routing table', { peer: conn.remotePeer.toString() });
        } catch (err) {
          this.log('debug', 'could not put a connected member in the routing table', { peer: conn.remotePeer.toString(), error: (err as Error).message });
        }
      } else if (!described && Date.now() - conn.timeline.open > IDENTIFY_RETRY_MS && !this.reidentified.has(conn)) {
        // (Described without our protocol: another cluster's, and the identify handler closes it.)
        this.reidentified.add(conn);
        this.tableRepairs.reidentified++;
        // Its result goes the usual way (peer:identify, the topology, our handler).
        void this.node.services.identify.identify(conn, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) }).catch((err: Error) => this.log('debug', 'identify again failed', { peer: conn.remotePeer.toString(), error: err.message }));
      }
    }
  }

  private pushStatus(): void {
    if (this.stopped) return;
    if (this.meshEligible() && this.view() !== 'exact') void this.meshDial();
    void this.redeliver('peers');
    void this.redeliver('ips');
    // Pruning walks every IP DNS ever listed (1,000 at 1,000 nodes): once a minute is plenty.
    if (this.statusTicks++ % 30 === 0) this.liveness.prune(this.cfg.providerTtlMs);
    this.feed?.tick();
    if (this.dht.routingTable.size === 0 && !this.fillingTable && this.node.getConnections().length > 0) {
      this.fillingTable = true;
      void this.fillEmptyTable().finally(() => (this.fillingTable = false));
    }
    const s = this.status();
    if (s.ready !== this.lastReady) {
      this.lastReady = s.ready;
      this.log('info', s.ready ? 'connected to the cluster' : 'not connected to the cluster', { peers: s.peers, routingTable: s.routingTable });
    }
    this.onStatus(s, this.metrics(s));
  }
}

/**
 * How often the loop delay is sampled. Every sample wakes the thread: ~0.1 ms of CPU here, so
 * 5 ms (as before) cost an otherwise idle p2p thread 14-16 ms of CPU per second, ten times the
 * protocol's own upkeep; 50 ms costs ~2 ms. The lookups' deadlines are hundreds of ms, and a
 * stall that long straddles a sample.
 */
const LOOP_SAMPLE_MS = 50;

/**
 * The event loop delay of this thread. One histogram per thread, not per node: every node of a
 * thread shares its loop (one node in production, hundreds in the scale harness, where a
 * histogram each meant hundreds of timers).
 */
const threadLoop = {
  histogram: monitorEventLoopDelay({ resolution: LOOP_SAMPLE_MS }),
  users: 0,
  readAt: 0,
  last: { p50: 0, p99: 0, max: 0 },
};

/** Adds CIDs a holder (`key`: peer id or IP) did not take to `map`, for redeliver(). */
function keepUndelivered(map: Map<string, Map<string, CID>>, key: string, cids: CID[]): void {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Map()));
  for (const cid of cids) set.set(cid.toString(), cid);
}

const peerIdCache = new Map<string, PeerId>();
/** PeerId objects from strings, cached: lookups check liveness per provider on the hot path. */
function peerIdOf(s: string): PeerId {
  let id = peerIdCache.get(s);
  if (!id) {
    id = peerIdFromString(s);
    if (peerIdCache.size > 10_000) peerIdCache.clear();
    peerIdCache.set(s, id);
  }
  return id;
}

// The libp2p node of the p2p thread: tcp + noise + yamux (+ an optional private-network key),
// identify, ping and a server-mode Kademlia DHT whose protocol id carries the cluster name.
// It owns advertising (a bounded provide queue), withdrawal, liveness and lookups; the Worker
// entry (worker.ts) only translates messages.

import os from 'node:os';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { identify, type Identify } from '@libp2p/identify';
import type { PeerId, PrivateKey } from '@libp2p/interface';
import { kadDHT, passthroughMapper, type KadDHT } from '@libp2p/kad-dht';
import { ping, type Ping } from '@libp2p/ping';
import { peerIdFromString } from '@libp2p/peer-id';
import { preSharedKey } from '@libp2p/pnet';
import { tcp } from '@libp2p/tcp';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import { createLibp2p, type Libp2p } from 'libp2p';
import { CID } from 'multiformats/cid';
import type {
  LookupResult,
  P2PMetricsSnapshot,
  P2PStatus,
  P2PWorkerConfig,
  ProviderPeer,
} from '../shared/messages.js';
import { Bootstrapper, DnsMembers } from './bootstrap.js';
import { keyToCid } from './keys.js';
import { Liveness } from './liveness.js';
import { Lookups } from './lookup.js';
import { hostsOf, isLoopback, parseTcpAddr, registryAnnounceFilter, registryEndpoint } from './peer-addr.js';
import { encodeWithdraw, handleWithdrawStream, withdrawProtocol } from './withdraw.js';

export type LogFn = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;

/** Provides running at once: enough to hide round trips, few enough to leave CPU for lookups. */
const PROVIDE_CONCURRENCY = 8;
const PROVIDE_TIMEOUT_MS = 30_000;
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
interface DhtInternals {
  providers: DhtProviders;
  routingTable: { size: number };
}
function dhtInternals(dht: KadDHT): DhtInternals {
  const d = dht as unknown as Partial<DhtInternals>;
  if (typeof d.providers?.getProviders !== 'function' || typeof d.providers.removeProvider !== 'function' || typeof d.routingTable?.size !== 'number') {
    throw new Error('@libp2p/kad-dht internals changed: providers store or routing table not found (pinned version 16.4.5 expected)');
  }
  return d as DhtInternals;
}

type Services = { dht: KadDHT; identify: Identify; ping: Ping };

interface ProvideJob {
  key: string;
  cid: CID;
  waiters: Array<() => void>;
}

export class P2PNode {
  private readonly liveness = new Liveness();
  private readonly lookups: Lookups;
  private readonly dht: DhtInternals;
  private readonly bootstrapper: Bootstrapper;
  /** Keys this node advertises, by CID string (the reprovider republishes these). */
  private readonly advertised = new Map<string, string>();
  private readonly queue = new Map<string, ProvideJob>();
  private provideRunning = 0;
  /** Keys provided while no peer was known: pushed again when the first peers appear. */
  private readonly unpublished = new Set<string>();
  private readonly probing = new Map<string, number>();
  private probesRunning = 0;
  /** Probes of a peer that timed out in a row. */
  private readonly strikes = new Map<string, number>();
  private readonly counters = { bootstrapOk: 0, bootstrapFailed: 0 };
  private dnsTimes = { ok: [] as number[], failed: [] as number[] };
  private dnsMemberCount = 0;
  private statusTimer: NodeJS.Timeout | undefined;
  private lastReady = false;
  private stopped = false;

  private constructor(
    private readonly cfg: P2PWorkerConfig,
    private readonly node: Libp2p<Services>,
    private readonly log: LogFn,
    private readonly onStatus: (s: P2PStatus, m: P2PMetricsSnapshot) => void,
  ) {
    this.dht = dhtInternals(node.services.dht);
    this.lookups = new Lookups({
      local: (k) => this.localProviders(k),
      network: (k, signal) => this.networkProviders(k, signal),
      isLive: (p) => this.isLive(p),
      routingTableSize: () => this.dht.routingTable.size,
      cacheTtlMs: cfg.lookupCacheTtlMs,
      negativeTtlMs: cfg.negativeCacheTtlMs,
      settleMs: LOOKUP_SETTLE_MS,
    });
    this.liveness.onDeath((id) => {
      this.lookups.forgetPeer(id);
      this.log('info', 'peer considered dead: no longer returned as a provider', { peer: id });
    });
    this.bootstrapper = new Bootstrapper({
      seed: node.peerId.toString(),
      selfIps: () => this.selfIps(),
      p2pPort: cfg.listenPort,
      maxConnections: cfg.maxConnections,
      intervalMs: cfg.bootstrapIntervalMs,
      dns: cfg.bootstrapDns ? new DnsMembers(cfg.bootstrapDns, cfg.dnsServers) : undefined,
      staticPeers: cfg.bootstrapPeers,
      connectedIps: () => this.connectedIps(),
      connectionCount: () => this.node.getConnections().length,
      dial: async (a) => {
        await this.node.dial(multiaddr(a), { signal: AbortSignal.timeout(5000) });
      },
      onDnsAnswer: (ips, seconds, ok) => {
        (ok ? this.dnsTimes.ok : this.dnsTimes.failed).push(seconds);
        if (ok) {
          this.dnsMemberCount = ips?.length ?? 0;
          this.liveness.setDnsMembers(ips);
        }
      },
      onAttempt: (ok, addr, err) => {
        if (ok) this.counters.bootstrapOk++;
        else {
          this.counters.bootstrapFailed++;
          this.log('debug', 'bootstrap dial failed', { addr, error: err?.message });
        }
      },
      log: (level, msg, fields) => this.log(level, msg, fields),
    });
  }

  static async create(
    cfg: P2PWorkerConfig,
    privateKey: PrivateKey,
    log: LogFn,
    onStatus: (s: P2PStatus, m: P2PMetricsSnapshot) => void,
  ): Promise<P2PNode> {
    const ipv6 = cfg.listenHost.includes(':');
    const host = cfg.listenHost || '0.0.0.0';
    const listen = `/ip${ipv6 ? 6 : 4}/${host}/tcp/${cfg.listenPort}`;
    const announce = cfg.advertiseIp ? [`/ip${cfg.advertiseIp.includes(':') ? 6 : 4}/${cfg.advertiseIp}/tcp/${cfg.listenPort}`] : [];
    // Keep loopback addresses only when the node listens on loopback on purpose.
    const keepLoopback = isLoopback(host) || (cfg.advertiseIp !== '' && isLoopback(cfg.advertiseIp));
    const probeMs = Math.max(500, Math.floor(cfg.deadPeerTimeoutMs / 3));
    const node = await createLibp2p<Services>({
      privateKey,
      start: false,
      nodeInfo: { userAgent: `peerpull (cluster ${cfg.cluster})` },
      addresses: { listen: [listen], announce, announceFilter: registryAnnounceFilter(cfg.registryPort, keepLoopback) },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      connectionProtector: cfg.clusterKey ? preSharedKey({ psk: swarmKey(cfg.clusterKey) }) : undefined,
      connectionManager: {
        maxConnections: cfg.maxConnections,
        // Not an allow list: allow-listed addresses bypass maxConnections and pruning, and in a
        // cluster every peer is in a private range. Raise the per-host rate and the pending
        // upgrade limit instead, so hundreds of nodes joining at once are not refused.
        inboundConnectionThreshold: Math.max(100, cfg.maxConnections),
        maxIncomingPendingConnections: Math.max(64, Math.ceil(cfg.maxConnections / 2)),
        maxParallelDials: 64,
        dialTimeout: 5000,
        addressDialTimeout: 3000,
        inboundUpgradeTimeout: 5000,
      },
      // Pings every connection a third of the dead-peer bound apart. The timeout is generous:
      // a lagging event loop must not look like a dead peer.
      connectionMonitor: {
        pingInterval: probeMs,
        // interval + timeout stays within the bound, and the timeout is never short: a ping
        // that a busy event loop answers late must not cost a connection (and a re-handshake).
        pingTimeout: { minTimeout: Math.floor(Math.min(cfg.deadPeerTimeoutMs / 2, 10_000)), maxTimeout: Math.floor(Math.min(cfg.deadPeerTimeoutMs / 2, 10_000)) },
      },
      services: {
        identify: identify(),
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
          reprovide: {
            // The sweep that republishes our records and deletes expired ones of others.
            interval: Math.max(1000, Math.min(60_000, Math.floor(cfg.reprovideIntervalMs / 2), Math.floor(cfg.providerTtlMs / 4))),
            validity: cfg.providerTtlMs,
            threshold: Math.max(0, cfg.providerTtlMs - cfg.reprovideIntervalMs),
            concurrency: PROVIDE_CONCURRENCY,
          },
        }),
      },
    });
    const self = new P2PNode(cfg, node, log, onStatus);
    await self.start();
    return self;
  }

  private async start(): Promise<void> {
    const n = this.node;
    await n.handle(
      withdrawProtocol(this.cfg.cluster),
      handleWithdrawStream(
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
    n.addEventListener('peer:connect', (e) => {
      this.liveness.markAlive(e.detail.toString());
      if (this.unpublished.size > 0) this.republishSoon();
    });
    n.addEventListener('peer:disconnect', (e) => {
      const id = e.detail.toString();
      this.bootstrapper.peerLost();
      // A node that died closes its sockets with it: find out now, not at the next lookup.
      setTimeout(() => this.probe(id), 300).unref();
    });
    n.addEventListener('peer:identify', (e) => {
      // A peer of another cluster (or no DHT at all) is useless and takes a connection slot.
      const { peerId, protocols, connection } = e.detail;
      if (!protocols.includes(dhtProtocol(this.cfg.cluster))) {
        this.log('info', 'closing connection to a peer outside this cluster', { peer: peerId.toString(), remote: connection.remoteAddr.toString() });
        void connection.close().catch(() => {});
      }
    });
    await n.start();
    this.bootstrapper.start();
    this.statusTimer = setInterval(() => this.pushStatus(), 2000);
    this.statusTimer.unref();
    this.log('info', 'p2p node started', { peerId: n.peerId.toString(), addrs: n.getMultiaddrs().map(String), cluster: this.cfg.cluster, private: this.cfg.clusterKey !== '' });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.bootstrapper.stop();
    if (this.statusTimer) clearInterval(this.statusTimer);
    this.queue.clear();
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
      if (wait) {
        const j = job;
        waits.push(new Promise<void>((resolve) => j.waiters.push(resolve)));
      }
    }
    this.pump();
    if (wait) await Promise.all(waits);
    return { queued };
  }

  private pump(): void {
    while (!this.stopped && this.provideRunning < PROVIDE_CONCURRENCY && this.queue.size > 0) {
      const [c, job] = this.queue.entries().next().value as [string, ProvideJob];
      this.queue.delete(c);
      this.provideRunning++;
      void this.provideOne(c, job).finally(() => {
        this.provideRunning--;
        for (const w of job.waiters) w();
        this.pump();
      });
    }
  }

  private async provideOne(c: string, job: ProvideJob): Promise<void> {
    if (!this.advertised.has(c)) return;
    let stored = 0;
    try {
      for await (const ev of this.node.services.dht.provide(job.cid, { signal: AbortSignal.timeout(PROVIDE_TIMEOUT_MS) })) {
        if (ev.name === 'PEER_RESPONSE' && ev.messageName === 'ADD_PROVIDER') stored++;
      }
    } catch (err) {
      this.log('debug', 'provide failed', { key: job.key, error: (err as Error).message });
    }
    if (stored === 0) this.unpublished.add(c);
    else this.unpublished.delete(c);
  }

  private republishTimer: NodeJS.Timeout | undefined;
  private republishSoon(): void {
    if (this.republishTimer) return;
    // Wait a moment for identify and the routing table to take in the new peers.
    this.republishTimer = setTimeout(() => {
      this.republishTimer = undefined;
      if (this.dht.routingTable.size === 0) return;
      const keys = [...this.unpublished].flatMap((c) => {
        const k = this.advertised.get(c);
        return k ? [k] : [];
      });
      this.unpublished.clear();
      for (const key of keys) {
        const cid = keyToCid(key);
        const c = cid.toString();
        if (!this.queue.has(c)) this.queue.set(c, { key, cid, waiters: [] });
      }
      if (keys.length > 0) this.log('info', 'publishing records held back while alone', { keys: keys.length });
      this.pump();
    }, 1000);
    this.republishTimer.unref();
  }

  async withdraw(keys: string[]): Promise<{ withdrawn: number }> {
    const cids: CID[] = [];
    for (const key of keys) {
      const cid = keyToCid(key);
      const c = cid.toString();
      if (!this.advertised.delete(c)) continue;
      this.queue.delete(c);
      this.unpublished.delete(c);
      await this.node.services.dht.cancelReprovide(cid);
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
          stream.send(encodeWithdraw(list));
          await stream.close({ signal: AbortSignal.timeout(5000) });
        } catch (err) {
          this.log('debug', 'withdraw not delivered', { peer: peer.toString(), error: (err as Error).message });
        }
      }),
    );
  }

  // ---- lookups ----

  async findProviders(key: string, count: number, deadlineMs: number): Promise<LookupResult> {
    const t0 = performance.now();
    const r = await this.lookups.find(keyToCid(key).toString(), count, deadlineMs);
    if (r.outcome !== 'found') {
      this.log('debug', 'lookup without providers', { key, outcome: r.outcome, source: r.source, ms: Math.round(performance.now() - t0), routingTable: this.dht.routingTable.size, peers: this.node.getConnections().length });
    }
    return r;
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

  private async localProviders(c: string): Promise<ProviderPeer[]> {
    const ids = await this.dht.providers.getProviders(CID.parse(c));
    const out: ProviderPeer[] = [];
    for (const id of ids) {
      if (id.equals(this.node.peerId)) continue;
      try {
        const peer = await this.node.peerStore.get(id);
        const p = this.toProvider(
          id,
          peer.addresses.map((a) => a.multiaddr),
        );
        if (p) out.push(p);
      } catch {
        // No addresses known for it: the network query may bring some.
      }
    }
    return out;
  }

  private async *networkProviders(c: string, signal: AbortSignal): AsyncIterable<ProviderPeer[]> {
    const trace: string[] = [];
    const t0 = performance.now();
    try {
    for await (const ev of this.node.services.dht.findProviders(CID.parse(c), { signal })) {
      if (trace.length < 40) trace.push(`${Math.round(performance.now() - t0)}ms ${ev.name}${'from' in ev ? ' ' + String(ev.from).slice(-6) : ''}${ev.name === 'QUERY_ERROR' ? ' ' + ev.error.message : ''}${ev.name === 'PEER_RESPONSE' ? ` p${ev.providers.length} c${ev.closer.length}` : ''}`);
      if (ev.name !== 'PROVIDER') continue;
      const batch: ProviderPeer[] = [];
      for (const info of ev.providers) {
        if (info.id.equals(this.node.peerId)) continue;
        const p = this.toProvider(info.id, info.multiaddrs);
        if (p) batch.push(p);
      }
      if (batch.length > 0) yield batch;
    }
    } finally {
      if (signal.aborted || trace.length === 0) this.log('debug', 'network lookup trace', { cid: c, trace });
    }
  }

  private isLive(p: ProviderPeer): boolean {
    const connected = this.node.getConnections(peerIdOf(p.peerId)).length > 0;
    const live = this.liveness.isLive(p.peerId, hostsOf(p.addrs.map((a) => multiaddr(a))), connected);
    // Unconnected: find out in the background, with the addresses the record came with (the
    // peer store may know none). Dead ones are probed again too, more slowly, so a verdict
    // that was wrong (a busy peer) heals itself.
    if (!connected) {
      const addrs = p.addrs.flatMap((a) => {
        const ma = multiaddr(a);
        const t = parseTcpAddr(ma);
        return t && !t.http ? [ma.encapsulate(`/p2p/${p.peerId}`)] : [];
      });
      setImmediate(() => this.probe(p.peerId, addrs, live ? 1 : 3));
    }
    return live;
  }

  /** Dials a peer we are not connected to; a failure marks it dead. Rate-limited per peer. */
  private probe(peerId: string, addrs: Multiaddr[] = [], spacing = 1): void {
    if (this.stopped) return;
    const now = Date.now();
    const last = this.probing.get(peerId);
    if (last !== undefined && now - last < (spacing * this.cfg.deadPeerTimeoutMs) / 3) return;
    const id = peerIdOf(peerId);
    if (this.node.getConnections(id).length > 0) return;
    // Near the connection bound a probe would only evict another peer: leave it to lookups.
    if (this.node.getConnections().length >= this.cfg.maxConnections - 1) return;
    // Probes are background work: a handful at a time, never a dial storm.
    if (this.probesRunning >= MAX_PROBES) return;
    this.probing.set(peerId, now);
    if (this.probing.size > 4096) for (const [k, t] of this.probing) if (now - t > this.cfg.deadPeerTimeoutMs) this.probing.delete(k);
    const timeout = Math.floor(Math.max(1000, Math.min(5000, this.cfg.deadPeerTimeoutMs / 3)));
    this.probesRunning++;
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

  private selfIps(): Set<string> {
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

  status(): P2PStatus {
    const peers = this.node.getPeers().length;
    const routingTable = this.dht.routingTable.size;
    const cfg = this.cfg;
    // Ready = connected to the cluster. A node whose DNS lists nobody else (and has no static
    // peers) is the whole cluster, which is ready too: a one-node cluster must serve.
    const alone = cfg.bootstrapPeers.length === 0 && (cfg.bootstrapDns === '' || (this.bootstrapper.resolvedOnce && this.bootstrapper.members === 0));
    const ready = (peers > 0 && routingTable > 0) || (alone && peers === 0);
    return {
      peerId: this.node.peerId.toString(),
      cluster: cfg.cluster,
      ready,
      peers,
      routingTable,
      advertisedKeys: this.advertised.size,
      pendingProvides: this.queue.size + this.provideRunning,
      listenAddrs: this.node.getMultiaddrs().map(String),
      dnsMembers: this.dnsMemberCount,
    };
  }

  metrics(): P2PMetricsSnapshot {
    const s = this.status();
    const dns = this.dnsTimes;
    this.dnsTimes = { ok: [], failed: [] };
    return {
      peers: s.peers,
      routingTable: s.routingTable,
      advertisedKeys: s.advertisedKeys,
      bootstrapAttempts: { ok: this.counters.bootstrapOk, failed: this.counters.bootstrapFailed },
      dnsResolveSeconds: dns,
    };
  }

  private pushStatus(): void {
    if (this.stopped) return;
    this.liveness.prune(this.cfg.providerTtlMs);
    const s = this.status();
    if (s.ready !== this.lastReady) {
      this.lastReady = s.ready;
      this.log('info', s.ready ? 'connected to the cluster' : 'not connected to the cluster', { peers: s.peers, routingTable: s.routingTable });
    }
    this.onStatus(s, this.metrics());
  }
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

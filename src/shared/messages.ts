// Messages that cross thread boundaries. Both sides import these types, so a change
// to the protocol is a compile error on whichever side forgot it.

import type { MessagePort } from 'node:worker_threads';
import type { Digest } from './oci.js';

/**
 * Header a peerpull sets on requests to another peerpull: answer from local content only, never
 * look up or forward (no loops, no amplification).
 */
export const PEER_HOP_HEADER = 'x-peerpull-hop';
/**
 * The hop header's value when the asker was sent to this node as the one fetching a blob
 * upstream right now (a claimed download, src/p2p/claims.ts): serve it from the download as it
 * grows. Any other value: local content only.
 */
export const HOP_INFLIGHT = 'inflight';

/** Where a worker reads a blob's bytes from. */
export type BlobLocation =
  | { kind: 'file'; path: string }
  | { kind: 'containerd'; socket: string; namespace: string; digest: Digest };

/** Task for the `readBlob` pool task: stream bytes [start, end) of a blob over `port`. */
export interface ReadBlobTask {
  location: BlobLocation;
  /** Expected total size: a file of another size is treated as missing (torn or replaced). */
  size: number;
  /**
   * The file is a download still being written (a content store ingest): wait for bytes not
   * there yet, and give up only when it grows by nothing for `stallMs`.
   */
  growing?: { stallMs: number };
  start: number;
  /** Exclusive. */
  end: number;
  chunkSize: number;
  /** Chunks the worker may send before it must wait for more credit. */
  credits: number;
  port: MessagePort;
}

/** Task for the `readSmall` pool task: read a whole (small) blob into memory. */
export interface ReadSmallTask {
  location: BlobLocation;
  size: number;
}

export type ReadSmallResult = { ok: true; bytes: ArrayBuffer } | { ok: false; missing: boolean; error: string };

/** What a peer answered, known only once its headers arrive (the size of a blob we do not hold). */
export interface PeerOpen {
  status: 200 | 206;
  /** Whole blob size. */
  size: number;
  /** [start, end) of the body that follows. */
  start: number;
  end: number;
  contentType: string;
  peerId: string;
}

/**
 * Worker -> main, on the transfer port. A chunk is the transferred ArrayBuffer itself, not wrapped
 * in an object: there is one per chunk, and serializing a wrapper measured a few % of each thread.
 */
export type StreamFromWorker =
  /** The source is open (and, for local content, has the expected size); headers can be sent now. */
  | { type: 'open'; peer?: PeerOpen }
  | ArrayBuffer
  | { type: 'end' }
  /**
   * `missing`: the content is gone (GC) or no peer could serve it, which becomes a 404 if nothing
   * was sent yet. `status` 416: every peer found the client's range unsatisfiable.
   */
  | { type: 'error'; missing: boolean; error: string; status?: 416 }
  /**
   * Every provider the task was given failed mid-body: look the key up again, without these
   * peers (answered by a `providers` message). Nodes that got the blob since, or whose records
   * had not arrived at the first lookup, can take the transfer over.
   */
  | { type: 'providers'; exclude: string[] };

/** A peer that holds a key, as the pool fetches from it. */
export interface PeerTarget {
  peerId: string;
  /** IP literal (IPv6 without brackets). */
  host: string;
  port: number;
}

/** Knobs shared by peer fetch tasks. */
export interface PeerFetchPolicy {
  /** Start the next provider when the current one has not answered headers within this. */
  hedgeDelayMs: number;
  /** A provider that sends no headers, or no body bytes, for this long is abandoned. */
  stallMs: number;
  /** Most providers asked (first tries, hedges and resumes together). */
  maxAttempts: number;
}

/** Task for `fetchBlob`: stream a blob from peers over `port`, hedged and resumable. */
export interface PeerBlobTask extends PeerFetchPolicy {
  providers: PeerTarget[];
  digest: Digest;
  /** Path and query to ask peers for, e.g. `/v2/library/x/blobs/sha256:...?ns=docker.io`. */
  path: string;
  /** The client's Range header, forwarded as is ('' for none). */
  range: string;
  /**
   * Hash a whole blob while it streams and withhold its last byte until the digest matches, so a
   * lying peer yields a cut transfer, never a complete wrong blob. Ranges cannot be verified.
   */
  verify: boolean;
  /**
   * The provider is fetching the blob itself right now: ask for its download in flight, and give
   * it `headersMs` to find it (the body may then pause up to `stallMs`, the upstream's pace).
   */
  inflight?: { headersMs: number };
  chunkSize: number;
  credits: number;
  port: MessagePort;
}

export interface PeerFetchReport {
  bytes: number;
  /** Peer that served the first byte, if any. */
  winner?: string;
  /** Time from task start to the winner's response headers. */
  ttfbMs?: number;
  hedges: number;
  resumes: number;
  /** Fresh provider lookups asked for after every known provider had failed mid-body, by whether one found another. */
  relookups: { found: number; none: number };
  /** Peers that failed (errors, stalls, wrong answers): main tells the p2p thread. */
  failedPeers: string[];
}

/** Task for `fetchManifest`: get a manifest from peers and check its digest. */
export interface PeerManifestTask extends PeerFetchPolicy {
  providers: PeerTarget[];
  path: string;
  /** For a request by digest: the body must hash to it. For a tag: to the peer's Docker-Content-Digest. */
  digest?: Digest;
}

export type PeerManifestResult = PeerFetchReport &
  ({ ok: true; body: ArrayBuffer; mediaType: string; digest: Digest } | { ok: false; error: string });

/**
 * Main -> worker, on the transfer port. An array is credit: one per chunk buffer in it, which the
 * main thread is done with and transfers back for reuse (bare, as chunks are).
 */
export type StreamToWorker = ArrayBuffer[] | { type: 'credit'; n: number } | { type: 'cancel' } | { type: 'providers'; providers: PeerTarget[] };

// ============================================================================================
// p2p thread (owner: p2p thread). Main <-> the libp2p Worker, over the Worker's own port.
// Every request carries an id; the worker answers each with exactly one P2PReply of that id.
// The worker validates every message it receives (see src/p2p/protocol.ts): a malformed one
// is logged and answered with an error, never a crash.
// ============================================================================================

/** Settings the p2p Worker needs (plain data: it crosses the thread boundary as workerData). */
export interface P2PWorkerConfig {
  /** Listen host ('' = all interfaces) and port of the libp2p TCP listener. */
  listenHost: string;
  listenPort: number;
  /** IP announced to peers ('' = whatever the listener reports). */
  advertiseIp: string;
  /** Registry (HTTP) port announced to peers beside the p2p address. */
  registryPort: number;
  /** Headless Service names whose records, together, list the cluster's members. */
  bootstrapDns: string[];
  dnsServers: string[];
  bootstrapPeers: string[];
  bootstrapIntervalMs: number;
  maxConnections: number;
  cluster: string;
  /** 64 hex characters, or '' for an open network. Already read from the key file by main. */
  clusterKey: string;
  dataDir: string;
  reprovideIntervalMs: number;
  /** kad-dht's routing table refresh (a query per bucket), per node spread by +-20%. */
  dhtRefreshIntervalMs: number;
  providerTtlMs: number;
  deadPeerTimeoutMs: number;
  lookupTimeoutMs: number;
  lookupCacheTtlMs: number;
  negativeCacheTtlMs: number;
}

/** A node that holds a key, as the registry needs it to fetch over HTTP. */
export interface ProviderPeer {
  peerId: string;
  /** IP literal to reach the node's registry at (IPv6 without brackets). */
  host: string;
  registryPort: number;
  /** The node's libp2p multiaddrs as known here (diagnostics). */
  addrs: string[];
  /** true when this node holds a live libp2p connection to it right now. */
  connected: boolean;
}

/**
 * Where a lookup's answer came from: the outcome label of the lookup metrics. 'store-copy':
 * main's copy of this node's records, answered without asking the p2p thread.
 */
export type LookupSource = 'cache' | 'negative-cache' | 'local' | 'store-copy' | 'network' | 'coalesced' | 'none';
export type LookupOutcome = 'found' | 'notfound' | 'timeout' | 'error';

export interface LookupResult {
  providers: ProviderPeer[];
  source: LookupSource;
  outcome: LookupOutcome;
  /** Peers that answered the network query (0: answered from this node's store or cache). */
  queried?: number;
}

export interface P2PStatus {
  peerId: string;
  cluster: string;
  ready: boolean;
  peers: number;
  routingTable: number;
  advertisedKeys: number;
  /** Provides queued or running (0 once every advertised key reached the DHT). */
  pendingProvides: number;
  /** Advertised keys no peer took yet (held back while alone, or waiting for a retry). */
  unpublishedKeys: number;
  listenAddrs: string[];
  /** Members the last bootstrap DNS answer listed (0 without DNS bootstrap). */
  dnsMembers: number;
  /**
   * How much of the cluster the routing table holds: 'exact' (every DNS member: records go
   * straight to their holders and misses are answered locally), 'near' (all but a few),
   * 'partial' (a sample, as in clusters of more than a few dozen nodes: DHT queries).
   */
  view: P2PView;
}

export type P2PView = 'exact' | 'near' | 'partial';

export type P2PRequest =
  | { id: number; type: 'advertise'; keys: string[]; /** resolve only once the records reached the DHT */ wait?: boolean }
  | { id: number; type: 'withdraw'; keys: string[] }
  | {
      id: number;
      type: 'findProviders';
      key: string;
      count: number;
      /** ms from now */
      deadlineMs: number;
      /** Peers not to return (they just failed a fetch): a cached answer of only these is no answer. */
      exclude?: string[];
    }
  /**
   * Nobody provides `key`: ask its first IP holder whether another node is already fetching it
   * (answer: that node), or record this node as fetching it (answer: go).
   */
  | { id: number; type: 'claimFetch'; key: string; /** ms from now */ deadlineMs: number }
  /** This node's claimed download is not happening (or is done): let the holder forget it. */
  | { id: number; type: 'releaseFetch'; key: string }
  /** A fetch from this peer failed: treat it as suspect until it proves alive again. */
  | { id: number; type: 'reportFailure'; peerId: string }
  | { id: number; type: 'status' }
  | { id: number; type: 'stop' };

export type P2PReply =
  | { kind: 'reply'; id: number; ok: true; result: unknown }
  | { kind: 'reply'; id: number; ok: false; error: string };

/**
 * The answer to claimFetch: `go` (this node fetches upstream, others will be sent to it),
 * `fetching` (another node's download is in flight: stream it from there), or `none` (no holder
 * answered in time, or no DNS view: a plain miss).
 */
export type FetchClaimResult = { kind: 'go' } | { kind: 'fetching'; provider: ProviderPeer } | { kind: 'none' };

/** Counters are cumulative since the worker started; main turns them into deltas. */
export interface P2PMetricsSnapshot {
  peers: number;
  routingTable: number;
  advertisedKeys: number;
  /** Bootstrap dials: ok/failed to reach the target count, ring* to restore a ring link. */
  bootstrapAttempts: { ok: number; failed: number; ringOk: number; ringFailed: number };
  /** Provider-record batches this node sent (delivered or not) and records it took from peers. */
  recordBatches: { ok: number; failed: number };
  recordsReceived: number;
  /**
   * Network lookups' steps beyond asking connected peers (src/p2p/node.ts, networkProviders): IP
   * holders asked by datagram, further holders asked because one was slow, holders dialled, and
   * DHT queries started (each dials its way to the key). Their rate per lookup is a lookup's cost.
   */
  /** streamAsks: GET_PROVIDERS sent over a connection outside the DHT query; ipQuorumMisses: lookups ended as misses by IP holders' empty answers. */
  lookupSteps: { datagramAsks: number; streamAsks: number; holderRetries: number; holderDials: number; dhtQueries: number; ipQuorumMisses: number };
  /**
   * kad-dht provide queries (each dials its way to a key's 20 closest peers) run for our keys,
   * and those skipped: enough IP holders took the record (ipHolders), or a republish while the
   * last query's records outlive the next round (recent).
   */
  provideQueries: { run: number; ipHolders: number; recent: number };
  /** Keys our republish rounds sent again, and passed over as published less than half a round ago. */
  republishes: { sent: number; fresh: number };
  /** Connection heartbeat pings answered and failed (a failure closes the connection). */
  heartbeats: { ok: number; failed: number; skipped: number };
  /**
   * With connections but an empty routing table (src/p2p/node.ts, fillEmptyTable): connected
   * members this node put in its table itself, connections it identified again.
   */
  tableRepairs: { added: number; reidentified: number };
  /**
   * Datagrams to and from record holders (src/p2p/datagram.ts): asked / answered / unanswered by
   * this node's lookups, and late: answers that came after the ask had given up; served: asks of
   * other nodes this node answered; provided: records of ours IP holders acknowledged; taken:
   * records other nodes sent; refused: datagrams dropped (bad tag, another cluster, a non-member,
   * malformed, records for another address, an unasked answer).
   */
  datagrams: { asked: number; answered: number; unanswered: number; late: number; served: number; refused: number; provided: number; taken: number; claimsAsked: number; claimsUnanswered: number };
  /**
   * Downloads in flight (src/p2p/claims.ts), as the key holder this node is: askers told to fetch
   * (granted), askers told where a download already runs (joined), claims given up (released).
   */
  fetchClaims: { granted: number; joined: number; released: number };
  /**
   * The connection bound (src/p2p/bound.ts): idle connections closed to make room for new ones,
   * new ones refused because every connection was busy or protected, and connections of peers
   * known to run another cluster refused outright.
   */
  connectionBound: { evicted: number; refusedInbound: number; refusedOutbound: number; unwanted: number };
  /** DNS resolve durations (seconds) since the previous snapshot, by outcome. */
  dnsResolveSeconds: { ok: number[]; failed: number[] };
  /** How late the p2p thread's event loop ran its callbacks since the previous snapshot (ms). */
  eventLoopDelayMs: { p50: number; p99: number; max: number };
}

/** A provider as main's copy of the p2p thread's record store knows it. */
export interface FeedPeer {
  peerId: string;
  /** Where its registry listens; absent when no usable address is known (main cannot hand it out). */
  host?: string;
  registryPort?: number;
  addrs: string[];
  /** A live libp2p connection to it right now: the only state main answers on its own. */
  connected: boolean;
  /** The thread's liveness checks found it dead: it is not handed out. */
  dead?: boolean;
}

/**
 * The p2p thread's provider records as they change, so that main answers most lookups without
 * the thread hop (src/p2p/store-feed.ts -> src/main/store-copy.ts). Keys are the sha-256 of
 * the content key in hex (src/shared/keys.ts).
 */
export interface StoreFeed {
  kind: 'store';
  /** The first message of a thread incarnation: main drops the copy it had. */
  reset: boolean;
  /** [key hash, provider peer id] pairs that appeared in, or left, the store. */
  added: Array<[string, string]>;
  removed: Array<[string, string]>;
  /** New or changed state of providers named by records. */
  peers: FeedPeer[];
  /** Peers no record names any longer: main forgets them. */
  gone: string[];
  /** A key absent from the store is absent from the cluster (settled exact view of a meshed cluster). */
  finalMisses: boolean;
}

/** Unsolicited worker -> main messages. */
export type P2PEvent =
  | StoreFeed
  | { kind: 'started'; status: P2PStatus }
  | { kind: 'status'; status: P2PStatus; metrics: P2PMetricsSnapshot }
  | { kind: 'log'; level: 'debug' | 'info' | 'warn' | 'error'; msg: string; fields?: Record<string, unknown> }
  /** Startup failed for good (e.g. the port is taken): restarting will not help by itself. */
  | { kind: 'fatal'; error: string };

export type P2PFromWorker = P2PReply | P2PEvent;

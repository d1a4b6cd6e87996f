// Messages between the scale orchestrator and its host processes (child_process IPC).
// A host runs many real P2PNode instances (src/p2p/node.ts), one loopback IP each.

import type { P2PMetricsSnapshot } from '../../src/shared/messages.js';

/** One simulated cluster node: its own loopback IP, the shared p2p port, a cluster and a DNS name. */
export interface NodeSpec {
  ip: string;
  cluster: string;
  dnsName: string;
  /** PEERPULL_* settings beyond address, DNS and cluster (same parser as production). */
  env: Record<string, string>;
}

export type HostRequest =
  | { type: 'start'; nodes: NodeSpec[]; p2pPort: number; registryPort: number; dnsServer: string }
  | { type: 'snapshot'; resetCounters: boolean }
  | { type: 'advertise'; items: Array<{ ip: string; keys: string[] }>; wait: boolean }
  | { type: 'find'; ip: string; key: string; count: number; deadlineMs: number }
  | { type: 'stop'; ips: string[] }
  /** Each node in `ips` opens a connection to the node at `to` (a multiaddr with its peer id), all at once. */
  | { type: 'dial'; ips: string[]; to: string; timeoutMs: number }
  /** Which of the host's nodes hold a provider record for `key` (failure analysis). */
  | { type: 'holders'; key: string }
  /** CPU profile of a window (the inspector): start, then stop writing it to `file`. */
  | { type: 'profile'; action: 'start' } | { type: 'profile'; action: 'stop'; file: string };

export interface NodeSnapshot {
  ip: string;
  peerId: string;
  cluster: string;
  /** ms since the host's start request arrived; undefined until ready. */
  readyAfterMs: number | undefined;
  ready: boolean;
  connections: number;
  /** Most connections open at once since the previous snapshot that reset counters. */
  peakConnections: number;
  inbound: number;
  routingTable: number;
  /**
   * Peer ids at the other end of the open connections (isolation and partition checks). Not
   * their addresses: the nodes share one host, so an inbound connection's source is 127.0.0.1.
   */
  remotePeers: string[];
  dnsMembers: number;
  /** The node's datagram counters (src/p2p/datagram.ts), cumulative. */
  datagrams: { asked: number; answered: number; served: number; provided: number; taken: number };
  lookupSteps: P2PMetricsSnapshot['lookupSteps'];
  /** The node's heartbeat pings (src/p2p/heartbeat.ts), cumulative: a failure closed a connection. */
  heartbeats: { ok: number; failed: number; skipped: number };
  /** kad-dht provide queries for the node's keys, run and skipped (src/shared/messages.ts), cumulative. */
  provideQueries: { run: number; ipHolders: number; recent: number };
  /** Keys the node's republish rounds sent again, and passed over as just published, cumulative. */
  republishes: { sent: number; fresh: number };
  /** Connected members the node put in its empty routing table itself, connections identified again (cumulative). */
  tableRepairs: P2PMetricsSnapshot['tableRepairs'];
  /** The node's bootstrap dials (src/p2p/bootstrap.ts), cumulative: toward its target, and ring re-dials. */
  bootstrapAttempts: { ok: number; failed: number; ringOk: number; ringFailed: number };
  /** Advertised keys no peer took yet (status().unpublishedKeys): waiting for a retry. */
  unpublishedKeys: number;
  /** The node's connection-bound counters (src/p2p/bound.ts), cumulative. */
  connectionBound: { evicted: number; refusedInbound: number; refusedOutbound: number; unwanted: number };
  /** With PEERPULL_SCALE_TRACE=1, above the bound: one line per connection (direction, age, streams, opener). */
  over?: string[];
  /** Not ready yet: its open connections whose peer identify has not described. */
  unidentified?: number;
}

export interface HostSnapshot {
  pid: number;
  nodes: NodeSnapshot[];
  /** Outbound connection opens by remote IP since the last reset: the dials each address received. */
  dialsByTarget: Record<string, number>;
  rssBytes: number;
  /** RSS before any node was created: the process baseline (Node itself, loaded modules). */
  baseRssBytes: number;
  heapUsedBytes: number;
  cpuSeconds: number;
  /** Connection closes seen by the host's nodes since the last reset (each close counts at both ends). */
  connectionCloses: number;
  /** Event loop delay p99 since the last reset: above ~100 ms the host itself is the bottleneck. */
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  /** GC pauses since the last reset: total, longest, count. */
  gcPauseMs: number;
  gcPauseMaxMs: number;
  gcCount: number;
  /** With PEERPULL_SCALE_TRACE=1: outbound connection opens since the last reset, by opener. */
  opensBy?: Record<string, number>;
  /** With PEERPULL_SCALE_TRACE=1: failed bootstrap dials since the last reset, by error. */
  dialFailuresBy?: Record<string, number>;
  /** With PEERPULL_SCALE_TRACE=1: kad-dht closest-peer queries started since the last reset, by caller. */
  queriesBy?: Record<string, number>;
  warnings: number;
  errors: number;
  lastProblems: string[];
  /** Warnings and errors since the host started, by message. */
  problemsBy: Record<string, number>;
}

export interface FindResult {
  outcome: string;
  source: string;
  providers: string[];
  ms: number;
  /** Peers the network query asked (0 when answered locally), when the node reports it. */
  queried?: number;
  /** The node's own account of a lookup that found nothing (P2PNode.diagnose). */
  diag?: Record<string, unknown>;
}

/** What a host's `dial` request came to: connections that stood, and failed dials by error. */
export interface DialResult {
  connected: number;
  failedBy: Record<string, number>;
}

export type HostReply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: string };
export type HostRequestEnvelope = { id: number; req: HostRequest };

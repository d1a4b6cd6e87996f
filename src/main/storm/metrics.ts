// Reads the numbers storm reports per source from the nodes' Prometheus endpoints:
// peerpull_mirror_requests_total{kind,outcome}, peerpull_peer_bytes_total, peerpull_bytes_served_total.

import { request, type Dispatcher } from 'undici';

export interface NodeCounters {
  /** `kind/outcome` -> requests, e.g. `blob/peer`. */
  requests: Record<string, number>;
  peerBytes: number;
  servedBytes: number;
}

export function emptyCounters(): NodeCounters {
  return { requests: {}, peerBytes: 0, servedBytes: 0 };
}

function labels(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of s.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) out[m[1]!] = m[2]!;
  return out;
}

/** Parses the three counter families out of a Prometheus text exposition. */
export function parseCounters(text: string): NodeCounters {
  const c = emptyCounters();
  for (const line of text.split('\n')) {
    if (!line.startsWith('peerpull_')) continue;
    const m = /^([a-z_]+)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const value = Number(m[3]);
    if (!Number.isFinite(value)) continue;
    const name = m[1]!;
    if (name === 'peerpull_mirror_requests_total') {
      const l = labels(m[2] ?? '');
      const k = `${l.kind ?? '?'}/${l.outcome ?? '?'}`;
      c.requests[k] = (c.requests[k] ?? 0) + value;
    } else if (name === 'peerpull_peer_bytes_total') c.peerBytes += value;
    else if (name === 'peerpull_bytes_served_total') c.servedBytes += value;
  }
  return c;
}

export async function scrape(metricsUrl: string, dispatcher?: Dispatcher): Promise<NodeCounters | null> {
  try {
    const r = await request(`${metricsUrl.replace(/\/+$/, '')}/metrics`, { ...(dispatcher ? { dispatcher } : {}), headersTimeout: 5000, bodyTimeout: 5000 });
    const text = await r.body.text();
    return r.statusCode === 200 ? parseCounters(text) : null;
  } catch {
    return null;
  }
}

export function addCounters(a: NodeCounters, b: NodeCounters, sign = 1): NodeCounters {
  const out: NodeCounters = { requests: { ...a.requests }, peerBytes: a.peerBytes + sign * b.peerBytes, servedBytes: a.servedBytes + sign * b.servedBytes };
  for (const [k, v] of Object.entries(b.requests)) out.requests[k] = (out.requests[k] ?? 0) + sign * v;
  return out;
}

/** Sum over nodes of (after - before); a node that vanished counts up to its last scrape. */
export function delta(before: (NodeCounters | null)[], after: (NodeCounters | null)[]): NodeCounters {
  let sum = emptyCounters();
  for (let i = 0; i < before.length; i++) {
    const b = before[i] ?? emptyCounters();
    const a = after[i] ?? b;
    sum = addCounters(sum, addCounters(a, b, -1));
  }
  return sum;
}

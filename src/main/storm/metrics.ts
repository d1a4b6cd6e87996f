// Reads the numbers storm reports per source from the nodes' Prometheus endpoints:
// peerpull_mirror_requests_total{kind,outcome}, peerpull_peer_bytes_total, peerpull_bytes_served_total,
// peerpull_shared_downloads_total{event}, and the histogram of the time to a miss's 404 inside the
// nodes (peerpull_mirror_miss_seconds; nodes older than it: lookups that found nobody,
// peerpull_mirror_lookup_seconds{result="none"}), which is what a miss costs when containerd, not
// storm, makes the requests, and what it costs without the machine's scheduling in between.

import { request, type Dispatcher } from 'undici';
import type { Summary } from './summary.js';

export interface NodeCounters {
  /** `kind/outcome` -> requests, e.g. `blob/peer`. */
  requests: Record<string, number>;
  peerBytes: number;
  servedBytes: number;
  /** Shared downloads by event (fetching, joined, join_failed, served, unavailable). */
  shared: Record<string, number>;
  /** Lookups that found no provider: cumulative bucket counts by upper bound (s, `+Inf` too), their sum (s) and count. */
  missLookup: Histogram;
  /** Requests answered 404 after the nodes found no peer: arrival to answer, lookup and claim included. */
  missAnswer: Histogram;
}

export interface Histogram {
  buckets: Record<string, number>;
  sum: number;
  count: number;
}

export function emptyCounters(): NodeCounters {
  return { requests: {}, peerBytes: 0, servedBytes: 0, shared: {}, missLookup: emptyHistogram(), missAnswer: emptyHistogram() };
}

function emptyHistogram(): Histogram {
  return { buckets: {}, sum: 0, count: 0 };
}

function addSample(h: Histogram, name: string, le: string | undefined, value: number): void {
  if (name.endsWith('_bucket') && le) h.buckets[le] = (h.buckets[le] ?? 0) + value;
  else if (name.endsWith('_sum')) h.sum += value;
  else if (name.endsWith('_count')) h.count += value;
}

function labels(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of s.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) out[m[1]!] = m[2]!;
  return out;
}

/** Parses the counter and histogram families above out of a Prometheus text exposition. */
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
    } else if (name === 'peerpull_shared_downloads_total') {
      const e = labels(m[2] ?? '').event ?? '?';
      c.shared[e] = (c.shared[e] ?? 0) + value;
    } else if (name === 'peerpull_peer_bytes_total') c.peerBytes += value;
    else if (name === 'peerpull_bytes_served_total') c.servedBytes += value;
    else if (name.startsWith('peerpull_mirror_lookup_seconds_')) {
      const l = labels(m[2] ?? '');
      if (l.result === 'none') addSample(c.missLookup, name, l.le, value);
    } else if (name.startsWith('peerpull_mirror_miss_seconds_')) addSample(c.missAnswer, name, labels(m[2] ?? '').le, value);
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

function addMaps(a: Record<string, number>, b: Record<string, number>, sign: number): Record<string, number> {
  const out = { ...a };
  for (const [k, v] of Object.entries(b)) out[k] = (out[k] ?? 0) + sign * v;
  return out;
}

function addHistograms(a: Histogram, b: Histogram, sign: number): Histogram {
  return { buckets: addMaps(a.buckets, b.buckets, sign), sum: a.sum + sign * b.sum, count: a.count + sign * b.count };
}

export function addCounters(a: NodeCounters, b: NodeCounters, sign = 1): NodeCounters {
  return {
    requests: addMaps(a.requests, b.requests, sign),
    peerBytes: a.peerBytes + sign * b.peerBytes,
    servedBytes: a.servedBytes + sign * b.servedBytes,
    shared: addMaps(a.shared, b.shared, sign),
    missLookup: addHistograms(a.missLookup, b.missLookup, sign),
    missAnswer: addHistograms(a.missAnswer, b.missAnswer, sign),
  };
}

/**
 * A Prometheus histogram as a Summary (ms): each percentile is the upper bound of the bucket it
 * falls in (interpolating would invent values: misses that all end just past a 100 ms deadline
 * would read as 170 ms in a 100-250 ms bucket); above the last finite bound, that bound, with
 * `aboveMax` set. avg is exact (sum / count).
 */
export function histogramSummary(h: Histogram): Summary {
  const bounds = Object.entries(h.buckets)
    .map(([le, cum]) => ({ le: le === '+Inf' ? Infinity : Number(le), cum }))
    .filter((b) => !Number.isNaN(b.le))
    .sort((a, b) => a.le - b.le);
  const count = h.count || (bounds.length ? bounds[bounds.length - 1]!.cum : 0);
  if (count <= 0 || bounds.length === 0) return { count: 0, min: 0, avg: 0, p50: 0, p90: 0, p99: 0, max: 0 };
  const lastFinite = [...bounds].reverse().find((b) => Number.isFinite(b.le))?.le ?? 0;
  const upper = (le: number) => (Number.isFinite(le) ? le : lastFinite) * 1000;
  const open = bounds.some((b, i) => !Number.isFinite(b.le) && b.cum > (i > 0 ? bounds[i - 1]!.cum : 0));
  const q = (p: number) => upper((bounds.find((b) => b.cum >= (p / 100) * count) ?? bounds[bounds.length - 1]!).le);
  const firstIdx = bounds.findIndex((b) => b.cum > 0);
  const lastIdx = bounds.findIndex((b) => b.cum >= count);
  return {
    count,
    min: firstIdx > 0 ? bounds[firstIdx - 1]!.le * 1000 : 0,
    avg: (h.sum / count) * 1000,
    p50: q(50),
    p90: q(90),
    p99: q(99),
    max: upper(bounds[lastIdx >= 0 ? lastIdx : bounds.length - 1]!.le),
    bucketed: true,
    ...(open ? { aboveMax: true } : {}),
  };
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

// Prometheus metrics of the main thread. Every module registers its metrics on `registry`
// (one registry per process, so /metrics shows the whole node). The p2p thread reports its
// numbers to main, which owns the exposition.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export const registry = new Registry();
collectDefaultMetrics({ register: registry, prefix: 'peerpull_' });

/** Adds labels to every series (e.g. the cluster name, so per-region dashboards can split). */
export function setDefaultLabels(labels: Record<string, string>): void {
  registry.setDefaultLabels(labels);
}

export const httpRequests = new Counter({
  name: 'peerpull_http_requests_total',
  help: 'Registry requests by route, method and status code.',
  labelNames: ['route', 'method', 'code'] as const,
  registers: [registry],
});

export const httpDuration = new Histogram({
  name: 'peerpull_http_request_duration_seconds',
  help: 'Time from request arrival to the last byte written, by route and method.',
  labelNames: ['route', 'method'] as const,
  buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
  registers: [registry],
});

export const bytesServed = new Counter({
  name: 'peerpull_bytes_served_total',
  help: 'Body bytes written to clients, by route.',
  labelNames: ['route'] as const,
  registers: [registry],
});

export const inflightRequests = new Gauge({
  name: 'peerpull_inflight_requests',
  help: 'Requests being answered right now.',
  registers: [registry],
});

export const indexEntries = new Gauge({
  name: 'peerpull_index_entries',
  help: 'Entries in the content index, by kind (digest or tag).',
  labelNames: ['kind'] as const,
  registers: [registry],
});

export const indexResyncs = new Counter({
  name: 'peerpull_index_resyncs_total',
  help: 'Full rebuilds of the content index from the store, by outcome.',
  labelNames: ['outcome'] as const,
  registers: [registry],
});

export const sourceHealthy = new Gauge({
  name: 'peerpull_content_source_up',
  help: '1 while the content source (containerd or OCI layout) is reachable.',
  labelNames: ['source'] as const,
  registers: [registry],
});

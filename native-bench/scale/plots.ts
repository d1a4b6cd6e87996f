// The scale figures against N, as SVG files in docs/scale (linked from README).

import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ScaleResult } from './scenarios.js';
import { lineChart, type Chart, type Series } from './svg.js';

function series(rs: ScaleResult[], name: string, f: (r: ScaleResult) => number | undefined, dashed = false): Series {
  const value = (r: ScaleResult) => {
    try {
      return f(r);
    } catch {
      return undefined; // a run cut short lacks later phases
    }
  };
  return { name, dashed, points: rs.flatMap((r) => { const y = value(r); return y === undefined || !Number.isFinite(y) ? [] : [[r.n, y] as [number, number]]; }) };
}

export function charts(results: Record<string, ScaleResult>): Record<string, Chart> {
  const rs = Object.values(results).filter((r) => r && typeof r.n === 'number').sort((a, b) => a.n - b.n);
  const bound = rs[0]?.settings?.maxConnections ?? 64;
  const deadBound = (rs[0]?.settings?.deadPeerTimeoutMs ?? 20_000) / 1000;
  return {
    'ready.svg': {
      title: 'Cold start: time until nodes are ready (missing point: not all ready)',
      yLabel: 'seconds',
      yFromZero: true,
      // A run where some nodes never became ready has no "last node" time to plot.
      series: [series(rs, 'last node', (r) => (r.coldStart.allReady ? r.coldStart.readyMs.max / 1000 : undefined)), series(rs, 'p50 of ready nodes', (r) => r.coldStart.readyMs.p50 / 1000, true), series(rs, 'replacements (churn)', (r) => r.churn?.replacementsReadyMs.max !== undefined ? r.churn.replacementsReadyMs.max / 1000 : undefined, true)],
      refs: [{ y: 60, label: 'target 60 s' }],
    },
    'connections.svg': {
      title: 'Connections per node (steady state; a crowd dialling one node)',
      yLabel: 'connections',
      yFromZero: true,
      series: [series(rs, 'crowd target, most at once', (r) => r.crowd?.targetPeak), series(rs, 'max', (r) => r.steady.connections.max), series(rs, 'p99', (r) => r.steady.connections.p99, true), series(rs, 'mean', (r) => r.steady.connections.mean, true)],
      refs: [{ y: bound, label: `bound ${bound}` }],
    },
    'hotspots.svg': {
      title: 'Cold-start dials received, relative to the average',
      yLabel: 'dials / average dials',
      yFromZero: true,
      series: [series(rs, 'lowest addresses', (r) => r.coldStart.dials.lowestOverAverage), series(rs, 'busiest address', (r) => r.coldStart.dials.maxOverAverage, true)],
    },
    'routing-table.svg': {
      title: 'Routing table size per node',
      yLabel: 'peers in the table',
      yFromZero: true,
      series: [series(rs, 'max', (r) => r.steady.routingTable.max), series(rs, 'p50', (r) => r.steady.routingTable.p50), series(rs, 'min', (r) => r.steady.routingTable.min, true)],
    },
    'lookups.svg': {
      title: 'Lookup latency (random keys)',
      yLabel: 'milliseconds',
      yFromZero: true,
      series: [
        series(rs, 'steady p50', (r) => r.steady.lookups.latencyMs.p50),
        series(rs, 'steady p99', (r) => r.steady.lookups.latencyMs.p99),
        series(rs, 'churn p99', (r) => r.churn?.lookups.latencyMs.p99, true),
      ],
    },
    'lookup-success.svg': {
      title: 'Lookup success rate',
      yLabel: 'percent found',
      series: [series(rs, 'steady', (r) => r.steady.lookups.successRate * 100), series(rs, 'churn', (r) => (r.churn ? r.churn.lookups.successRate * 100 : undefined), true)],
      refs: [{ y: 99.9, label: 'churn target 99.9%' }],
    },
    'dead-records.svg': {
      title: 'Dead providers still returned after a kill',
      yLabel: 'seconds after the kill (last seen)',
      yFromZero: true,
      series: [series(rs, 'last dead provider returned', (r) => (r.churn ? (r.churn.deadReturnedLastMs ?? 0) / 1000 : undefined))],
      refs: [{ y: 60, label: 'target 60 s' }, { y: deadBound, label: `DEAD_PEER_TIMEOUT ${deadBound} s` }],
    },
    'upkeep.svg': {
      title: 'Idle upkeep per node',
      yLabel: 'ms CPU per second / connections opened per minute',
      yFromZero: true,
      series: [
        series(rs, 'CPU ms per second', (r) => ((r.idle?.cpuSecondsPerNodePerMinute ?? r.steady.idleCpuSecondsPerNodePerMinute) * 1000) / 60),
        series(rs, 'connections opened per minute', (r) => r.idle?.dialsPerNodePerMinute ?? r.steady.idleDialsPerNodePerMinute, true),
      ],
    },
    'memory.svg': {
      title: 'Memory per node (marginal, p2p stack only)',
      yLabel: 'MiB',
      yFromZero: true,
      series: [series(rs, 'RSS per node', (r) => r.steady.memory.perNodeMiB), series(rs, 'JS heap per node', (r) => r.steady.memory.heapPerNodeMiB, true)],
    },
  };
}

export async function writePlots(results: Record<string, ScaleResult>, dir: string): Promise<void> {
  for (const [file, chart] of Object.entries(charts(results))) await writeFile(path.join(dir, file), lineChart(chart));
}

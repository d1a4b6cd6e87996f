// Storm output: the summary table, the JSON document, and a self-contained HTML report whose
// charts are inline SVG (no scripts, fonts or styles from the network).

import { PHASES } from './pull.js';
import type { RunResult } from './run.js';
import { fmtBytes, fmtMs, fmtQ, fmtRatio, table } from './summary.js';

export interface Comparison {
  scenario: string;
  baseline?: RunResult;
  peerpull?: RunResult;
  /** baseline / peerpull: above 1 means peerpull is faster. */
  speedupP50?: number;
  speedupP99?: number;
  /** peerpull upstream bytes / baseline upstream bytes. */
  upstreamRatio?: number;
  /** peerpull upstream bytes / one image. */
  upstreamImages?: number;
}

export interface StormReport {
  tool: 'peerpull storm';
  startedAt: string;
  command: string;
  settings: Record<string, unknown>;
  host: { cpus: number; node: string; loadavgStart: number[]; loadavgEnd: number[] };
  runs: RunResult[];
  comparisons: Comparison[];
  ok: boolean;
}

export function compare(runs: RunResult[]): Comparison[] {
  const out: Comparison[] = [];
  for (const scenario of [...new Set(runs.map((r) => r.scenario))]) {
    const baseline = runs.find((r) => r.scenario === scenario && r.mode === 'baseline');
    const peerpull = runs.find((r) => r.scenario === scenario && r.mode === 'peerpull');
    const c: Comparison = { scenario, ...(baseline ? { baseline } : {}), ...(peerpull ? { peerpull } : {}) };
    if (baseline && peerpull && peerpull.pullMs.count > 0 && baseline.pullMs.count > 0) {
      c.speedupP50 = baseline.pullMs.p50 / peerpull.pullMs.p50;
      c.speedupP99 = baseline.pullMs.p99 / peerpull.pullMs.p99;
      c.upstreamRatio = baseline.bytes.upstream > 0 ? peerpull.bytes.upstream / baseline.bytes.upstream : NaN;
    }
    if (peerpull) c.upstreamImages = peerpull.bytes.upstream / peerpull.imageBytes;
    out.push(c);
  }
  return out;
}

export function summaryTable(report: StormReport): string {
  const rows = report.runs.map((r) => [
    r.label,
    `${r.ok}/${r.nodes}`,
    fmtMs(r.pullMs.min),
    fmtMs(r.pullMs.avg),
    fmtMs(r.pullMs.p50),
    fmtMs(r.pullMs.p90),
    fmtMs(r.pullMs.p99),
    fmtMs(r.pullMs.max),
    fmtBytes(r.bytes.upstream),
    fmtBytes(r.bytes.peer),
    fmtBytes(r.bytes.local),
    r.missMs.count ? fmtQ(r.missMs, 'p99') : '-',
    fmtMs(r.wallMs),
    r.cpu ? `${r.cpu.ours.toFixed(2)}+${r.cpu.others.toFixed(2)}/${r.cpu.cores}` : '-',
  ]);
  const runs = table(['run', 'ok', 'min', 'avg', 'p50', 'p90', 'p99', 'max', 'upstream', 'peers', 'local', 'miss p99', 'wall', 'cpu ours+others'], rows);
  const cmp = report.comparisons
    .filter((c) => c.peerpull)
    .map((c) => [
      c.scenario,
      c.speedupP50 !== undefined ? fmtRatio(c.speedupP50) : '-',
      c.speedupP99 !== undefined ? fmtRatio(c.speedupP99) : '-',
      c.upstreamRatio !== undefined ? fmtRatio(c.upstreamRatio) : '-',
      c.upstreamImages !== undefined ? `${c.upstreamImages.toFixed(2)}` : '-',
      String(c.peerpull!.failed),
      c.peerpull!.missMs.count ? fmtQ(c.peerpull!.missMs, 'p99') : '-',
      c.peerpull!.nodeMissMs?.count ? fmtQ(c.peerpull!.nodeMissMs, 'p99') : '-',
      String(c.peerpull!.upstreamBlobGets.max),
    ]);
  const parts = [runs];
  if (cmp.length) parts.push('', table(['scenario', 'speedup p50', 'speedup p99', 'upstream vs baseline', 'upstream (images)', 'failed', 'miss p99', 'in node', 'max GETs/blob'], cmp));
  // Shared downloads (PEERPULL_SHARE_DOWNLOADS), as the nodes counted them.
  const shared = report.runs
    .filter((r) => r.mode === 'peerpull' && Object.values(r.counters.shared).some((v) => v > 0))
    .map((r) => {
      const c = r.counters.shared;
      return `  ${r.label}: ${c.fetching ?? 0} fetched upstream for the cluster, ${c.joined ?? 0} streamed from a download in flight${c.join_failed ? `, ${c.join_failed} could not join` : ''}${c.unavailable ? `, ${c.unavailable} claimed but never started` : ''}`;
    });
  if (shared.length) parts.push('', 'shared downloads (blobs):', ...shared);
  const failures = report.runs.flatMap((r) => r.failures.map((f) => `  ${r.label} ${f.node}: [${f.kind}] ${f.error}`));
  if (failures.length) parts.push('', `FAILED PULLS (${failures.length}):`, ...failures.slice(0, 30), ...(failures.length > 30 ? [`  ... ${failures.length - 30} more`] : []));
  return parts.join('\n');
}

/** The scenario-vs-baseline table in Markdown (for a README), one row per scenario. */
export function markdownTable(report: StormReport): string {
  const mb = (b: number) => `${(b / 1e6).toFixed(0)} MB`;
  const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  const rows = report.comparisons
    .filter((c) => c.peerpull)
    .map((c) => {
      const p = c.peerpull!;
      const b = c.baseline;
      return `| ${c.scenario} | ${p.nodes} | ${fmtBytes(p.imageBytes)} / ${p.layers} | ${b ? `${s(b.pullMs.p50)} / ${s(b.pullMs.p99)}` : '-'} | ${s(p.pullMs.p50)} / ${s(p.pullMs.p99)} | ${c.speedupP50 !== undefined ? fmtRatio(c.speedupP50) : '-'} | ${b ? mb(b.bytes.upstream) : '-'} | ${mb(p.bytes.upstream)} (${(c.upstreamImages ?? 0).toFixed(1)} images) | ${mb(p.bytes.peer)} | ${p.missMs.count ? `${fmtQ(p.missMs, 'p50')} / ${fmtQ(p.missMs, 'p99')}${p.missMs.bucketed ? ` (avg ${fmtMs(p.missMs.avg)})` : ''}` : '-'} | ${p.nodeMissMs?.count ? `${fmtQ(p.nodeMissMs, 'p50')} / ${fmtQ(p.nodeMissMs, 'p99')}` : '-'} | ${p.failed}${b ? ` (baseline ${b.failed})` : ''} |`;
    });
  return [
    '| scenario | nodes | image / layers | baseline p50 / p99 | peerpull p50 / p99 | speedup p50 | upstream bytes, baseline | upstream bytes, peerpull | from peers | mirror 404 p50 / p99 | miss lookup in the node p50 / p99 | failed pulls |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...rows,
  ].join('\n');
}

/** JSON without the per-pull series noise trimmed: everything, numbers rounded. */
export function toJson(report: StormReport): string {
  return JSON.stringify(report, (_k, v: unknown) => (typeof v === 'number' && !Number.isInteger(v) ? Math.round(v * 100) / 100 : v), 2);
}

// ---- HTML ----

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
const COLORS = { upstream: '#d9534f', peer: '#5cb85c', local: '#337ab7', mirror: '#5cb85c', resolve: '#999', manifest: '#f0ad4e', config: '#5bc0de', layers: '#337ab7', total: '#333' };

function niceMax(v: number): number {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** Box plots (min, p50, p90, p99, max) of each phase and the total, one group per run. */
function phaseChart(runs: RunResult[]): string {
  const series = [...PHASES, 'total'] as const;
  const W = 760;
  const rowH = 16;
  const groupH = (series.length + 1) * rowH;
  const H = runs.length * groupH + 40;
  const left = 190;
  const max = niceMax(Math.max(1, ...runs.map((r) => r.pullMs.max)));
  const x = (ms: number) => left + (ms / max) * (W - left - 20);
  let out = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">`;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    out += `<line x1="${x(v)}" y1="10" x2="${x(v)}" y2="${H - 25}" stroke="#eee"/><text x="${x(v)}" y="${H - 10}" text-anchor="middle">${esc(fmtMs(v))}</text>`;
  }
  runs.forEach((r, gi) => {
    const y0 = 10 + gi * groupH;
    out += `<text x="4" y="${y0 + 11}" font-weight="bold">${esc(r.label)}</text>`;
    series.forEach((ph, si) => {
      const s = ph === 'total' ? r.pullMs : r.phaseMs[ph];
      const y = y0 + (si + 1) * rowH;
      out += `<text x="${left - 6}" y="${y + 4}" text-anchor="end">${ph}</text>`;
      if (!s || s.count === 0) return;
      const c = COLORS[ph];
      out += `<line x1="${x(s.min)}" y1="${y}" x2="${x(s.max)}" y2="${y}" stroke="${c}"/>`;
      out += `<rect x="${x(s.p50)}" y="${y - 5}" width="${Math.max(1, x(s.p90) - x(s.p50))}" height="10" fill="${c}" opacity="0.6"><title>${esc(`${r.label} ${ph}: min ${fmtMs(s.min)} p50 ${fmtMs(s.p50)} p90 ${fmtMs(s.p90)} p99 ${fmtMs(s.p99)} max ${fmtMs(s.max)}`)}</title></rect>`;
      out += `<line x1="${x(s.p50)}" y1="${y - 6}" x2="${x(s.p50)}" y2="${y + 6}" stroke="#000" stroke-width="2"/>`;
      out += `<line x1="${x(s.p99)}" y1="${y - 4}" x2="${x(s.p99)}" y2="${y + 4}" stroke="${c}" stroke-width="2"/>`;
    });
  });
  return out + '</svg>';
}

/** A stacked bar of upstream / peer / local bytes per run. */
function bytesChart(runs: RunResult[]): string {
  const W = 760;
  const barH = 18;
  const H = runs.length * (barH + 10) + 50;
  const left = 190;
  const max = niceMax(Math.max(1, ...runs.map((r) => r.bytes.upstream + r.bytes.peer + r.bytes.local)));
  const x = (b: number) => (b / max) * (W - left - 20);
  let out = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">`;
  runs.forEach((r, i) => {
    const y = 10 + i * (barH + 10);
    out += `<text x="${left - 6}" y="${y + 13}" text-anchor="end">${esc(r.label)}</text>`;
    let at = left;
    for (const k of ['upstream', 'peer', 'local'] as const) {
      const w = x(r.bytes[k]);
      if (w <= 0) continue;
      out += `<rect x="${at}" y="${y}" width="${w}" height="${barH}" fill="${COLORS[k]}"><title>${esc(`${r.label} ${k}: ${fmtBytes(r.bytes[k])}`)}</title></rect>`;
      at += w;
    }
    out += `<text x="${at + 4}" y="${y + 13}">${esc(fmtBytes(r.bytes.upstream + r.bytes.peer + r.bytes.local))}</text>`;
  });
  const ly = H - 20;
  ['upstream', 'peer', 'local'].forEach((k, i) => {
    out += `<rect x="${left + i * 110}" y="${ly}" width="12" height="12" fill="${COLORS[k as 'upstream']}"/><text x="${left + i * 110 + 16}" y="${ly + 10}">${k}</text>`;
  });
  return out + '</svg>';
}

/** Received bytes per second over time (via mirror, via upstream), one small chart per run. */
function throughputChart(r: RunResult): string {
  const W = 760;
  const H = 170;
  const left = 70;
  const pts = r.series;
  const rates: [number, number, number][] = [];
  for (let i = 1; i < pts.length; i++) {
    const dt = (pts[i]![0] - pts[i - 1]![0]) / 1000;
    if (dt <= 0) continue;
    rates.push([pts[i]![0], (pts[i]![1] - pts[i - 1]![1]) / dt, (pts[i]![2] - pts[i - 1]![2]) / dt]);
  }
  const tMax = Math.max(1, ...pts.map((p) => p[0]));
  const yMax = niceMax(Math.max(1, ...rates.map((p) => p[1] + p[2])));
  const x = (t: number) => left + (t / tMax) * (W - left - 20);
  const y = (v: number) => H - 30 - (v / yMax) * (H - 50);
  const line = (idx: 1 | 2) => rates.map((p, i) => `${i ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[idx]).toFixed(1)}`).join('');
  let out = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">`;
  out += `<text x="4" y="14" font-weight="bold">${esc(r.label)}</text>`;
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    out += `<line x1="${left}" y1="${y(v)}" x2="${W - 20}" y2="${y(v)}" stroke="#eee"/><text x="${left - 4}" y="${y(v) + 4}" text-anchor="end">${esc(fmtBytes(v))}/s</text>`;
  }
  for (let i = 0; i <= 4; i++) {
    const t = (tMax * i) / 4;
    out += `<text x="${x(t)}" y="${H - 12}" text-anchor="middle">${esc(fmtMs(t))}</text>`;
  }
  if (rates.length) {
    out += `<path d="${line(2)}" fill="none" stroke="${COLORS.upstream}" stroke-width="1.5"/>`;
    out += `<path d="${line(1)}" fill="none" stroke="${COLORS.mirror}" stroke-width="1.5"/>`;
  }
  if (r.killed?.atMs != null) out += `<line x1="${x(r.killed.atMs)}" y1="20" x2="${x(r.killed.atMs)}" y2="${H - 30}" stroke="#000" stroke-dasharray="4 3"/><text x="${x(r.killed.atMs) + 3}" y="28">kill</text>`;
  out += `<rect x="${W - 220}" y="6" width="10" height="10" fill="${COLORS.mirror}"/><text x="${W - 206}" y="15">via peerpull</text><rect x="${W - 120}" y="6" width="10" height="10" fill="${COLORS.upstream}"/><text x="${W - 106}" y="15">via upstream</text>`;
  return out + '</svg>';
}

export function toHtml(report: StormReport): string {
  const runs = report.runs;
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>peerpull storm report</title>
<style>body{font-family:sans-serif;margin:2em;max-width:820px}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}h2{margin-top:1.6em}</style>
</head><body>
<h1>peerpull storm</h1>
<p>${esc(report.startedAt)} &middot; <code>${esc(report.command)}</code> &middot; ${report.host.cpus} CPUs, Node ${esc(report.host.node)}, load average ${report.host.loadavgStart[0]?.toFixed(1)} at start, ${report.host.loadavgEnd[0]?.toFixed(1)} at end &middot; <b>${report.ok ? 'all pulls succeeded' : 'SOME PULLS FAILED'}</b></p>
<h2>Summary</h2>
<pre>${esc(summaryTable(report))}</pre>
<h2>Pull time per phase</h2>
<p>Line: min to max; box: p50 to p90; black tick: p50; coloured tick: p99.</p>
${phaseChart(runs)}
<h2>Bytes by source</h2>
${bytesChart(runs)}
<h2>Throughput over time</h2>
${runs.map(throughputChart).join('\n')}
<h2>Settings</h2>
<pre>${esc(JSON.stringify(report.settings, null, 2))}</pre>
</body></html>
`;
}

// A small line-chart writer for the scale figures: series of (N, value) points on a log-N axis,
// with optional horizontal reference lines (targets, bounds). Plain SVG text, no dependencies.

export interface Series {
  name: string;
  points: Array<[number, number]>;
  dashed?: boolean;
}

export interface Chart {
  title: string;
  yLabel: string;
  series: Series[];
  /** Horizontal lines, e.g. a target or the configured bound. */
  refs?: Array<{ y: number; label: string }>;
  /** Force the y axis to start at 0 (counts, times). */
  yFromZero?: boolean;
}

const W = 660;
const H = 340;
const M = { left: 64, right: 210, top: 36, bottom: 46 };
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Round tick steps (1, 2, 5 x 10^k) covering [lo, hi] in about `n` steps. */
function ticks(lo: number, hi: number, n = 5): number[] {
  if (hi <= lo) hi = lo + 1;
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function fmt(v: number): string {
  if (Math.abs(v) >= 1000) return `${Number((v / 1000).toPrecision(3))}k`;
  return String(Number(v.toPrecision(3)));
}

export function lineChart(c: Chart): string {
  const pts = c.series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const xs = [...new Set(pts.map(([x]) => x))].sort((a, b) => a - b);
  const ys = [...pts.map(([, y]) => y), ...(c.refs ?? []).map((r) => r.y)];
  const xMin = Math.log10(Math.min(...xs, 50) * 0.8);
  const xMax = Math.log10(Math.max(...xs, 100) * 1.25);
  let yMin = c.yFromZero ? 0 : Math.min(...ys);
  let yMax = Math.max(...ys, yMin + 1e-9);
  const pad = (yMax - yMin) * 0.08 || 1;
  yMax += pad;
  if (!c.yFromZero) yMin -= pad;
  const yt = ticks(yMin, yMax);
  yMin = Math.min(yMin, yt[0]);
  yMax = Math.max(yMax, yt[yt.length - 1]);
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const sx = (x: number) => M.left + ((Math.log10(x) - xMin) / (xMax - xMin)) * pw;
  const sy = (y: number) => M.top + ph - ((y - yMin) / (yMax - yMin)) * ph;
  const o: string[] = [];
  o.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`);
  o.push(`<rect width="${W}" height="${H}" fill="#fff"/>`);
  o.push(`<text x="${M.left}" y="20" font-size="13" font-weight="bold">${esc(c.title)}</text>`);
  for (const t of yt) {
    o.push(`<line x1="${M.left}" x2="${M.left + pw}" y1="${sy(t).toFixed(1)}" y2="${sy(t).toFixed(1)}" stroke="#eee"/>`);
    o.push(`<text x="${M.left - 6}" y="${(sy(t) + 4).toFixed(1)}" text-anchor="end">${fmt(t)}</text>`);
  }
  for (const x of xs) {
    o.push(`<line x1="${sx(x).toFixed(1)}" x2="${sx(x).toFixed(1)}" y1="${M.top}" y2="${M.top + ph}" stroke="#eee"/>`);
    o.push(`<text x="${sx(x).toFixed(1)}" y="${M.top + ph + 16}" text-anchor="middle">${x}</text>`);
  }
  o.push(`<rect x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`);
  o.push(`<text x="${M.left + pw / 2}" y="${H - 8}" text-anchor="middle">nodes (N, log scale)</text>`);
  o.push(`<text transform="translate(14 ${M.top + ph / 2}) rotate(-90)" text-anchor="middle">${esc(c.yLabel)}</text>`);
  let legendY = M.top + 8;
  for (const r of c.refs ?? []) {
    o.push(`<line x1="${M.left}" x2="${M.left + pw}" y1="${sy(r.y).toFixed(1)}" y2="${sy(r.y).toFixed(1)}" stroke="#555" stroke-dasharray="6 4"/>`);
    // Inside the plot, above its line: the right-hand column belongs to the legend.
    o.push(`<text x="${M.left + 4}" y="${(sy(r.y) - 4).toFixed(1)}" fill="#555">${esc(r.label)}</text>`);
  }
  c.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const p = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)).sort((a, b) => a[0] - b[0]);
    if (p.length > 1) o.push(`<polyline fill="none" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="4 3"' : ''} points="${p.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ')}"/>`);
    for (const [x, y] of p) o.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3.5" fill="${color}"><title>${esc(`${s.name}: N=${x} -> ${fmt(y)}`)}</title></circle>`);
    o.push(`<line x1="${W - M.right + 10}" x2="${W - M.right + 28}" y1="${legendY}" y2="${legendY}" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="4 3"' : ''}/>`);
    o.push(`<text x="${W - M.right + 32}" y="${legendY + 4}">${esc(s.name)}</text>`);
    legendY += 16;
  });
  o.push('</svg>');
  return o.join('\n') + '\n';
}

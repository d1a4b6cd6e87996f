// Figures of a storm run: percentiles of pull and miss times, and how they print (sizes,
// durations, ratios, plain text tables).

export interface Summary {
  count: number;
  min: number;
  avg: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  /**
   * From a histogram (containerd mode's misses): the percentiles, min and max are bucket bounds
   * ("at most"), only avg is exact.
   */
  bucketed?: boolean;
  /** Bucketed, and some values were above the last finite bound (reported as that bound). */
  aboveMax?: boolean;
}

/** Nearest-rank percentiles. */
export function summarize(values: number[]): Summary {
  if (values.length === 0) return { count: 0, min: 0, avg: 0, p50: 0, p90: 0, p99: 0, max: 0 };
  const s = [...values].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
  return { count: s.length, min: s[0]!, avg: s.reduce((a, b) => a + b, 0) / s.length, p50: q(50), p90: q(90), p99: q(99), max: s[s.length - 1]! };
}

export function fmtBytes(n: number): string {
  if (n < 1e3) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(2)} GB`;
}

export function fmtMs(ms: number): string {
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

/** A percentile, with "≤" when it is a histogram bucket's upper bound. */
export function fmtQ(s: Summary, q: 'p50' | 'p90' | 'p99'): string {
  if (!s.bucketed) return fmtMs(s[q]);
  return `${s.aboveMax && s[q] >= s.max ? '>' : '≤'}${fmtMs(s[q])}`;
}

export function fmtRatio(x: number): string {
  if (!Number.isFinite(x)) return 'n/a';
  return `${x >= 10 ? x.toFixed(0) : x.toFixed(2)}x`;
}

/** A plain text table with right-aligned numbers. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

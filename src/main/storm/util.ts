// Small helpers of the storm tool: human sizes and durations, percentiles, formatting.

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

const UNITS: Record<string, number> = {
  '': 1, B: 1,
  K: 1e3, KB: 1e3, M: 1e6, MB: 1e6, G: 1e9, GB: 1e9,
  KI: 1024, KIB: 1024, MI: 1024 ** 2, MIB: 1024 ** 2, GI: 1024 ** 3, GIB: 1024 ** 3,
};

/** `10MB` (10^6), `100MiB`, `1GB`, `65536`: a byte count. */
export function parseBytes(raw: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([A-Za-z]*)$/.exec(raw.trim());
  const unit = m ? UNITS[m[2]!.toUpperCase()] : undefined;
  if (!m || unit === undefined) throw new UsageError(`${what}: "${raw}" is not a size (e.g. 10MB, 100MiB, 1GB)`);
  const n = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(n)) throw new UsageError(`${what}: "${raw}" is too large`);
  return n;
}

/** `500ms`, `3s`, `2m`: milliseconds. */
export function parseMs(raw: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(raw.trim());
  if (!m) throw new UsageError(`${what}: "${raw}" is not a duration (e.g. 500ms, 3s, 2m)`);
  return Math.round(Number(m[1]) * { ms: 1, s: 1000, m: 60_000 }[m[2] as 'ms' | 's' | 'm']);
}

export function parseIntIn(raw: string, what: string, min: number, max: number): number {
  if (!/^\d+$/.test(raw.trim())) throw new UsageError(`${what}: "${raw}" is not a whole number`);
  const n = Number(raw);
  if (n < min || n > max) throw new UsageError(`${what}: ${n} is outside ${min}..${max}`);
  return n;
}

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

export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });

/** A plain text table with right-aligned numbers. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/**
 * CPU seconds used so far by the whole machine (busy time), by the given processes, and by this
 * process's reaped children (short-lived `ctr` pulls, killed nodes) (Linux /proc; null elsewhere).
 */
export function cpuSnapshot(pids: number[]): { machine: number; ours: number; perPid: Map<number, number>; children: number } | null {
  try {
    const { readFileSync } = process.getBuiltinModule('node:fs');
    const hz = 100;
    const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal
    const busy = cpu[0]! + cpu[1]! + cpu[2]! + cpu[5]! + cpu[6]! + cpu[7]!;
    let ours = 0;
    const perPid = new Map<number, number>();
    for (const pid of pids) {
      try {
        const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
        const t = (Number(rest[11]) + Number(rest[12])) / hz; // utime stime
        perPid.set(pid, t);
        ours += t;
      } catch {
        // exited
      }
    }
    const self = readFileSync('/proc/self/stat', 'utf8');
    const selfRest = self.slice(self.lastIndexOf(')') + 2).split(' ');
    const children = (Number(selfRest[13]) + Number(selfRest[14])) / hz; // cutime cstime
    return { machine: busy / hz, ours, perPid, children };
  } catch {
    return null;
  }
}

// Values of storm's command-line options: sizes, durations, bounded numbers, and the error that
// makes storm print its usage and exit 2.

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

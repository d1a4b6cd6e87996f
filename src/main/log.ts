// Structured logs: one JSON object per line on stdout, so a log pipeline can index fields.
// Used by the main thread; worker threads send their problems to main instead of logging.

import type { LogLevel } from './config.js';

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type Fields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  child(fields: Fields): Logger;
}

let threshold = ORDER.info;
let sink: (line: string) => void = (line) => process.stdout.write(line);

export function setLogLevel(level: LogLevel): void {
  threshold = ORDER[level];
}

/** Redirects log lines (tests capture them). */
export function setLogSink(fn: (line: string) => void): void {
  sink = fn;
}

function errorFields(v: unknown): unknown {
  if (v instanceof Error) {
    const o: Record<string, unknown> = { message: v.message, name: v.name };
    const code = (v as NodeJS.ErrnoException).code;
    if (code) o.code = code;
    return o;
  }
  return v;
}

function write(level: LogLevel, base: Fields, msg: string, fields?: Fields): void {
  if (ORDER[level] < threshold) return;
  const rec: Record<string, unknown> = { time: new Date().toISOString(), level, msg, ...base };
  if (fields) for (const [k, v] of Object.entries(fields)) rec[k] = errorFields(v);
  let line: string;
  try {
    line = JSON.stringify(rec);
  } catch {
    line = JSON.stringify({ time: rec.time, level, msg, note: 'fields not serialisable' });
  }
  sink(line + '\n');
}

export function logger(base: Fields = {}): Logger {
  return {
    debug: (m, f) => write('debug', base, m, f),
    info: (m, f) => write('info', base, m, f),
    warn: (m, f) => write('warn', base, m, f),
    error: (m, f) => write('error', base, m, f),
    child: (f) => logger({ ...base, ...f }),
  };
}

export const log = logger();

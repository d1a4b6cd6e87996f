// Follows a child process's JSON-lines output (peerpull's logs, storm's --events) and waits for a
// line matching a predicate, failing fast when the child exits first.

import type { ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';

export type Line = Record<string, unknown>;

export class JsonLines {
  /** Every line so far; lines that are not JSON are kept as `{ raw }` unless `jsonOnly`. */
  readonly lines: Line[] = [];
  private readonly waiters = new Set<() => void>();
  private buf = '';

  constructor(
    private readonly child: ChildProcess,
    stream: Readable,
    /** Also sees every raw chunk (a log file, a stderr collector). */
    tee?: (chunk: string) => void,
    private readonly jsonOnly = false,
  ) {
    stream.setEncoding('utf8').on('data', (d: string) => {
      tee?.(d);
      this.buf += d;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        let parsed: unknown;
        try {
          parsed = JSON.parse(line);
        } catch {
          parsed = undefined;
        }
        if (typeof parsed === 'object' && parsed !== null) this.lines.push(parsed as Line);
        else if (!this.jsonOnly) this.lines.push({ raw: line });
      }
      for (const w of this.waiters) w();
    });
  }

  /** Resolves with the first line matching `pred`; `context()` goes into the error messages. */
  waitFor(pred: (l: Line) => boolean, timeoutMs: number, what: string, context: () => string): Promise<Line> {
    return new Promise((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
        this.child.off('exit', onExit);
      };
      const check = () => {
        const hit = this.lines.find(pred);
        if (hit) {
          cleanup();
          resolve(hit);
        }
      };
      const onExit = () => {
        cleanup();
        reject(new Error(`${what} exited (${this.child.exitCode ?? this.child.signalCode}) before the expected line; ${context()}; last lines: ${JSON.stringify(this.lines.slice(-5))}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`${what}: timed out waiting for a line; ${context()}; last lines: ${JSON.stringify(this.lines.slice(-5))}`));
      }, timeoutMs);
      this.waiters.add(check);
      this.child.on('exit', onExit);
      check();
    });
  }
}

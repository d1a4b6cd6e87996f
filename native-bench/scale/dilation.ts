// Time dilation for the scale harness (`--dilation K`): every clock and timer of a harness
// process runs K times slower than the wall clock. The nodes' protocol (timeouts, intervals,
// deadlines, lookup rates, scenario lengths) then unfolds over K times the wall time while each
// event still costs the same CPU, so the two cores of this machine carry N nodes as 2K cores
// would. A real node has a core's worth of CPU to itself; here 1,000 nodes share two, 2 ms of
// CPU per node per second. Dilation is how the runs tell "the design misses the target" apart
// from "the simulation ran out of CPU".
//
// Dilated: Date (now and `new Date()`), performance.now, process.hrtime, setTimeout and
// setInterval (global, node:timers, node:timers/promises), AbortSignal.timeout and socket idle
// timeouts. Not dilated: the kernel (loopback, TCP retransmission), dnsmasq, and what the
// runtime measures natively (event loop delay, GC pauses, CPU time): the host converts the
// first two to protocol time itself (`dilation().toProtocolMs`); CPU stays real CPU.
//
// Every process of a run shares one epoch (passed in PEERPULL_SCALE_DILATION as "K:epochMs"),
// so their Date.now() agree. A host installs it on import, before libp2p loads: keep
// `import './dilation.js'` the first import of host.ts.

import net from 'node:net';
import { syncBuiltinESMExports } from 'node:module';
import timers from 'node:timers';
import timersPromises from 'node:timers/promises';
import { promisify } from 'node:util';

export const DILATION_ENV = 'PEERPULL_SCALE_DILATION';
/** Node turns a delay past this into 1 ms (TimeoutOverflowWarning): a dilated long timer must not. */
const MAX_DELAY_MS = 2 ** 31 - 1;

export interface Dilation {
  factor: number;
  /** Real milliseconds (as the runtime measures them) to protocol milliseconds. */
  toProtocolMs(realMs: number): number;
}

let installed: Dilation = { factor: 1, toProtocolMs: (ms) => ms };

export function dilation(): Dilation {
  return installed;
}

/** Parses "K:epochMs" (K >= 1). Throws naming the variable on anything else. */
export function parseDilation(value: string): { factor: number; epochMs: number } {
  const m = /^(\d+(?:\.\d+)?):(\d+)$/.exec(value);
  const factor = m ? Number(m[1]) : NaN;
  if (!m || !(factor >= 1) || factor > 100) throw new Error(`${DILATION_ENV}: expected "K:epochMs" with 1 <= K <= 100, got ${JSON.stringify(value)}`);
  return { factor, epochMs: Number(m[2]) };
}

/**
 * Makes this process's clocks and timers run `factor` times slower than the wall clock from
 * `epochMs` (a real Date.now() shared by the run's processes) on. Once per process; sets
 * PEERPULL_SCALE_DILATION so child processes forked afterwards install the same.
 */
export function installDilation(factor: number, epochMs: number): Dilation {
  if (installed.factor !== 1) throw new Error('time dilation is already installed in this process');
  if (!(factor >= 1) || factor > 100) throw new Error(`time dilation factor must be in [1, 100], got ${factor}`);
  process.env[DILATION_ENV] = `${factor}:${Math.floor(epochMs)}`;
  if (factor === 1) return installed;
  const k = factor;
  const stretch = (ms: unknown): unknown => (typeof ms === 'number' && ms > 0 ? Math.min(MAX_DELAY_MS, ms * k) : ms);

  // Clocks. Date.now() agrees across processes through the shared epoch; the monotonic ones
  // only need to agree with themselves.
  const RealDate = Date;
  const realNow = RealDate.now.bind(RealDate);
  const now = () => Math.floor(epochMs + (realNow() - epochMs) / k);
  RealDate.now = now;
  globalThis.Date = new Proxy(RealDate, {
    construct: (target, args, newTarget) => Reflect.construct(target, args.length === 0 ? [now()] : args, newTarget),
    apply: () => new RealDate(now()).toString(),
  });
  const realPerfNow = performance.now.bind(performance);
  const perf0 = realPerfNow();
  Object.defineProperty(performance, 'now', { value: () => perf0 + (realPerfNow() - perf0) / k, configurable: true, writable: true });
  const realHr = process.hrtime.bigint.bind(process.hrtime);
  const hr0 = realHr();
  const bigK = BigInt(Math.round(k * 1000));
  const hrBig = () => hr0 + ((realHr() - hr0) * 1000n) / bigK;
  const hrtime = ((prev?: [number, number]) => {
    let t = hrBig();
    if (prev) t -= BigInt(prev[0]) * 1_000_000_000n + BigInt(prev[1]);
    return [Number(t / 1_000_000_000n), Number(t % 1_000_000_000n)];
  }) as typeof process.hrtime;
  hrtime.bigint = hrBig;
  process.hrtime = hrtime;

  // Timers: the globals, both node:timers modules (ESM importers see the change through
  // syncBuiltinESMExports), AbortSignal.timeout, and socket idle timeouts (libp2p's TCP
  // transport closes sockets idle past its inactivity timeout).
  const realSetTimeout = timers.setTimeout;
  const realSetInterval = timers.setInterval;
  const setTimeoutD = ((fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => realSetTimeout(fn, stretch(ms) as number, ...args)) as typeof setTimeout;
  const setIntervalD = ((fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => realSetInterval(fn, stretch(ms) as number, ...args)) as typeof setInterval;
  globalThis.setTimeout = setTimeoutD;
  globalThis.setInterval = setIntervalD;
  timers.setTimeout = setTimeoutD;
  timers.setInterval = setIntervalD;
  const p = timersPromises as unknown as Record<string, (...a: unknown[]) => unknown> & { scheduler?: { wait: (ms: number, o?: unknown) => Promise<void> } };
  const realSleep = p.setTimeout;
  const realEvery = p.setInterval;
  p.setTimeout = (ms: unknown, ...rest: unknown[]) => realSleep(stretch(ms), ...rest);
  p.setInterval = (ms: unknown, ...rest: unknown[]) => realEvery(stretch(ms), ...rest);
  if (p.scheduler) {
    const realWait = p.scheduler.wait.bind(p.scheduler);
    p.scheduler.wait = (ms: number, o?: unknown) => realWait(stretch(ms) as number, o);
  }
  // util.promisify(setTimeout) looks for this: without it, it would wrap the wrapper wrongly.
  Object.defineProperty(setTimeoutD, promisify.custom, { value: p.setTimeout, configurable: true });
  const realAbortTimeout = AbortSignal.timeout.bind(AbortSignal);
  AbortSignal.timeout = (ms: number) => realAbortTimeout(stretch(ms) as number);
  const realSocketTimeout = net.Socket.prototype.setTimeout;
  net.Socket.prototype.setTimeout = function (this: net.Socket, ms: number, cb?: () => void) {
    return realSocketTimeout.call(this, stretch(ms) as number, cb);
  };
  syncBuiltinESMExports();

  installed = { factor: k, toProtocolMs: (ms) => ms / k };
  return installed;
}

// A process forked by a dilated run dilates itself the same way on import.
const inherited = process.env[DILATION_ENV];
if (inherited !== undefined && installed.factor === 1) {
  const { factor, epochMs } = parseDilation(inherited);
  if (factor !== 1) installDilation(factor, epochMs);
}

// The scale harness's time dilation (native-bench/scale/dilation.ts): in a dilated process every
// clock and timer the nodes use runs K times slower than the wall clock. Each check runs in a
// child process (a dilated test runner would stretch its own timeouts) and compares with the
// real clocks the child saved before dilating. Timers never fire early, so "waited at least K
// times as long" is a bound that holds on any machine, however loaded; nothing here asserts an
// upper bound on a wait.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, test } from 'node:test';
import { promisify } from 'node:util';
import { DILATION_ENV, parseDilation } from '../native-bench/scale/dilation.js';

const DILATION_URL = new URL('../native-bench/scale/dilation.js', import.meta.url).href;
const run = promisify(execFile);

/** Runs `body` (ESM, top-level await) in a child node with `env`; returns what it printed as JSON. */
async function child(body: string, env: Record<string, string>): Promise<Record<string, any>> {
  const script = `
    const realNow = Date.now.bind(Date);
    const realHr = process.hrtime.bigint.bind(process.hrtime);
    const realPerf = performance.now.bind(performance);
    const realSetTimeout = globalThis.setTimeout;
    const realMs = (from) => Number(realHr() - from) / 1e6;
    const mod = await import(${JSON.stringify(DILATION_URL)});
    const out = {};
    // AbortSignal.timeout's timer does not hold the loop open: this does, until the end.
    const keepAlive = realSetTimeout(() => {}, 60_000);
    ${body}
    clearTimeout(keepAlive);
    process.stdout.write(JSON.stringify(out));`;
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, ...env }, timeout: 60_000 });
  return JSON.parse(stdout);
}

describe('time dilation of the scale harness', () => {
  test('an inherited factor stretches every timer the nodes use, and clocks run K times slower', async () => {
    const out = await child(
      `
      const { setTimeout: sleep } = await import('node:timers/promises');
      const timers = await import('node:timers');
      const net = await import('node:net');
      let t = realHr(); await new Promise((r) => setTimeout(r, 100)); out.global = realMs(t);
      t = realHr(); await new Promise((r) => timers.setTimeout(r, 100)); out.timersModule = realMs(t);
      t = realHr(); await sleep(100); out.promises = realMs(t);
      t = realHr(); await (await import('node:util')).promisify(setTimeout)(100); out.promisified = realMs(t);
      t = realHr(); await new Promise((r) => AbortSignal.timeout(100).addEventListener('abort', r)); out.abortSignal = realMs(t);
      t = realHr(); await new Promise((r) => { let n = 0; const i = setInterval(() => { if (++n === 2) { clearInterval(i); r(); } }, 50); }); out.interval = realMs(t);
      // A long timer stretched past 2^31-1 ms would fire after 1 ms: it must be clamped instead.
      let fired = false; const long = setTimeout(() => { fired = true; }, 2 ** 30);
      await new Promise((r) => realSetTimeout(r, 100)); clearTimeout(long); out.longFired = fired;
      const s = new net.Socket(); s.setTimeout(100); out.socketTimeout = s.timeout; s.destroy();
      // Clocks, each read between two real readings, then again after 200 real ms.
      const read = () => { const r1 = realNow(), h1 = realHr(), p1 = realPerf(); const d = Date.now(), nd = new Date().getTime(), h = process.hrtime.bigint(), p = performance.now(); const r2 = realNow(), h2 = realHr(), p2 = realPerf(); return { r1, r2, d, nd, h1: Number(h1), h2: Number(h2), h: Number(h), p1, p2, p }; };
      out.a = read(); await new Promise((r) => realSetTimeout(r, 200)); out.b = read();
      out.tuple = process.hrtime(); out.tupleDiff = process.hrtime(out.tuple);
      out.dateCall = typeof Date(); out.instance = new Date() instanceof Date; out.given = new Date(86400000).getTime();
      out.factor = mod.dilation().factor; out.protocolMs = mod.dilation().toProtocolMs(400);
      `,
      { [DILATION_ENV]: `4:${Date.now()}` },
    );
    // Timers: 100 protocol ms are at least 400 real ms (less 2 ms: libuv rounds to its loop clock).
    for (const k of ['global', 'timersModule', 'promises', 'promisified', 'abortSignal', 'interval'] as const) assert.ok(out[k] >= 398, `${k}: fired after ${out[k]} real ms, expected >= 400`);
    assert.equal(out.longFired, false, 'a timer of 2^30 ms, stretched, must not overflow into 1 ms');
    assert.equal(out.socketTimeout, 400, 'socket idle timeouts are stretched too');
    // Clocks: what each advanced over the wait is a quarter of what the real one did.
    const { a, b } = out;
    const between = (v: number, lo: number, hi: number, what: string) => assert.ok(v >= lo - 1 && v <= hi + 1, `${what}: ${v} not in [${lo}, ${hi}]`);
    between(b.d - a.d, (b.r1 - a.r2) / 4, (b.r2 - a.r1) / 4, 'Date.now');
    between(b.nd - a.nd, (b.r1 - a.r2) / 4, (b.r2 - a.r1) / 4, 'new Date()');
    between(b.p - a.p, (b.p1 - a.p2) / 4, (b.p2 - a.p1) / 4, 'performance.now');
    between((b.h - a.h) / 1e6, (b.h1 - a.h2) / 4e6, (b.h2 - a.h1) / 4e6, 'process.hrtime.bigint');
    assert.ok(b.r1 - a.r2 >= 198, 'the real wait happened');
    assert.equal(out.tupleDiff.length, 2);
    assert.equal(out.dateCall, 'string');
    assert.equal(out.instance, true);
    assert.equal(out.given, 86_400_000, 'a given time is not dilated');
    assert.equal(out.factor, 4);
    assert.equal(out.protocolMs, 100, 'a loop delay measured in real time, reported in protocol time');
  });

  test("processes of one run agree on Date.now(): it is the shared epoch plus the real time since, over K", async () => {
    const epoch = Date.now() - 40_000; // the run started 40 s ago: 10 s of protocol time at K = 4
    const out = await child(`out.r1 = realNow(); out.d = Date.now(); out.r2 = realNow();`, { [DILATION_ENV]: `4:${epoch}` });
    assert.ok(out.d >= epoch + Math.floor((out.r1 - epoch) / 4) && out.d <= epoch + Math.ceil((out.r2 - epoch) / 4), `${out.d} against epoch ${epoch}, real ${out.r1}-${out.r2}`);
  });

  test('installDilation passes the factor and epoch on to the processes it forks', async () => {
    const out = await child(
      `const epoch = realNow();
       mod.installDilation(3, epoch);
       out.env = process.env.${DILATION_ENV}; out.epoch = epoch;
       const t = realHr(); await new Promise((r) => setTimeout(r, 50)); out.waited = realMs(t);
       // A forked child (as a scale host is) dilates itself on import of the module.
       const c = (await import('node:child_process')).spawnSync(process.execPath, ['--input-type=module', '-e', 'const m = await import(' + JSON.stringify(${JSON.stringify(DILATION_URL)}) + '); process.stdout.write(String(m.dilation().factor))'], { env: process.env, encoding: 'utf8' });
       out.childFactor = c.stdout; out.childErr = c.stderr;
       try { mod.installDilation(2, epoch); out.twice = 'installed twice'; } catch (e) { out.twice = e.message; }`,
      {},
    );
    assert.equal(out.env, `3:${out.epoch}`);
    assert.ok(out.waited >= 148, `50 protocol ms took ${out.waited} real ms, expected >= 150`);
    assert.equal(out.childFactor, '3', out.childErr);
    assert.match(out.twice, /already installed/);
  });

  test('a bad PEERPULL_SCALE_DILATION is an error naming the variable, not a silent real-time run', async () => {
    for (const bad of ['fast', '4', '0:123', '0.5:123', '1000:123', ':123']) {
      assert.throws(() => parseDilation(bad), new RegExp(`${DILATION_ENV}: expected "K:epochMs"`), bad);
      await assert.rejects(child('', { [DILATION_ENV]: bad }), (err: Error & { stderr?: string }) => (err.stderr ?? '').includes(DILATION_ENV), bad);
    }
    assert.deepEqual(parseDilation('2.5:1700000000000'), { factor: 2.5, epochMs: 1_700_000_000_000 });
  });
});

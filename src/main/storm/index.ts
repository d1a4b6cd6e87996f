// `peerpull storm`: pull-storm load tests. Against a running cluster (its peerpull endpoints, listed
// or from the headless DNS name) or, with --local N, against N local nodes and an upstream served
// here. See USAGE.

import { Resolver } from 'node:dns/promises';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';

import { ConfigError, loadConfig } from '../config.js';
import { CLUSTER_SETTINGS, liveClusters } from './cluster.js';
import { containerdPrerequisites } from './containerd.js';
import { runLocal, SCENARIOS, type ScenarioName } from './local.js';
import { compare, markdownTable, summaryTable, toHtml, toJson, type StormReport } from './report.js';
import { runWaves, type Progress, type RunResult, type Target } from './run.js';
import { parseBytes, parseIntIn, parseMs, UsageError } from './options.js';
import { fmtBytes, fmtMs } from './summary.js';
import { wavesOf } from './local.js';

export const STORM_USAGE = `usage: peerpull storm [--local N | --endpoints URL,... | --dns NAME] [options]

Emulates containerd pulls (HEAD tag, GET manifest/index and the platform manifest, GET config and
layers, all with ?ns=), many at once; verifies every digest; reports pull times, errors and where
the bytes came from (the nodes' /metrics).

local cluster (N peerpull processes on 127.0.90.x, an upstream registry served here):
  --local N               number of nodes
  --scenario LIST         rolling,storm,miss,churn (default rolling,storm): rolling = waves of
                          --wave %; storm = every node at once; miss = every node an image of its
                          own (1/N of --size), which no other node has or fetches; churn = the
                          first wave's nodes are killed while the second pulls from them
  --baseline              also run every scenario without peerpull (straight to the upstream): ratios
  --size SIZE             image size, e.g. 10MB, 100MB, 1GB (default 10MB)
  --layers N              layers per image (default 4)
  --platforms LIST        e.g. linux/amd64,linux/arm64: a multi-platform index (first one is pulled)
  --upstream-rate RATE    upstream bandwidth for all connections together, e.g. 100MB (per second;
                          default 100MB, 0 = unlimited)
  --wave PERCENT          rolling/churn wave size in % of the nodes (default 20)
  --wave-gap DURATION     pause between waves (default 5s, like pods becoming ready: a node's new
                          content is findable by peers after a store resync (1s here) and an
                          advertise, measured 1-2 s at 10 nodes and 2.5-4 s at 20 on 2 cores)
  --churn-at FRACTION     churn: kill the holders when the second wave moved this much (default 0.25)
  --ip-base A.B.C         node addresses A.B.C.1 ... (default 127.0.90)
  --dir DIR               parent of the cluster's temp dir (default the system temp dir)
  --containerd            a real containerd per node (root; containerd and ctr installed): peerpull's
                          content source, and the puller: \`ctr content fetch\` through a hosts.toml
                          listing the node's peerpull, then the upstream (containerd falls back itself)
  --unpack                with --containerd: \`ctr images pull\` (fetch and unpack into a snapshot)
  --node-env NAME=VALUE   a PEERPULL_* setting for every node (repeatable), e.g.
                          --node-env PEERPULL_SHARE_DOWNLOADS=false to measure without a feature;
                          checked as \`serve\` checks it (addresses, stores, bootstrap are storm's)

running cluster:
  --endpoints LIST        peerpull registry URLs, e.g. http://10.0.0.5:5000,http://10.0.0.6:5000
  --dns NAME              or a headless Service name (A records); with --port (default 5000)
  --dns-server IP[:PORT]  DNS server for --dns
  --metrics-port PORT     nodes' metrics port (default 9090)
  --image REF,...         fully qualified images to pull (registry/repository:tag)
  --upstream URL          fall back here on a 404, as containerd does (without it a 404 fails the pull)
  --scenario storm|rolling, --wave, --wave-gap, --baseline (needs --upstream) as above

output:
  The table's "cpu ours+others" column: CPU cores used during the run by storm and its nodes, and
  by everything else on the machine (a busy machine makes every number slower).

  --json                  the whole report as JSON on stdout (instead of the table)
  --markdown              the scenario-vs-baseline table in Markdown on stdout (after the table)
  --html FILE             an HTML report with inline SVG charts (opens offline)
  --events                JSON lines on stderr as things happen (cluster PIDs, runs, kills)
  --concurrency N         parallel blob downloads per pull (containerd default 3)

Exit status: 0 all pulls verified, 1 a pull failed, 2 usage error, 130/143 interrupted.`;

const BOOLEAN = new Set(['--baseline', '--json', '--markdown', '--events', '--containerd', '--unpack', '--help']);
/** Flags that may be given more than once: their values are joined with newlines. */
const REPEATED = new Set(['--node-env']);

export function parseStormArgs(argv: string[]): Record<string, string> {
  const flags: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) throw new UsageError(`unexpected argument "${a}"`);
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(0, eq) : a;
    if (BOOLEAN.has(name)) {
      flags[name] = eq > 0 ? a.slice(eq + 1) : 'true';
      continue;
    }
    let v: string;
    if (eq > 0) v = a.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) throw new UsageError(`${a} needs a value`);
      v = next;
      i++;
    }
    flags[name] = REPEATED.has(name) && flags[name] !== undefined ? `${flags[name]}\n${v}` : v;
  }
  const known = new Set([
    ...BOOLEAN, '--local', '--scenario', '--size', '--layers', '--platforms', '--upstream-rate', '--wave', '--wave-gap', '--churn-at', '--ip-base', '--dir',
    '--endpoints', '--dns', '--dns-server', '--port', '--metrics-port', '--image', '--upstream', '--html', '--concurrency', '--node-env',
  ]);
  for (const k of Object.keys(flags)) if (!known.has(k)) throw new UsageError(`unknown flag ${k}`);
  return flags;
}

/** `--node-env` values: PEERPULL_* settings validated by the config module, none the cluster decides. */
export function parseNodeEnv(raw: string | undefined): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of (raw ?? '').split('\n')) {
    if (!line) continue;
    const eq = line.indexOf('=');
    const name = eq > 0 ? line.slice(0, eq) : '';
    if (!name.startsWith('PEERPULL_')) throw new UsageError(`--node-env: "${line}" is not PEERPULL_NAME=VALUE`);
    if (CLUSTER_SETTINGS.includes(name)) throw new UsageError(`--node-env: ${name} is set by the local cluster itself`);
    env[name] = line.slice(eq + 1);
  }
  try {
    loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(`--node-env: ${err.message}`);
    throw err;
  }
  return env;
}

function renderProgress(p: Progress): string {
  const rate = p.elapsedMs > 0 ? ((p.bytes.mirror + p.bytes.upstream) / p.elapsedMs) * 1000 : 0;
  return `[${p.label}] wave ${p.wave}/${p.waves}  pulls ${p.done}/${p.total}${p.failed ? ` (${p.failed} failed)` : ''}  peerpull ${fmtBytes(p.bytes.mirror)}  upstream ${fmtBytes(p.bytes.upstream)}  ${fmtBytes(rate)}/s  ${fmtMs(p.elapsedMs)}${p.note ? `  ${p.note}` : ''}`;
}

async function resolveEndpoints(flags: Record<string, string>): Promise<{ url: string; metricsUrl: string }[]> {
  const metricsPort = flags['--metrics-port'] ? parseIntIn(flags['--metrics-port'], '--metrics-port', 1, 65535) : 9090;
  let urls: string[];
  if (flags['--endpoints']) {
    urls = flags['--endpoints'].split(',').map((s) => s.trim()).filter(Boolean);
  } else {
    const port = flags['--port'] ? parseIntIn(flags['--port'], '--port', 1, 65535) : 5000;
    const r = new Resolver();
    if (flags['--dns-server']) r.setServers([flags['--dns-server']]);
    const name = flags['--dns']!;
    const v4 = await r.resolve4(name).catch(() => [] as string[]);
    const v6 = await r.resolve6(name).catch(() => [] as string[]);
    urls = [...v4.map((ip) => `http://${ip}:${port}`), ...v6.map((ip) => `http://[${ip}]:${port}`)];
    if (urls.length === 0) throw new UsageError(`--dns ${name}: no A or AAAA records`);
  }
  return urls.map((u) => {
    let parsed: URL;
    try {
      parsed = new URL(u);
    } catch {
      throw new UsageError(`--endpoints: "${u}" is not a URL`);
    }
    return { url: `${parsed.protocol}//${parsed.host}`, metricsUrl: `${parsed.protocol}//${parsed.hostname.includes(':') ? `[${parsed.hostname}]` : parsed.hostname}:${metricsPort}` };
  });
}

/** Runs `peerpull storm`; resolves to the exit status. */
export async function runStorm(argv: string[]): Promise<number> {
  let flags: Record<string, string>;
  try {
    flags = parseStormArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`peerpull storm: ${err.message}\n${STORM_USAGE}\n`);
      return 2;
    }
    throw err;
  }
  if (flags['--help']) {
    process.stdout.write(STORM_USAGE + '\n');
    return 0;
  }
  const events = flags['--events'] === 'true';
  const emit = (e: Record<string, unknown>) => {
    if (events) process.stderr.write(JSON.stringify({ time: new Date().toISOString(), ...e }) + '\n');
  };
  const tty = process.stderr.isTTY === true && !events;
  let lastLine = 0;
  const onProgress = (p: Progress) => {
    if (!tty) return;
    const now = Date.now();
    if (now - lastLine < 200 && p.done < p.total) return;
    lastLine = now;
    process.stderr.write(`\r\x1b[2K${renderProgress(p).slice(0, (process.stderr.columns || 200) - 1)}`);
  };
  const endProgress = () => {
    if (tty) process.stderr.write('\r\x1b[2K');
  };

  // Ctrl-C / SIGTERM: stop every node this process started (by PID) and remove the temp dirs.
  const abort = new AbortController();
  let signalled = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signalled++;
    endProgress();
    if (signalled > 1) {
      for (const c of liveClusters()) c.stopSync();
      process.exit(sig === 'SIGINT' ? 130 : 143);
    }
    emit({ event: 'signal', signal: sig });
    process.stderr.write(`peerpull storm: ${sig}: stopping the local cluster and removing its files\n`);
    abort.abort();
    Promise.all(liveClusters().map((c) => c.stop(2000))).finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const started = new Date().toISOString();
  const loadavgStart = os.loadavg();
  let runs: RunResult[];
  let settings: Record<string, unknown>;
  try {
    const scenarios = (flags['--scenario'] ?? 'rolling,storm').split(',').map((s) => s.trim()).filter(Boolean);
    for (const s of scenarios) if (!SCENARIOS.includes(s as ScenarioName)) throw new UsageError(`--scenario: "${s}" is not one of ${SCENARIOS.join(', ')}`);
    const wavePercent = flags['--wave'] ? parseIntIn(flags['--wave'], '--wave', 1, 100) : 20;
    const waveGapMs = flags['--wave-gap'] ? parseMs(flags['--wave-gap'], '--wave-gap') : 5000;
    const concurrency = flags['--concurrency'] ? parseIntIn(flags['--concurrency'], '--concurrency', 1, 64) : 3;
    const baseline = flags['--baseline'] === 'true';
    const containerd = flags['--containerd'] === 'true';
    if (containerd && !flags['--local']) throw new UsageError('--containerd needs --local N (against a running cluster, its nodes have their own containerd)');
    if (flags['--unpack'] && !containerd) throw new UsageError('--unpack needs --containerd');
    if (containerd) {
      const missing = await containerdPrerequisites();
      if (missing) throw new UsageError(missing);
    }
    if (flags['--node-env'] && !flags['--local']) throw new UsageError('--node-env needs --local N (a running cluster has its own settings)');
    if (flags['--local']) {
      const nodeEnv = parseNodeEnv(flags['--node-env']);
      const nodes = parseIntIn(flags['--local'], '--local', 1, 1000);
      const layers = flags['--layers'] ? parseIntIn(flags['--layers'], '--layers', 1, 128) : 4;
      const imageBytes = parseBytes(flags['--size'] ?? '10MB', '--size');
      const upstreamRate = parseBytes(flags['--upstream-rate'] ?? '100MB', '--upstream-rate');
      const churnAt = Number(flags['--churn-at'] ?? '0.25');
      if (!(churnAt > 0 && churnAt < 1)) throw new UsageError('--churn-at must be between 0 and 1');
      if (scenarios.includes('churn') && nodes < 2) throw new UsageError('churn needs at least 2 nodes');
      const ipBase = flags['--ip-base'] ?? '127.0.90';
      if (!/^127\.\d{1,3}\.\d{1,3}$/.test(ipBase)) throw new UsageError('--ip-base must be three octets under 127/8, e.g. 127.0.90');
      const platforms = (flags['--platforms'] ?? 'linux/amd64').split(',').map((p) => {
        const [os_, arch, variant] = p.trim().split('/');
        if (!os_ || !arch) throw new UsageError(`--platforms: "${p}" is not os/arch`);
        return { os: os_, architecture: arch, ...(variant ? { variant } : {}) };
      });
      const unpack = flags['--unpack'] === 'true';
      settings = { mode: 'local', store: containerd ? (unpack ? 'containerd (ctr images pull)' : 'containerd (ctr content fetch)') : 'oci-layout', nodes, scenarios, baseline, imageBytes, layers, platforms, upstreamRate, wavePercent, waveGapMs, churnAt, concurrency, ipBase, nodeEnv };
      emit({ event: 'start', ...settings });
      runs = await runLocal({
        nodeEnv,
        nodes, scenarios: scenarios as ScenarioName[], baseline, imageBytes, layers, platforms, upstreamRate, wavePercent, waveGapMs, churnAt, concurrency,
        dir: flags['--dir'] ?? os.tmpdir(), ipBase, signal: abort.signal, onEvent: emit, onProgress,
        ...(containerd ? { containerd: { unpack } } : {}),
      });
    } else if (flags['--endpoints'] || flags['--dns']) {
      const endpoints = await resolveEndpoints(flags);
      const images = (flags['--image'] ?? '').split(',').map((s) => s.trim()).filter(Boolean);
      if (images.length === 0) throw new UsageError('--image is required with --endpoints/--dns');
      for (const s of scenarios) if (s !== 'storm' && s !== 'rolling') throw new UsageError(`--scenario ${s} needs --local (it controls the nodes' content)`);
      const upstream = flags['--upstream'];
      if (baseline && !upstream) throw new UsageError('--baseline needs --upstream');
      settings = { mode: 'endpoints', endpoints: endpoints.map((e) => e.url), images, scenarios, baseline, upstream, wavePercent, waveGapMs, concurrency };
      emit({ event: 'start', ...settings });
      runs = [];
      for (const scenario of scenarios) {
        for (const image of images) {
          const waves = scenario === 'rolling' ? wavesOf(endpoints.length, wavePercent) : [endpoints.map((_, i) => i)];
          const label = images.length > 1 ? `${scenario}:${image}` : scenario;
          const common = { scenario: label, image, imageBytes: 0, layers: 0, waves, waveGapMs, concurrency, signal: abort.signal, onProgress, ...(upstream ? { upstream } : {}) };
          if (baseline) runs.push(await runWaves({ ...common, mode: 'baseline', targets: endpoints.map((_, i) => ({ name: `client-${i}` })) }));
          const targets: Target[] = endpoints.map((e) => ({ name: e.url, mirror: e.url, metricsUrl: e.metricsUrl }));
          const r = await runWaves({ ...common, mode: 'peerpull', targets });
          // The image's size as pulled, for "upstream bytes in images".
          const okPull = r.pulls.find((p) => p.ok);
          r.imageBytes = okPull ? okPull.bytes.mirror + okPull.bytes.upstream : 0;
          runs.push(r);
        }
      }
    } else {
      throw new UsageError('give --local N, --endpoints or --dns');
    }
  } catch (err) {
    endProgress();
    if (err instanceof UsageError) {
      process.stderr.write(`peerpull storm: ${err.message}\n`);
      return 2;
    }
    if (abort.signal.aborted) return new Promise<number>(() => undefined); // the signal handler exits
    process.stderr.write(`peerpull storm: ${(err as Error).stack ?? String(err)}\n`);
    return 1;
  } finally {
    endProgress();
  }
  if (abort.signal.aborted) return new Promise<number>(() => undefined);
  const report: StormReport = {
    tool: 'peerpull storm',
    startedAt: started,
    command: `peerpull storm ${argv.join(' ')}`,
    settings,
    host: { cpus: os.availableParallelism(), node: process.version, loadavgStart, loadavgEnd: os.loadavg() },
    runs,
    comparisons: compare(runs),
    ok: runs.every((r) => r.failed === 0),
  };
  if (flags['--html']) await writeFile(flags['--html'], toHtml(report));
  if (flags['--json'] === 'true') process.stdout.write(toJson(report) + '\n');
  else process.stdout.write(summaryTable(report) + `\nload average ${loadavgStart[0]!.toFixed(1)} at start, ${report.host.loadavgEnd[0]!.toFixed(1)} at end (${report.host.cpus} CPUs)\n` + (flags['--markdown'] === 'true' ? `\n${markdownTable(report)}\n` : ''));
  emit({ event: 'done', ok: report.ok });
  return report.ok ? 0 : 1;
}



#!/usr/bin/env node
// The `peerpull` command. Subcommands share one configuration (environment + flags).

import { access, readFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, configTable, loadConfig, type Config } from './config.js';
import { defaultStatusUrl, fetchStatus, formatDoctor, runDoctor } from './doctor.js';
import { cleanup, configure, formatReport, HostsConfigError } from './hosts-config.js';
import { generateImage } from './image-generator.js';
import { log } from './log.js';
import { serve } from './serve.js';
import { formatStatusText } from './status.js';

const USAGE = `usage: peerpull <command> [--flag value ...]

commands:
  serve        run the node-local registry mirror
  configure    write containerd mirror config (hosts.toml) pointing at this node's peerpull
  cleanup      restore the containerd mirror config that configure replaced
  status       show a running node's status (--url http://host:port of its metrics port; --format json)
  doctor       check this node's setup and say what is wrong (--url as for status; exits 1 on problems)
  demo [dir]   create a demo OCI layout (default ./demo-store) and serve it
  storm        pull-storm load test: a running cluster, or --local N nodes (peerpull storm --help)
  config       print the configuration table (every PEERPULL_* variable)
  help         this text

Every PEERPULL_* variable has a flag: PEERPULL_REGISTRY_ADDR=:5000 <-> --registry-addr :5000.`;

/** Splits argv into positional words and --flag values. */
export function parseArgs(argv: string[]): { words: string[]; flags: Record<string, string> } {
  const words: string[] = [];
  const flags: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) {
      words.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    if (eq > 0) flags[a.slice(0, eq)] = a.slice(eq + 1);
    else {
      const v = argv[i + 1];
      if (v === undefined || v.startsWith('--')) throw new ConfigError(a, 'needs a value');
      flags[a] = v;
      i++;
    }
  }
  return { words, flags };
}

async function runServe(config: Config): Promise<void> {
  const server = await serve(config);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('signal received', { signal });
    // A shutdown that hangs (a stuck thread) must not keep a DaemonSet pod terminating forever.
    setTimeout(() => {
      log.error('shutdown did not finish in time; exiting', { graceMs: config.shutdownGrace });
      process.exit(1);
    }, config.shutdownGrace + 10_000).unref();
    server.close().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error('shutdown failed', { error: err });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

const DEMO_IMAGE = 'docker.io/library/peerpull-demo:latest';

async function runDemo(dir: string, env: NodeJS.ProcessEnv, flags: Record<string, string>): Promise<void> {
  const layout = path.resolve(dir);
  const exists = await access(path.join(layout, 'index.json')).then(() => true, () => false);
  if (!exists) {
    log.info('creating demo store', { layout, image: DEMO_IMAGE });
    await generateImage(layout, { name: DEMO_IMAGE, layerSizes: [1 << 20, 2 << 20, 512 << 10] });
  }
  // A lone node keeps its peer identity beside the demo store, not in /var/lib.
  const config = loadConfig({ PEERPULL_DATA_DIR: path.join(layout, '.peerpull'), ...env, PEERPULL_STORE: `oci-layout:${layout}` }, flags);
  await runServe(config);
  const index = JSON.parse(await readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  const port = config.registryAddr.port;
  process.stderr.write(
    [
      '',
      `peerpull is serving ${layout} on port ${port}. Try:`,
      `  curl -sI 'http://127.0.0.1:${port}/v2/library/peerpull-demo/manifests/latest?ns=docker.io'`,
      `  curl -s  'http://127.0.0.1:${port}/v2/library/peerpull-demo/manifests/${index.manifests[0]?.digest ?? '<digest>'}?ns=docker.io'`,
      `  curl -s  'http://127.0.0.1:${config.metricsAddr.port}/metrics'`,
      'Stop with Ctrl-C.',
      '',
    ].join('\n'),
  );
}

async function main(argv: string[]): Promise<number> {
  // storm has its own flags (some without values) and its own help.
  if (argv[0] === 'storm') return (await import('./storm/index.js')).runStorm(argv.slice(1));
  if (argv.includes('--help') || argv.includes('-h')) argv = ['help'];
  const { words, flags } = parseArgs(argv);
  const [command = 'help', ...rest] = words;
  switch (command) {
    case 'serve':
      await runServe(loadConfig(process.env, flags));
      return -1; // keeps running
    case 'demo':
      await runDemo(rest[0] ?? 'demo-store', process.env, flags);
      return -1;
    case 'configure':
    case 'cleanup': {
      const config = loadConfig(process.env, flags);
      try {
        const report = command === 'configure' ? await configure(config) : await cleanup(config);
        process.stdout.write(formatReport(report));
        return report.ok ? 0 : 1;
      } catch (err) {
        if (err instanceof HostsConfigError) {
          process.stderr.write(`peerpull ${command}: ${err.message}\n`);
          return 1;
        }
        throw err;
      }
    }
    case 'status':
    case 'doctor': {
      // --url and --format belong to these commands, not to the configuration.
      const { '--url': url, '--format': format = 'text', ...rest } = flags;
      if (format !== 'text' && format !== 'json') throw new ConfigError('--format', `"${format}" must be text or json`);
      const config = loadConfig(process.env, rest);
      const statusUrl = url ?? defaultStatusUrl(config);
      if (command === 'doctor') {
        const report = await runDoctor(config, { statusUrl });
        process.stdout.write(format === 'json' ? JSON.stringify(report, null, 2) + '\n' : formatDoctor(report));
        return report.ok ? 0 : 1;
      }
      try {
        const snap = await fetchStatus(statusUrl);
        process.stdout.write(format === 'json' ? JSON.stringify(snap, null, 2) + '\n' : formatStatusText(snap));
        return snap.healthy ? 0 : 1;
      } catch (err) {
        process.stderr.write(`peerpull status: ${(err as Error).message}\n  is \`peerpull serve\` running? pass its metrics address with --url http://<host>:<port>\n`);
        return 1;
      }
    }
    case 'config':
      loadConfig(process.env, flags); // validates the current environment too
      process.stdout.write(configTable() + '\n');
      return 0;
    case 'help':
    case '--help':
      process.stdout.write(USAGE + '\n');
      return 0;
    default:
      process.stderr.write(`peerpull: unknown command "${command}"\n${USAGE}\n`);
      return 2;
  }
}

process.on('unhandledRejection', (err) => log.error('unhandled rejection', { error: err }));
process.on('uncaughtException', (err) => {
  log.error('uncaught exception', { error: err });
  process.exit(1);
});

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (err: unknown) => {
    if (err instanceof ConfigError) {
      process.stderr.write(`peerpull: configuration error: ${err.message}\n`);
      process.exit(2);
    }
    log.error('fatal', { error: err });
    process.exit(1);
  },
);

// Configuration: parsing and validation (table-driven), and README's table generated from the code.

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { ConfigError, configTable, loadConfig, parseDuration, parseListenAddress, parseSize } from '../src/main/config.js';
import { REPO_ROOT } from './support/peerpull.js';

describe('config', () => {
  test('defaults load and are typed', () => {
    const c = loadConfig({});
    assert.deepEqual(c.registryAddr, { host: '', port: 5000 });
    assert.deepEqual(c.metricsAddr, { host: '', port: 9090 });
    assert.deepEqual(c.store, { kind: 'containerd' });
    assert.equal(c.containerdNamespace, 'k8s.io');
    assert.equal(c.chunkSize, 1024 * 1024);
    assert.equal(c.streamCredits, 1);
    assert.ok(c.workers >= 2 && c.workers <= 4);
  });

  test('bootstrap DNS: one name or several, normalised, duplicates dropped; empty is none', () => {
    assert.deepEqual(loadConfig({}).bootstrapDns, []);
    assert.deepEqual(loadConfig({ PEERPULL_BOOTSTRAP_DNS: 'PeerPull-P2P.kube-system.svc.cluster.local.' }).bootstrapDns, ['peerpull-p2p.kube-system.svc.cluster.local']);
    assert.deepEqual(loadConfig({ PEERPULL_BOOTSTRAP_DNS: ' a.svc , b.svc,,a.svc ' }).bootstrapDns, ['a.svc', 'b.svc']);
  });

  test('flags override the environment', () => {
    const c = loadConfig({ PEERPULL_REGISTRY_ADDR: ':6000' }, { '--registry-addr': '127.0.0.1:7000' });
    assert.deepEqual(c.registryAddr, { host: '127.0.0.1', port: 7000 });
  });

  const good: [string, string, unknown][] = [
    ['listen', ':5000', { host: '', port: 5000 }],
    ['listen', '0.0.0.0:1', { host: '0.0.0.0', port: 1 }],
    ['listen', '[::1]:5000', { host: '::1', port: 5000 }],
    ['duration', '250ms', 250],
    ['duration', '1.5s', 1500],
    ['duration', '5m', 300_000],
    ['size', '4096', 4096],
    ['size', '256Ki', 262_144],
    ['size', '2Mi', 2 * 1024 * 1024],
  ];
  const parse = { listen: parseListenAddress, duration: parseDuration, size: parseSize } as const;
  for (const [kind, raw, want] of good) {
    test(`${kind} "${raw}" parses`, () => assert.deepEqual(parse[kind as keyof typeof parse](raw, 'X'), want));
  }

  const bad: [Record<string, string>, string][] = [
    [{ PEERPULL_REGISTRY_ADDR: '5000' }, 'PEERPULL_REGISTRY_ADDR'],
    [{ PEERPULL_REGISTRY_ADDR: ':70000' }, 'PEERPULL_REGISTRY_ADDR'],
    [{ PEERPULL_METRICS_ADDR: 'host' }, 'PEERPULL_METRICS_ADDR'],
    [{ PEERPULL_STORE: 'oci-layout:' }, 'PEERPULL_STORE'],
    [{ PEERPULL_CONTENT_PATH: 'relative/dir' }, 'PEERPULL_CONTENT_PATH'],
    [{ PEERPULL_RESYNC_INTERVAL: '0s' }, 'PEERPULL_RESYNC_INTERVAL'],
    [{ PEERPULL_CHUNK_SIZE: '1' }, 'PEERPULL_CHUNK_SIZE'],
    [{ PEERPULL_STREAM_CREDITS: 'many' }, 'PEERPULL_STREAM_CREDITS'],
    [{ PEERPULL_LOG_LEVEL: 'loud' }, 'PEERPULL_LOG_LEVEL'],
    [{ PEERPULL_DEFAULT_REGISTRY: 'a/b' }, 'PEERPULL_DEFAULT_REGISTRY'],
    [{ PEERPULL_NO_SUCH_THING: '1' }, 'PEERPULL_NO_SUCH_THING'],
    [{ PEERPULL_BOOTSTRAP_DNS: 'a.svc,not a name' }, 'PEERPULL_BOOTSTRAP_DNS'],
    [{ PEERPULL_BOOTSTRAP_DNS: Array.from({ length: 17 }, (_, i) => `n${i}.svc`).join(',') }, 'PEERPULL_BOOTSTRAP_DNS'],
  ];
  for (const [env, variable] of bad) {
    test(`${JSON.stringify(env)} is refused naming ${variable}`, () => {
      assert.throws(() => loadConfig(env), (err: unknown) => err instanceof ConfigError && err.variable === variable && err.message.startsWith(variable));
    });
  }

  test('README configuration table is generated from the code (run `npm run readme:config`)', async () => {
    const readme = await readFile(path.join(REPO_ROOT, 'README.md'), 'utf8');
    const a = readme.indexOf('<!-- config-table:start -->');
    const b = readme.indexOf('<!-- config-table:end -->');
    assert.ok(a >= 0 && b > a, 'markers present');
    const table = readme.slice(a + '<!-- config-table:start -->'.length, b).trim();
    assert.equal(table, configTable(), 'README table differs from src/main/config.ts: run `npm run readme:config`');
  });
});

// `peerpull configure` / `cleanup` on temp directories (golden hosts.toml files, byte-exact
// backup and restore, idempotence, malformed files, hostile names), the TOML subset reader, and a
// real containerd 1.6 pulling an image through the written hosts.toml.
// Regenerate golden files with UPDATE_GOLDEN=1 (then review the diff).

import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { chmod, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import net from 'node:net';
import { promisify } from 'node:util';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ConfigError, loadConfig, type Config } from '../src/main/config.js';
import {
  BACKUP_FILE,
  HostsConfigError,
  NONE_MARKER,
  cleanup,
  configure,
  formatReport,
  parseHostsFile,
  registryNameProblem,
} from '../src/main/hosts-config.js';
import { generateImage, type GeneratedImage } from '../src/main/image-generator.js';
import { parseToml, TomlError, formatValue } from '../src/main/toml.js';
import { startContainerd, type Containerd } from './support/containerd.js';
import { REPO_ROOT } from './support/peerpull.js';

const GOLDEN = path.join(REPO_ROOT, 'test/golden/hosts-config');
const update = process.env.UPDATE_GOLDEN === '1';

async function golden(name: string, actual: string): Promise<void> {
  const file = path.join(GOLDEN, name);
  if (update) {
    await mkdir(GOLDEN, { recursive: true });
    await writeFile(file, actual);
  }
  const expected = await readFile(file, 'utf8');
  assert.equal(actual, expected, `differs from ${path.relative(REPO_ROOT, file)} (UPDATE_GOLDEN=1 rewrites it)`);
}

const temps: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'pphosts-'));
  temps.push(d);
  return d;
}
after(async () => {
  for (const d of temps) await rm(d, { recursive: true, force: true });
});

function cfg(dir: string, env: Record<string, string> = {}): Config {
  return loadConfig({ PEERPULL_CONTAINERD_CONFIG_PATH: dir, PEERPULL_NODE_IP: '10.0.0.5', ...env });
}

/** Every file below `dir` with its bytes and mode, for "nothing changed" checks. */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isSymbolicLink()) {
        out.set(path.relative(dir, p), `link ${await readlink(p)}`);
      } else if (e.isDirectory()) {
        out.set(path.relative(dir, p) + '/', `dir ${((await stat(p)).mode & 0o7777).toString(8)}`);
        await walk(p);
      } else {
        out.set(path.relative(dir, p), `${((await stat(p)).mode & 0o7777).toString(8)} ${(await readFile(p)).toString('base64')}`);
      }
    }
  };
  await walk(dir);
  return out;
}

const EXISTING = [
  '# operator-managed: internal mirror first',
  "server = 'https://ghcr.example.internal'   # the upstream, not ghcr.io",
  'ca = "/etc/pki/upstream-ca.pem"',
  '',
  '[host."https://mirror.corp:8443"]',
  '  capabilities = [ "pull",',
  '     "resolve" ,  # multi-line array',
  '  ]',
  '  ca = ["corp-ca.crt"]',
  '  client = [["client.cert", "client.key"]]',
  '  skip_verify = false',
  '  [host."https://mirror.corp:8443".header]',
  '    x-team = "platform"',
  '    authorization = ["Basic abc", "Bearer \\u00e9"]',
  '',
  "[host.'http://10.0.0.5:5000']",
  '  capabilities = ["pull"]',
  '',
  '[host."https://cache.corp"]',
  '  capabilities = ["pull"]',
  '  override_path = true',
  '',
].join('\r\n');

describe('configure: golden hosts.toml', () => {
  const cases: [string, string, Record<string, string>][] = [
    ['plain registry', 'plain.toml', { PEERPULL_MIRRORED_REGISTRIES: 'ghcr.io' }],
    ['_default when no registry is listed', 'default.toml', {}],
    ['docker.io upstream', 'docker-io.toml', { PEERPULL_MIRRORED_REGISTRIES: 'docker.io' }],
    ['resolve off', 'resolve-off.toml', { PEERPULL_MIRRORED_REGISTRIES: 'registry.k8s.io', PEERPULL_RESOLVE_TAGS: 'false' }],
    [
      'additional targets, IPv6 node and registry port',
      'targets.toml',
      {
        PEERPULL_MIRRORED_REGISTRIES: 'quay.io',
        PEERPULL_NODE_IP: 'fd00::5',
        PEERPULL_REGISTRY_ADDR: ':30020',
        PEERPULL_MIRROR_TARGETS: 'http://10.0.0.5:30500/, https://cache.example.com:8443/v2-proxy,http://10.0.0.5:30500',
        PEERPULL_MIRROR_DIAL_TIMEOUT: '1s',
      },
    ],
  ];
  for (const [title, file, env] of cases) {
    test(title, async () => {
      const dir = await tempDir();
      const config = cfg(dir, env);
      const report = await configure(config);
      assert.ok(report.ok, formatReport(report));
      const reg = config.mirroredRegistries[0] ?? '_default';
      assert.deepEqual(report.registries.map((r) => [r.registry, r.action, r.backup]), [[reg, 'written', 'created']]);
      const text = await readFile(path.join(dir, reg, 'hosts.toml'), 'utf8');
      await golden(file, text);
      // What we write, we read back, and it says what we meant.
      const parsed = parseHostsFile(text, 'written');
      assert.equal(parsed.hosts[0]![0], config.nodeIp.includes(':') ? `http://[${config.nodeIp}]:${config.registryAddr.port}` : `http://${config.nodeIp}:${config.registryAddr.port}`);
      assert.deepEqual(await readdir(path.join(dir, reg)).then((x) => x.sort()), ['hosts.toml', NONE_MARKER]);
    });
  }

  test('existing config kept after ours, with its certificate files; server kept', async () => {
    const dir = await tempDir();
    const reg = path.join(dir, 'ghcr.io');
    await mkdir(reg);
    await writeFile(path.join(reg, 'hosts.toml'), EXISTING);
    await writeFile(path.join(reg, 'corp-ca.crt'), 'CA');
    await writeFile(path.join(reg, 'client.cert'), 'CERT');
    await writeFile(path.join(reg, 'client.key'), 'KEY');
    const report = await configure(cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: 'ghcr.io', PEERPULL_MIRROR_TARGETS: 'http://10.0.0.5:30500' }));
    assert.ok(report.ok, formatReport(report));
    // http://10.0.0.5:5000 is ours already: not repeated.
    assert.deepEqual(report.registries[0]!.kept, ['https://mirror.corp:8443', 'https://cache.corp']);
    const text = await readFile(path.join(reg, 'hosts.toml'), 'utf8');
    await golden('existing-kept.toml', text);
    for (const f of ['corp-ca.crt', 'client.cert', 'client.key']) assert.ok((await stat(path.join(reg, f))).isFile(), `${f} kept`);
    assert.deepEqual(await readFile(path.join(reg, BACKUP_FILE), 'utf8'), EXISTING);
  });

  test('KEEP_EXISTING_HOSTS=false drops the old mirrors but keeps the upstream', async () => {
    const dir = await tempDir();
    await mkdir(path.join(dir, 'ghcr.io'));
    await writeFile(path.join(dir, 'ghcr.io', 'hosts.toml'), EXISTING);
    const report = await configure(cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: 'ghcr.io', PEERPULL_KEEP_EXISTING_HOSTS: 'false' }));
    assert.ok(report.ok);
    await golden('existing-not-kept.toml', await readFile(path.join(dir, 'ghcr.io', 'hosts.toml'), 'utf8'));
  });

  test('Docker-style certificate files (no hosts.toml) stay in effect for the upstream', async () => {
    const dir = await tempDir();
    const reg = path.join(dir, 'registry.corp:5443');
    await mkdir(reg);
    for (const f of ['ca.crt', 'b.cert', 'b.key', 'a.cert']) await writeFile(path.join(reg, f), f);
    const report = await configure(cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: 'registry.corp:5443' }));
    assert.ok(report.ok);
    await golden('docker-certs.toml', await readFile(path.join(reg, 'hosts.toml'), 'utf8'));
    await cleanup(cfg(dir));
    assert.deepEqual((await readdir(reg)).sort(), ['a.cert', 'b.cert', 'b.key', 'ca.crt']);
    // An empty hosts.toml is no hosts.toml to containerd: the certificates still count, and the
    // empty file comes back on cleanup.
    await writeFile(path.join(reg, 'hosts.toml'), '');
    assert.ok((await configure(cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: 'registry.corp:5443' }))).ok);
    await golden('docker-certs.toml', await readFile(path.join(reg, 'hosts.toml'), 'utf8'));
    await cleanup(cfg(dir));
    assert.equal((await readFile(path.join(reg, 'hosts.toml'))).length, 0);
  });
});

describe('configure / cleanup: backup and restore', () => {
  test('round trip restores the previous file byte for byte, with its mode; cleanup twice is harmless', async () => {
    const dir = await tempDir();
    const reg = path.join(dir, 'docker.io');
    await mkdir(reg);
    const original = Buffer.from('\ufeff' + EXISTING + '# no newline at the end', 'utf8');
    await writeFile(path.join(reg, 'hosts.toml'), original);
    await chmod(path.join(reg, 'hosts.toml'), 0o600);
    await writeFile(path.join(dir, 'unrelated.txt'), 'x');
    const before = await snapshot(dir);
    const config = cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: 'docker.io' });

    const r1 = await configure(config);
    assert.ok(r1.ok, formatReport(r1));
    assert.deepEqual(await readFile(path.join(reg, BACKUP_FILE)), original);
    assert.equal((await stat(path.join(reg, BACKUP_FILE))).mode & 0o777, 0o600);
    assert.equal((await stat(path.join(reg, 'hosts.toml'))).mode & 0o777, 0o600, 'written with the original mode');
    assert.notDeepEqual(await readFile(path.join(reg, 'hosts.toml')), original);

    const c1 = await cleanup(config);
    assert.deepEqual(c1.registries.map((r) => [r.registry, r.action]), [['docker.io', 'restored']]);
    assert.deepEqual(await snapshot(dir), before, 'exactly the files, bytes and modes from before');

    const c2 = await cleanup(config);
    assert.ok(c2.ok);
    assert.deepEqual(c2.registries, []);
    assert.deepEqual(await snapshot(dir), before);
  });

  test('a directory configure created is removed again; an existing empty one stays', async () => {
    const dir = await tempDir();
    await mkdir(path.join(dir, 'quay.io'));
    const before = await snapshot(dir);
    const config = cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: 'quay.io,ghcr.io' });
    assert.ok((await configure(config)).ok);
    assert.ok((await stat(path.join(dir, 'ghcr.io', 'hosts.toml'))).isFile());
    const c = await cleanup(config);
    assert.deepEqual(c.registries.map((r) => [r.registry, r.action]).sort(), [['ghcr.io', 'removed'], ['quay.io', 'removed']]);
    assert.deepEqual(await snapshot(dir), before);
  });

  test('idempotent: configure twice gives the same bytes and one backup of the original', async () => {
    const dir = await tempDir();
    await mkdir(path.join(dir, 'ghcr.io'));
    await writeFile(path.join(dir, 'ghcr.io', 'hosts.toml'), EXISTING);
    const config = cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: 'ghcr.io,docker.io' });
    const r1 = await configure(config);
    const snap1 = await snapshot(dir);
    const mtime1 = (await stat(path.join(dir, 'ghcr.io', 'hosts.toml'))).mtimeMs;
    const r2 = await configure(config);
    assert.ok(r1.ok && r2.ok);
    assert.deepEqual(r2.registries.map((r) => [r.registry, r.action, r.backup]), [
      ['ghcr.io', 'unchanged', 'existing'],
      ['docker.io', 'unchanged', 'existing'],
    ]);
    assert.deepEqual(await snapshot(dir), snap1);
    assert.equal((await stat(path.join(dir, 'ghcr.io', 'hosts.toml'))).mtimeMs, mtime1, 'not rewritten');
    assert.deepEqual((await readdir(path.join(dir, 'ghcr.io'))).sort(), ['hosts.toml', BACKUP_FILE]);
    // Changed settings rewrite from the original backup, never from our own output.
    const r3 = await configure(cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: 'ghcr.io,docker.io', PEERPULL_NODE_IP: '10.0.0.6' }));
    assert.equal(r3.registries[0]!.action, 'written');
    const text = await readFile(path.join(dir, 'ghcr.io', 'hosts.toml'), 'utf8');
    assert.equal(text.match(/Managed by peerpull/g)?.length, 1);
    assert.ok(!text.includes('10.0.0.5:5000"]\n  capabilities = ["pull", "resolve"]'));
    assert.deepEqual(await readFile(path.join(dir, 'ghcr.io', BACKUP_FILE), 'utf8'), EXISTING);
    await cleanup(config);
    assert.deepEqual(await readFile(path.join(dir, 'ghcr.io', 'hosts.toml'), 'utf8'), EXISTING);
  });

  test('a registry dropped from the list is restored by the next configure', async () => {
    const dir = await tempDir();
    await mkdir(path.join(dir, 'quay.io'));
    await writeFile(path.join(dir, 'quay.io', 'hosts.toml'), EXISTING);
    assert.ok((await configure(cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: 'quay.io,ghcr.io' }))).ok);
    const r = await configure(cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: 'ghcr.io' }));
    assert.deepEqual(r.registries.map((x) => [x.registry, x.action]), [['ghcr.io', 'unchanged'], ['quay.io', 'restored']]);
    assert.equal(await readFile(path.join(dir, 'quay.io', 'hosts.toml'), 'utf8'), EXISTING);
    assert.deepEqual(await readdir(path.join(dir, 'quay.io')), ['hosts.toml']);
  });

  test('a file someone replaced after configure is the new original; cleanup leaves it', async () => {
    const dir = await tempDir();
    const config = cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: 'ghcr.io' });
    await configure(config);
    const theirs = 'server = "https://other"\n[host."https://theirs"]\n  capabilities = ["pull"]\n';
    await writeFile(path.join(dir, 'ghcr.io', 'hosts.toml'), theirs);
    const c = await cleanup(config);
    assert.equal(c.registries[0]!.action, 'left');
    assert.equal(await readFile(path.join(dir, 'ghcr.io', 'hosts.toml'), 'utf8'), theirs);
    assert.deepEqual(await readdir(path.join(dir, 'ghcr.io')), ['hosts.toml']);
    // configure again: theirs is backed up and kept.
    const r = await configure(config);
    assert.deepEqual(r.registries[0]!.kept, ['https://theirs']);
    await cleanup(config);
    assert.equal(await readFile(path.join(dir, 'ghcr.io', 'hosts.toml'), 'utf8'), theirs);
  });

  test('crash leftovers (temp files) are removed', async () => {
    const dir = await tempDir();
    await mkdir(path.join(dir, 'ghcr.io'));
    await writeFile(path.join(dir, 'ghcr.io', '.hosts.toml.peerpull-tmp-deadbeef0000'), 'partial');
    const config = cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: 'ghcr.io' });
    await configure(config);
    assert.deepEqual((await readdir(path.join(dir, 'ghcr.io'))).sort(), ['hosts.toml', NONE_MARKER]);
  });

  test('_default mode warns about registry directories that shadow it', async () => {
    const dir = await tempDir();
    await mkdir(path.join(dir, 'registry.corp'));
    const r = await configure(cfg(dir));
    assert.ok(r.ok);
    assert.equal(r.warnings.length, 1);
    assert.match(r.warnings[0]!, /registry\.corp.*bypass peerpull.*PEERPULL_MIRRORED_REGISTRIES/);
  });
});

describe('configure: refusals', () => {
  test('a malformed existing hosts.toml is reported and left untouched; other registries proceed', async () => {
    const dir = await tempDir();
    const bad: [string, string, RegExp][] = [
      ['ghcr.io', 'server = "https://x"\n[host."https://m"\n  capabilities = ["pull"]\n', /ghcr\.io\/hosts\.toml is not valid TOML \(line 2, column \d+: expected "\]"/],
      ['quay.io', 'server = "a"\nserver = "b"\n', /line 2.*defined twice/],
      ['gcr.io', '[host."https://m"]\n  capabilities = ["pull", "fly"]\n', /host "https:\/\/m": "capabilities" must be made of/],
      ['k8s.gcr.io', 'server = """multi"""\n', /multi-line strings are not supported/],
      ['nvcr.io', 'host = "x"\n', /"host" must be a table/],
    ];
    for (const [reg, text] of bad) {
      await mkdir(path.join(dir, reg));
      await writeFile(path.join(dir, reg, 'hosts.toml'), text);
    }
    const before = await snapshot(dir);
    const r = await configure(cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: [...bad.map((b) => b[0]), 'docker.io'].join(',') }));
    assert.equal(r.ok, false);
    for (const [reg, , re] of bad) {
      const e = r.registries.find((x) => x.registry === reg)!;
      assert.equal(e.action, 'failed');
      assert.match(e.message!, re);
      assert.match(e.message!, /its hosts\.toml was left as it was/);
    }
    assert.equal(r.registries.find((x) => x.registry === 'docker.io')!.action, 'written');
    const after = await snapshot(dir);
    for (const [k, v] of before) assert.equal(after.get(k), v, `${k} untouched`);
    assert.match(formatReport(r), /ghcr\.io: failed: .*not valid TOML/);
  });

  test('a symbolic link as hosts.toml is refused; a linked registry directory is handled both ways', async () => {
    const dir = await tempDir();
    const target = path.join(dir, 'elsewhere.toml');
    await writeFile(target, 'server = "https://x"\n');
    await mkdir(path.join(dir, 'ghcr.io'));
    await symlink(target, path.join(dir, 'ghcr.io', 'hosts.toml'));
    await mkdir(path.join(dir, 'shared'));
    await symlink(path.join(dir, 'shared'), path.join(dir, 'quay.io'));
    const before = await snapshot(dir);
    const config = cfg(dir, { PEERPULL_MIRRORED_REGISTRIES: 'ghcr.io,quay.io' });
    const r = await configure(config);
    assert.equal(r.ok, false);
    assert.match(r.registries[0]!.message!, /hosts\.toml is a symbolic link; peerpull only replaces regular files/);
    assert.equal(r.registries[1]!.action, 'written');
    assert.ok((await stat(path.join(dir, 'shared', 'hosts.toml'))).isFile());
    const c = await cleanup(config);
    assert.deepEqual(c.registries.map((x) => [x.registry, x.action]), [['quay.io', 'removed']]);
    assert.deepEqual(await snapshot(dir), before);
  });

  test('hostile registry names are refused before anything is written', async () => {
    const dir = await tempDir();
    const hostile = ['../etc', '..', '.', 'a/b', '/abs', 'a\\b', '', 'x'.repeat(256), 'a..b', 'nul\0byte', 'UPPER_case!', 'host:99999'];
    for (const name of hostile) {
      assert.ok(registryNameProblem(name), `${JSON.stringify(name)} refused`);
      const config = { ...cfg(dir), mirroredRegistries: [name] };
      await assert.rejects(configure(config), (err: Error) => err instanceof HostsConfigError && /refusing registry name/.test(err.message));
      if (name !== '') {
        assert.throws(
          () => loadConfig({ PEERPULL_MIRRORED_REGISTRIES: name }),
          (err: Error) => err instanceof ConfigError && err.message.startsWith('PEERPULL_MIRRORED_REGISTRIES:'),
        );
      }
    }
    assert.deepEqual(await readdir(dir), [], 'nothing created');
    for (const ok of ['docker.io', 'registry.example.com:5000', 'localhost:5000', '127.0.0.1:5000', '[::1]:5000', '_default']) {
      assert.equal(registryNameProblem(ok), undefined, ok);
    }
  });

  test('settings are validated with the variable named', () => {
    const bad: [string, string][] = [
      ['PEERPULL_NODE_IP', 'node-1'],
      ['PEERPULL_MIRROR_TARGETS', 'ftp://x'],
      ['PEERPULL_MIRROR_TARGETS', 'http://user:pw@x'],
      ['PEERPULL_MIRROR_TARGETS', 'not a url'],
      ['PEERPULL_RESOLVE_TAGS', 'maybe'],
      ['PEERPULL_KEEP_EXISTING_HOSTS', '2'],
      ['PEERPULL_CONTAINERD_CONFIG_PATH', 'relative/path'],
      ['PEERPULL_MIRROR_DIAL_TIMEOUT', '5'],
    ];
    for (const [k, v] of bad) {
      assert.throws(() => loadConfig({ [k]: v }), (err: Error) => err instanceof ConfigError && err.message.startsWith(`${k}:`), `${k}=${v}`);
    }
    const c = loadConfig({});
    assert.equal(c.containerdConfigPath, '/etc/containerd/certs.d');
    assert.deepEqual(c.mirroredRegistries, []);
    assert.equal(c.nodeIp, '');
    assert.deepEqual(c.mirrorTargets, []);
    assert.equal(c.resolveTags, true);
    assert.equal(c.keepExistingHosts, true);
    assert.equal(c.mirrorDialTimeout, 200);
  });

  test('configure without a node IP says so', async () => {
    const dir = await tempDir();
    await assert.rejects(configure(loadConfig({ PEERPULL_CONTAINERD_CONFIG_PATH: dir })), /PEERPULL_NODE_IP: must be set/);
    assert.deepEqual(await readdir(dir), []);
  });
});

describe('TOML subset reader', () => {
  test('reads what hosts.toml files use', () => {
    const t = parseToml(
      [
        'a = "x\\ty\\"\\u00e9" # c',
        "b = 'C:\\path'",
        'c = [["1", "2"], "3",]',
        'd = true',
        'e = -42',
        'f = { x = "1", y = ["2"] }',
        'g.h = "dotted"',
        '[t."quoted.key".sub]',
        '  k = false',
        '[t]',
        '  z = 1_000',
      ].join('\n'),
    );
    assert.equal(t.get('a'), 'x\ty"é');
    assert.equal(t.get('b'), 'C:\\path');
    assert.deepEqual(t.get('c'), [['1', '2'], '3']);
    assert.equal(t.get('d'), true);
    assert.equal(t.get('e'), -42);
    assert.equal(formatValue(t.get('f')!), '{ x = "1", y = ["2"] }');
    assert.equal((t.get('g') as Map<string, unknown>).get('h'), 'dotted');
    const tt = t.get('t') as Map<string, unknown>;
    assert.equal(tt.get('z'), 1000);
    assert.equal(((tt.get('quoted.key') as Map<string, unknown>).get('sub') as Map<string, unknown>).get('k'), false);
  });

  test('refuses what it does not understand, with line and column', () => {
    const bad: [string, RegExp][] = [
      ['a = 1.5', /line 1.*unsupported value|after the value/],
      ['a = 1979-05-27', /line 1/],
      ['[[host]]', /arrays of tables/],
      ['a = "x', /unterminated string/],
      ['a = "x\\q"', /invalid escape/],
      ['a = [1, 2', /unterminated array|expected/],
      ['a = 1 b = 2', /after the value/],
      ['[a]\n[a]', /line 2.*defined twice/],
      ['a = {x = 1}\n[a]', /inline table/],
      ['a = \n', /missing value/],
      ['= 1', /expected a key/],
      ['a = "\u0001"', /control character/],
      ['a = tru', /unsupported value/],
    ];
    for (const [text, re] of bad) {
      assert.throws(() => parseToml(text), (err: Error) => err instanceof TomlError && re.test(err.message), text);
    }
  });
});

// ---- a real containerd pulls through the written configuration ----

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

interface TinyRegistry {
  server: Server;
  port: number;
  requests: string[];
}

/** A minimal OCI pull API over an OCI layout, standing in for peerpull on the node. */
async function tinyRegistry(layout: string, image: GeneratedImage, tag: string): Promise<TinyRegistry> {
  const byDigest = new Map(image.all.map((d) => [d.digest as string, d]));
  const requests: string[] = [];
  const server = createServer(async (req, res) => {
    requests.push(`${req.method} ${req.url}${req.headers['x-kept'] ? ` x-kept=${req.headers['x-kept']}` : ''}`);
    const u = new URL(req.url ?? '/', 'http://x');
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(u.pathname);
    const ref = m?.[3] === tag && m[2] === 'manifests' ? image.target.digest : m?.[3];
    const d = ref ? byDigest.get(ref) : undefined;
    if (!m || !d || (m[2] === 'manifests') !== (d.mediaType.includes('manifest') || d.mediaType.includes('index'))) {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"not here"}]}');
      return;
    }
    const body = await readFile(path.join(layout, 'blobs', 'sha256', d.digest.slice(7)));
    res.writeHead(200, { 'content-type': d.mediaType, 'content-length': body.length, 'docker-content-digest': d.digest });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as net.AddressInfo).port, requests };
}

describe('a real containerd reads the written hosts.toml', () => {
  let ctd: Containerd | undefined;
  let reg: TinyRegistry | undefined;
  let work: string;
  let image: GeneratedImage;
  let upstream: string;
  let repo: string;

  before(async () => {
    work = await tempDir();
    // The upstream registry is a closed loopback port: a pull can only succeed through the mirror.
    upstream = `127.0.0.1:${await closedPort()}`;
    repo = 'peerpull/hosts-test';
    const layout = path.join(work, 'layout');
    image = await generateImage(layout, { name: `${upstream}/${repo}:v1`, layerSizes: [4096, 70_000] });
    reg = await tinyRegistry(layout, image, 'v1');
    ctd = await startContainerd({ name: 'pphosts' });
  });

  after(async () => {
    await ctd?.stop();
    if (reg) await new Promise<void>((r) => reg!.server.close(() => r()));
  });

  async function pull(ref: string, hostsDir: string): Promise<void> {
    await ctd!.ctr(['-n', 'k8s.io', 'images', 'pull', '--hosts-dir', hostsDir, '--platform', 'linux/amd64', ref]);
  }

  async function removeImage(ref: string): Promise<void> {
    await ctd!.ctr(['-n', 'k8s.io', 'images', 'rm', '--sync', ref]).catch(() => undefined);
  }

  test('tag pull goes to the node endpoint (with ?ns=) and succeeds', async () => {
    const hostsDir = path.join(work, 'certs-a');
    const r = await configure(cfg(hostsDir, { PEERPULL_MIRRORED_REGISTRIES: upstream, PEERPULL_NODE_IP: '127.0.0.1', PEERPULL_REGISTRY_ADDR: `:${reg!.port}` }));
    assert.ok(r.ok, formatReport(r));
    reg!.requests.length = 0;
    const ref = `${upstream}/${repo}:v1`;
    await pull(ref, hostsDir);
    const { stdout } = await ctd!.ctr(['-n', 'k8s.io', 'images', 'ls', '-q']);
    assert.ok(stdout.split('\n').includes(ref), stdout);
    assert.ok(reg!.requests.some((q) => q.startsWith(`HEAD /v2/${repo}/manifests/v1?ns=${encodeURIComponent(upstream)}`) || q.startsWith(`HEAD /v2/${repo}/manifests/v1?ns=${upstream}`)), reg!.requests.join('\n'));
    for (const d of image.all) assert.ok(reg!.requests.some((q) => q.includes(d.digest)), `fetched ${d.digest}`);
    await removeImage(ref);
    const c = await cleanup(cfg(hostsDir));
    assert.equal(c.registries[0]!.action, 'removed');
  });

  test('_default, a dead node endpoint falls through to the next mirror target', async () => {
    const hostsDir = path.join(work, 'certs-b');
    const r = await configure(
      cfg(hostsDir, {
        PEERPULL_NODE_IP: '127.0.0.1',
        PEERPULL_REGISTRY_ADDR: `:${await closedPort()}`,
        PEERPULL_MIRROR_TARGETS: `http://127.0.0.1:${reg!.port}`,
      }),
    );
    assert.ok(r.ok);
    reg!.requests.length = 0;
    const ref = `${upstream}/${repo}:v1`;
    await pull(ref, hostsDir);
    assert.ok(reg!.requests.length > 0);
    await removeImage(ref);
  });

  test('resolve off: tags go upstream (closed, so the pull fails), digests still come from the mirror', async () => {
    const hostsDir = path.join(work, 'certs-c');
    const r = await configure(
      cfg(hostsDir, { PEERPULL_MIRRORED_REGISTRIES: upstream, PEERPULL_NODE_IP: '127.0.0.1', PEERPULL_REGISTRY_ADDR: `:${reg!.port}`, PEERPULL_RESOLVE_TAGS: 'false' }),
    );
    assert.ok(r.ok);
    reg!.requests.length = 0;
    await assert.rejects(pull(`${upstream}/${repo}:v1`, hostsDir), /connection refused|failed to resolve|failed to do request/i);
    assert.equal(reg!.requests.filter((q) => q.includes('/manifests/v1')).length, 0, 'no tag request to a pull-only mirror');
    const byDigest = `${upstream}/${repo}@${image.target.digest}`;
    await pull(byDigest, hostsDir);
    assert.ok(reg!.requests.some((q) => q.includes(`/manifests/${image.target.digest}`)));
    await removeImage(byDigest);
  });

  test('Docker-style certificate files carried into hosts.toml load in containerd (mixed client array)', async () => {
    const hostsDir = path.join(work, 'certs-e');
    const d = path.join(hostsDir, upstream);
    await mkdir(d, { recursive: true });
    const run = promisify(execFile);
    const subj = ['-subj', '/CN=peerpull-test', '-days', '2', '-nodes'];
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-keyout', path.join(work, 'ca.key'), '-out', path.join(d, 'ca.crt'), ...subj]);
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-keyout', path.join(d, 'b.key'), '-out', path.join(d, 'b.cert'), ...subj]);
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-keyout', path.join(work, 'a.key'), '-out', path.join(work, 'a.pem'), ...subj]);
    // a.cert holds certificate and key together (no a.key), as Docker allows.
    await writeFile(path.join(d, 'a.cert'), Buffer.concat([await readFile(path.join(work, 'a.pem')), await readFile(path.join(work, 'a.key'))]));
    const r = await configure(cfg(hostsDir, { PEERPULL_MIRRORED_REGISTRIES: upstream, PEERPULL_NODE_IP: '127.0.0.1', PEERPULL_REGISTRY_ADDR: `:${reg!.port}` }));
    assert.ok(r.ok);
    const text = await readFile(path.join(d, 'hosts.toml'), 'utf8');
    assert.match(text, /client = \["a\.cert", \["b\.cert", "b\.key"\]\]/);
    reg!.requests.length = 0;
    const ref = `${upstream}/${repo}:v1`;
    // A hosts.toml containerd cannot parse falls back to the certificate files alone: the mirror
    // would be skipped and the pull would fail against the closed upstream.
    await pull(ref, hostsDir);
    assert.ok(reg!.requests.length > 0);
    await removeImage(ref);
  });

  test('kept hosts from an existing file are still read after ours', async () => {
    const hostsDir = path.join(work, 'certs-d');
    await mkdir(path.join(hostsDir, upstream), { recursive: true });
    // The operator's mirror is dead; ours (a dead node endpoint) comes first, then theirs, then
    // a kept working host proves containerd parsed the kept tables in order.
    const dead = await closedPort();
    await writeFile(
      path.join(hostsDir, upstream, 'hosts.toml'),
      `server = "https://${upstream}"\n\n[host."http://127.0.0.1:${dead}"]\n  capabilities = ["pull", "resolve"]\n\n[host."http://127.0.0.1:${reg!.port}"]\n  capabilities = ["pull", "resolve"]\n  [host."http://127.0.0.1:${reg!.port}".header]\n    x-kept = "yes"\n`,
    );
    const r = await configure(cfg(hostsDir, { PEERPULL_MIRRORED_REGISTRIES: upstream, PEERPULL_NODE_IP: '127.0.0.1', PEERPULL_REGISTRY_ADDR: `:${await closedPort()}` }));
    assert.ok(r.ok);
    assert.equal(r.registries[0]!.kept?.length, 2);
    reg!.requests.length = 0;
    const ref = `${upstream}/${repo}:v1`;
    await pull(ref, hostsDir);
    assert.ok(reg!.requests.length > 0);
    assert.ok(reg!.requests.every((q) => q.endsWith(' x-kept=yes')), 'the kept host, with its header table: ' + reg!.requests.join('\n'));
    await removeImage(ref);
  });
});

// `peerpull doctor`, the containerd config reader behind it, and the preflight at `serve` start.
// Every failure the doctor knows produces its own plain-words message (real CLI runs against real
// files, sockets, a real DNS server and real `peerpull serve` processes), and a healthy node (a
// real containerd with a CRI config, two peerpull nodes found through DNS) passes every check.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { checkContainerdConfig, parseContainerdConfig, lookup } from '../src/main/containerd-config.js';
import { MANAGED_HEADER } from '../src/main/hosts-config.js';
import { generateImage } from '../src/main/image-generator.js';
import type { StatusSnapshot } from '../src/main/status.js';
import { startContainerd, type Containerd } from './support/containerd.js';
import { Dnsmasq } from './support/dnsmasq.js';
import { get, freePort } from './support/http.js';
import { CLI, eventually, startPeerpull, type PeerpullProcess } from './support/peerpull.js';

const execFileP = promisify(execFile);


interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function peerpull(args: string[], env: Record<string, string>): Promise<Run> {
  try {
    const r = await execFileP(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, timeout: 30_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as Error & { code?: number; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw err;
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

// containerd 1.6 configs as nodes have them (version 2 plugin names).
const V2_NO_CONFIG_PATH = `version = 2
[plugins]
  [plugins."io.containerd.gc.v1.scheduler"]
    pause_threshold = 0.02
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = ""
`;

function v2(configPath: string, discard: boolean): string {
  return `version = 2
# as a provisioning tool writes it
[plugins."io.containerd.grpc.v1.cri".containerd]
  discard_unpacked_layers = ${discard}
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = true
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = ${JSON.stringify(configPath)}
`;
}

describe('containerd config reader', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'peerpull-ctdcfg-'));
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const write = async (name: string, text: string) => {
    const f = path.join(dir, name);
    await mkdir(path.dirname(f), { recursive: true });
    await writeFile(f, text);
    return f;
  };
  const ids = (r: { findings: { severity: string; id: string }[] }) => r.findings.map((f) => `${f.severity}:${f.id}`);

  test("reads containerd's own default config (floats, nested tables, arrays); config_path unset is a failure", async () => {
    const { stdout } = await execFileP('containerd', ['config', 'default']);
    const doc = parseContainerdConfig(stdout);
    assert.equal(doc['version'], 2);
    assert.equal(lookup(doc, ['plugins', 'io.containerd.gc.v1.scheduler', 'pause_threshold']), 0.02);
    assert.equal(lookup(doc, ['plugins', 'io.containerd.grpc.v1.cri', 'containerd', 'discard_unpacked_layers']), false);
    const r = await checkContainerdConfig(await write('default.toml', stdout), '/etc/containerd/certs.d');
    assert.deepEqual(ids(r), ['fail:config-path-unset', 'ok:discard-unpacked-layers']);
    assert.match(r.findings[0]!.fix!, /\[plugins\."io\.containerd\.grpc\.v1\.cri"\.registry\]\n {2}config_path = "\/etc\/containerd\/certs\.d"/);
  });

  test('TOML corners: multi-line strings and arrays, inline tables, literal keys, arrays of tables, comments', () => {
    const doc = parseContainerdConfig(`# top
version = 2  # trailing comment
imports = [
  "/a.toml", # one
  '/b.toml',
]
x = """
multi "quoted" \\
   line"""
y = '''raw \\n'''
t = { a = 1, b.c = "d" }
when = 1979-05-27T07:32:00Z
big = 1_000
[[arr]]
  n = 1
[[arr]]
  n = 2
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'
`);
    assert.deepEqual(doc['imports'], ['/a.toml', '/b.toml']);
    assert.equal(doc['x'], 'multi "quoted" line');
    assert.equal(doc['y'], 'raw \\n');
    assert.deepEqual(doc['t'], { a: 1, b: { c: 'd' } });
    assert.equal(doc['big'], 1000);
    assert.deepEqual(doc['arr'], [{ n: 1 }, { n: 2 }]);
    assert.equal(lookup(doc, ['plugins', 'io.containerd.cri.v1.images', 'registry', 'config_path']), '/etc/containerd/certs.d:/etc/docker/certs.d');
    assert.throws(() => parseContainerdConfig('a = "open'), /line 1: unterminated string/);
    assert.throws(() => parseContainerdConfig('a = 1\n[b\n'), /line 2/);
  });

  test('config_path: unset, set, a list (containerd 2), a different directory; discard_unpacked_layers = true', async () => {
    const certs = '/etc/containerd/certs.d';
    assert.deepEqual(ids(await checkContainerdConfig(await write('a.toml', V2_NO_CONFIG_PATH), certs)), ['fail:config-path-unset', 'ok:discard-unpacked-layers']);
    assert.deepEqual(ids(await checkContainerdConfig(await write('b.toml', v2(certs, false)), certs)), ['ok:config-path', 'ok:discard-unpacked-layers']);
    const discard = await checkContainerdConfig(await write('c.toml', v2(certs, true)), certs);
    assert.deepEqual(ids(discard), ['ok:config-path', 'fail:discard-unpacked-layers']);
    assert.equal(discard.discardUnpackedLayers, true);
    const other = await checkContainerdConfig(await write('d.toml', v2('/etc/docker/certs.d', false)), certs);
    assert.deepEqual(ids(other), ['fail:config-path-mismatch', 'ok:discard-unpacked-layers']);
    assert.match(other.findings[0]!.message, /reads hosts\.toml from \/etc\/docker\/certs\.d but peerpull writes them to \/etc\/containerd\/certs\.d/);
    // containerd 2 (version 3): its own plugin names, and a default config_path that includes certs.d.
    const v3 = await checkContainerdConfig(await write('e.toml', "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  discard_unpacked_layers = true\n"), certs);
    assert.deepEqual(ids(v3), ['ok:config-path', 'fail:discard-unpacked-layers']);
    assert.deepEqual(v3.configPaths, ['/etc/containerd/certs.d', '/etc/docker/certs.d']);
    // version 1 (no version line): plugins.cri
    const v1 = await checkContainerdConfig(await write('f.toml', `[plugins.cri.registry]\n  config_path = "${certs}"\n[plugins.cri.containerd]\n  discard_unpacked_layers = true\n`), certs);
    assert.deepEqual(ids(v1), ['ok:config-path', 'fail:discard-unpacked-layers']);
  });

  test('imports are followed (drop-in files override), CRI disabled and legacy mirrors are reported', async () => {
    const main = await write('main/config.toml', `version = 2\nimports = ["conf.d/*.toml"]\n${v2('/etc/containerd/certs.d', false).replace('version = 2\n', '')}`);
    await write('main/conf.d/10-discard.toml', 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  discard_unpacked_layers = true\n');
    await write('main/conf.d/ignored.txt', 'not toml at all [');
    const r = await checkContainerdConfig(main, '/etc/containerd/certs.d');
    assert.deepEqual(r.imports, [path.join(dir, 'main/conf.d/10-discard.toml')]);
    assert.deepEqual(ids(r), ['ok:config-path', 'fail:discard-unpacked-layers']);
    const off = await checkContainerdConfig(
      await write('g.toml', `version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/x"\n  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n    endpoint = ["https://m"]\n`),
      '/x',
    );
    assert.deepEqual(ids(off), ['warn:cri-disabled', 'ok:config-path', 'warn:legacy-mirrors', 'ok:discard-unpacked-layers']);
  });

  test('a missing file is said so (a warning, nothing can be checked); an invalid one is a failure', async () => {
    const missing = await checkContainerdConfig(path.join(dir, 'nope.toml'), '/x');
    assert.equal(missing.found, false);
    assert.deepEqual(ids(missing), ['warn:config-file-missing']);
    assert.match(missing.findings[0]!.message, /nope\.toml does not exist/);
    const bad = await checkContainerdConfig(await write('bad.toml', 'version = 2\n[plugins\n'), '/x');
    assert.deepEqual(ids(bad), ['fail:config-file-invalid']);
  });
});

describe('peerpull doctor', () => {
  let root: string;
  let dns: Dnsmasq | undefined;
  let ctd: Containerd | undefined;
  const procs: PeerpullProcess[] = [];
  let base: Record<string, string>;
  let closedUrl: string;

  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'peerpull-doctor-'));
    const many = Array.from({ length: 3800 }, (_, i) => `10.77.${i >> 8}.${i & 255}`);
    dns = await Dnsmasq.start({ 'peerpull-p2p.test': ['127.0.79.1', '127.0.79.2'], 'alone.test': ['127.0.80.1'], 'nearly-full.test': many });
    const closed = await freePort();
    closedUrl = `http://127.0.0.1:${closed}`;
    await mkdir(path.join(root, 'empty-certs'));
    // Everything broken at once; each test fixes what it does not look at only where needed.
    base = {
      PEERPULL_CONTAINERD_SOCK: path.join(root, 'nothing-here', 'containerd.sock'),
      PEERPULL_CONTAINERD_CONFIG_FILE: await writeFileIn(root, 'no-config-path.toml', V2_NO_CONFIG_PATH),
      PEERPULL_CONTAINERD_CONFIG_PATH: path.join(root, 'empty-certs'),
      PEERPULL_MIRRORED_REGISTRIES: 'docker.io',
      PEERPULL_REGISTRY_ADDR: `127.0.0.1:${closed}`,
      PEERPULL_METRICS_ADDR: `127.0.0.1:${closed}`,
    };
  });

  after(async () => {
    for (const p of procs) await p.stop('SIGKILL');
    await ctd?.stop();
    await dns?.stop();
    if (root) await rm(root, { recursive: true, force: true });
  });

  async function writeFileIn(dir: string, name: string, text: string): Promise<string> {
    const f = path.join(dir, name);
    await writeFile(f, text);
    return f;
  }

  /** Runs the doctor; it must fail (exit 1) and print `re` on a FAIL or WARN line. */
  async function expectProblem(env: Record<string, string>, re: RegExp, status: 'FAIL' | 'WARN' = 'FAIL', args: string[] = []): Promise<Run> {
    const r = await peerpull(['doctor', '--url', closedUrl, ...args], { ...base, ...env });
    assert.equal(r.code, 1, r.stdout + r.stderr);
    const line = r.stdout.split('\n').find((l) => l.startsWith(`  ${status}`) && re.test(l));
    assert.ok(line, `no ${status} line matching ${re} in:\n${r.stdout}`);
    assert.match(r.stdout, /\d+ problems? found/);
    return r;
  }

  test('containerd socket missing', async () => {
    const r = await expectProblem({}, /the containerd socket .*nothing-here\/containerd\.sock is missing: containerd is not running on this node/);
    assert.match(r.stdout, /fix: start containerd, or point PEERPULL_CONTAINERD_SOCK/);
  });

  test('containerd socket there but not answering', async () => {
    const sock = path.join(root, 'mute.sock');
    const server = net.createServer((c) => c.destroy());
    await new Promise<void>((res) => server.listen(sock, res));
    try {
      await expectProblem({ PEERPULL_CONTAINERD_SOCK: sock }, /containerd does not answer on .*mute\.sock/);
    } finally {
      await new Promise((res) => server.close(res));
    }
  });

  test('containerd config without config_path', async () => {
    const r = await expectProblem({}, /CRI registry config_path is not set in .*no-config-path\.toml: containerd never reads hosts\.toml files/);
    assert.ok(r.stdout.includes(`config_path = "${path.join(root, 'empty-certs')}"`), r.stdout);
  });

  test('containerd config with discard_unpacked_layers = true', async () => {
    const file = await writeFileIn(root, 'discard.toml', v2(path.join(root, 'empty-certs'), true));
    const r = await expectProblem({ PEERPULL_CONTAINERD_CONFIG_FILE: file }, /sets discard_unpacked_layers = true: containerd deletes layer blobs once they are unpacked/);
    assert.match(r.stdout, /ok {4}containerd reads hosts\.toml from /);
    assert.match(r.stdout, /discard_unpacked_layers = false/);
  });

  test('containerd config file absent', async () => {
    await expectProblem({ PEERPULL_CONTAINERD_CONFIG_FILE: path.join(root, 'absent.toml') }, /containerd config file .*absent\.toml does not exist/, 'WARN');
  });

  test('no hosts.toml for the mirrored registries', async () => {
    const r = await expectProblem({}, /no hosts\.toml for docker\.io under .*empty-certs: containerd pulls docker\.io images straight from upstream/);
    assert.match(r.stdout, /fix: run `peerpull configure`/);
    await expectProblem({ PEERPULL_MIRRORED_REGISTRIES: '', PEERPULL_CONTAINERD_CONFIG_PATH: path.join(root, 'no-such-dir') }, /no mirror config: .*no-such-dir does not exist/);
  });

  test("hosts.toml not peerpull's, or peerpull listed after another mirror", async () => {
    const certs = path.join(root, 'other-certs');
    await mkdir(path.join(certs, 'docker.io'), { recursive: true });
    const file = path.join(certs, 'docker.io', 'hosts.toml');
    await writeFile(file, 'server = "https://registry-1.docker.io"\n\n[host."http://10.9.9.9:5000"]\n  capabilities = ["pull"]\n');
    await expectProblem({ PEERPULL_CONTAINERD_CONFIG_PATH: certs }, /docker\.io\/hosts\.toml was not written by peerpull \(its hosts: http:\/\/10\.9\.9\.9:5000\)/);
    const port = base.PEERPULL_REGISTRY_ADDR!.split(':')[1];
    await writeFile(file, `${MANAGED_HEADER}server = "https://registry-1.docker.io"\n\n[host."http://10.9.9.9:5000"]\n  capabilities = ["pull"]\n\n[host."http://127.0.0.1:${port}"]\n  capabilities = ["pull"]\n`);
    await expectProblem({ PEERPULL_CONTAINERD_CONFIG_PATH: certs }, /lists peerpull at http:\/\/127\.0\.0\.1:\d+ only after http:\/\/10\.9\.9\.9:5000: containerd tries that host first/, 'WARN');
  });

  test('bootstrap DNS name does not resolve', async () => {
    await expectProblem(
      { PEERPULL_BOOTSTRAP_DNS: 'peerpull-p2p.kube-system.invalid', PEERPULL_DNS_SERVERS: dns!.server },
      new RegExp(`the bootstrap DNS name peerpull-p2p\\.kube-system\\.invalid \\(PEERPULL_BOOTSTRAP_DNS\\) does not resolve through DNS servers ${dns!.server.replaceAll('.', '\\.')}`),
    );
  });

  test('several bootstrap names: each checked; one that does not resolve fails, one nearly filling a DNS message warns', async () => {
    const server = dns!.server.replaceAll('.', '\\.');
    const r = await expectProblem(
      { PEERPULL_BOOTSTRAP_DNS: 'peerpull-p2p.test,nearly-full.test,gone.test', PEERPULL_DNS_SERVERS: dns!.server },
      new RegExp(`the bootstrap DNS name gone\\.test \\(PEERPULL_BOOTSTRAP_DNS\\) does not resolve through DNS servers ${server}`),
    );
    assert.match(r.stdout, /ok {4}peerpull-p2p\.test resolves to 2 address\(es\)/);
    assert.match(r.stdout, /ok {4}nearly-full\.test resolves to 3800 address\(es\)/);
    assert.match(r.stdout, /WARN {2}nearly-full\.test lists 3800 IPv4 addresses, and one DNS message holds about 40\d\d: past that the answer is cut/);
    assert.match(r.stdout, /list the nodes under several headless names .* in PEERPULL_BOOTSTRAP_DNS/);
  });

  test('one of several bootstrap names listing nobody (a node pool scaled to zero) is a warning, not a failure', async () => {
    // A server that knows one name and says it has no records (NOERROR, empty answer); REFUSED
    // for every other name, so the resolver asks dnsmasq next.
    const udp = dgram.createSocket('udp4');
    await new Promise<void>((res) => udp.bind(0, '127.0.0.1', res));
    udp.on('message', (q, from) => {
      const name = q.subarray(12, q.indexOf(0, 12)).toString('latin1');
      const r = Buffer.from(q);
      r.writeUInt16BE(0x8180 | (name === '\x05empty\x04test' ? 0 : 5), 2);
      udp.send(r, from.port, from.address);
    });
    try {
      const r = await expectProblem(
        { PEERPULL_BOOTSTRAP_DNS: 'peerpull-p2p.test,empty.test', PEERPULL_DNS_SERVERS: `127.0.0.1:${udp.address().port},${dns!.server}` },
        /the bootstrap DNS name empty\.test exists but lists no addresses .*; the other names still list members/,
        'WARN',
      );
      assert.match(r.stdout, /ok {4}peerpull-p2p\.test resolves to 2 address\(es\)/);
      assert.doesNotMatch(r.stdout, /FAIL .*bootstrap DNS/);
    } finally {
      udp.close();
    }
  });

  test('registry port and running node not answering', async () => {
    await expectProblem({}, new RegExp(`nothing answers at ${closedUrl.replaceAll('.', '\\.')}, where containerd looks for peerpull`));
    await expectProblem({}, /cannot read the running node's status: no answer from/);
  });

  test('the running node has no peers', async () => {
    const layout = path.join(root, 'lone');
    await generateImage(layout, { name: 'docker.io/library/lone:1', layerSizes: [10] });
    const lone = await startPeerpull({
      PEERPULL_STORE: `oci-layout:${layout}`,
      PEERPULL_P2P: 'true',
      PEERPULL_P2P_ADDR: '127.0.0.1:0',
      PEERPULL_DATA_DIR: path.join(root, 'lone-data'),
    });
    procs.push(lone);
    await eventually(async () => (await get(`${lone.metricsUrl}/status?format=json`)).body.toString().includes('"running": true'), 15_000, 'p2p running');
    const r = await expectProblem({}, /the running node has no peers: neither PEERPULL_BOOTSTRAP_DNS nor PEERPULL_BOOTSTRAP_PEERS is set/, 'FAIL', ['--url', lone.metricsUrl]);
    assert.match(r.stdout, /ok {4}its content source \(oci-layout\) is healthy/);
    // A one-node cluster (DNS lists only this node) needs no peers: not a problem.
    const single = await startPeerpull(
      {
        PEERPULL_STORE: `oci-layout:${layout}`,
        PEERPULL_P2P: 'true',
        PEERPULL_P2P_ADDR: '127.0.80.1:5001',
        PEERPULL_BOOTSTRAP_DNS: 'alone.test',
        PEERPULL_DNS_SERVERS: dns!.server,
        PEERPULL_BOOTSTRAP_INTERVAL: '1s',
        PEERPULL_DATA_DIR: path.join(root, 'single-data'),
      },
      ['serve'],
      '127.0.80.1',
    );
    procs.push(single);
    await eventually(async () => (await get(`${single.url}/readyz`)).status === 200, 15_000, 'a one-node cluster is ready');
    const s = await peerpull(['doctor', '--url', single.metricsUrl], { ...base });
    const snap = JSON.parse((await get(`${single.metricsUrl}/status?format=json`)).body.toString()) as StatusSnapshot;
    assert.match(s.stdout, /ok {4}it is alone in its cluster: the bootstrap DNS name alone\.test lists only one member/, JSON.stringify(snap.p2p));
    assert.ok(!snap.problems.some((p) => p.includes('no peers')), snap.problems.join('; '));
    await Promise.all([lone.stop(), single.stop()]);
  });

  test('a healthy node passes every check (real containerd, hosts.toml by configure, peers through DNS)', async () => {
    const certs = path.join(root, 'certs');
    ctd = await startContainerd({ name: 'ppdoc', cri: { configPath: certs } });
    const [ipA, ipB] = ['127.0.79.1', '127.0.79.2'];
    const port = await freePort(ipA);
    const p2p = (ip: string, i: number) => ({
      PEERPULL_P2P: 'true',
      PEERPULL_P2P_ADDR: `${ip}:5001`,
      PEERPULL_BOOTSTRAP_DNS: 'peerpull-p2p.test',
      PEERPULL_DNS_SERVERS: dns!.server,
      PEERPULL_BOOTSTRAP_INTERVAL: '1s',
      PEERPULL_DATA_DIR: path.join(root, `data-${i}`),
      PEERPULL_CLUSTER: 'doctor-test',
    });
    const env = {
      ...p2p(ipA, 0),
      PEERPULL_STORE: 'containerd',
      PEERPULL_CONTAINERD_SOCK: ctd.socket,
      PEERPULL_CONTENT_PATH: ctd.contentPath,
      // The file this containerd really runs with (written by the test support, CRI on).
      PEERPULL_CONTAINERD_CONFIG_FILE: path.join(ctd.dir, 'config.toml'),
      PEERPULL_CONTAINERD_CONFIG_PATH: certs,
      PEERPULL_MIRRORED_REGISTRIES: 'docker.io',
      PEERPULL_NODE_IP: ipA,
      PEERPULL_REGISTRY_ADDR: `${ipA}:${port}`,
    };
    assert.match(await readFile(env.PEERPULL_CONTAINERD_CONFIG_FILE, 'utf8'), /config_path = /);
    const conf = await peerpull(['configure'], env);
    assert.equal(conf.code, 0, conf.stdout + conf.stderr);
    const a = await startPeerpull(env, ['serve'], ipA);
    procs.push(a);
    const layout = path.join(root, 'B');
    await generateImage(layout, { name: 'docker.io/library/b:1', layerSizes: [10] });
    const b = await startPeerpull({ ...p2p(ipB, 1), PEERPULL_STORE: `oci-layout:${layout}` }, ['serve'], ipB);
    procs.push(b);
    // serve's preflight found nothing to warn about.
    await a.waitForLog((l) => l.msg === 'preflight: containerd config is fine for peerpull');
    assert.ok(!a.logs.some((l) => String(l.msg).startsWith('preflight:') && l.level === 'warn'));
    await eventually(
      async () => {
        const s = JSON.parse((await get(`${a.metricsUrl}/status?format=json`)).body.toString()) as StatusSnapshot;
        return s.p2p.peers >= 1 && s.content.healthy && s.containerd.connected;
      },
      30_000,
      'A connected to B and to containerd',
    );
    const r = await peerpull(['doctor', '--url', a.metricsUrl], env);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.doesNotMatch(r.stdout, /FAIL|WARN/);
    assert.match(r.stdout, /ok {4}containerd 1\.\d+\.\d+\S* answers on /);
    assert.match(r.stdout, /ok {4}containerd reads hosts\.toml from .*certs/);
    assert.match(r.stdout, /ok {4}discard_unpacked_layers is false/);
    assert.match(r.stdout, new RegExp(`ok {4}.*docker\\.io/hosts\\.toml sends docker\\.io to peerpull at http://127\\.0\\.79\\.1:${port} first`));
    assert.match(r.stdout, /ok {4}the registry answers at http:\/\/127\.0\.79\.1:\d+/);
    assert.match(r.stdout, /ok {4}its content source \(containerd\) is healthy/);
    assert.match(r.stdout, /ok {4}it has \d+ peer\(s\)/);
    assert.match(r.stdout, /ok {4}peerpull-p2p\.test resolves to 2 address\(es\)/);
    assert.match(r.stdout, /All checks passed\./);
    const json = await peerpull(['doctor', '--url', a.metricsUrl, '--format', 'json'], env);
    assert.equal(JSON.parse(json.stdout).ok, true);
    await Promise.all([a.stop(), b.stop()]);
  });

  test('preflight at serve start: containerd config problems are clear warnings, never fatal', async () => {
    const file = await writeFileIn(root, 'preflight.toml', V2_NO_CONFIG_PATH.replace('discard_unpacked_layers = false', 'discard_unpacked_layers = true'));
    const pp = await startPeerpull({
      PEERPULL_STORE: 'containerd',
      PEERPULL_CONTAINERD_SOCK: path.join(root, 'nothing-here', 'containerd.sock'),
      PEERPULL_CONTAINERD_CONFIG_FILE: file,
      PEERPULL_CONTAINERD_CONFIG_PATH: path.join(root, 'empty-certs'),
    });
    procs.push(pp);
    const cp = await pp.waitForLog((l) => l.level === 'warn' && String(l.msg).includes('config_path is not set'));
    assert.equal(cp.check, 'config-path-unset');
    assert.match(String(cp.fix), /config_path = /);
    const dl = await pp.waitForLog((l) => l.level === 'warn' && String(l.msg).includes('discard_unpacked_layers = true'));
    assert.equal(dl.check, 'discard-unpacked-layers');
    // Still running and answering its probes (containerd is retried in the background).
    assert.equal((await get(`${pp.metricsUrl}/livez`)).status, 200);
    assert.equal(pp.child.exitCode, null);
  });
});

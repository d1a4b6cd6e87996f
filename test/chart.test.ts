// The Helm chart: `helm lint`, `helm template` with default and non-default values, every rendered
// object validated with kubernetes-models, assertions on the DaemonSet, two releases side by side,
// the post-delete cleanup hooks, and the hook's wait script against a stand-in API server.
//
// To read what Helm renders without a YAML library, the test renders a copy of the chart whose
// templates are turned into named templates (`_x.yaml`) plus one template that includes each,
// parses every document with Helm's own fromYaml and writes it as JSON. The plain chart is
// rendered too, and both must list the same objects.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { DaemonSet } from 'kubernetes-models/apps/v1';
import { Job } from 'kubernetes-models/batch/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { ConfigMap, Secret, Service, ServiceAccount } from 'kubernetes-models/v1';
import { loadConfig, settings, variableName } from '../src/main/config.js';
import { REPO_ROOT } from './support/peerpull.js';

const run = promisify(execFile);
const HELM = path.join(REPO_ROOT, 'node_modules/.bin/helm');
const CHART = path.join(REPO_ROOT, 'charts/peerpull');

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Obj = Record<string, any>;

let work: string;
let jsonChart: string;
let helmEnv: NodeJS.ProcessEnv;

before(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'ppchart-'));
  // helm keeps caches and config under $HOME by default: keep them in the temp dir.
  helmEnv = {
    PATH: process.env.PATH,
    HELM_CACHE_HOME: path.join(work, 'cache'),
    HELM_CONFIG_HOME: path.join(work, 'config'),
    HELM_DATA_HOME: path.join(work, 'data'),
  };
  jsonChart = path.join(work, 'peerpull-json');
  await cp(CHART, jsonChart, { recursive: true });
  const names: string[] = [];
  for (const f of await readdir(path.join(jsonChart, 'templates'))) {
    if (!f.endsWith('.yaml')) continue;
    await rename(path.join(jsonChart, 'templates', f), path.join(jsonChart, 'templates', `_${f}`));
    names.push(`peerpull/templates/_${f}`);
  }
  await writeFile(
    path.join(jsonChart, 'templates', 'zz-json.yaml'),
    [
      `{{- range $t := list ${names.map((n) => JSON.stringify(n)).join(' ')} }}`,
      '{{- range $doc := splitList "\\n---\\n" (include $t $) }}',
      '{{- if trim $doc }}',
      '{{- $o := fromYaml $doc }}',
      '{{- if hasKey $o "Error" }}{{ fail (printf "%s does not parse: %s" $t (get $o "Error")) }}{{ end }}',
      '{{- if $o }}',
      '---',
      '{{ toJson $o }}',
      '{{- end }}',
      '{{- end }}',
      '{{- end }}',
      '{{- end }}',
      '',
    ].join('\n'),
  );
});

after(async () => {
  await rm(work, { recursive: true, force: true });
});

async function helm(args: string[]): Promise<string> {
  try {
    const { stdout } = await run(HELM, args, { env: helmEnv, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string; stdout?: string };
    throw new Error(`helm ${args.join(' ')} failed: ${(e.stderr ?? '').trim() || e.message}`);
  }
}

async function valuesFile(name: string, values: Obj): Promise<string> {
  // JSON is YAML: helm reads it as a values file.
  const f = path.join(work, `${name}-${process.hrtime.bigint()}.json`);
  await writeFile(f, JSON.stringify(values));
  return f;
}

function identity(o: Obj): string {
  return `${o.kind}/${o.metadata?.namespace ?? ''}/${o.metadata?.name}`;
}

/** Renders the chart; returns the objects (from the JSON copy) after checking the plain chart lists the same. */
async function render(release: string, values: Obj = {}, namespace = 'kube-system'): Promise<Obj[]> {
  const vf = await valuesFile(release, values);
  const common = [release, '--namespace', namespace, '--values', vf];
  const json = await helm(['template', ...common.slice(0, 1), jsonChart, ...common.slice(1)]);
  const objs = json
    .split(/^---$/m)
    .map((d) => d.split('\n').filter((l) => !l.startsWith('#')).join('\n').trim())
    .filter(Boolean)
    .map((d) => JSON.parse(d) as Obj);
  const yaml = await helm(['template', release, CHART, ...common.slice(1)]);
  const heads = yaml
    .split(/^---$/m)
    .map((d) => ({ kind: /^kind: (\S+)$/m.exec(d)?.[1], name: /^metadata:\n(?:  .*\n)*?  name: (\S+)$/m.exec(d)?.[1], ns: /^  namespace: (\S+)$/m.exec(d)?.[1] }))
    .filter((h) => h.kind);
  assert.deepEqual(
    heads.map((h) => `${h.kind}/${h.ns ?? ''}/${h.name}`).sort(),
    objs.map(identity).sort(),
    'the JSON rendering lists exactly the objects of the plain chart',
  );
  return objs;
}

type Model = new (o: Obj) => { validate(): void };
const MODELS: Record<string, Model> = {
  'apps/v1/DaemonSet': DaemonSet,
  'batch/v1/Job': Job,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'rbac.authorization.k8s.io/v1/Role': Role,
  'rbac.authorization.k8s.io/v1/RoleBinding': RoleBinding as unknown as Model,
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'v1/ServiceAccount': ServiceAccount,
};

/** kubernetes-models has no Prometheus operator types: the fields we use, checked by hand. */
function validateServiceMonitor(o: Obj): void {
  assert.equal(o.apiVersion, 'monitoring.coreos.com/v1');
  assert.match(o.metadata.name, /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
  assert.ok(o.spec.selector.matchLabels && typeof o.spec.selector.matchLabels === 'object');
  assert.ok(Array.isArray(o.spec.endpoints) && o.spec.endpoints.length > 0);
  for (const e of o.spec.endpoints) {
    assert.equal(typeof e.port, 'string');
    assert.match(e.interval, /^\d+(ms|s|m|h)$/);
  }
}

function validateAll(objs: Obj[]): void {
  for (const o of objs) {
    const key = `${o.apiVersion}/${o.kind}`;
    assert.ok(o.metadata?.name && o.metadata.name.length <= 63, `${identity(o)}: name within 63 characters`);
    if (key === 'monitoring.coreos.com/v1/ServiceMonitor') {
      validateServiceMonitor(o);
      continue;
    }
    const Model = MODELS[key];
    assert.ok(Model, `no model for ${key}`);
    assert.doesNotThrow(() => new Model(o).validate(), `${identity(o)} is a valid ${key}`);
  }
}

const find = (objs: Obj[], kind: string, name: string) => {
  const o = objs.find((x) => x.kind === kind && x.metadata.name === name);
  assert.ok(o, `${kind} ${name} rendered (have: ${objs.map(identity).join(', ')})`);
  return o!;
};

function envOf(container: Obj): Map<string, Obj> {
  const names = container.env.map((e: Obj) => e.name);
  assert.equal(new Set(names).size, names.length, `${container.name}: every variable once`);
  return new Map(container.env.map((e: Obj) => [e.name, e]));
}

/** The environment the process would see on a node: downward API filled in, $(VAR) expanded. */
function processEnv(container: Obj, nodeIp = '10.1.2.3', podIp = '192.168.7.8'): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of container.env as Obj[]) {
    if (e.valueFrom) {
      out[e.name] = e.valueFrom.fieldRef.fieldPath === 'status.hostIP' ? nodeIp : podIp;
    } else {
      out[e.name] = String(e.value).replace(/\$\(([A-Z0-9_]+)\)/g, (m, v) => out[v] ?? m);
    }
  }
  return out;
}

describe('chart: helm lint', () => {
  test('default values', async () => {
    const out = await helm(['lint', CHART, '--strict']);
    assert.match(out, /1 chart\(s\) linted, 0 chart\(s\) failed/);
  });

  test('non-default values', async () => {
    const vf = await valuesFile('lint', {
      registry: { nodePort: { enabled: true, port: 31000 } },
      metrics: { serviceMonitor: { enabled: true }, dashboard: { enabled: true } },
      networkPolicy: { enabled: true },
      hostNetwork: true,
      mirror: { registries: ['docker.io', 'ghcr.io'] },
    });
    const out = await helm(['lint', CHART, '--strict', '--values', vf]);
    assert.match(out, /0 chart\(s\) failed/);
  });
});

describe('chart: default values', () => {
  let objs: Obj[];
  before(async () => {
    objs = await render('rel');
  });

  test('every object is valid; only the default set is rendered', () => {
    validateAll(objs);
    assert.deepEqual(objs.map(identity).sort(), [
      'ConfigMap/kube-system/rel-peerpull-cleanup-wait',
      'DaemonSet/kube-system/rel-peerpull',
      'DaemonSet/kube-system/rel-peerpull-cleanup',
      'Job/kube-system/rel-peerpull-cleanup-wait',
      'Role/kube-system/rel-peerpull-cleanup',
      'RoleBinding/kube-system/rel-peerpull-cleanup',
      'Secret/kube-system/rel-peerpull-cluster-key',
      'Service/kube-system/rel-peerpull-metrics',
      'Service/kube-system/rel-peerpull-p2p',
      'ServiceAccount/kube-system/rel-peerpull',
      'ServiceAccount/kube-system/rel-peerpull-cleanup',
    ]);
  });

  test('DaemonSet: init container configure, main container serve', () => {
    const ds = find(objs, 'DaemonSet', 'rel-peerpull');
    const pod = ds.spec.template.spec;
    assert.deepEqual(pod.initContainers.map((c: Obj) => [c.name, c.args]), [['configure', ['configure']]]);
    assert.deepEqual(pod.containers.map((c: Obj) => [c.name, c.args]), [['peerpull', ['serve']]]);
    assert.equal(pod.containers[0].image, 'ghcr.io/peerpull/peerpull:0.1.0');
    assert.deepEqual(ds.spec.selector.matchLabels, { 'app.kubernetes.io/name': 'peerpull', 'app.kubernetes.io/instance': 'rel' });
    for (const [k, v] of Object.entries(ds.spec.selector.matchLabels)) assert.equal(ds.spec.template.metadata.labels[k], v);
    assert.equal(pod.priorityClassName, 'system-node-critical');
    assert.deepEqual(pod.tolerations, [{ operator: 'Exists' }]);
    assert.equal(pod.automountServiceAccountToken, false);
    assert.equal(pod.hostNetwork, undefined);
  });

  test('DaemonSet: environment', () => {
    const pod = find(objs, 'DaemonSet', 'rel-peerpull').spec.template.spec;
    const known = new Set(Object.values(settings).map(variableName));
    for (const c of [pod.initContainers[0], pod.containers[0]]) {
      const env = envOf(c);
      assert.equal(c.env[0].name, 'PEERPULL_NODE_IP', 'first, so later values can use $(PEERPULL_NODE_IP)');
      assert.deepEqual(env.get('PEERPULL_NODE_IP')!.valueFrom, { fieldRef: { fieldPath: 'status.hostIP' } });
      assert.deepEqual(env.get('PEERPULL_ADVERTISE_IP')!.valueFrom, { fieldRef: { fieldPath: 'status.podIP' } });
      for (const name of env.keys()) assert.ok(known.has(name), `${name} is a peerpull setting`);
      assert.equal(env.get('PEERPULL_CONTAINERD_CONFIG_FILE')!.value, '/host/etc/containerd/config.toml');
      const values = Object.fromEntries([...env].filter(([, e]) => 'value' in e).map(([k, e]) => [k, e.value]));
      assert.equal(values.PEERPULL_BOOTSTRAP_DNS, 'rel-peerpull-p2p.kube-system.svc.cluster.local');
      assert.equal(values.PEERPULL_CLUSTER, 'rel');
      assert.equal(values.PEERPULL_REGISTRY_ADDR, ':5000');
      assert.equal(values.PEERPULL_P2P_ADDR, ':5001');
      assert.equal(values.PEERPULL_METRICS_ADDR, ':9090');
      assert.equal(values.PEERPULL_CONTAINERD_CONFIG_PATH, '/etc/containerd/certs.d');
      assert.equal(values.PEERPULL_MIRRORED_REGISTRIES, '');
      assert.equal(values.PEERPULL_MIRROR_TARGETS, '');
      assert.equal(values.PEERPULL_DATA_DIR, '/var/lib/peerpull');
      assert.equal(values.PEERPULL_CLUSTER_KEY_FILE, '/etc/peerpull/cluster-key/cluster.key');
      // What the process sees loads as a configuration.
      const config = loadConfig(processEnv(c));
      assert.equal(config.nodeIp, '10.1.2.3');
      assert.equal(config.registryAddr.port, 5000);
      assert.equal(config.cluster, 'rel');
    }
  });

  test('DaemonSet: ports and probes', () => {
    const c = find(objs, 'DaemonSet', 'rel-peerpull').spec.template.spec.containers[0];
    assert.deepEqual(c.ports, [
      { name: 'registry', containerPort: 5000, hostPort: 5000, protocol: 'TCP' },
      { name: 'p2p', containerPort: 5001, protocol: 'TCP' },
      { name: 'p2p-udp', containerPort: 5001, protocol: 'UDP' },
      { name: 'metrics', containerPort: 9090, protocol: 'TCP' },
    ]);
    assert.deepEqual(c.startupProbe.httpGet, { path: '/livez', port: 'registry' });
    assert.deepEqual(c.readinessProbe.httpGet, { path: '/readyz', port: 'registry' });
    assert.deepEqual(c.livenessProbe.httpGet, { path: '/livez', port: 'registry' });
    assert.ok(c.startupProbe.periodSeconds * c.startupProbe.failureThreshold >= 30, 'time to start');
  });

  test('DaemonSet: volumes, mounts, security context, resources', () => {
    const pod = find(objs, 'DaemonSet', 'rel-peerpull').spec.template.spec;
    const vols = new Map(pod.volumes.map((v: Obj) => [v.name, v]));
    assert.deepEqual((vols.get('containerd-sock') as Obj).hostPath, { path: '/run/containerd/containerd.sock', type: 'Socket' });
    assert.deepEqual((vols.get('containerd-content') as Obj).hostPath, { path: '/var/lib/containerd/io.containerd.content.v1.content', type: 'Directory' });
    assert.deepEqual((vols.get('containerd-config') as Obj).hostPath, { path: '/etc/containerd/certs.d', type: 'DirectoryOrCreate' });
    // containerd's config file is read through its directory, read-only, for preflight and doctor.
    assert.deepEqual((vols.get('containerd-etc') as Obj).hostPath, { path: '/etc/containerd', type: 'DirectoryOrCreate' });
    assert.ok((vols.get('data') as Obj).emptyDir);
    assert.equal((vols.get('cluster-key') as Obj).secret.secretName, 'rel-peerpull-cluster-key');
    const mounts = (c: Obj) => new Map(c.volumeMounts.map((m: Obj) => [m.name, m]));
    const init = mounts(pod.initContainers[0]);
    assert.equal((init.get('containerd-config') as Obj).mountPath, '/etc/containerd/certs.d');
    assert.notEqual((init.get('containerd-config') as Obj).readOnly, true, 'configure writes there');
    assert.equal(init.has('containerd-sock'), false);
    const main = mounts(pod.containers[0]);
    for (const n of ['containerd-sock', 'containerd-content', 'containerd-config', 'cluster-key']) assert.equal((main.get(n) as Obj).readOnly, true, `${n} read-only`);
    assert.equal((main.get('data') as Obj).mountPath, '/var/lib/peerpull');
    assert.equal((main.get('cluster-key') as Obj).mountPath, '/etc/peerpull/cluster-key');
    for (const c of [pod.initContainers[0], pod.containers[0]]) {
      assert.equal(c.securityContext.readOnlyRootFilesystem, true);
      assert.equal(c.securityContext.allowPrivilegeEscalation, false);
      assert.equal(c.securityContext.privileged, false);
      assert.deepEqual(c.securityContext.capabilities, { drop: ['ALL'] });
      assert.ok(mounts(c).has('tmp'), 'a writable /tmp');
    }
    assert.equal(pod.containers[0].resources.limits.memory, '320Mi');
    assert.equal(pod.securityContext.seccompProfile.type, 'RuntimeDefault');
  });

  test('headless bootstrap Service, metrics Service, cluster key Secret', () => {
    const ds = find(objs, 'DaemonSet', 'rel-peerpull');
    const p2p = find(objs, 'Service', 'rel-peerpull-p2p');
    assert.equal(p2p.spec.clusterIP, 'None');
    assert.equal(p2p.spec.publishNotReadyAddresses, true);
    assert.deepEqual(p2p.spec.selector, ds.spec.selector.matchLabels);
    assert.deepEqual(p2p.spec.ports, [{ name: 'p2p', port: 5001, targetPort: 'p2p', protocol: 'TCP' }]);
    const metrics = find(objs, 'Service', 'rel-peerpull-metrics');
    assert.deepEqual(metrics.spec.ports, [{ name: 'metrics', port: 9090, targetPort: 'metrics', protocol: 'TCP' }]);
    const secret = find(objs, 'Secret', 'rel-peerpull-cluster-key');
    const key = Buffer.from(secret.data['cluster.key'], 'base64').toString();
    assert.match(key, /^[0-9a-f]{64}$/);
    assert.equal(loadConfig({ PEERPULL_CLUSTER_KEY: key }).clusterKey, key);
  });

  test('post-delete hooks run cleanup on every node, then wait for all of them', () => {
    const hooks = objs.filter((o) => o.metadata.annotations?.['helm.sh/hook']);
    assert.deepEqual(hooks.map((o) => o.metadata.annotations['helm.sh/hook']).filter((h) => h !== 'post-delete'), []);
    const weight = (kind: string, name: string) => Number(find(objs, kind, name).metadata.annotations['helm.sh/hook-weight']);
    assert.ok(weight('Role', 'rel-peerpull-cleanup') < weight('DaemonSet', 'rel-peerpull-cleanup'));
    assert.ok(weight('ConfigMap', 'rel-peerpull-cleanup-wait') < weight('DaemonSet', 'rel-peerpull-cleanup'));
    assert.ok(weight('DaemonSet', 'rel-peerpull-cleanup') < weight('Job', 'rel-peerpull-cleanup-wait'));
    for (const h of hooks) assert.equal(h.metadata.annotations['helm.sh/hook-delete-policy'], 'before-hook-creation,hook-succeeded');
    const main = find(objs, 'DaemonSet', 'rel-peerpull').spec.template.spec;
    const ds = find(objs, 'DaemonSet', 'rel-peerpull-cleanup').spec.template.spec;
    assert.deepEqual(ds.initContainers[0].args, ['cleanup']);
    assert.deepEqual(ds.initContainers[0].env, [
      { name: 'PEERPULL_CONTAINERD_CONFIG_PATH', value: '/etc/containerd/certs.d' },
      { name: 'PEERPULL_LOG_LEVEL', value: 'info' },
    ]);
    assert.deepEqual(ds.volumes.find((v: Obj) => v.name === 'containerd-config').hostPath, { path: '/etc/containerd/certs.d', type: 'DirectoryOrCreate' });
    assert.deepEqual(ds.tolerations, main.tolerations, 'reaches the same nodes');
    assert.deepEqual(ds.nodeSelector, main.nodeSelector);
    assert.deepEqual(find(objs, 'Role', 'rel-peerpull-cleanup').rules, [
      { apiGroups: ['apps'], resources: ['daemonsets'], resourceNames: ['rel-peerpull-cleanup'], verbs: ['get'] },
    ]);
    const job = find(objs, 'Job', 'rel-peerpull-cleanup-wait').spec.template.spec;
    assert.equal(job.serviceAccountName, 'rel-peerpull-cleanup');
    assert.deepEqual(job.containers[0].command, ['node', '/scripts/cleanup-wait.mjs']);
    assert.equal(job.containers[0].env.find((e: Obj) => e.name === 'DAEMONSET').value, 'rel-peerpull-cleanup');
  });
});

describe('chart: non-default values', () => {
  test('NodePort fallback, ServiceMonitor, dashboard, NetworkPolicy, env overrides, existing Secret', async () => {
    const objs = await render(
      'edge',
      {
        image: { repository: 'registry.example.com/peerpull', tag: 'v9' },
        clusterName: 'eu-west',
        clusterKey: { existingSecret: 'my-key', secretKey: 'swarm.key' },
        registry: { port: 5050, nodePort: { enabled: true, port: 31050 } },
        p2p: { port: 5051, maxConnections: 32, dnsServers: ['10.96.0.10'] },
        metrics: { port: 9191, serviceMonitor: { enabled: true, labels: { release: 'prom' } }, dashboard: { enabled: true, namespace: 'monitoring' } },
        mirror: { registries: ['docker.io', 'ghcr.io'], extraTargets: ['https://cache.example.com'], resolveTags: false, keepExistingHosts: false, dialTimeout: '500ms' },
        networkPolicy: { enabled: true },
        env: { PEERPULL_LOG_LEVEL: 'debug', PEERPULL_LOOKUP_TIMEOUT: '300ms' },
        nodeSelector: { 'topology.kubernetes.io/region': 'eu-west' },
        resources: { limits: { memory: '256Mi' } },
        cleanup: { timeoutSeconds: 600 },
      },
      'peerpull',
    );
    validateAll(objs);
    assert.equal(objs.some((o) => o.kind === 'Secret'), false, 'existing Secret used, none created');
    const ds = find(objs, 'DaemonSet', 'edge-peerpull');
    const pod = ds.spec.template.spec;
    const c = pod.containers[0];
    assert.equal(c.image, 'registry.example.com/peerpull:v9');
    const env = processEnv(c);
    assert.equal(env.PEERPULL_MIRROR_TARGETS, 'http://10.1.2.3:31050,https://cache.example.com');
    assert.equal(env.PEERPULL_MIRRORED_REGISTRIES, 'docker.io,ghcr.io');
    assert.equal(env.PEERPULL_RESOLVE_TAGS, 'false');
    assert.equal(env.PEERPULL_KEEP_EXISTING_HOSTS, 'false');
    assert.equal(env.PEERPULL_LOG_LEVEL, 'debug', 'env map overrides the named value');
    assert.equal(env.PEERPULL_CLUSTER, 'eu-west');
    assert.equal(env.PEERPULL_CLUSTER_KEY_FILE, '/etc/peerpull/cluster-key/swarm.key');
    assert.equal(env.PEERPULL_BOOTSTRAP_DNS, 'edge-peerpull-p2p.peerpull.svc.cluster.local');
    const config = loadConfig(env);
    assert.deepEqual(config.mirrorTargets, ['http://10.1.2.3:31050', 'https://cache.example.com']);
    assert.equal(config.registryAddr.port, 5050);
    assert.equal(config.p2pAddr.port, 5051);
    assert.equal(config.maxConnections, 32);
    assert.deepEqual(config.dnsServers, ['10.96.0.10']);
    assert.equal(config.mirrorDialTimeout, 500);
    assert.equal(config.lookupTimeout, 300);
    assert.deepEqual(c.ports.map((p: Obj) => [p.name, p.containerPort, p.hostPort]), [['registry', 5050, 5050], ['p2p', 5051, undefined], ['p2p-udp', 5051, undefined], ['metrics', 9191, undefined]]);
    assert.equal(pod.volumes.find((v: Obj) => v.name === 'cluster-key').secret.secretName, 'my-key');
    assert.deepEqual(pod.nodeSelector, { 'topology.kubernetes.io/region': 'eu-west' });
    assert.equal(c.resources.limits.memory, '256Mi');
    assert.equal(ds.spec.template.metadata.annotations?.['checksum/cluster-key'], undefined);

    const reg = find(objs, 'Service', 'edge-peerpull-registry');
    assert.equal(reg.spec.type, 'NodePort');
    assert.deepEqual(reg.spec.ports, [{ name: 'registry', port: 5050, targetPort: 'registry', nodePort: 31050, protocol: 'TCP' }]);

    const sm = find(objs, 'ServiceMonitor', 'edge-peerpull');
    assert.equal(sm.metadata.labels.release, 'prom');
    assert.deepEqual(sm.spec.selector.matchLabels, { ...ds.spec.selector.matchLabels, 'app.kubernetes.io/component': 'metrics' });
    assert.equal(sm.spec.endpoints[0].port, 'metrics');
    const metricsSvc = find(objs, 'Service', 'edge-peerpull-metrics');
    for (const [k, v] of Object.entries(sm.spec.selector.matchLabels)) assert.equal(metricsSvc.metadata.labels[k], v, 'ServiceMonitor selects the metrics Service');

    const cm = find(objs, 'ConfigMap', 'edge-peerpull-dashboard');
    assert.equal(cm.metadata.namespace, 'monitoring');
    assert.equal(cm.metadata.labels.grafana_dashboard, '1');
    const dash = JSON.parse(cm.data['edge-peerpull.json']);
    const titles = dash.panels.map((p: Obj) => p.title.toLowerCase()).join(' | ');
    for (const want of ['requests', 'bytes served', 'hits and misses', 'peers', 'lookups']) assert.ok(titles.includes(want), `panel "${want}" in ${titles}`);
    for (const p of dash.panels) for (const t of p.targets) assert.match(t.expr, /peerpull_/);

    const np = find(objs, 'NetworkPolicy', 'edge-peerpull');
    assert.deepEqual(np.spec.podSelector.matchLabels, ds.spec.selector.matchLabels);
    const p2pRule = np.spec.ingress.find((r: Obj) => r.ports[0].port === 5051);
    assert.deepEqual(p2pRule.from, [{ podSelector: { matchLabels: ds.spec.selector.matchLabels } }], 'p2p only from peerpull pods');
    assert.deepEqual(p2pRule.ports, [{ port: 5051, protocol: 'TCP' }, { port: 5051, protocol: 'UDP' }], 'libp2p and the provider datagrams');
    const regRule = np.spec.ingress.find((r: Obj) => r.ports[0].port === 5050);
    assert.equal(regRule.from, undefined, 'registry from anywhere by default (containerd dials from the node)');

    assert.equal(find(objs, 'Job', 'edge-peerpull-cleanup-wait').spec.template.spec.containers[0].env.find((e: Obj) => e.name === 'TIMEOUT_SECONDS').value, '600');
    assert.deepEqual(find(objs, 'DaemonSet', 'edge-peerpull-cleanup').spec.template.spec.nodeSelector, pod.nodeSelector);
  });

  test('hostNetwork, no hostPort, cleanup off, no metrics Service', async () => {
    const objs = await render('hn', { hostNetwork: true, cleanup: { enabled: false }, metrics: { service: { enabled: false } }, clusterKey: { enabled: false } });
    validateAll(objs);
    const pod = find(objs, 'DaemonSet', 'hn-peerpull').spec.template.spec;
    assert.equal(pod.hostNetwork, true);
    assert.equal(pod.dnsPolicy, 'ClusterFirstWithHostNet');
    assert.equal(pod.containers[0].ports[0].hostPort, undefined);
    assert.equal(objs.some((o) => o.metadata.annotations?.['helm.sh/hook']), false);
    assert.equal(objs.some((o) => o.metadata.name.endsWith('-metrics')), false);
    assert.equal(pod.volumes.some((v: Obj) => v.name === 'cluster-key'), false);
    assert.equal(processEnv(pod.containers[0]).PEERPULL_CLUSTER_KEY_FILE, undefined);
  });

  test('bad values are refused with the value named', async () => {
    const bad: [Obj, RegExp][] = [
      [{ env: { FOO: 'x' } }, /env/],
      [{ registry: { port: 0 } }, /registry\.port/],
      [{ clusterKey: { value: 'not-hex' } }, /clusterKey\.value/],
      [{ mirror: { extraTargets: ['ftp://x'] } }, /extraTargets/],
      [{ logLevel: 'loud' }, /logLevel/],
      [{ registy: { port: 1 } }, /registy/],
      [{ env: { PEERPULL_NODE_IP: '1.2.3.4' } }, /downward API/],
    ];
    for (const [values, re] of bad) {
      await assert.rejects(render('bad', values), (err: Error) => re.test(err.message), JSON.stringify(values));
    }
  });
});

describe('chart: two releases side by side', () => {
  test('one per region: no name, selector, port or cluster collisions', async () => {
    const eu = await render('eu', { nodeSelector: { region: 'eu' }, registry: { nodePort: { enabled: true, port: 31001 } } }, 'peerpull');
    const us = await render('us', { nodeSelector: { region: 'us' }, registry: { nodePort: { enabled: true, port: 31002 } } }, 'peerpull');
    validateAll([...eu, ...us]);
    const euIds = new Set(eu.map(identity));
    const clash = us.map(identity).filter((i) => euIds.has(i));
    assert.deepEqual(clash, [], 'no object names collide');
    const nodePorts = [...eu, ...us].filter((o) => o.kind === 'Service').flatMap((s) => s.spec.ports.map((p: Obj) => p.nodePort)).filter(Boolean);
    assert.equal(new Set(nodePorts).size, nodePorts.length, 'NodePorts differ');
    const dsEu = find(eu, 'DaemonSet', 'eu-peerpull');
    const dsUs = find(us, 'DaemonSet', 'us-peerpull');
    assert.notDeepEqual(dsEu.spec.selector.matchLabels, dsUs.spec.selector.matchLabels);
    // Neither release's Services or DaemonSet select the other's pods.
    const matches = (sel: Obj, labels: Obj) => Object.entries(sel).every(([k, v]) => labels[k] === v);
    for (const [mine, theirs] of [[eu, dsUs], [us, dsEu]] as const) {
      for (const s of mine.filter((o) => o.kind === 'Service')) assert.equal(matches(s.spec.selector, theirs.spec.template.metadata.labels), false, `${identity(s)} selects only its own pods`);
    }
    const envEu = processEnv(dsEu.spec.template.spec.containers[0]);
    const envUs = processEnv(dsUs.spec.template.spec.containers[0]);
    assert.notEqual(envEu.PEERPULL_CLUSTER, envUs.PEERPULL_CLUSTER);
    assert.notEqual(envEu.PEERPULL_BOOTSTRAP_DNS, envUs.PEERPULL_BOOTSTRAP_DNS);
    assert.notEqual(envEu.PEERPULL_CLUSTER_KEY_FILE && find(eu, 'Secret', 'eu-peerpull-cluster-key').data['cluster.key'], find(us, 'Secret', 'us-peerpull-cluster-key').data['cluster.key']);
    assert.deepEqual(find(eu, 'DaemonSet', 'eu-peerpull-cleanup').spec.template.spec.nodeSelector, { region: 'eu' });
  });
});

describe('chart: one cluster over two releases', () => {
  test('each lists its own bootstrap name first, then the other release\'s; same cluster name and key', async () => {
    const shared = { clusterName: 'big', clusterKey: { existingSecret: 'big-key' } };
    const name = (rel: string) => `${rel}-peerpull-p2p.peerpull.svc.cluster.local`;
    const a = await render('pool-a', { ...shared, nodeSelector: { pool: 'a' }, p2p: { extraBootstrapDns: [name('pool-b')] } }, 'peerpull');
    const b = await render('pool-b', { ...shared, nodeSelector: { pool: 'b' }, p2p: { extraBootstrapDns: [name('pool-a')] } }, 'peerpull');
    validateAll([...a, ...b]);
    const envA = processEnv(find(a, 'DaemonSet', 'pool-a-peerpull').spec.template.spec.containers[0]);
    const envB = processEnv(find(b, 'DaemonSet', 'pool-b-peerpull').spec.template.spec.containers[0]);
    assert.equal(envA.PEERPULL_BOOTSTRAP_DNS, `${name('pool-a')},${name('pool-b')}`);
    assert.deepEqual(loadConfig(envB).bootstrapDns, [name('pool-b'), name('pool-a')]);
    assert.equal(envA.PEERPULL_CLUSTER, envB.PEERPULL_CLUSTER);
    // Each release's headless Service publishes its own pods: the two names list disjoint halves.
    find(a, 'Service', 'pool-a-peerpull-p2p');
    find(b, 'Service', 'pool-b-peerpull-p2p');
    await assert.rejects(render('bad', { p2p: { extraBootstrapDns: ['Not A Name'] } }), /extraBootstrapDns/);
  });
});

describe('chart: cleanup-wait hook script', () => {
  const script = path.join(CHART, 'files/cleanup-wait.mjs');

  async function apiServer(statuses: Obj[]): Promise<{ url: string; paths: string[]; close(): Promise<void> }> {
    let i = 0;
    const paths: string[] = [];
    const server = createServer((req, res) => {
      paths.push(`${req.url} ${req.headers.authorization ?? ''}`);
      const s = statuses[Math.min(i++, statuses.length - 1)];
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ metadata: { name: 'x', generation: 1 }, status: s }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return {
      url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
      paths,
      close: () => new Promise<void>((r) => server.close(() => r())),
    };
  }

  async function runScript(url: string, timeoutSeconds: number, saDir: string): Promise<{ code: number; out: string }> {
    return new Promise((resolve) => {
      execFile(
        process.execPath,
        [script],
        { env: { NAMESPACE: 'peerpull', DAEMONSET: 'rel-peerpull-cleanup', TIMEOUT_SECONDS: String(timeoutSeconds), API_URL: url, SA_DIR: saDir, POLL_MS: '50' }, timeout: 30_000 },
        (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr }),
      );
    });
  }

  test('waits until every scheduled cleanup pod is ready', async () => {
    const sa = path.join(work, 'sa');
    await mkdir(sa, { recursive: true });
    await writeFile(path.join(sa, 'token'), 'secret-token\n');
    const api = await apiServer([
      {},
      { observedGeneration: 1, desiredNumberScheduled: 3, numberReady: 1 },
      { observedGeneration: 1, desiredNumberScheduled: 3, numberReady: 3 },
    ]);
    try {
      const r = await runScript(api.url, 20, sa);
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /3 of 3 nodes cleaned up: done/);
      assert.equal(api.paths.length, 3);
      assert.equal(api.paths[0], '/apis/apps/v1/namespaces/peerpull/daemonsets/rel-peerpull-cleanup Bearer secret-token');
    } finally {
      await api.close();
    }
  });

  test('gives up after the timeout and says which nodes are left', async () => {
    const api = await apiServer([{ observedGeneration: 1, desiredNumberScheduled: 4, numberReady: 2 }]);
    try {
      const r = await runScript(api.url, 1, path.join(work, 'no-sa'));
      assert.equal(r.code, 1);
      assert.match(r.out, /gave up after 1s \(2 of 4 nodes cleaned up\).*peerpull cleanup/);
    } finally {
      await api.close();
    }
  });
});

// Post-delete hook of the peerpull chart: waits until the cleanup DaemonSet has a Ready pod on
// every node it is scheduled to, i.e. `peerpull cleanup` (its init container) finished everywhere.
// Reads one DaemonSet through the API server with the Job's service account; nothing else.
// Env: NAMESPACE, DAEMONSET, TIMEOUT_SECONDS; API_URL and SA_DIR override the in-cluster defaults.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';

const saDir = process.env.SA_DIR || '/var/run/secrets/kubernetes.io/serviceaccount';
const ns = process.env.NAMESPACE;
const name = process.env.DAEMONSET;
const timeoutMs = Number(process.env.TIMEOUT_SECONDS || '300') * 1000;
const host = process.env.KUBERNETES_SERVICE_HOST || 'kubernetes.default.svc';
const base = process.env.API_URL || `https://${host.includes(':') ? `[${host}]` : host}:${process.env.KUBERNETES_SERVICE_PORT || '443'}`;
if (!ns || !name) {
  console.error('cleanup-wait: NAMESPACE and DAEMONSET must be set');
  process.exit(2);
}

function readOptional(file) {
  try {
    return readFileSync(file);
  } catch {
    return undefined;
  }
}

function getDaemonSet() {
  const url = new URL(`/apis/apps/v1/namespaces/${encodeURIComponent(ns)}/daemonsets/${encodeURIComponent(name)}`, base);
  const token = readOptional(`${saDir}/token`)?.toString('utf8').trim(); // re-read: tokens rotate
  const headers = { accept: 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) };
  const mod = url.protocol === 'https:' ? https : http;
  const opts = url.protocol === 'https:' ? { headers, ca: readOptional(`${saDir}/ca.crt`), timeout: 10_000 } : { headers, timeout: 10_000 };
  return new Promise((resolve, reject) => {
    const req = mod.get(url, opts, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`GET ${url.pathname}: HTTP ${res.statusCode} ${body.slice(0, 200)}`));
        else {
          try {
            resolve(JSON.parse(body));
          } catch (err) {
            reject(err);
          }
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
  });
}

const deadline = Date.now() + timeoutMs;
let last = 'no answer from the API server yet';
for (;;) {
  try {
    const ds = await getDaemonSet();
    const s = ds.status ?? {};
    const desired = s.desiredNumberScheduled ?? 0;
    const ready = s.numberReady ?? 0;
    const observed = (s.observedGeneration ?? 0) >= (ds.metadata?.generation ?? 1);
    last = `${ready} of ${desired} nodes cleaned up`;
    if (observed && ready >= desired) {
      console.log(`cleanup-wait: ${last}: done`);
      process.exit(0);
    }
  } catch (err) {
    last = `error: ${err.message}`;
  }
  if (Date.now() > deadline) {
    console.error(`cleanup-wait: gave up after ${timeoutMs / 1000}s (${last}). Nodes without a Ready ${name} pod still have peerpull's hosts.toml: run \`peerpull cleanup\` there, or fix the pod and retry.`);
    process.exit(1);
  }
  await new Promise((r) => setTimeout(r, Number(process.env.POLL_MS || '2000')));
}

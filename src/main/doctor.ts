// `peerpull doctor`: checks what a node needs for peerpull to work and says, in plain words,
// what is wrong and what to do about it. Each check is independent and bounded in time (a hung
// containerd or DNS server must not hang the doctor), and the command exits non-zero when any
// check failed.

import { DNS_MESSAGE_CAPACITY, DnsClient } from '../shared/dns.js';
import type { Config } from './config.js';
import { checkContainerdConfig } from './containerd-config.js';
import { DEFAULT_DIR, nodeEndpoint } from './hosts-config.js';
import { dnsNames, localEndpoints, probeContainerd, sameEndpoint, scanMirrorConfig, type StatusSnapshot } from './status.js';

export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip';

export interface Check {
  /** Stable id (tests, tools). */
  id: string;
  status: CheckStatus;
  /** What was found, one sentence. */
  message: string;
  /** What to do, when something is wrong. */
  fix?: string;
}

export interface DoctorOptions {
  /** Base URL of the running node's metrics port (its /status is read). */
  statusUrl: string;
  /** Per network check. */
  timeoutMs?: number;
}

export interface DoctorReport {
  ok: boolean;
  checks: Check[];
}

function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
  const code = e.cause?.code ?? e.code;
  const msg = e.cause?.message ?? e.message;
  return code && !msg.includes(code) ? `${code}: ${msg}` : msg;
}

async function fetchWithTimeout(url: string, init: RequestInit, timeoutMs: number): Promise<Response> {
  return fetch(url, { ...init, signal: AbortSignal.timeout(timeoutMs) });
}

/** The status JSON of a running node; throws with a readable message. */
export async function fetchStatus(baseUrl: string, timeoutMs = 3000): Promise<StatusSnapshot> {
  const url = new URL('/status?format=json', baseUrl).toString();
  let res: Response;
  try {
    res = await fetchWithTimeout(url, { headers: { accept: 'application/json' } }, timeoutMs);
  } catch (err) {
    throw new Error(`no answer from ${url} (${(err as Error).name === 'TimeoutError' ? `no response within ${timeoutMs} ms` : errText(err)})`);
  }
  if (!res.ok) throw new Error(`${url} answered ${res.status} ${res.statusText}`);
  try {
    return (await res.json()) as StatusSnapshot;
  } catch {
    throw new Error(`${url} did not answer with status JSON (is that a peerpull metrics port?)`);
  }
}

/** The URL of this node's metrics port: `--url`, else derived from PEERPULL_METRICS_ADDR. */
export function defaultStatusUrl(config: Config): string {
  const h = config.metricsAddr.host;
  const host = h === '' || h === '0.0.0.0' ? '127.0.0.1' : h === '::' ? '[::1]' : h.includes(':') ? `[${h}]` : h;
  return `http://${host}:${config.metricsAddr.port}`;
}

function registryUrl(config: Config): string {
  if (config.nodeIp) return nodeEndpoint(config.nodeIp, config.registryAddr.port);
  const h = config.registryAddr.host;
  const host = h === '' || h === '0.0.0.0' ? '127.0.0.1' : h === '::' ? '[::1]' : h.includes(':') ? `[${h}]` : h;
  return `http://${host}:${config.registryAddr.port}`;
}

// ---- the checks ----

async function checkContainerdSocket(config: Config, timeoutMs: number): Promise<Check[]> {
  if (config.store.kind !== 'containerd') {
    return [{ id: 'containerd-socket', status: 'skip', message: `content comes from ${config.store.kind} (PEERPULL_STORE), not containerd` }];
  }
  const p = await probeContainerd(config.containerdSock, config.containerdNamespace, timeoutMs);
  if (!p.socketExists) {
    return [
      {
        id: 'containerd-socket',
        status: 'fail',
        message: `the containerd socket ${p.socket} is missing: containerd is not running on this node, or it listens somewhere else`,
        fix: 'start containerd, or point PEERPULL_CONTAINERD_SOCK (chart value containerd.socket) at the socket it uses (k3s: /run/k3s/containerd/containerd.sock)',
      },
    ];
  }
  if (!p.connected) {
    const denied = /EACCES|permission denied/i.test(p.error ?? '');
    return [
      {
        id: 'containerd-socket',
        status: 'fail',
        message: `containerd does not answer on ${p.socket}${p.error ? ` (${p.error})` : ''}`,
        fix: denied
          ? 'peerpull needs read and write access to the socket: run it as root (the chart does)'
          : 'containerd may be stopped or hung: check it (systemctl status containerd, journalctl -u containerd) and restart it',
      },
    ];
  }
  return [{ id: 'containerd-socket', status: 'ok', message: `containerd ${p.version ?? ''} answers on ${p.socket} (namespace ${p.namespace})` }];
}

async function checkContainerdConfigFile(config: Config): Promise<Check[]> {
  const r = await checkContainerdConfig(config.containerdConfigFile, config.containerdConfigPath);
  return r.findings.map((f) => ({
    id: `containerd-config:${f.id}`,
    status: f.severity === 'info' ? 'ok' : f.severity,
    message: f.message,
    ...(f.fix ? { fix: f.fix } : {}),
  }));
}

async function checkHostsToml(config: Config): Promise<Check[]> {
  let endpoints: string[];
  try {
    endpoints = localEndpoints(config.nodeIp, config.registryAddr.port);
  } catch {
    endpoints = [];
  }
  const scan = await scanMirrorConfig(config.containerdConfigPath, config.mirroredRegistries, endpoints);
  const configureFix = 'run `peerpull configure` with PEERPULL_NODE_IP set to this node\'s IP (the chart\'s init container does it on every start)';
  if (!scan.exists) {
    return [
      {
        id: 'hosts-toml',
        status: 'fail',
        message: `no mirror config: ${scan.error}; containerd pulls every image straight from the upstream registries`,
        fix: configureFix,
      },
    ];
  }
  const out: Check[] = [];
  const here = config.nodeIp ? endpoints[0] : `this node (port ${config.registryAddr.port})`;
  for (const reg of scan.wanted) {
    const e = scan.registries.find((r) => r.registry === reg);
    const what = reg === DEFAULT_DIR ? 'all registries (_default)' : reg;
    if (!e) {
      out.push({
        id: `hosts-toml:${reg}`,
        status: 'fail',
        message: `no hosts.toml for ${what} under ${scan.configPath}: containerd pulls ${reg === DEFAULT_DIR ? 'images' : `${reg} images`} straight from upstream, never through peerpull`,
        fix: configureFix,
      });
    } else if (e.error) {
      out.push({ id: `hosts-toml:${reg}`, status: 'fail', message: `${e.file} cannot be used: ${e.error}`, fix: `fix or remove the file, then ${configureFix}` });
    } else if (!e.managed) {
      out.push({
        id: `hosts-toml:${reg}`,
        status: 'fail',
        message: `${e.file} was not written by peerpull${e.hosts.length ? ` (its hosts: ${e.hosts.join(', ')})` : ''}, so containerd does not ask peerpull for ${what}`,
        fix: `${configureFix}; it keeps the file's hosts after peerpull's and restores it on cleanup`,
      });
    } else if (!e.pointsHere) {
      out.push({
        id: `hosts-toml:${reg}`,
        status: 'fail',
        message: `${e.file} is peerpull's but points at ${e.hosts.join(', ') || 'no host'}, not at ${here}`,
        fix: `${configureFix}; check that PEERPULL_NODE_IP and PEERPULL_REGISTRY_ADDR are the same for configure and serve`,
      });
    } else {
      const at = e.hosts.findIndex((h) => sameEndpoint(h, endpoints));
      const ours = at >= 0 ? e.hosts[at]! : here;
      out.push(
        at > 0
          ? {
              id: `hosts-toml:${reg}`,
              status: 'warn',
              message: `${e.file} lists peerpull at ${ours} only after ${e.hosts.slice(0, at).join(', ')}: containerd tries ${at === 1 ? 'that host' : 'those hosts'} first`,
              fix: 'run `peerpull configure` again: it puts this node\'s endpoint first',
            }
          : { id: `hosts-toml:${reg}`, status: 'ok', message: `${e.file} sends ${what} to peerpull at ${ours} first` },
      );
    }
  }
  if (scan.wanted.includes(DEFAULT_DIR)) {
    // containerd uses a registry's own directory and never falls back to _default for it.
    const shadow = scan.registries.filter((r) => r.registry !== DEFAULT_DIR && !r.pointsHere);
    if (shadow.length) {
      out.push({
        id: 'hosts-toml:shadowed',
        status: 'warn',
        message: `${shadow.map((r) => r.registry).join(', ')} ${shadow.length === 1 ? 'has its own hosts.toml' : 'have their own hosts.toml'}, so containerd ignores _default for ${shadow.length === 1 ? 'it' : 'them'} and those pulls bypass peerpull`,
        fix: `list ${shadow.map((r) => r.registry).join(', ')} in PEERPULL_MIRRORED_REGISTRIES (with _default: leave it empty only when no registry has its own directory) and run configure again`,
      });
    }
  }
  return out;
}

async function checkRegistryPort(config: Config, timeoutMs: number): Promise<Check[]> {
  const base = registryUrl(config);
  try {
    const res = await fetchWithTimeout(`${base}/v2/`, { method: 'GET' }, timeoutMs);
    await res.body?.cancel();
    return [{ id: 'registry-port', status: 'ok', message: `the registry answers at ${base} (HTTP ${res.status})` }];
  } catch (err) {
    const timedOut = (err as Error).name === 'TimeoutError';
    return [
      {
        id: 'registry-port',
        status: 'fail',
        message: `nothing answers at ${base}, where containerd looks for peerpull (${timedOut ? `no response within ${timeoutMs} ms` : errText(err)}): every pull waits for dial_timeout and then goes upstream`,
        fix: config.nodeIp
          ? 'check that `peerpull serve` runs on this node and that its registry port is reachable on the node IP (chart: registry.hostPort; a NetworkPolicy or host firewall may block it)'
          : 'check that `peerpull serve` runs and listens on PEERPULL_REGISTRY_ADDR',
      },
    ];
  }
}

async function checkRunningNode(config: Config, statusUrl: string, timeoutMs: number): Promise<Check[]> {
  let s: StatusSnapshot;
  try {
    s = await fetchStatus(statusUrl, timeoutMs);
  } catch (err) {
    return [
      {
        id: 'node',
        status: 'fail',
        message: `cannot read the running node's status: ${(err as Error).message}`,
        fix: 'check that `peerpull serve` runs on this node; point the doctor at its metrics port with --url http://<host>:<port> (default: from PEERPULL_METRICS_ADDR)',
      },
    ];
  }
  const out: Check[] = [];
  out.push({ id: 'node', status: 'ok', message: `peerpull ${s.node.version} runs at ${statusUrl}${s.node.peerId ? ` as ${s.node.peerId}` : ''}, cluster ${s.node.cluster}` });
  out.push(
    s.content.healthy
      ? { id: 'node:content', status: 'ok', message: `its content source (${s.content.kind}) is healthy: ${s.content.digests} digests, ${s.content.tags} tags` }
      : {
          id: 'node:content',
          status: 'fail',
          message: `its content source (${s.content.kind}) is not healthy: it serves nothing from this node`,
          fix: s.content.kind === 'containerd' ? 'see the containerd checks above; peerpull reconnects by itself once containerd answers' : 'check PEERPULL_STORE',
        },
  );
  if (!s.p2p.enabled) {
    out.push({ id: 'node:peers', status: 'skip', message: 'p2p is off on the running node (PEERPULL_P2P=false): it serves only its own content' });
  } else if (!s.p2p.running) {
    out.push({ id: 'node:peers', status: 'fail', message: 'its p2p thread is not running, so it cannot find content on other nodes', fix: 'read the node\'s log for "p2p thread" errors (port taken, bad cluster key)' });
  } else if (s.p2p.peers === 0 && s.p2p.ready && s.p2p.bootstrapDns && s.p2p.dnsMembers === 1) {
    out.push({ id: 'node:peers', status: 'ok', message: `it is alone in its cluster: the bootstrap DNS ${dnsNames(s.p2p.bootstrapDns)} ${lists(s.p2p.bootstrapDns)} only one member (a one-node cluster needs no peers)` });
  } else if (s.p2p.peers === 0) {
    const why = s.p2p.bootstrapDns
      ? s.p2p.dnsMembers === 0
        ? `its bootstrap DNS ${dnsNames(s.p2p.bootstrapDns)} ${lists(s.p2p.bootstrapDns)} no members`
        : `its bootstrap DNS ${dnsNames(s.p2p.bootstrapDns)} ${lists(s.p2p.bootstrapDns)} ${s.p2p.dnsMembers} member(s), none reachable on the p2p port`
      : s.p2p.bootstrapPeers > 0
        ? 'none of its PEERPULL_BOOTSTRAP_PEERS could be reached'
        : 'neither PEERPULL_BOOTSTRAP_DNS nor PEERPULL_BOOTSTRAP_PEERS is set, so it cannot find any';
    out.push({
      id: 'node:peers',
      status: 'fail',
      message: `the running node has no peers: ${why}; it can serve only its own content`,
      fix:
        'a single-node cluster is fine as it is; otherwise check that other nodes run peerpull, that the p2p port (PEERPULL_P2P_ADDR) is open between nodes (NetworkPolicy, firewall), ' +
        'and that every node uses the same PEERPULL_CLUSTER and cluster key',
    });
  } else {
    out.push({ id: 'node:peers', status: 'ok', message: `it has ${s.p2p.peers} peer(s) and advertises ${s.p2p.advertisedKeys} keys` });
  }
  return out;
}

/** The verb after dnsNames(). */
function lists(joined: string): string {
  return joined.includes(',') ? 'list' : 'lists';
}

/** Share of a DNS message's capacity at which the doctor warns that the answer is nearly full. */
const DNS_ANSWER_WARN_SHARE = 0.9;

async function checkBootstrapDns(config: Config, timeoutMs: number): Promise<Check[]> {
  if (!config.p2p) return [{ id: 'bootstrap-dns', status: 'skip', message: 'p2p is off (PEERPULL_P2P=false)' }];
  if (config.bootstrapDns.length === 0) {
    return config.bootstrapPeers.length > 0
      ? [{ id: 'bootstrap-dns', status: 'skip', message: `no bootstrap DNS name; joining through ${config.bootstrapPeers.length} static peer(s)` }]
      : [
          {
            id: 'bootstrap-dns',
            status: 'warn',
            message: 'neither PEERPULL_BOOTSTRAP_DNS nor PEERPULL_BOOTSTRAP_PEERS is set: this node can never find other nodes',
            fix: 'set PEERPULL_BOOTSTRAP_DNS to the headless Service name (the chart does), e.g. peerpull-p2p.kube-system.svc.cluster.local',
          },
        ];
  }
  // The resolver the p2p thread bootstraps with: the same servers, the same question, the same
  // switch to TCP for a large answer.
  const resolver = new DnsClient(config.dnsServers, Math.max(100, Math.floor(timeoutMs / 2)), 1);
  const via = config.dnsServers.length ? `DNS servers ${config.dnsServers.join(', ')}` : `the nameservers in /etc/resolv.conf (${(await resolver.servers()).join(', ') || 'none listed'})`;
  const checks = await Promise.all(config.bootstrapDns.map((name) => checkBootstrapName(name, resolver, via, config.dnsServers.length > 0, config.bootstrapDns.length)));
  return checks.flat();
}

/** One bootstrap name: resolves, and its answer is not near what one DNS message holds. */
async function checkBootstrapName(name: string, resolver: DnsClient, via: string, ownServers: boolean, names: number): Promise<Check[]> {
  const { v4, v6, errors } = await resolver.resolveBoth(name);
  const addrs = [...v4, ...v6];
  if (addrs.length > 0) {
    const out: Check[] = [{ id: 'bootstrap-dns', status: 'ok', message: `${name} resolves to ${addrs.length} address(es) through ${via}: ${addrs.slice(0, 5).join(', ')}${addrs.length > 5 ? ', ...' : ''}` }];
    // Near the most records one DNS message holds, the next nodes added make the answer cut
    // (each node then sees a different subset) or unreadable.
    const full = [
      { family: 'IPv4', count: v4.length, max: DNS_MESSAGE_CAPACITY.a },
      { family: 'IPv6', count: v6.length, max: DNS_MESSAGE_CAPACITY.aaaa },
    ].find((f) => f.count >= Math.floor(f.max * DNS_ANSWER_WARN_SHARE));
    if (full) {
      out.push({
        id: 'bootstrap-dns-size',
        status: 'warn',
        message: `${name} lists ${full.count} ${full.family} addresses, and one DNS message holds about ${full.max}: past that the answer is cut and nodes see different members`,
        fix: `list the nodes under several headless names (per zone or node pool) in PEERPULL_BOOTSTRAP_DNS, comma-separated, each well under ${full.max} addresses`,
      });
    }
    return out;
  }
  const codes = [...new Set(errors.map((e) => (e ? ((e as NodeJS.ErrnoException).code ?? 'error') : 'no records')))];
  const timedOut = codes.includes('ETIMEOUT') || codes.includes('ECONNREFUSED');
  // One of several names listing nobody (a node pool scaled to zero) is not this node's problem.
  if (names > 1 && codes.every((c) => c === 'ENODATA')) {
    return [{ id: 'bootstrap-dns', status: 'warn', message: `the bootstrap DNS name ${name} exists but lists no addresses through ${via}; the other names still list members`, fix: 'expected while its node pool has no peerpull pods; otherwise check the headless Service selects them' }];
  }
  return [
    {
      id: 'bootstrap-dns',
      status: 'fail',
      message: `the bootstrap DNS name ${name} (PEERPULL_BOOTSTRAP_DNS) does not resolve through ${via} (${codes.join(', ')}): ${names > 1 ? 'the nodes listed under it cannot be found' : 'this node cannot find its peers'}`,
      fix: timedOut
        ? `the DNS server did not answer: check ${ownServers ? 'PEERPULL_DNS_SERVERS' : '/etc/resolv.conf'}`
        : 'check that the headless Service exists and that the name is complete (<service>.<namespace>.svc.<cluster domain>); the chart sets it from the release',
    },
  ];
}

/** Runs every check; none throws (a failing check is a result). */
export async function runDoctor(config: Config, opts: DoctorOptions): Promise<DoctorReport> {
  const t = opts.timeoutMs ?? 3000;
  const guard = (id: string, p: Promise<Check[]>): Promise<Check[]> =>
    p.catch((err: unknown) => [{ id, status: 'fail' as const, message: `the ${id} check itself failed: ${(err as Error).message}` }]);
  const groups = await Promise.all([
    guard('containerd-socket', checkContainerdSocket(config, t)),
    guard('containerd-config', checkContainerdConfigFile(config)),
    guard('hosts-toml', checkHostsToml(config)),
    guard('registry-port', checkRegistryPort(config, t)),
    guard('node', checkRunningNode(config, opts.statusUrl, t)),
    guard('bootstrap-dns', checkBootstrapDns(config, t)),
  ]);
  const checks = groups.flat();
  return { ok: !checks.some((c) => c.status === 'fail'), checks };
}

const LABEL: Record<CheckStatus, string> = { ok: 'ok  ', warn: 'WARN', fail: 'FAIL', skip: 'skip' };

/** Plain text: one line per check, the fix indented below what is wrong, a verdict at the end. */
export function formatDoctor(r: DoctorReport): string {
  const lines: string[] = ['peerpull doctor'];
  for (const c of r.checks) {
    lines.push(`  ${LABEL[c.status]}  ${c.message}`);
    if (c.fix && (c.status === 'fail' || c.status === 'warn')) {
      const [first, ...rest] = c.fix.split('\n');
      lines.push(`        fix: ${first}`);
      for (const l of rest) lines.push(`             ${l}`);
    }
  }
  const fails = r.checks.filter((c) => c.status === 'fail').length;
  const warns = r.checks.filter((c) => c.status === 'warn').length;
  lines.push('');
  lines.push(fails === 0 ? `All checks passed${warns ? ` (${warns} warning${warns === 1 ? '' : 's'})` : ''}.` : `${fails} problem${fails === 1 ? '' : 's'} found${warns ? `, ${warns} warning${warns === 1 ? '' : 's'}` : ''}.`);
  return lines.join('\n') + '\n';
}

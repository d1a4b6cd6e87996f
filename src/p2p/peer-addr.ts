// How a peer's registry endpoint travels through the DHT.
//
// Convention: beside each of its libp2p TCP addresses `/ip4/<ip>/tcp/<p2p port>/p2p/<id>` a node
// announces `/ip4/<ip>/tcp/<registry port>/http/p2p/<id>`. The extra address rides everywhere a
// libp2p address goes (identify, ADD_PROVIDER, GET_PROVIDERS answers), so a provider found
// through any record holder comes with its registry port, even when this node never talked
// to it. libp2p never dials it: the TCP transport only dials exact ip/tcp(/p2p) addresses.

import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';

interface TcpAddr {
  family: 4 | 6;
  ip: string;
  port: number;
  http: boolean;
  peerId?: string;
}

/** Parses `/ip4|ip6/<ip>/tcp/<port>[/http][/p2p/<id>]`; anything else is undefined. */
export function parseTcpAddr(ma: Multiaddr): TcpAddr | undefined {
  const c = ma.getComponents();
  if (c.length < 2 || (c[0].name !== 'ip4' && c[0].name !== 'ip6') || c[1].name !== 'tcp') return undefined;
  let i = 2;
  let http = false;
  if (c[i]?.name === 'http') {
    http = true;
    i++;
  }
  let peerId: string | undefined;
  if (c[i]?.name === 'p2p') {
    peerId = c[i].value;
    i++;
  }
  if (i !== c.length || c[0].value === undefined || c[1].value === undefined) return undefined;
  return { family: c[0].name === 'ip4' ? 4 : 6, ip: c[0].value, port: Number(c[1].value), http, peerId };
}

export function isLoopback(ip: string): boolean {
  return ip.startsWith('127.') || ip === '::1';
}

/**
 * The libp2p announce filter: adds the registry sibling of every TCP address. When the node
 * listens on all interfaces, loopback addresses are dropped (a peer dialling 127.0.0.1 would
 * reach itself); a node that listens on loopback on purpose (tests, one-host clusters) keeps them.
 */
export function registryAnnounceFilter(registryPort: number, keepLoopback: boolean) {
  return (addrs: Multiaddr[]): Multiaddr[] => {
    const out: Multiaddr[] = [];
    const seen = new Set<string>();
    const push = (ma: Multiaddr) => {
      const s = ma.toString();
      if (!seen.has(s)) {
        seen.add(s);
        out.push(ma);
      }
    };
    for (const ma of addrs) {
      const t = parseTcpAddr(ma);
      if (t && !keepLoopback && isLoopback(t.ip)) continue;
      push(ma);
      if (t && !t.http) {
        const suffix = t.peerId ? `/p2p/${t.peerId}` : '';
        push(multiaddr(`/ip${t.family}/${t.ip}/tcp/${registryPort}/http${suffix}`));
      }
    }
    return out;
  };
}

/** IPs a peer's addresses point at (for DNS-membership liveness). */
export function hostsOf(addrs: Multiaddr[]): string[] {
  const hosts = new Set<string>();
  for (const ma of addrs) {
    const t = parseTcpAddr(ma);
    if (t) hosts.add(t.ip);
  }
  return [...hosts];
}

/**
 * The registry endpoint of a peer: its announced `/http` address; failing that (a peer that
 * predates the convention) the IP of its p2p address with `fallbackPort` (a DaemonSet uses one
 * registry port on every node).
 */
export function registryEndpoint(addrs: Multiaddr[], fallbackPort: number): { host: string; port: number } | undefined {
  let fallback: { host: string; port: number } | undefined;
  for (const ma of addrs) {
    const t = parseTcpAddr(ma);
    if (!t) continue;
    if (t.http) return { host: t.ip, port: t.port };
    fallback ??= { host: t.ip, port: fallbackPort };
  }
  return fallback;
}

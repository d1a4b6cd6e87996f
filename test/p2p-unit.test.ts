// p2p pieces that need no peers: bootstrap selection, key mapping, the registry-port address
// convention, message validation, the persistent identity, the indexed datastore, main's copy of
// the record store, and the timers of a lone node's DHT (one node listening on loopback).

import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, writeFile, chmod } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { multiaddr } from '@multiformats/multiaddr';
import { Key } from 'interface-datastore';
import { base32 } from 'multiformats/bases/base32';
import { StoreCopy } from '../src/main/store-copy.js';
import { IndexedMemoryDatastore } from '../src/p2p/datastore.js';
import { StoreFeed } from '../src/p2p/store-feed.js';
import type { FeedPeer } from '../src/shared/messages.js';
import { bootstrapCount, nextRoundDelay, sortAddresses } from '../src/p2p/bootstrap.js';
import { KEY_FILE, loadOrCreateIdentity } from '../src/p2p/identity.js';
import { keyToCid } from '../src/shared/keys.js';
import { registryAnnounceFilter, registryEndpoint } from '../src/p2p/peer-addr.js';
import { BadMessageError, parseRequest } from '../src/p2p/protocol.js';
import { loadConfig, ConfigError } from '../src/main/config.js';
import { p2pWorkerConfig } from '../src/main/p2p.js';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { tcp } from '@libp2p/tcp';
import { createLibp2p } from 'libp2p';
import { P2PNode, publishRetryDelay, republishFresh, republishNeedsQuery } from '../src/p2p/node.js';
import { Lookups } from '../src/p2p/lookup.js';
import type { ProviderPeer } from '../src/shared/messages.js';

test('addresses sort numerically, IPv4 first, the same on every node', () => {
  const ips = ['10.0.0.10', '10.0.0.9', 'fd00::2', '10.0.0.100', 'fd00::10', '9.255.0.1', '10.0.0.9'];
  assert.deepEqual(sortAddresses(ips), ['9.255.0.1', '10.0.0.9', '10.0.0.10', '10.0.0.100', 'fd00::2', 'fd00::10']);
  assert.deepEqual(sortAddresses([...ips].reverse()), sortAddresses(ips));
});

test('bootstrap count grows slowly with the cluster and stays within the connection budget', () => {
  assert.equal(bootstrapCount(0, 64), 0);
  assert.equal(bootstrapCount(1, 64), 1);
  const counts = [2, 10, 30, 100, 1000, 5000].map((n) => bootstrapCount(n, 64));
  for (let i = 1; i < counts.length; i++) assert.ok(counts[i] >= counts[i - 1], `non-decreasing: ${counts}`);
  assert.ok(bootstrapCount(1000, 64) <= 16 && bootstrapCount(1000, 64) >= 8, `${bootstrapCount(1000, 64)}`);
  assert.ok(bootstrapCount(1000, 8) <= 2, 'a quarter of the connection bound at most');
});

test('keys map to CIDv1 raw sha2-256 of the key string', () => {
  const a = keyToCid('sha256:' + 'a'.repeat(64));
  assert.equal(a.version, 1);
  assert.equal(a.code, 0x55);
  assert.equal(a.multihash.code, 0x12);
  assert.equal(a.toString(), keyToCid('sha256:' + 'a'.repeat(64)).toString());
  assert.notEqual(keyToCid('docker.io/library/nginx:1').toString(), keyToCid('docker.io/library/nginx:2').toString());
});

test('the registry port rides beside the p2p address and is read back', () => {
  const id = '12D3KooWEFmbfXXbHfwoEjFmcChZEqU9zD1qtzG6ynWt1bjSWYX5';
  const out = registryAnnounceFilter(5000, false)([multiaddr(`/ip4/10.0.0.5/tcp/5001/p2p/${id}`), multiaddr(`/ip4/127.0.0.1/tcp/5001/p2p/${id}`)]);
  assert.deepEqual(out.map(String), [`/ip4/10.0.0.5/tcp/5001/p2p/${id}`, `/ip4/10.0.0.5/tcp/5000/http/p2p/${id}`]);
  assert.deepEqual(registryEndpoint(out, 1234), { host: '10.0.0.5', port: 5000 });
  // Loopback kept when the node listens on loopback on purpose.
  assert.equal(registryAnnounceFilter(5000, true)([multiaddr(`/ip4/127.0.0.3/tcp/5001/p2p/${id}`)]).length, 2);
  // A peer without the convention: its p2p IP with the fallback port.
  assert.deepEqual(registryEndpoint([multiaddr('/ip6/fd00::1/tcp/5001')], 5000), { host: 'fd00::1', port: 5000 });
  assert.equal(registryEndpoint([multiaddr('/dns4/x.example/tcp/5001')], 5000), undefined);
});

test('malformed or truncated messages to the p2p thread are rejected with a reason', () => {
  const bad: unknown[] = [
    null,
    42,
    'advertise',
    {},
    { id: 'x', type: 'status' },
    { id: 1, type: 'nope' },
    { id: 2, type: 'advertise' },
    { id: 3, type: 'advertise', keys: [1] },
    { id: 4, type: 'advertise', keys: ['x'.repeat(2000)] },
    { id: 5, type: 'findProviders', key: 'k' },
    { id: 6, type: 'findProviders', key: 'k', count: 0, deadlineMs: 10 },
    { id: 7, type: 'findProviders', key: 'k', count: 1, deadlineMs: -1 },
    { id: 8, type: 'reportFailure' },
    { id: 10, type: 'findProviders', key: 'k', count: 1, deadlineMs: 10, exclude: 'A' },
    { id: 11, type: 'findProviders', key: 'k', count: 1, deadlineMs: 10, exclude: [''] },
    { id: 12, type: 'findProviders', key: 'k', count: 1, deadlineMs: 10, exclude: Array(65).fill('A') },
  ];
  for (const m of bad) assert.throws(() => parseRequest(m), BadMessageError, JSON.stringify(m));
  assert.deepEqual(parseRequest({ id: 9, type: 'findProviders', key: 'k', count: 2, deadlineMs: 50 }), { id: 9, type: 'findProviders', key: 'k', count: 2, deadlineMs: 50 });
  assert.deepEqual((parseRequest({ id: 9, type: 'findProviders', key: 'k', count: 2, deadlineMs: 50, exclude: ['A'] }) as { exclude?: string[] }).exclude, ['A']);
});

test('the peer identity is created 0600 and reused across restarts', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'peerpull-id-'));
  try {
    const a = await loadOrCreateIdentity(path.join(dir, 'data'));
    assert.equal(a.created, true);
    const st = await stat(path.join(dir, 'data', KEY_FILE));
    assert.equal(st.mode & 0o777, 0o600);
    const b = await loadOrCreateIdentity(path.join(dir, 'data'));
    assert.equal(b.created, false);
    assert.ok(a.key.equals(b.key));
    await chmod(path.join(dir, 'data', KEY_FILE), 0o644);
    await assert.rejects(loadOrCreateIdentity(path.join(dir, 'data')), /readable by others/);
    await writeFile(path.join(dir, 'data', KEY_FILE), 'garbage', { mode: 0o600 });
    await chmod(path.join(dir, 'data', KEY_FILE), 0o600);
    await assert.rejects(loadOrCreateIdentity(path.join(dir, 'data')), /not a libp2p private key/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('p2p settings are validated with the variable named', async () => {
  const bad: Record<string, string> = {
    PEERPULL_P2P_ADDR: 'nope',
    PEERPULL_BOOTSTRAP_DNS: 'bad_name!',
    PEERPULL_DNS_SERVERS: 'x.y',
    PEERPULL_BOOTSTRAP_PEERS: '/ip4/1.2.3.4/udp/1',
    PEERPULL_MAX_CONNECTIONS: '1',
    PEERPULL_CLUSTER: 'Has Space',
    PEERPULL_CLUSTER_KEY: 'short',
    PEERPULL_DATA_DIR: 'relative',
    PEERPULL_DEAD_PEER_TIMEOUT: '1h',
  };
  for (const [k, v] of Object.entries(bad)) {
    assert.throws(() => loadConfig({ [k]: v }), (e: unknown) => e instanceof ConfigError && e.variable === k, k);
  }
  await assert.rejects(p2pWorkerConfig(loadConfig({ PEERPULL_PROVIDER_TTL: '1m', PEERPULL_REPROVIDE_INTERVAL: '5m' })), /PEERPULL_PROVIDER_TTL/);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'peerpull-key-'));
  try {
    const hex = 'ab'.repeat(32);
    await writeFile(path.join(dir, 'swarm.key'), `/key/swarm/psk/1.0.0/\n/base16/\n${hex}\n`);
    const cfg = await p2pWorkerConfig(loadConfig({ PEERPULL_CLUSTER_KEY_FILE: path.join(dir, 'swarm.key') }));
    assert.equal(cfg.clusterKey, hex);
    await writeFile(path.join(dir, 'bad.key'), 'nothex');
    await assert.rejects(p2pWorkerConfig(loadConfig({ PEERPULL_CLUSTER_KEY_FILE: path.join(dir, 'bad.key') })), /PEERPULL_CLUSTER_KEY_FILE/);
    const ok = loadConfig({ PEERPULL_DNS_SERVERS: '127.0.0.1:5353, [::1]:53,10.0.0.1', PEERPULL_BOOTSTRAP_PEERS: '/ip4/10.0.0.5/tcp/5001,/dns4/a.b/tcp/5001' });
    assert.deepEqual(ok.dnsServers, ['127.0.0.1:5353', '[::1]:53', '10.0.0.1']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('the indexed datastore answers path-prefix queries exactly like a full walk', async () => {
  const { MemoryDatastore } = await import('datastore-core');
  const indexed = new IndexedMemoryDatastore();
  const plain = new MemoryDatastore();
  const keys: string[] = [];
  // Provider records (two levels below /dht/provider; CIDs of one width, as kad-dht's are),
  // peers, and a few odd shapes.
  const cid = (c: number) => `cid${String(c).padStart(2, '0')}`;
  for (let c = 0; c < 40; c++) for (let p = 0; p < 5; p++) keys.push(`/dht/provider/${cid(c)}/peer${p}`);
  for (let p = 0; p < 10; p++) keys.push(`/peers/peer${p}`);
  keys.push('/dht/record/x', '/top', '/dht/provider/cid03');
  for (const k of keys) {
    await indexed.put(new Key(k), new Uint8Array([k.length]));
    await plain.put(new Key(k), new Uint8Array([k.length]));
  }
  // Deletes keep the index right, including removing a parent's last child.
  for (const k of ['/dht/provider/cid07/peer0', '/dht/provider/cid09/peer1', ...Array.from({ length: 5 }, (_, p) => `/dht/provider/cid08/peer${p}`)]) {
    await indexed.delete(new Key(k));
    await plain.delete(new Key(k));
  }
  const list = async (s: InstanceType<typeof IndexedMemoryDatastore> | InstanceType<typeof MemoryDatastore>, prefix?: string) => {
    const out: string[] = [];
    for await (const e of s.query(prefix === undefined ? {} : { prefix })) out.push(`${e.key.toString()}=${e.value[0]}`);
    return out.sort();
  };
  const prefixes = [undefined, '/', '/dht', '/dht/provider', '/dht/provider/', '/dht/provider/cid03', '/dht/provider/cid07', '/dht/provider/cid08', '/dht/provider/cid99', '/peers/', '/peers', '/top', '/dht/record'];
  for (const prefix of prefixes) {
    assert.deepEqual(await list(indexed, prefix), await list(plain, prefix), `prefix ${prefix}`);
  }
  assert.equal((await list(indexed, '/dht/provider/cid03')).length, 6, 'five records below plus the key itself');
  assert.equal((await list(indexed, '/dht/provider/cid08')).length, 0, 'every record deleted');
  assert.equal(indexed.size, keys.length - 7);
  await assert.rejects(async () => indexed.get(new Key('/nope')), /no value for \/nope/);
});

test("main's copy of the record store follows the p2p thread's datastore and answers only what it may", async () => {
  // The chain node.ts wires: kad-dht's provider keys in the datastore -> the feed -> main's copy.
  const ds = new IndexedMemoryDatastore();
  const copy = new StoreCopy();
  const state = new Map<string, FeedPeer>();
  let final = false;
  let posted = 0;
  const feed = new StoreFeed({
    self: 'SELF',
    post: (m) => {
      posted++;
      copy.apply(m);
    },
    peer: async (id) => state.get(id) ?? { peerId: id, addrs: [], connected: false },
    finalMisses: () => final,
  });
  ds.watch('/dht/provider', (k, present) => feed.record(k, present));
  const settle = () => new Promise((r) => setImmediate(() => setImmediate(r)));
  const sizeOf = (c: StoreCopy) => ({ keys: c.stats().keys, peers: c.stats().providers });
  const mh = (key: string) => base32.baseEncode(keyToCid(key).multihash.bytes);
  const put = (key: string, peer: string) => ds.put(new Key(`/dht/provider/${mh(key)}/${peer}`), new Uint8Array([1]));
  const del = (key: string, peer: string) => ds.delete(new Key(`/dht/provider/${mh(key)}/${peer}`));
  state.set('A', { peerId: 'A', host: '10.0.0.1', registryPort: 5000, addrs: ['/ip4/10.0.0.1/tcp/5001'], connected: true });
  state.set('B', { peerId: 'B', host: '10.0.0.2', registryPort: 5000, addrs: ['/ip4/10.0.0.2/tcp/5001'], connected: false });

  const cases: Array<{ name: string; act: () => void; key: string; count?: number; exclude?: string[]; want: string | undefined; providers?: string[] }> = [
    { name: 'nothing fed, view not final: the thread must answer', act: () => {}, key: 'k1', want: undefined },
    { name: 'a connected provider is answered in main', act: () => put('k1', 'A'), key: 'k1', want: 'found', providers: ['A'] },
    { name: 'an unconnected one is left to the thread (it knocks first)', act: () => put('k2', 'B'), key: 'k2', want: undefined },
    { name: 'our own record is never fed', act: () => put('k3', 'SELF'), key: 'k3', want: undefined },
    { name: 'other records in the datastore are not provider records', act: () => ds.put(new Key(`/peers/${mh('k4')}/A`), new Uint8Array()), key: 'k4', want: undefined },
    {
      name: 'a provider that disconnects is left to the thread',
      act: () => {
        state.set('A', { ...state.get('A')!, connected: false });
        feed.peerChanged('A');
      },
      key: 'k1',
      want: undefined,
    },
    {
      name: 'reconnected, it is answered again',
      act: () => {
        state.set('A', { ...state.get('A')!, connected: true });
        feed.peerChanged('A');
      },
      key: 'k1',
      want: 'found',
      providers: ['A'],
    },
    { name: 'one connected provider of two is too few when two are asked for', act: () => put('k1', 'B'), key: 'k1', want: undefined },
    { name: 'and enough when one is', act: () => {}, key: 'k1', count: 1, want: 'found', providers: ['A'] },
    { name: 'a withdrawn record goes', act: () => del('k1', 'B'), key: 'k1', want: 'found', providers: ['A'] },
    { name: 'and with the last one the miss is not final yet', act: () => del('k1', 'A'), key: 'k1', want: undefined },
    {
      name: 'a final view answers misses in main',
      act: () => {
        final = true;
        feed.tick();
      },
      key: 'k1',
      want: 'notfound',
    },
    { name: 'but never a key whose providers only the thread may screen', act: () => {}, key: 'k2', want: undefined },
    {
      name: 'unless the thread found them all dead',
      act: () => {
        state.set('B', { ...state.get('B')!, dead: true });
        feed.peerChanged('B');
      },
      key: 'k2',
      want: 'notfound',
    },
    {
      name: 'and a dead provider that reconnects is answered again',
      act: () => {
        state.set('B', { ...state.get('B')!, dead: false, connected: true });
        feed.peerChanged('B');
      },
      key: 'k2',
      want: 'found',
      providers: ['B'],
    },
    { name: 'a provider the caller saw fail is no answer: the thread looks afresh', act: () => {}, key: 'k2', exclude: ['B'], want: undefined },
    {
      name: 'the others are, and are enough when they are all there is besides it',
      act: () => {
        put('k5', 'A');
        put('k5', 'B');
      },
      key: 'k5',
      exclude: ['B'],
      want: 'found',
      providers: ['A'],
    },
  ];
  for (const c of cases) {
    c.act();
    await settle();
    const r = copy.answer(c.key, c.count ?? 2, c.exclude);
    assert.equal(r?.outcome, c.want, c.name);
    if (c.providers) assert.deepEqual(r!.providers.map((p) => p.peerId), c.providers, c.name);
    if (r) assert.equal(r.source, 'store-copy', c.name);
  }
  // Peers no record names are forgotten; changes are batched, not one message each.
  state.set('B', { ...state.get('B')!, connected: false });
  del('k5', 'A');
  del('k5', 'B');
  await settle();
  assert.deepEqual(sizeOf(copy), { keys: 1, peers: 1 });
  const before = posted;
  for (let i = 0; i < 100; i++) put(`bulk${i}`, 'A');
  await settle();
  assert.equal(posted - before, 1, 'a burst of records is one message');
  assert.equal(copy.answer('bulk99', 2)?.outcome, 'found');
  // A new thread incarnation starts a new copy.
  const next = new StoreFeed({ self: 'SELF', post: (m) => copy.apply(m), peer: async (id) => state.get(id)!, finalMisses: () => false });
  next.record(`/dht/provider/${mh('fresh')}/B`, true);
  await settle();
  assert.equal(copy.answer('bulk99', 2), undefined, 'the old records went with the old thread');
  assert.deepEqual(sizeOf(copy), { keys: 1, peers: 1 });
});

test('bootstrap rounds are spread around the interval, so nodes started together drift apart', () => {
  for (const [random, want] of [
    [0, 12_000],
    [0.5, 15_000],
    [1, 18_000],
    [-1, 12_000],
    [2, 18_000],
  ] as const) {
    assert.equal(nextRoundDelay(15_000, random), want, `random ${random}`);
  }
  // 1,000 nodes that resolved in the same second: their next rounds fall over a 6 s window,
  // at most a few per 100 ms bucket, not all in one.
  const buckets = new Map<number, number>();
  for (let i = 0; i < 1000; i++) {
    const d = nextRoundDelay(15_000);
    assert.ok(d >= 12_000 && d <= 18_000, `delay ${d}`);
    const b = Math.floor(d / 100);
    buckets.set(b, (buckets.get(b) ?? 0) + 1);
  }
  assert.ok(buckets.size > 40, `only ${buckets.size} distinct 100 ms buckets`);
  assert.ok(Math.max(...buckets.values()) < 60, `a bucket of ${Math.max(...buckets.values())}`);
});

test("kad-dht's table refresh and self query run at per-node spread intervals of PEERPULL_DHT_REFRESH_INTERVAL", async () => {
  // Read from the running kad-dht objects: the test fails if the setting stops reaching them
  // (or a kad-dht update renames them) and nodes go back to refreshing every 5 min in step.
  const cfg = await p2pWorkerConfig(loadConfig({ PEERPULL_P2P_ADDR: '127.0.0.1:0', PEERPULL_DHT_REFRESH_INTERVAL: '10m' }));
  const seen: Array<{ refresh: number; self: number }> = [];
  for (let i = 0; i < 4; i++) {
    const node = await P2PNode.create(cfg, await generateKeyPair('Ed25519'), () => {}, () => {});
    try {
      const dht = (node as unknown as { node: { services: { dht: { routingTableRefresh: { refreshInterval: number }; querySelf: { interval: number } } } } }).node.services.dht;
      seen.push({ refresh: dht.routingTableRefresh.refreshInterval, self: dht.querySelf.interval });
    } finally {
      await node.stop();
    }
  }
  for (const s of seen) {
    assert.ok(s.refresh >= 480_000 && s.refresh <= 720_000, `table refresh ${s.refresh} ms, want 10 min +-20%`);
    assert.ok(s.self >= 480_000 && s.self <= 720_000, `self query ${s.self} ms, want 10 min +-20%`);
  }
  assert.ok(new Set(seen.map((s) => s.refresh)).size > 1, `four nodes, one refresh interval: ${seen.map((s) => s.refresh)}`);
  assert.ok(new Set(seen.map((s) => s.self)).size > 1, `four nodes, one self-query interval: ${seen.map((s) => s.self)}`);
});

test('a republish skips its provide query while the last one\'s records outlive the next round', () => {
  const min = 60_000;
  const now = 100 * min;
  const cases: Array<{ name: string; queriedAt: number | undefined; ttl: number; interval: number; want: boolean }> = [
    { name: 'never queried', queriedAt: undefined, ttl: 15 * min, interval: 5 * min, want: true },
    { name: 'defaults, queried one round ago', queriedAt: now - 5 * min, ttl: 15 * min, interval: 5 * min, want: false },
    { name: 'defaults, queried two rounds ago', queriedAt: now - 10 * min, ttl: 15 * min, interval: 5 * min, want: true },
    { name: 'defaults, a late round (+20%) after a query', queriedAt: now - 6 * min, ttl: 15 * min, interval: 5 * min, want: false },
    { name: 'TTL barely above the interval: every round', queriedAt: now - 1 * min, ttl: 6 * min, interval: 5 * min, want: true },
    { name: 'long TTL, short rounds: skipped for many', queriedAt: now - 10 * min, ttl: 60 * min, interval: 1 * min, want: false },
    { name: 'long TTL, short rounds: due near the end', queriedAt: now - 59 * min, ttl: 60 * min, interval: 1 * min, want: true },
  ];
  for (const c of cases) assert.equal(republishNeedsQuery(c.queriedAt, now, c.ttl, c.interval), c.want, c.name);
});

test('a lookup that excludes providers the caller saw fail skips answers naming only them, and is not cached', async () => {
  // The DHT's answer here is a list the test changes: C's record "arrives" after the first lookup.
  const peer = (id: string): ProviderPeer => ({ peerId: id, host: '10.0.0.1', registryPort: 5000, addrs: [], connected: true });
  let network: ProviderPeer[] = [peer('A')];
  let queries = 0;
  const lookups = new Lookups({
    local: async () => [],
    async *network() {
      queries++;
      yield network;
    },
    authoritative: () => false,
    isLive: () => true,
    routingTableSize: () => 5,
    cacheTtlMs: 60_000,
    negativeTtlMs: 60_000,
    settleMs: 0,
  });
  const ids = (r: { providers: ProviderPeer[] }) => r.providers.map((p) => p.peerId);
  const steps: Array<{ name: string; act?: () => void; exclude?: string[]; want: string[]; source: string; queries: number }> = [
    { name: 'first lookup: from the network, cached', want: ['A'], source: 'network', queries: 1 },
    { name: 'C now holds it too, but the cached answer stands', act: () => (network = [peer('A'), peer('C')]), want: ['A'], source: 'cache', queries: 1 },
    { name: 'A failed: the cache names only A, so the network is asked again', exclude: ['A'], want: ['C'], source: 'network', queries: 2 },
    { name: "that answer was not cached: A is still in everyone else's", want: ['A'], source: 'cache', queries: 2 },
    { name: 'nobody else: an empty answer', act: () => (network = [peer('A')]), exclude: ['A'], want: [], source: 'none', queries: 3 },
    { name: 'and that miss is not cached either', want: ['A'], source: 'cache', queries: 3 },
  ];
  for (const s of steps) {
    s.act?.();
    const r = await lookups.find('k', 3, 1000, s.exclude ? new Set(s.exclude) : undefined);
    assert.deepEqual(ids(r), s.want, s.name);
    assert.equal(r.source, s.source, s.name);
    assert.equal(r.outcome, s.want.length > 0 ? 'found' : 'notfound', s.name);
    assert.equal(queries, s.queries, s.name);
  }
});

test('a key no holder took is retried after a doubling backoff, capped at a minute, spread +-20%', () => {
  const cases: Array<{ failures: number; random: number; ms: number }> = [
    { failures: 1, random: 0.5, ms: 2000 },
    { failures: 2, random: 0.5, ms: 4000 },
    { failures: 5, random: 0.5, ms: 32_000 },
    { failures: 6, random: 0.5, ms: 60_000 },
    { failures: 1000, random: 0.5, ms: 60_000 },
    { failures: 1, random: 0, ms: 1600 },
    { failures: 1, random: 1, ms: 2400 },
    { failures: 6, random: 1, ms: 72_000 },
  ];
  for (const c of cases) assert.equal(publishRetryDelay(c.failures, c.random), c.ms, JSON.stringify(c));
});

test('a republish round passes over a key published less than half a round ago, if its records outlive the next round', () => {
  const min = 60_000;
  const now = 100 * min;
  const cases: Array<{ name: string; publishedAgo: number | undefined; ttl: number; interval: number; fresh: boolean }> = [
    { name: 'never published: sent', publishedAgo: undefined, ttl: 15 * min, interval: 5 * min, fresh: false },
    { name: 'a minute ago (advertised just before the first round): passed over', publishedAgo: 1 * min, ttl: 15 * min, interval: 5 * min, fresh: true },
    { name: 'just under half a round ago: passed over', publishedAgo: 2.4 * min, ttl: 15 * min, interval: 5 * min, fresh: true },
    { name: 'half a round ago: sent', publishedAgo: 2.5 * min, ttl: 15 * min, interval: 5 * min, fresh: false },
    { name: 'a round ago: sent', publishedAgo: 5 * min, ttl: 15 * min, interval: 5 * min, fresh: false },
    { name: 'records that would expire before the next round: sent however fresh', publishedAgo: 1 * min, ttl: 7 * min, interval: 5 * min, fresh: false },
  ];
  for (const c of cases) {
    assert.equal(republishFresh(c.publishedAgo === undefined ? undefined : now - c.publishedAgo, now, c.ttl, c.interval), c.fresh, c.name);
  }
});

test('a node connected with an empty routing table puts its connected member in the table itself', { timeout: 60_000 }, async () => {
  // Two real nodes, connected. Then b's table loses a while the connection stands: the state
  // N = 1,000 cold starts left nodes in (kad-dht adds a peer when libp2p's topology reports it
  // once per connected spell, and that report did not add it). Without a repair b stays unready.
  type Inner = { node: { peerId: { toString(): string }; getMultiaddrs(): unknown[]; dial(a: unknown): Promise<unknown>; services: { dht: { routingTable: { size: number; remove(p: unknown): Promise<void> } } } } };
  const start = async (ip: string) => {
    const cfg = await p2pWorkerConfig(loadConfig({ PEERPULL_P2P_ADDR: `${ip}:17421`, PEERPULL_REGISTRY_ADDR: `${ip}:17422`, PEERPULL_ADVERTISE_IP: ip, PEERPULL_BOOTSTRAP_DNS: '', PEERPULL_BOOTSTRAP_PEERS: '' }));
    return P2PNode.create(cfg, await generateKeyPair('Ed25519'), () => {}, () => {});
  };
  const a = await start('127.0.0.211');
  const b = await start('127.0.0.212');
  try {
    const inner = (n: P2PNode) => (n as unknown as Inner).node;
    await inner(b).dial(inner(a).getMultiaddrs()[0]);
    const until = async (what: string, ok: () => boolean) => {
      const end = Date.now() + 20_000;
      while (!ok()) {
        if (Date.now() > end) assert.fail(`timed out waiting: ${what}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    await until('b ready', () => b.status().ready);
    assert.equal(b.metrics(b.status()).tableRepairs.added, 0, 'kad-dht put a in the table: nothing to repair');
    await inner(b).services.dht.routingTable.remove(inner(a).peerId);
    assert.equal(b.status().routingTable, 0);
    assert.equal(b.status().ready, false, 'connected, but with an empty table');
    await until('b ready again', () => b.status().ready);
    assert.equal(b.status().routingTable, 1);
    assert.equal(b.metrics(b.status()).tableRepairs.added, 1);
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

test('a node connected only to a peer identify could not describe runs identify on that connection once more', { timeout: 90_000 }, async () => {
  // The peer is a real libp2p node without the identify protocol, so every identify of it fails,
  // as one does behind an event loop seconds late. Our node keeps the connection (nothing says
  // the peer is foreign), has an empty table, and tries identify again once, after 20 s.
  const bare = await createLibp2p({
    privateKey: await generateKeyPair('Ed25519'),
    addresses: { listen: ['/ip4/127.0.0.213/tcp/17423'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionMonitor: { enabled: false },
  });
  const cfg = await p2pWorkerConfig(loadConfig({ PEERPULL_P2P_ADDR: '127.0.0.214:17424', PEERPULL_REGISTRY_ADDR: '127.0.0.214:17425', PEERPULL_ADVERTISE_IP: '127.0.0.214', PEERPULL_BOOTSTRAP_DNS: '', PEERPULL_BOOTSTRAP_PEERS: '' }));
  const node = await P2PNode.create(cfg, await generateKeyPair('Ed25519'), () => {}, () => {});
  try {
    const inner = (node as unknown as { node: { dial(a: unknown): Promise<unknown> } }).node;
    await inner.dial(bare.getMultiaddrs()[0]);
    const repairs = () => node.metrics(node.status()).tableRepairs;
    assert.equal(repairs().reidentified, 0, 'not before identify has had its time');
    const end = Date.now() + 40_000;
    while (repairs().reidentified === 0) {
      if (Date.now() > end) assert.fail('identify was not run again within 40 s');
      await new Promise((r) => setTimeout(r, 250));
    }
    // Once per connection: later status ticks leave it alone.
    await new Promise((r) => setTimeout(r, 5000));
    assert.deepEqual(repairs(), { added: 0, reidentified: 1 });
    assert.equal(node.status().ready, false, 'still no member in the table');
  } finally {
    await Promise.all([node.stop(), bare.stop()]);
  }
});

test("the p2p thread's loop delay says how late its callbacks ran, not how often it samples", async () => {
  // Sampled every 50 ms (a finer period cost an idle thread more CPU than the protocol): the
  // histogram holds the time between samples, and the metric must take the period off, or an
  // idle node would report 50 ms late. A 300 ms block must still show. Read from the status
  // pushes (every 2 s), the only reader here: each covers the interval since the one before.
  const cfg = await p2pWorkerConfig(loadConfig({ PEERPULL_P2P_ADDR: '127.0.0.215:17426', PEERPULL_REGISTRY_ADDR: '127.0.0.215:17427', PEERPULL_ADVERTISE_IP: '127.0.0.215', PEERPULL_BOOTSTRAP_DNS: '', PEERPULL_BOOTSTRAP_PEERS: '' }));
  const pushed: Array<{ at: number; p50: number; max: number }> = [];
  const node = await P2PNode.create(cfg, await generateKeyPair('Ed25519'), () => {}, (_s, m) => pushed.push({ at: Date.now(), ...m.eventLoopDelayMs }));
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  try {
    await sleep(7000);
    // The first push covers the node's start; the two after it, an idle thread.
    const idle = pushed.slice(1);
    assert.ok(idle.length >= 2, `${pushed.length} status pushes in 7 s`);
    for (const d of idle) assert.ok(d.p50 < 40, `an idle thread reported p50 ${d.p50} ms late`);
    const blockedAt = Date.now();
    const end = blockedAt + 300;
    while (Date.now() < end); // blocks this thread, as a long task does
    await sleep(4500);
    const after = pushed.filter((d) => d.at > blockedAt);
    assert.ok(after.length >= 1, 'no status push after the block');
    assert.ok(Math.max(...after.map((d) => d.max)) >= 200, `a 300 ms block showed as max ${after.map((d) => d.max).join(', ')} ms`);
  } finally {
    await node.stop();
  }
});

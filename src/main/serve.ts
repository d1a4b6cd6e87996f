// `peerpull serve`: wires the content source, the pool, the registry front end and the metrics
// endpoint together, and owns the process lifecycle (readiness, graceful shutdown).

import { App, us_listen_socket_close, us_socket_local_port, type TemplatedApp, type us_listen_socket } from 'uWebSockets.js';
import type { Config } from './config.js';
import { ContentIndex, type ContentSource } from './content/index.js';
import { OciLayoutSource } from './content/oci-layout.js';
import { log, setLogLevel } from './log.js';
import { registry as metricsRegistry } from './metrics.js';
import { createPool, type BlobPool } from './pool.js';
import { Registry, listenExclusive } from './registry/routes.js';
import { Mirror, type ProviderFinder } from './mirror.js';
import { P2P, wireContentIndex } from './p2p.js';
import { preflight } from './preflight.js';
import { renderStatusHtml, StatusBuilder, type StatusSnapshot } from './status.js';

export interface RunningServer {
  registryPort: number;
  metricsPort: number;
  source: ContentSource;
  registry: Registry;
  p2p?: P2P;
  mirror?: Mirror;
  /** Graceful stop: stop accepting, let transfers finish within the grace period, release everything. */
  close(): Promise<void>;
}

async function createSource(config: Config, index: ContentIndex): Promise<ContentSource> {
  if (config.store.kind === 'oci-layout') return new OciLayoutSource(config.store.dir, index, config.resyncInterval, log.child({ component: 'oci-layout' }));
  // Loaded only when used: the embedded store (quick start, storm's local nodes) starts without gRPC.
  const { ContainerdSource } = await import('./containerd/index.js');
  return new ContainerdSource(config, index);
}

/** Starts the source, retrying with backoff: peerpull may come up before containerd does. */
async function startSource(source: ContentSource, isClosed: () => boolean): Promise<boolean> {
  let delay = 500;
  for (;;) {
    try {
      await source.start();
      return true;
    } catch (err) {
      if (isClosed()) return false;
      log.error('content source failed to start; retrying', { source: source.kind, retryInMs: delay, error: err });
      await new Promise((r) => setTimeout(r, delay).unref());
      if (isClosed()) return false;
      delay = Math.min(delay * 2, 10_000);
    }
  }
}

function listenApp(app: TemplatedApp, host: string, port: number, what: string): Promise<us_listen_socket> {
  return new Promise((resolve, reject) => {
    const cb = (sock: us_listen_socket | false) => (sock ? resolve(sock) : reject(new Error(`${what}: cannot listen on ${host || '*'}:${port}`)));
    listenExclusive(app, host, port, cb);
  });
}

function metricsApp(ready: () => boolean, status?: () => Promise<StatusSnapshot>): TemplatedApp {
  const app = App();
  if (status) {
    // JSON for tools (`peerpull status`, doctor) on `Accept: application/json` or `?format=json`; HTML otherwise.
    app.get('/status', (res, req) => {
      const format = req.getQuery('format');
      const json = format === 'json' || (format !== 'html' && /\bapplication\/json\b/i.test(req.getHeader('accept')));
      let aborted = false;
      res.onAborted(() => (aborted = true));
      status().then(
        (snap) => {
          if (aborted) return;
          const body = json ? JSON.stringify(snap, null, 2) + '\n' : renderStatusHtml(snap);
          res.cork(() => res.writeHeader('Content-Type', json ? 'application/json' : 'text/html; charset=utf-8').writeHeader('Cache-Control', 'no-store').end(body));
        },
        (err: unknown) => {
          log.error('status snapshot failed', { error: err });
          if (!aborted) res.cork(() => res.writeStatus('500 Internal Server Error').end('status snapshot failed\n'));
        },
      );
    });
  }
  app.get('/metrics', (res) => {
    let aborted = false;
    res.onAborted(() => (aborted = true));
    metricsRegistry.metrics().then(
      (text) => {
        if (aborted) return;
        res.cork(() => res.writeHeader('Content-Type', metricsRegistry.contentType).end(text));
      },
      (err: unknown) => {
        log.error('metrics collection failed', { error: err });
        if (!aborted) res.cork(() => res.writeStatus('500 Internal Server Error').end('metrics collection failed\n'));
      },
    );
  });
  app.get('/livez', (res) => void res.end('ok\n'));
  app.get('/readyz', (res) => {
    const ok = ready();
    res.writeStatus(ok ? '200 OK' : '503 Service Unavailable').end(ok ? 'ok\n' : 'not ready\n');
  });
  app.any('/*', (res) => void res.writeStatus('404 Not Found').end('not found\n'));
  return app;
}

export async function serve(config: Config): Promise<RunningServer> {
  setLogLevel(config.logLevel);
  // Never fatal and never waited for: warnings about containerd's config, logged once.
  if (config.store.kind === 'containerd') void preflight(config, log.child({ component: 'preflight' }));
  const index = new ContentIndex(config.indexMaxEntries);
  const source = await createSource(config, index);
  const pool: BlobPool = createPool(config.workers);
  let sourceStarted = false;
  let closing = false;
  let p2p: P2P | undefined;
  let mirror: Mirror | undefined;
  // The mirror is created before the registry (which routes misses to it) but finds providers
  // only once the p2p thread exists, after the registry port is known (port 0 in tests).
  const finder: ProviderFinder = {
    findProviders: (key, opts) => (p2p ? p2p.findProviders(key, opts) : Promise.resolve([])),
    reportFailure: (peerId) => p2p?.reportFailure(peerId),
    claimFetch: (key, timeoutMs) => (p2p ? p2p.claimFetch(key, timeoutMs) : Promise.resolve({ kind: 'none' })),
    releaseFetch: (key) => p2p?.releaseFetch(key),
  };
  if (config.p2p) mirror = new Mirror(config, finder, log.child({ component: 'mirror' }));
  const ready = () => !closing && sourceStarted && source.healthy() && (config.p2p ? p2p?.ready() === true : true);
  const registry = new Registry({ config, source, pool, log: log.child({ component: 'registry' }), ready, ...(mirror ? { mirror } : {}) });
  const status = new StatusBuilder({ config, source, ready, p2p: () => p2p, ...(mirror ? { mirror } : {}) });
  const metrics = metricsApp(ready, () => status.snapshot());

  const registryPort = await registry.listen(config.registryAddr.host, config.registryAddr.port);
  status.registryPort = registryPort;
  if (config.p2p) {
    // Peers fetch from the port really bound, which differs from the configured one with port 0.
    p2p = await P2P.fromConfig({ ...config, registryAddr: { ...config.registryAddr, port: registryPort } }, { log: log.child({ component: 'p2p' }) });
    // Follows the index from its first (empty) state: the source's first sync arrives as additions.
    wireContentIndex(p2p, index, log.child({ component: 'p2p' }));
    // The handle keeps restarting the thread after a failed first start; local content is served meanwhile.
    p2p.start().catch((err: unknown) => log.error('p2p thread failed to start; retrying in the background', { error: err }));
  }
  const metricsSock = await listenApp(metrics, config.metricsAddr.host, config.metricsAddr.port, 'metrics');
  const metricsPort = us_socket_local_port(metricsSock);
  status.metricsPort = metricsPort;
  log.info('listening', { registryPort, metricsPort, store: config.store.kind, workers: pool.threads });

  const sourceReady = startSource(source, () => closing).then((ok) => {
    sourceStarted = ok;
    if (ok) log.info('content source ready', { source: source.kind, digests: index.digestCount, tags: index.tagCount });
  });

  return {
    registryPort,
    metricsPort,
    source,
    registry,
    get p2p() {
      return p2p;
    },
    ...(mirror ? { mirror } : {}),
    async close() {
      if (closing) return;
      closing = true;
      log.info('shutting down', { inflight: registry.inflightCount, graceMs: config.shutdownGrace });
      // Leave the DHT first: peers see the connections close and stop offering this node at once,
      // instead of sending it requests its closing registry would refuse. Transfers in flight go on.
      await p2p?.stop();
      await registry.shutdown(config.shutdownGrace);
      us_listen_socket_close(metricsSock);
      metrics.close();
      await sourceReady.catch(() => undefined);
      await source.stop();
      await pool.destroy();
      log.info('stopped');
    },
  };
}

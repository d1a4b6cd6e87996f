// Entry of the p2p Worker thread: builds the libp2p node from workerData and serves the typed
// request protocol (src/shared/messages.ts) on parentPort. Problems go to main as log events:
// the main thread owns logging and metrics.

import { parentPort, workerData } from 'node:worker_threads';
import type { P2PEvent, P2PFromWorker, P2PReply, P2PRequest, P2PWorkerConfig } from '../shared/messages.js';
import { loadOrCreateIdentity } from './identity.js';
import { P2PNode, type LogFn } from './node.js';
import { BadMessageError, parseRequest } from './protocol.js';

if (!parentPort) throw new Error('src/p2p/worker.ts must run as a worker_threads Worker');
const port = parentPort;
const cfg = workerData as P2PWorkerConfig;

function post(m: P2PFromWorker): void {
  try {
    port.postMessage(m);
  } catch (err) {
    // A field that cannot be cloned must not take the thread down; say so instead.
    port.postMessage({ kind: 'log', level: 'error', msg: 'could not post message to main', fields: { error: (err as Error).message } } satisfies P2PEvent);
  }
}

const log: LogFn = (level, msg, fields) => post({ kind: 'log', level, msg, fields });

function isAbortError(err: unknown): boolean {
  const e = err as { name?: string; code?: string } | undefined;
  return e?.name === 'AbortError' || e?.code === 'ABORT_ERR' || e?.name === 'TimeoutError';
}

// Aborting a DHT query (every lookup that stops early or hits its deadline does) can reject a
// promise deep inside libp2p that no caller awaits. Those are expected; anything else is a bug
// worth a log line, and an uncaught exception ends the thread so main restarts it clean.
process.on('unhandledRejection', (reason) => {
  if (isAbortError(reason)) return;
  log('warn', 'unhandled rejection in p2p thread', { error: reason instanceof Error ? reason.message : String(reason), name: (reason as Error)?.name });
});
process.on('uncaughtException', (err) => {
  if (isAbortError(err)) return;
  log('error', 'uncaught exception in p2p thread: restarting it', { error: err.message, name: err.name, stack: err.stack?.split('\n').slice(0, 6).join('\n') });
  setTimeout(() => process.exit(1), 50);
});

let node: P2PNode | undefined;
const pending: unknown[] = [];

function reply(id: number, result: unknown): void {
  post({ kind: 'reply', id, ok: true, result } satisfies P2PReply);
}
function fail(id: number, error: string): void {
  post({ kind: 'reply', id, ok: false, error } satisfies P2PReply);
}

async function handle(n: P2PNode, req: P2PRequest): Promise<unknown> {
  switch (req.type) {
    case 'advertise':
      return n.advertise(req.keys, req.wait === true);
    case 'withdraw':
      return n.withdraw(req.keys);
    case 'findProviders':
      return n.findProviders(req.key, req.count, req.deadlineMs, req.exclude);
    case 'claimFetch':
      return n.claimFetch(req.key, req.deadlineMs);
    case 'releaseFetch':
      return n.releaseFetch(req.key);
    case 'reportFailure':
      n.reportFailure(req.peerId);
      return {};
    case 'status':
      return n.status();
    case 'stop':
      await n.stop();
      setImmediate(() => process.exit(0));
      return {};
  }
}

function onMessage(raw: unknown): void {
  if (!node) {
    pending.push(raw);
    return;
  }
  let req: P2PRequest;
  try {
    req = parseRequest(raw);
  } catch (err) {
    const e = err as BadMessageError;
    log('warn', 'malformed message from main', { error: e.message });
    if (e.id !== undefined) fail(e.id, e.message);
    return;
  }
  handle(node, req).then(
    (r) => reply(req.id, r),
    (err: Error) => {
      log('warn', `p2p request ${req.type} failed`, { error: err.message });
      fail(req.id, `${req.type}: ${err.message}`);
    },
  );
}

port.on('message', onMessage);

async function main(): Promise<void> {
  const { key, created } = await loadOrCreateIdentity(cfg.dataDir);
  if (created) log('info', 'created a new peer identity', { dataDir: cfg.dataDir });
  node = await P2PNode.create(
    cfg,
    key,
    log,
    (status, metrics) => post({ kind: 'status', status, metrics }),
    (m) => post(m),
  );
  post({ kind: 'started', status: node.status() });
  for (const m of pending.splice(0)) onMessage(m);
}

main().catch((err: Error) => {
  post({ kind: 'fatal', error: `p2p node failed to start: ${err.message}` });
  setTimeout(() => process.exit(1), 50);
});

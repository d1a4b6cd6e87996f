// Validation of main -> p2p worker messages. Main is trusted code, but a bug there (or a
// truncated message) must cost one error reply, not the routing of the whole node.

import type { P2PRequest } from '../shared/messages.js';
import { MAX_KEY_LENGTH } from '../shared/keys.js';

export class BadMessageError extends Error {
  constructor(message: string, readonly id: number | undefined) {
    super(message);
    this.name = 'BadMessageError';
  }
}

/** Most keys in one advertise/withdraw message; main batches larger sets. */
export const MAX_KEYS_PER_MESSAGE = 10_000;

function isKey(k: unknown): k is string {
  return typeof k === 'string' && k.length > 0 && k.length <= MAX_KEY_LENGTH;
}

function keys(m: Record<string, unknown>, id: number): string[] {
  const ks = m.keys;
  if (!Array.isArray(ks)) throw new BadMessageError(`${String(m.type)}: "keys" must be an array`, id);
  if (ks.length > MAX_KEYS_PER_MESSAGE) throw new BadMessageError(`${String(m.type)}: more than ${MAX_KEYS_PER_MESSAGE} keys`, id);
  for (const k of ks) if (!isKey(k)) throw new BadMessageError(`${String(m.type)}: a key is not a string of 1..${MAX_KEY_LENGTH} characters`, id);
  return ks as string[];
}

export function parseRequest(raw: unknown): P2PRequest {
  if (typeof raw !== 'object' || raw === null) throw new BadMessageError(`message is ${raw === null ? 'null' : typeof raw}, not an object`, undefined);
  const m = raw as Record<string, unknown>;
  const id = m.id;
  if (typeof id !== 'number' || !Number.isSafeInteger(id)) throw new BadMessageError('message has no numeric "id"', undefined);
  switch (m.type) {
    case 'advertise':
      return { id, type: 'advertise', keys: keys(m, id), wait: m.wait === true };
    case 'withdraw':
      return { id, type: 'withdraw', keys: keys(m, id) };
    case 'findProviders': {
      if (!isKey(m.key)) throw new BadMessageError('findProviders: "key" must be a string of 1..1024 characters', id);
      const count = m.count;
      const deadlineMs = m.deadlineMs;
      if (typeof count !== 'number' || !Number.isInteger(count) || count < 1 || count > 20) throw new BadMessageError('findProviders: "count" must be 1..20', id);
      if (typeof deadlineMs !== 'number' || !(deadlineMs > 0) || deadlineMs > 60_000) throw new BadMessageError('findProviders: "deadlineMs" must be in (0, 60000]', id);
      const exclude = m.exclude;
      if (exclude !== undefined && !(Array.isArray(exclude) && exclude.length <= 64 && exclude.every((p) => typeof p === 'string' && p.length > 0 && p.length <= 128))) {
        throw new BadMessageError('findProviders: "exclude" must be at most 64 peer id strings', id);
      }
      return { id, type: 'findProviders', key: m.key, count, deadlineMs, ...(exclude ? { exclude: exclude as string[] } : {}) };
    }
    case 'claimFetch': {
      if (!isKey(m.key)) throw new BadMessageError('claimFetch: "key" must be a string of 1..1024 characters', id);
      const deadlineMs = m.deadlineMs;
      if (typeof deadlineMs !== 'number' || !(deadlineMs > 0) || deadlineMs > 60_000) throw new BadMessageError('claimFetch: "deadlineMs" must be in (0, 60000]', id);
      return { id, type: 'claimFetch', key: m.key, deadlineMs };
    }
    case 'releaseFetch':
      if (!isKey(m.key)) throw new BadMessageError('releaseFetch: "key" must be a string of 1..1024 characters', id);
      return { id, type: 'releaseFetch', key: m.key };
    case 'reportFailure':
      if (typeof m.peerId !== 'string' || m.peerId.length === 0 || m.peerId.length > 128) throw new BadMessageError('reportFailure: "peerId" must be a peer id string', id);
      return { id, type: 'reportFailure', peerId: m.peerId };
    case 'status':
      return { id, type: 'status' };
    case 'stop':
      return { id, type: 'stop' };
    default:
      throw new BadMessageError(`unknown message type ${JSON.stringify(String(m.type)).slice(0, 64)}`, id);
  }
}

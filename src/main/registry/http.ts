// HTTP pieces of the registry that do not depend on uWS: request path parsing, Range parsing,
// OCI error bodies. Pure functions, table-tested.

import {
  ParseError,
  parseDigest,
  parseRegistry,
  parseRepository,
  parseTag,
  type Digest,
  type Registry,
  type Repository,
  type Tag,
} from '../../shared/oci.js';

export type OciErrorCode =
  | 'BLOB_UNKNOWN'
  | 'MANIFEST_UNKNOWN'
  | 'NAME_INVALID'
  | 'NAME_UNKNOWN'
  | 'DIGEST_INVALID'
  | 'TAG_INVALID'
  | 'UNSUPPORTED'
  | 'RANGE_INVALID';

export const STATUS: Record<number, string> = {
  200: '200 OK',
  206: '206 Partial Content',
  400: '400 Bad Request',
  404: '404 Not Found',
  405: '405 Method Not Allowed',
  414: '414 URI Too Long',
  416: '416 Range Not Satisfiable',
  500: '500 Internal Server Error',
  503: '503 Service Unavailable',
};

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: OciErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

export function errorBody(code: OciErrorCode, message: string): string {
  return JSON.stringify({ errors: [{ code, message }] });
}

/** Longest request path accepted; longer ones are refused before any parsing. */
export const MAX_PATH = 2048;

export type RegistryRequest =
  | { kind: 'base' }
  | { kind: 'manifest'; registry: Registry; repository: Repository; tag: Tag; digest?: undefined }
  | { kind: 'manifest'; registry: Registry; repository: Repository; digest: Digest; tag?: undefined }
  | { kind: 'blob'; registry: Registry; repository: Repository; digest: Digest };

function fromParse(err: unknown, notFound: OciErrorCode): never {
  if (err instanceof ParseError) {
    const code: OciErrorCode = err.code === 'TAG_INVALID' ? 'TAG_INVALID' : err.code;
    throw new HttpError(400, code, err.message);
  }
  throw new HttpError(404, notFound, String(err));
}

/**
 * Parses `/v2/...` into a typed request. The raw (undecoded) path is parsed: a percent sign,
 * `..`, an empty segment or anything outside the OCI grammar is refused, so nothing a client
 * sends can steer a file path.
 */
export function parseRegistryPath(path: string, ns: string | undefined, defaultRegistry: string): RegistryRequest {
  if (path.length > MAX_PATH) throw new HttpError(414, 'NAME_INVALID', `path longer than ${MAX_PATH} characters`);
  if (path === '/v2' || path === '/v2/') return { kind: 'base' };
  if (!path.startsWith('/v2/')) throw new HttpError(404, 'NAME_UNKNOWN', 'not a registry API path');
  const segments = path.slice(4).split('/');
  if (segments.length < 3) throw new HttpError(404, 'NAME_UNKNOWN', 'unknown registry API path');
  const ref = segments[segments.length - 1]!;
  const endpoint = segments[segments.length - 2]!;
  if (endpoint !== 'manifests' && endpoint !== 'blobs') {
    throw new HttpError(404, 'UNSUPPORTED', `endpoint "${endpoint}" is not served by a pull-only mirror`);
  }
  const name = segments.slice(0, -2).join('/');
  let repository: Repository;
  let registry: Registry;
  try {
    repository = parseRepository(name);
    registry = parseRegistry(ns ?? defaultRegistry);
  } catch (err) {
    fromParse(err, 'NAME_UNKNOWN');
  }
  if (endpoint === 'blobs') {
    try {
      return { kind: 'blob', registry, repository, digest: parseDigest(ref) };
    } catch (err) {
      fromParse(err, 'BLOB_UNKNOWN');
    }
  }
  try {
    if (ref.includes(':')) return { kind: 'manifest', registry, repository, digest: parseDigest(ref) };
    return { kind: 'manifest', registry, repository, tag: parseTag(ref) };
  } catch (err) {
    fromParse(err, 'MANIFEST_UNKNOWN');
  }
}

/** [start, end) of the body to send. */
export interface ByteRange {
  start: number;
  end: number;
}

/**
 * Parses a Range header against a size. Returns undefined for "no range" (absent, or a syntax we
 * ignore as RFC 9110 allows), a ByteRange, or throws HttpError 416 for unsatisfiable or multiple ranges.
 */
export function parseRange(header: string, size: number): ByteRange | undefined {
  if (!header) return undefined;
  const m = /^\s*bytes\s*=\s*(.*)$/i.exec(header);
  if (!m) return undefined;
  const spec = m[1]!.trim();
  if (spec.includes(',')) throw new HttpError(416, 'RANGE_INVALID', 'multiple ranges are not supported');
  const r = /^(\d*)\s*-\s*(\d*)$/.exec(spec);
  if (!r || (r[1] === '' && r[2] === '')) return undefined;
  if (r[1] === '') {
    // Suffix range: the last n bytes.
    const n = Number(r[2]);
    if (!Number.isSafeInteger(n) || n === 0 || size === 0) throw new HttpError(416, 'RANGE_INVALID', `range "${spec}" not satisfiable`);
    return { start: Math.max(0, size - n), end: size };
  }
  const start = Number(r[1]);
  if (!Number.isSafeInteger(start) || start >= size) throw new HttpError(416, 'RANGE_INVALID', `range "${spec}" not satisfiable for size ${size}`);
  if (r[2] === '') return { start, end: size };
  const last = Number(r[2]);
  if (!Number.isSafeInteger(last) || last < start) return undefined; // invalid: ignore, serve whole
  return { start, end: Math.min(last + 1, size) };
}

// OCI domain types, parsed once at the edge (HTTP path, containerd metadata, OCI layout)
// and trusted everywhere inside. Nothing that fails these parsers can reach the file system.

declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

/** `sha256:<64 lowercase hex>`: the only algorithm peerpull serves. */
export type Digest = Brand<string, 'Digest'>;
/** A repository name per the OCI distribution grammar, e.g. `library/nginx`. */
export type Repository = Brand<string, 'Repository'>;
/** A tag, e.g. `1.25-alpine`. */
export type Tag = Brand<string, 'Tag'>;
/** A registry host as containerd sends it in `?ns=`, e.g. `docker.io`, `ghcr.io`, `localhost:5000`. */
export type Registry = Brand<string, 'Registry'>;

/** What went wrong when a string failed to parse; `code` maps to the OCI error code. */
export class ParseError extends Error {
  constructor(
    readonly code: 'DIGEST_INVALID' | 'NAME_INVALID' | 'TAG_INVALID' | 'UNSUPPORTED',
    message: string,
  ) {
    super(message);
    this.name = 'ParseError';
  }
}

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;
// Any well-formed digest of another algorithm (OCI grammar), so we can say "unsupported" not "invalid".
const OTHER_DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const REPOSITORY_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
// host[:port]; a bracketed IPv6 literal is allowed as containerd may send one.
const REGISTRY_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/;
/** distribution limits name plus host to 255 characters; 255 for the name alone is the safe edge. */
export const MAX_REPOSITORY_LENGTH = 255;

export function isDigest(s: string): s is Digest {
  return DIGEST_RE.test(s);
}

export function parseDigest(s: string): Digest {
  if (DIGEST_RE.test(s)) return s as Digest;
  if (s.length <= 256 && OTHER_DIGEST_RE.test(s)) {
    const algorithm = s.slice(0, s.indexOf(':'));
    if (algorithm !== 'sha256') throw new ParseError('UNSUPPORTED', `digest algorithm "${algorithm}" is not supported`);
  }
  throw new ParseError('DIGEST_INVALID', `invalid digest "${truncate(s)}"`);
}

export function parseRepository(s: string): Repository {
  if (s.length === 0 || s.length > MAX_REPOSITORY_LENGTH || !REPOSITORY_RE.test(s)) {
    throw new ParseError('NAME_INVALID', `invalid repository name "${truncate(s)}"`);
  }
  return s as Repository;
}

export function parseTag(s: string): Tag {
  if (!TAG_RE.test(s)) throw new ParseError('TAG_INVALID', `invalid tag "${truncate(s)}"`);
  return s as Tag;
}

export function parseRegistry(s: string): Registry {
  if (s.length === 0 || s.length > 255 || !REGISTRY_RE.test(s)) {
    throw new ParseError('NAME_INVALID', `invalid registry "${truncate(s)}"`);
  }
  // Hosts are case-insensitive; keys must not split on case.
  return s.toLowerCase() as Registry;
}

/** The hex part of a digest: the file name in a content store. */
export function digestHex(d: Digest): string {
  return d.slice(7);
}

/** A fully qualified image reference: `registry/repository:tag` and/or `@digest`. */
export interface ImageReference {
  registry: Registry;
  repository: Repository;
  tag?: Tag;
  digest?: Digest;
}

/**
 * Parses a fully qualified reference as containerd stores image names
 * (`docker.io/library/nginx:1.25`, `ghcr.io/a/b@sha256:...`, `localhost:5000/x:y`).
 * The first component is always the registry: containerd never stores short names.
 */
export function parseImageReference(s: string): ImageReference {
  if (s.length > 1024) throw new ParseError('NAME_INVALID', `reference too long (${s.length} characters)`);
  let rest = s;
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = parseDigest(rest.slice(at + 1));
    rest = rest.slice(0, at);
  }
  const slash = rest.indexOf('/');
  if (slash <= 0) throw new ParseError('NAME_INVALID', `reference "${truncate(s)}" has no registry`);
  const registry = parseRegistry(rest.slice(0, slash));
  rest = rest.slice(slash + 1);
  let tag: Tag | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon >= 0) {
    tag = parseTag(rest.slice(colon + 1));
    rest = rest.slice(0, colon);
  }
  const repository = parseRepository(rest);
  if (!tag && !digest) throw new ParseError('NAME_INVALID', `reference "${truncate(s)}" has neither tag nor digest`);
  const ref: ImageReference = { registry, repository };
  if (tag) ref.tag = tag;
  if (digest) ref.digest = digest;
  return ref;
}

/** The routing and index key for a tag: `registry/repository:tag`. */
export function tagKey(registry: Registry, repository: Repository, tag: Tag): string {
  return `${registry}/${repository}:${tag}`;
}

export const MediaType = {
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  OciConfig: 'application/vnd.oci.image.config.v1+json',
  DockerConfig: 'application/vnd.docker.container.image.v1+json',
  OciLayer: 'application/vnd.oci.image.layer.v1.tar',
  OciLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OctetStream: 'application/octet-stream',
} as const;

const MANIFEST_TYPES = new Set<string>([
  MediaType.OciManifest,
  MediaType.OciIndex,
  MediaType.DockerManifest,
  MediaType.DockerManifestList,
]);

export function isManifestMediaType(mt: string): boolean {
  return MANIFEST_TYPES.has(mt);
}

export function isIndexMediaType(mt: string): boolean {
  return mt === MediaType.OciIndex || mt === MediaType.DockerManifestList;
}

/** A content descriptor as in OCI manifests and containerd metadata. */
export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  platform?: { architecture: string; os: string; variant?: string };
  annotations?: Record<string, string>;
}

/**
 * Parses a descriptor from untrusted JSON (a manifest, an index, containerd metadata).
 * Sizes beyond 2^53 cannot be served and are refused.
 */
export function parseDescriptor(v: unknown): Descriptor {
  if (typeof v !== 'object' || v === null) throw new ParseError('DIGEST_INVALID', 'descriptor is not an object');
  const o = v as Record<string, unknown>;
  const mediaType = typeof o.mediaType === 'string' ? o.mediaType : MediaType.OctetStream;
  if (typeof o.digest !== 'string') throw new ParseError('DIGEST_INVALID', 'descriptor has no digest');
  const digest = parseDigest(o.digest);
  const size = typeof o.size === 'number' ? o.size : typeof o.size === 'string' ? Number(o.size) : NaN;
  if (!Number.isSafeInteger(size) || size < 0) throw new ParseError('DIGEST_INVALID', `descriptor ${digest} has invalid size`);
  const d: Descriptor = { mediaType, digest, size };
  const p = o.platform as Record<string, unknown> | undefined;
  if (p && typeof p.architecture === 'string' && typeof p.os === 'string') {
    d.platform = { architecture: p.architecture, os: p.os };
    if (typeof p.variant === 'string') d.platform.variant = p.variant;
  }
  if (o.annotations && typeof o.annotations === 'object') d.annotations = o.annotations as Record<string, string>;
  return d;
}

/** The child descriptors a manifest or index points at (config and layers, or platform manifests). */
export function childDescriptors(mediaType: string, body: Uint8Array): Descriptor[] {
  const json = JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8')) as Record<string, unknown>;
  // Docker and OCI both allow mediaType in the body; trust the descriptor's type but accept either shape.
  const out: Descriptor[] = [];
  if (isIndexMediaType(mediaType) || Array.isArray(json.manifests)) {
    for (const m of (json.manifests as unknown[]) ?? []) out.push(parseDescriptor(m));
  } else {
    if (json.config) out.push(parseDescriptor(json.config));
    for (const l of (json.layers as unknown[]) ?? []) out.push(parseDescriptor(l));
  }
  return out;
}

function truncate(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

import { LazyrootError } from '../errors.js';
import { isDigest, type Digest } from '../oci/digest.js';

export const dockerHubRegistry = 'docker.io';
/** The host that actually serves Docker Hub's registry API. */
export const dockerHubApiHost = 'registry-1.docker.io';

export interface DockerReference {
  transport: 'docker';
  /** Registry host[:port] as written (docker.io for Docker Hub). */
  registry: string;
  /** Repository path, with `library/` for official Docker Hub images. */
  repository: string;
  tag?: string;
  digest?: Digest;
}

export interface PathReference {
  transport: 'oci' | 'oci-archive' | 'docker-archive';
  path: string;
  /** oci: a ref.name annotation or a digest; docker-archive: repo:tag or @N. */
  ref?: string;
}

export interface TarballReference {
  transport: 'tarball';
  path: string;
}

export type ImageReference = DockerReference | PathReference | TarballReference;

function bad(text: string, why: string): LazyrootError {
  return new LazyrootError('INVALID_REFERENCE', `reference ${JSON.stringify(text)}: ${why}`);
}

// Grammar from the distribution/reference package.
const componentPattern = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const tagPattern = /^[\w][\w.-]{0,127}$/;
const hostPattern = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$/;

/** Parses `[registry/]repo[:tag][@digest]` with Docker Hub defaults. */
export function parseDockerReference(text: string, original = text): DockerReference {
  if (text === '') throw bad(original, 'empty image name');
  let rest = text;
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    const d = rest.slice(at + 1);
    if (!isDigest(d)) throw bad(original, `invalid digest ${JSON.stringify(d)}`);
    digest = d;
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!tagPattern.test(tag)) throw bad(original, `invalid tag ${JSON.stringify(tag)}`);
  }
  let registry = dockerHubRegistry;
  let path = rest;
  const firstSlash = rest.indexOf('/');
  if (firstSlash >= 0) {
    const first = rest.slice(0, firstSlash);
    if (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('[')) {
      if (!hostPattern.test(first)) throw bad(original, `invalid registry host ${JSON.stringify(first)}`);
      registry = first;
      path = rest.slice(firstSlash + 1);
    }
  }
  if (registry === 'index.docker.io' || registry === dockerHubApiHost) registry = dockerHubRegistry;
  if (path === '') throw bad(original, 'empty repository');
  for (const component of path.split('/')) {
    if (!componentPattern.test(component)) {
      throw bad(original, `invalid repository component ${JSON.stringify(component)} (lowercase letters, digits and separators only)`);
    }
  }
  if (registry === dockerHubRegistry && !path.includes('/')) path = `library/${path}`;
  if (tag === undefined && digest === undefined) tag = 'latest';
  const ref: DockerReference = { transport: 'docker', registry, repository: path };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  return ref;
}

/**
 * Splits `PATH[:ref]` at the first colon, as containers/image does, so that
 * refs may themselves hold colons (`docker-archive:a.tar:busybox:1.36`,
 * `oci:dir:sha256:…`). Paths with colons are therefore not supported.
 */
function splitPathRef(body: string): { path: string; ref?: string } {
  const colon = body.indexOf(':');
  if (colon < 0) return { path: body };
  const ref = body.slice(colon + 1);
  return ref === '' ? { path: body.slice(0, colon) } : { path: body.slice(0, colon), ref };
}

/**
 * Parses any reference lazyroot accepts:
 * `docker://…`, `oci:DIR[:ref]`, `oci-archive:FILE[:ref]`, `docker-archive:FILE[:ref]`,
 * a path to a rootfs `.tar`/`.tar.gz`/`.tgz`, or a bare `repo[:tag]` (Docker).
 */
export function parseReference(text: string): ImageReference {
  const trimmed = text.trim();
  if (trimmed === '') throw bad(text, 'empty reference');
  if (trimmed.startsWith('docker://')) return parseDockerReference(trimmed.slice('docker://'.length), text);
  for (const transport of ['oci-archive', 'docker-archive', 'oci'] as const) {
    if (trimmed.startsWith(`${transport}:`)) {
      const { path, ref } = splitPathRef(trimmed.slice(transport.length + 1));
      if (path === '') throw bad(text, `${transport}: needs a path`);
      return ref === undefined ? { transport, path } : { transport, path, ref };
    }
  }
  if (/\.(tar|tar\.gz|tgz|tar\.zst)$/.test(trimmed) || trimmed.startsWith('/') || trimmed.startsWith('./')) {
    return { transport: 'tarball', path: trimmed };
  }
  return parseDockerReference(trimmed, text);
}

/** The canonical text of a reference: what the store records as the image's name. */
export function formatReference(ref: ImageReference): string {
  switch (ref.transport) {
    case 'docker':
      return `${ref.registry}/${ref.repository}${ref.tag !== undefined ? `:${ref.tag}` : ''}${ref.digest !== undefined ? `@${ref.digest}` : ''}`;
    case 'tarball':
      return `tarball:${ref.path}`;
    default:
      return `${ref.transport}:${ref.path}${ref.ref !== undefined ? `:${ref.ref}` : ''}`;
  }
}

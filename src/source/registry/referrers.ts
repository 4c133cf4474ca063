import { DigestMismatchError, LazyrootError } from '../../errors.js';
import { digestAlgorithm, hasherFor, type Digest } from '../../oci/digest.js';
import { MediaType } from '../../oci/media-types.js';
import { parseReferrersIndex, referrersTagFor } from '../../oci/referrers.js';
import type { Descriptor } from '../../oci/types.js';
import { discard, readLimited } from './body.js';
import { answerError } from './answers.js';
import type { RegistryError } from './registry-error.js';
import type { TransportResponse } from './transport.js';

/**
 * Reading OCI 1.1 referrers from a registry (src/oci/referrers.ts has the
 * formats): the referrers API first, and where the registry answers it with
 * 404 (it has no such API: distribution 2.8), the referrers index under the
 * fallback tag `sha256-<hex>`. Both are read through `get`, an authenticated
 * GET of `/v2/<name>/<path>` that the registry client provides.
 */
export type RegistryGet = <T>(path: string, what: string, headers: Record<string, string>, consume: (response: TransportResponse) => Promise<T>) => Promise<T>;

export interface ReferrersOptions {
  /** Only artifacts of this type (filtered here too: a registry may ignore the filter). */
  artifactType?: string;
}

export interface Referrers {
  descriptors: Descriptor[];
  /** How the registry answered: its referrers API, or the fallback tag (absent: no referrers). */
  via: 'referrers-api' | 'tag-fallback';
}

const indexLimit = 4 << 20;

/** The referrers of `subject` in the repository `get` reaches; `name` names the repository in errors. */
export async function listReferrers(get: RegistryGet, name: string, subject: Digest, options: ReferrersOptions = {}): Promise<Referrers> {
  const what = `${name}: referrers of ${subject}`;
  const query = options.artifactType ? `?artifactType=${encodeURIComponent(options.artifactType)}` : '';
  const fromApi = await get(`referrers/${subject}${query}`, `${what} (referrers API)`, { accept: MediaType.ociIndex }, async (response) => {
    if (response.status === 404) {
      await discard(response.body);
      return undefined;
    }
    if (response.status !== 200) throw await failure(response, `${what} (referrers API)`);
    return parseReferrersIndex(await readLimited(response.body, indexLimit, `${what} (referrers API)`), `${what} (referrers API)`);
  });
  const filter = (list: Descriptor[]) => (options.artifactType ? list.filter((d) => d.artifactType === options.artifactType) : list);
  if (fromApi) return { descriptors: filter(fromApi.manifests), via: 'referrers-api' };

  const tag = referrersTagFor(subject);
  const tagWhat = `${what} (fallback tag ${tag})`;
  const fromTag = await get(`manifests/${tag}`, tagWhat, { accept: `${MediaType.ociIndex}, ${MediaType.dockerManifestList}` }, async (response) => {
    if (response.status === 404) {
      await discard(response.body);
      return undefined;
    }
    if (response.status !== 200) throw await failure(response, tagWhat);
    return parseReferrersIndex(await readLimited(response.body, indexLimit, tagWhat), tagWhat);
  });
  return { descriptors: filter(fromTag?.manifests ?? []), via: 'tag-fallback' };
}

/**
 * A manifest or a blob by its descriptor, whole in memory (at most `limit`
 * bytes), checked against the descriptor's size and digest before it is
 * returned: what a referrer points at is trusted only that far.
 */
export async function fetchVerified(get: RegistryGet, name: string, kind: 'manifest' | 'blob', descriptor: Descriptor, limit: number): Promise<Buffer> {
  const what = `${name}: ${kind} ${descriptor.digest}`;
  if (!Number.isSafeInteger(descriptor.size) || descriptor.size < 0 || descriptor.size > limit) {
    throw new LazyrootError('RESOURCE_EXHAUSTED', `${what}: ${descriptor.size} bytes is more than the ${limit} allowed here`);
  }
  const headers: Record<string, string> = kind === 'manifest' ? { accept: descriptor.mediaType } : {};
  const bytes = await get(`${kind === 'manifest' ? 'manifests' : 'blobs'}/${descriptor.digest}`, what, headers, async (response) => {
    if (response.status !== 200) throw await failure(response, what);
    return readLimited(response.body, descriptor.size, what);
  });
  if (bytes.length !== descriptor.size) throw new LazyrootError('SIZE_MISMATCH', `${what}: descriptor says ${descriptor.size} bytes, registry sent ${bytes.length}`);
  const got = `${digestAlgorithm(descriptor.digest)}:${hasherFor(descriptor.digest).update(bytes).digest('hex')}`;
  if (got !== descriptor.digest) throw new DigestMismatchError(what, descriptor.digest, got);
  return bytes;
}

function failure(response: TransportResponse, what: string): Promise<RegistryError> {
  return answerError(response, what, 'GET');
}

import { LazyrootError } from '../errors.js';
import { digestAlgorithm, digestHex, isDigest, type Digest } from './digest.js';
import { MediaType } from './media-types.js';
import type { Descriptor, ImageIndex } from './types.js';

/*
 * OCI 1.1 referrers: artifacts that point at a manifest through their
 * `subject`. A registry with the referrers API lists them at
 * `GET /v2/<name>/referrers/<digest>`; one without it (distribution 2.8)
 * holds the same list as an image index under the tag `<alg>-<hex>` of the
 * subject's digest, which clients update read-modify-write (the "tag schema"
 * of the distribution spec).
 *
 * lazyroot's artifact, one per image manifest:
 *
 *   { "schemaVersion": 2,
 *     "mediaType": "application/vnd.oci.image.manifest.v1+json",
 *     "artifactType": "application/vnd.lazyroot.index.v1",
 *     "config": the empty descriptor ({} , application/vnd.oci.empty.v1+json),
 *     "layers": [
 *        { mediaType: span-index, digest, size,
 *          annotations: { "io.lazyroot.layer.digest": <layer blob digest>,
 *                         "io.lazyroot.layer.size": <its bytes>,
 *                         "io.lazyroot.span-index.head.size": <bytes before the windows>,
 *                         "io.lazyroot.span-index.head.digest": <their sha256> } },
 *                                                                      one per gzip/tar layer
 *        { mediaType: access-profile, digest, size }                    when one is recorded
 *     ],
 *     "subject": { the image manifest's descriptor },
 *     "annotations": { "org.opencontainers.image.created": <RFC 3339> } }
 *
 * Span-index blobs are lazyroot index files (src/index/index-file.ts), byte
 * for byte what `lazyroot index` keeps under indexes/. The head annotations
 * let a mount fetch a span index's head alone (one Range request, checked
 * against the head digest) and then each window it needs by range, checked
 * by the window digests in the head: most of a span index is windows, and a
 * mount needs few of them. Without them (an artifact of an older lazyroot)
 * the blob is fetched whole.
 */
export const lazyrootIndexArtifactType = 'application/vnd.lazyroot.index.v1';
export const spanIndexMediaType = 'application/vnd.lazyroot.span-index.v1';
export const accessProfileMediaType = 'application/vnd.lazyroot.access-profile.v1+json';
export const layerDigestAnnotation = 'io.lazyroot.layer.digest';
export const layerSizeAnnotation = 'io.lazyroot.layer.size';
export const spanIndexHeadSizeAnnotation = 'io.lazyroot.span-index.head.size';
export const spanIndexHeadDigestAnnotation = 'io.lazyroot.span-index.head.digest';
export const createdAnnotation = 'org.opencontainers.image.created';

/** The empty JSON object every artifact without a config points at. */
export const emptyConfigBytes = Buffer.from('{}');
export const emptyConfigDescriptor: Descriptor = {
  mediaType: MediaType.ociEmpty,
  digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a',
  size: 2,
};

/** The tag that holds the referrers of `subject` where the registry has no referrers API: `sha256-<hex>`. */
export function referrersTagFor(subject: Digest): string {
  return `${digestAlgorithm(subject)}-${digestHex(subject)}`.slice(0, 128);
}

/** An empty image index, the start of a referrers list. */
export function emptyReferrersIndex(): ImageIndex {
  return { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] };
}

/**
 * The descriptors of a referrers list (the API's answer or the fallback tag's
 * index), checked for shape; entries that are not descriptors are dropped.
 */
export function parseReferrersIndex(bytes: Buffer, what: string): ImageIndex {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new LazyrootError('INVALID_MANIFEST', `${what}: not JSON: ${(err as Error).message}`);
  }
  const index = value as Partial<ImageIndex> | null;
  if (!index || typeof index !== 'object' || index.schemaVersion !== 2 || !Array.isArray(index.manifests)) {
    throw new LazyrootError('INVALID_MANIFEST', `${what}: not an image index (schemaVersion 2 with a manifests list)`);
  }
  const manifests = index.manifests.filter(
    (d): d is Descriptor => !!d && typeof d === 'object' && typeof d.mediaType === 'string' && isDigest(d.digest) && Number.isSafeInteger(d.size) && d.size >= 0,
  );
  return { ...(index as ImageIndex), mediaType: index.mediaType ?? MediaType.ociIndex, manifests };
}

/**
 * The referrers list with `added` in it: an entry with the same digest is
 * replaced, and so is every older entry of the same artifact type when
 * `replaceSameType` (lazyroot keeps one index artifact per image).
 */
export function withReferrer(index: ImageIndex, added: Descriptor, options: { replaceSameType?: boolean } = {}): ImageIndex {
  const kept = index.manifests.filter((d) => d.digest !== added.digest && !(options.replaceSameType && added.artifactType !== undefined && d.artifactType === added.artifactType));
  return { ...index, schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [...kept, added] };
}

/** The newest first: by the created annotation when both have one, else later in the list first. */
export function newestFirst(descriptors: readonly Descriptor[]): Descriptor[] {
  return descriptors
    .map((d, i) => ({ d, i }))
    .sort((a, b) => {
      const ca = a.d.annotations?.[createdAnnotation];
      const cb = b.d.annotations?.[createdAnnotation];
      if (ca && cb && ca !== cb) return ca < cb ? 1 : -1;
      return b.i - a.i;
    })
    .map((x) => x.d);
}

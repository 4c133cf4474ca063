import type { Digest } from '../oci/digest.js';
import type { Compression } from '../oci/media-types.js';

/**
 * containers/storage's `archive.Compression` (pkg/archive/archive.go):
 * Uncompressed = 0, Bzip2, Gzip, Xz, Zstd.
 */
const compressionCode: Readonly<Record<Compression, number>> = { none: 0, gzip: 2, zstd: 4 };

export interface LayerInfoFields {
  digest: Digest;
  size: number;
  diffId: Digest;
  /** Bytes of the uncompressed tar, when known (an eStargz TOC does not say). */
  uncompressedSize?: number;
  compression: Compression;
}

/**
 * The `info` file of an additional layer store: the JSON of a
 * containers/storage `Layer` (layers.go, v1.43). Podman decodes it in
 * `store.LookupAdditionalLayer` and `layerStore.PutAdditionalLayer`; it sets
 * `id`, `parent` and `created` itself. `diff-digest` (the diff ID) is what
 * c/image records for the layer and derives layer IDs from, so it must match
 * the image config's `rootfs.diff_ids`.
 */
export function layerInfoJson(fields: LayerInfoFields): Buffer {
  const info = {
    'compressed-diff-digest': fields.digest,
    'compressed-size': fields.size,
    'diff-digest': fields.diffId,
    ...(fields.uncompressedSize !== undefined ? { 'diff-size': fields.uncompressedSize } : {}),
    compression: compressionCode[fields.compression],
  };
  return Buffer.from(JSON.stringify(info));
}

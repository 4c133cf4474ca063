import { LazyrootError } from '../../errors.js';
import { compressionOf } from '../../oci/media-types.js';
import { tocDigestAnnotation } from '../../index/estargz/toc.js';
import { openEstargzLayer } from './estargz.js';
import type { LayerContext, LazyLayer } from './lazy-layer.js';
import { openLocalTarLayer } from './local-tar.js';
import { openSpanIndexedLayer } from './span-indexed.js';
import { openZstdChunkedLayer } from './zstd-chunked.js';
import { zstdChunkedAnnotations } from '../../index/zstd-chunked/format.js';

/**
 * The one place that knows the kinds of lazy layer: eStargz when the
 * descriptor carries a TOC digest, zstd:chunked when it carries a manifest
 * checksum, span-indexed for gzip and plain tar, and a local tar for what
 * cannot be read by range in its stored form (plain zstd).
 */
export function openLazyLayer(context: LayerContext): Promise<LazyLayer> {
  const { descriptor, what } = context;
  const tocDigest = descriptor.annotations?.[tocDigestAnnotation];
  if (tocDigest) return openEstargzLayer(context, tocDigest);
  const zstdChunked = zstdChunkedAnnotations(descriptor.annotations);
  if (zstdChunked && compressionOf(descriptor.mediaType) === 'zstd') return openZstdChunkedLayer(context, zstdChunked);
  const compression = compressionOf(descriptor.mediaType);
  if (!compression) throw new LazyrootError('UNSUPPORTED', `${what}: not a layer media type: ${descriptor.mediaType}`);
  if (compression === 'gzip' || compression === 'none') return openSpanIndexedLayer(context, compression);
  // zstd has no seek points to resume at: the layer is fetched whole and read as a local tar.
  return openLocalTarLayer(context, compression);
}

import { access } from 'node:fs/promises';
import { shortDigest } from '../oci/digest.js';
import { compressionOf } from '../oci/media-types.js';
import { parseReference } from '../reference/reference.js';
import { openSource } from '../source/open-source.js';
import { pullReference, type ReferenceOptions } from '../store/operations.js';
import type { Store } from '../store/store.js';
import { tocDigestAnnotation } from '../index/estargz/toc.js';
import { zstdChunkedAnnotations } from '../index/zstd-chunked/format.js';
import { loadOrBuildIndex } from './layers/span-indexed.js';
import { RemoteIndexes } from './remote-index.js';

export interface IndexedLayerReport {
  digest: string;
  format: 'gzip' | 'tar' | 'estargz' | 'zstd-chunked' | 'unsupported';
  entries?: number;
  checkpoints?: number;
  seconds?: number;
  /** Where the index came from: the store already, the registry's index artifact, or built now by streaming the layer. */
  from?: 'store' | 'registry' | 'built';
}

export interface IndexImageOptions extends ReferenceOptions {
  spanBytes?: number;
  /** Look for span indexes pushed to the registry before streaming a layer (default true). */
  remoteIndex?: boolean;
  /** Where an index artifact that is ignored, and why, is reported. */
  warn?: (message: string, error?: unknown) => void;
}

/**
 * `lazyroot index REF`: builds (or finds) the span index of every gzip and
 * uncompressed layer of an image, so a later `mount` reads them lazily at once.
 * eStargz and zstd:chunked layers carry their own TOC and need none. A layer
 * without an index in the store takes the one pushed to the registry
 * (`index --push`) when there is one that fits, else is streamed once.
 */
export async function indexImage(store: Store, ref: string, options: IndexImageOptions = {}): Promise<IndexedLayerReport[]> {
  const image = store.findImage(ref) ?? (await pullReference(store, ref, { ...options, fetchLayers: false })).image;
  const source = await openSource(parseReference(image.names[0]!), { tmpDir: store.paths.tmp, ...(options.registry ? { registry: options.registry } : {}) });
  const remote = options.remoteIndex !== false ? new RemoteIndexes(store, source, image, options.warn) : undefined;
  try {
    // Layers at once: each pass is one core's inflate.
    return await Promise.all(
      image.chainIds.map(async (chainId, i): Promise<IndexedLayerReport> => {
        const layer = store.db.layer(chainId)!;
        const blob = layer.blobs[0]!;
        if (blob.annotations?.[tocDigestAnnotation]) return { digest: blob.digest, format: 'estargz' };
        if (zstdChunkedAnnotations(blob.annotations) && compressionOf(blob.mediaType) === 'zstd') return { digest: blob.digest, format: 'zstd-chunked' };
        const compression = compressionOf(blob.mediaType);
        if (compression !== 'gzip' && compression !== 'none') return { digest: blob.digest, format: 'unsupported' };
        const started = Date.now();
        const what = `image ${shortDigest(image.id)}: layer ${i + 1} ${shortDigest(blob.digest)}`;
        let from: IndexedLayerReport['from'] = (await access(store.paths.index(blob.digest)).then(() => true, () => false)) ? 'store' : 'built';
        const index = await loadOrBuildIndex(store, source, blob, compression, what, layer.diffId, {
          ...(options.spanBytes !== undefined ? { spanBytes: options.spanBytes } : {}),
          ...(remote
            ? {
                remote: async () => {
                  const found = await remote.indexFor(blob, layer.diffId, compression, what, { whole: true });
                  if (found) from = 'registry';
                  return found;
                },
              }
            : {}),
        });
        return { digest: blob.digest, format: compression === 'gzip' ? 'gzip' : 'tar', entries: index.entries.length, checkpoints: index.checkpoints.length, seconds: (Date.now() - started) / 1000, from };
      }),
    );
  } finally {
    await source.close();
  }
}

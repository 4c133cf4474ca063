import { shortDigest } from '../oci/digest.js';
import { compressionOf } from '../oci/media-types.js';
import { parseReference } from '../reference/reference.js';
import { openSource } from '../source/open-source.js';
import { pullReference, type ReferenceOptions } from '../store/operations.js';
import type { Store } from '../store/store.js';
import { tocDigestAnnotation } from '../index/estargz/toc.js';
import { loadOrBuildIndex } from './lazy-mount.js';

export interface IndexedLayerReport {
  digest: string;
  format: 'gzip' | 'tar' | 'estargz' | 'unsupported';
  entries?: number;
  checkpoints?: number;
  seconds?: number;
}

/**
 * `lazyroot index REF`: builds (or finds) the span index of every gzip and
 * uncompressed layer of an image, so a later `mount` reads them lazily at once.
 * eStargz layers carry their own TOC and need none.
 */
export async function indexImage(store: Store, ref: string, options: ReferenceOptions = {}): Promise<IndexedLayerReport[]> {
  const image = store.findImage(ref) ?? (await pullReference(store, ref, { ...options, fetchLayers: false })).image;
  const source = await openSource(parseReference(image.names[0]!), { tmpDir: store.paths.tmp, ...(options.registry ? { registry: options.registry } : {}) });
  try {
    const out: IndexedLayerReport[] = [];
    for (const [i, chainId] of image.chainIds.entries()) {
      const layer = store.db.layer(chainId)!;
      const blob = layer.blobs[0]!;
      if (blob.annotations?.[tocDigestAnnotation]) {
        out.push({ digest: blob.digest, format: 'estargz' });
        continue;
      }
      const compression = compressionOf(blob.mediaType);
      if (compression !== 'gzip' && compression !== 'none') {
        out.push({ digest: blob.digest, format: 'unsupported' });
        continue;
      }
      const started = Date.now();
      const index = await loadOrBuildIndex(store, source, blob, compression, `image ${shortDigest(image.id)}: layer ${i + 1} ${shortDigest(blob.digest)}`, layer.diffId);
      out.push({ digest: blob.digest, format: compression === 'gzip' ? 'gzip' : 'tar', entries: index.entries.length, checkpoints: index.checkpoints.length, seconds: (Date.now() - started) / 1000 });
    }
    return out;
  } finally {
    await source.close();
  }
}

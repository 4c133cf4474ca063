import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { LazyrootError } from '../../errors.js';
import { createDecompressor } from '../../oci/compression.js';
import type { Digest } from '../../oci/digest.js';
import type { Compression } from '../../oci/media-types.js';
import type { ImageSource } from '../../source/image-source.js';
import type { Store } from '../../store/store.js';
import { readIndexFile, writeIndexFile } from '../../index/index-file.js';
import { buildTarIndex, type LayerIndex } from '../../index/layer-index.js';
import type { BlobRangeReader } from '../../index/types.js';
import { LayerRangeReader } from '../../index/gzip-reader.js';
import { blobLayerStats, type LayerContext, type LazyLayer } from './lazy-layer.js';
import { pathExists } from '../../store/path-exists.js';

/** A zstd (or other unseekable) layer as a LazyLayer: fetched whole before the mount, then read locally. */
export async function openLocalTarLayer(context: LayerContext, compression: Compression): Promise<LazyLayer> {
  const { store, source, descriptor, what } = context;
  const local = await localTarLayer(store, source, descriptor, compression, what, context.diffId);
  const blob = await context.openBlob();
  const reader = new LayerRangeReader({ cacheBytes: context.cacheBytes, cache: context.decodedCache });
  const layer = { compression: 'none' as const, blobDigest: descriptor.digest, compressedSize: local.tar.size, uncompressedSize: local.tar.size, checkpoints: local.index.checkpoints, blob: local.tar };
  return {
    digest: descriptor.digest,
    kind: 'zstd',
    uncompressedSize: local.tar.size,
    entries: local.index.entries,
    blob,
    read: (entry, position, length) => reader.readFileRange(entry, position, length, layer),
    prefetchUnits: () => [],
    // Fetched whole before the mount: nothing is left to fetch ahead.
    fetchAhead: async () => undefined,
    priorityRanges: [],
    stats: () => blobLayerStats('zstd', descriptor.digest, blob, local.downloaded),
    close: async () => {
      await local.tar.close();
      await blob.close();
    },
  };
}

/**
 * A layer that cannot be read by range in its stored form (zstd: not seekable
 * without a frame index) is made readable locally instead: the blob is
 * downloaded once (verified), decompressed once into `indexes/<alg>/<hex>.tar`,
 * and indexed as an uncompressed tar. Not lazy — the price of the format —
 * but it mounts, with the same tree as every other layer.
 */
export async function localTarLayer(
  store: Store,
  source: ImageSource,
  descriptor: { digest: Digest; size: number; mediaType: string },
  compression: Compression,
  what: string,
  diffId: Digest,
): Promise<{ index: LayerIndex; tar: BlobRangeReader & { close(): Promise<void> }; downloaded: number }> {
  const indexPath = `${store.paths.index(descriptor.digest)}.local`;
  const tarPath = `${store.paths.index(descriptor.digest)}.tar`;
  await mkdir(dirname(tarPath), { recursive: true });
  let downloaded = 0;
  if (!(await pathExists(tarPath))) {
    ({ transferred: downloaded } = await store.blobs.ingest(descriptor.digest, descriptor.size, (offset) => source.openBlob(descriptor, offset), { what }));
    const tmp = `${tarPath}.${process.pid}.tmp`;
    try {
      await pipeline(store.blobs.openRead(descriptor.digest), createDecompressor(compression), createWriteStream(tmp));
      await rename(tmp, tarPath);
    } catch (err) {
      await rm(tmp, { force: true });
      throw new LazyrootError('INVALID_ARGUMENT', `${what}: cannot decompress (${compression}): ${(err as Error).message}`, { cause: err });
    }
  }
  let index: LayerIndex;
  if (await pathExists(indexPath)) index = await readIndexFile(indexPath);
  else {
    index = await buildTarIndex(createReadStream(tarPath), { what, expectDiffId: diffId });
    await writeIndexFile(indexPath, index, { tmpDir: store.paths.tmp });
  }
  const file = await open(tarPath, 'r');
  const size = (await file.stat()).size;
  return {
    index,
    downloaded,
    tar: {
      size,
      async read(start: number, end: number): Promise<Buffer> {
        const out = Buffer.allocUnsafe(end - start);
        const { bytesRead } = await file.read(out, 0, out.length, start);
        return out.subarray(0, bytesRead);
      },
      close: () => file.close(),
    },
  };
}


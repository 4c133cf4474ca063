import { access, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { LazyrootError } from '../errors.js';
import { shortDigest, type Digest } from '../oci/digest.js';
import { compressionOf } from '../oci/media-types.js';
import { parseReference } from '../reference/reference.js';
import type { ImageSource } from '../source/image-source.js';
import { openSource } from '../source/open-source.js';
import { LazyBlob } from '../store/lazy-blob.js';
import type { ImageRecord } from '../store/metadata-db.js';
import { pullReference, type ReferenceOptions } from '../store/operations.js';
import type { Store } from '../store/store.js';
import { readEstargzIndex, tocDigestAnnotation } from '../index/estargz/toc.js';
import { EstargzChunkCache, readEstargzFile } from '../index/estargz/reader.js';
import { LayerRangeReader } from '../index/gzip-reader.js';
import { readIndexFile, writeIndexFile } from '../index/index-file.js';
import { buildGzipIndex, buildTarIndex, type LayerIndex } from '../index/layer-index.js';
import type { IndexEntry } from '../index/types.js';
import { mergeLayers } from '../union/merge.js';
import { buildTree, type FsNode } from '../fs/tree.js';
import { mountTree, type FsStats, type MountedTree } from '../fs/lazy-fs.js';

export interface LazyMountOptions extends ReferenceOptions {
  /** A read whose bytes have not arrived after this long fails with EIO. Default 30 s. */
  deadlineMs?: number;
  /** Decoded spans/chunks kept in memory, bytes. Default 64 MiB. */
  cacheBytes?: number;
  allowOther?: boolean;
  /** Where mount failures are logged. */
  logger?: (message: string, error: unknown) => void;
}

/** How one layer's files are read: by eStargz chunks or by the span index. */
type LayerFileRead = (entry: IndexEntry, position: number, length: number) => Promise<Buffer>;

interface PreparedLayer {
  digest: Digest;
  format: 'estargz' | 'gzip' | 'tar';
  entries: IndexEntry[];
  read: LayerFileRead;
  blob: LazyBlob;
}

export interface LazyMountStats {
  fs: FsStats;
  layers: Array<{ digest: Digest; format: string; size: number; present: number; bytesFetched: number; requests: number; hits: number; misses: number; failures: number; fetchMillis: number }>;
  bytesFetched: number;
  imageBytes: number;
  rangeSupport: string;
}

export interface LazyMount {
  image: ImageRecord;
  mountpoint: string;
  stats(): LazyMountStats;
  unmount(): Promise<void>;
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/**
 * `lazyroot mount`: the image's merged root filesystem, read-only, over FUSE,
 * before its layers are downloaded. Only the manifest and config are fetched
 * up front; each layer is indexed (eStargz: its TOC by two range reads;
 * gzip/tar: a stored index, or one built by streaming the layer once), the
 * indexes are merged with the same union rules as the overlay path, and file
 * bytes are fetched by range when read, verified, and kept in the store.
 */
export async function mountImageLazily(store: Store, ref: string, mountpoint: string, options: LazyMountOptions = {}): Promise<LazyMount> {
  const image = store.findImage(ref) ?? (await pullReference(store, ref, { ...options, fetchLayers: false })).image;
  const name = image.names[0];
  if (!name) throw new LazyrootError('FAILED_PRECONDITION', `image ${shortDigest(image.id)} has no name to fetch its layers by`);
  const source = await openSource(parseReference(name.startsWith('tarball:') ? name.slice(8) : name), {
    tmpDir: store.paths.tmp,
    ...(options.registry ? { registry: options.registry } : {}),
  });
  const layers: PreparedLayer[] = [];
  try {
    for (const [i, chainId] of image.chainIds.entries()) {
      layers.push(await prepareLayer(store, source, image, i, chainId, options));
    }
    const merged = mergeLayers(
      layers.map((l) => l.entries),
      (i) => `layer ${i + 1}/${layers.length} ${shortDigest(layers[i]!.digest)}`,
    );
    const tree = buildTree(merged);
    const reader = {
      read(node: FsNode, position: number, length: number): Promise<Buffer> {
        const entry = node.entry!;
        return layers[entry.layer]!.read(entry, position, length);
      },
    };
    const mounted: MountedTree = await mountTree(tree, mountpoint, reader, {
      ...(options.allowOther !== undefined ? { allowOther: options.allowOther } : {}),
      timeoutMs: (options.deadlineMs ?? 30_000) + 5_000,
      fsName: `lazyroot:${name}`,
      ...(options.logger ? { logger: options.logger } : {}),
    });
    return {
      image,
      mountpoint,
      stats: () => {
        const per = layers.map((l) => ({ digest: l.digest, format: l.format, size: l.blob.size, present: l.blob.bytesPresent, ...l.blob.stats }));
        return {
          fs: mounted.stats(),
          layers: per,
          bytesFetched: per.reduce((n, l) => n + l.bytesFetched, 0),
          imageBytes: per.reduce((n, l) => n + l.size, 0),
          rangeSupport: (source as { rangeSupport?: string }).rangeSupport ?? 'local',
        };
      },
      unmount: async () => {
        await mounted.unmount();
        for (const l of layers) await l.blob.close();
        await source.close();
      },
    };
  } catch (err) {
    for (const l of layers) await l.blob.close().catch(() => undefined);
    await source.close().catch(() => undefined);
    throw err;
  }
}

/** The path a merged entry has in its own layer's index (chunk maps are keyed by it). */
function sourcePathOf(entry: IndexEntry): string {
  return (entry as IndexEntry & { sourcePath?: string }).sourcePath ?? entry.path;
}

async function prepareLayer(store: Store, source: ImageSource, image: ImageRecord, i: number, chainId: Digest, options: LazyMountOptions): Promise<PreparedLayer> {
  const record = store.db.layer(chainId);
  const blobRecord = record?.blobs[0];
  if (!record || !blobRecord) throw new LazyrootError('NOT_FOUND', `image ${shortDigest(image.id)}: layer ${i + 1} not in the store`);
  const what = `image ${shortDigest(image.id)}: layer ${i + 1}/${image.chainIds.length} ${shortDigest(blobRecord.digest)}`;
  const descriptor = { digest: blobRecord.digest, size: blobRecord.size, mediaType: blobRecord.mediaType, ...(blobRecord.annotations ? { annotations: blobRecord.annotations } : {}) };
  if (!source.readRange) throw new LazyrootError('UNSUPPORTED', `${what}: the source cannot read byte ranges`);
  const readRange = source.readRange.bind(source);
  const blob = await LazyBlob.open(store, descriptor.digest, descriptor.size, (start, end, signal) => readRange(descriptor, start, end, { signal }), {
    what,
    ...(options.deadlineMs !== undefined ? { deadlineMs: options.deadlineMs } : {}),
  });
  const cacheBytes = options.cacheBytes ?? 64 << 20;

  const tocDigest = blobRecord.annotations?.[tocDigestAnnotation];
  if (tocDigest) {
    const index = await readEstargzIndex(blob, { tocDigest, what });
    const cache = new EstargzChunkCache(cacheBytes);
    return {
      digest: descriptor.digest,
      format: 'estargz',
      entries: index.entries,
      blob,
      read: (entry, position, length) => readEstargzFile(entry, index.chunks.get(sourcePathOf(entry)) ?? [], position, length, blob, { cache, what }),
    };
  }

  const compression = compressionOf(descriptor.mediaType);
  if (compression !== 'gzip' && compression !== 'none') throw new LazyrootError('UNSUPPORTED', `${what}: lazy mounts read gzip, uncompressed and eStargz layers (this one is ${descriptor.mediaType})`);
  const index = await loadOrBuildIndex(store, source, descriptor, compression, what, record.diffId);
  const reader = new LayerRangeReader({ cacheBytes });
  const layer = { compression: index.compression, blobDigest: index.blobDigest, compressedSize: index.compressedSize, uncompressedSize: index.uncompressedSize, checkpoints: index.checkpoints, blob };
  return {
    digest: descriptor.digest,
    format: compression === 'gzip' ? 'gzip' : 'tar',
    entries: index.entries,
    blob,
    read: (entry, position, length) => reader.readFileRange(entry, position, length, layer),
  };
}

/**
 * The layer's span index from the store, or built now by streaming the layer
 * once (verified against its digest and diff ID) and kept for every image
 * that uses the blob. `lazyroot index` builds them ahead of time.
 */
export async function loadOrBuildIndex(
  store: Store,
  source: ImageSource,
  descriptor: { digest: Digest; size: number; mediaType: string },
  compression: 'gzip' | 'none',
  what: string,
  diffId: Digest,
): Promise<LayerIndex> {
  const path = store.paths.index(descriptor.digest);
  if (await exists(path)) return readIndexFile(path);
  const local = await store.blobs.has(descriptor.digest, descriptor.size);
  const stream = local ? store.blobs.openRead(descriptor.digest) : await source.openBlob(descriptor);
  const options = { what, expectDigest: descriptor.digest, expectDiffId: diffId };
  const index = compression === 'gzip' ? await buildGzipIndex(stream, options) : await buildTarIndex(stream, options);
  await mkdir(dirname(path), { recursive: true });
  await writeIndexFile(path, index, { tmpDir: store.paths.tmp });
  return index;
}

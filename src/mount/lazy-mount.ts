import { createHash } from 'node:crypto';
import { access, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { DigestMismatchError, LazyrootError } from '../errors.js';
import { shortDigest, type Digest } from '../oci/digest.js';
import { compressionOf } from '../oci/media-types.js';
import { parseReference } from '../reference/reference.js';
import type { ImageSource } from '../source/image-source.js';
import { openSource } from '../source/open-source.js';
import { LazyBlob, LazyBlobGroup, type PrefetchState, type PrefetchUnit } from '../store/lazy-blob.js';
import type { ImageRecord } from '../store/metadata-db.js';
import { pullReference, type ReferenceOptions } from '../store/operations.js';
import type { Store } from '../store/store.js';
import { readEstargzIndex, tocDigestAnnotation, type EstargzIndex, type EstargzMemberChunk } from '../index/estargz/toc.js';
import { EstargzChunkCache, readEstargzFile } from '../index/estargz/reader.js';
import { spanStart } from '../index/gzip-native.js';
import { LayerRangeReader } from '../index/gzip-reader.js';
import { readIndexFile, writeIndexFile } from '../index/index-file.js';
import { buildGzipIndex, buildTarIndex, LayerIndexBuilder, type LayerIndex } from '../index/layer-index.js';
import type { BlobRangeReader, IndexEntry } from '../index/types.js';
import { mergeLayers } from '../union/merge.js';
import { buildTree, type FsNode } from '../fs/tree.js';
import { localTarLayer } from './local-tar-layer.js';
import { mountTree, type FsStats, type MountedTree } from '../fs/lazy-fs.js';

export interface LazyMountOptions extends ReferenceOptions {
  /** A read whose bytes have not arrived after this long fails with EIO. Default 30 s. */
  deadlineMs?: number;
  /** Decoded spans/chunks kept in memory, bytes. Default 64 MiB. */
  cacheBytes?: number;
  allowOther?: boolean;
  /** Where mount failures are logged. */
  logger?: (message: string, error: unknown) => void;
  /**
   * Once mounted, download the rest of every layer in the background (one
   * request per layer at a time, paused while reads wait), verify it, and
   * promote each finished blob to blobs/ so the next create/run uses kernel
   * overlayfs. Default true.
   */
  prefetch?: boolean;
  /** Prefetch starts this long after the mount is ready. Default 1000 ms. */
  prefetchDelayMs?: number;
  /**
   * Bound on the bytes kept in partial blobs of this mount's incomplete
   * layers; past it the least recently used verified ranges are dropped
   * (and fetched again when read). Prefetch stays under it. Default: no bound.
   */
  cacheMaxBytes?: number;
}

/** How one layer's files are read: by eStargz chunks or by the span index. */
type LayerFileRead = (entry: IndexEntry, position: number, length: number) => Promise<Buffer>;

interface PreparedLayer {
  digest: Digest;
  /** 'zstd' (and any other unseekable compression): fetched whole, read as a local tar. */
  format: 'estargz' | 'gzip' | 'tar' | 'zstd';
  entries: IndexEntry[];
  read: LayerFileRead;
  blob: LazyBlob;
  /** The pieces prefetch fetches, in order, each with how it is verified. */
  prefetchUnits(): PrefetchUnit[];
  /** Bytes downloaded whole before the mount to build a missing index (or, for zstd, to read it at all). */
  indexedBytes?: number;
}

export interface LazyLayerStats {
  digest: Digest;
  format: string;
  size: number;
  /** Verified bytes on disk (the whole size once complete). */
  present: number;
  /** In blobs/, verified whole. */
  complete: boolean;
  /** 'streamed' when it was downloaded whole because the registry ignores Range. */
  source: 'ranges' | 'streamed';
  prefetch: PrefetchState;
  prefetchError?: string;
  /** Demand reads' bytes and requests. */
  bytesFetched: number;
  requests: number;
  hits: number;
  misses: number;
  failures: number;
  fetchMillis: number;
  bytesPrefetched: number;
  prefetchRequests: number;
  prefetchFailures: number;
  bytesStreamed: number;
  evictedBytes: number;
  /** Downloaded whole before the mount: to build a missing index, or to read an unseekable (zstd) layer. */
  bytesIndexed: number;
}

export interface LazyMountStats {
  fs: FsStats;
  layers: LazyLayerStats[];
  /** Bytes demand reads fetched. */
  bytesFetched: number;
  /** Bytes background prefetch fetched. */
  bytesPrefetched: number;
  /** Bytes downloaded by streaming whole blobs (registry ignores Range). */
  bytesStreamed: number;
  /** Bytes downloaded whole before the mount, to build missing indexes (or to read zstd layers). */
  bytesIndexed: number;
  imageBytes: number;
  rangeSupport: string;
  /** Every layer is in blobs/. */
  complete: boolean;
  prefetch: boolean;
  /** Milliseconds from the mount being ready until every layer was complete (when prefetch got it there). */
  prefetchMillis?: number;
  /** Bytes kept in partial blobs of incomplete layers, and the bound on them. */
  partialBytes: number;
  cacheMaxBytes?: number;
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
 *
 * Then, unless `prefetch: false`, the rest of every layer is fetched in the
 * background (LazyBlob.prefetch: the eStargz prioritized region first, one
 * request per layer at a time, paused while reads wait), verified span by
 * span or chunk by chunk, and each finished blob is checked whole and moved to
 * blobs/ with its `blobs` row: the next create/run uses kernel overlayfs and
 * downloads nothing. A registry that answers Range with the whole blob gets
 * each blob streamed into the store once instead. `cacheMaxBytes` bounds the
 * bytes kept for layers not yet complete.
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
  const group = new LazyBlobGroup(options.cacheMaxBytes !== undefined ? { cacheMaxBytes: options.cacheMaxBytes } : {});
  const rangeSupport = (): string => (source as { rangeSupport?: string }).rangeSupport ?? 'local';
  const opened = new Map<Digest, Promise<LazyBlob>>();
  const closers: Array<() => Promise<void>> = [];
  const blobs = async () => [...new Set(await Promise.allSettled(opened.values()))].flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const closeAll = async () => {
    for (const b of await blobs()) await b.close().catch(() => undefined);
    for (const close of closers) await close().catch(() => undefined);
    await source.close().catch(() => undefined);
  };
  try {
    // Layers are prepared at once (each is a TOC fetch or an index read, mostly waiting on I/O),
    // except that the first goes alone until the registry's first answer shows whether it
    // honours Range: if it does not, each other layer streams its blob once instead of also
    // paying for a whole-blob answer to a ranged request.
    const context = { group, opened, closers, rangeIgnored: () => rangeSupport() === 'ignored' };
    const [firstId, ...others] = image.chainIds;
    if (firstId) {
      const first = prepareLayer(store, source, image, 0, firstId, options, context);
      const rest = others.map(async (chainId, i) => {
        await untilSettledOr(first, () => rangeSupport() !== 'unknown');
        return prepareLayer(store, source, image, i + 1, chainId, options, context);
      });
      layers.push(...(await Promise.all([first, ...rest])));
    }
    // A lower bound than a previous run's: trim what that run kept.
    group.enforceBound();
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
    const readyAt = Date.now();
    let prefetchMillis: number | undefined;
    const stopPrefetch = new AbortController();
    const prefetching = options.prefetch === false ? Promise.resolve() : prefetchAll();

    /**
     * Every layer's blob in the background. While the registry's Range
     * support is unknown only the first layer starts: if its first answer
     * shows Range is ignored, the others stream their blob whole at once
     * instead of each learning it from a wasted whole-blob answer.
     */
    async function prefetchAll(): Promise<void> {
      group.holdPrefetch(options.prefetchDelayMs ?? 1000);
      const { signal } = stopPrefetch;
      // Incomplete blobs first: the first one is the probe of the registry's Range support.
      const unique = layers.filter((l, i) => layers.findIndex((o) => o.blob === l.blob) === i).sort((a, b) => Number(a.blob.isComplete) - Number(b.blob.isComplete));
      let first: Promise<void> | undefined;
      const one = async (layer: PreparedLayer, i: number): Promise<void> => {
        if (i > 0 && first) await untilSettledOr(first, () => rangeSupport() !== 'unknown' || signal.aborted);
        try {
          await layer.blob.prefetch(layer.prefetchUnits(), { signal });
        } catch (err) {
          if (!signal.aborted) options.logger?.(`prefetch of ${layer.blob.digest} stopped`, err);
        }
      };
      if (unique.length === 0) return;
      first = one(unique[0]!, 0);
      await Promise.all([first, ...unique.slice(1).map((l, i) => one(l, i + 1))]);
      if (unique.every((l) => l.blob.isComplete)) prefetchMillis = Date.now() - readyAt;
    }

    return {
      image,
      mountpoint,
      stats: () => {
        const per: LazyLayerStats[] = layers.map((l) => ({
          digest: l.digest,
          format: l.format,
          size: l.blob.size,
          present: l.blob.bytesPresent,
          complete: l.blob.isComplete,
          source: l.blob.completedBy === 'streamed' ? 'streamed' : 'ranges',
          prefetch: l.blob.prefetchState,
          ...(l.blob.prefetchError ? { prefetchError: l.blob.prefetchError } : {}),
          ...l.blob.stats,
          bytesIndexed: l.indexedBytes ?? 0,
        }));
        const sum = (f: (l: LazyLayerStats) => number) => per.reduce((n, l) => n + f(l), 0);
        return {
          fs: mounted.stats(),
          layers: per,
          bytesFetched: sum((l) => l.bytesFetched),
          bytesPrefetched: sum((l) => l.bytesPrefetched),
          bytesStreamed: sum((l) => l.bytesStreamed),
          bytesIndexed: sum((l) => l.bytesIndexed),
          imageBytes: sum((l) => l.size),
          rangeSupport: rangeSupport(),
          complete: per.every((l) => l.complete),
          prefetch: options.prefetch !== false,
          ...(prefetchMillis !== undefined ? { prefetchMillis } : {}),
          partialBytes: group.partialBytes,
          ...(group.cacheMaxBytes !== undefined ? { cacheMaxBytes: group.cacheMaxBytes } : {}),
        };
      },
      unmount: async () => {
        stopPrefetch.abort();
        await prefetching.catch(() => undefined);
        await mounted.unmount();
        await closeAll();
      },
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Resolves when `work` settles or `done()` turns true, whichever is first (checked every 5 ms). */
async function untilSettledOr(work: Promise<unknown>, done: () => boolean): Promise<void> {
  let settled = false;
  void work.then(
    () => (settled = true),
    () => (settled = true),
  );
  while (!settled && !done()) await delay(5);
}

/** The path a merged entry has in its own layer's index (chunk maps are keyed by it). */
function sourcePathOf(entry: IndexEntry): string {
  return (entry as IndexEntry & { sourcePath?: string }).sourcePath ?? entry.path;
}

interface LayerContext {
  group: LazyBlobGroup;
  /** Blobs already opened for this mount: an image may use one blob twice. */
  opened: Map<Digest, Promise<LazyBlob>>;
  rangeIgnored: () => boolean;
  /** Closed with the mount (local tar files of unseekable layers). */
  closers: Array<() => Promise<void>>;
}

async function prepareLayer(
  store: Store,
  source: ImageSource,
  image: ImageRecord,
  i: number,
  chainId: Digest,
  options: LazyMountOptions,
  context: LayerContext,
): Promise<PreparedLayer> {
  const record = store.db.layer(chainId);
  const blobRecord = record?.blobs[0];
  if (!record || !blobRecord) throw new LazyrootError('NOT_FOUND', `image ${shortDigest(image.id)}: layer ${i + 1} not in the store`);
  const what = `image ${shortDigest(image.id)}: layer ${i + 1}/${image.chainIds.length} ${shortDigest(blobRecord.digest)}`;
  const descriptor = { digest: blobRecord.digest, size: blobRecord.size, mediaType: blobRecord.mediaType, ...(blobRecord.annotations ? { annotations: blobRecord.annotations } : {}) };
  if (!source.readRange) throw new LazyrootError('UNSUPPORTED', `${what}: the source cannot read byte ranges`);
  const readRange = source.readRange.bind(source);
  const openBlob = async (): Promise<LazyBlob> => {
    const known = context.opened.get(descriptor.digest);
    if (known) return known;
    const blob = LazyBlob.open(store, descriptor.digest, descriptor.size, (start, end, signal) => readRange(descriptor, start, end, { signal }), {
      what,
      mediaType: descriptor.mediaType,
      group: context.group,
      openStream: (offset, signal) => source.openBlob(descriptor, offset, { signal }),
      rangeIgnored: context.rangeIgnored,
      ...(options.deadlineMs !== undefined ? { deadlineMs: options.deadlineMs } : {}),
    });
    context.opened.set(descriptor.digest, blob);
    return blob;
  };
  const cacheBytes = options.cacheBytes ?? 64 << 20;

  const tocDigest = blobRecord.annotations?.[tocDigestAnnotation];
  if (tocDigest) {
    const blob = await openBlob();
    // The footer and TOC are checked as a whole (the TOC digest), not piecewise: kept, but only
    // the whole blob's digest lets them count as verified.
    const indexReader: BlobRangeReader = { size: blob.size, read: (start, end) => blob.readUnverified(start, end) };
    const index = await readEstargzIndex(indexReader, { tocDigest, what });
    const cache = new EstargzChunkCache(cacheBytes);
    return {
      digest: descriptor.digest,
      format: 'estargz',
      entries: index.entries,
      blob,
      read: (entry, position, length) => readEstargzFile(entry, index.chunks.get(sourcePathOf(entry)) ?? [], position, length, blob, { cache, what }),
      prefetchUnits: () => estargzPrefetchUnits(index, blob.size, what),
    };
  }

  const compression = compressionOf(descriptor.mediaType);
  if (!compression) throw new LazyrootError('UNSUPPORTED', `${what}: not a layer media type: ${descriptor.mediaType}`);
  if (compression !== 'gzip' && compression !== 'none') {
    // zstd has no seek points to resume at: the layer is fetched whole and read as a local tar.
    const local = await localTarLayer(store, source, descriptor, compression, what, record.diffId);
    context.closers.push(() => local.tar.close());
    const blob = await openBlob();
    const reader = new LayerRangeReader({ cacheBytes });
    const layer = { compression: 'none' as const, blobDigest: descriptor.digest, compressedSize: local.tar.size, uncompressedSize: local.tar.size, checkpoints: local.index.checkpoints, blob: local.tar };
    return {
      digest: descriptor.digest,
      format: compression,
      entries: local.index.entries,
      blob,
      read: (entry, position, length) => reader.readFileRange(entry, position, length, layer),
      prefetchUnits: () => [],
      indexedBytes: local.downloaded,
    };
  }
  // A layer streamed to build its index is kept (verified whole): it is complete then, and no
  // read fetches its bytes again.
  let indexedBytes = 0;
  const index = await loadOrBuildIndex(store, source, descriptor, compression, what, record.diffId, { keepBlob: true, onDownloaded: (n) => (indexedBytes += n) });
  const blob = await openBlob();
  const reader = new LayerRangeReader({ cacheBytes });
  const layer = { compression: index.compression, blobDigest: index.blobDigest, compressedSize: index.compressedSize, uncompressedSize: index.uncompressedSize, checkpoints: index.checkpoints, blob };
  return {
    digest: descriptor.digest,
    format: compression === 'gzip' ? 'gzip' : 'tar',
    entries: index.entries,
    blob,
    read: (entry, position, length) => reader.readFileRange(entry, position, length, layer),
    prefetchUnits: () => spanPrefetchUnits(index, blob.size, what),
    indexedBytes,
  };
}

/**
 * Prefetch units of a gzip or uncompressed layer: its spans, each checked
 * against the span digest of the index (the check LayerRangeReader makes
 * before it confirms a span), in blob order.
 */
function spanPrefetchUnits(index: LayerIndex, size: number, what: string): PrefetchUnit[] {
  const cps = index.checkpoints;
  const units: PrefetchUnit[] = [];
  cps.forEach((cp, i) => {
    const start = index.compression === 'gzip' ? spanStart(cp) : cp.compressedOffset;
    const end = i + 1 < cps.length ? cps[i + 1]!.compressedOffset : index.compressedSize;
    if (end <= start) return;
    units.push({
      start,
      end,
      verify: async (bytes) => {
        const got = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
        if (got !== cp.spanDigest) throw new DigestMismatchError(`${what}: span ${i} (bytes ${start}-${end})`, cp.spanDigest, got);
      },
    });
  });
  return withGaps(units, size);
}

/**
 * Prefetch units of an eStargz layer: one per gzip member holding file
 * chunks, verified by running every chunk in it through readEstargzFile
 * (inflate, check chunkDigest) against the fetched bytes; the prioritized
 * region (entries before `.prefetch.landmark`, which the blob holds first)
 * comes first. Tar headers of entries without data, the landmarks, the TOC
 * and the footer lie between or after the members: they become unverified
 * units that only the whole blob's digest vouches for.
 */
function estargzPrefetchUnits(index: EstargzIndex, size: number, what: string): PrefetchUnit[] {
  const members = new Map<number, { end: number; chunks: Array<{ path: string; chunk: EstargzMemberChunk }> }>();
  for (const [path, chunks] of index.chunks) {
    for (const chunk of chunks) {
      let member = members.get(chunk.compressedStart);
      if (!member) members.set(chunk.compressedStart, (member = { end: chunk.compressedEnd, chunks: [] }));
      member.end = Math.max(member.end, chunk.compressedEnd);
      member.chunks.push({ path, chunk });
    }
  }
  // A cache of one byte, cleared before each chunk: a chunk is never taken from it, so every
  // chunk's bytes are the fetched ones and are inflated and checked.
  const cache = new EstargzChunkCache(1);
  const units: PrefetchUnit[] = [...members].map(([start, member]) => ({
    start,
    end: member.end,
    verify: async (bytes) => {
      for (const { path, chunk } of member.chunks) {
        cache.clear();
        let used = false;
        const view: BlobRangeReader = {
          size,
          read: async (s, e) => {
            used = true;
            return bytes.subarray(s - start, e - start);
          },
        };
        const entry: IndexEntry = { path, type: 'file', mode: 0o644, uid: 0, gid: 0, size: chunk.offset + chunk.size, mtime: 0 };
        await readEstargzFile(entry, [chunk], chunk.offset, chunk.size, view, { cache, what });
        if (!used) throw new LazyrootError('INVALID_ARGUMENT', `${what}: ${JSON.stringify(path)}: chunk at ${chunk.offset} was not checked against the fetched bytes`);
      }
    },
  }));
  const all = withGaps(units, size);
  const prioritized = index.prefetch.compressedEnd;
  return [...all.filter((u) => u.start < prioritized), ...all.filter((u) => u.start >= prioritized)];
}

/** `units` sorted by start, with unverified units filling whatever of [0, size) they leave out. */
function withGaps(units: PrefetchUnit[], size: number): PrefetchUnit[] {
  const sorted = [...units].sort((a, b) => a.start - b.start);
  const out: PrefetchUnit[] = [];
  let covered = 0;
  for (const u of sorted) {
    if (u.start > covered) out.push({ start: covered, end: u.start });
    out.push(u);
    covered = Math.max(covered, u.end);
  }
  if (covered < size) out.push({ start: covered, end: size });
  return out;
}

/**
 * The layer's span index from the store, or built now by streaming the layer
 * once (verified against its digest and diff ID) and kept for every image
 * that uses the blob. `lazyroot index` builds them ahead of time. With
 * `keepBlob` the streamed blob is also stored in blobs/ (verified by
 * `BlobStore.ingest`) instead of being thrown away: a prefetching mount has
 * the whole layer then and nothing more to fetch for it.
 */
export async function loadOrBuildIndex(
  store: Store,
  source: ImageSource,
  descriptor: { digest: Digest; size: number; mediaType: string },
  compression: 'gzip' | 'none',
  what: string,
  diffId: Digest,
  options: { keepBlob?: boolean; spanBytes?: number; onDownloaded?: (bytes: number) => void } = {},
): Promise<LayerIndex> {
  const path = store.paths.index(descriptor.digest);
  if (await exists(path)) return readIndexFile(path);
  const local = await store.blobs.has(descriptor.digest, descriptor.size);
  const buildOptions = { what, expectDigest: descriptor.digest, expectDiffId: diffId, ...(options.spanBytes !== undefined ? { spanBytes: options.spanBytes } : {}) };
  let index: LayerIndex;
  if (options.keepBlob && !local) {
    const builder = new LayerIndexBuilder(compression, buildOptions);
    const { transferred } = await store.blobs.ingest(descriptor.digest, descriptor.size, (offset) => source.openBlob(descriptor, offset), { what, tap: (chunk) => builder.write(chunk) });
    options.onDownloaded?.(transferred);
    store.db.recordBlob(descriptor.digest, descriptor.size, descriptor.mediaType);
    index = await builder.finish();
  } else {
    const stream = local ? store.blobs.openRead(descriptor.digest) : await source.openBlob(descriptor);
    index = compression === 'gzip' ? await buildGzipIndex(stream, buildOptions) : await buildTarIndex(stream, buildOptions);
    if (!local) options.onDownloaded?.(descriptor.size);
  }
  await mkdir(dirname(path), { recursive: true });
  await writeIndexFile(path, index, { tmpDir: store.paths.tmp });
  return index;
}

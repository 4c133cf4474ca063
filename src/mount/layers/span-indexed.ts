import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rm, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { DigestMismatchError, LazyrootError } from '../../errors.js';
import type { Digest } from '../../oci/digest.js';
import type { ImageSource } from '../../source/image-source.js';
import type { Store } from '../../store/store.js';
import type { PrefetchUnit } from '../../store/lazy-blob.js';
import { inflateFromAsync, spanStart } from '../../index/gzip-native.js';
import { LayerRangeReader, type IndexedLayer } from '../../index/gzip-reader.js';
import { decodeIndex, encodeIndex, fetchesWindows, readIndexFile, writeIndexFile } from '../../index/index-file.js';
import type { GzipCheckpoint, IndexEntry } from '../../index/types.js';
import { SpanIndexHeaderCheck } from '../../index/span-header-check.js';
import { writeFileAtomic } from '../../store/atomic-file.js';
import { buildGzipIndex, buildTarIndex, LayerIndexBuilder, type LayerIndex } from '../../index/layer-index.js';
import { windowReach } from '../../index/window-trim.js';
import { blobLayerStats, type LayerContext, type LayerFile, type LazyLayer } from './lazy-layer.js';
import { withGaps } from './prefetch-units.js';
import { pathExists } from '../../store/path-exists.js';

/**
 * A gzip or uncompressed tar layer read through its span index: the stored
 * one, or one built now by streaming the layer once. The streamed blob is
 * kept (verified whole), so it is complete then and no read fetches its
 * bytes again.
 */
export async function openSpanIndexedLayer(context: LayerContext, compression: 'gzip' | 'none'): Promise<LazyLayer> {
  const { store, source, descriptor, what } = context;
  let indexedBytes = 0;
  const remote = context.remoteIndex;
  let fromRegistry = false;
  const index = await loadOrBuildIndex(store, source, descriptor, compression, what, context.diffId, {
    keepBlob: true,
    onDownloaded: (n) => (indexedBytes += n),
    ...(remote
      ? {
          remote: async () => {
            const found = await remote.indexFor(descriptor, context.diffId, compression, what);
            fromRegistry = found !== undefined;
            return found;
          },
        }
      : {}),
  });
  const blob = await context.openBlob();
  const reader = new LayerRangeReader({ cacheBytes: context.cacheBytes, cache: context.decodedCache });
  const layer: IndexedLayer = { compression: index.compression, blobDigest: index.blobDigest, compressedSize: index.compressedSize, uncompressedSize: index.uncompressedSize, checkpoints: index.checkpoints, blob };
  const kind = compression === 'gzip' ? 'gzip' : 'tar';
  // An index from the registry is believed about a file only once the tar header before its bytes agrees.
  const headers = fromRegistry || (await pathExists(remoteIndexMarker(store, descriptor.digest)))
    ? new SpanIndexHeaderCheck(index, (start, end) => reader.readUncompressed(layer, start, end), what, context.log)
    : undefined;
  if (headers) {
    // What no per-file check sees (directories, modes, owners, links) is checked once the blob is whole:
    // the index built from the complete layer must be the one the registry gave, else this mount's
    // reads fail and the stored index goes (the next mount builds its own).
    blob.checkWholeWith(async (path) => {
      const stream = createReadStream(path, { highWaterMark: 1 << 20 });
      const options = { what, expectDigest: descriptor.digest, expectDiffId: context.diffId };
      const encoded = encodeIndex(compression === 'gzip' ? await buildGzipIndex(stream, options) : await buildTarIndex(stream, options));
      const built = decodeIndex(encoded);
      const why = entriesDisagree(index.entries, built.entries) ?? (await checkpointsDisagree(index.checkpoints, built, path));
      if (why) {
        await rm(store.paths.index(descriptor.digest), { force: true });
        await rm(remoteIndexMarker(store, descriptor.digest), { force: true });
        const err = new LazyrootError('INVALID_DATA', `${what}: refused: the span index from the registry disagrees with the layer's tar stream: ${why}; it is removed from the store`);
        context.log?.(`${what}: refused`, err);
        throw err;
      }
      // A window no checkpoint built here could vouch for (another span size) was the registry's word
      // alone: this machine's index replaces it, for this mount's reads from now on and every later mount.
      await writeFileAtomic(store.paths.index(descriptor.digest), encoded, store.paths.tmp);
      layer.checkpoints = built.checkpoints;
      layer.cacheKey = `${descriptor.digest}@built-here`;
      await rm(remoteIndexMarker(store, descriptor.digest), { force: true });
      headers.markWholeChecked();
    });
  }
  let units: PrefetchUnit[] | undefined;
  // As for eStargz: a read fetches the region around the spans it needs (its neighbours when reads
  // are many at once or go on in order), not its spans alone; the reader then finds them kept.
  const fetchAround = async (entry: LayerFile, position: number, length: number): Promise<void> => {
    if (context.readAheadBytes <= 0 || blob.isComplete) return;
    const range = reader.compressedRange(entry, position, length, layer);
    if (range) await blob.fetchRegion((units ??= spanPrefetchUnits(index, blob.size, what)), range[0], range[1], context.readAheadBytes);
  };
  const read = headers
    ? async (entry: LayerFile, position: number, length: number) => {
        // The check and the read go at once: they share the spans both need (the reader fetches and
        // decodes each once), and a header in the span before the file's costs no round trip of its
        // own. The bytes are served only once the check has passed.
        const [bytes] = await Promise.all([
          fetchAround(entry, position, length).then(() => reader.readFileRange(entry, position, length, layer)),
          headers.check(entry, entry.sourcePath ?? entry.path),
        ]);
        return bytes;
      }
    : async (entry: LayerFile, position: number, length: number) => {
        await fetchAround(entry, position, length);
        return reader.readFileRange(entry, position, length, layer);
      };
  return {
    digest: descriptor.digest,
    kind,
    uncompressedSize: index.uncompressedSize,
    entries: index.entries,
    blob,
    read,
    prefetchUnits: () => spanPrefetchUnits(index, blob.size, what),
    fetchAhead: (ranges, options) => blob.fetchAhead(spanPrefetchUnits(index, blob.size, what), ranges, options),
    priorityRanges: [],
    ...(headers ? { uncheckedIndex: true } : {}),
    stats: () => blobLayerStats(kind, descriptor.digest, blob, indexedBytes),
    close: () => blob.close(),
  };
}

/**
 * Where a registry's checkpoints disagree with those built from the whole
 * layer at the same uncompressed byte, or undefined. A window is the one
 * thing of a span index no read can check (a span's digest covers its
 * compressed bytes, not the 32 KiB of earlier output that its
 * back-references copy): a wrong one makes a read serve bytes that are not
 * the layer's, so the registry's windows are checked once the layer is
 * whole, and their positions with them. A window that is not byte for byte
 * the one built here (windows keep only the bytes their stream copies:
 * window-trim.ts; an index may come from a builder that kept them all) is
 * right when inflating from it gives the same 32 KiB as the built one.
 */
async function checkpointsDisagree(given: readonly GzipCheckpoint[], built: LayerIndex, blobPath: string): Promise<string | undefined> {
  const byOffset = new Map(built.checkpoints.map((cp, i) => [cp.uncompressedOffset, i]));
  // Opened only for a window that differs byte for byte (most agree, or were never fetched).
  let blob: FileHandle | undefined;
  try {
    for (const [i, cp] of given.entries()) {
      const j = byOffset.get(cp.uncompressedOffset);
      if (j === undefined) continue;
      const mine = built.checkpoints[j]!;
      if (mine.compressedOffset !== cp.compressedOffset || mine.bits !== cp.bits) {
        return `span ${i}: the index starts it at compressed byte ${cp.compressedOffset} (bit ${cp.bits}), the layer's stream reaches uncompressed byte ${cp.uncompressedOffset} at ${mine.compressedOffset} (bit ${mine.bits})`;
      }
      // A window never fetched served no read (or was cut from the decoded span before it: the layer's own bytes).
      const window = cp.lazyWindow ? cp.lazyWindow.loaded : cp.window;
      if (!window || window.equals(mine.window)) continue;
      blob ??= await open(blobPath, 'r');
      if (!(await inflatesAlike(window, mine, j, built, blob))) {
        return `span ${i}: its window (the ${window.length} bytes before uncompressed byte ${cp.uncompressedOffset}) is not the layer's`;
      }
    }
  } finally {
    await blob?.close();
  }
  return undefined;
}

/** Whether inflating from built checkpoint j with `window` gives what its own window gives, for as far as a window reaches. */
async function inflatesAlike(window: Buffer, mine: GzipCheckpoint, j: number, built: LayerIndex, blob: FileHandle): Promise<boolean> {
  const length = Math.min(windowReach, built.uncompressedSize - mine.uncompressedOffset);
  if (length <= 0) return true;
  let k = j + 1;
  while (k < built.checkpoints.length && built.checkpoints[k]!.uncompressedOffset < mine.uncompressedOffset + length) k++;
  const start = spanStart(mine);
  const end = k < built.checkpoints.length ? built.checkpoints[k]!.compressedOffset + 1 : built.compressedSize;
  const compressed = Buffer.alloc(end - start);
  const { bytesRead } = await blob.read(compressed, 0, compressed.length, start);
  if (bytesRead !== compressed.length) return false;
  try {
    const theirs = await inflateFromAsync({ ...mine, window }, compressed, 0, length);
    return theirs.equals(await inflateFromAsync(mine, compressed, 0, length));
  } catch {
    return false;
  }
}

/** The first entry where two indexes of one layer differ, or undefined. */
function entriesDisagree(given: readonly IndexEntry[], built: readonly IndexEntry[]): string | undefined {
  const n = Math.max(given.length, built.length);
  for (let i = 0; i < n; i++) {
    const a = given[i] ? JSON.stringify(given[i]) : undefined;
    const b = built[i] ? JSON.stringify(built[i]) : undefined;
    if (a !== b) return `entry ${i}: the index has ${a ?? 'nothing'}, the tar ${b ?? 'nothing'}`;
  }
  return undefined;
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
 * The layer's span index from the store, or built now by streaming the layer
 * once (verified against its digest and diff ID) and kept for every image
 * that uses the blob. `lazyroot index` builds them ahead of time. With
 * `keepBlob` the streamed blob is also stored in blobs/ (verified by
 * `BlobStore.ingest`) instead of being thrown away: a prefetching mount has
 * the whole layer then and nothing more to fetch for it. With `remote`, an
 * index pushed to the registry by another machine (remote-index.ts) is tried
 * before the layer is streamed, and kept like one built here.
 */
export async function loadOrBuildIndex(
  store: Store,
  source: ImageSource,
  descriptor: { digest: Digest; size: number; mediaType: string },
  compression: 'gzip' | 'none',
  what: string,
  diffId: Digest,
  options: { keepBlob?: boolean; spanBytes?: number; onDownloaded?: (bytes: number) => void; remote?: () => Promise<LayerIndex | undefined> } = {},
): Promise<LayerIndex> {
  const path = store.paths.index(descriptor.digest);
  if (await pathExists(path)) return readIndexFile(path);
  const fromRegistry = await options.remote?.();
  // Read by its head alone, it is not whole to keep: the index built once the layer is whole is kept instead.
  if (fromRegistry && fetchesWindows(fromRegistry)) return fromRegistry;
  if (fromRegistry) {
    await mkdir(dirname(path), { recursive: true });
    // Marked before it is in place: a remote index is never taken for one built here.
    await writeFileAtomic(remoteIndexMarker(store, descriptor.digest), '', store.paths.tmp);
    await writeIndexFile(path, fromRegistry, { tmpDir: store.paths.tmp });
    return fromRegistry;
  }
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
  await rm(remoteIndexMarker(store, descriptor.digest), { force: true });
  return index;
}

/**
 * Beside an index that came from the registry (`indexes/<alg>/<hex>.remote`):
 * its files are checked against their tar headers before they are served
 * (SpanIndexHeaderCheck). Removed with the index by garbage collection.
 */
export function remoteIndexMarker(store: Store, digest: Digest): string {
  return `${store.paths.index(digest)}.remote`;
}

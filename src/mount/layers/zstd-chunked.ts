import { isLazyrootError, LazyrootError } from '../../errors.js';
import { readZstdChunkedIndex, type ZstdChunkedIndex } from '../../index/zstd-chunked/toc.js';
import { verifyChunk, ZstdChunkedReader } from '../../index/zstd-chunked/reader.js';
import { checkTocOffThread } from '../../index/toc-check-thread.js';
import { ZstdChunkedHeaderCheck } from '../../index/zstd-chunked/header-check.js';
import type { BlobRangeReader, EstargzChunk } from '../../index/types.js';
import type { PrefetchUnit } from '../../store/lazy-blob.js';
import { blobLayerStats, type LayerContext, type LazyLayer } from './lazy-layer.js';
import { withGaps } from './prefetch-units.js';
import { cachedLayerIndex } from '../mount-cache.js';

/**
 * A zstd:chunked layer (containers/storage, `podman push --compression-format
 * zstd:chunked`): the TOC is read by one range request (the position
 * annotation; the footer first without it) and checked against the manifest
 * checksum annotation; each file is read by its chunks, each its own zstd
 * frames with its own digest (index/zstd-chunked/).
 */
export async function openZstdChunkedLayer(context: LayerContext, annotations: { checksum: string; position?: string }): Promise<LazyLayer> {
  const { what } = context;
  const blob = await context.openBlob();
  // The TOC is checked as a whole (the checksum annotation), not piecewise: kept, but only the
  // whole blob's digest lets its bytes count as verified.
  const indexReader: BlobRangeReader = { size: blob.size, read: (start, end) => blob.readUnverified(start, end) };
  // A later mount reads the parsed TOC back from the store, keyed by the checksum annotation it was checked against.
  const index = await cachedLayerIndex(
    context.store,
    context.descriptor.digest,
    `zstd:chunked ${annotations.checksum}`,
    () =>
      readZstdChunkedIndex(indexReader, {
        checksum: annotations.checksum,
        ...(annotations.position !== undefined ? { position: annotations.position } : {}),
        what,
        ...(context.maxTocRecords !== undefined ? { maxTocRecords: context.maxTocRecords } : {}),
      }),
    context.log,
  );
  const reader = new ZstdChunkedReader(blob, context.decodedCache, context.cacheBytes, what);
  // The TOC is trusted by its checksum, but it must also agree with the tar stream `create`
  // unpacks: each file's tar headers before its bytes are served, the whole stream before the
  // blob is promoted.
  const headers = new ZstdChunkedHeaderCheck(index, blob, what, context.log);
  blob.checkWholeWith(async (path, signal) => {
    try {
      await checkTocOffThread({ kind: 'zstd-chunked', path, index: { entries: index.entries, chunks: index.chunks }, what }, signal);
    } catch (err) {
      // UNAVAILABLE: stopped (the mount is closing) or the worker failed; the check is not done, nothing is refused.
      if (!isLazyrootError(err, 'UNAVAILABLE')) context.log?.(`${what}: refused: the TOC disagrees with the layer's tar stream`, err);
      throw err;
    }
    headers.markWholeChecked();
  });
  const digest = context.descriptor.digest;
  let inBlobOrder: PrefetchUnit[] | undefined;
  const units = () => (inBlobOrder ??= chunkUnits(index, blob.size, what, reader));
  return {
    digest,
    kind: 'zstd-chunked',
    entries: index.entries,
    blob,
    async read(entry, position, length) {
      if (blob.refusal) throw blob.refusal;
      const path = entry.sourcePath ?? entry.path;
      const chunks = index.chunks.get(path) ?? [];
      if (context.readAheadBytes > 0 && !blob.isComplete) {
        // Small files lie side by side in the blob: fetch the region around the chunks this read
        // needs (their own read below then finds them kept); a read of the file's start brings
        // the frame holding its tar header along while that is unchecked.
        const [from, to] = compressedRange(chunks, position, position + length, reader);
        const headerFrom = from === chunks[0]?.compressedStart ? headers.bytesFrom(path) : undefined;
        if (from < to) await blob.fetchRegion(units(), Math.min(from, headerFrom ?? from), to, context.readAheadBytes);
      }
      const [data] = await Promise.all([reader.read(entry, chunks, position, length), headers.check(path)]);
      return data;
    },
    prefetchUnits: () => units(),
    fetchAhead: (ranges, options) => blob.fetchAhead(units(), ranges, options),
    priorityRanges: [],
    stats: () => blobLayerStats('zstd-chunked', digest, blob, 0),
    close: () => blob.close(),
  };
}

/** Blob bytes [from, to) of the frames holding file bytes [start, end), leaving out chunks held decoded. */
function compressedRange(chunks: readonly EstargzChunk[], start: number, end: number, reader: ZstdChunkedReader): [number, number] {
  let from = Infinity;
  let to = 0;
  for (const c of chunks) {
    if (c.offset >= end || c.offset + c.size <= start || reader.cached(c)) continue;
    if (c.compressedStart < from) from = c.compressedStart;
    if (c.compressedEnd > to) to = c.compressedEnd;
  }
  return from < to ? [from, to] : [0, 0];
}

/**
 * The units of a zstd:chunked layer, in blob order: one per chunk's frames,
 * verified by decoding them and checking the chunk digest (the result kept
 * in the reader's cache). Tar headers between files, the TOC and the footer
 * fill the gaps as unverified units only the whole blob's digest vouches for.
 */
function chunkUnits(index: Pick<ZstdChunkedIndex, 'chunks'>, size: number, what: string, reader: ZstdChunkedReader): PrefetchUnit[] {
  const byStart = new Map<number, { end: number; chunks: Array<{ path: string; chunk: EstargzChunk; i: number }> }>();
  for (const [path, chunks] of index.chunks) {
    chunks.forEach((chunk, i) => {
      let unit = byStart.get(chunk.compressedStart);
      if (!unit) byStart.set(chunk.compressedStart, (unit = { end: chunk.compressedEnd, chunks: [] }));
      else if (unit.end !== chunk.compressedEnd) {
        throw new LazyrootError('INVALID_DATA', `${what}: ${JSON.stringify(path)}: chunk ${i} shares frames at ${chunk.compressedStart} with another chunk but ends elsewhere`);
      }
      unit.chunks.push({ path, chunk, i });
    });
  }
  const units: PrefetchUnit[] = [...byStart].map(([start, unit]) => ({
    start,
    end: unit.end,
    verify: async (bytes) => {
      for (const { path, chunk, i } of unit.chunks) reader.remember(chunk, verifyChunk(bytes, chunk, i, path, what));
    },
  }));
  // Frames of different chunks must not overlap: a unit is fetched and kept whole.
  const sorted = [...units].sort((a, b) => a.start - b.start);
  for (let k = 1; k < sorted.length; k++) {
    if (sorted[k]!.start < sorted[k - 1]!.end) throw new LazyrootError('INVALID_DATA', `${what}: zstd:chunked frames at ${sorted[k - 1]!.start}–${sorted[k - 1]!.end} and ${sorted[k]!.start}–${sorted[k]!.end} overlap`);
  }
  return withGaps(sorted, size);
}

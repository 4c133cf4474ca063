import { LazyrootError } from '../../errors.js';
import type { Digest } from '../../oci/digest.js';
import { readEstargzIndex, type EstargzIndex, type EstargzMemberChunk } from '../../index/estargz/toc.js';
import { EstargzChunkCache, readEstargzFile } from '../../index/estargz/reader.js';
import type { BlobRangeReader, IndexEntry } from '../../index/types.js';
import type { PrefetchUnit } from '../../store/lazy-blob.js';
import { blobLayerStats, type LayerContext, type LazyLayer } from './lazy-layer.js';
import { withGaps } from './prefetch-units.js';

/**
 * An eStargz layer: the footer and TOC are read by two range requests (and
 * checked against the TOC digest annotation); each file is read by its
 * chunks, each a gzip member with its own digest.
 */
export async function openEstargzLayer(context: LayerContext, tocDigest: Digest): Promise<LazyLayer> {
  const { what } = context;
  const blob = await context.openBlob();
  // The footer and TOC are checked as a whole (the TOC digest), not piecewise: kept, but only
  // the whole blob's digest lets them count as verified.
  const indexReader: BlobRangeReader = { size: blob.size, read: (start, end) => blob.readUnverified(start, end) };
  const index = await readEstargzIndex(indexReader, { tocDigest, what });
  const cache = new EstargzChunkCache(context.cacheBytes);
  const digest = context.descriptor.digest;
  return {
    digest,
    kind: 'estargz',
    entries: index.entries,
    blob,
    read: (entry, position, length) => readEstargzFile(entry, index.chunks.get(entry.sourcePath ?? entry.path) ?? [], position, length, blob, { cache, what }),
    prefetchUnits: () => estargzPrefetchUnits(index, blob.size, what),
    stats: () => blobLayerStats('estargz', digest, blob, 0),
    close: () => blob.close(),
  };
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

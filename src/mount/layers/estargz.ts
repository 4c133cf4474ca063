import { isLazyrootError } from '../../errors.js';
import type { Digest } from '../../oci/digest.js';
import { parseEstargzFooter } from '../../index/estargz/footer.js';
import { readEstargzIndex, type EstargzIndex, type EstargzMemberChunk } from '../../index/estargz/toc.js';
import { checkChunksOf, EstargzChunkCache, readEstargzFile, verifiedChunk, type FetchedChunk } from '../../index/estargz/reader.js';
import { EstargzHeaderCheck } from '../../index/estargz/header-check.js';
import { checkTocOffThread } from '../../index/toc-check-thread.js';
import type { BlobRangeReader } from '../../index/types.js';
import type { PrefetchUnit } from '../../store/lazy-blob.js';
import { blobLayerStats, type LayerContext, type LazyLayer } from './lazy-layer.js';
import { withGaps } from './prefetch-units.js';
import { cachedLayerIndex } from '../mount-cache.js';

/**
 * An eStargz layer: the footer and TOC are read by two range requests (and
 * checked against the TOC digest annotation); each file is read by its
 * chunks, each a gzip member with its own digest.
 */
export async function openEstargzLayer(context: LayerContext, tocDigest: Digest): Promise<LazyLayer> {
  const { what } = context;
  const blob = await context.openBlob();
  // The footer and TOC are checked as a whole (the TOC digest), not piecewise: kept, but only
  // the whole blob's digest lets them count as verified. The first request, at the blob's end,
  // brings the last files' bytes along: those are held, and checked by their chunk digests and kept
  // at the layer's first read (LazyBlob's leftover), not fetched again.
  const tocStart = (tail: Buffer): number => {
    try {
      return parseEstargzFooter(tail, blob.size).tocOffset;
    } catch {
      return blob.size; // not a footer: readEstargzIndex says why
    }
  };
  const indexReader: BlobRangeReader = { size: blob.size, read: (start, end) => blob.readUnverified(start, end, end === blob.size ? tocStart : undefined) };
  // A later mount reads the parsed TOC back from the store, keyed by the TOC digest it was checked against.
  const index = await cachedLayerIndex(
    context.store,
    context.descriptor.digest,
    tocDigest,
    () => readEstargzIndex(indexReader, { tocDigest, what, ...(context.maxTocRecords !== undefined ? { maxTocRecords: context.maxTocRecords } : {}) }),
    context.log,
  );
  const cache = new EstargzChunkCache(context.cacheBytes, context.decodedCache);
  // The TOC is trusted by its digest, but it must also agree with the tar stream `create` unpacks:
  // each file's tar header before its bytes are served, the whole stream before the blob is promoted.
  const headers = new EstargzHeaderCheck(index, blob, what, context.log);
  const onTail = (chunk: EstargzMemberChunk, tail: Buffer) => headers.noteTail(chunk, tail);
  blob.checkWholeWith(async (path, signal) => {
    try {
      await checkTocOffThread({ kind: 'estargz', path, index: { entries: index.entries, chunks: index.chunks }, what }, signal);
    } catch (err) {
      // UNAVAILABLE: stopped (the mount is closing) or the worker failed; the check is not done, nothing is refused.
      if (!isLazyrootError(err, 'UNAVAILABLE')) context.log?.(`${what}: refused: the TOC disagrees with the layer's tar stream`, err);
      throw err;
    }
    headers.markWholeChecked();
  });
  const digest = context.descriptor.digest;
  let inBlobOrder: PrefetchUnit[] | undefined;
  const units = () => (inBlobOrder ??= memberUnits(index, blob.size, what, cache, onTail));
  return {
    digest,
    kind: 'estargz',
    entries: index.entries,
    blob,
    async read(entry, position, length) {
      // A refused layer serves nothing, not even chunks decoded before it was refused.
      if (blob.refusal) throw blob.refusal;
      const path = entry.sourcePath ?? entry.path;
      const chunks = index.chunks.get(path) ?? [];
      if (context.readAheadBytes > 0 && !blob.isComplete) {
        // Small files lie side by side in the blob: fetch the region around the chunks this read
        // needs, not the chunks alone (their own read below then finds them kept); a read of the
        // file's start brings the member holding its tar header along while that is unchecked.
        const [from, to] = compressedRange(chunks, position, position + length, cache);
        const headerFrom = from === chunks[0]?.compressedStart ? headers.bytesFrom(path) : undefined;
        if (from < to) await blob.fetchRegion(units(), Math.min(from, headerFrom ?? from), to, context.readAheadBytes);
      }
      const [data] = await Promise.all([readEstargzFile(entry, chunks, position, length, blob, { cache, what, onTail }), headers.check(path)]);
      return data;
    },
    prefetchUnits: () => {
      // The prioritized region (entries before `.prefetch.landmark`, which the blob holds first) comes first.
      const prioritized = index.prefetch.compressedEnd;
      return [...units().filter((u) => u.start < prioritized), ...units().filter((u) => u.start >= prioritized)];
    },
    fetchAhead: (ranges, options) => blob.fetchAhead(units(), ranges, options),
    priorityRanges: index.prefetch.landmark === 'prefetch' && index.prefetch.compressedEnd > 0 ? [[0, index.prefetch.compressedEnd]] : [],
    stats: () => blobLayerStats('estargz', digest, blob, 0),
    close: () => blob.close(),
  };
}

/**
 * Blob bytes [from, to) of the gzip members holding file bytes [start, end),
 * leaving out chunks decoded in memory already (their blob bytes may not be
 * kept: a full disk).
 */
function compressedRange(chunks: readonly EstargzMemberChunk[], start: number, end: number, decoded: EstargzChunkCache): [number, number] {
  let from = Infinity;
  let to = 0;
  for (const c of chunks) {
    if (c.offset >= end || c.offset + c.size <= start || decoded.get(c.chunkDigest)) continue;
    if (c.compressedStart < from) from = c.compressedStart;
    if (c.compressedEnd > to) to = c.compressedEnd;
  }
  return from < to ? [from, to] : [0, 0];
}

/**
 * The units of an eStargz layer, in blob order: one per gzip member holding
 * file chunks, each chunk inflated and checked against its chunkDigest from
 * the fetched bytes (the members of one range together, checkChunksOf; a
 * member with a digest other than SHA-256 alone, verifiedChunk). Each chunk
 * checked is kept in `decoded`, the layer's chunk cache.
 * Tar headers of entries without data, the landmarks, the TOC and the footer
 * lie between or after the members: they become unverified units that only
 * the whole blob's digest vouches for.
 *
 * Built at a layer's first read, on the way to a mount's first bytes: one
 * object per member, its chunks on it, what the members share in one
 * `MemberChecks` (with a closure and a WeakMap entry per member, the bench
 * image's 5,200-member layer took 20-32 ms of wall time; 13-27 ms this way,
 * about 6 ms of it the main thread's CPU). Exported for a standby's warm-up.
 */
export function memberUnits(
  index: Pick<EstargzIndex, 'chunks'>,
  size: number,
  what: string,
  decoded: EstargzChunkCache,
  onTail: (chunk: EstargzMemberChunk, tail: Buffer) => void,
): PrefetchUnit[] {
  const checks = new MemberChecks(what, decoded, onTail);
  const members = new Map<number, MemberUnit>();
  const units: MemberUnit[] = [];
  for (const [path, chunks] of index.chunks) {
    for (let i = 0; i < chunks.length; i++) {
      const chunk = chunks[i]!;
      let member = members.get(chunk.compressedStart);
      if (!member) {
        member = new MemberUnit(chunk.compressedStart, chunk.compressedEnd, checks);
        members.set(chunk.compressedStart, member);
        units.push(member);
      }
      member.add({ path, chunk, index: i });
    }
  }
  return withGaps(units, size);
}

/** What the members of one layer share: how they are checked, and where checked chunks go. */
class MemberChecks {
  constructor(
    readonly what: string,
    readonly decoded: EstargzChunkCache,
    readonly onTail: (chunk: EstargzMemberChunk, tail: Buffer) => void,
  ) {}

  /** The SHA-256 members of one fetched range, checked in one native call (others: verify, alone). */
  readonly checkMany = async (batch: readonly PrefetchUnit[], bytes: Buffer, from: number): Promise<unknown[]> => {
    const members = batch as readonly MemberUnit[];
    const chunks = members.flatMap((member) => member.chunks);
    const owner = members.flatMap((member, i) => member.chunks.map(() => i));
    const errors: unknown[] = new Array(batch.length).fill(undefined);
    (await checkChunksOf(bytes, from, chunks, this.what, this.onTail)).forEach((result, k) => {
      if (result instanceof Error) errors[owner[k]!] ??= result;
      // Inflated and checked now: the read that asked for this region (or comes soon) need not inflate it again.
      else this.decoded.set(chunks[k]!.chunk.chunkDigest, result);
    });
    return errors;
  };
}

const sha256Digest = /^sha256:[0-9a-f]{64}$/;

/** A gzip member holding file chunks: every chunk's bytes are the fetched ones (never a cached or in-flight copy), inflated and checked. */
class MemberUnit implements PrefetchUnit {
  readonly chunks: FetchedChunk[] = [];
  checkMany: PrefetchUnit['checkMany'];

  constructor(
    readonly start: number,
    public end: number,
    private readonly checks: MemberChecks,
  ) {
    this.checkMany = checks.checkMany;
  }

  add(chunk: FetchedChunk): void {
    this.chunks.push(chunk);
    if (chunk.chunk.compressedEnd > this.end) this.end = chunk.chunk.compressedEnd;
    // A member with a digest other than SHA-256 is checked alone, chunk by chunk.
    if (!sha256Digest.test(chunk.chunk.chunkDigest)) this.checkMany = undefined;
  }

  async verify(bytes: Buffer): Promise<void> {
    const { what, decoded, onTail } = this.checks;
    for (const { path, chunk, index: i } of this.chunks) {
      const data = await verifiedChunk(bytes.subarray(chunk.compressedStart - this.start, chunk.compressedEnd - this.start), chunk, i, path, what, false, onTail);
      decoded.set(chunk.chunkDigest, data);
    }
  }
}

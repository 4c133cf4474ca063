import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { DigestMismatchError, LazyrootError } from '../../errors.js';
import { digestAlgorithm } from '../../oci/digest.js';
import type { BlobRangeReader, EstargzChunk, IndexEntry } from '../types.js';
import type { EstargzMemberChunk } from './toc.js';
import { checkChunks, inflateMember, inflateMemberHashed } from '../gzip-native.js';
import { copyOut, keepable } from '../bytes-out.js';

/**
 * Verified, decompressed eStargz chunks, bounded by bytes. Keyed by chunk
 * digest: a chunk is only stored after its bytes matched that digest, so the
 * key names the content wherever it came from (the same chunk in two layers
 * is fetched once). Concurrent reads of a chunk share one fetch.
 */
export class EstargzChunkCache {
  readonly maxBytes: number;
  private readonly chunks: LRUCache<string, Buffer>;
  /** Chunks being fetched and verified now: later readers wait for these. */
  readonly inFlight = new Map<string, Promise<Buffer>>();

  /** `shared`: an LRU other readers use too (keys are chunk digests), bounded at maxBytes. */
  constructor(maxBytes = 64 * 1024 * 1024, shared?: LRUCache<string, Buffer>) {
    this.maxBytes = maxBytes;
    this.chunks = shared ?? new LRUCache<string, Buffer>({ maxSize: maxBytes, sizeCalculation: (b) => Math.max(1, b.length) });
  }

  get(digest: string): Buffer | undefined {
    return this.chunks.get(digest);
  }

  /** Only for bytes already verified against `digest`. */
  set(digest: string, bytes: Buffer): void {
    if (bytes.length <= this.maxBytes) this.chunks.set(digest, bytes);
  }

  get size(): number {
    return this.chunks.size;
  }

  /** Bytes held now. */
  get bytes(): number {
    return this.chunks.calculatedSize;
  }

  clear(): void {
    this.chunks.clear();
  }
}

/** The cache used when a read is given none. */
export const defaultChunkCache = new EstargzChunkCache();

export interface ReadEstargzFileOptions {
  cache?: EstargzChunkCache;
  /** What the blob is, for messages: `layer sha256:…` (default 'eStargz layer'). */
  what?: string;
  /**
   * Given, after a chunk is verified, what its member inflated to past the
   * chunk when the whole member was inflated (the tar headers after it, up
   * to 64 KiB): the header check of the next file uses them.
   */
  onTail?: (chunk: EstargzMemberChunk, tail: Buffer) => void;
}

/**
 * Bytes [fileOffset, fileOffset + length) of a regular file of an eStargz layer
 * (fewer at the end of the file). Fetches only the chunks that cover the range
 * and are not cached, adjacent ones in one `blob.read`; checks each chunk's
 * decompressed bytes against its chunkDigest before anything is returned
 * (DIGEST_MISMATCH naming the file and chunk otherwise).
 */
export async function readEstargzFile(
  entry: IndexEntry,
  chunks: readonly EstargzChunk[],
  fileOffset: number,
  length: number,
  blob: BlobRangeReader,
  options: ReadEstargzFileOptions = {},
): Promise<Buffer> {
  const what = options.what ?? 'eStargz layer';
  const cache = options.cache ?? defaultChunkCache;
  if (entry.type !== 'file') {
    throw new LazyrootError('INVALID_DATA', `${what}: ${JSON.stringify(entry.path)} is a ${entry.type}, not a regular file`);
  }
  if (!Number.isSafeInteger(fileOffset) || fileOffset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new LazyrootError('INVALID_DATA', `${what}: ${JSON.stringify(entry.path)}: bad read range ${fileOffset}+${length}`);
  }
  const start = fileOffset;
  const end = Math.min(entry.size, fileOffset + length);
  if (start >= end) return Buffer.alloc(0);

  const first = chunkIndexAt(chunks, start);
  const last = chunkIndexAt(chunks, end - 1);
  if (first < 0 || last < 0) {
    throw new LazyrootError('INVALID_DATA', `${what}: ${JSON.stringify(entry.path)}: no chunk covers bytes ${start}–${end} of ${entry.size}`);
  }

  // Each chunk comes from the cache, from a fetch already under way, or from
  // a new fetch; chunks of consecutive gzip members share one range read.
  const pending: Array<Promise<Buffer> | Buffer | undefined> = [];
  const runs: number[][] = [];
  for (let i = first; i <= last; i++) {
    const chunk = chunks[i]!;
    const known = cache.get(chunk.chunkDigest) ?? cache.inFlight.get(chunk.chunkDigest);
    pending.push(known);
    if (known) continue;
    const run = runs.at(-1);
    const previous = run?.at(-1);
    if (run && previous === i - 1 && adjacent(chunks[previous]!, chunk)) run.push(i);
    else runs.push([i]);
  }
  for (const run of runs) {
    const fetched = startFetch(entry.path, chunks, run, blob, cache, what, options.onTail);
    run.forEach((i, j) => {
      pending[i - first] = fetched[j];
    });
  }

  const parts = await Promise.all(pending);
  const out = Buffer.allocUnsafe(end - start);
  let written = 0;
  for (let i = first, k = 0; i <= last; i++, k++) {
    const chunk = chunks[i]!;
    const from = Math.max(start, chunk.offset) - chunk.offset;
    const to = Math.min(end, chunk.offset + chunk.size) - chunk.offset;
    written += parts[k]!.copy(out, written, from, to);
  }
  if (written !== out.length) throw new Error(`${what}: ${JSON.stringify(entry.path)}: assembled ${written} of ${out.length} bytes`);
  return out;
}

/** Index of the chunk holding byte `at` of the file, or -1. Chunks are sorted by offset. */
function chunkIndexAt(chunks: readonly EstargzChunk[], at: number): number {
  let lo = 0;
  let hi = chunks.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const c = chunks[mid]!;
    if (at < c.offset) hi = mid - 1;
    else if (at >= c.offset + c.size) lo = mid + 1;
    else return mid;
  }
  return -1;
}

/** Two chunks can be fetched in one range: the second's member starts where the first's ends, or they share a member. */
function adjacent(a: EstargzChunk, b: EstargzChunk): boolean {
  return b.compressedStart === a.compressedEnd || b.compressedStart === a.compressedStart;
}

/**
 * Fetches chunks[run] (adjacent) with one range read, then inflates, verifies
 * and caches each; registers one in-flight promise per chunk digest.
 */
function startFetch(
  path: string,
  chunks: readonly EstargzChunk[],
  run: number[],
  blob: BlobRangeReader,
  cache: EstargzChunkCache,
  what: string,
  onTail: ReadEstargzFileOptions['onTail'],
): Array<Promise<Buffer>> {
  const firstChunk = chunks[run[0]!]!;
  const rangeStart = firstChunk.compressedStart;
  const rangeEnd = Math.max(...run.map((i) => chunks[i]!.compressedEnd));
  // Bytes verified when they entered the store are inflated but not hashed again.
  const fetched = (async () => {
    const known = await blob.readVerified?.(rangeStart, rangeEnd);
    const bytes = known ?? (await blob.read(rangeStart, rangeEnd));
    if (bytes.length !== rangeEnd - rangeStart) {
      throw new LazyrootError(
        'UNAVAILABLE',
        `${what}: ${JSON.stringify(path)}: asked for blob bytes ${rangeStart}–${rangeEnd}, got ${bytes.length} bytes`,
      );
    }
    return { bytes, trusted: known !== undefined };
  })();
  const verified = run.map((i) => {
    const chunk = chunks[i]! as EstargzMemberChunk;
    const digest = chunk.chunkDigest;
    const promise = fetched
      .then(async ({ bytes, trusted }) => {
        const member = bytes.subarray(chunk.compressedStart - rangeStart, chunk.compressedEnd - rangeStart);
        const data = await verifiedChunk(member, chunk, i, path, what, trusted, onTail);
        cache.set(digest, data);
        return data;
      })
      .finally(() => {
        if (cache.inFlight.get(digest) === promise) cache.inFlight.delete(digest);
      });
    // Identical chunks (same digest) in one run: later readers wait on the first.
    if (!cache.inFlight.has(digest)) cache.inFlight.set(digest, promise);
    return promise;
  });
  // Every chunk of the fetched range verified: the blob reader may keep the bytes.
  Promise.all([fetched, ...verified]).then(
    ([{ trusted }]) => trusted || blob.confirm?.(rangeStart, rangeEnd),
    () => undefined,
  );
  return verified;
}

/** The chunk's bytes inflated from its member, checked against its digest unless the member was `trusted` (verified on ingest). */
export async function verifiedChunk(
  member: Buffer,
  chunk: EstargzMemberChunk,
  index: number,
  path: string,
  what: string,
  trusted = false,
  onTail?: ReadEstargzFileOptions['onTail'],
): Promise<Buffer> {
  const inner = chunk.innerOffset ?? 0;
  // Named only when something is wrong: a string per chunk read was garbage on the hot path.
  const label = () => chunkLabel(what, path, index, chunk);
  const algorithm = digestAlgorithm(chunk.chunkDigest);
  // A SHA-256 chunk is hashed where it is inflated, off the event loop (native/gzip_member.c).
  const hashHere = !trusted && algorithm === 'sha256';
  let inflated: Buffer;
  let hex = '';
  try {
    if (hashHere) [inflated, hex] = await inflateMemberHashed(member, inner + chunk.size + oneShotSlack, inner, chunk.size);
    else inflated = await inflateMember(member, inner + chunk.size + oneShotSlack);
    if (inflated.length < inner + chunk.size) throw new Error(`the gzip member inflates to ${inflated.length} bytes, ${inner + chunk.size} expected`);
  } catch (err) {
    // Bytes that do not even inflate are not the chunk the TOC describes.
    throw Object.assign(new DigestMismatchError(label(), chunk.chunkDigest, `undecodable gzip data: ${(err as Error).message}`), { cause: err });
  }
  let data = inflated.subarray(inner, inner + chunk.size);
  // Cache only the chunk, not the tar headers inflated after it.
  if (inflated.length - data.length > Math.max(64 * 1024, data.length)) data = copyOut(data);
  if (!trusted) {
    const got = `${algorithm}:${hashHere ? hex : createHash(algorithm).update(data).digest('hex')}`;
    if (got !== chunk.chunkDigest) throw new DigestMismatchError(label(), chunk.chunkDigest, got);
  }
  const tail = inflated.length - inner - chunk.size;
  // Only a member inflated whole (not stopped early by the streaming path) has all its tail.
  if (onTail && tail <= maxTail && inflated.length < inner + chunk.size + oneShotSlack) onTail(chunk, copyOut(inflated.subarray(inner + chunk.size)));
  return data;
}

/** How a chunk is named in errors: layer, file, chunk number, file and blob bytes. */
function chunkLabel(what: string, path: string, index: number, chunk: EstargzMemberChunk): string {
  return `${what}: ${JSON.stringify(path)}: chunk ${index} (file bytes ${chunk.offset}–${chunk.offset + chunk.size}, blob bytes ${chunk.compressedStart}–${chunk.compressedEnd})`;
}

/** A chunk of a fetched range, for checkChunksOf. */
export interface FetchedChunk {
  path: string;
  chunk: EstargzMemberChunk;
  /** Its place among its file's chunks (for messages). */
  index: number;
}

/**
 * verifiedChunk for many chunks of one fetched range (`bytes`, from blob
 * offset `from`) in one native call (gzip-native.ts checkChunks): each
 * chunk's bytes, or the error verifiedChunk would have thrown. SHA-256
 * chunks only; the caller checks others one by one.
 */
export async function checkChunksOf(bytes: Buffer, from: number, chunks: readonly FetchedChunk[], what: string, onTail?: ReadEstargzFileOptions['onTail']): Promise<Array<Buffer | Error>> {
  const spec = new Float64Array(chunks.length * 4);
  const digests = Buffer.alloc(chunks.length * 32);
  chunks.forEach(({ chunk }, k) => {
    spec[4 * k] = chunk.compressedStart - from;
    spec[4 * k + 1] = chunk.compressedEnd - from;
    spec[4 * k + 2] = chunk.innerOffset ?? 0;
    spec[4 * k + 3] = chunk.size;
    digests.write(chunk.chunkDigest.slice('sha256:'.length), 32 * k, 32, 'hex');
  });
  const [out, at, ok] = await checkChunks(bytes, spec, digests, maxTail);
  return chunks.map(({ path, chunk, index }, k) => {
    const inner = chunk.innerOffset ?? 0;
    const start = at[2 * k]!;
    const length = at[2 * k + 1]!;
    if (!ok[k]) {
      const label = chunkLabel(what, path, index, chunk);
      const got = length < inner + chunk.size ? `undecodable gzip data: the member inflates to ${length} bytes, ${inner + chunk.size} expected` : 'other bytes';
      return new DigestMismatchError(label, chunk.chunkDigest, got);
    }
    // A cached chunk must not hold much more than itself of the range's output alive.
    const data = keepable(out.subarray(start + inner, start + inner + chunk.size), out);
    // Only a member inflated whole (short of the limit) has all its tail.
    if (onTail && length < inner + chunk.size + maxTail) onTail(chunk, copyOut(out.subarray(start + inner + chunk.size, start + length)));
    return data;
  });
}

/** Tails (the tar headers after a chunk) handed to `onTail` are at most this long. */
const maxTail = 64 * 1024;

/**
 * What a member may inflate to past the chunk (the tar headers after it). A
 * member is a chunk and the few tar headers after it: one native call
 * inflates it whole on the thread pool (zlib.gunzip's stream per chunk cost
 * more than the inflating), stopping this far past the chunk, so a member
 * that inflates without end costs no more than that.
 */
const oneShotSlack = 1 << 20;

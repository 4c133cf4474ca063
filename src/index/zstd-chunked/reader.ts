import { createHash } from 'node:crypto';
import type { LRUCache } from 'lru-cache';
import { DigestMismatchError, LazyrootError } from '../../errors.js';
import { digestAlgorithm } from '../../oci/digest.js';
import type { BlobRangeReader, EstargzChunk, IndexEntry } from '../types.js';
import { decodeFrames } from './frames.js';

/**
 * Reads files of a zstd:chunked layer by their chunks: each chunk's frames
 * are fetched by range (adjacent chunks of a read in one request), decoded
 * with bounds (frames.ts), and checked against the chunk's digest before
 * anything is returned. Verified chunks are kept in an LRU keyed by digest
 * (the mount's shared one: a key names its content wherever it came from);
 * concurrent reads of one chunk share its fetch.
 */
export class ZstdChunkedReader {
  private readonly inFlight = new Map<string, Promise<Buffer>>();

  constructor(
    private readonly blob: BlobRangeReader,
    private readonly cache: LRUCache<string, Buffer>,
    private readonly maxCachedChunk: number,
    private readonly what: string,
  ) {}

  /** A verified chunk in memory, if there is one. */
  cached(chunk: EstargzChunk): Buffer | undefined {
    return this.cache.get(chunk.chunkDigest);
  }

  /** Keeps a chunk's bytes, verified against its digest by the caller. */
  remember(chunk: EstargzChunk, data: Buffer): void {
    if (data.length <= this.maxCachedChunk) this.cache.set(chunk.chunkDigest, data);
  }

  /** Bytes [position, position + length) of a regular file (fewer at its end), verified. */
  async read(entry: IndexEntry, chunks: readonly EstargzChunk[], position: number, length: number): Promise<Buffer> {
    const label = `${this.what}: ${JSON.stringify(entry.path)}`;
    if (entry.type !== 'file') throw new LazyrootError('INVALID_DATA', `${label} is a ${entry.type}, not a regular file`);
    const start = position;
    const end = Math.min(entry.size, position + length);
    if (start >= end) return Buffer.alloc(0);
    const first = chunkIndexAt(chunks, start);
    const last = chunkIndexAt(chunks, end - 1);
    if (first < 0 || last < 0) throw new LazyrootError('INVALID_DATA', `${label}: no chunk covers bytes ${start}–${end} of ${entry.size}`);

    const parts: Array<Promise<Buffer> | Buffer | undefined> = [];
    const runs: number[][] = [];
    for (let i = first; i <= last; i++) {
      const chunk = chunks[i]!;
      const known = this.cache.get(chunk.chunkDigest) ?? this.inFlight.get(chunk.chunkDigest);
      parts.push(known);
      if (known) continue;
      const run = runs.at(-1);
      const previous = run?.at(-1);
      if (run && previous === i - 1 && chunks[previous]!.compressedEnd === chunk.compressedStart) run.push(i);
      else runs.push([i]);
    }
    for (const run of runs) {
      const fetched = this.fetchRun(entry.path, chunks, run);
      run.forEach((i, j) => (parts[i - first] = fetched[j]));
    }
    const data = await Promise.all(parts);
    const out = Buffer.allocUnsafe(end - start);
    let written = 0;
    for (let i = first, k = 0; i <= last; i++, k++) {
      const chunk = chunks[i]!;
      written += data[k]!.copy(out, written, Math.max(start, chunk.offset) - chunk.offset, Math.min(end, chunk.offset + chunk.size) - chunk.offset);
    }
    if (written !== out.length) throw new Error(`${label}: assembled ${written} of ${out.length} bytes`);
    return out;
  }

  /** Fetches the frames of chunks[run] (adjacent) with one range read; decodes, verifies and keeps each. */
  private fetchRun(path: string, chunks: readonly EstargzChunk[], run: number[]): Array<Promise<Buffer>> {
    const from = chunks[run[0]!]!.compressedStart;
    const to = chunks[run.at(-1)!]!.compressedEnd;
    const blob = this.blob;
    const fetched = (async () => {
      // Bytes verified as they entered the store are decoded but not hashed again.
      const known = await blob.readVerified?.(from, to);
      const bytes = known ?? (await blob.read(from, to));
      if (bytes.length !== to - from) throw new LazyrootError('UNAVAILABLE', `${this.what}: ${JSON.stringify(path)}: asked for blob bytes ${from}–${to}, got ${bytes.length} bytes`);
      return { bytes, trusted: known !== undefined };
    })();
    const verified = run.map((i) => {
      const chunk = chunks[i]!;
      const promise: Promise<Buffer> = fetched
        .then(({ bytes, trusted }) => {
          const data = verifyChunk(bytes.subarray(chunk.compressedStart - from, chunk.compressedEnd - from), chunk, i, path, this.what, trusted);
          this.remember(chunk, data);
          return data;
        })
        .finally(() => {
          if (this.inFlight.get(chunk.chunkDigest) === promise) this.inFlight.delete(chunk.chunkDigest);
        });
      if (!this.inFlight.has(chunk.chunkDigest)) this.inFlight.set(chunk.chunkDigest, promise);
      return promise;
    });
    // Every chunk of the range verified: the blob may keep the bytes as present.
    Promise.all([fetched, ...verified]).then(
      ([{ trusted }]) => trusted || blob.confirm?.(from, to),
      () => undefined,
    );
    return verified;
  }
}

/**
 * A chunk's bytes from its frames, checked against its digest unless the
 * frames were `trusted` (verified on ingest). Frames that do not decode are
 * a mismatch too: they are not the chunk the TOC describes.
 */
export function verifyChunk(frames: Buffer, chunk: EstargzChunk, index: number, path: string, what: string, trusted = false): Buffer {
  const label = `${what}: ${JSON.stringify(path)}: chunk ${index} (file bytes ${chunk.offset}–${chunk.offset + chunk.size}, blob bytes ${chunk.compressedStart}–${chunk.compressedEnd})`;
  let data: Buffer;
  try {
    data = decodeFrames(frames, chunk.size);
  } catch (err) {
    throw Object.assign(new DigestMismatchError(label, chunk.chunkDigest, `undecodable zstd data: ${(err as Error).message}`), { cause: err });
  }
  if (!trusted) {
    const algorithm = digestAlgorithm(chunk.chunkDigest);
    const got = `${algorithm}:${createHash(algorithm).update(data).digest('hex')}`;
    if (got !== chunk.chunkDigest) throw new DigestMismatchError(label, chunk.chunkDigest, got);
  }
  return data;
}

/** Index of the chunk holding byte `at` of the file, or -1 (chunks sorted by offset). */
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

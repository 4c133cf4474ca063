import { native, type Native } from '../native.js';
import type { GzipCheckpoint } from './types.js';

/** A checkpoint as the native indexer reports it (before span digests are known). */
export interface RawGzipCheckpoint {
  compressedOffset: number;
  bits: number;
  uncompressedOffset: number;
  /** Up to 32 KiB of uncompressed data before the point; empty at the start of a gzip member. */
  window: Buffer;
}

export interface GzipIndexerPush {
  /** Uncompressed bytes produced by this push, in order. */
  out: Buffer[];
  /** Checkpoints reached during this push, in order. */
  checkpoints: RawGzipCheckpoint[];
}

/**
 * zran-style streaming indexer (native/gzip_index.c). Push the compressed
 * blob in order; each push returns the uncompressed bytes it produced and the
 * checkpoints it passed. Errors on corrupt data carry `code` (Z_DATA_ERROR,
 * Z_BUF_ERROR for truncated data) and `compressedOffset`.
 */
export interface GzipIndexer {
  push(compressed: Buffer): GzipIndexerPush;
  /** Checks the gzip data ended cleanly (a complete last member). */
  end(): { compressedSize: number; uncompressedSize: number };
}

/** The addon's gzip functions (native/gzip_index.c), beside the ones src/native.ts declares. */
export interface GzipNative extends Native {
  GzipIndexer: new (spanBytes?: number, maxUncompressedSpan?: number) => GzipIndexer;
  gzipInflateFrom(compressedOffset: number, bits: number, window: Buffer, compressed: Buffer, skip: number, length: number): Buffer;
  gzipInflateFromAsync(compressedOffset: number, bits: number, window: Buffer, compressed: Buffer, skip: number, length: number): Promise<Buffer>;
  gzipInflateMemberAsync(member: Buffer, limit: number): Promise<Buffer>;
  gzipInflateMemberHashAsync(member: Buffer, limit: number, from: number, length: number): Promise<[Buffer, string]>;
  gzipCheckChunksAsync(bytes: Buffer, spec: Float64Array, digests: Buffer, tailMax: number): Promise<[Buffer, Float64Array, Uint8Array]>;
  gzipTrimWindowAsync(compressedOffset: number, bits: number, window: Buffer, compressed: Buffer, length: number): Promise<Buffer>;
}

export function gzipNative(): GzipNative {
  return native() as GzipNative;
}

/**
 * Compressed bytes between checkpoints. A read fetches whole spans, so this
 * is the fetch granularity of a gzip layer; each checkpoint costs a window
 * in the index (32 KiB, trimmed to the bytes its span copies: about 2 KiB
 * deflated; window-trim.ts). Measured on Debian bookworm + python3 (66 MB,
 * two layers), `python3 -c 'import json'` fetched 36.6 MB with 4 MiB spans,
 * 19.1 MB with 1 MiB, 13.3 MB with 512 KiB, 9.7 MB with 256 KiB, 7.0 MB
 * with 128 KiB and 5.5 MB with 64 KiB, no slower on loopback. The index is
 * then 4 % of the blob (24 % with whole windows), and a mount reads only its
 * head and the windows of the spans it decodes (index-file.ts): another
 * machine fetching it from a registry 6.99 MiB in all for
 * `import json, sys` (7.38 MiB with whole windows). 32 KiB spans took that
 * to 5.68 MiB, but with 100 requests instead of 80 and no sooner an answer.
 */
export const defaultSpanBytes = 64 * 1024;

/**
 * A new indexer recording a checkpoint about every `spanBytes` of compressed
 * input, and also whenever `maxUncompressedSpan` bytes (default 4 × spanBytes)
 * have come out since the last one, so that restarting at a checkpoint never
 * means inflating much more than that (highly compressible data).
 */
export function createGzipIndexer(spanBytes = defaultSpanBytes, maxUncompressedSpan = spanBytes * 4): GzipIndexer {
  const { GzipIndexer } = gzipNative();
  return new GzipIndexer(spanBytes, maxUncompressedSpan);
}

type CheckpointFields = Pick<GzipCheckpoint, 'compressedOffset' | 'bits' | 'window'>;

/**
 * Inflates from a checkpoint: `compressed` starts at the byte holding the
 * checkpoint's `bits` (compressedOffset - 1 when bits > 0, else
 * compressedOffset). Returns `length` bytes after skipping `skip`; throws
 * (code Z_BUF_ERROR) when the compressed bytes end first. Crosses gzip
 * member boundaries.
 */
export function inflateFrom(checkpoint: CheckpointFields, compressed: Buffer, skip: number, length: number): Buffer {
  return gzipNative().gzipInflateFrom(checkpoint.compressedOffset, checkpoint.bits, checkpoint.window, compressed, skip, length);
}

/** {@link inflateFrom} on libuv's thread pool, leaving the event loop free. */
export function inflateFromAsync(checkpoint: CheckpointFields, compressed: Buffer, skip: number, length: number): Promise<Buffer> {
  return gzipNative().gzipInflateFromAsync(checkpoint.compressedOffset, checkpoint.bits, checkpoint.window, compressed, skip, length);
}

/**
 * The checkpoint's window with every byte the next `length` (at most 32 KiB)
 * bytes of output do not copy set to 0 (native/gzip_window.c says how they
 * are found), or the whole window when that cannot be shown to inflate
 * the same. `compressed` starts as for inflateFrom. On libuv's thread pool.
 */
export function trimWindow(checkpoint: CheckpointFields, compressed: Buffer, length: number): Promise<Buffer> {
  return gzipNative().gzipTrimWindowAsync(checkpoint.compressedOffset, checkpoint.bits, checkpoint.window, compressed, length);
}

/** Where the compressed bytes of the span starting at this checkpoint begin: the byte holding `bits`. */
export function spanStart(checkpoint: Pick<GzipCheckpoint, 'compressedOffset' | 'bits'>): number {
  return checkpoint.bits ? checkpoint.compressedOffset - 1 : checkpoint.compressedOffset;
}

/**
 * A gzip member, and the members right after it, inflated on libuv's thread
 * pool (native/gzip_member.c), as zlib.gunzip would: their whole output, or
 * the first `limit` bytes when they inflate to more. Bytes after a member
 * that do not start another are ignored. Rejects with `code` Z_DATA_ERROR (corrupt, not
 * gzip) or Z_BUF_ERROR (cut short). An eStargz chunk read is one of these:
 * one call, no zlib stream object per member.
 */
export function inflateMember(member: Buffer, limit: number): Promise<Buffer> {
  return gzipNative().gzipInflateMemberAsync(member, limit);
}

/**
 * Many gzip-member chunks of one fetched range checked in one pool job
 * (native/gzip_member.c, gzipCheckChunksAsync): chunk k is the member
 * bytes[spec[4k], spec[4k+1]), its data [spec[4k+2], +spec[4k+3]) of what the
 * member inflates to, `digests` its SHA-256s (32 bytes each). Returns all
 * that the members inflated to (each up to its chunk plus `tailMax`) in one
 * buffer, where each begins and how long it is (at[2k], at[2k+1]), and
 * whether each chunk was whole and matched.
 */
export function checkChunks(bytes: Buffer, spec: Float64Array, digests: Buffer, tailMax: number): Promise<[Buffer, Float64Array, Uint8Array]> {
  return gzipNative().gzipCheckChunksAsync(bytes, spec, digests, tailMax);
}

/**
 * {@link inflateMember}, and the SHA-256 (hex) of output bytes [from, from +
 * length), computed on the same pool thread: '' when the output is shorter.
 */
export function inflateMemberHashed(member: Buffer, limit: number, from: number, length: number): Promise<[Buffer, string]> {
  return gzipNative().gzipInflateMemberHashAsync(member, limit, from, length);
}

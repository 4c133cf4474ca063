import { createHash, type Hash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { DigestMismatchError, LazyrootError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { createGzipIndexer, defaultSpanBytes, spanStart, type GzipIndexer, type RawGzipCheckpoint } from './gzip-native.js';
import { TarIndexer } from './tar-index.js';
import { WindowTrimmer } from './window-trim.js';
import type { GzipCheckpoint, IndexEntry } from './types.js';

/**
 * Everything needed to mount a layer lazily without reading it first: its
 * members and where their bytes are, and the checkpoints that let any range
 * be fetched, verified and decoded on its own.
 *
 * Spans: span i holds the blob's bytes from `spanStart(checkpoints[i])` (the
 * byte holding the checkpoint's `bits`, if any) up to
 * `checkpoints[i + 1].compressedOffset` (exclusive), or to the end of the blob
 * for the last one; `spanDigest` is the sha256 of exactly those bytes. When
 * the next checkpoint has bits, its first (shared) byte ends this span and
 * starts the next, so each span can be verified and inflated alone (the
 * layout SOCI's zTOC uses). For an uncompressed tar ("none") spans are plain
 * slices of `spanBytes`: compressedOffset = uncompressedOffset, bits 0, no
 * window.
 */
export interface LayerIndex {
  compression: 'gzip' | 'none';
  /** sha256 of the blob as stored. */
  blobDigest: Digest;
  /** sha256 of the uncompressed tar. */
  diffId: Digest;
  compressedSize: number;
  uncompressedSize: number;
  entries: IndexEntry[];
  checkpoints: GzipCheckpoint[];
}

export interface BuildIndexOptions {
  /** Names the layer in errors. */
  what?: string;
  /** Compressed bytes between checkpoints (gzip), or span size (uncompressed). Default `defaultSpanBytes` (64 KiB). */
  spanBytes?: number;
  /** gzip: also a checkpoint after this many uncompressed bytes. Default 4 × spanBytes. */
  maxUncompressedSpan?: number;
  /** When given, a blob whose digest differs fails with DIGEST_MISMATCH once it has been read. */
  expectDigest?: Digest;
  /** When given, a tar whose sha256 differs fails with DIGEST_MISMATCH. */
  expectDiffId?: Digest;
}

/**
 * sha256 of consecutive spans of a stream whose boundaries are learnt as the
 * stream passes. A span may start one byte before the previous one ended
 * (gzip checkpoints with bits): the last chunk is kept until the next cut.
 */
class SpanHasher {
  readonly digests: Digest[] = [];
  private hash: Hash = createHash('sha256');
  /** Absolute offset up to which `hash` has been fed. */
  private hashedTo = 0;
  private received = 0;
  private chunks: Array<{ start: number; buf: Buffer }> = [];

  get size(): number {
    return this.received;
  }

  add(buf: Buffer): void {
    if (buf.length === 0) return;
    this.chunks.push({ start: this.received, buf });
    this.received += buf.length;
  }

  /** Ends the current span at `end` (exclusive); the next starts at `nextStart` (end or end - 1). */
  cut(end: number, nextStart: number): void {
    this.feed(end);
    this.digests.push(`sha256:${this.hash.digest('hex')}`);
    this.hash = createHash('sha256');
    if (nextStart > end || nextStart < end - 1) throw new Error(`SpanHasher: span start ${nextStart} is not at or just before ${end}`);
    this.hashedTo = nextStart;
  }

  /** Hashes all it has, keeping the last byte reachable for a span starting there. */
  flush(): void {
    this.feed(this.received);
  }

  finish(): Digest[] {
    this.feed(this.received);
    this.digests.push(`sha256:${this.hash.digest('hex')}`);
    this.chunks = [];
    return this.digests;
  }

  private feed(to: number): void {
    if (to < this.hashedTo || to > this.received) throw new Error(`SpanHasher: cannot hash up to ${to} (at ${this.hashedTo}, have ${this.received})`);
    for (const { start, buf } of this.chunks) {
      const from = Math.max(start, this.hashedTo);
      const until = Math.min(start + buf.length, to);
      if (from < until) this.hash.update(from === start && until === start + buf.length ? buf : buf.subarray(from - start, until - start));
    }
    this.hashedTo = to;
    // Keep the chunk holding byte to - 1: the next span may start there.
    let drop = 0;
    while (drop < this.chunks.length && this.chunks[drop]!.start + this.chunks[drop]!.buf.length <= to - 1) drop++;
    if (drop) this.chunks.splice(0, drop);
  }
}

/**
 * Builds a layer's index in one pass as its blob streams past: the blob's
 * digest, the span digests, the diff ID and the tar index together. Feed the
 * blob's bytes in order with `write` (which applies backpressure), then call
 * `finish`. Usable beside a download (tee the stream) as well as on its own.
 */
export class LayerIndexBuilder {
  private readonly what: string;
  private readonly spanBytes: number;
  private readonly blobHash = createHash('sha256');
  private readonly diffHash = createHash('sha256');
  private readonly spans = new SpanHasher();
  private readonly tar: TarIndexer;
  private readonly gzip: GzipIndexer | undefined;
  /** Keeps of each checkpoint's window only what inflating from it needs (window-trim.ts). */
  private readonly windows = new WindowTrimmer();
  private readonly raw: RawGzipCheckpoint[] = [];
  private uncompressedSize = 0;
  private nextCut: number;
  private done = false;
  /**
   * Why the bytes could not be decoded, with a digest to check: the rest of
   * the blob is only hashed, so that bytes that are not the blob are reported
   * as a digest mismatch naming the layer, not as the gzip or tar error they
   * happened to cause.
   */
  private undecodable: unknown;

  constructor(
    readonly compression: 'gzip' | 'none',
    private readonly options: BuildIndexOptions = {},
  ) {
    this.what = options.what ?? 'layer';
    this.spanBytes = options.spanBytes ?? defaultSpanBytes;
    if (!(this.spanBytes >= 1)) throw new LazyrootError('INVALID_ARGUMENT', `${this.what}: spanBytes must be at least 1`);
    this.tar = new TarIndexer(this.what);
    this.gzip = compression === 'gzip' ? createGzipIndexer(this.spanBytes, options.maxUncompressedSpan ?? this.spanBytes * 4) : undefined;
    if (compression === 'none') this.raw.push({ compressedOffset: 0, bits: 0, uncompressedOffset: 0, window: empty });
    this.nextCut = this.spanBytes;
  }

  /** Feeds the next bytes of the blob as stored. */
  async write(chunk: Buffer): Promise<void> {
    if (this.done) throw new LazyrootError('FAILED_PRECONDITION', `${this.what}: index builder written after finish`);
    if (chunk.length === 0) return;
    this.blobHash.update(chunk);
    if (this.undecodable !== undefined) return;
    try {
      await this.decode(chunk);
    } catch (err) {
      if (!this.options.expectDigest) throw err;
      this.undecodable = err;
    }
  }

  private async decode(chunk: Buffer): Promise<void> {
    this.spans.add(chunk);
    if (!this.gzip) {
      // Uncompressed: a checkpoint every spanBytes, once a byte past it has arrived.
      while (this.spans.size > this.nextCut) {
        this.spans.cut(this.nextCut, this.nextCut);
        this.raw.push({ compressedOffset: this.nextCut, bits: 0, uncompressedOffset: this.nextCut, window: empty });
        this.nextCut += this.spanBytes;
      }
      this.spans.flush();
      await this.uncompressed(chunk);
      return;
    }
    const base = this.spans.size - chunk.length;
    this.windows.add(chunk);
    let pushed;
    try {
      pushed = this.gzip.push(chunk);
    } catch (err) {
      throw this.gzipError(err, base);
    }
    for (const cp of pushed.checkpoints) {
      if (this.raw.length > 0) this.spans.cut(cp.compressedOffset, spanStart(cp));
      this.raw.push(cp);
      this.windows.checkpoint(cp);
    }
    this.spans.flush();
    for (const out of pushed.out) await this.uncompressed(out);
    await this.windows.advance(this.uncompressedSize);
  }

  /** Ends the blob: checks it ended cleanly (and its digests, when expected) and returns the index. */
  async finish(): Promise<LayerIndex> {
    if (this.done) throw new LazyrootError('FAILED_PRECONDITION', `${this.what}: index builder finished twice`);
    this.done = true;
    const blobDigest: Digest = `sha256:${this.blobHash.digest('hex')}`;
    // Bytes that are not the blob: a digest mismatch naming the layer, whatever decoding them did.
    const notTheBlob = () => (this.options.expectDigest && this.options.expectDigest !== blobDigest ? new DigestMismatchError(`${this.what}: blob`, this.options.expectDigest, blobDigest) : undefined);
    if (this.undecodable !== undefined) throw notTheBlob() ?? this.undecodable;
    let entries;
    try {
      if (this.gzip) {
        try {
          this.gzip.end();
        } catch (err) {
          throw this.gzipError(err, this.spans.size);
        }
      }
      entries = await this.tar.end();
      await this.windows.finish(this.uncompressedSize);
    } catch (err) {
      throw notTheBlob() ?? err;
    }
    const digests = this.spans.finish();
    const diffId: Digest = `sha256:${this.diffHash.digest('hex')}`;
    if (this.options.expectDigest && this.options.expectDigest !== blobDigest) {
      throw new DigestMismatchError(`${this.what}: blob`, this.options.expectDigest, blobDigest);
    }
    if (this.options.expectDiffId && this.options.expectDiffId !== diffId) {
      throw new DigestMismatchError(`${this.what}: diff ID`, this.options.expectDiffId, diffId);
    }
    if (digests.length !== this.raw.length) throw new Error(`${this.what}: internal: ${digests.length} span digests for ${this.raw.length} checkpoints`);
    const checkpoints: GzipCheckpoint[] = this.raw.map((cp, i) => ({ ...cp, spanDigest: digests[i]! }));
    return {
      compression: this.compression,
      blobDigest,
      diffId,
      compressedSize: this.spans.size,
      uncompressedSize: this.uncompressedSize,
      entries,
      checkpoints,
    };
  }

  private async uncompressed(buf: Buffer): Promise<void> {
    this.diffHash.update(buf);
    this.uncompressedSize += buf.length;
    await this.tar.write(buf);
  }

  private gzipError(err: unknown, fallbackOffset: number): LazyrootError {
    const e = err as Error & { compressedOffset?: number };
    const offset = e.compressedOffset ?? fallbackOffset;
    const wrapped = new LazyrootError('INVALID_DATA', `${this.what}: cannot decompress (gzip): ${e.message}`, { cause: err });
    Object.assign(wrapped, { compressedOffset: offset });
    return wrapped;
  }
}

const empty = Buffer.alloc(0);

async function build(stream: Readable, compression: 'gzip' | 'none', options: BuildIndexOptions): Promise<LayerIndex> {
  const builder = new LayerIndexBuilder(compression, options);
  try {
    for await (const chunk of stream) await builder.write(typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer));
  } catch (err) {
    stream.destroy();
    throw err;
  }
  return builder.finish();
}

/** Indexes a gzip layer blob (one or more gzip members) in one pass. */
export function buildGzipIndex(compressed: Readable, options: BuildIndexOptions = {}): Promise<LayerIndex> {
  return build(compressed, 'gzip', options);
}

/** Indexes an uncompressed layer tar in one pass, with a span digest every `spanBytes`. */
export function buildTarIndex(tar: Readable, options: BuildIndexOptions = {}): Promise<LayerIndex> {
  return build(tar, 'none', options);
}

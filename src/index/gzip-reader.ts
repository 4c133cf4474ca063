import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { DigestMismatchError, LazyrootError } from '../errors.js';
import { shortDigest } from '../oci/digest.js';
import { inflateFromAsync, spanStart } from './gzip-native.js';
import type { LayerIndex } from './layer-index.js';
import type { BlobRangeReader, GzipCheckpoint, IndexEntry } from './types.js';

/** A layer to read from: its index (as built or loaded) and a way to read its blob's bytes. */
export interface IndexedLayer extends Pick<LayerIndex, 'compression' | 'blobDigest' | 'compressedSize' | 'uncompressedSize'> {
  checkpoints: readonly GzipCheckpoint[];
  blob: BlobRangeReader;
  /** Names its decoded spans in the cache (default: the blob digest); another checkpoint list of the same blob takes another. */
  cacheKey?: string;
}

export interface LayerReaderOptions {
  /** Bytes of decoded spans kept in memory (LRU). Default 64 MiB. */
  cacheBytes?: number;
  /**
   * The LRU to keep them in, shared with other readers (a mount's layers
   * share one: one memory bound for the daemon); its maxSize is cacheBytes.
   * Keys are `<blob digest>#<span>`. Default: a cache of this reader's own.
   */
  cache?: LRUCache<string, Buffer>;
  /**
   * Spans decoding to more than this are not cached whole: a read then
   * inflates only up to what it asked for. Default: half of cacheBytes.
   */
  maxCachedSpan?: number;
}

export interface LayerReaderStats {
  /** blob.read calls and the bytes they returned. */
  fetches: number;
  bytesFetched: number;
  /** Spans inflated (gzip) or verified (uncompressed). */
  decodes: number;
  cacheHits: number;
}

/** Per checkpoint table: span bounds as typed arrays, computed once. */
interface Spans {
  /** Uncompressed offset where span i starts (n + 1 values; the last is the layer's uncompressed size). */
  uStart: Float64Array;
  /** Compressed byte range of span i: [cStart, cEnd). */
  cStart: Float64Array;
  cEnd: Float64Array;
}

const spansOf = new WeakMap<readonly GzipCheckpoint[], Spans>();

function spans(layer: IndexedLayer): Spans {
  let s = spansOf.get(layer.checkpoints);
  if (s) return s;
  const cps = layer.checkpoints;
  const n = cps.length;
  if (n === 0 || cps[0]!.uncompressedOffset !== 0) throw new LazyrootError('INVALID_DATA', `layer ${shortDigest(layer.blobDigest)}: index has no checkpoint at offset 0`);
  s = { uStart: new Float64Array(n + 1), cStart: new Float64Array(n), cEnd: new Float64Array(n) };
  for (let i = 0; i < n; i++) {
    const cp = cps[i]!;
    s.uStart[i] = cp.uncompressedOffset;
    s.cStart[i] = layer.compression === 'gzip' ? spanStart(cp) : cp.compressedOffset;
    s.cEnd[i] = i + 1 < n ? cps[i + 1]!.compressedOffset : layer.compressedSize;
    if (i > 0 && !(s.uStart[i]! >= s.uStart[i - 1]! && s.cStart[i]! >= s.cStart[i - 1]!)) {
      throw new LazyrootError('INVALID_DATA', `layer ${shortDigest(layer.blobDigest)}: index checkpoints out of order at ${i}`);
    }
  }
  s.uStart[n] = layer.uncompressedSize;
  spansOf.set(layer.checkpoints, s);
  return s;
}

/** The last span starting at or before `offset`. */
function spanAt(uStart: Float64Array, n: number, offset: number): number {
  let lo = 0;
  let hi = n; // uStart[lo] <= offset < uStart[hi] (treating uStart[n] as +inf)
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (uStart[mid]! <= offset) lo = mid;
    else hi = mid;
  }
  return lo;
}

/**
 * Reads file bytes out of indexed layers: maps a file range to the spans of
 * the layer that hold it, fetches exactly those spans' bytes from the blob,
 * verifies each against its span digest before using it (never serving an
 * unverified byte), inflates gzip spans from their checkpoint (off the event
 * loop), and keeps decoded spans in an LRU bounded by bytes so sequential
 * reads inflate each span once. Concurrent reads of one span share its fetch.
 */
/** An LRU of decoded bytes bounded by their total size: what LayerRangeReader and EstargzChunkCache keep. */
export function decodedBytesCache(maxBytes: number): LRUCache<string, Buffer> {
  return new LRUCache<string, Buffer>({ maxSize: Math.max(1, maxBytes), sizeCalculation: (b) => Math.max(1, b.length) });
}

export class LayerRangeReader {
  readonly stats: LayerReaderStats = { fetches: 0, bytesFetched: 0, decodes: 0, cacheHits: 0 };
  private readonly cache: LRUCache<string, Buffer>;
  private readonly inFlight = new Map<string, Promise<Buffer>>();
  private readonly maxCachedSpan: number;

  constructor(options: LayerReaderOptions = {}) {
    const cacheBytes = Math.max(1, options.cacheBytes ?? 64 * 1024 * 1024);
    this.maxCachedSpan = Math.min(cacheBytes, options.maxCachedSpan ?? Math.max(1, Math.floor(cacheBytes / 2)));
    this.cache = options.cache ?? decodedBytesCache(cacheBytes);
  }

  /**
   * Bytes [fileOffset, fileOffset + length) of a regular file of the layer,
   * cut at the end of the file. Sparse files: holes read as zeros. The
   * answer may be a view into the span cache: read it, copy it, never write it.
   */
  async readFileRange(entry: IndexEntry, fileOffset: number, length: number, layer: IndexedLayer): Promise<Buffer> {
    if (entry.type !== 'file' || entry.dataOffset === undefined) {
      throw new LazyrootError('INVALID_DATA', `layer ${shortDigest(layer.blobDigest)}: ${entry.path} is not a regular file with data in the layer`);
    }
    if (!(fileOffset >= 0) || !(length >= 0)) throw new LazyrootError('INVALID_DATA', `${entry.path}: bad range ${fileOffset}+${length}`);
    const end = Math.min(entry.size, fileOffset + length);
    if (end <= fileOffset) return Buffer.alloc(0);
    const base = entry.dataOffset;
    if (!entry.sparse) {
      // Within one span (most reads: FUSE asks for 128 KiB at a time): a view into the decoded
      // span, no new buffer. Callers copy it before the cache can drop it.
      const s = spans(layer);
      const i = spanAt(s.uStart, layer.checkpoints.length, base + fileOffset);
      if (base + end <= s.uStart[i + 1]!) return this.spanBytes(layer, s, i, base + fileOffset, base + end);
      const out = Buffer.allocUnsafe(end - fileOffset);
      await this.copyUncompressed(layer, base + fileOffset, base + end, out, 0);
      return out;
    }
    // Sparse: data regions lie back to back from dataOffset; the rest are holes.
    const out = Buffer.alloc(end - fileOffset);
    const reads: Array<Promise<void>> = [];
    let stored = 0;
    for (const r of entry.sparse) {
      if (r.offset >= end) break;
      const from = Math.max(fileOffset, r.offset);
      const to = Math.min(end, r.offset + r.size);
      if (from < to) reads.push(this.copyUncompressed(layer, base + stored + (from - r.offset), base + stored + (to - r.offset), out, from - fileOffset));
      stored += r.size;
    }
    await Promise.all(reads);
    return out;
  }

  /**
   * Blob bytes [from, to) of the spans a read of file bytes [position,
   * position + length) needs, leaving out spans decoded in memory (their
   * blob bytes may not be kept: a full disk); undefined when there are none,
   * or for a sparse file. What a mount asks the blob to fetch, with the
   * region around it, before the read (LazyBlob.fetchRegion). The windows
   * those spans will fetch (an index read by its head) are asked for now.
   */
  compressedRange(entry: IndexEntry, position: number, length: number, layer: IndexedLayer): [number, number] | undefined {
    if (entry.type !== 'file' || entry.dataOffset === undefined || entry.sparse) return undefined;
    const end = Math.min(entry.size, position + length);
    if (!(end > position) || !(position >= 0)) return undefined;
    const s = spans(layer);
    const n = layer.checkpoints.length;
    let from = Infinity;
    let to = 0;
    for (let i = spanAt(s.uStart, n, entry.dataOffset + position); i < n && s.uStart[i]! < entry.dataOffset + end; i++) {
      if (this.cache.has(spanKey(layer, i))) continue;
      if (from === Infinity && layer.checkpoints[i]!.lazyWindow) {
        // The window the first span will need goes out now, beside the region's request, not after it
        // (each span after it takes its window from the one before). A failure is the read's to report.
        Promise.resolve(this.windowOf(layer, i)).catch(() => undefined);
      }
      from = Math.min(from, s.cStart[i]!);
      to = Math.max(to, s.cEnd[i]!);
    }
    return from < to ? [from, to] : undefined;
  }

  /** Bytes [start, end) of the layer's uncompressed tar stream. */
  async readUncompressed(layer: IndexedLayer, start: number, end: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(Math.max(0, end - start));
    if (end > start) await this.copyUncompressed(layer, start, end, out, 0);
    return out;
  }

  /** Copies uncompressed bytes [start, end) into out at `at`, span by span. */
  private async copyUncompressed(layer: IndexedLayer, start: number, end: number, out: Buffer, at: number): Promise<void> {
    if (end > layer.uncompressedSize) {
      throw new LazyrootError('INVALID_DATA', `layer ${shortDigest(layer.blobDigest)}: bytes ${start}-${end} lie beyond its ${layer.uncompressedSize} uncompressed bytes`);
    }
    const s = spans(layer);
    const n = layer.checkpoints.length;
    const parts: Array<Promise<void>> = [];
    for (let i = spanAt(s.uStart, n, start); i < n && s.uStart[i]! < end; i++) {
      const from = Math.max(start, s.uStart[i]!);
      const to = Math.min(end, s.uStart[i + 1]!);
      if (from >= to) continue;
      const dest = at + (from - start);
      parts.push(this.spanBytes(layer, s, i, from, to).then((bytes) => void bytes.copy(out, dest)));
    }
    await Promise.all(parts);
  }

  /** Uncompressed bytes [from, to) of span i, from the cache or the blob. */
  private async spanBytes(layer: IndexedLayer, s: Spans, i: number, from: number, to: number): Promise<Buffer> {
    const u0 = s.uStart[i]!;
    const decodedLength = s.uStart[i + 1]! - u0;
    if (decodedLength > this.maxCachedSpan) {
      // Too big to keep whole: inflate just up to what was asked for.
      const [compressed, window] = await Promise.all([this.verifiedSpan(layer, s, i), this.windowOf(layer, i)]);
      return this.decode(layer, i, compressed, window, from - u0, to - from);
    }
    const key = spanKey(layer, i);
    let span = this.cache.get(key);
    if (span) this.stats.cacheHits++;
    else {
      let pending = this.inFlight.get(key);
      if (!pending) {
        // The window is fetched beside the span's bytes when the index was read by its head alone.
        pending = Promise.all([this.verifiedSpan(layer, s, i), this.windowOf(layer, i)])
          .then(([compressed, window]) => this.decode(layer, i, compressed, window, 0, decodedLength))
          .then((decoded) => {
            this.cache.set(key, decoded);
            return decoded;
          })
          .finally(() => this.inFlight.delete(key));
        this.inFlight.set(key, pending);
      }
      span = await pending;
    }
    return span.subarray(from - u0, to - u0);
  }

  /** Fetches span i's compressed bytes and checks them against the span digest. */
  private async verifiedSpan(layer: IndexedLayer, s: Spans, i: number): Promise<Buffer> {
    const start = s.cStart[i]!;
    const end = s.cEnd[i]!;
    // Verified when they entered the store: trusted as they are (hash on ingest, never again).
    const known = await layer.blob.readVerified?.(start, end);
    if (known && known.length === end - start) return known;
    const what = `layer ${shortDigest(layer.blobDigest)}: span ${i} (bytes ${start}-${end})`;
    const bytes = await layer.blob.read(start, end);
    this.stats.fetches++;
    this.stats.bytesFetched += bytes.length;
    if (bytes.length !== end - start) throw new LazyrootError('UNAVAILABLE', `${what}: the blob reader returned ${bytes.length} bytes, expected ${end - start}`);
    if (layer.blob.verifiedWhole) return bytes; // checked whole against the blob digest: a second hash would only cost time
    const want = layer.checkpoints[i]!.spanDigest;
    const got = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    if (got !== want) throw new DigestMismatchError(what, want, got);
    // Verified: the blob reader may now keep these bytes.
    layer.blob.confirm?.(start, end);
    return bytes;
  }

  /**
   * The window span i inflates from. An index read by its head alone
   * (remote-index.ts) fetches each window on first use, unless span i - 1
   * is decoded or being decoded: the window is its last bytes, no request
   * needed (and they are the layer's own, checked by their span digest).
   */
  private windowOf(layer: IndexedLayer, i: number): Buffer | Promise<Buffer> {
    const cp = layer.checkpoints[i]!;
    const lazy = cp.lazyWindow;
    if (!lazy) return cp.window;
    if (lazy.loaded || layer.compression !== 'gzip') return lazy.loaded ?? empty;
    const n = lazy.length;
    const before = i > 0 && n > 0 ? spanKey(layer, i - 1) : undefined;
    if (before === undefined) return lazy.load();
    const tail = (span: Buffer) => (span.length >= n ? span.subarray(span.length - n) : lazy.load());
    const cached = this.cache.peek(before);
    if (cached) return tail(cached);
    return this.inFlight.get(before)?.then(tail, () => lazy.load()) ?? lazy.load();
  }

  private async decode(layer: IndexedLayer, i: number, compressed: Buffer, window: Buffer, skip: number, length: number): Promise<Buffer> {
    this.stats.decodes++;
    if (layer.compression === 'none') return compressed.subarray(skip, skip + length);
    try {
      const cp = layer.checkpoints[i]!;
      return await inflateFromAsync({ compressedOffset: cp.compressedOffset, bits: cp.bits, window }, compressed, skip, length);
    } catch (err) {
      // Verified bytes that do not inflate: the index does not describe this blob.
      throw new LazyrootError('INVALID_DATA', `layer ${shortDigest(layer.blobDigest)}: span ${i}: cannot inflate verified bytes (index and blob disagree): ${(err as Error).message}`, { cause: err });
    }
  }
}

const empty = Buffer.alloc(0);

/** Span i of a layer in the decoded-span cache: `<cacheKey or blob digest>#<i>`. */
const spanKey = (layer: IndexedLayer, i: number): string => `${layer.cacheKey ?? layer.blobDigest}#${i}`;

let shared: LayerRangeReader | undefined;

/** {@link LayerRangeReader.readFileRange} with a process-wide reader (64 MiB cache). */
export function readFileRange(entry: IndexEntry, fileOffset: number, length: number, layer: IndexedLayer): Promise<Buffer> {
  shared ??= new LayerRangeReader();
  return shared.readFileRange(entry, fileOffset, length, layer);
}

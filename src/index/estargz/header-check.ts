import { damagedBytes, LazyrootError } from '../../errors.js';
import type { BlobRangeReader } from '../types.js';
import { headerBeforeData } from './tar-header.js';
import type { EstargzMemberChunk } from './toc.js';
import { inflateMember } from '../gzip-native.js';

/** Tails kept at once (a few KiB each): the oldest go first. */
const maxTails = 1024;

/** What the tar headers between two chunks may inflate to, past the chunk before them. */
const headerSlack = 8 << 20;

/**
 * Checks, before a file's bytes are served, that the layer's tar stream
 * really has that file there: the tar header right in front of the file's
 * first chunk must name the file, as a regular file of the TOC's size. A TOC
 * that matches its digest annotation can still point a file at another
 * file's bytes (with their chunk digest); `create` unpacks the tar, so the
 * two paths would show two contents for one image digest.
 *
 * Where the header is (estargz.Writer): tar headers go into the gzip member
 * open at the time, and each chunk of file data starts a new member, so a
 * file's header ends the member *before* its first chunk — the previous
 * chunk's member, after that chunk's bytes and its tar padding (or, with
 * `innerOffset`, the same member, right before the file's bytes):
 *
 *   [member: …chunk of E | pad | header D (dir) | header F][member: chunk 0 of F …]
 *
 * So the check inflates from the previous chunk's member to F's first byte
 * and walks the headers after the previous chunk; the last must be F's and
 * end exactly where F's bytes begin. One check per file per mount; a file
 * that fails it fails every read (INVALID_DATA → EIO), logged once.
 */
/**
 * Compressed bytes a check may fetch for a file's header (the member before
 * its first chunk); past it the file is left to the whole-stream check.
 */
const maxHeaderFetch = 64 << 10;

export class EstargzHeaderCheck {
  private readonly done = new Map<string, Promise<void>>();
  /** What chunks' members inflated to past the chunk, as reads and read-aheads saw them: the next file's headers. */
  private readonly tails = new Map<EstargzMemberChunk, Buffer>();
  /** Every chunk in blob order, with its file: built at the first check. */
  private order: Array<{ chunk: EstargzMemberChunk; path: string; last: boolean; fileSize: number }> | undefined;
  private wholeChecked = false;

  constructor(
    private readonly index: { chunks: ReadonlyMap<string, readonly EstargzMemberChunk[]> },
    private readonly blob: BlobRangeReader,
    private readonly what: string,
    private readonly log?: (message: string, error: unknown) => void,
  ) {}

  /** Resolves once `path`'s header agrees with the TOC; rejects (every time) if it does not. */
  check(path: string): Promise<void> {
    if (this.wholeChecked) return Promise.resolve();
    let done = this.done.get(path);
    if (!done) {
      done = this.checkNow(path).catch((err: unknown) => {
        if ((err as LazyrootError).code === 'UNAVAILABLE') {
          this.done.delete(path); // the bytes did not come: check again at the next read
        } else {
          this.log?.(`${this.what}: ${JSON.stringify(path)}: refused: the TOC disagrees with the layer's tar stream`, err);
        }
        throw err;
      });
      this.done.set(path, done);
    }
    return done;
  }

  /** The whole tar stream agrees with the TOC (toc-check.ts): nothing is left to check per file. */
  markWholeChecked(): void {
    this.wholeChecked = true;
    this.tails.clear();
    this.done.clear();
  }

  /** A chunk's member inflated to `tail` past the chunk (reader.ts onTail): kept for the next file's check. */
  noteTail(chunk: EstargzMemberChunk, tail: Buffer): void {
    if (this.wholeChecked) return;
    this.tails.set(chunk, tail);
    if (this.tails.size > maxTails) this.tails.delete(this.tails.keys().next().value!);
  }

  /** Where the blob bytes a check of `path` needs start (a read-ahead may bring them along), or undefined. */
  bytesFrom(path: string): number | undefined {
    if (this.wholeChecked || this.done.has(path)) return undefined;
    const first = this.index.chunks.get(path)?.[0];
    if (!first) return undefined;
    const at = this.position(first);
    const from = at > 0 ? this.chunkOrder()[at - 1]!.chunk.compressedStart : 0;
    return first.compressedStart - from > maxHeaderFetch ? undefined : from;
  }

  private async checkNow(path: string): Promise<void> {
    const first = this.index.chunks.get(path)?.[0];
    if (!first) return; // an empty file: no bytes to serve
    const size = this.fileSize(path);
    const order = this.chunkOrder();
    const at = this.position(first);
    const previous = at > 0 ? order[at - 1] : undefined;
    if (previous && sameStart(previous.chunk, first)) throw this.mismatch(path, `its first chunk is also a chunk of ${JSON.stringify(previous.path)}`);
    const next = order[at + 1];
    if (next && next.chunk !== first && sameStart(next.chunk, first)) throw this.mismatch(path, `its first chunk is also a chunk of ${JSON.stringify(next.path)}`);

    // The headers after the previous chunk, as its read inflated them: nothing to fetch or inflate.
    const tail = previous?.last && (first.innerOffset ?? 0) === 0 && previous.chunk.compressedEnd === first.compressedStart ? this.tails.get(previous.chunk) : undefined;
    if (tail && previous) {
      this.tails.delete(previous.chunk);
      this.walkHeaders(tail, padding(previous.fileSize), path, size);
      return;
    }
    // The uncompressed bytes from the previous chunk's member up to the file's first byte.
    const from = previous?.chunk.compressedStart ?? 0;
    // That member holds the previous file's last chunk too, up to a whole chunk (4 MiB): fetching it for
    // a small file would cost more than the file. Such a file is left to the whole-stream check at promotion.
    if (first.compressedStart - from > maxHeaderFetch) return;
    const limit = (previous ? (previous.chunk.innerOffset ?? 0) + previous.chunk.size : 0) + headerSlack;
    const head = from < first.compressedStart ? await this.inflate(from, first.compressedStart, limit, path) : Buffer.alloc(0);
    const inner = first.innerOffset ?? 0;
    const own = inner > 0 ? (await this.inflate(first.compressedStart, first.compressedEnd, inner + first.size + headerSlack, path)).subarray(0, inner) : Buffer.alloc(0);
    const stream = head.length === 0 ? own : own.length === 0 ? head : Buffer.concat([head, own]);

    let p = 0;
    if (previous) {
      if (!previous.last) throw this.mismatch(path, `the chunk before it in the blob (of ${JSON.stringify(previous.path)}) does not end its file`);
      p = (previous.chunk.innerOffset ?? 0) + previous.chunk.size + padding(previous.fileSize);
    }
    this.walkHeaders(stream, p, path, size);
  }

  /** Walks the tar headers in stream[p…]: the last must be `entry`'s, ending where the stream ends. */
  private walkHeaders(stream: Buffer, p: number, path: string, size: number): void {
    const why = headerBeforeData(stream, p, path, size, this.what);
    if (why !== undefined) throw this.mismatch(path, why.replace('the index', 'the TOC'));
  }

  private async inflate(start: number, end: number, maxBytes: number, path: string): Promise<Buffer> {
    const verified = await this.blob.readVerified?.(start, end);
    // Header bytes a read-ahead brought along are kept unverified: no less trusted than fetching them again.
    const kept = verified ? undefined : await this.blob.readKept?.(start, end);
    const bytes = verified ?? kept ?? (await this.blob.read(start, end));
    let out: Buffer;
    try {
      out = await inflateMember(bytes, maxBytes + 1);
    } catch (err) {
      // Bytes just fetched (not verified in the store) that do not inflate were likelier damaged on
      // the way (gzip's CRC caught it) than lied about: this read fails, the next checks again.
      // Verified bytes that do not inflate are the TOC's fault: the file is refused.
      if (!verified) {
        if (kept) this.blob.dropKept?.(start, end);
        throw damagedBytes(`${this.what}: ${JSON.stringify(path)}: blob bytes ${start}-${end}, fetched for the tar header before its bytes, do not inflate (damaged on the way?): ${(err as Error).message}`, err);
      }
      throw Object.assign(this.mismatch(path, `blob bytes ${start}-${end} do not inflate as the TOC says (${(err as Error).message})`), { cause: err });
    }
    if (out.length > maxBytes) throw this.mismatch(path, `blob bytes ${start}-${end} inflate to more than the ${maxBytes} bytes the TOC allows there`);
    return out;
  }

  /**
   * The size the TOC gives the regular file at `path`: where its chunks end
   * (the TOC parser refuses chunks that do not cover a file exactly). Not a
   * map of every entry built at the first check: that was 18 ms of CPU
   * before a mount's first file could be served.
   */
  private fileSize(path: string): number {
    const chunks = this.index.chunks.get(path);
    const last = chunks?.[chunks.length - 1];
    if (!last) throw this.mismatch(path, 'not a regular file of the TOC');
    return last.offset + last.size;
  }

  private chunkOrder(): NonNullable<EstargzHeaderCheck['order']> {
    if (this.order) return this.order;
    const order: NonNullable<EstargzHeaderCheck['order']> = [];
    for (const [path, chunks] of this.index.chunks) {
      const fileSize = chunks.length ? chunks[chunks.length - 1]!.offset + chunks[chunks.length - 1]!.size : 0;
      chunks.forEach((chunk, i) => order.push({ chunk, path, last: i === chunks.length - 1, fileSize }));
    }
    order.sort((a, b) => a.chunk.compressedStart - b.chunk.compressedStart || (a.chunk.innerOffset ?? 0) - (b.chunk.innerOffset ?? 0));
    return (this.order = order);
  }

  /** Index of `chunk` in the blob order (binary search, then the exact object among equals). */
  private position(chunk: EstargzMemberChunk): number {
    const order = this.chunkOrder();
    let lo = 0;
    let hi = order.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const c = order[mid]!.chunk;
      if (c.compressedStart < chunk.compressedStart || (c.compressedStart === chunk.compressedStart && (c.innerOffset ?? 0) < (chunk.innerOffset ?? 0))) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < order.length && sameStart(order[i]!.chunk, chunk); i++) if (order[i]!.chunk === chunk) return i;
    return lo;
  }

  private mismatch(path: string, why: string): LazyrootError {
    return new LazyrootError('INVALID_DATA', `${this.what}: ${JSON.stringify(path)}: the TOC disagrees with the layer's tar stream: ${why}`);
  }
}

function sameStart(a: EstargzMemberChunk, b: EstargzMemberChunk): boolean {
  return a.compressedStart === b.compressedStart && (a.innerOffset ?? 0) === (b.innerOffset ?? 0);
}

/** Tar padding after a file of `size` bytes. */
function padding(size: number): number {
  return (512 - (size % 512)) % 512;
}

import { LazyrootError } from '../errors.js';
import { headerBeforeData } from './estargz/tar-header.js';
import type { LayerIndex } from './layer-index.js';
import type { IndexEntry } from './types.js';

/** Uncompressed bytes of tar headers a check reads in front of a file; past it the index is not believed. */
const maxHeaderBytes = 8 << 20;

/**
 * For a span index that was not built here (one from the registry): checks,
 * before a file's bytes are served, that the layer's tar stream really has
 * that file there. Span digests prove the bytes are the layer's, not that
 * they are the file's: an index could point `/etc/passwd` at another file's
 * bytes. So the tar headers between the end of the previous file's data and
 * this file's first byte are read (through the same verified spans; usually
 * the span the read needs anyway) and the last one must name the file, as a
 * regular file of the index's size, and end exactly where its bytes begin.
 * One check per file per mount; a file that fails it fails every read
 * (INVALID_DATA → EIO), logged once.
 */
export class SpanIndexHeaderCheck {
  private readonly done = new Map<string, Promise<void>>();
  private wholeChecked = false;
  /** Data starts (sorted) and where each one's data ends, rounded to the tar block. */
  private starts: Float64Array | undefined;
  private ends: Float64Array | undefined;

  constructor(
    private readonly index: LayerIndex,
    private readonly readUncompressed: (start: number, end: number) => Promise<Buffer>,
    private readonly what: string,
    private readonly log?: (message: string, error: unknown) => void,
  ) {}

  /** Resolves once the tar header before `entry`'s bytes names it; rejects (every time) if not. `path`: its path in the layer. */
  check(entry: IndexEntry, path: string): Promise<void> {
    const at = entry.dataOffset;
    if (at === undefined || entry.size === 0 || this.wholeChecked) return Promise.resolve();
    const key = `${at}\0${path}`;
    let done = this.done.get(key);
    if (!done) {
      done = this.checkNow(at, path, entry).catch((err: unknown) => {
        if ((err as LazyrootError).code === 'UNAVAILABLE') this.done.delete(key);
        else this.log?.(`${this.what}: ${JSON.stringify(path)}: refused: the span index disagrees with the layer's tar stream`, err);
        throw err;
      });
      this.done.set(key, done);
    }
    return done;
  }

  /** The whole index agrees with the whole tar stream (the blob is complete): nothing is left to check per file. */
  markWholeChecked(): void {
    this.wholeChecked = true;
    this.done.clear();
  }

  private async checkNow(at: number, path: string, entry: IndexEntry): Promise<void> {
    const { starts, ends } = this.table();
    // The last data region that starts before this file's: its end is where the headers begin.
    let lo = 0;
    let hi = starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (starts[mid]! < at) lo = mid + 1;
      else hi = mid;
    }
    const from = lo > 0 ? ends[lo - 1]! : 0;
    if (from > at) throw this.mismatch(path, `its bytes (from ${at}) overlap the data of the file before it (to ${from})`);
    if (at - from > maxHeaderBytes) throw this.mismatch(path, `the index puts ${at - from} bytes of tar headers in front of it`);
    if (at - from < 512) throw this.mismatch(path, 'there is no room for its tar header');
    const stream = await this.readUncompressed(from, at);
    const why = entry.sparse ? this.sparseHeader(stream, path) : headerBeforeData(stream, 0, path, entry.size, this.what);
    if (why !== undefined) throw this.mismatch(path, why);
  }

  /** A sparse file's data may follow its sparse map (PAX 1.0): some header in front must be the file's. */
  private sparseHeader(stream: Buffer, path: string): string | undefined {
    for (let end = 512; end <= stream.length; end += 512) {
      if (headerBeforeData(stream.subarray(0, end), 0, path, undefined, this.what) === undefined) return undefined;
    }
    return 'no tar header of its own before its bytes';
  }

  private table(): { starts: Float64Array; ends: Float64Array } {
    if (this.starts && this.ends) return { starts: this.starts, ends: this.ends };
    const regions = this.index.entries
      .filter((e) => e.type === 'file' && e.dataOffset !== undefined)
      .map((e) => {
        const stored = e.sparse ? e.sparse.reduce((n, r) => n + r.size, 0) : e.size;
        return [e.dataOffset!, e.dataOffset! + Math.ceil(stored / 512) * 512] as const;
      })
      .sort((a, b) => a[0] - b[0]);
    this.starts = Float64Array.from(regions, (r) => r[0]);
    this.ends = Float64Array.from(regions, (r) => r[1]);
    return { starts: this.starts, ends: this.ends };
  }

  private mismatch(path: string, why: string): LazyrootError {
    return new LazyrootError('INVALID_DATA', `${this.what}: ${JSON.stringify(path)}: the span index disagrees with the layer's tar stream: ${why}`);
  }
}

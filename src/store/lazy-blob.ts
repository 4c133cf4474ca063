import { constants, createReadStream } from 'node:fs';
import { mkdir, open, rm, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { LazyrootError } from '../errors.js';
import { hasherFor, shortDigest, type Digest } from '../oci/digest.js';
import { commitFile } from './atomic-file.js';
import { IntervalSet } from './interval-set.js';
import type { Store } from './store.js';

/** Fetches bytes [start, end) of the blob from its source (HTTP Range, a file…). */
export type RangeFetcher = (start: number, end: number, signal: AbortSignal) => Promise<Buffer>;

export interface LazyBlobOptions {
  /** A read that has not got its bytes after this long fails (→ EIO), and the mount stays usable. */
  deadlineMs?: number;
  /** Fetches in flight at once for this blob. */
  maxInFlight?: number;
  /** Names the blob in errors. */
  what: string;
}

export interface LazyBlobStats {
  bytesFetched: number;
  requests: number;
  /** Reads served from verified bytes on disk. */
  hits: number;
  misses: number;
  fetchMillis: number;
  failures: number;
}

/**
 * A layer blob that is read before it is downloaded: its verified ranges live
 * in a sparse file `partial/<alg>/<hex>` and in the store's `blob_ranges`
 * table, so they survive restarts. Fetched bytes are held in memory until the
 * index reader has verified them (`confirm`); only then are they written and
 * marked present. Concurrent reads of the same range share one fetch. When
 * every byte is present the blob is hashed whole and moved to `blobs/`.
 */
export class LazyBlob {
  readonly stats: LazyBlobStats = { bytesFetched: 0, requests: 0, hits: 0, misses: 0, fetchMillis: 0, failures: 0 };
  private readonly present: IntervalSet;
  private readonly pending = new Map<number, Buffer>();
  private readonly inFlight = new Map<string, Promise<Buffer>>();
  private running = 0;
  private readonly queue: Array<() => void> = [];
  private file: FileHandle | undefined;
  private complete = false;
  private persistTimer: NodeJS.Timeout | undefined;
  private readonly deadlineMs: number;
  private readonly maxInFlight: number;

  private constructor(
    private readonly store: Store,
    readonly digest: Digest,
    readonly size: number,
    private readonly fetcher: RangeFetcher,
    private readonly options: LazyBlobOptions,
  ) {
    this.present = IntervalSet.from(store.db.blobRanges(digest));
    this.deadlineMs = options.deadlineMs ?? 30_000;
    this.maxInFlight = options.maxInFlight ?? 8;
  }

  static async open(store: Store, digest: Digest, size: number, fetcher: RangeFetcher, options: LazyBlobOptions): Promise<LazyBlob> {
    const blob = new LazyBlob(store, digest, size, fetcher, options);
    if (await store.blobs.has(digest, size)) {
      blob.complete = true;
      blob.file = await open(store.blobs.path(digest), 'r');
      return blob;
    }
    const path = store.paths.partialBlob(digest);
    await mkdir(dirname(path), { recursive: true });
    const file = await open(path, constants.O_RDWR | constants.O_CREAT, 0o600);
    if ((await file.stat()).size !== size) await file.truncate(size); // sparse: holes cost nothing
    blob.file = file;
    return blob;
  }

  get bytesPresent(): number {
    return this.complete ? this.size : this.present.total;
  }

  get isComplete(): boolean {
    return this.complete;
  }

  async read(start: number, end: number): Promise<Buffer> {
    if (start < 0 || end > this.size || end < start) {
      throw new LazyrootError('INVALID_ARGUMENT', `${this.options.what}: range ${start}-${end} outside the blob's ${this.size} bytes`);
    }
    if (this.complete || this.present.covers(start, end)) {
      this.stats.hits++;
      const out = Buffer.allocUnsafe(end - start);
      const { bytesRead } = await this.file!.read(out, 0, out.length, start);
      return bytesRead === out.length ? out : out.subarray(0, bytesRead);
    }
    this.stats.misses++;
    const key = `${start}-${end}`;
    let fetch = this.inFlight.get(key);
    if (!fetch) {
      fetch = this.fetch(start, end).finally(() => this.inFlight.delete(key));
      this.inFlight.set(key, fetch);
    }
    const bytes = await fetch;
    this.pending.set(start, bytes);
    return bytes;
  }

  /** The reader verified [start, end): write it to the partial blob and mark it present. */
  confirm(start: number, end: number): void {
    const bytes = this.pending.get(start);
    if (!bytes || this.complete) return;
    this.pending.delete(start);
    void this.file!.write(bytes, 0, Math.min(bytes.length, end - start), start).then(() => {
      this.present.add(start, end);
      this.schedulePersist();
      if (this.present.covers(0, this.size)) void this.promote().catch(() => undefined);
    });
  }

  private async fetch(start: number, end: number): Promise<Buffer> {
    await this.slot();
    const began = Date.now();
    this.stats.requests++;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.deadlineMs);
    try {
      const bytes = await Promise.race([
        this.fetcher(start, end, controller.signal),
        new Promise<never>((_, reject) =>
          controller.signal.addEventListener('abort', () =>
            reject(new LazyrootError('UNAVAILABLE', `${this.options.what}: bytes ${start}-${end}: no answer within ${this.deadlineMs} ms`)),
          ),
        ),
      ]);
      if (bytes.length !== end - start) {
        throw new LazyrootError('UNAVAILABLE', `${this.options.what}: bytes ${start}-${end}: source sent ${bytes.length} bytes`);
      }
      this.stats.bytesFetched += bytes.length;
      return bytes;
    } catch (err) {
      this.stats.failures++;
      throw err;
    } finally {
      clearTimeout(timer);
      this.stats.fetchMillis += Date.now() - began;
      this.release();
    }
  }

  private slot(): Promise<void> {
    if (this.running < this.maxInFlight) {
      this.running++;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.queue.push(() => resolve()));
  }

  private release(): void {
    const next = this.queue.shift();
    if (next) next();
    else this.running--;
  }

  private schedulePersist(): void {
    if (this.persistTimer) return;
    // Batch: many confirmations in a burst become one transaction.
    this.persistTimer = setTimeout(() => {
      this.persistTimer = undefined;
      this.persist();
    }, 200);
    this.persistTimer.unref();
  }

  persist(): void {
    if (this.persistTimer) {
      clearTimeout(this.persistTimer);
      this.persistTimer = undefined;
    }
    if (!this.complete) this.store.db.setBlobRanges(this.digest, this.present.ranges());
  }

  /** Every byte is here: hash the whole blob, and on a match move it into blobs/. */
  private async promote(): Promise<void> {
    if (this.complete) return;
    const path = this.store.paths.partialBlob(this.digest);
    const hash = hasherFor(this.digest);
    for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
    const got = `${this.digest.slice(0, this.digest.indexOf(':'))}:${hash.digest('hex')}`;
    if (got !== this.digest) {
      // Cannot happen when every range was verified; start over rather than trust it.
      this.store.db.setBlobRanges(this.digest, []);
      throw new LazyrootError('DIGEST_MISMATCH', `${this.options.what}: assembled blob ${shortDigest(this.digest)} does not match its digest (got ${got})`);
    }
    await mkdir(dirname(this.store.blobs.path(this.digest)), { recursive: true });
    await commitFile(path, this.store.blobs.path(this.digest));
    this.complete = true;
    this.store.db.setBlobRanges(this.digest, []);
  }

  async close(): Promise<void> {
    this.persist();
    await this.file?.close();
    this.file = undefined;
  }
}

/** Removes a partial blob and its range map (GC, or a blob found corrupt). */
export async function removePartialBlob(store: Store, digest: Digest): Promise<void> {
  store.db.setBlobRanges(digest, []);
  await rm(store.paths.partialBlob(digest), { force: true });
}

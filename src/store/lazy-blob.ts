import { constants, createReadStream } from 'node:fs';
import { mkdir, open, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { isErrorCode, LazyrootError } from '../errors.js';
import { hasherFor, shortDigest, type Digest } from '../oci/digest.js';
import { commitFile } from './atomic-file.js';
import { writeFully } from './write-fully.js';
import type { FetchQueue } from './fetch-queue.js';
import { nextWindow, regionAround, SequentialReads, windowsFor, type PrefetchUnit, type Window } from './fetch-windows.js';
import { IntervalSet } from './interval-set.js';
import type { Store } from './store.js';
import type { LazyBlobGroup } from './lazy-blob-group.js';
import { isTimedOut, UnansweredRanges } from './unanswered-ranges.js';

export { LazyBlobGroup, type LazyBlobGroupOptions } from './lazy-blob-group.js';

/**
 * Fetches bytes [start, end) of the blob from its source (HTTP Range, a
 * file…). A source that answers with the whole blob instead (a pull-through
 * cache on a miss) hands it to `onWholeBlob`, from byte 0, and still
 * returns the range.
 */
export type RangeFetcher = (start: number, end: number, signal: AbortSignal, onWholeBlob: (blob: Readable) => void) => Promise<Buffer>;

export interface LazyBlobOptions {
  /** A read that has not got its bytes after this long fails (→ EIO), and the mount stays usable. */
  deadlineMs?: number;
  /** Fetches in flight at once for this blob. */
  maxInFlight?: number;
  /** Names the blob in errors. */
  what: string;
  /** Recorded in the store's `blobs` table when the blob becomes whole (GC and the overlay path see it). */
  mediaType?: string;
  /** The blobs of one mount share a group: demand reads go before prefetch, and the partial-bytes bound. */
  group?: LazyBlobGroup;
  /**
   * The blob from `offset` to its end, streamed: resumes a whole-blob answer
   * (see RangeFetcher) that was cut short.
   */
  openStream?: (offset: number, signal: AbortSignal) => Promise<Readable>;
}

export interface LazyBlobStats {
  /** Bytes and requests of demand reads (what a FUSE read waited for). */
  bytesFetched: number;
  requests: number;
  /** Reads served from verified bytes on disk. */
  hits: number;
  misses: number;
  fetchMillis: number;
  failures: number;
  /** Background prefetch: bytes, requests, failed attempts (transport or verification). */
  bytesPrefetched: number;
  prefetchRequests: number;
  prefetchFailures: number;
  /** Bytes downloaded by streaming the whole blob (a source that ignores Range). */
  bytesStreamed: number;
  /** Verified bytes dropped to keep under the group's cacheMaxBytes. */
  evictedBytes: number;
}

export type { PrefetchUnit } from './fetch-windows.js';

export interface PrefetchOptions {
  signal: AbortSignal;
  /** Adjacent units are fetched together up to this many bytes per request. Default 2 MiB. */
  windowBytes?: number;
  /** Consecutive failed attempts before this blob's prefetch gives up. Default 8. */
  maxFailures?: number;
  /** First retry delay, doubled per failure up to 30 s. Default 500 ms. */
  retryDelayMs?: number;
}

export interface FetchAheadOptions {
  /** Ends the requests (the mount is going away). */
  signal?: AbortSignal;
  /** Wanted units this close together share a request, the bytes between included. Default 128 KiB. */
  gapBytes?: number;
  /** Bytes per request at most. Default 4 MiB. */
  windowBytes?: number;
  /** When each of the ranges is needed, lower sooner (a profile's first-read times): a request's rank is its soonest range's. */
  ranks?: readonly number[];
  /** Where the requests wait to go out, soonest first, with the other blobs' of the mount (else all go at once). */
  queue?: FetchQueue;
}

export type PrefetchState = 'off' | 'waiting' | 'running' | 'done' | 'stopped' | 'failed';

/** Demand fetches of one blob under way at once from which every read fetches its whole read-ahead region. */
const busyReads = 4;
/** LRU granularity of the cache bound: reads and confirmations touch 1 MiB blocks. */
const blockBytes = 1 << 20;
/** How long after its bytes arrived a demand read's claim on them lapses if it never confirms them. */
const claimGraceMs = 2_000;
/**
 * How long a read waits on a request it did not make (read-ahead, a
 * profile, prefetch) before it asks for its bytes itself: a third of its
 * time, so that a request the source left hanging leaves the read enough.
 */
function hedgeMs(waitMs: number): number {
  return Math.ceil(waitMs / 3);
}

/** Whether `work` settled (either way) within `ms`. */
async function settledWithin(work: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      work.then(
        () => true,
        () => true,
      ),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** How long bytes a request brought along (`leftover`) wait for the layer's units before they are dropped. */
const leftoverMs = 10_000;
/** Fetched-but-unconfirmed buffers kept for `confirm`; the oldest go first beyond this. */
const maxPending = 256;

/** ENOSPC or EDQUOT: the store's filesystem has no room for what we write (SQLite says SQLITE_FULL). */
function isDiskFull(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL';
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** `work`, or the abort's reason as soon as `signal` aborts (work goes on). */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err as Error);
      },
    );
  });
}

/**
 * A layer blob that is read before it is downloaded: its verified ranges live
 * in a sparse file `partial/<alg>/<hex>` and in the store's `blob_ranges`
 * table, so they survive restarts. Fetched bytes are held in memory until the
 * index reader has verified them (`confirm`); only then are they written and
 * marked present. Concurrent reads of the same range share one fetch. When
 * every byte is present the blob is hashed whole and moved to `blobs/`.
 *
 * Besides demand reads: `prefetch` fetches the rest at low priority. A
 * ranged request answered with the whole blob (a registry that ignores
 * Range, a pull-through cache that has not got the blob yet) is kept whole
 * in `blobs/` as it arrives (`streamWhole`): read once, the asked range
 * served from it, every later read of this blob served from there. The
 * decision is per answer: other blobs, and later requests, ask for ranges.
 */
export class LazyBlob {
  readonly stats: LazyBlobStats = {
    bytesFetched: 0,
    requests: 0,
    hits: 0,
    misses: 0,
    fetchMillis: 0,
    failures: 0,
    bytesPrefetched: 0,
    prefetchRequests: 0,
    prefetchFailures: 0,
    bytesStreamed: 0,
    evictedBytes: 0,
  };
  /** Verified ranges: served, persisted. */
  private present: IntervalSet;
  /** Ranges written from the source but vouched for only by the whole blob's digest: never served, never persisted. */
  private provisional = new IntervalSet();
  private kept = 0;
  private readonly pending = new Map<number, Buffer>();
  /** Demand fetches under way, by `start-end`, with when each was asked. */
  private readonly inFlight = new Map<string, { start: number; end: number; began: number; bytes: Promise<Buffer> }>();
  /** Ranges the source left unanswered past the deadline: reads of them wait only a short grace. */
  private readonly unanswered: UnansweredRanges;
  /**
   * Ranges demand reads are fetching, verifying or writing now (by
   * `start-end`, with when the claim lapses): prefetch leaves them alone. A
   * read whose bytes fail verification is never confirmed: its claim lapses
   * shortly after the bytes arrived.
   */
  private readonly claims = new Map<string, { start: number; end: number; until: number }>();
  /** Whether demand reads walk the blob in order: read-ahead only then. */
  private readonly readAhead = new SequentialReads();
  /** Demand read-ahead requests under way (`fetchRegion`), settled once their units are kept or refused. */
  private readonly regions: Array<{ start: number; end: number; began: number; kept: Promise<void>; ahead?: boolean; hurry?: () => void }> = [];
  /** The prefetch request under way (one at most), settled once its units are kept or refused. */
  private prefetching: { start: number; end: number; kept: Promise<void> } | undefined;
  /**
   * Bytes a request brought along that its caller could not vouch for (the
   * last files before an eStargz TOC, in the footer's request): held until
   * the units are known (the first read or prefetch), then checked and kept
   * like a read-ahead's, instead of fetched again.
   */
  private leftover: { start: number; bytes: Buffer } | undefined;
  private running = 0;
  private readonly queue: Array<() => void> = [];
  private file: FileHandle | undefined;
  /** Handles replaced while reads may still use them; closed with the blob. */
  private readonly retired: FileHandle[] = [];
  private complete = false;
  /** How the blob became whole, when it did in this process. */
  private wholeBy: 'ranges' | 'streamed' | undefined;
  /** A promotion or a whole-blob stream under way. */
  private completion: Promise<void> | undefined;
  /** A promotion waiting for the mount's reads to pause (see promote). */
  private promotion: Promise<void> | undefined;
  /** The completion under way is a whole-blob download (not a promotion). */
  private streaming = false;
  /** Bytes of whole-blob answers not kept because ranged ones had been (see adoptWhole). */
  private declinedWholeBytes = 0;
  private persistTimer: NodeJS.Timeout | undefined;
  private readonly deadlineMs: number;
  private readonly maxInFlight: number;
  private readonly group: LazyBlobGroup | undefined;
  /** Tracks block use only when the group has a bound: nothing to do on the read path otherwise. */
  private readonly tracksUse: boolean;
  private readonly lastUse = new Map<number, number>();
  private readonly closing = new AbortController();
  prefetchState: PrefetchState = 'off';
  /** Told each blob range a demand read needs, hit or miss (the mount records access profiles with it). */
  onDemandRange: ((start: number, end: number) => void) | undefined;
  /** Why the last write of the range map failed, until one succeeds. */
  persistError: string | undefined;
  /** Why the last prefetch attempt failed, if it did. */
  prefetchError: string | undefined;
  /** Looks at the whole blob (verified by its digest) before it is promoted: see checkWholeWith. */
  private wholeCheck: ((path: string, signal: AbortSignal) => Promise<void>) | undefined;
  /** Why the blob's bytes must not be served (its whole check failed): every read fails with it. */
  private refused: LazyrootError | undefined;

  /** Why the blob is refused (its whole check failed), if it is: readers holding decoded bytes of it must fail too. */
  get refusal(): LazyrootError | undefined {
    return this.refused;
  }

  private constructor(
    private readonly store: Store,
    readonly digest: Digest,
    readonly size: number,
    private readonly fetcher: RangeFetcher,
    private readonly options: LazyBlobOptions,
  ) {
    this.present = new IntervalSet(); // read with the partial file it describes (open)
    this.deadlineMs = options.deadlineMs ?? 30_000;
    this.maxInFlight = options.maxInFlight ?? 8;
    this.unanswered = new UnansweredRanges(this.deadlineMs);
    this.group = options.group;
    this.tracksUse = this.group?.cacheMaxBytes !== undefined;
  }

  static async open(store: Store, digest: Digest, size: number, fetcher: RangeFetcher, options: LazyBlobOptions): Promise<LazyBlob> {
    const blob = new LazyBlob(store, digest, size, fetcher, options);
    const path = store.paths.partialBlob(digest);
    let partial: { file: FileHandle; ranges: Array<[number, number]> } | undefined;
    while (!partial) {
      if (await store.blobs.has(digest, size)) {
        blob.complete = true;
        blob.file = await open(store.blobs.path(digest), 'r');
        if (options.mediaType) store.db.recordBlob(digest, size, options.mediaType);
        return blob;
      }
      partial = await openPartial(store, digest, path);
    }
    const { file, ranges } = partial;
    if ((await file.stat()).size !== size) await file.truncate(size); // sparse: holes cost nothing
    blob.file = file;
    blob.present = IntervalSet.from(ranges);
    blob.kept = blob.present.total;
    if (blob.tracksUse) {
      // Ranges from an earlier run are the least recently used of all.
      for (const [s, e] of blob.present.ranges()) for (let b = Math.floor(s / blockBytes); b * blockBytes < e; b++) blob.lastUse.set(b, 0);
    }
    options.group?.join(blob);
    return blob;
  }

  /**
   * Before the blob is promoted to blobs/ (its digest verified), `check`
   * reads the whole of it at `path`: an eStargz layer compares its tar
   * stream with the TOC. A check that fails refuses the blob: it is not
   * promoted, and every read of it fails with that error from then on.
   */
  checkWholeWith(check: (path: string, signal: AbortSignal) => Promise<void>): void {
    this.wholeCheck = check;
  }

  get bytesPresent(): number {
    return this.complete ? this.size : this.present.total;
  }

  /** Bytes this blob holds in its partial file (0 once complete): what the group's bound counts. */
  get partialBytes(): number {
    return this.complete ? 0 : this.kept;
  }

  get isComplete(): boolean {
    return this.complete;
  }

  /** BlobRangeReader: a complete blob was verified whole (in blobs/ only after its digest matched). */
  get verifiedWhole(): boolean {
    return this.complete;
  }

  /** 'streamed' when the blob was downloaded whole because its source ignores Range. */
  get completedBy(): 'ranges' | 'streamed' | undefined {
    return this.wholeBy;
  }

  async read(start: number, end: number): Promise<Buffer> {
    if (this.refused) throw this.refused;
    if (start < 0 || end > this.size || end < start) {
      throw new LazyrootError('INVALID_DATA', `${this.options.what}: range ${start}-${end} outside the blob's ${this.size} bytes`);
    }
    this.onDemandRange?.(start, end);
    this.group?.noteRead();
    if (this.complete || this.present.covers(start, end)) return this.readLocal(start, end);
    this.stats.misses++;
    const waitMs = this.waitMs(start, end);
    const began = Date.now();
    if (this.streamsWhole()) {
      this.group?.readStarted();
      try {
        await this.withDeadline(this.streamWhole(), start, end, waitMs);
      } finally {
        this.group?.readEnded();
      }
      return this.readLocal(start, end, false);
    }
    this.group?.readStarted();
    let bytes: Buffer;
    try {
      // A request already bringing these bytes (prefetch, a profile, read-ahead): wait for it rather than ask twice.
      const bringing = this.requestBringing(start, end, waitMs);
      if (bringing?.ahead) {
        // A request fetching ahead of reads: waited on for a third of the read's time; then, or once it
        // fails (prefetch retries later), the read fetches for itself (see fetchRegion).
        await settledWithin(bringing.kept, hedgeMs(waitMs));
        if (this.complete || this.present.covers(start, end)) return await this.readLocal(start, end, false);
      } else if (bringing) {
        // Another read's request, within the read's deadline; one that fails leaves the read to fetch.
        await this.withDeadline(bringing.kept.catch(() => undefined), start, end, waitMs, waitMs, 'the request bringing them');
        if (this.complete || this.present.covers(start, end)) return await this.readLocal(start, end, false);
      }
      // What is left of the read's time after waiting on another's request: the read never waits longer in all.
      const left = waitMs - (Date.now() - began);
      const key = `${start}-${end}`;
      let fetch = this.inFlight.get(key);
      // After a silence, a request older than the grace is likely stuck: ask afresh rather than wait on it.
      if (fetch && waitMs < this.deadlineMs && Date.now() - fetch.began >= waitMs) fetch = undefined;
      if (!fetch) {
        const claim = { start, end, until: Date.now() + this.deadlineMs + claimGraceMs };
        this.claims.set(key, claim);
        const entry = { start, end, began: Date.now(), bytes: this.fetch(start, end) };
        entry.bytes = entry.bytes.finally(() => this.inFlight.get(key) === entry && this.inFlight.delete(key));
        entry.bytes.then(
          () => (claim.until = Date.now() + claimGraceMs), // time enough to verify and confirm
          () => this.claims.get(key) === claim && this.claims.delete(key),
        );
        fetch = entry;
        this.inFlight.set(key, fetch);
      }
      // A fetch's own request gives up at the deadline; a read after a silence, or after waiting on another's request, waits less.
      bytes = bringing?.ahead ? await this.withDeadline(fetch.bytes, start, end, Math.max(1, left), waitMs, 'the request for them') : waitMs < this.deadlineMs ? await this.withDeadline(fetch.bytes, start, end, waitMs) : await fetch.bytes;
    } finally {
      this.group?.readEnded();
    }
    if (this.pending.size >= maxPending) this.pending.delete(this.pending.keys().next().value!);
    this.pending.set(start, bytes);
    return bytes;
  }

  /** BlobRangeReader: [start, end) if it is in blobs/ or a verified range of the partial file (read from disk), else undefined. */
  async readVerified(start: number, end: number): Promise<Buffer | undefined> {
    if (this.refused) throw this.refused;
    if (start < 0 || end > this.size || end < start) return undefined;
    this.onDemandRange?.(start, end);
    this.group?.noteRead();
    if (!(this.complete || this.present.covers(start, end))) return undefined;
    return this.readLocal(start, end);
  }

  /** BlobRangeReader: [start, end) if kept at all (verified or provisional), from disk, else undefined. */
  async readKept(start: number, end: number): Promise<Buffer | undefined> {
    if (this.refused) throw this.refused;
    if (start < 0 || end > this.size || end < start) return undefined;
    if (!(this.complete || this.keptCovers(start, end))) return undefined;
    return this.readLocal(start, end, false);
  }

  /** BlobRangeReader: provisional bytes of [start, end) were damaged; forgotten, they are fetched again when read. */
  dropKept(start: number, end: number): void {
    if (this.complete) return;
    this.provisional = without(this.provisional, start, end);
    this.kept = this.present.total + this.provisional.total;
    this.schedulePersist();
  }

  private async readLocal(start: number, end: number, hit = true): Promise<Buffer> {
    if (hit) this.stats.hits++;
    if (this.tracksUse && !this.complete) this.touch(start, end);
    const out = Buffer.allocUnsafe(end - start);
    const { bytesRead } = await this.file!.read(out, 0, out.length, start);
    return bytesRead === out.length ? out : out.subarray(0, bytesRead);
  }

  /**
   * Ranges the source left unanswered are forgotten: a caller that asks again
   * on purpose (a mount retrying its footer and TOC, not the kernel retrying
   * a read) waits a whole deadline for them.
   */
  forgetUnanswered(): void {
    this.unanswered.clear();
  }

  /**
   * Reads bytes the caller cannot verify piecewise (an eStargz footer and
   * TOC) and keeps them provisionally: those from `keepFrom(bytes)` on, when
   * given, else all.
   */
  async readUnverified(start: number, end: number, keepFrom?: (bytes: Buffer) => number): Promise<Buffer> {
    const bytes = await this.read(start, end);
    if (this.pending.get(start) === bytes) {
      this.pending.delete(start);
      // Only what the caller vouches for is kept now; bytes read along (an eStargz footer's request brings
      // the last files' bytes) are held until the layer's units are known, then checked (adoptLeftover).
      const from = keepFrom ? Math.min(end, Math.max(start, keepFrom(bytes))) : start;
      if (from > start) {
        const held = { start, bytes: bytes.subarray(0, from - start) };
        this.leftover = held;
        // Held for a mount's first reads, not for good: a layer nothing reads (a snapshotter's lower) lets them go.
        setTimeout(() => this.leftover === held && (this.leftover = undefined), leftoverMs).unref();
      }
      if (from < end) await this.keep(from, end, bytes.subarray(from - start), false);
    }
    this.claims.delete(`${start}-${end}`);
    return bytes;
  }

  /** The reader verified [start, end): write it to the partial blob and mark it present. */
  confirm(start: number, end: number): void {
    const bytes = this.pending.get(start);
    if (!bytes || this.complete) return;
    this.pending.delete(start);
    void this.keep(start, end, bytes.subarray(0, Math.min(bytes.length, end - start)), true).catch(() => undefined);
  }

  /**
   * Writes bytes of [start, end) into the partial file and records them:
   * verified → present (served, persisted); unverified → provisional (only
   * counted towards completion). Promotes the blob once everything is kept.
   */
  private async keep(start: number, end: number, bytes: Buffer, verified: boolean): Promise<void> {
    this.claims.delete(`${start}-${end}`);
    if (this.complete || !this.file) return;
    if (!verified) {
      // Never let unverified bytes overwrite anything kept, nor race a promotion of this inode.
      if (this.completion || this.keptCovers(start, end)) return;
    }
    await writeFully(this.file, bytes, 0, bytes.length, start);
    if (this.complete) return;
    if (verified) this.present.add(start, end);
    else this.provisional.add(start, end);
    this.kept = this.present.total + this.provisional.total;
    if (this.tracksUse) this.touch(start, end);
    this.schedulePersist();
    this.group?.enforceBound();
    if (this.keptCovers(0, this.size)) void this.promote().catch(() => undefined);
  }

  /** [start, end) is in present ∪ provisional. */
  private keptCovers(start: number, end: number): boolean {
    if (this.present.covers(start, end)) return true;
    return this.present.missing(start, end).every(([s, e]) => this.provisional.covers(s, e));
  }

  private touch(start: number, end: number): void {
    const tick = this.group!.nextTick();
    const last = Math.floor((Math.max(end, start + 1) - 1) / blockBytes);
    for (let b = Math.floor(start / blockBytes); b <= last; b++) this.lastUse.set(b, tick);
  }

  /** @internal The least recently used block holding kept bytes, for the group's eviction. */
  leastRecentBlock(): { block: number; tick: number } | undefined {
    if (this.complete || this.completion) return undefined; // never evict under a promotion's feet
    let found: { block: number; tick: number } | undefined;
    for (const [block, tick] of this.lastUse) if (!found || tick < found.tick) found = { block, tick };
    return found;
  }

  /**
   * @internal Drops block `block` from the kept ranges. There is no hole
   * punching from Node (`fallocate(FALLOC_FL_PUNCH_HOLE)` needs native code):
   * the sparse file keeps those bytes, but they are no longer marked present
   * so they are never served again — a later read of them fetches and
   * verifies anew, which overwrites them. So cacheMaxBytes bounds the bytes
   * kept *as present*; the partial file's disk blocks stay allocated (at most
   * the blob's size) until the blob is promoted or removed. An N-API
   * punch-hole could release them later.
   */
  evictBlock(block: number): void {
    this.lastUse.delete(block);
    const from = block * blockBytes;
    const to = Math.min(this.size, from + blockBytes);
    const before = this.present.total;
    this.present = without(this.present, from, to);
    this.provisional = without(this.provisional, from, to);
    this.stats.evictedBytes += before - this.present.total;
    this.kept = this.present.total + this.provisional.total;
    this.schedulePersist();
  }

  /** A whole-blob answer is being kept: reads wait for it rather than ask for ranges. */
  private streamsWhole(): boolean {
    return !this.complete && this.streaming;
  }

  /**
   * The source answered a ranged request with the whole blob: keep it (see
   * streamWhole), and say so. An answer not kept flows on until the range
   * taken from it has arrived (the request then drops it).
   *
   * Not kept when the blob is whole or being made so, nor when bytes of it
   * were kept from ranged answers already: the source does Range for it (a
   * pull-through cache answers 200 only while it is still fetching the blob
   * itself), and keeping the answer would download again what is kept. Each
   * answer not kept costs its bytes up to `end`; once those add up to the
   * blob's size, the source has stopped doing Range for it and the next is
   * kept.
   */
  private adoptWhole(blob: Readable, end: number): boolean {
    if (this.complete || this.completion || (this.kept > 0 && (this.declinedWholeBytes += end) <= this.size)) {
      blob.resume();
      return false;
    }
    const onClose = () => blob.destroy(this.closing.signal.reason as Error);
    this.closing.signal.addEventListener('abort', onClose, { once: true });
    blob.once('close', () => this.closing.signal.removeEventListener('abort', onClose));
    void this.streamWhole(blob).catch(() => undefined);
    return true;
  }

  /**
   * Downloads the whole blob into blobs/ once (`BlobStore.ingest`: verified
   * against the digest, resumed from `openStream` if cut), starting from
   * `first` (a whole-blob answer to a ranged request) when given, then
   * serves every read from it. Concurrent callers share the download.
   */
  streamWhole(first?: Readable): Promise<void> {
    if (this.complete) {
      first?.resume();
      return Promise.resolve();
    }
    const openStream = this.options.openStream;
    if (!openStream && !first) return Promise.reject(new LazyrootError('UNSUPPORTED', `${this.options.what}: the source cannot stream the blob`));
    if (this.completion) first?.resume();
    let handed = this.completion ? undefined : first;
    this.completion ??= (async () => {
      this.streaming = true;
      try {
        const result = await this.store.blobs.ingest(
          this.digest,
          this.size,
          async (offset) => {
            if (handed && offset === 0) {
              const stream = handed;
              handed = undefined;
              return stream;
            }
            if (!openStream) throw new LazyrootError('UNAVAILABLE', `${this.options.what}: the whole-blob answer was cut at byte ${offset} and the source cannot resume it`);
            return openStream(offset, this.closing.signal);
          },
          { what: `${this.options.what}: keeping the whole blob (the registry answered a range with all of it)` },
        );
        this.stats.bytesStreamed += result.transferred;
        // In blobs/ it is the image's own blob (its digest matched); this layer still serves none of it if its index lies.
        await this.runWholeCheck(this.store.blobs.path(this.digest));
        await this.becomeWhole('streamed');
      } finally {
        this.streaming = false;
        // Not taken (the blob was already in blobs/, or an earlier resume): let it run out so the range taken from it arrives.
        handed?.resume();
      }
    })().finally(() => {
      this.completion = undefined;
    });
    return this.completion;
  }

  /** How long a demand read of [start, end) may wait: the deadline, or a short grace where the source just stayed silent. */
  private waitMs(start: number, end: number): number {
    return this.unanswered.empty ? this.deadlineMs : this.unanswered.waitMs(start, end);
  }

  /**
   * Races `work` against `waitMs` (the read deadline, or the grace after a
   * silence); `work` goes on after a timeout. A timeout marks the range
   * unanswered.
   */
  private async withDeadline<T>(work: Promise<T>, start: number, end: number, waitMs: number, readMs = waitMs, waitingFor = 'the whole blob (streamed: the registry ignores Range)'): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        work,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            this.unanswered.add(start, end);
            // readMs: the read's whole time, of which waitMs was what was left for this wait.
            const why =
              readMs < this.deadlineMs
                ? `no answer within ${readMs} ms, after the source left them unanswered for ${this.deadlineMs} ms`
                : `${waitingFor} did not arrive within ${this.deadlineMs} ms`;
            reject(timedOut(`${this.options.what}: bytes ${start}-${end}: ${why}`));
          }, waitMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async fetch(start: number, end: number): Promise<Buffer> {
    await this.slot();
    const began = Date.now();
    this.stats.requests++;
    try {
      return await this.request(start, end, undefined, 'bytesFetched');
    } catch (err) {
      this.stats.failures++;
      if (isTimedOut(err)) this.unanswered.add(start, end);
      throw err;
    } finally {
      this.stats.fetchMillis += Date.now() - began;
      this.release();
    }
  }

  /**
   * One request for [start, end) with the deadline; `outer` aborts it too.
   * Its bytes count in `counter`, unless they came out of a whole-blob answer
   * that is kept (bytesStreamed counts that answer once).
   */
  private async request(start: number, end: number, outer: AbortSignal | undefined, counter: 'bytesFetched' | 'bytesPrefetched'): Promise<Buffer> {
    outer?.throwIfAborted();
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.deadlineMs);
    const onOuter = () => controller.abort();
    outer?.addEventListener('abort', onOuter, { once: true });
    let whole: { blob: Readable; kept: boolean } | undefined;
    try {
      const bytes = await Promise.race([
        this.fetcher(start, end, controller.signal, (blob) => (whole = { blob, kept: this.adoptWhole(blob, end) })),
        new Promise<never>((_, reject) =>
          controller.signal.addEventListener('abort', () =>
            reject(
              outer?.aborted
                ? (outer.reason as Error)
                : timedOut(`${this.options.what}: bytes ${start}-${end}: no answer within ${this.deadlineMs} ms`),
            ),
          ),
        ),
      ]);
      if (bytes.length !== end - start) {
        throw new LazyrootError('UNAVAILABLE', `${this.options.what}: bytes ${start}-${end}: source sent ${bytes.length} bytes`);
      }
      this.unanswered.answered(start, end);
      if (!whole?.kept) this.stats[counter] += bytes.length;
      return bytes;
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener('abort', onOuter);
      // A whole-blob answer not kept (the blob is whole, or being made so, already): the range is
      // taken from it, the rest is not worth the transfer.
      if (whole && !whole.kept) whole.blob.destroy();
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

  /**
   * A demand read of blob bytes [start, end) that brings its neighbours
   * along when reads walk the blob in order (as the kernel's readahead does
   * for a file): from the unit holding `start`, the units not kept yet, in
   * blob order, up to a window that doubles with each read that continues
   * where the last one ended, to `regionBytes` (at least the ones [start,
   * end) needs), in one request; each is verified and kept like a
   * prefetched unit — the same fetch-verify-keep path. Reading a tree of
   * small files then costs a request per region, not per file; scattered
   * reads (a program starting) fetch only what they need. Resolves once they are kept; a unit that fails
   * verification is not kept, and the caller's own read of [start, end) then
   * fetches and fails it the ordinary way. `units` must be in blob order.
   */
  async fetchRegion(units: readonly PrefetchUnit[], start: number, end: number, regionBytes: number): Promise<void> {
    if (this.refused) throw this.refused;
    this.onDemandRange?.(start, end);
    this.adoptLeftover(units);
    if (this.complete || this.present.covers(start, end) || this.streamsWhole()) return;
    const waitMs = this.waitMs(start, end);
    const began = Date.now();
    const waitFor = this.requestBringing(start, end, waitMs);
    let hedged = false;
    if (waitFor && !waitFor.ahead) {
      // Another read's request: it fails at its deadline as this read would.
      this.group?.readStarted();
      try {
        // A request that failed otherwise leaves the caller's own read to fetch; one the source left unanswered fails it.
        const settled = waitFor.kept.catch((err: unknown) => {
          if (isTimedOut(err)) throw err;
        });
        await this.withDeadline(settled, start, end, waitMs, waitMs, 'the request bringing them');
      } finally {
        this.group?.readEnded();
      }
      return;
    }
    if (waitFor) {
      this.group?.readStarted();
      try {
        if (await settledWithin(waitFor.kept, hedgeMs(waitMs))) {
          const failure = await waitFor.kept.then(
            () => undefined,
            (err: unknown) => err,
          );
          // Kept, or failed otherwise (a bad unit): the caller's own read serves it or reports what is wrong.
          if (!isTimedOut(failure)) return;
          // The source left that request unanswered: this read asks once more, within the short grace.
          this.unanswered.add(start, end);
        }
      } finally {
        this.group?.readEnded();
      }
      if (this.complete || this.present.covers(start, end) || this.streamsWhole()) return;
      // A request fetching ahead of reads (prefetch, a profile) that has not answered in a third of the read's
      // time (one sent just before the source recovered from a stall, say) is not waited on to its end: the
      // read asks for itself.
      hedged = true;
    }
    const ahead = this.readAhead.next(start, regionBytes);
    // Many demand reads of this blob waiting at once (a parallel tree walk, many small files): each
    // brings its whole region along, as a gzip span would; one reader alone (a program starting) fetches only what it needs.
    // (Requests fetching ahead — a profile, a prioritized region — are not readers: they do not make it busy.)
    let reading = this.inFlight.size;
    for (const r of this.regions) if (!r.ahead) reading++;
    const busy = reading >= busyReads;
    // One request per stretch of [start, end) that no request is bringing yet (the last one reaching on
    // past `end`); the stretches other requests bring are waited for, never asked again.
    const own: Array<{ kept: Promise<void>; done: () => void }> = [];
    let windowEnd = start;
    for (let from = start; from < end; ) {
      const window = regionAround(units, from, end, busy ? regionBytes : ahead.window, (u) => this.taken(u));
      if (!window) break;
      own.push(this.startRegion(window));
      from = windowEnd = window.end;
    }
    if (own.length) ahead.fetched(windowEnd);
    // (Not all of it when a read's own fetch holds a stretch: that read's caller keeps it; wait for ours.)
    const bringing = (hedged ? undefined : this.requestBringing(start, end, waitMs)?.kept) ?? (own.length ? Promise.all(own.map((o) => o.kept)) : undefined);
    if (!bringing) return;
    this.group?.readStarted();
    try {
      const settled = bringing.catch((err: unknown) => {
        // No answer within the read's time: fail the read now rather than let its own fetch wait again.
        if (isTimedOut(err)) throw err;
        // Otherwise the caller's own read fetches [start, end) and reports what is wrong.
      });
      const left = waitMs - (Date.now() - began);
      await (waitMs < this.deadlineMs || hedged ? this.withDeadline(settled, start, end, Math.max(1, left), waitMs, 'the request bringing them') : settled);
    } finally {
      for (const o of own) o.done();
      this.group?.readEnded();
    }
  }

  /**
   * The units lying whole in the bytes held back (`leftover`) are checked
   * and kept, as a request under way that reads wait for; the rest of those
   * bytes is dropped. Once: the bytes are let go either way.
   */
  private adoptLeftover(units: readonly PrefetchUnit[]): void {
    const held = this.leftover;
    if (!held) return;
    this.leftover = undefined;
    if (this.complete || this.streamsWhole()) return;
    const end = held.start + held.bytes.length;
    const inside = units.filter((u) => u.start >= held.start && u.end <= end && !this.taken(u));
    if (inside.length === 0) return;
    const first = inside[0]!;
    const last = inside[inside.length - 1]!;
    const key = `${first.start}-${last.end}`;
    const claim = { start: first.start, end: last.end, until: Date.now() + this.deadlineMs + claimGraceMs };
    this.claims.set(key, claim);
    const flight = { start: first.start, end: last.end, began: Date.now(), kept: this.keepUnits(inside, held.start, held.bytes), ahead: true };
    this.regions.push(flight);
    // A unit that fails its check is fetched again by the read that needs it.
    void flight.kept
      .catch(() => undefined)
      .finally(() => {
        this.regions.splice(this.regions.indexOf(flight), 1);
        if (this.claims.get(key) === claim) this.claims.delete(key);
      });
  }

  /** A demand read's request for `window`, claimed and listed among the requests under way until `done`. */
  private startRegion(window: Window): { kept: Promise<void>; done: () => void } {
    const key = `${window.start}-${window.end}`;
    const claim = { start: window.start, end: window.end, until: Date.now() + this.deadlineMs + claimGraceMs };
    this.claims.set(key, claim);
    this.group?.readStarted();
    const kept = this.fetch(window.start, window.end).then((bytes) => this.keepUnits(window.units, window.start, bytes));
    const flight = { start: window.start, end: window.end, began: Date.now(), kept };
    this.regions.push(flight);
    // Settled by whoever waits on it; a request nobody waits on must not reject unheard.
    kept.catch(() => undefined);
    const done = () => {
      this.regions.splice(this.regions.indexOf(flight), 1);
      if (this.claims.get(key) === claim) this.claims.delete(key);
      this.group?.readEnded();
    };
    return { kept, done };
  }

  /**
   * A read-ahead, profile or prefetch request under way whose bytes include
   * [start, end) and is worth waiting on for `waitMs`: after a silence of the
   * source, only one asked within the grace (the prefetch's is not).
   */
  private requestBringing(start: number, end: number, waitMs: number): { kept: Promise<void>; ahead: boolean } | undefined {
    const fresh = waitMs === this.deadlineMs;
    const live = (r: { began: number }) => fresh || Date.now() - r.began < waitMs;
    const p = this.prefetching;
    const region = this.regions.find((r) => r.start <= start && end <= r.end && live(r));
    // A read waits for it: a fetch-ahead request still queued goes out next.
    if (region) {
      region.hurry?.();
      return { kept: region.kept, ahead: Boolean(region.ahead) };
    }
    if (fresh && p && p.start <= start && end <= p.end) return { kept: p.kept, ahead: true };
    // A read across the ends of requests under way (a file whose chunks two read-ahead regions
    // bring): together with the bytes kept, they may bring it all.
    const over: Array<{ start: number; end: number; kept: Promise<void>; ahead?: boolean; hurry?: () => void }> = this.regions.filter((r) => r.start < end && start < r.end && live(r));
    if (fresh && p && p.start < end && start < p.end) over.push(p);
    if (over.length < 2) return undefined;
    over.sort((a, b) => a.start - b.start);
    let at = start;
    for (const r of over) {
      if (r.start > at && !this.present.covers(at, r.start)) return undefined;
      at = Math.max(at, r.end);
    }
    if (at < end && !this.present.covers(at, end)) return undefined;
    for (const r of over) r.hurry?.();
    return { kept: Promise.all(over.map((r) => r.kept)).then(() => undefined), ahead: over.some((r) => r === p || r.ahead) };
  }

  /**
   * Fetches, ahead of any read, the units (blob order) overlapping `ranges`
   * (sorted, disjoint) that are not kept yet — an access profile's ranges, an
   * eStargz prioritized region. Wanted units are joined into one request
   * across gaps of up to `gapBytes` (a request costs more than a few unwanted
   * KiB), each request up to `windowBytes`; requests go out in parallel
   * (bounded like demand reads) with demand reads' priority over background
   * prefetch. Each unit is verified and kept the way read-ahead keeps it, and
   * a read of those bytes meanwhile waits for the request instead of asking
   * again. Resolves when every request settled; a unit that failed is left to
   * the demand read that needs it. Counted as prefetched bytes.
   */
  async fetchAhead(units: readonly PrefetchUnit[], ranges: ReadonlyArray<readonly [number, number]>, options: FetchAheadOptions): Promise<void> {
    this.adoptLeftover(units);
    if (this.complete || this.streamsWhole()) return;
    const windows = windowsFor(units, ranges, options.gapBytes ?? 128 << 10, options.windowBytes ?? 512 << 10, options.ranks, (u) => this.holds(u));
    await Promise.all(windows.map((w) => this.fetchAheadWindow(w, options.signal, options.queue)));
  }

  private async fetchAheadWindow(window: Window, signal: AbortSignal | undefined, queue: FetchQueue | undefined): Promise<void> {
    const key = `${window.start}-${window.end}`;
    const claim = { start: window.start, end: window.end, until: Date.now() + this.deadlineMs + claimGraceMs };
    this.claims.set(key, claim);
    this.group?.readStarted();
    const ticket = queue?.enter(window.rank ?? 0, signal);
    const flight = { start: window.start, end: window.end, began: Date.now(), kept: Promise.resolve(), ahead: true, hurry: ticket?.hurry };
    flight.kept = (async () => {
      if (ticket) {
        await ticket.admitted;
        // Its time runs from when it goes out, not from when it was queued.
        flight.began = Date.now();
        claim.until = flight.began + this.deadlineMs + claimGraceMs;
      }
      await this.slot();
      let bytes: Buffer;
      try {
        this.stats.prefetchRequests++;
        bytes = await this.request(window.start, window.end, signal, 'bytesPrefetched');
      } finally {
        this.release();
      }
      await this.keepUnits(window.units, window.start, bytes);
    })();
    // Its place is given up once its bytes are checked and kept, not when they arrive: the checks run
    // on libuv's threads, and a queue that let every answer's check start at once took them all from
    // the mount's own file operations (measured: a rootfs 120 ms late while a profile came in).
    if (ticket) void flight.kept.then(ticket.done, ticket.done);
    const { kept } = flight;
    this.regions.push(flight);
    try {
      await kept;
    } catch {
      this.stats.prefetchFailures++; // the demand read that needs these bytes fetches them and reports what is wrong
    } finally {
      this.regions.splice(this.regions.indexOf(flight), 1);
      this.claims.delete(key);
      this.group?.readEnded();
    }
  }

  /**
   * Verifies and keeps each unit of `bytes` (fetched from `from`): verified
   * units become present, units without a check provisional; a unit that
   * fails its check is left out, the others are kept, and the first failure
   * (in blob order) is thrown. The checks run at once: an eStargz unit's is
   * an inflate on the thread pool, and a region of small files is hundreds
   * of them — one after the other, a demand read waited 50-80 ms for a
   * region's hops (measured), where together they take a few.
   */
  private async keepUnits(units: readonly PrefetchUnit[], from: number, bytes: Buffer): Promise<void> {
    const failures = new Map<PrefetchUnit, unknown>();
    const many = units.find((u) => u.checkMany)?.checkMany;
    const together = many ? units.filter((u) => u.checkMany === many) : [];
    const alone = many ? units.filter((u) => u.checkMany !== many) : units;
    await Promise.all([
      ...checkParts(together).map((part) =>
        many!(part, bytes, from).then(
          (errors) => errors.forEach((e, i) => e !== undefined && failures.set(part[i]!, e)),
          (err: unknown) => part.forEach((u) => failures.set(u, err)),
        ),
      ),
      ...alone.map((u) => u.verify?.(bytes.subarray(u.start - from, u.end - from)).catch((err: unknown) => void failures.set(u, err))),
    ]);
    await this.keepRuns(
      units.filter((u) => !failures.has(u)),
      from,
      bytes,
    );
    const failed = units.find((u) => failures.has(u));
    if (failed) throw failures.get(failed);
  }

  /**
   * keep() for many units of one fetched buffer: adjacent ones are written
   * with one write (a region of small files is hundreds of units), then
   * marked present (verified) or provisional.
   */
  private async keepRuns(units: readonly PrefetchUnit[], from: number, bytes: Buffer): Promise<void> {
    if (this.complete || !this.file) return;
    let run: PrefetchUnit[] = [];
    const flush = async () => {
      if (run.length === 0 || this.complete || !this.file) return;
      const start = run[0]!.start;
      const end = run[run.length - 1]!.end;
      await writeFully(this.file, bytes, start - from, end - start, start);
      if (this.complete) return;
      for (const u of run) {
        this.claims.delete(`${u.start}-${u.end}`);
        if (u.verify) this.present.add(u.start, u.end);
        else this.provisional.add(u.start, u.end);
      }
      run = [];
    };
    for (const u of units) {
      // Never let unverified bytes overwrite anything kept, nor race a promotion of this inode.
      if (!u.verify && (this.completion || this.keptCovers(u.start, u.end))) {
        await flush();
        continue;
      }
      if (run.length && run[run.length - 1]!.end !== u.start) await flush();
      run.push(u);
    }
    await flush();
    if (this.complete || units.length === 0) return;
    this.kept = this.present.total + this.provisional.total;
    if (this.tracksUse) this.touch(units[0]!.start, units[units.length - 1]!.end);
    this.schedulePersist();
    this.group?.enforceBound();
    if (this.keptCovers(0, this.size)) void this.promote().catch(() => undefined);
  }

  /**
   * Downloads the rest of the blob in the background, politely: `units` in
   * the order given (put a prioritized region first), adjacent missing ones
   * fetched together up to `windowBytes`, one request at a time, each only
   * when the group lets it (no demand read waiting, room under the bound).
   * Each unit is verified before it is kept. Resolves when the blob is whole
   * and promoted to blobs/; rejects when aborted or after repeated failures.
   * `units` must cover the blob.
   */
  async prefetch(units: readonly PrefetchUnit[], options: PrefetchOptions): Promise<void> {
    const { signal } = options;
    const windowBytes = options.windowBytes ?? 2 << 20;
    const maxFailures = options.maxFailures ?? 8;
    const retryDelayMs = options.retryDelayMs ?? 500;
    let failures = 0;
    let cursor = 0;
    let diskFullWaits = 0;
    const fail = async (err: unknown): Promise<void> => {
      if (signal.aborted) throw signal.reason as Error;
      if (isDiskFull(err)) {
        // Not the source's fault and not for giving up on: wait for space (reads are served from memory meanwhile).
        this.prefetchState = 'waiting';
        this.prefetchError = `the store's disk is full: waiting for space (${(err as Error).message})`;
        await sleep(Math.min(10_000, 250 * 2 ** Math.min(diskFullWaits++, 6)), signal);
        return;
      }
      diskFullWaits = 0;
      failures++;
      this.stats.prefetchFailures++;
      this.prefetchError = (err as Error).message;
      if (this.refused) throw this.refused;
      if (failures >= maxFailures || (err as LazyrootError).code === 'FAILED_PRECONDITION') throw err;
      await sleep(Math.min(30_000, retryDelayMs * 2 ** (failures - 1)), signal);
    };
    this.prefetchState = 'waiting';
    this.adoptLeftover(units);
    try {
      while (!this.complete) {
        signal.throwIfAborted();
        if (this.completion) {
          await untilAborted(this.completion, signal).catch(fail);
          continue;
        }
        if (this.streamsWhole()) {
          const release = await this.group?.prefetchTurn(0, signal);
          this.prefetchState = 'running';
          try {
            // The stream itself goes on after an abort; close() stops it.
            await untilAborted(this.streamWhole(), signal);
          } catch (err) {
            await fail(err);
          } finally {
            release?.();
          }
          continue;
        }
        let window = this.nextPrefetchWindow(units, windowBytes, cursor);
        if (!window && cursor > 0) {
          // Something before the cursor may have been evicted since: look from the start once more.
          cursor = 0;
          continue;
        }
        if (!window && this.claimed()) {
          // What is left is being fetched by demand reads: see whether they keep it.
          await sleep(50, signal);
          continue;
        }
        if (!window) {
          if (this.keptCovers(0, this.size)) {
            await untilAborted(this.promote(), signal).catch(fail);
            continue;
          }
          throw new LazyrootError('INVALID_DATA', `${this.options.what}: prefetch units do not cover the blob (missing ${JSON.stringify(this.present.missing(0, this.size).slice(0, 3))}…)`);
        }
        const reservedBytes = window.end - window.start;
        const release = await this.group?.prefetchTurn(reservedBytes, signal, () => (this.prefetchState = 'waiting'));
        // Demand reads may have kept some of it while this waited for its turn: look again.
        const now = this.nextPrefetchWindow(units, windowBytes, window.index);
        if (this.complete || !now || now.end - now.start > reservedBytes) {
          release?.();
          continue;
        }
        window = now;
        cursor = window.index;
        this.prefetchState = 'running';
        const work = (async () => {
          this.stats.prefetchRequests++;
          const bytes = await this.request(window.start, window.end, signal, 'bytesPrefetched');
          await this.keepUnits(window.units, window.start, bytes);
        })();
        this.prefetching = { start: window.start, end: window.end, kept: work };
        try {
          await work;
          failures = 0;
          diskFullWaits = 0;
          this.prefetchError = undefined;
        } catch (err) {
          release?.();
          await fail(err);
        } finally {
          this.prefetching = undefined;
          release?.();
        }
      }
      this.prefetchState = 'done';
      this.prefetchError = undefined;
    } catch (err) {
      this.prefetchState = signal.aborted ? 'stopped' : (err as LazyrootError).code === 'FAILED_PRECONDITION' ? 'stopped' : 'failed';
      throw err;
    }
  }

  /** Whether the unit's bytes are kept: verified (present) when it has a check, else at all. */
  private holds(u: PrefetchUnit): boolean {
    return u.verify ? this.present.covers(u.start, u.end) : this.keptCovers(u.start, u.end);
  }

  /** Kept, or a demand read is fetching it now (its claim). */
  private taken(u: PrefetchUnit): boolean {
    return this.holds(u) || this.claimed(u.start, u.end);
  }

  /** Background prefetch's next request (fetch-windows.ts nextWindow); none once the blob is whole. */
  private nextPrefetchWindow(units: readonly PrefetchUnit[], windowBytes: number, from: number): Window | undefined {
    return this.complete ? undefined : nextWindow(units, windowBytes, from, (u) => this.taken(u));
  }

  /** Whether a demand read holds a (live) claim overlapping [start, end). */
  private claimed(start = 0, end = this.size): boolean {
    const now = Date.now();
    for (const [key, c] of this.claims) {
      if (c.until < now) this.claims.delete(key);
      else if (c.start < end && start < c.end) return true;
    }
    return false;
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
    if (this.complete) return;
    try {
      this.store.db.setBlobRanges(this.digest, this.present.ranges());
      this.persistError = undefined;
    } catch (err) {
      // A full disk (SQLITE_FULL) must not take the mount down: the ranges stay served from
      // memory's map, and are written with the next batch. A crash before then loses them:
      // they are fetched again, never served unverified.
      this.persistError = (err as Error).message;
      this.schedulePersist();
    }
  }

  /**
   * Every byte is here: once the mount's reads pause, hash the whole blob,
   * and on a match move it into blobs/. The whole hash and check (a second or
   * so of CPU for a big layer) would slow readers still reading; every byte
   * is served from the partial file meanwhile. Nothing is held while it waits
   * (eviction, unverified keeps): if bytes were dropped by then, it does
   * nothing, and the keep that restores them promotes again.
   */
  private promote(): Promise<void> {
    if (this.complete) return Promise.resolve();
    if (this.refused) return Promise.reject(this.refused);
    this.promotion ??= (async () => {
      await this.group?.untilReadsPause(this.closing.signal);
      if (this.complete || !this.keptCovers(0, this.size)) return;
      this.completion ??= this.promoteNow().finally(() => {
        this.completion = undefined;
      });
      await this.completion;
    })().finally(() => {
      this.promotion = undefined;
    });
    return this.promotion;
  }

  private async promoteNow(): Promise<void> {
    if (await this.store.blobs.has(this.digest, this.size)) {
      // Another process (or a pull) got there first: use its copy.
      await this.becomeWhole('ranges', true);
      return;
    }
    const path = this.store.paths.partialBlob(this.digest);
    // Our own file, read through its descriptor: another process that holds the same partial file may
    // promote it (rename it into blobs/) meanwhile, and a new one may then be made at `path`.
    const own = this.file ? `/proc/self/fd/${this.file.fd}` : path;
    const hash = hasherFor(this.digest);
    for await (const chunk of createReadStream(own, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
    const got = `${this.digest.slice(0, this.digest.indexOf(':'))}:${hash.digest('hex')}`;
    if (got !== this.digest) {
      // Verified ranges cannot be wrong, so the unverified ones were: drop those and fetch them again.
      // With none, start over rather than trust anything.
      if (this.provisional.total === 0) this.present = new IntervalSet();
      this.provisional = new IntervalSet();
      this.kept = this.present.total;
      this.persist();
      throw new LazyrootError('DIGEST_MISMATCH', `${this.options.what}: assembled blob ${shortDigest(this.digest)} does not match its digest (got ${got})`);
    }
    await this.runWholeCheck(own);
    if (!this.file || !(await namesFile(path, this.file))) {
      // Promoted by another process meanwhile (or gone): its copy in blobs/ is the blob, else fetch on.
      if (await this.store.blobs.has(this.digest, this.size)) await this.becomeWhole('ranges', false);
      return;
    }
    await mkdir(dirname(this.store.blobs.path(this.digest)), { recursive: true });
    await commitFile(path, this.store.blobs.path(this.digest));
    // The open handle is the same inode, now in blobs/: keep reading through it.
    this.complete = true;
    this.wholeBy = 'ranges';
    this.settleWhole();
  }

  /** The whole check, if any, of the blob at `path`; a failure refuses the blob for good (in this process). */
  private async runWholeCheck(path: string): Promise<void> {
    if (!this.wholeCheck) return;
    try {
      await this.wholeCheck(path, this.closing.signal);
    } catch (err) {
      // Not done, nothing refused: stopped, or the blob could not be read (a system error, ENOENT or EIO).
      const code = (err as { code?: unknown }).code;
      if (code === 'UNAVAILABLE' || (!isErrorCode(code) && typeof code === 'string')) throw err;
      this.refused = err instanceof LazyrootError ? err : new LazyrootError('INVALID_DATA', `${this.options.what}: ${(err as Error).message}`, { cause: err });
      this.pending.clear();
      throw this.refused;
    }
  }

  /** The blob is in blobs/ (streamed, or put there by someone else): read from there from now on. */
  private async becomeWhole(how: 'ranges' | 'streamed', removePartial = true): Promise<void> {
    const handle = await open(this.store.blobs.path(this.digest), 'r');
    if (this.file) this.retired.push(this.file);
    this.file = handle;
    this.complete = true;
    this.wholeBy = how;
    if (removePartial) await rm(this.store.paths.partialBlob(this.digest), { force: true });
    this.settleWhole();
  }

  private settleWhole(): void {
    this.present = new IntervalSet();
    this.provisional = new IntervalSet();
    this.kept = 0;
    this.lastUse.clear();
    this.pending.clear();
    if (this.persistTimer) clearTimeout(this.persistTimer);
    this.persistTimer = undefined;
    this.store.db.setBlobRanges(this.digest, []);
    if (this.options.mediaType) this.store.db.recordBlob(this.digest, this.size, this.options.mediaType);
    this.group?.leave(this);
  }

  async close(): Promise<void> {
    this.closing.abort(new LazyrootError('UNAVAILABLE', `${this.options.what}: closed`));
    await this.completion?.catch(() => undefined);
    this.persist();
    this.group?.leave(this);
    await this.file?.close();
    this.file = undefined;
    for (const h of this.retired.splice(0)) await h.close().catch(() => undefined);
  }
}

/**
 * The partial file of `digest` and the ranges the store's rows say it holds,
 * read once the file is open and only while it is still the one at `path`:
 * rows read before, or for a file that another process promoted (renamed to
 * blobs/) or removed meanwhile, would vouch for the holes of a new sparse
 * file, and zeros would be served as verified bytes (seen under load: a
 * second mount of an image's first layers reading /bin/sh as zeros while the
 * first mount's prefetch promoted the same blobs). Rows with no file are
 * cleared before one is made here. Undefined when the file went away or
 * another process made it meanwhile: look again (the blob may be whole now).
 */
async function openPartial(store: Store, digest: Digest, path: string): Promise<{ file: FileHandle; ranges: Array<[number, number]> } | undefined> {
  await mkdir(dirname(path), { recursive: true });
  let file: FileHandle;
  let made = false;
  try {
    file = await open(path, constants.O_RDWR);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    // Cleared before the file exists, so that no process opening it can read rows of a file gone
    // (a full disk leaves them: this opener starts from none all the same, and its map replaces them).
    try {
      if (store.db.blobRanges(digest).length > 0) store.db.setBlobRanges(digest, []);
    } catch {
      // SQLITE_FULL and the like: see above
    }
    try {
      file = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600);
      made = true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return undefined; // another process made it: open that one
      throw e;
    }
  }
  const ranges = made ? [] : store.db.blobRanges(digest);
  if (!(await namesFile(path, file))) {
    await file.close();
    return undefined;
  }
  return { file, ranges };
}

/** Whether `path` still names the file `file` holds open (not one made there since, nor nothing). */
async function namesFile(path: string, file: FileHandle): Promise<boolean> {
  const [held, atPath] = await Promise.all([file.stat(), stat(path).catch(() => undefined)]);
  return atPath !== undefined && atPath.ino === held.ino && atPath.dev === held.dev;
}

/** An UNAVAILABLE error for bytes that did not arrive in time. */
function timedOut(message: string): LazyrootError {
  return Object.assign(new LazyrootError('UNAVAILABLE', message), { timedOut: true as const });
}

/** `set` without [from, to). */
function without(set: IntervalSet, from: number, to: number): IntervalSet {
  const out = new IntervalSet();
  for (const [s, e] of set.ranges()) {
    if (e <= from || s >= to) out.add(s, e);
    else {
      if (s < from) out.add(s, from);
      if (e > to) out.add(to, e);
    }
  }
  return out;
}

/** Removes a partial blob and its range map (GC, or a blob found corrupt). */
export async function removePartialBlob(store: Store, digest: Digest): Promise<void> {
  store.db.setBlobRanges(digest, []);
  await rm(store.paths.partialBlob(digest), { force: true });
}

/**
 * Units checked together (one native call each part), split in two of about
 * the same bytes when they are many bytes: the two parts inflate and hash on
 * two of libuv's threads. A program's binary is a few big members (python3's:
 * 2 MB compressed, 6.8 MB inflated and hashed) that a read of its first page
 * waited for whole on one thread.
 */
function checkParts(units: readonly PrefetchUnit[]): PrefetchUnit[][] {
  if (units.length === 0) return [];
  const bytes = units.reduce((n, u) => n + (u.end - u.start), 0);
  if (units.length === 1 || bytes < splitCheckBytes) return [[...units]];
  // The cut goes before the first unit whose middle lies past half the bytes (never before the first unit).
  let taken = 0;
  let cut = 0;
  while (cut < units.length - 1) {
    const size = units[cut]!.end - units[cut]!.start;
    if (taken + size / 2 >= bytes / 2) break;
    taken += size;
    cut++;
  }
  cut = Math.max(1, cut);
  return [units.slice(0, cut), units.slice(cut)];
}

/** Compressed bytes from which a range's checks are split in two (checkParts). */
const splitCheckBytes = 256 << 10;

import { setTimeout as delay } from 'node:timers/promises';
import { LazyrootError } from '../errors.js';
import type { LazyBlob } from './lazy-blob.js';

export interface LazyBlobGroupOptions {
  /**
   * Bound on the bytes kept in the partial blobs of the group's blobs that
   * are not complete; past it the least recently used verified ranges are
   * dropped (see `LazyBlob.evictBlock`). Undefined: no bound.
   */
  cacheMaxBytes?: number;
  /** A prefetch request starts only once no demand read has waited for this long. Default 100 ms. */
  quietMs?: number;
  /** Prefetch requests in flight at once across the group (one per blob at most). Default 4. */
  prefetchConcurrency?: number;
  /**
   * Promoting a completed blob (its whole hash and TOC check) waits until no
   * blob of the group has been read for this long. Default 250 ms.
   */
  pauseMs?: number;
  /**
   * Under sustained demand reads, a prefetch that has waited this long may
   * still send one request at a time: prefetch makes progress under load,
   * not only in idle gaps. Default 100 ms.
   */
  starveMs?: number;
}

/**
 * What the blobs of one mount share: who goes first on the network (a
 * demand read waiting for bytes pauses every prefetch of the group), and the
 * bound on partial bytes kept on disk, enforced least recently used first
 * across all of them.
 */
export class LazyBlobGroup {
  readonly cacheMaxBytes: number | undefined;
  private readonly quietMs: number;
  private readonly prefetchConcurrency: number;
  private readonly starveMs: number;
  /** No prefetch request at all before this time (the mount's first reads go first). */
  private heldUntil = 0;
  private readonly blobs = new Set<LazyBlob>();
  private readsWaiting = 0;
  /** No prefetch request starts before this time (ms since the epoch). */
  private quietFrom = 0;
  private prefetchRunning = 0;
  /** Bytes of prefetch requests in flight: room under the bound is taken when a request starts. */
  private reserved = 0;
  private readonly listeners = new Set<() => void>();
  private tick = 0;
  /** Reads of the group's blobs, hits too (see untilReadsPause). */
  private reads = 0;
  private readonly pauseMs: number;

  constructor(options: LazyBlobGroupOptions = {}) {
    if (options.cacheMaxBytes !== undefined && !(Number.isSafeInteger(options.cacheMaxBytes) && options.cacheMaxBytes >= 0)) {
      throw new LazyrootError('INVALID_ARGUMENT', `cacheMaxBytes must be a whole number of bytes, not ${options.cacheMaxBytes}`);
    }
    this.cacheMaxBytes = options.cacheMaxBytes;
    this.quietMs = options.quietMs ?? 100;
    this.prefetchConcurrency = Math.max(1, options.prefetchConcurrency ?? 4);
    this.starveMs = options.starveMs ?? 100;
    this.pauseMs = options.pauseMs ?? 250;
  }

  /** Keeps prefetch requests from starting for `ms` from now (the mount's first reads go first). */
  holdPrefetch(ms: number): void {
    this.heldUntil = Math.max(this.heldUntil, Date.now() + ms);
  }

  /** Resolves once no hold keeps prefetch back (work that only prefetch needs waits for it too). */
  async untilUnheld(signal: AbortSignal): Promise<void> {
    for (let held = this.heldUntil - Date.now(); held > 0; held = this.heldUntil - Date.now()) {
      signal.throwIfAborted();
      await this.changed(signal, held);
    }
  }

  /** Demand reads waiting for bytes from the network now. */
  get waitingReads(): number {
    return this.readsWaiting;
  }

  /** Bytes kept in partial blobs of the group's incomplete blobs (what cacheMaxBytes bounds). */
  get partialBytes(): number {
    let n = 0;
    for (const b of this.blobs) n += b.partialBytes;
    return n;
  }

  /** @internal */
  join(blob: LazyBlob): void {
    this.blobs.add(blob);
  }

  /** @internal */
  leave(blob: LazyBlob): void {
    this.blobs.delete(blob);
    this.notify();
  }

  /** @internal A read of one of the group's blobs (hit or miss): counted, nothing more, on the read path. */
  noteRead(): void {
    this.reads++;
  }

  /**
   * Resolves once no blob of the group has been read for `pauseMs`: work that
   * can wait (checking and promoting a completed blob) waits for the readers
   * it would take CPU from. Rejects on abort.
   */
  async untilReadsPause(signal: AbortSignal): Promise<void> {
    for (let seen = -1; seen !== this.reads; ) {
      seen = this.reads;
      await delay(this.pauseMs, undefined, { signal });
    }
  }

  /** @internal A demand read started waiting for the network. */
  readStarted(): void {
    this.readsWaiting++;
  }

  /** @internal …and got its answer (or failed). */
  readEnded(): void {
    this.readsWaiting--;
    this.quietFrom = Math.max(this.quietFrom, Date.now() + this.quietMs);
    this.notify();
  }

  /** @internal */
  nextTick(): number {
    return ++this.tick;
  }

  /** @internal Something changed that a waiting prefetch may care about. */
  notify(): void {
    for (const wake of [...this.listeners]) wake();
  }

  /** Resolves at the next notify, after `timeoutMs`, or rejects on abort. */
  private changed(signal: AbortSignal, timeoutMs?: number): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(signal.reason as Error);
      const done = () => {
        this.listeners.delete(done);
        signal.removeEventListener('abort', onAbort);
        if (timer) clearTimeout(timer);
        resolve();
      };
      const onAbort = () => {
        this.listeners.delete(done);
        if (timer) clearTimeout(timer);
        reject(signal.reason as Error);
      };
      const timer = timeoutMs !== undefined ? setTimeout(done, timeoutMs) : undefined;
      this.listeners.add(done);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Waits for a prefetch request of `bytes` to be allowed: past the initial
   * hold; no demand read waiting or just answered (or, once this call has
   * waited `starveMs`, no other prefetch request in flight); room under the
   * cache bound without evicting
   * anything (taken until the release, so concurrent prefetches of other
   * blobs cannot overrun it together), and a free prefetch slot. Returns the
   * slot's release, to call once the bytes are kept.
   * Rejects (FAILED_PRECONDITION) when `bytes` alone exceed the bound.
   */
  async prefetchTurn(bytes: number, signal: AbortSignal, onWait?: () => void): Promise<() => void> {
    const waitingSince = Date.now();
    for (;;) {
      signal.throwIfAborted();
      const held = this.heldUntil - Date.now();
      if (held > 0) {
        onWait?.();
        await this.changed(signal, held);
        continue;
      }
      // Demand reads waiting or just answered: prefetch yields — but one that has waited
      // starveMs may send one request at a time, so it keeps going under sustained load.
      const quiet = this.quietFrom - Date.now();
      if (this.readsWaiting > 0 || quiet > 0) {
        const starved = Date.now() - waitingSince >= this.starveMs;
        if (!starved || this.prefetchRunning > 0) {
          onWait?.();
          const untilStarved = this.starveMs - (Date.now() - waitingSince);
          await this.changed(signal, Math.max(1, Math.min(quiet > 0 ? quiet : Infinity, untilStarved > 0 ? untilStarved : Infinity, this.starveMs)));
          continue;
        }
      }
      if (bytes > 0 && this.cacheMaxBytes !== undefined && this.partialBytes + this.reserved + bytes > this.cacheMaxBytes) {
        if (bytes > this.cacheMaxBytes) {
          throw new LazyrootError('FAILED_PRECONDITION', `prefetch needs ${bytes} bytes at once, more than the cache bound of ${this.cacheMaxBytes}`);
        }
        onWait?.();
        await this.changed(signal);
        continue;
      }
      const busy = this.readsWaiting > 0 || this.quietFrom > Date.now();
      if (this.prefetchRunning >= (busy ? 1 : this.prefetchConcurrency)) {
        await this.changed(signal);
        continue;
      }
      this.prefetchRunning++;
      this.reserved += bytes;
      let released = false;
      return () => {
        if (released) return;
        released = true;
        this.prefetchRunning--;
        this.reserved -= bytes;
        this.notify();
      };
    }
  }

  /**
   * Drops least recently used blocks of partial blobs until the group is
   * under its bound. Complete blobs (in blobs/) are never touched.
   */
  enforceBound(): void {
    const max = this.cacheMaxBytes;
    if (max === undefined) return;
    while (this.partialBytes > max) {
      let victim: LazyBlob | undefined;
      let victimBlock = -1;
      let oldest = Infinity;
      for (const blob of this.blobs) {
        const lru = blob.leastRecentBlock();
        if (lru && lru.tick < oldest) {
          oldest = lru.tick;
          victim = blob;
          victimBlock = lru.block;
        }
      }
      if (!victim) return;
      victim.evictBlock(victimBlock);
    }
  }
}

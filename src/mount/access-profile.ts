import { mkdir, readFile, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { LazyrootError } from '../errors.js';
import { isDigest, type Digest } from '../oci/digest.js';
import { writeFileAtomic } from '../store/atomic-file.js';
import { FetchQueue } from '../store/fetch-queue.js';
import { IntervalSet } from '../store/interval-set.js';
import type { LazyBlob } from '../store/lazy-blob.js';
import type { Store } from '../store/store.js';
import type { LazyLayer } from './layers/lazy-layer.js';

/**
 * Recorded access profiles (design.md, "Access profiles"): which blob ranges
 * a workload read in the first seconds of a lazy mount, kept per image as
 * `indexes/<alg>/<image hex>.profile`. A later mount of the image fetches
 * them at once, in a few large parallel requests, before the workload asks:
 * a program's start is dozens of scattered reads, each a round trip when
 * fetched on demand.
 *
 * A profile names blob ranges, not files: that is what the next mount
 * fetches, for every layer kind alike (eStargz chunks, gzip spans). It is
 * only a hint: every byte it brings is verified like a read's (span or chunk
 * digest) before it is kept, so a stale or hostile profile costs bytes,
 * never wrong bytes, and one that does not parse is ignored with a warning.
 */
export interface AccessProfile {
  version: 1;
  /** The image's manifest digest. */
  image: Digest;
  recordedAt: string;
  /** How long the recording ran. */
  recordMillis: number;
  layers: ProfileLayer[];
}

export interface ProfileLayer {
  /** The layer blob's digest and size. */
  digest: Digest;
  size: number;
  /** Blob byte ranges [start, end) reads needed, sorted and disjoint. */
  ranges: Array<[number, number]>;
  /**
   * For each range, the milliseconds after the recording began at which it
   * was first read: the next mount fetches the soonest first. Absent in
   * profiles recorded before it was kept (then blob order).
   */
  firstRead?: number[];
}

/** Ranges past this per layer make a profile invalid (a real one has hundreds). */
const maxRanges = 100_000;

export const profilePath = (store: Store, image: Digest): string => `${store.paths.index(image)}.profile`;

/** The image's recorded profile, or undefined (none; one that does not parse is reported to `warn` and ignored). */
export async function readProfile(store: Store, image: Digest, warn?: (message: string, error: unknown) => void): Promise<AccessProfile | undefined> {
  const path = profilePath(store, image);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') warn?.(`access profile ${path} ignored`, err);
    return undefined;
  }
  try {
    return parseProfile(JSON.parse(text), image);
  } catch (err) {
    warn?.(`access profile ${path} ignored`, err);
    return undefined;
  }
}

/** Checks what a profile file holds: shape, digests, ranges sorted, disjoint and inside each blob. */
export function parseProfile(value: unknown, image: Digest): AccessProfile {
  const p = value as AccessProfile;
  if (!p || typeof p !== 'object' || p.version !== 1) throw new Error('not a version 1 access profile');
  if (p.image !== image) throw new Error(`recorded for image ${String(p.image)}, not ${image}`);
  if (!Array.isArray(p.layers)) throw new Error('no layers list');
  for (const layer of p.layers) {
    if (!isDigest(layer?.digest) || !Number.isSafeInteger(layer.size) || layer.size < 0) throw new Error('a layer without a digest and size');
    if (!Array.isArray(layer.ranges) || layer.ranges.length > maxRanges) throw new Error(`layer ${layer.digest}: ranges missing or over ${maxRanges}`);
    let end = 0;
    for (const r of layer.ranges) {
      const ok = Array.isArray(r) && Number.isSafeInteger(r[0]) && Number.isSafeInteger(r[1]) && r[0] >= end && r[0] < r[1] && r[1] <= layer.size;
      if (!ok) throw new Error(`layer ${layer.digest}: range ${JSON.stringify(r)} out of order or outside the blob's ${layer.size} bytes`);
      end = r[1];
    }
    const times = layer.firstRead;
    if (times !== undefined && (!Array.isArray(times) || times.length !== layer.ranges.length || !times.every((t) => typeof t === 'number' && Number.isFinite(t) && t >= 0))) {
      throw new Error(`layer ${layer.digest}: "firstRead" is not one time per range`);
    }
  }
  return { version: 1, image: p.image, recordedAt: String(p.recordedAt), recordMillis: Number(p.recordMillis) || 0, layers: p.layers };
}

export async function writeProfile(store: Store, profile: AccessProfile): Promise<void> {
  const path = profilePath(store, profile.image);
  await mkdir(dirname(path), { recursive: true });
  // Not durable: written as a mount ends, where fsyncs would delay `umount`; a file torn by a power
  // cut is ignored with a warning (readProfile) and recorded again by the next mount.
  await writeFileAtomic(path, JSON.stringify(profile), store.paths.tmp, { durable: false });
}

export async function removeProfile(store: Store, image: Digest): Promise<boolean> {
  const path = profilePath(store, image);
  try {
    await rm(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Records the blob ranges demand reads need on each layer of a mount, from
 * `start()` until `stop()`. Hits count as much as misses: a profile recorded
 * on a store that already held some bytes still names them.
 */
export class ProfileRecorder {
  private readonly seen = new Map<LazyBlob, { ranges: IntervalSet; firsts: Array<[number, number, number]> }>();
  private readonly startedAt = Date.now();
  private stopped = false;

  constructor(
    private readonly image: Digest,
    layers: readonly LazyLayer[],
  ) {
    for (const layer of layers) {
      if (this.seen.has(layer.blob)) continue;
      const ranges = new IntervalSet();
      // Bytes read for the first time, with when: only what was not read before, so at most one per read.
      const firsts: Array<[number, number, number]> = [];
      this.seen.set(layer.blob, { ranges, firsts });
      layer.blob.onDemandRange = (start, end) => {
        if (ranges.covers(start, end)) return;
        ranges.add(start, end);
        firsts.push([start, end, Date.now() - this.startedAt]);
      };
    }
  }

  get recording(): boolean {
    return !this.stopped;
  }

  /** The profile recorded so far (undefined when nothing was read), and no more recording. */
  stop(): AccessProfile | undefined {
    this.stopped = true;
    for (const blob of this.seen.keys()) blob.onDemandRange = undefined;
    const layers: ProfileLayer[] = [];
    for (const [blob, { ranges, firsts }] of this.seen) {
      if (ranges.total === 0) continue;
      const list = ranges.ranges();
      layers.push({ digest: blob.digest, size: blob.size, ranges: list, firstRead: firstReadOf(list, firsts) });
    }
    if (layers.length === 0) return undefined;
    return { version: 1, image: this.image, recordedAt: new Date().toISOString(), recordMillis: Date.now() - this.startedAt, layers };
  }
}

/** For each of `ranges` (sorted, disjoint), the soonest time of the reads within it. */
function firstReadOf(ranges: ReadonlyArray<readonly [number, number]>, reads: ReadonlyArray<readonly [number, number, number]>): number[] {
  const times = ranges.map(() => Infinity);
  for (const [start, , ms] of reads) {
    // The range holding the read's start: the last starting at or before it.
    let lo = 0;
    let hi = ranges.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (ranges[mid]![0] <= start) lo = mid;
      else hi = mid - 1;
    }
    if (ms < times[lo]!) times[lo] = ms;
  }
  return times.map((t) => (Number.isFinite(t) ? t : 0));
}

/**
 * Fetches, at once, each layer's recorded ranges (a profile recorded for
 * the same blob and size) and the ranges its producer marked to fetch first
 * (eStargz's prioritized region): LazyLayer.fetchAhead, up to
 * `budgetBytes` in all. The requests of every layer go out through one
 * `queue`, prioritized ranges first, then soonest first read, the queue's
 * limit at once. Resolves when all settled; what fails is left to demand
 * reads. Returns the bytes asked for.
 */
export async function fetchProfileAhead(
  layers: readonly LazyLayer[],
  profile: AccessProfile | undefined,
  signal: AbortSignal,
  budgetBytes = Infinity,
  queue = new FetchQueue(aheadRequests),
): Promise<number> {
  const done = new Set<LazyBlob>();
  const work: Array<Promise<void>> = [];
  let wanted = 0;
  for (const layer of layers) {
    if (done.has(layer.blob) || layer.blob.isComplete) continue;
    done.add(layer.blob);
    const recorded = profile?.layers.find((l) => l.digest === layer.digest && l.size === layer.blob.size);
    const { ranges, ranks } = within(rankedRanges(recorded, layer.priorityRanges), budgetBytes - wanted);
    if (ranges.length === 0) continue;
    wanted += ranges.reduce((n, [s, e]) => n + e - s, 0);
    // Every layer's requests enter the queue before any goes out (fetchAhead queues them before it awaits).
    work.push(layer.fetchAhead(ranges, { signal, ranks, queue }).catch(() => undefined));
  }
  queue.start();
  await Promise.all(work);
  return wanted;
}

/**
 * Profile requests under way at once, across the layers of a mount, once it
 * serves. Measured (eStargz bench image, python3, loopback docker-registry,
 * six alternated runs each): 8 printed at a median 605 ms against 650 ms
 * with 4, faster in every pair; 16 was no better than 8. The workload's
 * first reads wait on these requests, so they should all be out soon.
 */
export const aheadRequests = 8;

/**
 * The recorded ranges and the producer's prioritized ones, merged, each with
 * when it is needed: a prioritized range first, then the recording's
 * first-read times (blob order for a profile recorded without them).
 */
function rankedRanges(recorded: ProfileLayer | undefined, priority: ReadonlyArray<readonly [number, number]>): { ranges: Array<[number, number]>; ranks: number[] } {
  const own = recorded?.ranges ?? [];
  const times = recorded?.firstRead ?? own.map((_, i) => i);
  const ranges = IntervalSet.from([...own, ...priority]).ranges();
  const reads: Array<[number, number, number]> = own.map(([s, e], i) => [s, e, times[i]!]);
  for (const [s, e] of priority) reads.push([s, e, -1]);
  return { ranges, ranks: firstReadOf(ranges, reads) };
}

/** The first of `ranges` (blob order) up to `budget` bytes, the last one cut short, with their ranks. */
function within(ranked: { ranges: Array<[number, number]>; ranks: number[] }, budget: number): { ranges: Array<[number, number]>; ranks: number[] } {
  const ranges: Array<[number, number]> = [];
  const ranks: number[] = [];
  ranked.ranges.forEach(([s, e], i) => {
    if (budget <= 0) return;
    ranges.push([s, Math.min(e, s + budget)]);
    ranks.push(ranked.ranks[i]!);
    budget -= e - s;
  });
  return { ranges, ranks };
}

/** The image `ref` names in the store, for `lazyroot profile`: NOT_FOUND when it is not there. */
export function profiledImage(store: Store, ref: string): Digest {
  const image = store.findImage(ref);
  if (!image) throw new LazyrootError('NOT_FOUND', `image ${ref} is not in the store (an access profile is recorded by its first lazy mount)`);
  return image.id;
}

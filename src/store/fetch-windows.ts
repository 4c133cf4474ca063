/**
 * Which bytes of a lazily read blob go out in one request: the units a
 * demand read brings along (regionAround), a fetch-ahead's requests
 * (windowsFor), background prefetch's next request (nextWindow), and how
 * demand reads that walk a blob in order grow their read-ahead
 * (SequentialReads). Pure: what is kept or being fetched is the caller's,
 * asked through a predicate (LazyBlob).
 */

/**
 * A piece of the blob the prefetcher fetches and keeps as a whole: a gzip
 * span or an eStargz gzip member. `verify` checks its bytes (span digest,
 * chunk digests) and throws on a mismatch; a unit without one (eStargz tar
 * headers between members, the TOC, the footer) is written to the partial
 * file but never marked present or served: only the whole blob's digest,
 * checked before promotion, vouches for those bytes.
 */
export interface PrefetchUnit {
  start: number;
  end: number;
  verify?: (bytes: Buffer) => Promise<void>;
  /**
   * Checks many units of one fetched buffer (which begins at blob offset
   * `from`) at once, as `verify` would each: what failed, per unit
   * (undefined: it passed). Units that share this function are checked
   * together (an eStargz layer's members: one native call, not one per chunk).
   */
  checkMany?: (units: readonly PrefetchUnit[], bytes: Buffer, from: number) => Promise<unknown[]>;
}

/** Units of a blob fetched in one request. */
export interface Window {
  start: number;
  end: number;
  units: PrefetchUnit[];
  /** Index of the first unit in the list given to prefetch. */
  index: number;
  /** fetchAhead: the soonest rank of the ranges it brings. */
  rank?: number;
}

/**
 * fetchAhead's requests: the units (blob order) overlapping `ranges`
 * (sorted, disjoint) that are not `held`, joined across gaps of up to
 * `gapBytes` and up to `windowBytes` a request, each with the soonest rank
 * of the ranges it brings (`ranks`, parallel to `ranges`; else the range's index: blob order).
 */
export function windowsFor(
  units: readonly PrefetchUnit[],
  ranges: ReadonlyArray<readonly [number, number]>,
  gapBytes: number,
  windowBytes: number,
  ranks: readonly number[] | undefined,
  held: (u: PrefetchUnit) => boolean,
): Window[] {
  const windows: Window[] = [];
  let current: (Window & { last: number }) | undefined;
  let r = 0;
  for (let i = 0; i < units.length && r < ranges.length; i++) {
    const u = units[i]!;
    while (r < ranges.length && ranges[r]![1] <= u.start) r++;
    const range = ranges[r];
    if (!range || range[0] >= u.end) continue; // no wanted range overlaps this unit
    if (held(u)) continue;
    const rank = ranks?.[r] ?? r;
    if (current && u.start - current.end <= gapBytes && u.end - current.start <= windowBytes) {
      for (let j = current.last + 1; j <= i; j++) current.units.push(units[j]!);
      current.end = u.end;
      current.last = i;
      current.rank = Math.min(current.rank!, rank);
      continue;
    }
    if (current) windows.push(current);
    current = { start: u.start, end: u.end, units: [u], index: i, last: i, rank };
  }
  if (current) windows.push(current);
  return windows;
}

/**
 * The units to fetch for a demand read of [start, end) (LazyBlob.fetchRegion):
 * from the first unit not `taken` (kept, or being fetched) at or after the
 * one holding `start`, the ones [start, end) needs and the adjacent ones after
 * them up to `regionBytes`, up to the next unit taken (a read across requests
 * under way asks for each stretch between them once: LazyBlob.fetchRegion).
 */
export function regionAround(units: readonly PrefetchUnit[], start: number, end: number, regionBytes: number, taken: (u: PrefetchUnit) => boolean): Window | undefined {
  // The unit holding `start`: the last one starting at or before it.
  let lo = 0;
  let hi = units.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (units[mid]!.start <= start) lo = mid;
    else hi = mid - 1;
  }
  let i = lo;
  while (i < units.length && units[i]!.start < end && taken(units[i]!)) i++;
  const first = units[i];
  if (!first || first.start >= end) return undefined;
  const window: Window = { start: first.start, end: first.end, units: [first], index: i };
  for (let j = i + 1; j < units.length; j++) {
    const u = units[j]!;
    // Adjacent units only; a gzip span shares its first byte (the one holding its checkpoint's bits) with the span before.
    if (u.start > window.end || taken(u)) break;
    if (u.start >= end && u.end - window.start > regionBytes) break;
    window.units.push(u);
    window.end = Math.max(window.end, u.end);
  }
  return window;
}

/**
 * The first unit not kept at or after `from` (units before it were kept
 * when last looked at), with the missing units right after it, up to
 * windowBytes. Units `taken` (kept, or a demand read fetching them now) are left out.
 */
export function nextWindow(units: readonly PrefetchUnit[], windowBytes: number, from: number, taken: (u: PrefetchUnit) => boolean): Window | undefined {
  let i = from;
  while (i < units.length && taken(units[i]!)) i++;
  const first = units[i];
  if (!first) return undefined;
  const window: Window = { start: first.start, end: first.end, units: [first], index: i };
  for (let j = i + 1; j < units.length; j++) {
    const u = units[j]!;
    if (u.start > window.end || u.start < window.start || u.end - window.start > windowBytes || taken(u)) break;
    window.units.push(u);
    window.end = Math.max(window.end, u.end);
  }
  return window;
}

/** Streams followed at once: many concurrent readers (a parallel tree hash: 16) each walk their own. */
const maxStreams = 64;

/**
 * Detects demand reads that walk a blob in order: a read starting at or just
 * after where a recent one ended continues a stream, and its read-ahead
 * window doubles (from 64 KiB); any other read has none.
 */
export class SequentialReads {
  /** Ends of recent demand fetches, each with its stream's window. */
  private readonly streams: Array<{ end: number; window: number }> = [];

  /** The read-ahead window for a read starting at `start`, and where to note the fetch's end. */
  next(start: number, max: number): { window: number; fetched(end: number): void } {
    const slack = 64 << 10;
    let stream = this.streams.find((s) => start >= s.end && start <= s.end + slack);
    if (stream) stream.window = Math.min(max, Math.max(slack, stream.window * 2));
    else {
      stream = { end: start, window: 0 };
      this.streams.push(stream);
      if (this.streams.length > maxStreams) this.streams.shift();
    }
    const found = stream;
    return { window: found.window, fetched: (end) => (found.end = Math.max(found.end, end)) };
  }
}

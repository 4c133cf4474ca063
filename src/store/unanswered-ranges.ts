/** Ranges remembered at once; the oldest are forgotten past this (a stalled source makes few distinct ones). */
const maxRanges = 64;

/**
 * Blob ranges whose demand request got no answer within the read deadline,
 * until the source answers for them. A read of such a range does not wait a
 * whole deadline again (the kernel retries a failed read at once, and each
 * wait doubled what a reader saw): it asks afresh and waits only `graceMs`,
 * so it fails almost at once while the source stays silent, and succeeds as
 * soon as the source answers again.
 */
export class UnansweredRanges {
  private readonly ranges: Array<{ start: number; end: number }> = [];

  constructor(
    readonly deadlineMs: number,
    readonly graceMs = Math.min(deadlineMs, Math.max(250, Math.floor(deadlineMs / 4))),
  ) {}

  /** Nothing is remembered: the hot path asks this first. */
  get empty(): boolean {
    return this.ranges.length === 0;
  }

  /** How long a read of [start, end) may wait for the source: the deadline, or the grace after a silence. */
  waitMs(start: number, end: number): number {
    return this.overlaps(start, end) ? this.graceMs : this.deadlineMs;
  }

  overlaps(start: number, end: number): boolean {
    for (const r of this.ranges) if (r.start < end && start < r.end) return true;
    return false;
  }

  /** The source left [start, end) unanswered. */
  add(start: number, end: number): void {
    if (this.ranges.some((r) => r.start <= start && end <= r.end)) return;
    this.ranges.push({ start, end });
    if (this.ranges.length > maxRanges) this.ranges.shift();
  }

  /** Everything forgotten: the next read of any range waits a whole deadline again. */
  clear(): void {
    this.ranges.length = 0;
  }

  /** The source answered for [start, end): ranges overlapping it are forgotten. */
  answered(start: number, end: number): void {
    if (this.ranges.length === 0) return;
    for (let i = this.ranges.length - 1; i >= 0; i--) {
      const r = this.ranges[i]!;
      if (r.start < end && start < r.end) this.ranges.splice(i, 1);
    }
  }
}

/** The error of a read that got no bytes within its time: marks the range as unanswered. */
export interface TimedOut {
  timedOut: true;
}

export function isTimedOut(err: unknown): err is Error & TimedOut {
  return typeof err === 'object' && err !== null && (err as Partial<TimedOut>).timedOut === true;
}

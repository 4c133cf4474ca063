/**
 * Disjoint, sorted half-open intervals [start, end): which byte ranges of a
 * blob are present. Kept as two parallel arrays; lookups are binary searches,
 * so the read path asks it without allocating.
 */
export class IntervalSet {
  private starts: number[] = [];
  private ends: number[] = [];

  static from(ranges: Iterable<readonly [number, number]>): IntervalSet {
    const set = new IntervalSet();
    for (const [s, e] of ranges) set.add(s, e);
    return set;
  }

  /** Index of the first interval whose end is > pos. */
  private firstEndingAfter(pos: number): number {
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid]! > pos) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  add(start: number, end: number): void {
    if (end <= start) return;
    const i = this.firstEndingAfter(start - 1); // the first interval touching or after start
    let s = start;
    let e = end;
    let j = i;
    while (j < this.starts.length && this.starts[j]! <= e) {
      s = Math.min(s, this.starts[j]!);
      e = Math.max(e, this.ends[j]!);
      j++;
    }
    this.starts.splice(i, j - i, s);
    this.ends.splice(i, j - i, e);
  }

  covers(start: number, end: number): boolean {
    if (end <= start) return true;
    const i = this.firstEndingAfter(start);
    return i < this.starts.length && this.starts[i]! <= start && this.ends[i]! >= end;
  }

  /** The parts of [start, end) not present. */
  missing(start: number, end: number): Array<[number, number]> {
    const gaps: Array<[number, number]> = [];
    let pos = start;
    for (let i = this.firstEndingAfter(start); i < this.starts.length && pos < end; i++) {
      if (this.starts[i]! > pos) gaps.push([pos, Math.min(end, this.starts[i]!)]);
      pos = Math.max(pos, this.ends[i]!);
    }
    if (pos < end) gaps.push([pos, end]);
    return gaps;
  }

  get total(): number {
    let n = 0;
    for (let i = 0; i < this.starts.length; i++) n += this.ends[i]! - this.starts[i]!;
    return n;
  }

  ranges(): Array<[number, number]> {
    return this.starts.map((s, i) => [s, this.ends[i]!]);
  }
}

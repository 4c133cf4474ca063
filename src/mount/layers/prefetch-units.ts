import type { PrefetchUnit } from '../../store/lazy-blob.js';

/** `units` sorted by start, with unverified units filling whatever of [0, size) they leave out. */
export function withGaps(units: PrefetchUnit[], size: number): PrefetchUnit[] {
  const sorted = [...units].sort((a, b) => a.start - b.start);
  const out: PrefetchUnit[] = [];
  let covered = 0;
  for (const u of sorted) {
    if (u.start > covered) out.push({ start: covered, end: u.start });
    out.push(u);
    covered = Math.max(covered, u.end);
  }
  if (covered < size) out.push({ start: covered, end: size });
  return out;
}

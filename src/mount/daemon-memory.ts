/**
 * How a mount daemon keeps its memory near what its tree needs.
 *
 * Building a big tree (a TOC of 200,000 entries: its text, the parse, the
 * merge's maps) makes garbage several times the size of what stays, and V8
 * grows the heap for it before collecting: the daemon's peak was the live
 * tree plus that garbage. So the daemon runs with a small young generation
 * (`--max-semi-space-size`, MiB: 8, half of V8's default; 4 measured 40 %
 * slower for 16 readers over a cold mount, 8 as fast as the default, and the
 * 200,000-entry mount peaks at 174 MiB with 8, 190 MiB with the default)
 * and with `gc` exposed, and the mount collects between its stages
 * (collectGarbage) once the entries are many: each stage then starts with
 * only the previous stage's result live.
 */
export const daemonNodeFlags: readonly string[] = ['--expose-gc', '--max-semi-space-size=8'];

/** Entries in a tree from which a mount collects garbage between stages (below it a collection costs more than it saves). */
export const collectFromEntries = 20_000;

/** A full garbage collection when the process runs with `--expose-gc` (a mount daemon does); else nothing. */
export function collectGarbage(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

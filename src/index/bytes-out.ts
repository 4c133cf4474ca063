/**
 * Bytes taken out of a bigger buffer (a range's inflated output) to be kept
 * in a cache, where a view would keep the whole buffer alive.
 *
 * Buffer.from(view) copies through the TypedArray constructor: 13 ms for
 * 4 MiB on the bench machine, on the daemon's event loop while a program
 * waits for its read; allocUnsafe + copy is a memcpy (about a third of it,
 * the rest the fresh pages).
 */
export function copyOut(view: Buffer): Buffer {
  const out = Buffer.allocUnsafe(view.length);
  view.copy(out);
  return out;
}

/**
 * `view` of `whole` to keep: the view itself when it is at least half of
 * `whole` (what it keeps alive is then at most twice its size, and a big
 * chunk, a program's binary say, is not copied at all), else a copy.
 */
export function keepable(view: Buffer, whole: Buffer): Buffer {
  return view.length * 2 >= whole.length ? view : copyOut(view);
}

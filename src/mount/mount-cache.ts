import { mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Digest } from '../oci/digest.js';
import { writeFileAtomicFrom } from '../store/atomic-file.js';
import { collectGarbage } from './daemon-memory.js';
import type { Store } from '../store/store.js';

/**
 * What a lazy mount derived once and the next mount of the same image reads
 * back instead of deriving again: an eStargz layer's parsed TOC (entries,
 * chunks), and an image's merged tree. They live beside the span indexes,
 * `indexes/<alg>/<hex>.toc` (by layer blob) and `.tree` (by image), as plain
 * JSON (V8's own serializer measured 2–4× slower to read back for thousands of
 * small objects). They are written in pieces of about `pieceChars` (jsonPieces):
 * the JSON text of a big tree is never one string. Both are caches of
 * data that was verified when derived (the TOC against its digest): a file
 * that is missing, of another version, or unreadable is derived again, never
 * an error.
 */
const version = 1;

interface Envelope<T> {
  version: number;
  /** What the value was derived from (a TOC digest, an image's layer digests): a mismatch means stale. */
  key: string;
  value: T;
}

export async function readCached<T>(path: string, key: string): Promise<T | undefined> {
  try {
    const envelope = JSON.parse(await readFile(path, 'utf8')) as Envelope<T>;
    return envelope?.version === version && envelope.key === key ? envelope.value : undefined;
  } catch {
    return undefined;
  }
}

/**
 * About how many characters of JSON text jsonPieces hands out at a time: few
 * writes for an image's caches (a 2 MB TOC in 2, measured 5-10 ms less than
 * at 64 KiB), and still never the whole text of a tree of a million entries.
 */
const pieceChars = 1 << 20;

/**
 * The text JSON.stringify(value) would give, in pieces of about `pieceChars`
 * characters: plain objects are written a key at a time and arrays an element
 * at a time, each element stringified alone (the many small things of a
 * cache: entries, chunk lists).
 */
export function* jsonPieces(value: unknown): Generator<string> {
  let buffered: string[] = [];
  let chars = 0;
  for (const part of walk(value)) {
    buffered.push(part);
    chars += part.length;
    if (chars >= pieceChars) {
      yield buffered.join('');
      buffered = [];
      chars = 0;
    }
  }
  if (buffered.length) yield buffered.join('');
}

function* counted<T>(items: Iterable<T>, each: () => void): Generator<T> {
  for (const item of items) {
    each();
    yield item;
  }
}

/** Array elements stringified together: one string per few hundred small objects, not one each. */
const elementsPerPiece = 256;

function* walk(value: unknown): Generator<string> {
  if (Array.isArray(value)) {
    if (value.length === 0) {
      yield '[]';
      return;
    }
    yield '[';
    for (let i = 0; i < value.length; i += elementsPerPiece) {
      // As JSON.stringify (it is JSON.stringify, of a slice): what has no JSON form is null in an array.
      const text = JSON.stringify(value.slice(i, i + elementsPerPiece));
      yield `${i > 0 ? ',' : ''}${text.slice(1, -1)}`;
    }
    yield ']';
    return;
  }
  if (typeof value === 'object' && value !== null && Object.getPrototypeOf(value) === Object.prototype && !('toJSON' in value)) {
    yield '{';
    let first = true;
    for (const [k, v] of Object.entries(value)) {
      // As JSON.stringify: a key whose value has no JSON form is left out.
      if (v === undefined || typeof v === 'function' || typeof v === 'symbol') continue;
      yield `${first ? '' : ','}${JSON.stringify(k)}:`;
      first = false;
      yield* walk(v);
    }
    yield '}';
    return;
  }
  yield (JSON.stringify(value) as string | undefined) ?? 'null';
}

/** Cache writes scheduled and not started yet: `flushCacheWrites` runs them at once. */
const scheduled = new Map<NodeJS.Timeout, () => Promise<void>>();
/** Cache writes under way: an unmount waits for them, so no temp file is left half-written by an exit. */
const running = new Set<Promise<void>>();

function track(write: Promise<void>): Promise<void> {
  running.add(write);
  return write.finally(() => running.delete(write));
}

/**
 * How long after the mount its caches are written: past a container's start
 * (its first reads are served by this process's one thread), or at unmount,
 * whichever comes first.
 */
const cacheWriteDelayMs = 2_000;

/**
 * Writes the cache file in the background, a while after the mount is ready;
 * failures cost only the next mount's speed. `value` is derived then too,
 * not on the mount's way to ready (an 8,000-entry tree's: 14 ms of the main
 * thread in a profile of `run --lazy`).
 */
export function writeCachedLater<T>(store: Store, path: string, key: string, value: () => T, log?: (message: string, error: unknown) => void): void {
  const write = async () => {
    try {
      await mkdir(dirname(path), { recursive: true });
      let pieces = 0;
      // Not durable: a file torn by a power cut fails to parse and is derived again (readCached).
      await writeFileAtomicFrom(path, counted(jsonPieces({ version, key, value: value() } satisfies Envelope<T>), () => pieces++), store.paths.tmp, { durable: false });
      // A big file's text was garbage as soon as written: drop it now, not at the heap's next growth.
      if (pieces > 16) collectGarbage();
    } catch (err) {
      log?.(`caching ${path}`, err);
    }
  };
  const timer = setTimeout(() => {
    scheduled.delete(timer);
    void track(write());
  }, cacheWriteDelayMs).unref();
  scheduled.set(timer, write);
}

/** Runs the cache writes still waiting and waits for those under way (an unmount soon after the mount): the next mount finds them. */
export async function flushCacheWrites(): Promise<void> {
  const writes = [...scheduled];
  scheduled.clear();
  for (const [timer] of writes) clearTimeout(timer);
  await Promise.all([...running, ...writes.map(([, write]) => track(write()))]);
}

export const tocCachePath = (store: Store, blob: Digest): string => `${store.paths.index(blob)}.toc`;

/**
 * A layer's parsed TOC (eStargz, zstd:chunked): read back from the store when
 * an earlier mount kept it under the same `key` (the digest the TOC was
 * checked against), else `parse`d and kept for the next mount. Its chunk map
 * is kept as [path, chunks] pairs.
 */
export async function cachedLayerIndex<T extends { chunks: Map<string, unknown[]> }>(
  store: Store,
  blob: Digest,
  key: string,
  parse: () => Promise<T>,
  log?: (message: string, error: unknown) => void,
): Promise<T> {
  const path = tocCachePath(store, blob);
  const cached = await readCached<Omit<T, 'chunks'> & { chunks: Array<[string, unknown[]]> }>(path, key);
  if (cached) return { ...cached, chunks: new Map(cached.chunks) } as unknown as T;
  const index = await parse();
  writeCachedLater(store, path, key, () => ({ ...index, chunks: [...index.chunks] }), log);
  return index;
}
export const treeCachePath = (store: Store, image: Digest): string => `${store.paths.index(image)}.tree`;

import { parseBatch, skipSpace, splitJsonArray } from './json-split.js';
import { createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { DigestMismatchError, LazyrootError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { writeFileAtomic } from '../store/atomic-file.js';
import type { LayerIndex } from './layer-index.js';
import type { GzipCheckpoint, IndexEntry, LazyWindow } from './types.js';

/*
 * Index file layout (little-endian; all offsets from the start of the file).
 *
 * Header, 128 bytes:
 *     0   8  magic "LZRINDEX"
 *     8   2  format version (u16) = 2 (1: records of 64 bytes, no window digest; still read)
 *    10   1  layer compression: 0 = none (plain tar), 1 = gzip
 *    11   1  reserved, 0
 *    12   4  checkpoint count N (u32)
 *    16   8  compressed size: the blob's bytes (u64)
 *    24   8  uncompressed size: the tar's bytes (u64)
 *    32  32  blob digest, sha256, raw
 *    64  32  diff ID, sha256, raw
 *    96   4  entry count (u32)
 *   100   4  entries section length E (u32)
 *   104   8  windows section length W (u64)
 *   112  16  reserved, 0
 *
 * Checkpoint table at 128, N records of 96 bytes:
 *     0   8  compressedOffset (u64)
 *     8   8  uncompressedOffset (u64)
 *    16   8  window's offset in the windows section (u64)
 *    24   4  window's stored length (u32): raw deflate of the window, or the
 *            window itself when that is not shorter (stored == length)
 *    28   2  window length (u16, at most 32768; 0 at the start of a gzip member)
 *    30   1  bits (0–7)
 *    31   1  reserved, 0
 *    32  32  span digest, sha256, raw
 *    64  32  window digest: sha256 of the window's stored bytes, raw
 *
 * Entries section at 128 + 96·N, E bytes: raw deflate of a JSON array with
 * one array per entry, in archive order:
 *   [path, type, mode, uid, gid, size, mtime, dataOffset, linkname, devmajor,
 *    devminor, xattrs, sparse, mtimeNsec]
 * (mtime whole seconds; files written before mtimeNsec existed may hold a
 * fractional mtime, read as seconds and nanoseconds)
 * type is a code (0 file, 1 dir, 2 symlink, 3 hardlink, 4 char, 5 block,
 * 6 fifo); absent fields are null and trailing nulls are dropped; xattrs is
 * {name: base64}; sparse is a flat [offset, size, offset, size…] array.
 *
 * Windows section, W bytes: the stored windows back to back. A window's
 * bytes that inflating from its checkpoint never copies are zeros
 * (window-trim.ts), so it deflates to about a tenth; a reader cannot tell
 * and need not.
 *
 * Trailer, 32 bytes: sha256 of the head, every byte before the windows
 * (version 1: of every byte before the trailer).
 *
 * The head (header, table and entries) is read alone and each window when
 * its span is first decoded, checked by its own digest: the windows are
 * ~90 % of the file (trimmed as they are) and a mount decodes few spans. A mount reads a stored
 * index that way (readIndexFile: its cost does not grow with the number of
 * spans), and another machine a registry's (remote-index.ts: the head's
 * digest is in the artifact's annotations).
 */
const magic = Buffer.from('LZRINDEX', 'ascii');
const version = 2;
const headerSize = 128;
const recordSizes: Record<number, number> = { 1: 64, 2: 96 };
const recordSize = recordSizes[version]!;
const trailerSize = 32;
const types: ReadonlyArray<IndexEntry['type']> = ['file', 'dir', 'symlink', 'hardlink', 'char', 'block', 'fifo'];
const typeCodes = new Map(types.map((t, i) => [t, i]));

type EntryTuple = [string, number, number, number, number, number, number, ...Array<unknown>];

/** Encodes an index in the layout above. */
export function encodeIndex(index: LayerIndex): Buffer {
  const windows: Buffer[] = [];
  let windowsLength = 0;
  const table = Buffer.alloc(recordSize * index.checkpoints.length);
  index.checkpoints.forEach((cp, i) => {
    const at = i * recordSize;
    if (cp.window.length > 32768) throw new LazyrootError('INVALID_DATA', `index: checkpoint ${i} has a ${cp.window.length}-byte window (at most 32768)`);
    let stored = cp.window;
    if (cp.window.length > 0) {
      const deflated = deflateRawSync(cp.window, { level: 1 }); // 3× faster than the default level, nearly as small
      if (deflated.length < cp.window.length) stored = deflated;
    }
    writeU64(table, at, cp.compressedOffset);
    writeU64(table, at + 8, cp.uncompressedOffset);
    writeU64(table, at + 16, windowsLength);
    table.writeUInt32LE(stored.length, at + 24);
    table.writeUInt16LE(cp.window.length, at + 28);
    table.writeUInt8(cp.bits, at + 30);
    rawDigest(cp.spanDigest, `checkpoint ${i} span digest`).copy(table, at + 32);
    createHash('sha256').update(stored).digest().copy(table, at + 64);
    windows.push(stored);
    windowsLength += stored.length;
  });
  const entries = deflateRawSync(Buffer.from(JSON.stringify(index.entries.map(entryTuple))));

  const header = Buffer.alloc(headerSize);
  magic.copy(header, 0);
  header.writeUInt16LE(version, 8);
  header.writeUInt8(index.compression === 'gzip' ? 1 : 0, 10);
  header.writeUInt32LE(index.checkpoints.length, 12);
  writeU64(header, 16, index.compressedSize);
  writeU64(header, 24, index.uncompressedSize);
  rawDigest(index.blobDigest, 'blob digest').copy(header, 32);
  rawDigest(index.diffId, 'diff ID').copy(header, 64);
  header.writeUInt32LE(index.entries.length, 96);
  header.writeUInt32LE(entries.length, 100);
  writeU64(header, 104, windowsLength);

  const head = Buffer.concat([header, table, entries]);
  return Buffer.concat([head, ...windows, createHash('sha256').update(head).digest()]);
}

/** Decodes an index file's bytes; `what` names the file in errors. */
export function decodeIndex(data: Buffer, what = 'index file'): LayerIndex {
  const bad = badIndex(what);
  if (data.length < headerSize + trailerSize || !data.subarray(0, 8).equals(magic)) throw bad('bad magic');
  const layout = layoutOf(data, bad);
  const body = data.subarray(0, data.length - trailerSize);
  if (layout.windowsAt + layout.windowsLength !== body.length) throw bad('section lengths do not add up');
  const sealed = layout.version >= 2 ? data.subarray(0, layout.windowsAt) : body;
  if (!createHash('sha256').update(sealed).digest().equals(data.subarray(data.length - trailerSize))) throw bad('checksum mismatch: the file is damaged');
  // The windows section is copied out of the file's buffer (which also holds the entries, large for
  // a layer of many files) and each window inflated when its span is first decoded, not here: a
  // mount reads a few spans of hundreds.
  const windows = Buffer.from(data.subarray(layout.windowsAt, layout.windowsAt + layout.windowsLength));
  return decodeHead(data, layout, bad, (w) => new StoredCheckpoint(w, windows.subarray(w.windowOffset, w.windowOffset + w.stored), what));
}

/**
 * The bytes of an index file before its windows (header, checkpoint table,
 * entries): what {@link decodeIndexHead} needs. Undefined for a version 1
 * file, whose windows cannot be checked one by one.
 */
export function indexHeadLength(data: Buffer, what = 'index file'): number | undefined {
  const bad = badIndex(what);
  if (data.length < headerSize || !data.subarray(0, 8).equals(magic)) throw bad('bad magic');
  const layout = layoutOf(data, bad);
  return layout.version >= 2 ? layout.windowsAt : undefined;
}

/** Whether an index was read by its head alone (its windows are read as its spans are decoded): it is not whole in memory to encode. */
export function fetchesWindows(index: LayerIndex): boolean {
  return index.checkpoints.some((cp) => cp.lazyWindow !== undefined);
}

/**
 * Decodes the head of an index file (its first {@link indexHeadLength}
 * bytes, checked by the caller against a digest it trusts) without its
 * windows: each checkpoint's window is fetched by `fetchWindow` (bytes
 * [start, end) of the windows section) when its span is first decoded, and
 * checked against the window digest in the table. Version 2 files only: a
 * version 1 table has no window digests.
 */
export function decodeIndexHead(head: Buffer, what: string, fetchWindow: (start: number, end: number) => Promise<Buffer>): LayerIndex {
  const bad = badIndex(what);
  if (head.length < headerSize || !head.subarray(0, 8).equals(magic)) throw bad('bad magic');
  const layout = layoutOf(head, bad);
  if (layout.version < 2) throw bad(`format version ${layout.version} has no window digests: it is read whole or not at all`);
  if (head.length !== layout.windowsAt) throw bad(`its head is ${layout.windowsAt} bytes, not ${head.length}`);
  return decodeHead(head, layout, bad, (w) => new FetchedCheckpoint(w, fetchWindow, what));
}

interface Layout {
  version: number;
  record: number;
  count: number;
  entryCount: number;
  entriesAt: number;
  windowsAt: number;
  windowsLength: number;
}

/** Where a window lies in the windows section, what it inflates to and the digest it must have. */
export interface WindowPlace {
  index: number;
  /** The checkpoint's fields other than its window. */
  fields: Omit<GzipCheckpoint, 'window' | 'lazyWindow'>;
  windowOffset: number;
  stored: number;
  length: number;
  /** sha256 of the stored bytes (version 2), else undefined. */
  digest: Digest | undefined;
}

function badIndex(what: string): (why: string) => LazyrootError {
  return (why) => new LazyrootError('INVALID_DATA', `${what}: not a valid lazyroot index (${why}); rebuild it`);
}

function layoutOf(data: Buffer, bad: (why: string) => LazyrootError): Layout {
  const v = data.readUInt16LE(8);
  const record = recordSizes[v];
  if (record === undefined) throw bad(`format version ${v}, expected ${version}`);
  const count = data.readUInt32LE(12);
  const entriesAt = headerSize + count * record;
  return { version: v, record, count, entryCount: data.readUInt32LE(96), entriesAt, windowsAt: entriesAt + data.readUInt32LE(100), windowsLength: readU64(data, 104) };
}

/** The index a file's head describes, its checkpoints made by `checkpoint` from where their windows lie. */
function decodeHead(data: Buffer, layout: Layout, bad: (why: string) => LazyrootError, checkpoint: (w: WindowPlace) => GzipCheckpoint): LayerIndex {
  const compressionCode = data.readUInt8(10);
  if (compressionCode > 1) throw bad(`unknown compression ${compressionCode}`);
  const { count, entryCount, entriesAt, windowsAt, windowsLength, record } = layout;
  if (windowsAt > data.length) throw bad('section lengths do not add up');
  const checkpoints: GzipCheckpoint[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const at = headerSize + i * record;
    const windowOffset = readU64(data, at + 16);
    const stored = data.readUInt32LE(at + 24);
    const length = data.readUInt16LE(at + 28);
    if (windowOffset + stored > windowsLength || length > 32768) throw bad(`checkpoint ${i}: window outside its section`);
    checkpoints[i] = checkpoint({
      index: i,
      fields: { compressedOffset: readU64(data, at), bits: data.readUInt8(at + 30), uncompressedOffset: readU64(data, at + 8), spanDigest: `sha256:${data.toString('hex', at + 32, at + 64)}` },
      windowOffset,
      stored,
      length,
      digest: record >= 96 ? `sha256:${data.toString('hex', at + 64, at + 96)}` : undefined,
    });
  }

  // The tuples are parsed a batch at a time (json-split.ts): never the whole list as one string and one tree of arrays.
  let json: Buffer;
  try {
    json = inflateRawSync(data.subarray(entriesAt, windowsAt));
  } catch (err) {
    throw bad(`entries: ${(err as Error).message}`);
  }
  const split = splitJsonArray(json, skipSpace(json, 0), tuplesPerBatch);
  const batches: Array<readonly [number, number]> | undefined = split && skipSpace(json, split.end) === json.length ? split.batches : undefined;
  if (batches && split!.count !== entryCount) throw bad('entry count mismatch');
  const entries: IndexEntry[] = new Array(entryCount);
  let i = 0;
  for (const batch of batches ?? [undefined]) {
    let tuples: unknown;
    try {
      tuples = batch ? parseBatch(json, batch) : JSON.parse(json.toString('utf8'));
    } catch (err) {
      throw bad(`entries: ${(err as Error).message}`);
    }
    if (!Array.isArray(tuples) || (!batch && tuples.length !== entryCount)) throw bad('entry count mismatch');
    for (const tuple of tuples) entries[i] = tupleEntry(tuple as EntryTuple, i++, bad);
  }

  return {
    compression: compressionCode === 1 ? 'gzip' : 'none',
    blobDigest: `sha256:${data.toString('hex', 32, 64)}`,
    diffId: `sha256:${data.toString('hex', 64, 96)}`,
    compressedSize: readU64(data, 16),
    uncompressedSize: readU64(data, 24),
    entries,
    checkpoints,
  };
}

/** Inflates a stored window to the length its table gives, or throws `damaged()`. */
function inflateWindow(stored: Buffer, length: number, damaged: () => LazyrootError): Buffer {
  let window: Buffer;
  if (length === 0) window = empty;
  else if (stored.length === length) window = stored;
  else {
    try {
      window = inflateRawSync(stored, { maxOutputLength: length });
    } catch {
      throw damaged();
    }
  }
  if (window.length !== length) throw damaged();
  return window;
}

/**
 * A window's stored bytes checked against its digest (version 2), then
 * inflated to the length the table gives; `what` names the index in errors.
 */
function openWindow(stored: Buffer, place: WindowPlace, what: string): Buffer {
  const { digest, index, windowOffset, length } = place;
  if (digest !== undefined) {
    const got = `sha256:${createHash('sha256').update(stored).digest('hex')}`;
    if (got !== digest) throw new DigestMismatchError(`${what}: checkpoint ${index}: its window (bytes ${windowOffset}-${windowOffset + stored.length} of the windows)`, digest, got);
  }
  return inflateWindow(stored, length, () => badIndex(what)(`checkpoint ${index}: its window does not inflate to the ${length} bytes the table says`));
}

/** A checkpoint of an index file: its fields from the table, its window from where `place` says. */
abstract class PlacedCheckpoint {
  readonly compressedOffset: number;
  readonly bits: number;
  readonly uncompressedOffset: number;
  readonly spanDigest: Digest;

  constructor(protected readonly place: WindowPlace) {
    ({ compressedOffset: this.compressedOffset, bits: this.bits, uncompressedOffset: this.uncompressedOffset, spanDigest: this.spanDigest } = place.fields);
  }
}

/** A checkpoint read from a whole index file: its window is checked and inflated the first time it is asked for. */
class StoredCheckpoint extends PlacedCheckpoint implements GzipCheckpoint {
  private inflated: Buffer | undefined;

  constructor(
    place: WindowPlace,
    private readonly stored: Buffer,
    private readonly what: string,
  ) {
    super(place);
  }

  get window(): Buffer {
    // Version 2: the trailer seals the head only, each window is checked by its own digest.
    this.inflated ??= openWindow(this.stored, this.place, this.what);
    return this.inflated;
  }

  /** The window checked now, naming the index as `what`: what a registry's whole index must pass. */
  checkWindow(what: string): void {
    this.inflated = openWindow(this.stored, this.place, what);
  }
}

/**
 * A checkpoint of an index read by its head alone: the window is fetched
 * (once; again after a failure), checked against its digest and inflated
 * when a span is first decoded from it. `window` is there once `load()` has
 * resolved.
 */
class FetchedCheckpoint extends PlacedCheckpoint implements GzipCheckpoint, LazyWindow {
  readonly lazyWindow: LazyWindow = this;
  loaded: Buffer | undefined;
  private loading: Promise<Buffer> | undefined;

  constructor(
    place: WindowPlace,
    private readonly fetchWindow: (start: number, end: number) => Promise<Buffer>,
    private readonly what: string,
  ) {
    super(place);
    if (place.length === 0) this.loaded = empty;
  }

  get length(): number {
    return this.place.length;
  }

  get window(): Buffer {
    if (!this.loaded) throw new LazyrootError('FAILED_PRECONDITION', `checkpoint ${this.place.index}: its window was used before it was fetched`);
    return this.loaded;
  }

  load(): Promise<Buffer> {
    if (this.loaded) return Promise.resolve(this.loaded);
    this.loading ??= this.fetchWindow(this.place.windowOffset, this.place.windowOffset + this.place.stored)
      .then((bytes) => openWindow(bytes, this.place, this.what))
      .then(
        (window) => (this.loaded = window),
        (err: unknown) => {
          this.loading = undefined; // a later read asks again
          throw err;
        },
      );
    return this.loading;
  }
}

/**
 * Checks every window of a decoded index file: each against its digest
 * (version 2) and that it inflates to its length. For an index taken whole
 * from a registry: its trailer is the sender's word, its windows are all
 * used from here on without another look.
 */
export function checkWindows(index: LayerIndex, what: string): void {
  for (const cp of index.checkpoints) {
    if (cp instanceof StoredCheckpoint) cp.checkWindow(what);
    else void cp.window;
  }
}

/**
 * Writes an index file atomically (temp file in `tmpDir`, default the target's
 * directory, then fsync and rename). A second writer of the same index simply
 * replaces the file with identical bytes.
 */
export async function writeIndexFile(path: string, index: LayerIndex, options: { tmpDir?: string } = {}): Promise<void> {
  await writeFileAtomic(path, encodeIndex(index), options.tmpDir ?? dirname(path));
}

/** Reads an index file; NOT_FOUND when there is none, INVALID_DATA when it is damaged. */
export async function readIndexFile(path: string): Promise<LayerIndex> {
  const what = `index file ${path}`;
  const bad = badIndex(what);
  let file: FileHandle;
  try {
    file = await open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new LazyrootError('NOT_FOUND', `index file ${path} does not exist`, { cause: err });
    throw err;
  }
  let head: Buffer;
  let trailer: Buffer;
  try {
    const { size } = await file.stat();
    const header = await readAt(file, 0, Math.min(size, headerSize));
    if (header.length < headerSize || size < headerSize + trailerSize || !header.subarray(0, 8).equals(magic)) throw bad('bad magic');
    const layout = layoutOf(header, bad);
    // Version 1 has no window digests: read and checked whole.
    if (layout.version < 2) return decodeIndex(await readAt(file, 0, size), what);
    if (layout.windowsAt + layout.windowsLength + trailerSize !== size) throw bad('section lengths do not add up');
    head = await readAt(file, 0, layout.windowsAt);
    trailer = await readAt(file, size - trailerSize, trailerSize);
  } finally {
    await file.close();
  }
  if (!createHash('sha256').update(head).digest().equals(trailer)) throw bad('checksum mismatch: the file is damaged');
  // Each window is read when its span is first decoded, and checked by its digest (a damaged one: that span's reads fail).
  return decodeIndexHead(head, what, async (start, end) => {
    const windows = await open(path, 'r');
    try {
      return await readAt(windows, head.length + start, end - start);
    } finally {
      await windows.close();
    }
  });
}

async function readAt(file: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let n = 0;
  while (n < length) {
    const { bytesRead } = await file.read(buf, n, length - n, position + n);
    if (bytesRead === 0) break;
    n += bytesRead;
  }
  return n === length ? buf : buf.subarray(0, n);
}

const empty = Buffer.alloc(0);

/** Entry tuples parsed at once when an index file is read. */
const tuplesPerBatch = 512;

function entryTuple(e: IndexEntry): unknown[] {
  const t: unknown[] = [
    e.path,
    typeCodes.get(e.type),
    e.mode,
    e.uid,
    e.gid,
    e.size,
    e.mtime,
    e.dataOffset ?? null,
    e.linkname ?? null,
    e.devmajor ?? null,
    e.devminor ?? null,
    e.xattrs ?? null,
    e.sparse ? e.sparse.flatMap((r) => [r.offset, r.size]) : null,
    e.mtimeNsec ?? null,
  ];
  while (t[t.length - 1] === null) t.pop();
  return t;
}

function tupleEntry(t: EntryTuple, i: number, bad: (why: string) => Error): IndexEntry {
  if (!Array.isArray(t) || t.length < 7 || typeof t[0] !== 'string') throw bad(`entry ${i} is malformed`);
  const type = types[t[1]];
  if (type === undefined) throw bad(`entry ${i} has unknown type ${String(t[1])}`);
  const e: IndexEntry = { path: t[0], type, mode: t[2], uid: t[3], gid: t[4], size: t[5], mtime: Math.floor(t[6]) };
  const [, , , , , , , dataOffset, linkname, devmajor, devminor, xattrs, sparse, mtimeNsec] = t;
  if (mtimeNsec != null) e.mtimeNsec = mtimeNsec as number;
  else if (t[6] !== e.mtime) e.mtimeNsec = Math.round((t[6] - e.mtime) * 1e9) % 1_000_000_000;
  if (dataOffset != null) e.dataOffset = dataOffset as number;
  if (linkname != null) e.linkname = linkname as string;
  if (devmajor != null) e.devmajor = devmajor as number;
  if (devminor != null) e.devminor = devminor as number;
  if (xattrs != null) e.xattrs = xattrs as Record<string, string>;
  if (sparse != null) {
    const flat = sparse as number[];
    const regions: Array<{ offset: number; size: number }> = new Array(flat.length >> 1);
    for (let j = 0; j < regions.length; j++) regions[j] = { offset: flat[2 * j]!, size: flat[2 * j + 1]! };
    e.sparse = regions;
  }
  return e;
}

function writeU64(buf: Buffer, at: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new LazyrootError('INVALID_DATA', `index: ${value} is not a valid offset or size`);
  buf.writeBigUInt64LE(BigInt(value), at);
}

function readU64(buf: Buffer, at: number): number {
  const lo = buf.readUInt32LE(at);
  const hi = buf.readUInt32LE(at + 4);
  if (hi > 0x1fffff) throw new LazyrootError('INVALID_DATA', `index: a 64-bit field at byte ${at} is beyond 2^53`);
  return hi * 2 ** 32 + lo;
}

function rawDigest(digest: Digest, what: string): Buffer {
  if (!/^sha256:[0-9a-f]{64}$/.test(digest)) throw new LazyrootError('INVALID_DATA', `index: ${what} ${JSON.stringify(digest)} is not a sha256 digest`);
  return Buffer.from(digest.slice(7), 'hex');
}

import { createHash } from 'node:crypto';
import { DigestMismatchError, LazyrootError } from '../../errors.js';
import { digestAlgorithm, isDigest, parseDigest, type Digest } from '../../oci/digest.js';
import { normalizeEntryPath } from '../../oci/entry-path.js';
import type { BlobRangeReader, EstargzChunk, IndexEntry } from '../types.js';
import { footerSize, parseFooter, parsePositionAnnotation, skippableFrameMagic, skippableHeaderSize, type TocPosition } from './format.js';
import { decodeFrames } from './frames.js';

/**
 * A zstd:chunked layer's TOC (format.ts): one range read (two without the
 * position annotation: the footer first), checked against the manifest
 * checksum annotation, decoded, and mapped to the index entries the union
 * merges and, per regular file, the frames holding its chunks.
 *
 * The TOC JSON (containers/storage `internal.TOC`): `{"version":1,"entries":[…]}`,
 * one entry per tar member in tar order: type (reg, dir, symlink, hardlink,
 * char, block, fifo), name, linkName, mode, size, uid, gid, modtime
 * (RFC 3339, nanoseconds), devMajor, devMinor, xattrs (base64 values),
 * digest (sha256 of a file's bytes), offset/endOffset (the blob bytes of the
 * file's frames). A file split by the rolling checksum also carries
 * chunkSize/chunkDigest (its first chunk) and is followed by one "chunk"
 * entry per further chunk: chunkOffset (in the file), chunkSize, offset (its
 * frame in the blob), chunkDigest. A chunk's frames end where the next
 * chunk's start; the last chunk's at the file's endOffset.
 */

export interface ZstdChunkedIndex {
  /** Every tar member of the layer, in tar order. */
  entries: IndexEntry[];
  /** Regular file path → its chunks, by file offset, tiling the file (none for empty files). */
  chunks: Map<string, EstargzChunk[]>;
  /** Where the compressed TOC is; file frames all lie before `position.offset - 8`. */
  position: TocPosition;
  /** The checksum of the compressed TOC, as computed. */
  checksum: Digest;
}

export interface ReadZstdChunkedIndexOptions {
  /** The manifest checksum annotation: sha256 (or sha512) of the compressed TOC bytes. */
  checksum: string;
  /** The manifest position annotation ("offset:length:uncompressedLength:type"); without it the footer is read. */
  position?: string;
  what?: string;
  /** Bound on the decompressed TOC (default 256 MiB). */
  maxTocBytes?: number;
  /** Bound on the TOC's entries (default 2,000,000). */
  maxTocRecords?: number;
}

const defaultMaxTocBytes = 256 * 1024 * 1024;
const defaultMaxTocRecords = 2_000_000;

export async function readZstdChunkedIndex(blob: BlobRangeReader, options: ReadZstdChunkedIndexOptions): Promise<ZstdChunkedIndex> {
  const what = options.what ?? 'zstd:chunked layer';
  const want = parseDigest(options.checksum, `${what}: zstd:chunked manifest checksum annotation`);
  const size = blob.size;
  let position: TocPosition;
  if (options.position !== undefined) position = parsePositionAnnotation(options.position, size, what);
  else {
    if (size < footerSize) throw new LazyrootError('INVALID_DATA', `${what}: not a zstd:chunked blob: ${size} bytes is smaller than its footer`);
    position = parseFooter(await blob.read(size - footerSize, size), size, what);
  }
  const maxTocBytes = options.maxTocBytes ?? defaultMaxTocBytes;
  if (position.uncompressedLength > maxTocBytes) {
    throw new LazyrootError('RESOURCE_EXHAUSTED', `${what}: the zstd:chunked TOC is ${position.uncompressedLength} bytes uncompressed, more than the limit of ${maxTocBytes}`);
  }
  // The skippable frame header before the TOC comes along: the TOC must be in a frame decoders skip.
  const framed = await blob.read(position.offset - skippableHeaderSize, position.offset + position.length);
  if (framed.length !== position.length + skippableHeaderSize) {
    throw new LazyrootError('UNAVAILABLE', `${what}: asked for the zstd:chunked TOC (${framed.length} of ${position.length + skippableHeaderSize} bytes came)`);
  }
  const compressed = framed.subarray(skippableHeaderSize);
  const algorithm = digestAlgorithm(want);
  const got = `${algorithm}:${createHash(algorithm).update(compressed).digest('hex')}` as Digest;
  if (got !== want) throw new DigestMismatchError(`${what}: zstd:chunked TOC (blob bytes ${position.offset}+${position.length})`, want, got);
  if (framed.readUInt32LE(0) !== skippableFrameMagic || framed.readUInt32LE(4) !== position.length) {
    throw new LazyrootError('INVALID_DATA', `${what}: the zstd:chunked TOC at ${position.offset} is not in a skippable frame of its length`);
  }
  let json: Buffer;
  try {
    json = decodeFrames(compressed, position.uncompressedLength);
  } catch (err) {
    throw new LazyrootError('INVALID_DATA', `${what}: the zstd:chunked TOC does not decode: ${(err as Error).message}`, { cause: err });
  }
  let toc: unknown;
  try {
    toc = JSON.parse(json.toString('utf8'));
  } catch (err) {
    throw new LazyrootError('INVALID_DATA', `${what}: the zstd:chunked TOC is not valid JSON (${(err as Error).message})`, { cause: err });
  }
  const dataEnd = position.offset - skippableHeaderSize;
  return { ...indexFromZstdChunkedToc(toc, dataEnd, what, options.maxTocRecords ?? defaultMaxTocRecords), position, checksum: got };
}

const entryTypes: Record<string, IndexEntry['type'] | undefined> = {
  reg: 'file',
  dir: 'dir',
  symlink: 'symlink',
  hardlink: 'hardlink',
  char: 'char',
  block: 'block',
  fifo: 'fifo',
};

interface PendingFile {
  path: string;
  size: number;
  endOffset: number;
  digest?: string;
  chunks: Array<{ fileOffset: number; size: number; start: number; digest?: string; tocIndex: number }>;
}

/**
 * A parsed TOC as index entries and chunk lists; every frame must lie in
 * [0, dataEnd) (before the TOC's frame). Hostile names are refused
 * (HOSTILE_ARCHIVE), contradictions are INVALID_DATA, and more than
 * `maxRecords` entries is RESOURCE_EXHAUSTED, before any is mapped.
 */
export function indexFromZstdChunkedToc(toc: unknown, dataEnd: number, what: string, maxRecords = defaultMaxTocRecords): { entries: IndexEntry[]; chunks: Map<string, EstargzChunk[]> } {
  if (!isObject(toc)) throw invalid(what, 'the zstd:chunked TOC is not a JSON object');
  if (toc.version !== 1) throw new LazyrootError('UNSUPPORTED', `${what}: zstd:chunked TOC version ${JSON.stringify(toc.version)} is not supported (only 1)`);
  // An empty layer's TOC says `"entries": null` (a nil Go slice).
  const list = toc.entries === null ? [] : toc.entries;
  if (!Array.isArray(list)) throw invalid(what, 'the zstd:chunked TOC has no "entries" array');
  if (list.length > maxRecords) {
    throw new LazyrootError('RESOURCE_EXHAUSTED', `${what}: the zstd:chunked TOC lists ${list.length} entries and chunks, more than the limit of ${maxRecords} (--max-toc-records)`);
  }
  const entries: IndexEntry[] = [];
  const files: PendingFile[] = [];
  let current: PendingFile | undefined;
  for (let index = 0; index < list.length; index++) {
    const raw: unknown = list[index];
    const at = `${what}: zstd:chunked TOC entry ${index}`;
    if (!isObject(raw)) throw invalid(at, 'is not an object');
    if (raw.type === 'chunk') {
      if (!current) throw invalid(at, 'is a chunk that follows no regular file');
      if (raw.name !== undefined && raw.name !== '' && normalizeEntryPath(str(raw.name, at, 'name'), what) !== current.path) {
        throw invalid(at, `is a chunk of ${JSON.stringify(raw.name)} after ${JSON.stringify(current.path)}`);
      }
      current.chunks.push({ fileOffset: int(raw.chunkOffset, at, 'chunkOffset'), size: int(raw.chunkSize, at, 'chunkSize'), start: int(raw.offset, at, 'offset'), ...optionalDigest(raw.chunkDigest, at, 'chunkDigest'), tocIndex: index });
      continue;
    }
    current = undefined;
    const type = typeof raw.type === 'string' ? entryTypes[raw.type] : undefined;
    if (!type) throw new LazyrootError('UNSUPPORTED', `${at}: unknown entry type ${JSON.stringify(raw.type)}`);
    const path = normalizeEntryPath(str(raw.name, at, 'name'), what);
    if (path === '' && type !== 'dir') throw invalid(at, `is the layer root as a ${type}`);
    const mtime = timeOf(raw.modtime, at);
    const entry: IndexEntry = {
      path,
      type,
      mode: int(raw.mode, at, 'mode') & 0o7777,
      uid: int(raw.uid, at, 'uid'),
      gid: int(raw.gid, at, 'gid'),
      size: type === 'file' ? int(raw.size, at, 'size') : 0,
      mtime: mtime.seconds,
    };
    if (mtime.nsec !== 0) entry.mtimeNsec = mtime.nsec;
    if (type === 'symlink') {
      entry.linkname = str(raw.linkName, at, 'linkName');
      if (entry.linkname === '' || entry.linkname.includes('\0')) throw invalid(at, 'is a symlink with no valid target');
    } else if (type === 'hardlink') {
      const target = normalizeEntryPath(str(raw.linkName, at, 'linkName'), `${what}: hardlink ${JSON.stringify(path)}`);
      if (target === '') throw invalid(at, 'is a hardlink to the layer root');
      entry.linkname = target;
    } else if (type === 'char' || type === 'block') {
      entry.devmajor = int(raw.devMajor, at, 'devMajor');
      entry.devminor = int(raw.devMinor, at, 'devMinor');
    }
    const xattrs = xattrsOf(raw.xattrs, at);
    if (xattrs) entry.xattrs = xattrs;
    entries.push(entry);
    if (type === 'file' && entry.size > 0) {
      current = { path, size: entry.size, endOffset: int(raw.endOffset, at, 'endOffset'), ...optionalDigest(raw.digest, at, 'digest'), chunks: [] };
      current.chunks.push({ fileOffset: 0, size: int(raw.chunkSize, at, 'chunkSize'), start: int(raw.offset, at, 'offset'), ...optionalDigest(raw.chunkDigest, at, 'chunkDigest'), tocIndex: index });
      files.push(current);
    }
  }
  const chunks = new Map<string, EstargzChunk[]>();
  for (const file of files) chunks.set(file.path, finishChunks(file, dataEnd, what));
  return { entries, chunks };
}

/** A file's chunks, checked: they tile the file, carry digests, and their frames lie in order inside [0, dataEnd). */
function finishChunks(file: PendingFile, dataEnd: number, what: string): EstargzChunk[] {
  const at = `${what}: ${JSON.stringify(file.path)}`;
  const n = file.chunks.length;
  const out: EstargzChunk[] = [];
  let expected = 0;
  for (let i = 0; i < n; i++) {
    const c = file.chunks[i]!;
    const size = c.size === 0 && i === n - 1 ? file.size - c.fileOffset : c.size;
    const end = i + 1 < n ? file.chunks[i + 1]!.start : file.endOffset;
    const label = `chunk ${i} (TOC entry ${c.tocIndex}, file bytes ${c.fileOffset}+${size}, blob bytes ${c.start}–${end})`;
    if (c.fileOffset !== expected) throw invalid(at, `${label} does not continue the file at byte ${expected}`);
    if (size <= 0 || c.fileOffset + size > file.size) throw invalid(at, `${label} is empty or runs past the end of the file (${file.size} bytes)`);
    if (c.start >= end || end > dataEnd) throw invalid(at, `${label}: its frames are empty, backward or not before the TOC (byte ${dataEnd})`);
    const digest = c.digest ?? (n === 1 ? file.digest : undefined);
    if (digest === undefined) throw new LazyrootError('UNSUPPORTED', `${at}: ${label} has no digest: its bytes could not be verified`);
    expected = c.fileOffset + size;
    out.push({ offset: c.fileOffset, size, compressedStart: c.start, compressedEnd: end, chunkDigest: digest as Digest });
  }
  if (expected !== file.size) throw invalid(at, `its chunks cover ${expected} of its ${file.size} bytes`);
  return out;
}

function invalid(what: string, why: string): LazyrootError {
  return new LazyrootError('INVALID_DATA', `${what}: ${why}`);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function str(value: unknown, at: string, field: string): string {
  if (typeof value !== 'string') throw invalid(at, `"${field}" is not a string`);
  return value;
}

/** A non-negative safe integer; absent means 0 (Go's omitempty). */
function int(value: unknown, at: string, field: string): number {
  if (value === undefined) return 0;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw invalid(at, `"${field}" is ${JSON.stringify(value)}, not a non-negative integer`);
  return value;
}

function optionalDigest(value: unknown, at: string, field: string): { digest?: string } {
  if (value === undefined || value === '') return {};
  if (!isDigest(value)) throw invalid(at, `"${field}" ${JSON.stringify(value)} is not a digest`);
  return { digest: value };
}

/** Go's RFC 3339 time with nanoseconds → whole seconds (floor) and nanoseconds. */
function timeOf(value: unknown, at: string): { seconds: number; nsec: number } {
  if (value === undefined || value === null || value === '') return { seconds: 0, nsec: 0 };
  const ms = typeof value === 'string' ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(ms)) throw invalid(at, `"modtime" ${JSON.stringify(value)} is not an RFC 3339 time`);
  const fraction = /T\d\d:\d\d:\d\d\.(\d+)/.exec(value as string);
  return { seconds: Math.floor(ms / 1000), nsec: fraction ? Number(fraction[1]!.slice(0, 9).padEnd(9, '0')) : 0 };
}

const base64Pattern = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function xattrsOf(value: unknown, at: string): Record<string, string> | undefined {
  if (value === undefined || value === null) return undefined;
  if (!isObject(value)) throw invalid(at, '"xattrs" is not an object');
  const names = Object.keys(value);
  if (names.length === 0) return undefined;
  const out: Record<string, string> = {};
  for (const name of names) {
    const v = value[name];
    if (name === '' || name.includes('\0')) throw invalid(at, `xattr name ${JSON.stringify(name)} is invalid`);
    if (typeof v !== 'string' || !base64Pattern.test(v)) throw invalid(at, `xattr ${JSON.stringify(name)} is not base64`);
    out[name] = v;
  }
  return out;
}

import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { createGunzip, gunzip as gunzipCallback } from 'node:zlib';
import { DigestMismatchError, LazyrootError } from '../../errors.js';
import { digestAlgorithm, isDigest, parseDigest, type Digest } from '../../oci/digest.js';
import { normalizeEntryPath } from '../../oci/entry-path.js';
import type { BlobRangeReader, EstargzChunk, IndexEntry } from '../types.js';
import { parseEstargzFooter, type EstargzFooter } from './footer.js';
import { checksumOk, octal, parsePax, tarName } from './tar-header.js';
import { parseBatch, skipSpace, skipString, skipValue, splitJsonArray, type SplitArray } from '../json-split.js';

const gunzip = promisify(gunzipCallback);

/**
 * Reading an eStargz layer's table of contents (containerd/stargz-snapshotter
 * docs/estargz.md). The blob is a gzip-compatible tar:
 *
 *   [gzip member: tar headers …][gzip member: chunk of file A, then tar headers …]…
 *   [gzip member: tar header "stargz.index.json" + TOC JSON + end of archive]
 *   [footer: empty gzip member, 51 bytes (47 for legacy stargz), see footer.ts]
 *
 * The TOC lists every tar entry, and every chunk of every regular file as the
 * offset of the gzip member its bytes start in. A chunk's member ends where the
 * next member starts (the next chunk's offset; the TOC's offset for the last).
 * Decompressed, a member begins with the chunk's bytes (after `innerOffset`
 * bytes, when several payloads share one member) and goes on with the tar
 * headers that follow it, which a reader skips.
 */

/** Name of the TOC's tar entry. */
export const tocTarName = 'stargz.index.json';
/** Layer annotation holding the sha256 of the TOC JSON (set by ctr-remote, nerdctl, buildkit). */
export const tocDigestAnnotation = 'containerd.io/snapshot/stargz/toc.digest';
/** Layer annotation holding the uncompressed size of the layer. */
export const uncompressedSizeAnnotation = 'io.containers.estargz.uncompressed-size';
/** Landmark entries eStargz puts at the root to mark where prioritized files end. */
export const prefetchLandmark = '.prefetch.landmark';
export const noPrefetchLandmark = '.no.prefetch.landmark';

/** Decompressed TOC members larger than this are refused (a hostile blob could inflate without end). */
const defaultMaxTocBytes = 256 * 1024 * 1024;

/**
 * An EstargzChunk whose bytes may start inside its gzip member: eStargz's
 * `innerOffset`, written when `--estargz-min-chunk-size` packs several small
 * payloads into one member. Absent means 0.
 */
export interface EstargzMemberChunk extends EstargzChunk {
  innerOffset?: number;
}

export interface EstargzPrefetch {
  /**
   * 'prefetch': the blob starts with prioritized entries, up to `.prefetch.landmark`;
   * 'no-prefetch': the producer recorded that there are none; 'none': no landmark.
   */
  landmark: 'prefetch' | 'no-prefetch' | 'none';
  /** Paths of the entries before the prefetch landmark, in blob order: the ones to fetch first. */
  paths: string[];
  /** Bytes [0, compressedEnd) of the blob hold the prioritized entries (0 without a prefetch landmark). */
  compressedEnd: number;
}

export interface EstargzIndex {
  /** Every tar entry of the layer but the TOC itself and the landmarks, in blob order. */
  entries: IndexEntry[];
  /** Regular file path → its chunks, by file offset, tiling the file (none for empty files). */
  chunks: Map<string, EstargzMemberChunk[]>;
  /** sha256 of the TOC JSON, as computed from the bytes read. */
  tocDigest: Digest;
  tocOffset: number;
  footer: EstargzFooter;
  prefetch: EstargzPrefetch;
}

export interface ReadEstargzIndexOptions {
  /** Expected digest of the TOC JSON: the layer annotation `containerd.io/snapshot/stargz/toc.digest`. */
  tocDigest?: string;
  /** What the blob is, for messages: `layer sha256:…` (default 'eStargz layer'). */
  what?: string;
  /** Bound on the decompressed TOC member (default 256 MiB). */
  maxTocBytes?: number;
  /** Bound on the TOC's records (entries and chunks; default 2,000,000): past it the layer is refused before any is mapped. */
  maxTocRecords?: number;
}

/** Default bound on a TOC's records: about 0.5 KiB of daemon memory each at the peak of mounting, 0.3 KiB once mounted (bench: bigtoc; README). */
export const defaultMaxTocRecords = 2_000_000;

/**
 * Reads an eStargz layer's TOC with two range reads (the footer, then the TOC's
 * gzip member), verifies the TOC JSON against `tocDigest` when given, and maps
 * it to index entries and chunk lists. Hostile names are refused
 * (HOSTILE_ARCHIVE); a TOC that contradicts itself is INVALID_DATA.
 */
export async function readEstargzIndex(blob: BlobRangeReader, options: ReadEstargzIndexOptions = {}): Promise<EstargzIndex> {
  const what = options.what ?? 'eStargz layer';
  const want = options.tocDigest === undefined ? undefined : parseDigest(options.tocDigest, `${what}: TOC digest annotation`);
  const size = blob.size;
  if (size < 47) throw new LazyrootError('INVALID_DATA', `${what}: not an eStargz blob: ${size} bytes is smaller than any footer`);

  // The footer and, most often, the whole TOC in one request (see tailBytes).
  const tailStart = Math.max(0, size - tailBytes(size));
  const tail = await blob.read(tailStart, size);
  const footer = parseEstargzFooter(tail, size, what);
  const tocOffset = footer.tocOffset;
  const tocEnd = size - footer.footerSize;
  const member =
    tocOffset >= tailStart
      ? tail.subarray(tocOffset - tailStart, tocEnd - tailStart)
      : Buffer.concat([await blob.read(tocOffset, tailStart), tail.subarray(0, tocEnd - tailStart)]);
  const maxTocBytes = options.maxTocBytes ?? defaultMaxTocBytes;
  const maxRecords = options.maxTocRecords ?? defaultMaxTocRecords;
  const whole = await smallTocJson(member, Math.min(maxTocBytes, wholeTocBytes), what);
  if (whole) return { ...indexFromWholeToc(whole, tocOffset, what, maxRecords, want), tocOffset, footer };
  try {
    const streamed = await indexFromTocMember(member, maxTocBytes, what, tocOffset, maxRecords, want);
    return { ...streamed.index, tocDigest: streamed.got, tocOffset, footer };
  } catch (err) {
    if (!(err instanceof NotPlain)) throw err;
    // Not the plain shape: read it the plain way, whose results and errors are the reference.
  }
  const tocJson = await extractTocJson(member, maxTocBytes, `${what}: TOC at offset ${tocOffset}`);
  const tocDigest = checkedTocDigest(tocJson, want, what);
  return { ...indexFromTocJson(tocJson, tocOffset, what, maxRecords), tocDigest, tocOffset, footer };
}

/**
 * Bytes at the end of a blob read first: 1 % of it, from 64 KiB to 1 MiB.
 * A TOC is about 0.5 % of a layer's blob (python3 on bookworm: 309 KB of
 * 52 MB, 82 KB of 17 MB), so the footer's request brings the TOC along and
 * a mount saves a round trip per layer (10-25 ms on loopback), for a few
 * hundred KiB of the last files' bytes; a bigger TOC costs a second request
 * for the rest of it, as before.
 */
function tailBytes(size: number): number {
  return Math.min(1 << 20, Math.max(64 << 10, Math.ceil(size / 100)));
}

/** The sha256 of the TOC JSON; when the annotation names a digest, it must match (DigestMismatchError). */
function checkedTocDigest(json: Buffer, want: Digest | undefined, what: string): Digest {
  const got: Digest = `sha256:${createHash('sha256').update(json).digest('hex')}`;
  if (want !== undefined) {
    const check = digestAlgorithm(want) === 'sha256' ? got : `sha512:${createHash('sha512').update(json).digest('hex')}`;
    if (check !== want) throw new DigestMismatchError(`${what}: TOC ${tocTarName}`, want, check);
  }
  return got;
}

/** JSON.parse of the whole TOC, a failure said as INVALID_DATA naming the TOC. */
function parseTocJson(json: Buffer, what: string): unknown {
  try {
    return JSON.parse(json.toString('utf8'));
  } catch (err) {
    throw new LazyrootError('INVALID_DATA', `${what}: TOC ${tocTarName} is not valid JSON (${(err as Error).message})`, { cause: err });
  }
}

// ---- a small TOC: inflated and parsed whole

/**
 * Past this many inflated bytes a TOC is read as it inflates (below). Under
 * it, one JSON.parse of the whole text (native code) beats tokenizing it in
 * JavaScript, and the parsed tree is a few tens of MiB at most.
 */
const wholeTocBytes = 16 << 20;

/**
 * The TOC JSON of `member` when its gzip trailer claims a tar of at most
 * `limit` bytes (ISIZE) and inflating proves it; undefined for anything else (a big TOC, a claim
 * that lies, a gzip or tar oddity): the other paths read those and name their
 * faults.
 */
async function smallTocJson(member: Buffer, limit: number, what: string): Promise<Buffer | undefined> {
  const claimed = member.length >= 18 ? member.readUInt32LE(member.length - 4) : Infinity;
  if (claimed > limit) return undefined;
  try {
    return await extractTocJson(member, limit, what);
  } catch {
    return undefined;
  }
}

/** The plain path's result from the whole TOC JSON: the digest checked first, then JSON.parse and mapping. */
function indexFromWholeToc(json: Buffer, tocOffset: number, what: string, maxRecords: number, want: Digest | undefined): Omit<EstargzIndex, 'tocOffset' | 'footer'> {
  const tocDigest = checkedTocDigest(json, want, what);
  return { ...indexFromToc(parseTocJson(json, what), tocOffset, what, maxRecords), tocDigest };
}

// ---- the TOC read as it inflates: the plain case, in bounded memory

/**
 * Thrown by the streaming reader for anything but the plain case (a gzip or
 * tar oddity, JSON of another shape, a TOC past its size bound): the caller
 * then reads the TOC the plain way.
 */
class NotPlain extends Error {}

/** Inflated TOC bytes handed over at a time. */
const inflateChunk = 256 << 10;

/**
 * The TOC of the gzip member `member`, mapped while it inflates: the tar
 * header, then the JSON a few records at a time (TocJsonStream), hashed as it
 * passes. Neither the inflated TOC nor its JSON text is ever whole in memory:
 * at 1,000,000 entries that is 133 MiB. Throws NotPlain for the cases the
 * plain path reads and reports; otherwise its errors are the plain path's,
 * in the same order (a digest mismatch first).
 */
async function indexFromTocMember(member: Buffer, maxBytes: number, what: string, tocOffset: number, maxRecords: number, want: Digest | undefined): Promise<{ index: Omit<EstargzIndex, 'tocDigest' | 'tocOffset' | 'footer'>; got: Digest }> {
  const sha256 = createHash('sha256');
  const other = want !== undefined && digestAlgorithm(want) !== 'sha256' ? createHash(digestAlgorithm(want)) : undefined;
  const json = new TocJsonStream(tocOffset, what, maxRecords);
  const gz = createGunzip({ chunkSize: inflateChunk });
  /** Tar bytes until the TOC entry's data starts; then undefined. */
  let head: Buffer | undefined = Buffer.alloc(0);
  /** JSON bytes still to come. */
  let left = 0;
  let inflated = 0;
  try {
    gz.end(member);
    for await (const out of gz as AsyncIterable<Buffer>) {
      inflated += out.length;
      if (inflated > maxBytes) throw new NotPlain();
      let chunk = out;
      if (head !== undefined) {
        head = Buffer.concat([head, chunk]);
        const at = tocEntryIn(head);
        if (!at) {
          if (head.length > 1 << 20) throw new NotPlain();
          continue;
        }
        chunk = head.subarray(at.dataStart);
        left = at.size;
        head = undefined;
      }
      if (left > 0 && chunk.length > 0) {
        const data = chunk.length > left ? chunk.subarray(0, left) : chunk;
        left -= data.length;
        sha256.update(data);
        other?.update(data);
        json.push(data);
      }
    }
  } catch (err) {
    gz.destroy();
    if (err instanceof NotPlain) throw err;
    throw new NotPlain(); // a gzip error: the plain path names it
  }
  if (head !== undefined || left > 0) throw new NotPlain();
  json.end();
  const got: Digest = `sha256:${sha256.digest('hex')}`;
  if (want !== undefined) {
    const check = other ? `${digestAlgorithm(want)}:${other.digest('hex')}` : got;
    if (check !== want) throw new DigestMismatchError(`${what}: TOC ${tocTarName}`, want, check);
  }
  return { index: json.result(), got };
}

/** Where the TOC entry's data starts in the tar bytes so far, and its size; undefined until its header is there. */
function tocEntryIn(tar: Buffer): { dataStart: number; size: number } | undefined {
  let offset = 0;
  let pax: Record<string, string> = {};
  for (;;) {
    if (offset + 512 > tar.length) return undefined;
    const header = tar.subarray(offset, offset + 512);
    if (header.every((b) => b === 0) || !checksumOk(header)) throw new NotPlain();
    const typeflag = String.fromCharCode(header[156]!);
    const size = pax.size !== undefined ? Number(pax.size) : octal(header.subarray(124, 136));
    if (!Number.isSafeInteger(size) || size < 0) throw new NotPlain();
    const dataStart = offset + 512;
    if (typeflag === 'x' || typeflag === 'g') {
      if (dataStart + size > tar.length) return undefined;
      if (typeflag === 'x') pax = parsePax(tar.subarray(dataStart, dataStart + size));
      offset = dataStart + Math.ceil(size / 512) * 512;
      continue;
    }
    const name = pax.path ?? tarName(header);
    if ((typeflag !== '0' && typeflag !== '\0') || name.replace(/^(\.\/)+/, '') !== tocTarName) throw new NotPlain();
    return { dataStart, size };
  }
}

type JsonState = 'open' | 'key' | 'value' | 'afterValue' | 'element' | 'afterElement' | 'end';

/**
 * splitToc over JSON that arrives in pieces: `{"version": 1, "entries":
 * [record, …]}` (other keys allowed, "version" before "entries"), records
 * mapped `recordsPerBatch` at a time; only the bytes of an unfinished token
 * are kept between pieces. Errors the plain path would report after the
 * digest check (version, the record limit, a record it refuses) wait for
 * `result()`; once one is known, records are only counted.
 */
class TocJsonStream {
  private pending: Buffer = Buffer.alloc(0);
  private pos = 0;
  private state: JsonState = 'open';
  private key = '';
  private sawVersion = false;
  private version: unknown;
  private sawEntries = false;
  private firstElement = true;
  private count = 0;
  /** Records of the current batch: bytes [batchStart, batchEnd) of `pending`. */
  private batchStart = -1;
  private batchEnd = -1;
  private inBatch = 0;
  private builder: TocIndexBuilder | undefined;
  private failure: unknown;

  constructor(
    tocOffset: number,
    private readonly what: string,
    private readonly maxRecords: number,
  ) {
    this.builder = new TocIndexBuilder(tocOffset, what);
  }

  push(data: Buffer): void {
    this.flush();
    this.pending = this.pos < this.pending.length ? Buffer.concat([this.pending.subarray(this.pos), data]) : data;
    this.pos = 0;
    this.run(false);
    this.flush();
  }

  end(): void {
    this.run(true);
    this.flush();
    if (this.state !== 'end' || skipSpace(this.pending, this.pos) !== this.pending.length) throw new NotPlain();
  }

  /** The index, or the first error the plain path would have reported. */
  result(): Omit<EstargzIndex, 'tocDigest' | 'tocOffset' | 'footer'> {
    checkVersion(this.version, this.what);
    checkRecordCount(this.count, this.maxRecords, this.what);
    if (this.failure !== undefined) throw this.failure;
    return this.builder!.finish();
  }

  private run(final: boolean): void {
    const buf = this.pending;
    const n = buf.length;
    for (;;) {
      const i = skipSpace(buf, this.pos);
      if (i >= n) return;
      const c = buf[i]!;
      switch (this.state) {
        case 'open':
          if (c !== 0x7b) throw new NotPlain(); // {
          this.pos = i + 1;
          this.state = 'key';
          break;
        case 'key': {
          if (c !== 0x22) throw new NotPlain(); // "key" : (an object's close comes in afterValue)
          const keyEnd = skipString(buf, i);
          if (keyEnd < 0) return this.more(final);
          const colon = skipSpace(buf, keyEnd);
          if (colon >= n) return this.more(final);
          if (buf[colon] !== 0x3a) throw new NotPlain();
          this.key = buf.toString('utf8', i + 1, keyEnd - 1);
          if (this.key.includes('\\')) throw new NotPlain();
          this.pos = colon + 1;
          this.state = 'value';
          break;
        }
        case 'value':
          if (this.key === 'entries') {
            if (!this.sawVersion || this.sawEntries || c !== 0x5b) throw new NotPlain(); // [
            this.sawEntries = true;
            this.startEntries();
            this.pos = i + 1;
            this.state = 'element';
          } else {
            const end = skipValue(buf, i);
            if (end < 0 || end >= n) return this.more(final);
            if (this.key === 'version') {
              if (this.sawVersion) throw new NotPlain();
              this.sawVersion = true;
              try {
                this.version = JSON.parse(buf.toString('utf8', i, end));
              } catch {
                throw new NotPlain();
              }
            }
            this.pos = end;
            this.state = 'afterValue';
          }
          break;
        case 'afterValue':
          if (c === 0x2c) this.state = 'key';
          else if (c === 0x7d && this.sawEntries) this.state = 'end';
          else throw new NotPlain();
          this.pos = i + 1;
          break;
        case 'element': {
          if (c === 0x5d && this.firstElement) {
            this.pos = i + 1;
            this.state = 'afterValue';
            break;
          }
          const end = skipValue(buf, i);
          if (end < 0 || end >= n) return this.more(final);
          if (end === i) throw new NotPlain();
          this.record(i, end);
          this.pos = end;
          this.state = 'afterElement';
          break;
        }
        case 'afterElement':
          if (c === 0x2c) {
            this.firstElement = false;
            this.state = 'element';
          } else if (c === 0x5d) {
            this.flush();
            this.state = 'afterValue';
          } else {
            throw new NotPlain();
          }
          this.pos = i + 1;
          break;
        case 'end':
          throw new NotPlain();
      }
    }
  }

  /** The token at `pos` runs past the bytes so far: wait for more, unless there are none. */
  private more(final: boolean): void {
    if (final) throw new NotPlain();
  }

  private startEntries(): void {
    try {
      checkVersion(this.version, this.what);
    } catch {
      this.stopMapping(undefined);
    }
  }

  private record(start: number, end: number): void {
    this.count++;
    if (this.count > this.maxRecords) this.stopMapping(undefined);
    if (!this.builder) return;
    if (this.inBatch === 0) this.batchStart = start;
    this.batchEnd = end;
    if (++this.inBatch === recordsPerBatch) this.flush();
  }

  /** Maps the records of the batch so far (before `pending` is replaced). */
  private flush(): void {
    if (this.inBatch === 0) return;
    const first = this.count - this.inBatch;
    const range: [number, number] = [this.batchStart, this.batchEnd];
    this.inBatch = 0;
    if (!this.builder) return;
    let records: unknown[];
    try {
      records = parseBatch(this.pending, range);
    } catch {
      throw new NotPlain(); // not JSON: the plain path says where
    }
    try {
      for (let k = 0; k < records.length; k++) this.builder.add(records[k], first + k);
    } catch (err) {
      this.stopMapping(err);
    }
  }

  /** Records are only counted from now on; `err` is reported by result() unless an earlier error is. */
  private stopMapping(err: unknown): void {
    if (err !== undefined && this.failure === undefined) this.failure = err;
    this.builder = undefined;
    this.inBatch = 0;
  }
}

// ---- the TOC's gzip member: one tar entry named stargz.index.json

async function extractTocJson(member: Buffer, maxBytes: number, what: string): Promise<Buffer> {
  let tar: Buffer;
  try {
    // The member's trailer says what it inflates to (ISIZE, mod 2^32): one output buffer of that
    // size, not 16 KiB pieces joined at the end (which holds the TOC twice at the peak). A wrong
    // claim costs only the joining.
    const claimed = member.length >= 18 ? member.readUInt32LE(member.length - 4) : 0;
    const chunkSize = Math.min(Math.max(claimed + 1, 64 * 1024), maxBytes + 1);
    tar = await gunzip(member, { maxOutputLength: maxBytes, chunkSize });
  } catch (err) {
    const tooBig = err instanceof RangeError || /maxOutputLength|buffer/i.test(String((err as Error).message));
    throw new LazyrootError(
      'INVALID_DATA',
      tooBig
        ? `${what}: the TOC inflates to more than ${maxBytes} bytes; refused`
        : `${what}: the TOC is not a gzip member (${(err as Error).message})`,
      { cause: err },
    );
  }
  let offset = 0;
  let pax: Record<string, string> = {};
  for (;;) {
    if (offset + 512 > tar.length) throw invalid(what, `no ${tocTarName} tar entry`);
    const header = tar.subarray(offset, offset + 512);
    if (header.every((b) => b === 0)) throw invalid(what, `no ${tocTarName} tar entry`);
    if (!checksumOk(header)) throw invalid(what, 'bad tar header checksum');
    const typeflag = String.fromCharCode(header[156]!);
    const size = pax.size !== undefined ? Number(pax.size) : octal(header.subarray(124, 136));
    if (!Number.isSafeInteger(size) || size < 0) throw invalid(what, 'bad tar size field');
    const dataStart = offset + 512;
    if (dataStart + size > tar.length) throw invalid(what, `tar entry of ${size} bytes runs past the end of the TOC member`);
    const data = tar.subarray(dataStart, dataStart + size);
    if (typeflag === 'x') {
      pax = parsePax(data);
    } else if (typeflag === 'g') {
      // global PAX records: nothing a TOC needs
    } else {
      const name = pax.path ?? tarName(header);
      if (typeflag !== '0' && typeflag !== '\0') throw invalid(what, `the TOC tar entry has type ${JSON.stringify(typeflag)}, not a regular file`);
      if (name.replace(/^(\.\/)+/, '') !== tocTarName) throw invalid(what, `the tar entry is named ${JSON.stringify(name)}, not ${tocTarName}`);
      return data;
    }
    offset = dataStart + Math.ceil(size / 512) * 512;
  }
}

/** `what` may be a Place: its text is built only here, when there is an error to report. */
function invalid(what: string | Place, why: string): LazyrootError {
  return new LazyrootError('INVALID_DATA', `${what}: ${why}`);
}

/**
 * Where in the TOC the loop is, for messages. A TOC has thousands of entries
 * and chunks: their message prefixes are built only when one fails.
 */
class Place {
  index = 0;
  file = '';
  chunk = -1;
  constructor(private readonly what: string) {}
  toString(): string {
    if (this.file !== '') return `${this.what}: ${JSON.stringify(this.file)}${this.chunk >= 0 ? `: chunk ${this.chunk}` : ''}`;
    return `${this.what}: TOC entry ${this.index}`;
  }
}

// ---- the TOC JSON → index entries and chunks

interface PendingFile {
  path: string;
  size: number;
  /** Whole-file digest (`digest`): stands in for a single chunk's missing chunkDigest. */
  fileDigest?: string;
  /** A landmark's chunks are read and checked, then dropped. */
  landmark: boolean;
  /** Its index in the entries (landmarks: where they would be). */
  entryIndex: number;
  chunks: PendingChunk[];
}

interface PendingChunk {
  fileOffset: number;
  /** 0 = up to the end of the file. */
  size: number;
  compressedStart: number;
  innerOffset: number;
  chunkDigest?: string;
  /** Index in TOC order, for messages. */
  tocIndex: number;
  /** Where the chunk's gzip member ends: settled once the whole TOC is read. */
  compressedEnd?: number;
}

const entryTypes: Record<string, IndexEntry['type'] | undefined> = {
  dir: 'dir',
  reg: 'file',
  symlink: 'symlink',
  hardlink: 'hardlink',
  char: 'char',
  block: 'block',
  fifo: 'fifo',
};

/** A parsed TOC (`stargz.index.json`) as index entries and chunk lists; `tocOffset` is where the TOC starts in the blob. */
export function indexFromToc(toc: unknown, tocOffset: number, what: string, maxRecords = defaultMaxTocRecords): Omit<EstargzIndex, 'tocDigest' | 'tocOffset' | 'footer'> {
  if (!isObject(toc)) throw invalid(what, `TOC ${tocTarName} is not a JSON object`);
  checkVersion(toc.version, what);
  if (!Array.isArray(toc.entries)) throw invalid(what, `TOC ${tocTarName} has no "entries" array`);
  checkRecordCount(toc.entries.length, maxRecords, what);
  const builder = new TocIndexBuilder(tocOffset, what);
  const records = toc.entries as unknown[];
  for (let i = 0; i < records.length; i++) builder.add(records[i], i);
  return builder.finish();
}

function checkVersion(version: unknown, what: string): void {
  if (version !== 1) throw new LazyrootError('UNSUPPORTED', `${what}: TOC version ${JSON.stringify(version)} is not supported (only 1)`);
}

function checkRecordCount(count: number, maxRecords: number, what: string): void {
  if (count > maxRecords) {
    throw new LazyrootError('RESOURCE_EXHAUSTED', `${what}: the TOC lists ${count} entries and chunks, more than the limit of ${maxRecords} (--max-toc-records)`);
  }
}

/**
 * The TOC JSON (as read, not yet decoded) mapped to index entries a batch of
 * records at a time: the whole TOC never exists as one JavaScript string nor
 * as one tree of parsed objects (together about 3× the index they become).
 * A JSON shape the splitter does not expect (a TOC whose "entries" precede its
 * "version", a repeated key, malformed JSON) goes through JSON.parse whole,
 * so errors and results are those of the plain path.
 */
export function indexFromTocJson(json: Buffer, tocOffset: number, what: string, maxRecords = defaultMaxTocRecords): Omit<EstargzIndex, 'tocDigest' | 'tocOffset' | 'footer'> {
  const shape = splitToc(json);
  if (!shape) return indexFromToc(parseTocJson(json, what), tocOffset, what, maxRecords);
  checkVersion(shape.version, what);
  checkRecordCount(shape.count, maxRecords, what);
  const builder = new TocIndexBuilder(tocOffset, what);
  let index = 0;
  for (const [start, end] of shape.batches) {
    let records: unknown[];
    try {
      records = parseBatch(json, [start, end]);
    } catch (err) {
      throw new LazyrootError('INVALID_DATA', `${what}: TOC ${tocTarName} is not valid JSON (${(err as Error).message})`, { cause: err });
    }
    for (let i = 0; i < records.length; i++) builder.add(records[i], index++);
  }
  return builder.finish();
}

/** TOC records parsed at once by indexFromTocJson. */
const recordsPerBatch = 256;

/**
 * The top level of a TOC, `{"version": 1, "entries": [record, …]}`, found
 * without decoding it: the version's value, and the byte ranges of the
 * entries array in batches of `recordsPerBatch` records (json-split.ts).
 * Undefined when the JSON has another shape, or is not JSON: the caller
 * parses it whole then.
 */
function splitToc(json: Buffer): { version: unknown; count: number; batches: Array<[number, number]> } | undefined {
  const n = json.length;
  let i = skipSpace(json, 0);
  if (json[i] !== 0x7b) return undefined; // {
  i = skipSpace(json, i + 1);
  let version: unknown;
  let sawVersion = false;
  let entries: SplitArray | undefined;
  if (json[i] === 0x7d) return undefined; // {}: let JSON.parse's path report it
  for (;;) {
    if (json[i] !== 0x22) return undefined;
    const keyEnd = skipString(json, i);
    if (keyEnd < 0) return undefined;
    const key = json.toString('utf8', i + 1, keyEnd - 1);
    if (key.includes('\\')) return undefined; // an escaped key: rare, let JSON.parse decode it
    i = skipSpace(json, keyEnd);
    if (json[i] !== 0x3a) return undefined; // :
    i = skipSpace(json, i + 1);
    if (key === 'entries') {
      if (!sawVersion || entries) return undefined;
      entries = splitJsonArray(json, i, recordsPerBatch);
      if (!entries) return undefined;
      i = entries.end;
    } else {
      const end = skipValue(json, i);
      if (end < 0) return undefined;
      if (key === 'version') {
        if (sawVersion) return undefined;
        sawVersion = true;
        try {
          version = JSON.parse(json.toString('utf8', i, end));
        } catch {
          return undefined;
        }
      }
      i = end;
    }
    i = skipSpace(json, i);
    if (json[i] === 0x2c) {
      i = skipSpace(json, i + 1);
      continue;
    }
    if (json[i] !== 0x7d) return undefined; // }
    if (skipSpace(json, i + 1) !== n || !entries) return undefined;
    return { version, count: entries.count, batches: entries.batches };
  }
}

/** Maps TOC records, in order, to index entries and chunk lists. */
class TocIndexBuilder {
  private readonly entries: IndexEntry[] = [];
  private readonly prefetch: EstargzPrefetch = { landmark: 'none', paths: [], compressedEnd: 0 };
  /** Every chunk in TOC order: their compressed ends are settled in one backward pass. */
  private readonly allChunks: PendingChunk[] = [];
  /** Regular files with data (their chunks are checked and mapped at the end) and landmarks. */
  private readonly files: PendingFile[] = [];
  private current: PendingFile | undefined;
  private readonly at: Place;

  constructor(
    private readonly tocOffset: number,
    private readonly what: string,
  ) {
    this.at = new Place(what);
  }

  add(raw: unknown, index: number): void {
    const { at, what, tocOffset } = this;
    at.index = index;
    if (!isObject(raw)) throw invalid(at, 'is not an object');
    const type = raw.type;
    if (type === 'chunk') {
      const current = this.current;
      if (!current) throw invalid(at, 'is a chunk that follows no regular file');
      if (raw.name !== undefined && raw.name !== '' && normalizeEntryPath(str(raw.name, at, 'name'), what) !== current.path) {
        throw invalid(at, `is a chunk of ${JSON.stringify(raw.name)} after the entries of ${JSON.stringify(current.path)}`);
      }
      const chunk = pendingChunk(raw, index, at, tocOffset);
      if (current.chunks.length === 0 && !current.landmark) this.files.push(current); // an empty file's chunks: finishChunks refuses them
      current.chunks.push(chunk);
      this.allChunks.push(chunk);
      return;
    }
    this.current = undefined;
    if (typeof type !== 'string' || entryTypes[type] === undefined) {
      throw new LazyrootError('UNSUPPORTED', `${at}: unknown entry type ${JSON.stringify(type)}`);
    }
    const name = str(raw.name, at, 'name');
    const path = normalizeEntryPath(name, what);
    const entryType = entryTypes[type]!;
    const isLandmark = entryType === 'file' && (path === prefetchLandmark || path === noPrefetchLandmark);
    const entry: IndexEntry = {
      path,
      type: entryType,
      mode: int(raw.mode, at, 'mode') & 0o7777,
      uid: int(raw.uid, at, 'uid'),
      gid: int(raw.gid, at, 'gid'),
      size: entryType === 'file' ? int(raw.size, at, 'size') : 0,
      mtime: mtimeOf(raw.modtime, at),
    };
    const nsec = typeof raw.modtime === 'string' ? fractionNsec(raw.modtime) : 0;
    if (nsec !== 0) entry.mtimeNsec = nsec;
    if (entryType === 'symlink') {
      entry.linkname = str(raw.linkName, at, 'linkName');
      if (entry.linkname === '') throw invalid(at, 'is a symlink with no target');
    } else if (entryType === 'hardlink') {
      const target = normalizeEntryPath(str(raw.linkName, at, 'linkName'), `${what}: hardlink ${JSON.stringify(path)}`);
      if (target === '') throw invalid(at, 'is a hardlink to the layer root');
      entry.linkname = target;
    } else if (entryType === 'char' || entryType === 'block') {
      entry.devmajor = int(raw.devMajor, at, 'devMajor');
      entry.devminor = int(raw.devMinor, at, 'devMinor');
    }
    const xattrs = xattrsOf(raw.xattrs, at);
    if (xattrs) entry.xattrs = xattrs;

    if (entryType === 'file') {
      const file: PendingFile = { path, size: entry.size, landmark: isLandmark, chunks: [], entryIndex: this.entries.length };
      if (typeof raw.digest === 'string' && raw.digest !== '') file.fileDigest = raw.digest;
      if (entry.size > 0) {
        const chunk = pendingChunk(raw, index, at, tocOffset);
        if (chunk.fileOffset !== 0) throw invalid(at, `the first chunk of ${JSON.stringify(path)} starts at file offset ${chunk.fileOffset}`);
        file.chunks.push(chunk);
        this.allChunks.push(chunk);
      }
      // Empty files (most of a big TOC, often) are kept only while chunks may follow them.
      if (file.chunks.length > 0 || isLandmark) this.files.push(file);
      this.current = file;
    }

    if (isLandmark) {
      if (path === prefetchLandmark) {
        this.prefetch.landmark = 'prefetch';
        this.prefetch.paths = this.entries.map((e) => e.path);
      } else if (this.prefetch.landmark === 'none') {
        this.prefetch.landmark = 'no-prefetch';
      }
      return;
    }
    this.entries.push(entry);
  }

  finish(): Omit<EstargzIndex, 'tocDigest' | 'tocOffset' | 'footer'> {
    const { allChunks, prefetch } = this;
    // A chunk's gzip member ends where the next member starts: the next chunk
    // offset that opens a member (innerOffset 0), else the TOC.
    let nextMember = this.tocOffset;
    for (let i = allChunks.length - 1; i >= 0; i--) {
      const chunk = allChunks[i]!;
      chunk.compressedEnd = nextMember;
      if (chunk.innerOffset === 0) nextMember = chunk.compressedStart;
    }
    allChunks.length = 0;

    // Only files with data have a chunk list: an empty file reads as no chunks.
    const chunks = new Map<string, EstargzMemberChunk[]>();
    /** Which entry each chunk list belongs to: a later entry of the same path replaces it. */
    const owner = new Map<string, number>();
    const fileAt = new Place(this.what);
    for (const file of this.files) {
      const list = finishChunks(file, fileAt);
      if (file.landmark) {
        if (file.path === prefetchLandmark && list[0]) prefetch.compressedEnd = list[0].compressedStart;
        continue;
      }
      chunks.set(file.path, list);
      owner.set(file.path, file.entryIndex);
    }
    this.files.length = 0;
    // A path listed again as an empty file after a file with data: the later, empty file's (no) chunks.
    if (owner.size > 0) {
      const { entries } = this;
      for (let i = 0; i < entries.length; i++) {
        const e = entries[i]!;
        if (e.type !== 'file') continue;
        const own = owner.get(e.path);
        if (own !== undefined && own < i) chunks.delete(e.path);
      }
    }
    return { entries: this.entries, chunks, prefetch };
  }
}

function pendingChunk(raw: Record<string, unknown>, index: number, at: Place, tocOffset: number): PendingChunk {
  const compressedStart = int(raw.offset, at, 'offset');
  if (compressedStart >= tocOffset) throw invalid(at, `its data offset ${compressedStart} is not before the TOC (${tocOffset})`);
  const chunk: PendingChunk = {
    fileOffset: int(raw.chunkOffset, at, 'chunkOffset'),
    size: int(raw.chunkSize, at, 'chunkSize'),
    compressedStart,
    innerOffset: int(raw.innerOffset, at, 'innerOffset'),
    tocIndex: index,
  };
  if (typeof raw.chunkDigest === 'string' && raw.chunkDigest !== '') chunk.chunkDigest = raw.chunkDigest;
  return chunk;
}

/** Checks that a file's chunks tile it exactly and carry digests; returns them as EstargzChunks. */
function finishChunks(file: PendingFile, at: Place): EstargzMemberChunk[] {
  at.file = file.path;
  at.chunk = -1;
  let expected = 0;
  const out: EstargzMemberChunk[] = [];
  const n = file.chunks.length;
  for (let i = 0; i < n; i++) {
    const pending = file.chunks[i]!;
    const size = pending.size === 0 && i === n - 1 ? file.size - pending.fileOffset : pending.size;
    const chunkAt = () => `chunk ${i} (TOC entry ${pending.tocIndex}, file bytes ${pending.fileOffset}+${size})`;
    if (pending.fileOffset !== expected) throw invalid(at, `${chunkAt()} does not continue the file at byte ${expected}`);
    if (size <= 0 || pending.fileOffset + size > file.size) throw invalid(at, `${chunkAt()} is empty or runs past the end of the file (${file.size} bytes)`);
    expected = pending.fileOffset + size;
    const compressedEnd = pending.compressedEnd ?? 0;
    if (compressedEnd <= pending.compressedStart) {
      throw invalid(at, `chunk ${i} has an empty or backward gzip member (blob bytes ${pending.compressedStart}–${compressedEnd})`);
    }
    let digest = pending.chunkDigest;
    if (digest === undefined && n === 1 && file.fileDigest !== undefined) digest = file.fileDigest;
    if (digest === undefined) {
      throw new LazyrootError('UNSUPPORTED', `${at}: chunk ${i} has no chunkDigest (legacy stargz?): its bytes could not be verified`);
    }
    if (!isDigest(digest)) {
      at.chunk = i;
      parseDigest(digest, `${at} digest`); // throws, naming the chunk
    }
    const chunk: EstargzMemberChunk = {
      offset: pending.fileOffset,
      size,
      compressedStart: pending.compressedStart,
      compressedEnd,
      chunkDigest: digest,
    };
    if (pending.innerOffset !== 0) chunk.innerOffset = pending.innerOffset;
    out.push(chunk);
  }
  if (expected !== file.size) throw invalid(at, `its chunks cover ${expected} of its ${file.size} bytes`);
  return out;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function str(value: unknown, at: string | Place, field: string): string {
  if (typeof value !== 'string') throw invalid(at, `"${field}" is not a string`);
  return value;
}

/** A non-negative safe integer; absent means 0 (Go's omitempty). */
function int(value: unknown, at: string | Place, field: string): number {
  if (value === undefined) return 0;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw invalid(at, `"${field}" is ${JSON.stringify(value)}, not a non-negative integer`);
  }
  return value;
}

/** The last modtime parsed: entries of one layer mostly share a few (Date.parse is the slow part). */
let lastModtime: { text: string; seconds: number } | undefined;

function mtimeOf(value: unknown, at: string | Place): number {
  if (value === undefined || value === '') return 0;
  if (lastModtime && value === lastModtime.text) return lastModtime.seconds;
  const ms = typeof value === 'string' ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(ms)) throw invalid(at, `"modtime" ${JSON.stringify(value)} is not an RFC 3339 time`);
  lastModtime = { text: value as string, seconds: Math.floor(ms / 1000) };
  return lastModtime.seconds;
}

/** Nanoseconds of an RFC 3339 time's fraction ("…:30.123456789Z"); eStargz writers put whole seconds. */
function fractionNsec(text: string): number {
  const m = /T\d\d:\d\d:\d\d\.(\d+)/.exec(text);
  return m ? Number(m[1]!.slice(0, 9).padEnd(9, '0')) : 0;
}

const base64Pattern = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** The TOC's xattrs (Go `map[string][]byte`: values are base64) as IndexEntry wants them. */
function xattrsOf(value: unknown, at: string | Place): Record<string, string> | undefined {
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

import { once } from 'node:events';
import type { Readable } from 'node:stream';
import tarStream, { type Header as TarHeader } from 'tar-stream';
import { LazyrootError } from '../errors.js';
import { classifyEntry, hostile, normalizeEntryPath } from '../oci/entry-path.js';
import { parseSparseMapPrefix, sparseFromPax, type SparseMap } from './pax-sparse.js';
import { paxXattrs } from './tar-binary-pax.js';
import { tarMtime } from './tar-entry.js';
import { installTarPatches, type PatchedHeader } from './tar-stream-patches.js';
import type { IndexEntry } from './types.js';

/**
 * tar-stream's header as it really is: `type` is null for typeflags it does
 * not know, `pax` holds the member's PAX records, and `byteOffset` (set by its
 * extractor, not declared) is where the member's data starts in the stream.
 */
type Header = Omit<TarHeader, 'type' | 'pax'> & {
  type: TarHeader['type'] | null | undefined;
  pax?: Record<string, string>;
  byteOffset?: number;
  gnuSparse?: PatchedHeader['gnuSparse'];
};
/** A member's data stream (a streamx Readable). */
type Body = {
  resume(): unknown;
  on(event: 'end', listener: () => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
};

const entryTypes: Partial<Record<string, IndexEntry['type']>> = {
  file: 'file',
  'contiguous-file': 'file',
  directory: 'dir',
  symlink: 'symlink',
  link: 'hardlink',
  'character-device': 'char',
  'block-device': 'block',
  fifo: 'fifo',
};

/**
 * Indexes an uncompressed layer tar fed to it in order: every member becomes
 * an IndexEntry (whiteouts and opaque markers as the plain entries they are),
 * with `dataOffset` the position of the member's data in the tar stream.
 * Member names are checked exactly as the unpacker checks them
 * (normalizeEntryPath; invalid whiteouts and a non-directory root refused),
 * and what it cannot read (old GNU sparse, unknown typeflags) is refused with
 * the same UNSUPPORTED error. overlayfs's own `trusted.overlay.*` xattrs are
 * dropped, as the unpacker drops them: a tar never sets them.
 */
export class TarIndexer {
  readonly entries: IndexEntry[] = [];
  private readonly extract = tarStream.extract();
  private failure: unknown;
  private readonly finished: Promise<void>;

  /**
   * `observe`, when given, sees each member's entry as it is read, in archive
   * order, before its data; for a regular file it may return a sink for the
   * file's bytes (an eStargz check compares them with the TOC's chunks).
   */
  constructor(
    private readonly what: string,
    private readonly observe?: (entry: IndexEntry) => ((data: Buffer) => void) | void,
  ) {
    installTarPatches();
    this.extract.on('entry', (header, body, next) => {
      this.member(header as Header, body as unknown as Body).then(
        () => next(),
        (err: unknown) => {
          this.failure ??= err;
          body.resume();
          next(err as Error);
        },
      );
    });
    this.finished = new Promise<void>((resolve, reject) => {
      let finished = false;
      this.extract.on('finish', () => {
        finished = true;
        resolve();
      });
      this.extract.on('error', (err: unknown) => {
        this.failure ??= err;
        reject(this.error());
      });
      this.extract.on('close', () => {
        if (finished) return;
        this.failure ??= new Error('the tar reader stopped early');
        reject(this.error());
      });
    });
    this.finished.catch(() => undefined); // reported by write() or end()
  }

  /** Feeds the next bytes of the tar; resolves when the indexer can take more. */
  async write(chunk: Buffer): Promise<void> {
    if (this.failure) throw this.error();
    // An error while waiting is kept in this.failure and reported just below.
    if (!this.extract.write(chunk)) await Promise.race([once(this.extract, 'drain'), this.finished]).catch(() => undefined);
    if (this.failure) throw this.error();
  }

  /** Ends the tar; resolves to every member's entry, in archive order. */
  async end(): Promise<IndexEntry[]> {
    if (this.failure) throw this.error();
    this.extract.end(undefined);
    await this.finished;
    if (this.failure) throw this.error();
    return this.entries;
  }

  private error(): Error {
    const err = this.failure;
    if (err instanceof LazyrootError) return err;
    return new LazyrootError('HOSTILE_ARCHIVE', `${this.what}: not a valid tar stream: ${(err as Error)?.message ?? String(err)}`, { cause: err });
  }

  private async member(header: Header, body: Body): Promise<void> {
    const { what } = this;
    if (header.type === null || header.type === undefined) {
      // As the unpacker (layer-applier.ts): tar-stream reports typeflags it does
      // not know as null (old GNU sparse 'S' is read by tar-stream-patches.ts).
      throw new LazyrootError('UNSUPPORTED', `${what}: entry ${JSON.stringify(header.name)} has a typeflag lazyroot cannot read (a vendor extension)`);
    }
    const type = entryTypes[header.type];
    const pax = header.pax;
    const sparse = type === 'file' ? (header.gnuSparse ?? sparseFromPax(pax, what)) : undefined;
    const path = normalizeEntryPath(sparse?.realName ?? header.name, what);
    if (classifyEntry(path).kind === 'invalid-whiteout') {
      throw hostile(what, header.name, 'is an invalid whiteout: of "." or "..", outside its own directory');
    }
    if (type === undefined) {
      throw new LazyrootError('UNSUPPORTED', `${what}: entry ${JSON.stringify(header.name)} has unsupported type ${String(header.type)}`);
    }
    if (path === '' && type !== 'dir') throw hostile(what, header.name, 'replaces the root with a non-directory');

    const mtime = tarMtime(header as TarHeader);
    const entry: IndexEntry = {
      path,
      type,
      mode: (header.mode ?? 0o644) & 0o7777,
      uid: paxInt(pax?.uid) ?? header.uid ?? 0,
      gid: paxInt(pax?.gid) ?? header.gid ?? 0,
      size: 0,
      mtime: mtime.sec,
    };
    if (mtime.nsec !== 0) entry.mtimeNsec = mtime.nsec;
    if (type === 'symlink') entry.linkname = header.linkname ?? '';
    if (type === 'hardlink') {
      const target = normalizeEntryPath(header.linkname ?? '', what);
      if (target === '') throw hostile(what, header.name, 'is a hardlink to the root directory');
      entry.linkname = target;
    }
    if (type === 'char' || type === 'block') {
      entry.devmajor = header.devmajor ?? 0;
      entry.devminor = header.devminor ?? 0;
    }
    const xattrs = paxXattrs(pax).filter(([name]) => !name.startsWith('trusted.overlay.'));
    if (xattrs.length > 0) entry.xattrs = Object.fromEntries(xattrs.map(([name, value]) => [name, value.toString('base64')]));

    if (type === 'file') {
      const dataStart = header.byteOffset;
      if (dataStart === undefined) throw new LazyrootError('FAILED_PRECONDITION', `${what}: tar-stream did not report the data offset of ${JSON.stringify(header.name)}`);
      const stored = header.size ?? 0;
      if (!sparse) {
        entry.size = stored;
        entry.dataOffset = dataStart;
        const sink = this.observe?.(entry);
        await consume(body, sink || undefined);
      } else {
        // 0.0 and 0.1 carry the map in PAX records; 1.0 at the start of the data.
        const { regions, mapLength } = sparse.mapBytesInData === 0 ? { regions: sparse.regions, mapLength: 0 } : await readSparsePrefix(body, what, header.name);
        if (sparse.mapBytesInData === 0) await consume(body);
        checkSparse(regions, sparse, stored - mapLength, what, header.name);
        entry.size = sparse.realSize;
        entry.dataOffset = dataStart + mapLength;
        entry.sparse = regions.filter((r) => r.size > 0).map((r) => ({ offset: r.offset, size: r.size }));
        this.observe?.(entry);
      }
    } else {
      this.observe?.(entry);
      await consume(body);
    }
    this.entries.push(entry);
  }
}

/** Indexes a whole uncompressed tar stream. */
export async function indexTar(tar: Readable, what: string): Promise<IndexEntry[]> {
  const indexer = new TarIndexer(what);
  for await (const chunk of tar) await indexer.write(chunk as Buffer);
  return indexer.end();
}

/**
 * PAX sparse 1.0: the map is decimal lines at the start of the data, padded
 * to 512 bytes. The whole body is consumed (leaving a tar-stream body early
 * destroys the extractor).
 */
async function readSparsePrefix(body: Body, what: string, name: string): Promise<{ regions: SparseMap['regions']; mapLength: number }> {
  let pending: Buffer = Buffer.alloc(0);
  let found: { regions: SparseMap['regions']; mapLength: number } | undefined;
  await consume(body, (chunk) => {
    if (found) return;
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    const parsed = parseSparseMapPrefix(pending, what);
    if (parsed && pending.length >= parsed.length) {
      found = { regions: parsed.regions, mapLength: parsed.length };
      pending = Buffer.alloc(0);
    }
  });
  if (!found) throw new LazyrootError('HOSTILE_ARCHIVE', `${what}: entry ${JSON.stringify(name)}: the sparse map at the start of its data is incomplete`);
  return found;
}

/** The data regions must lie in order inside the file and add up to the bytes stored. */
export function checkSparse(regions: SparseMap['regions'], sparse: SparseMap, stored: number, what: string, name: string): void {
  let end = 0;
  let total = 0;
  if (!Number.isSafeInteger(sparse.realSize) || sparse.realSize < 0) {
    throw new LazyrootError('HOSTILE_ARCHIVE', `${what}: entry ${JSON.stringify(name)}: the sparse file's real size is not a valid number`);
  }
  for (const r of regions) {
    if (!Number.isSafeInteger(r.offset) || !Number.isSafeInteger(r.size) || r.offset < 0 || r.size < 0) {
      throw new LazyrootError('HOSTILE_ARCHIVE', `${what}: entry ${JSON.stringify(name)}: a sparse region has an invalid offset or size`);
    }
    if (r.offset < end || r.offset + r.size > sparse.realSize) {
      throw new LazyrootError('HOSTILE_ARCHIVE', `${what}: entry ${JSON.stringify(name)}: sparse region ${r.offset}+${r.size} overlaps another or lies outside the file's ${sparse.realSize} bytes`);
    }
    end = r.offset + r.size;
    total += r.size;
  }
  if (total !== stored) {
    throw new LazyrootError('HOSTILE_ARCHIVE', `${what}: entry ${JSON.stringify(name)}: sparse map describes ${total} bytes of data but the member stores ${stored}`);
  }
}

function paxInt(value: string | undefined): number | undefined {
  return value !== undefined && /^\d+$/.test(value) ? Number(value) : undefined;
}


/** Reads a member's body to its end, handing each chunk to `onChunk`. */
function consume(body: Body, onChunk?: (chunk: Buffer) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    body.on('end', resolve);
    body.on('error', reject);
    if (onChunk) body.on('data', onChunk);
    else body.resume();
  });
}

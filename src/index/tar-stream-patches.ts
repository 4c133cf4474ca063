import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import tarStream from 'tar-stream';
import { installBinaryPaxDecoder } from './tar-binary-pax.js';
import type { SparseMap } from './pax-sparse.js';
import { isOldStyleDir } from './tar-entry.js';

/**
 * Where tar-stream 3 reads a tar differently from GNU tar and Go's
 * archive/tar (umoci, containerd, Docker), fixed by patching its internals
 * (loaded by path, as tar-binary-pax.ts does; the version is locked):
 *
 * - Old GNU sparse members (typeflag 'S', `tar --format=gnu --sparse`):
 *   tar-stream reports type null and reads the sparse extension blocks
 *   that follow a header with more than 4 data runs as file data, losing
 *   its place. Here the header's map and the extension blocks are read as GNU
 *   tar and Go read them; the member comes out as a 'file' whose
 *   `gnuSparse` holds the map (data regions stored back to back, as PAX 0.x).
 * - Header-only types (hardlink, symlink, devices, fifo, directory) carry no
 *   data, whatever their size field or a PAX `size` record says (POSIX
 *   ustar; Go's `isHeaderOnlyType`). tar-stream skipped `size` bytes after
 *   all but directories, so a hostile tar could hide members from it that Go
 *   unpacks, or the reverse.
 * - Typeflag NUL on a name ending in `/` (after PAX and GNU long names) is a
 *   directory (tar-entry.ts isOldStyleDir); tar-stream meant to, but decided
 *   the type before it looked. Like every directory it has no data: Go and
 *   GNU tar both read what follows as the next header.
 * - base-256 numbers (GNU) for negative mtimes: tar-stream takes the one's
 *   complement (off by one second); two's complement as GNU tar and Go.
 * - PAX global headers ('g') are ignored, as containerd and Docker ignore
 *   them (Go's reader hands them over as entries; umoci refuses them).
 *   tar-stream applied their records only to members that had a PAX header
 *   of their own.
 *
 * `installTarPatches()` is idempotent and also installs the PAX decoder of
 * tar-binary-pax.ts.
 */
export type PatchedHeader = tarStream.Header & {
  gnuSparse?: SparseMap;
  /** The typeflag byte was NUL (tar-stream reports it as 'file', like '0'). */
  typeflagNul?: boolean;
};

interface Decoded extends Record<string, unknown> {
  type: string | null;
  size: number;
  mtime: Date;
  gnuSparse?: SparseMap;
  typeflagNul?: boolean;
}

/** An extractor reading the extension blocks of an old GNU sparse header. */
interface SparseState {
  header: Decoded;
  regions: SparseMap['regions'];
}

type ExtractInternals = {
  _consumeHeader(): boolean;
  _applyLongHeaders(): void;
  _decodeLongHeader(buf: Buffer): void;
  _paxGlobal: Record<string, string> | null;
  _header: Decoded | null;
  __lazyrootSparse?: SparseState;
};

const headerOnly = new Set(['link', 'symlink', 'character-device', 'block-device', 'fifo', 'directory']);
let installed = false;
/** The extractor whose header is being decoded (decode is a plain function; extractors call it synchronously). */
let decoding: ExtractInternals | undefined;

export function installTarPatches(): void {
  installBinaryPaxDecoder();
  if (installed) return;
  const require = createRequire(import.meta.url);
  const headers = require(join(dirname(require.resolve('tar-stream')), 'headers.js')) as {
    decode: (buf: Buffer, filenameEncoding: string, allowUnknownFormat: boolean) => Decoded | null;
  };
  const originalDecode = headers.decode;
  headers.decode = function decode(buf: Buffer, filenameEncoding: string, allowUnknownFormat: boolean): Decoded | null {
    const state = decoding?.__lazyrootSparse;
    if (state && decoding) {
      // An extension block: 21 more (offset, numbytes) pairs, then the "another follows" flag.
      readSparseEntries(buf, 0, 21, state.regions);
      if (buf[504]) return null; // skipped; the next block extends the map too
      decoding.__lazyrootSparse = undefined;
      state.header.gnuSparse = { realSize: state.header.gnuSparse!.realSize, regions: state.regions, mapBytesInData: 0 };
      return state.header; // tar-stream takes the data to start here, after the extensions
    }
    const header = originalDecode(buf, filenameEncoding, allowUnknownFormat);
    if (!header) return header;
    if (buf[156] === 0) header.typeflagNul = true;
    if (buf[136]! & 0x80) header.mtime = new Date(base256(buf.subarray(136, 148)) * 1000);
    if (buf[156] === 0x53 /* 'S' */) {
      const regions: SparseMap['regions'] = [];
      readSparseEntries(buf, 386, 4, regions);
      header.type = 'file';
      header.gnuSparse = { realSize: numeric(buf.subarray(483, 495)), regions, mapBytesInData: 0 };
      if (buf[482] && decoding) {
        decoding.__lazyrootSparse = { header, regions };
        return null;
      }
    }
    return header;
  };

  const proto = Object.getPrototypeOf(tarStream.extract()) as ExtractInternals;
  const consumeHeader = proto._consumeHeader;
  proto._consumeHeader = function (this: ExtractInternals): boolean {
    const outer = decoding;
    decoding = this;
    try {
      return consumeHeader.call(this);
    } finally {
      decoding = outer;
    }
  };
  const applyLongHeaders = proto._applyLongHeaders;
  proto._applyLongHeaders = function (this: ExtractInternals): void {
    applyLongHeaders.call(this);
    const header = this._header;
    if (!header) return;
    // The name is final now (PAX path, GNU long name): the old directory convention can be applied.
    if (isOldStyleDir(header as unknown as PatchedHeader)) header.type = 'directory';
    if (header.type !== null && headerOnly.has(header.type)) header.size = 0;
  };
  const decodeLongHeader = proto._decodeLongHeader;
  proto._decodeLongHeader = function (this: ExtractInternals, buf: Buffer): void {
    decodeLongHeader.call(this, buf);
    if (this._header?.type === 'pax-global-header') this._paxGlobal = null;
  };
  installed = true;
}

/** Old GNU sparse (offset, numbytes) pairs of 12-byte numbers; a pair whose offset starts with NUL ends the list (as GNU tar and Go). */
function readSparseEntries(buf: Buffer, at: number, count: number, out: SparseMap['regions']): void {
  for (let i = 0; i < count; i++) {
    const offset = buf.subarray(at + i * 24, at + i * 24 + 12);
    if (offset[0] === 0) break;
    out.push({ offset: numeric(offset), size: numeric(buf.subarray(at + i * 24 + 12, at + i * 24 + 24)) });
  }
}

/** A tar number field: octal text, or GNU base-256 (top bit of the first byte set). NaN when it is neither. */
function numeric(field: Buffer): number {
  if (field[0]! & 0x80) return base256(field);
  const text = field.toString('latin1').replace(/\0.*$/s, '').trim();
  return text === '' ? 0 : /^[0-7]+$/.test(text) ? Number.parseInt(text, 8) : Number.NaN;
}

/** GNU base-256: big-endian two's complement, the first byte's top bit only flags the encoding (0x80 positive, 0xff negative). */
function base256(field: Buffer): number {
  const negative = (field[0]! & 0x40) !== 0;
  let value = negative ? BigInt(field[0]! | ~0x7f) : BigInt(field[0]! & 0x7f);
  for (let i = 1; i < field.length; i++) value = (value << 8n) | BigInt(field[i]!);
  return Number(value);
}

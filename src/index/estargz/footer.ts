import { gunzipSync } from 'node:zlib';
import { LazyrootError } from '../../errors.js';

/**
 * The footer at the very end of an eStargz blob: an empty gzip member whose
 * Extra field says where the TOC's gzip member starts (containerd/stargz-snapshotter
 * `estargz/types.go` FooterSize, `estargz/gzip.go` gzipFooterBytes). Two forms exist.
 *
 * eStargz, 51 bytes (RFC 1952 compliant Extra subfield):
 *
 *   off  len  field
 *     0    2  ID1 ID2 = 1f 8b
 *     2    1  CM = 8 (deflate)
 *     3    1  FLG = 0x04 (FEXTRA only)
 *     4    4  MTIME (0)
 *     8    1  XFL
 *     9    1  OS
 *    10    2  XLEN = 26 (LE)
 *    12    2  SI1 SI2 = 'S' 'G'
 *    14    2  LEN = 22 (LE)
 *    16   22  "%016xSTARGZ": the TOC offset as 16 lowercase hex digits, then the magic
 *    38    5  deflate: one final stored block of length 0 (01 00 00 ff ff)
 *    43    8  CRC32 = 0, ISIZE = 0
 *    51       end of blob
 *
 * Legacy stargz (google/crfs), 47 bytes: the same, except that the Extra field
 * is the bare 22 bytes (XLEN = 22 at offset 10, "%016xSTARGZ" at offset 12),
 * with no subfield ID or length.
 */
export const estargzFooterSize = 51;
export const legacyStargzFooterSize = 47;
/** How many bytes from the end of a blob `parseEstargzFooter` wants to see. */
export const maxFooterSize = estargzFooterSize;

const magic = 'STARGZ';
const gzipHeaderSize = 10;
const flagExtra = 0x04;
const flagsOtherThanExtra = 0xff & ~flagExtra;
/** Bytes of a gzip member after its Extra field: a 5-byte empty stored block and the 8-byte trailer. */
const emptyMemberTail = 5 + 8;

export interface EstargzFooter {
  /** Offset in the blob of the TOC's gzip member. */
  tocOffset: number;
  /** Size of the footer that was found: 51 (eStargz) or 47 (legacy stargz). */
  footerSize: number;
  format: 'estargz' | 'stargz';
}

/**
 * Parses the footer from the last bytes of a blob (`tail` ends where the blob
 * ends; 51 bytes or more are best, 47 suffice for a legacy blob).
 * `blobSize` bounds the TOC offset. Throws INVALID_DATA, naming `what`,
 * when neither footer form is there: the blob is not eStargz.
 */
export function parseEstargzFooter(tail: Buffer, blobSize: number, what = 'blob'): EstargzFooter {
  const reasons: string[] = [];
  for (const form of ['estargz', 'stargz'] as const) {
    const size = form === 'estargz' ? estargzFooterSize : legacyStargzFooterSize;
    if (tail.length < size || blobSize < size) {
      reasons.push(`${form}: the blob is smaller than the ${size}-byte footer`);
      continue;
    }
    const footer = tail.subarray(tail.length - size);
    const result = form === 'estargz' ? extraOfEstargz(footer) : extraOfLegacy(footer);
    if (typeof result === 'string') {
      reasons.push(`${form}: ${result}`);
      continue;
    }
    const tocOffset = parseOffset(result);
    if (typeof tocOffset === 'string') {
      reasons.push(`${form}: ${tocOffset}`);
      continue;
    }
    if (tocOffset >= blobSize - size) {
      reasons.push(`${form}: the TOC offset ${tocOffset} is not before the footer (blob size ${blobSize})`);
      continue;
    }
    return { tocOffset, footerSize: size, format: form };
  }
  throw new LazyrootError('INVALID_DATA', `${what}: not an eStargz blob: no eStargz or stargz footer (${reasons.join('; ')})`);
}

/** The 22-byte "%016xSTARGZ" subfield of a 51-byte footer, or why there is none. */
function extraOfEstargz(footer: Buffer): Buffer | string {
  const header = checkGzipHeader(footer, 26);
  if (header) return header;
  if (footer[12] !== 0x53 || footer[13] !== 0x47) return 'the Extra subfield ID is not "SG"';
  if (footer.readUInt16LE(14) !== 22) return `the Extra subfield length is ${footer.readUInt16LE(14)}, not 22`;
  return checkTail(footer, footer.subarray(16, 38));
}

/** The 22-byte "%016xSTARGZ" Extra field of a 47-byte legacy footer, or why there is none. */
function extraOfLegacy(footer: Buffer): Buffer | string {
  const header = checkGzipHeader(footer, 22);
  if (header) return header;
  return checkTail(footer, footer.subarray(12, 34));
}

function checkGzipHeader(footer: Buffer, xlen: number): string | undefined {
  if (footer[0] !== 0x1f || footer[1] !== 0x8b) return 'no gzip magic';
  if (footer[2] !== 8) return `gzip compression method ${footer[2]} is not deflate`;
  const flags = footer[3]!;
  if (!(flags & flagExtra)) return 'the gzip member has no Extra field';
  if (flags & flagsOtherThanExtra) return `unexpected gzip flags 0x${flags.toString(16)}`;
  const actual = footer.readUInt16LE(gzipHeaderSize);
  if (actual !== xlen) return `the gzip Extra field is ${actual} bytes, not ${xlen}`;
  return undefined;
}

/** The magic must follow the hex offset, and the member must be a valid empty gzip member. */
function checkTail(footer: Buffer, subfield: Buffer): Buffer | string {
  if (subfield.subarray(16).toString('latin1') !== magic) return 'no "STARGZ" magic in the Extra field';
  if (footer.length - (gzipHeaderSize + 2 + footer.readUInt16LE(gzipHeaderSize)) !== emptyMemberTail) {
    return 'the footer is not one empty gzip member';
  }
  try {
    if (gunzipSync(footer).length !== 0) return 'the footer gzip member is not empty';
  } catch (err) {
    return `the footer is not a valid gzip member (${(err as Error).message})`;
  }
  return subfield.subarray(0, 16);
}

function parseOffset(hex: Buffer): number | string {
  const text = hex.toString('latin1');
  if (!/^[0-9a-fA-F]{16}$/.test(text)) return `the TOC offset ${JSON.stringify(text)} is not 16 hex digits`;
  const value = BigInt(`0x${text}`);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) return `the TOC offset 0x${text} is too large`;
  return Number(value);
}

/** The 51-byte eStargz footer pointing at `tocOffset` (for building test blobs). */
export function estargzFooter(tocOffset: number): Buffer {
  const footer = Buffer.alloc(estargzFooterSize);
  footer.set([0x1f, 0x8b, 8, flagExtra], 0);
  footer[9] = 255; // OS: unknown
  footer.writeUInt16LE(26, 10);
  footer.write('SG', 12, 'latin1');
  footer.writeUInt16LE(22, 14);
  footer.write(`${tocOffset.toString(16).padStart(16, '0')}${magic}`, 16, 'latin1');
  footer.set([1, 0, 0, 0xff, 0xff], 38);
  return footer;
}

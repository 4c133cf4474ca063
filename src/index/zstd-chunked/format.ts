import { LazyrootError } from '../../errors.js';

/**
 * The zstd:chunked layer format of containers/storage (`pkg/chunked/compressor`,
 * `pkg/chunked/internal`, as of v1.43, which Debian's podman 4.3 uses). The
 * blob is a plain zstd stream that any decoder turns into the layer's tar, cut
 * into frames so that each file's bytes can be fetched alone:
 *
 *   [frame: tar headers …][frame: chunk 0 of file A][frame: chunk 1 of A]
 *   [frame: tar headers …][frame: file B] … [frame: tar end-of-archive]
 *   [skippable frame: the TOC, zstd-compressed JSON]
 *   [skippable frame: the footer, 40 bytes]
 *
 * A skippable frame is 4 bytes of magic 0x184D2A50 (LE: 50 2a 4d 18), a
 * 4-byte LE length, then that many bytes decoders ignore. The footer's
 * 40-byte payload, all u64 little-endian but the magic:
 *
 *   off  len  field
 *     0    8  offset of the compressed TOC in the blob (past its frame header)
 *     8    8  compressed TOC length
 *    16    8  uncompressed TOC length
 *    24    8  manifest type: 1 (CRFS-like JSON)
 *    32    8  magic "GnUlInUx" (47 6e 55 6c 49 6e 55 78)
 *
 * The same numbers are in the layer annotation `…manifest-position` as
 * "offset:length:uncompressedLength:type", and the sha256 of the compressed
 * TOC bytes in `…manifest-checksum`.
 */

/** Annotations as containers/storage 1.43 writes them (podman 4.3). */
export const manifestChecksumAnnotation = 'io.containers.zstd-chunked.manifest-checksum';
export const manifestPositionAnnotation = 'io.containers.zstd-chunked.manifest-position';
/** The same annotations as later containers/storage versions name them. */
export const manifestChecksumAnnotationV2 = 'io.github.containers.zstd-chunked.manifest-checksum';
export const manifestPositionAnnotationV2 = 'io.github.containers.zstd-chunked.manifest-position';

export const skippableFrameMagic = 0x184d2a50;
export const skippableHeaderSize = 8;
export const footerPayloadSize = 40;
/** Header and payload of the footer's skippable frame: the last 48 bytes of the blob. */
export const footerSize = skippableHeaderSize + footerPayloadSize;
export const footerMagic = Buffer.from('GnUlInUx', 'latin1');
export const manifestTypeCrfs = 1;

/** Where the compressed TOC lies, from the annotation or the footer. */
export interface TocPosition {
  offset: number;
  length: number;
  uncompressedLength: number;
}

/** The checksum and position annotations of a zstd:chunked layer, whichever naming it uses; undefined for other layers. */
export function zstdChunkedAnnotations(annotations: Record<string, string> | undefined): { checksum: string; position?: string } | undefined {
  if (!annotations) return undefined;
  const checksum = annotations[manifestChecksumAnnotation] ?? annotations[manifestChecksumAnnotationV2];
  if (!checksum) return undefined;
  const position = annotations[manifestPositionAnnotation] ?? annotations[manifestPositionAnnotationV2];
  return position ? { checksum, position } : { checksum };
}

/** "offset:length:uncompressedLength:type" → the TOC's position, checked against the blob's size. */
export function parsePositionAnnotation(text: string, blobSize: number, what: string): TocPosition {
  const m = /^(\d{1,16}):(\d{1,16}):(\d{1,16}):(\d{1,16})$/.exec(text);
  if (!m) throw new LazyrootError('INVALID_DATA', `${what}: zstd:chunked manifest position ${JSON.stringify(text)} is not "offset:length:uncompressedLength:type"`);
  const [offset, length, uncompressedLength, type] = m.slice(1).map(Number) as [number, number, number, number];
  if (type !== manifestTypeCrfs) throw new LazyrootError('UNSUPPORTED', `${what}: zstd:chunked manifest type ${type} is not supported (only ${manifestTypeCrfs})`);
  return checkedPosition({ offset, length, uncompressedLength }, blobSize, what);
}

/** The footer's skippable frame (the blob's last `footerSize` bytes, `tail`) → the TOC's position. */
export function parseFooter(tail: Buffer, blobSize: number, what: string): TocPosition {
  const bad = (why: string) => new LazyrootError('INVALID_DATA', `${what}: not a zstd:chunked blob: ${why}`);
  if (tail.length !== footerSize || blobSize < footerSize) throw bad(`${blobSize} bytes is smaller than the ${footerSize}-byte footer`);
  if (tail.readUInt32LE(0) !== skippableFrameMagic) throw bad('the footer is not a zstd skippable frame');
  if (tail.readUInt32LE(4) !== footerPayloadSize) throw bad(`the footer frame holds ${tail.readUInt32LE(4)} bytes, not ${footerPayloadSize}`);
  if (!tail.subarray(40, 48).equals(footerMagic)) throw bad('no "GnUlInUx" magic in the footer');
  const u64 = (at: number) => {
    const v = tail.readBigUInt64LE(at);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`footer field at ${at} is too large`);
    return Number(v);
  };
  const type = u64(32);
  if (type !== manifestTypeCrfs) throw new LazyrootError('UNSUPPORTED', `${what}: zstd:chunked manifest type ${type} is not supported (only ${manifestTypeCrfs})`);
  return checkedPosition({ offset: u64(8), length: u64(16), uncompressedLength: u64(24) }, blobSize, what);
}

/** The TOC must lie inside the blob, after its own frame header and before the footer. */
function checkedPosition(p: TocPosition, blobSize: number, what: string): TocPosition {
  if (p.offset < skippableHeaderSize || p.length === 0 || p.offset + p.length > blobSize - footerSize) {
    throw new LazyrootError('INVALID_DATA', `${what}: zstd:chunked TOC at ${p.offset}+${p.length} does not lie inside the blob (${blobSize} bytes) before its footer`);
  }
  return p;
}

/** The footer frame pointing at `p` (for building test blobs). */
export function zstdChunkedFooter(p: TocPosition): Buffer {
  const out = Buffer.alloc(footerSize);
  out.writeUInt32LE(skippableFrameMagic, 0);
  out.writeUInt32LE(footerPayloadSize, 4);
  out.writeBigUInt64LE(BigInt(p.offset), 8);
  out.writeBigUInt64LE(BigInt(p.length), 16);
  out.writeBigUInt64LE(BigInt(p.uncompressedLength), 24);
  out.writeBigUInt64LE(BigInt(manifestTypeCrfs), 32);
  footerMagic.copy(out, 40);
  return out;
}

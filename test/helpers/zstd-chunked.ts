/**
 * A zstd:chunked writer for unit tests, following containers/storage 1.43's
 * layout (src/index/zstd-chunked/format.ts): tar headers (with the previous
 * file's padding) in one frame, each chunk of a file's bytes in its own frame,
 * the end of the archive in a last frame, then the zstd-compressed TOC in a
 * skippable frame and the 40-byte footer in another. The mount tests use
 * blobs written by podman itself; this one exists to make hostile variants
 * (`editToc` runs before the checksum is taken) and to split files into
 * chunks of a chosen size. Frames are compressed by the `zstd` CLI.
 *
 *   const layer = zstdChunked(await buildTar([...]), { chunkSize: 4096 });
 *   layer.blob, layer.annotations, layer.toc
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { manifestChecksumAnnotation, manifestPositionAnnotation, skippableFrameMagic, zstdChunkedFooter } from '../../src/index/zstd-chunked/format.js';

export interface TocEntry {
  type: string;
  name: string;
  linkName?: string;
  mode?: number;
  size?: number;
  uid?: number;
  gid?: number;
  modtime?: string;
  digest?: string;
  offset?: number;
  endOffset?: number;
  chunkSize?: number;
  chunkOffset?: number;
  chunkDigest?: string;
  [key: string]: unknown;
}

export interface ZstdChunkedLayer {
  blob: Buffer;
  annotations: Record<string, string>;
  toc: { version: number; entries: TocEntry[] | null };
  /** Where the compressed TOC starts (past its skippable frame header). */
  tocOffset: number;
}

export interface ZstdChunkedOptions {
  /** Files are cut into chunks of this many bytes (default: one chunk per file). */
  chunkSize?: number;
  /** Changes the TOC before it is compressed and its checksum taken. */
  editToc?: (toc: { version: number; entries: TocEntry[] | null }) => void;
}

export function zstdFrame(data: Buffer): Buffer {
  const r = spawnSync('zstd', ['-q', '-c', '-3', '--no-check'], { input: data, maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`zstd exited ${r.status}: ${r.stderr?.toString()}`);
  return r.stdout;
}

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const types: Record<string, string> = { '0': 'reg', '\0': 'reg', '1': 'hardlink', '2': 'symlink', '3': 'char', '4': 'block', '5': 'dir', '6': 'fifo' };

function field(h: Buffer, at: number, len: number): string {
  const s = h.subarray(at, at + len);
  const nul = s.indexOf(0);
  return s.subarray(0, nul < 0 ? len : nul).toString('utf8');
}

const octal = (h: Buffer, at: number, len: number) => parseInt(field(h, at, len).trim() || '0', 8);

/** Writes `tar` (ustar headers only: no PAX or GNU records) as a zstd:chunked blob. */
export function zstdChunked(tar: Buffer, options: ZstdChunkedOptions = {}): ZstdChunkedLayer {
  const parts: Buffer[] = [];
  let written = 0;
  const emit = (b: Buffer) => {
    parts.push(b);
    written += b.length;
  };
  let pending: Buffer[] = [];
  const flush = () => {
    if (pending.length) emit(zstdFrame(Buffer.concat(pending)));
    pending = [];
  };
  const entries: TocEntry[] = [];
  let at = 0;
  for (;;) {
    const h = tar.subarray(at, at + 512);
    if (h.length < 512 || h.every((b) => b === 0)) break;
    const typeflag = String.fromCharCode(h[156]!);
    const type = types[typeflag];
    if (!type) throw new Error(`zstd-chunked writer: typeflag ${JSON.stringify(typeflag)} not supported`);
    const prefix = field(h, 345, 155);
    const name = prefix ? `${prefix}/${field(h, 0, 100)}` : field(h, 0, 100);
    const size = type === 'reg' ? octal(h, 124, 12) : 0;
    pending.push(h);
    at += 512;
    const entry: TocEntry = { type, name, mode: octal(h, 100, 8), uid: octal(h, 108, 8), gid: octal(h, 116, 8), modtime: new Date(octal(h, 136, 12) * 1000).toISOString().replace('.000Z', 'Z') };
    if (type === 'symlink' || type === 'hardlink') entry.linkName = field(h, 157, 100);
    if (type === 'char' || type === 'block') Object.assign(entry, { devMajor: octal(h, 329, 8), devMinor: octal(h, 337, 8) });
    if (size > 0) {
      entry.size = size;
      const data = tar.subarray(at, at + size);
      flush();
      const step = options.chunkSize ?? size;
      const chunks: TocEntry[] = [];
      for (let off = 0; off < size; off += step) {
        const piece = data.subarray(off, Math.min(size, off + step));
        chunks.push({ type: 'chunk', name, offset: written, chunkOffset: off, chunkSize: piece.length, chunkDigest: sha256(piece) });
        emit(zstdFrame(piece));
      }
      Object.assign(entry, { digest: sha256(data), offset: chunks[0]!.offset, endOffset: written });
      if (chunks.length > 1) Object.assign(entry, { chunkSize: chunks[0]!.chunkSize, chunkDigest: chunks[0]!.chunkDigest });
      entries.push(entry, ...chunks.slice(1));
      at += size;
      const padded = Math.ceil(size / 512) * 512 - size;
      pending.push(tar.subarray(at, at + padded));
      at += padded;
    } else entries.push(entry);
  }
  pending.push(tar.subarray(at));
  flush();
  const toc = { version: 1, entries: entries.length ? entries : null };
  options.editToc?.(toc);
  const json = Buffer.from(JSON.stringify(toc));
  const compressed = zstdFrame(json);
  const frameHeader = Buffer.alloc(8);
  frameHeader.writeUInt32LE(skippableFrameMagic, 0);
  frameHeader.writeUInt32LE(compressed.length, 4);
  const tocOffset = written + 8;
  emit(frameHeader);
  emit(compressed);
  const position = { offset: tocOffset, length: compressed.length, uncompressedLength: json.length };
  emit(zstdChunkedFooter(position));
  return {
    blob: Buffer.concat(parts),
    annotations: { [manifestChecksumAnnotation]: sha256(compressed), [manifestPositionAnnotation]: `${tocOffset}:${compressed.length}:${json.length}:1` },
    toc,
    tocOffset,
  };
}

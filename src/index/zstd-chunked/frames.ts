import { Decompress } from 'fzstd';

/**
 * Decoding the zstd frames of one zstd:chunked chunk, with bounds a hostile
 * blob cannot lift. fzstd allocates a frame's window as its header declares
 * (up to 2 GiB) and emits whatever the blocks expand to (an RLE block turns 4
 * bytes into 128 KiB), so the frame headers are read here first (RFC 8878
 * §3.1.1) and the output is counted as it comes:
 *
 *   frame:  magic 28 b5 2f fd | descriptor (1) | window (0–1) | dict id (0–4)
 *           | content size (0–8) | blocks … | checksum (0 or 4)
 *   block:  3-byte LE header: bit 0 last, bits 1–2 type (raw, RLE,
 *           compressed, reserved), bits 3–23 size; then `size` bytes
 *           (1 byte for RLE, whose size is what it regenerates)
 *   skippable frame: 4-byte magic 0x184D2A5?, 4-byte LE length, data
 */

const zstdMagic = 0xfd2fb528;
/** A window larger than this is refused unless the content is that large (klauspost's encoder uses 8 MiB at most by default). */
const maxWindowBytes = 32 * 1024 * 1024;

/**
 * The bytes `frames` (one or more whole zstd frames, skippable ones allowed)
 * decode to, which must be exactly `expected` bytes. Throws (a plain Error
 * saying why) on anything else: a truncated or trailing frame, a dictionary,
 * a window or declared size out of bounds, more or fewer bytes than expected.
 */
export function decodeFrames(frames: Uint8Array, expected: number): Buffer {
  checkFrames(frames, expected);
  const out = Buffer.allocUnsafe(expected);
  let written = 0;
  const decoder = new Decompress((data) => {
    if (written + data.length > expected) throw new Error(`the frames decode to more than the ${expected} bytes expected`);
    out.set(data, written);
    written += data.length;
  });
  decoder.push(frames, true);
  if (written !== expected) throw new Error(`the frames decode to ${written} bytes, ${expected} expected`);
  return out;
}

/** The bytes `frames` decode to, at most `max` of them (more is an error): for frames whose size the TOC does not give (tar headers). */
export function decodeFramesUpTo(frames: Uint8Array, max: number): Buffer {
  checkFrames(frames, max);
  const parts: Uint8Array[] = [];
  let written = 0;
  const decoder = new Decompress((data) => {
    if (written + data.length > max) throw new Error(`the frames decode to more than the ${max} bytes expected`);
    parts.push(data.length > 0 ? Buffer.from(data) : data);
    written += data.length;
  });
  decoder.push(frames, true);
  return Buffer.concat(parts, written);
}

/** Walks the frames' headers and blocks: they must tile `frames` exactly, with sane windows and declared sizes (at most `expected` in all). */
export function checkFrames(frames: Uint8Array, expected: number): void {
  const view = new DataView(frames.buffer, frames.byteOffset, frames.byteLength);
  const n = frames.length;
  let at = 0;
  let declared = 0;
  let dataFrames = 0;
  const need = (k: number, what: string) => {
    if (at + k > n) throw new Error(`truncated zstd data: ${what} at byte ${at} runs past the end (${n} bytes)`);
  };
  while (at < n) {
    need(4, 'frame magic');
    const magic = view.getUint32(at, true);
    if ((magic & 0xfffffff0) === 0x184d2a50) {
      need(8, 'skippable frame header');
      const length = view.getUint32(at + 4, true);
      at += 8;
      need(length, 'skippable frame');
      at += length;
      continue;
    }
    if (magic !== zstdMagic) throw new Error(`no zstd frame at byte ${at} (magic 0x${magic.toString(16)})`);
    at += 4;
    need(1, 'frame header');
    const descriptor = frames[at++]!;
    const fcsFlag = descriptor >> 6;
    const singleSegment = (descriptor >> 5) & 1;
    if (descriptor & 0x08) throw new Error('reserved bit set in a zstd frame header');
    const checksum = (descriptor >> 2) & 1;
    const dictBytes = [0, 1, 2, 4][descriptor & 3]!;
    let window = 0;
    if (!singleSegment) {
      need(1, 'window descriptor');
      const w = frames[at++]!;
      const base = 2 ** (10 + (w >> 3));
      window = base + (base / 8) * (w & 7);
    }
    need(dictBytes, 'dictionary id');
    let dict = 0;
    for (let i = 0; i < dictBytes; i++) dict += frames[at + i]! * 2 ** (8 * i);
    at += dictBytes;
    if (dict !== 0) throw new Error(`the zstd frame needs dictionary ${dict}`);
    const fcsBytes = fcsFlag === 0 ? singleSegment : 1 << fcsFlag;
    need(fcsBytes, 'content size');
    let size: number | undefined;
    if (fcsBytes > 0) {
      size = 0;
      for (let i = 0; i < fcsBytes; i++) size += frames[at + i]! * 2 ** (8 * i);
      if (fcsBytes === 2) size += 256;
      at += fcsBytes;
      declared += size;
      if (declared > expected) throw new Error(`the frames declare ${declared} bytes, more than the ${expected} expected`);
    }
    if (singleSegment) window = size ?? 0;
    if (window > Math.max(maxWindowBytes, expected)) throw new Error(`the zstd frame asks for a ${window}-byte window`);
    for (;;) {
      need(3, 'block header');
      const header = frames[at]! | (frames[at + 1]! << 8) | (frames[at + 2]! << 16);
      at += 3;
      const type = (header >> 1) & 3;
      const blockSize = header >>> 3;
      if (type === 3) throw new Error(`reserved zstd block type at byte ${at - 3}`);
      const stored = type === 1 ? 1 : blockSize;
      need(stored, 'block');
      at += stored;
      if (header & 1) break;
    }
    if (checksum) {
      need(4, 'content checksum');
      at += 4;
    }
    dataFrames++;
  }
  if (dataFrames === 0 && expected > 0) throw new Error('no zstd frame');
}

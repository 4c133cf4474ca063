import { damagedBytes, isLazyrootError, LazyrootError } from '../../errors.js';
import { normalizeEntryPath } from '../../oci/entry-path.js';
import { checksumOk, octal, parsePax, tarName } from '../estargz/tar-header.js';
import type { EstargzChunk, IndexEntry } from '../types.js';
import { decodeFramesUpTo } from './frames.js';

/**
 * Checks, before a file's bytes are served, that the tar headers the layer's
 * tar stream has for it say what the TOC says. The TOC is trusted by its
 * checksum annotation, but `create` unpacks the tar stream, and one image
 * must never show two contents. In a zstd:chunked blob the headers between
 * two files with data lie in one frame of their own (containers/storage
 * writes each member's raw tar bytes, then restarts the frame where a payload
 * starts):
 *
 *   …[chunk frames of file A][frame: A's padding, headers of the entries
 *   after A, … the header of B][chunk frames of B]…
 *
 * so the frame before a file's first chunk, from the end of the previous
 * file's frames (or the blob's start), holds the previous file's padding and
 * the headers of every entry up to this file, in TOC order. That frame is
 * fetched (a small range next to the file's own), decoded and compared entry
 * by entry: path, type, size, mode, owner, link target. A disagreement
 * refuses the file (INVALID_DATA, logged once), never its bytes.
 */
export class ZstdChunkedHeaderCheck {
  private readonly plans = new Map<string, Plan>();
  private readonly results = new Map<string, Promise<void>>();
  private wholeChecked = false;

  constructor(
    index: { entries: readonly IndexEntry[]; chunks: ReadonlyMap<string, readonly EstargzChunk[]> },
    private readonly blob: { readUnverified(start: number, end: number): Promise<Buffer>; readVerified?(start: number, end: number): Promise<Buffer | undefined> },
    private readonly what: string,
    private readonly log?: (message: string, error: unknown) => void,
  ) {
    let start = 0;
    let previousSize = 0;
    let pending: IndexEntry[] = [];
    for (const entry of index.entries) {
      pending.push(entry);
      const chunks = entry.type === 'file' && entry.size > 0 ? index.chunks.get(entry.path) : undefined;
      if (!chunks || chunks.length === 0) continue;
      this.plans.set(entry.path, { start, end: chunks[0]!.compressedStart, entries: pending, padding: (512 - (previousSize % 512)) % 512 });
      start = chunks.at(-1)!.compressedEnd;
      previousSize = entry.size;
      pending = [];
    }
  }

  /** Where the frame holding `path`'s header starts, while it is unchecked: a read-ahead brings it along. */
  bytesFrom(path: string): number | undefined {
    return this.wholeChecked || this.results.has(path) ? undefined : this.plans.get(path)?.start;
  }

  /** The whole tar stream was compared with the TOC: no header needs checking any more. */
  markWholeChecked(): void {
    this.wholeChecked = true;
  }

  check(path: string): Promise<void> {
    if (this.wholeChecked) return Promise.resolve();
    let result = this.results.get(path);
    if (!result) {
      const plan = this.plans.get(path);
      if (!plan) return Promise.resolve(); // an empty file: no bytes to serve
      result = this.run(path, plan);
      // Refused once, refused for good (and logged once); the rejection is handled by every reader.
      // Bytes that did not come, or came damaged, are no refusal: the next read checks again.
      result.catch((err: unknown) => {
        if (isLazyrootError(err, 'UNAVAILABLE') && this.results.get(path) === result) this.results.delete(path);
      });
      this.results.set(path, result);
    }
    return result;
  }

  private async run(path: string, plan: Plan): Promise<void> {
    try {
      if (plan.end <= plan.start) throw new Error(`no frame of tar headers before its data (blob bytes ${plan.start}–${plan.end})`);
      const verified = await this.blob.readVerified?.(plan.start, plan.end);
      const frames = verified ?? (await this.blob.readUnverified(plan.start, plan.end));
      let tar: Buffer;
      try {
        tar = decodeFramesUpTo(frames, plan.padding + plan.entries.length * 64 * 1024 + (1 << 20));
      } catch (err) {
        // Just fetched and not verified: likelier damaged on the way than lied about (see the eStargz check).
        if (!verified) {
          throw damagedBytes(`${this.what}: ${JSON.stringify(path)}: blob bytes ${plan.start}–${plan.end}, fetched for the tar headers before its bytes, do not decode (damaged on the way?): ${(err as Error).message}`, err);
        }
        throw new Error(`the frame of tar headers (blob bytes ${plan.start}–${plan.end}) does not decode: ${(err as Error).message}`, { cause: err });
      }
      compareHeaders(tar, plan, this.what);
    } catch (err) {
      if (isLazyrootError(err, 'UNAVAILABLE')) throw err;
      const refusal = new LazyrootError('INVALID_DATA', `${this.what}: ${JSON.stringify(path)}: refused: the TOC disagrees with the layer's tar stream: ${(err as Error).message}`, { cause: err });
      this.log?.(refusal.message, err);
      throw refusal;
    }
  }
}

interface Plan {
  start: number;
  end: number;
  /** The TOC's entries whose headers the frame holds, the file's own last. */
  entries: IndexEntry[];
  /** Zero bytes the frame starts with: the previous file's tar padding. */
  padding: number;
}

const typeOf: Record<string, IndexEntry['type'] | undefined> = { '0': 'file', '\0': 'file', '7': 'file', '1': 'hardlink', '2': 'symlink', '3': 'char', '4': 'block', '5': 'dir', '6': 'fifo' };

function cString(b: Buffer): string {
  const nul = b.indexOf(0);
  return (nul < 0 ? b : b.subarray(0, nul)).toString('utf8');
}

/** The decoded frame must be the padding, then exactly the headers of `plan.entries`, agreeing with them. */
function compareHeaders(tar: Buffer, plan: Plan, what: string): void {
  if (tar.length < plan.padding || tar.subarray(0, plan.padding).some((b) => b !== 0)) throw new Error('the frame does not start with the previous file\'s tar padding');
  let at = plan.padding;
  let pax: Record<string, string> = {};
  let longName: string | undefined;
  let longLink: string | undefined;
  let i = 0;
  while (at < tar.length) {
    if (at + 512 > tar.length) throw new Error(`a tar header is cut at byte ${at} of the frame`);
    const header = tar.subarray(at, at + 512);
    if (!checksumOk(header)) throw new Error(`bad tar header checksum at byte ${at} of the frame`);
    const flag = String.fromCharCode(header[156]!);
    const size = pax.size !== undefined && typeOf[flag] ? Number(pax.size) : octal(header.subarray(124, 136));
    if (!Number.isSafeInteger(size) || size < 0) throw new Error(`bad tar size at byte ${at} of the frame`);
    at += 512;
    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      if (at + size > tar.length) throw new Error(`a ${flag} record runs past the frame`);
      const data = tar.subarray(at, at + size);
      if (flag === 'x') pax = parsePax(data);
      else if (flag === 'L') longName = cString(data);
      else if (flag === 'K') longLink = cString(data);
      at += Math.ceil(size / 512) * 512;
      continue;
    }
    const want = plan.entries[i];
    const type = typeOf[flag];
    const name = pax.path ?? longName ?? tarName(header);
    if (!want) throw new Error(`the tar has ${JSON.stringify(name)} where the TOC has no more entries`);
    const label = `entry ${JSON.stringify(want.path)}`;
    const path = normalizeEntryPath(name, what);
    if (path !== want.path) throw new Error(`${label}: the tar has ${JSON.stringify(path)} there`);
    if (type !== want.type) throw new Error(`${label}: the tar has typeflag ${JSON.stringify(flag)}, the TOC a ${want.type}`);
    if (want.type === 'file' && size !== want.size) throw new Error(`${label}: the tar has ${size} bytes, the TOC ${want.size}`);
    const mode = octal(header.subarray(100, 108)) & 0o7777;
    if (mode !== want.mode) throw new Error(`${label}: the tar has mode ${mode.toString(8)}, the TOC ${want.mode.toString(8)}`);
    const uid = pax.uid !== undefined ? Number(pax.uid) : octal(header.subarray(108, 116));
    const gid = pax.gid !== undefined ? Number(pax.gid) : octal(header.subarray(116, 124));
    if (uid !== want.uid || gid !== want.gid) throw new Error(`${label}: the tar has owner ${uid}:${gid}, the TOC ${want.uid}:${want.gid}`);
    if (want.type === 'symlink' || want.type === 'hardlink') {
      const raw = pax.linkpath ?? longLink ?? cString(header.subarray(157, 257));
      const link = want.type === 'hardlink' ? normalizeEntryPath(raw, what) : raw;
      if (link !== want.linkname) throw new Error(`${label}: the tar links to ${JSON.stringify(link)}, the TOC to ${JSON.stringify(want.linkname)}`);
    }
    i++;
    // Entries before the file have no data here (a file with data starts a frame of its own); the file's data follows the frame.
    if (i === plan.entries.length) {
      if (at !== tar.length) throw new Error(`the frame goes on for ${tar.length - at} bytes after the header of ${JSON.stringify(want.path)}`);
      return;
    }
    if (type === 'file' && size > 0) throw new Error(`${label}: the tar has data for it in a frame of headers`);
    pax = {};
    longName = undefined;
    longLink = undefined;
  }
  throw new Error(`the frame holds ${i} of the ${plan.entries.length} headers the TOC puts there`);
}

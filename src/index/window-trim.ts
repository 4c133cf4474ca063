import { spanStart, trimWindow, type RawGzipCheckpoint } from './gzip-native.js';

/** Output past a checkpoint that can refer back into its window: deflate's largest distance. */
export const windowReach = 32768;
/**
 * The compressed bytes handed over for a checkpoint's first 32 KiB of
 * output. Real streams need well under half of this; a stream that needs
 * more (empty blocks, say) keeps its whole window.
 */
const maxCompressed = 128 << 10;
/** Trims running on the thread pool at once before the stream waits for them. */
const maxRunning = 4;

/**
 * Trims the windows of a gzip stream's checkpoints as the stream is indexed
 * (native/gzip_window.c): each keeps only the bytes the output after it
 * copies, the rest zero, so that an index stores about a tenth of each
 * window. A checkpoint is trimmed once 32 KiB of output has come after it
 * (no later byte can refer back into its window), or at the end of the
 * stream; its `window` is replaced in place.
 */
export class WindowTrimmer {
  private chunks: Array<{ start: number; buf: Buffer }> = [];
  private received = 0;
  private pending: RawGzipCheckpoint[] = [];
  private readonly running = new Set<Promise<void>>();

  /** The next compressed bytes, in order. */
  add(buf: Buffer): void {
    if (buf.length === 0) return;
    this.chunks.push({ start: this.received, buf });
    this.received += buf.length;
  }

  /** A checkpoint the indexer passed (one at a member's start has no window to trim). */
  checkpoint(cp: RawGzipCheckpoint): void {
    if (cp.window.length > 0) this.pending.push(cp);
  }

  /** Every compressed byte added so far has been inflated, to `uncompressed` bytes of output. */
  async advance(uncompressed: number): Promise<void> {
    while (this.pending.length > 0 && this.pending[0]!.uncompressedOffset + windowReach <= uncompressed) {
      this.start(this.pending.shift()!, windowReach);
    }
    this.forget();
    while (this.running.size >= maxRunning) await Promise.race(this.running);
  }

  /** The stream ended at `uncompressed` bytes of output: trims the rest and waits for every trim. */
  async finish(uncompressed: number): Promise<void> {
    for (const cp of this.pending) this.start(cp, Math.min(windowReach, uncompressed - cp.uncompressedOffset));
    this.pending = [];
    this.chunks = [];
    await Promise.all(this.running);
  }

  private start(cp: RawGzipCheckpoint, length: number): void {
    const compressed = this.bytes(spanStart(cp), Math.min(this.received, spanStart(cp) + maxCompressed));
    if (!compressed || length <= 0) return;
    // A trim that fails (it cannot: the stream inflated already) leaves the whole window, which is right too.
    const job: Promise<void> = trimWindow(cp, compressed, length).then(
      (trimmed) => void (cp.window = trimmed),
      () => undefined,
    );
    const done = job.finally(() => this.running.delete(done));
    this.running.add(done);
  }

  /** Bytes [from, to) of the stream, when still held: one chunk's memory, or a copy across chunks. */
  private bytes(from: number, to: number): Buffer | undefined {
    const parts: Buffer[] = [];
    for (const { start, buf } of this.chunks) {
      const a = Math.max(from, start);
      const b = Math.min(to, start + buf.length);
      if (a < b) parts.push(buf.subarray(a - start, b - start));
    }
    const got = parts.reduce((n, p) => n + p.length, 0);
    if (got !== to - from) return undefined;
    return parts.length === 1 ? parts[0] : Buffer.concat(parts, got);
  }

  /** Drops chunks no checkpoint still waiting can start in (the indexer never reports one before the last byte held). */
  private forget(): void {
    const keepFrom = this.pending.length > 0 ? spanStart(this.pending[0]!) : this.received - 1;
    let drop = 0;
    while (drop < this.chunks.length && this.chunks[drop]!.start + this.chunks[drop]!.buf.length <= keepFrom) drop++;
    if (drop) this.chunks.splice(0, drop);
  }
}

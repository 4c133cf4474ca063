import type { Hash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { LazyrootError } from '../errors.js';
import { writevFully } from './write-fully.js';

/** Bytes gathered before one positional writev: few syscalls, little memory. */
const batchBytes = 1 << 20;

/**
 * The one path every byte entering the store takes (go-containerregistry's
 * verify.ReadCloser idea): it hashes, counts, refuses anything past the
 * expected size, and writes at the right offset of the download file. The
 * digest itself is checked by the caller once all bytes are in.
 *
 * Chunks are batched into ~1 MiB writes with at most one in flight, so the
 * network keeps flowing while the disk writes. `finish()` puts every byte
 * received so far on disk — also after the source failed, which makes the
 * resume offset (`written`) exact.
 */
export class VerifyingWriter {
  private batch: Buffer[] = [];
  private batchSize = 0;
  private inFlight: Promise<void> | undefined;
  private onDisk: number;

  constructor(
    private readonly file: FileHandle,
    private readonly hash: Hash,
    /** Bytes of the blob received (already on disk once `finish()` resolves). */
    public written: number,
    private readonly expectedSize: number,
    private readonly what: string,
    private readonly onBytes?: (n: number) => void,
    private readonly tap?: (chunk: Buffer) => Promise<void> | void,
  ) {
    this.onDisk = written;
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.written + chunk.length > this.expectedSize) {
      throw new LazyrootError('SIZE_MISMATCH', `${this.what}: more bytes than the ${this.expectedSize} its descriptor declares`);
    }
    this.hash.update(chunk);
    this.written += chunk.length;
    this.batch.push(chunk);
    this.batchSize += chunk.length;
    // The tap (a decompressor computing the diff ID) applies backpressure too.
    const tapped = this.tap?.(chunk);
    if (tapped) await tapped;
    if (this.batchSize >= batchBytes) await this.flush();
  }

  /** Writes out what is batched; waits for the previous write first. */
  private async flush(): Promise<void> {
    if (this.inFlight) await this.inFlight;
    if (this.batchSize === 0) return;
    const buffers = this.batch;
    const size = this.batchSize;
    const position = this.onDisk;
    this.batch = [];
    this.batchSize = 0;
    this.onDisk += size;
    this.inFlight = writevFully(this.file, buffers, position).then(() => {
      this.inFlight = undefined;
      this.onBytes?.(size);
    });
  }

  async finish(): Promise<void> {
    await this.flush();
    if (this.inFlight) await this.inFlight;
  }
}

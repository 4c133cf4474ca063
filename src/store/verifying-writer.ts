import type { Hash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { LazyrootError } from '../errors.js';

/**
 * The one path every byte entering the store takes (go-containerregistry's
 * verify.ReadCloser idea): it hashes, counts, refuses anything past the
 * expected size, and writes at the right offset of the download file. The
 * digest itself is checked by the caller once all bytes are in.
 *
 * Written chunk by chunk with `await` (not piped) so that when the source
 * fails, every byte received before the failure is on disk and the resume
 * offset is exact.
 */
export class VerifyingWriter {
  constructor(
    private readonly file: FileHandle,
    private readonly hash: Hash,
    /** Bytes of the blob already on disk and hashed. */
    public written: number,
    private readonly expectedSize: number,
    private readonly what: string,
    private readonly onBytes?: (n: number) => void,
    private readonly tap?: (chunk: Buffer) => Promise<void> | void,
  ) {}

  async write(chunk: Buffer): Promise<void> {
    if (this.written + chunk.length > this.expectedSize) {
      throw new LazyrootError('SIZE_MISMATCH', `${this.what}: more bytes than the ${this.expectedSize} its descriptor declares`);
    }
    this.hash.update(chunk);
    const offset = this.written;
    this.written += chunk.length;
    // The tap (a decompressor computing the diff ID) applies backpressure too.
    await Promise.all([this.file.write(chunk, 0, chunk.length, offset), this.tap?.(chunk)]);
    this.onBytes?.(chunk.length);
  }
}

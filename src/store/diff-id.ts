import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createDecompressor } from '../oci/compression.js';
import type { Compression } from '../oci/media-types.js';
import type { Digest } from '../oci/digest.js';

/**
 * Computes a layer's diff ID (sha256 of the uncompressed tar) from its
 * compressed bytes as they stream past. `write` applies backpressure so a
 * fast download never buffers more than the decompressor's window.
 */
export class DiffIdHasher {
  private readonly decompressor;
  private readonly hash = createHash('sha256');
  private bytes = 0;
  private failure: Error | undefined;

  constructor(compression: Compression) {
    this.decompressor = createDecompressor(compression);
    this.decompressor.on('data', (chunk: Buffer) => {
      this.hash.update(chunk);
      this.bytes += chunk.length;
    });
    this.decompressor.on('error', (err: Error) => {
      this.failure = err;
    });
  }

  readonly write = async (chunk: Buffer): Promise<void> => {
    if (this.failure) throw this.failure;
    if (!this.decompressor.write(chunk)) await once(this.decompressor, 'drain');
  };

  /** Ends the stream; resolves to the diff ID and the uncompressed size. */
  async finish(): Promise<{ diffId: Digest; size: number }> {
    if (this.failure) throw this.failure;
    this.decompressor.end();
    await once(this.decompressor, 'end');
    return { diffId: `sha256:${this.hash.digest('hex')}`, size: this.bytes };
  }

  destroy(): void {
    this.decompressor.destroy();
  }
}

import { Transform, type TransformCallback } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { Decompress as ZstdDecompress } from 'fzstd';
import type { Compression } from './media-types.js';

/** Recognises a blob's compression from its first bytes (magic numbers). */
export function sniffCompression(head: Uint8Array): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  return 'none';
}

/**
 * zstd decoding as a Node Transform. Node 20's zlib has no zstd, so this wraps
 * fzstd's streaming decoder (pure JS, maintained) rather than a native addon.
 */
class ZstdTransform extends Transform {
  private readonly decoder: ZstdDecompress;

  constructor() {
    super();
    this.decoder = new ZstdDecompress((chunk) => {
      // fzstd reuses nothing after the callback, but copy defensively: the
      // consumer may hold on to the buffer past the next push.
      this.push(Buffer.from(chunk));
    });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    try {
      this.decoder.push(chunk);
      done();
    } catch (err) {
      done(new Error(`zstd: ${(err as Error).message}`));
    }
  }

  override _flush(done: TransformCallback): void {
    try {
      this.decoder.push(new Uint8Array(0), true);
      done();
    } catch (err) {
      done(new Error(`zstd: ${(err as Error).message}`));
    }
  }
}

/** A Transform turning a compressed layer stream into the tar stream. */
export function createDecompressor(compression: Compression): Transform {
  switch (compression) {
    case 'gzip':
      return createGunzip({ chunkSize: 256 * 1024 });
    case 'zstd':
      return new ZstdTransform();
    case 'none':
      return new Transform({ transform: (chunk, _enc, done) => done(null, chunk) });
  }
}

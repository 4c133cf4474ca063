import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import type { Digest } from './digest.js';

/**
 * A pass-through stream that hashes and counts the bytes going through it,
 * unchanged: put it in a pipeline to learn the digest and size of what
 * flowed, without a second pass.
 *
 *   const hashing = new DigestStream();
 *   await pipeline(source, hashing, sink);
 *   hashing.digest()   // 'sha256:…', once the stream has ended
 *   hashing.bytes
 */
export class DigestStream extends Transform {
  /** Bytes that went through so far. */
  bytes = 0;
  private readonly hash: Hash;
  private result: Digest | undefined;

  constructor(private readonly algorithm: 'sha256' | 'sha512' = 'sha256') {
    super();
    this.hash = createHash(algorithm);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    done(null, chunk);
  }

  /** The digest of every byte that went through; call it once the stream has ended. */
  digest(): Digest {
    this.result ??= `${this.algorithm}:${this.hash.digest('hex')}`;
    return this.result;
  }
}

import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { LazyrootError } from '../../errors.js';

/**
 * Reads a response body into memory, refusing more than `limit` bytes: manifests,
 * configs and tokens are small, and a registry must not make us buffer a blob.
 */
export async function readLimited(body: Readable, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > limit) {
      body.destroy();
      throw new LazyrootError('SIZE_MISMATCH', `${what}: response is larger than ${limit} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, total);
}

/** Reads and drops what is left of a body so its connection can be reused; never throws. */
export async function discard(body: Readable): Promise<void> {
  try {
    const dumpable = body as Readable & { dump?: () => Promise<void> };
    if (typeof dumpable.dump === 'function') await dumpable.dump();
    else body.resume();
  } catch {
    // A body we do not want failing to drain changes nothing.
  }
}

/**
 * Reads bytes [start, end) of a body that starts at offset 0 (a registry that
 * ignored our Range header), dropping the rest without buffering it.
 */
export async function sliceOf(body: Readable, start: number, end: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let position = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    const from = Math.max(start - position, 0);
    const to = Math.min(end - position, chunk.length);
    if (to > from) chunks.push(chunk.subarray(from, to));
    position += chunk.length;
    if (position >= end) break;
  }
  body.destroy();
  const slice = Buffer.concat(chunks);
  if (slice.length !== end - start) {
    throw new LazyrootError('UNAVAILABLE', `${what}: body ended at byte ${position}, before byte ${end}`);
  }
  return slice;
}

/** Options for `blobStream`. */
export interface BlobStreamOptions {
  /** Bytes at the start of the body to drop (a 200 answer to a Range request). */
  skip?: number;
  /** Bytes the caller should get; a body that ends short is an error, not a silent truncation. */
  expected?: number;
  /** Turns a transport failure into the error the caller sees. */
  describeError(err: unknown, delivered: number): Error;
  onProgress?: (bytes: number) => void;
}

/**
 * Wraps a blob body: drops `skip` leading bytes, counts what passes, and turns a
 * dropped connection or a short body into one clear error naming the blob.
 */
export function blobStream(body: Readable, options: BlobStreamOptions): Readable {
  let toSkip = options.skip ?? 0;
  let delivered = 0;
  const out = new Transform({
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
      let data = chunk;
      if (toSkip > 0) {
        const dropped = Math.min(toSkip, data.length);
        toSkip -= dropped;
        data = data.subarray(dropped);
      }
      if (data.length > 0) {
        delivered += data.length;
        options.onProgress?.(data.length);
        callback(null, data);
      } else {
        callback();
      }
    },
    flush(callback: TransformCallback): void {
      if (toSkip > 0 || (options.expected !== undefined && delivered < options.expected)) {
        callback(options.describeError(new Error('body ended early'), delivered));
      } else {
        callback();
      }
    },
  });
  body.on('error', (err) => out.destroy(options.describeError(err, delivered)));
  // Destroying our end (a consumer that gave up) releases the connection.
  out.on('close', () => {
    if (!body.destroyed && !body.readableEnded) body.destroy();
  });
  body.pipe(out);
  return out;
}

import { Transform, addAbortSignal, type Readable } from 'node:stream';
import { LazyrootError } from '../errors.js';
import type { FetchOptions } from './image-source.js';

/** Fails at once when the caller has already given up. */
export function throwIfAborted(options: FetchOptions | undefined, what: string): void {
  if (options?.signal?.aborted) throw new LazyrootError('UNAVAILABLE', `${what}: aborted`, { cause: options.signal.reason, temporary: false });
}

/**
 * Applies a caller's abort signal and progress callback to a local blob stream.
 * Progress is counted by a pass-through transform: listening for 'data' on the
 * stream itself would start it flowing before the caller reads.
 */
export function withFetchOptions(stream: Readable, options: FetchOptions | undefined): Readable {
  let out = stream;
  const onProgress = options?.onProgress;
  if (onProgress) {
    const counter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        onProgress(chunk.length);
        done(null, chunk);
      },
    });
    stream.on('error', (err) => counter.destroy(err));
    out = stream.pipe(counter);
  }
  if (options?.signal) {
    addAbortSignal(options.signal, out);
    if (out !== stream) out.on('close', () => stream.destroy());
  }
  return out;
}

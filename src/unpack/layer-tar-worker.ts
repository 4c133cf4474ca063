import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { parentPort } from 'node:worker_threads';
import { createDecompressor } from '../oci/compression.js';
import type { FromWorker, ToWorker } from './layer-tar-reader.js';

/**
 * The worker thread of LayerTarReader: reads layer blobs, decompresses and
 * hashes them, and posts the tar bytes in batches, one blob at a time in the
 * order they were asked for. Each blob runs at most its window of bytes
 * ahead of what the main thread has taken.
 */

/** Tar bytes per message: few messages. The first ones are smaller, so that unpacking starts sooner. */
const batchBytes = 1 << 20;
const firstBatchBytes = 64 << 10;

const port = parentPort!;
const post = (message: FromWorker, transfer?: ArrayBuffer[]): void => port.postMessage(message, transfer);

class Job {
  private credit: number;
  private wake: (() => void) | undefined;
  private readonly abort = new AbortController();

  constructor(private readonly request: Extract<ToWorker, { kind: 'open' }>) {
    this.credit = request.window;
  }

  addCredit(bytes: number): void {
    this.credit += bytes;
    this.resume();
  }

  cancel(): void {
    this.abort.abort();
    this.resume();
  }

  private resume(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  async run(): Promise<void> {
    const { id, path, compression } = this.request;
    const hash = createHash('sha256');
    let size = 0;
    let parts: Buffer[] = [];
    let pending = 0;
    let batch = firstBatchBytes;
    const flush = async (): Promise<void> => {
      // A copy of its own: the decompressor's buffers are shared, and a transfer detaches all of its memory.
      const bytes = Buffer.allocUnsafeSlow(pending);
      let at = 0;
      for (const part of parts) at += part.copy(bytes, at);
      parts = [];
      pending = 0;
      batch = Math.min(batch * 2, batchBytes);
      this.credit -= bytes.length;
      post({ kind: 'data', id, bytes }, [bytes.buffer as ArrayBuffer]);
      while (this.credit <= 0 && !this.abort.signal.aborted) await new Promise<void>((resolve) => (this.wake = resolve));
    };
    try {
      await pipeline(
        createReadStream(path, { highWaterMark: batchBytes }),
        createDecompressor(compression),
        async (tar: AsyncIterable<Buffer>) => {
          for await (const chunk of tar) {
            hash.update(chunk);
            size += chunk.length;
            parts.push(chunk);
            pending += chunk.length;
            if (pending >= batch) await flush();
          }
          if (pending > 0) await flush();
        },
        { signal: this.abort.signal },
      );
      post({ kind: 'end', id, diffId: `sha256:${hash.digest('hex')}`, size });
    } catch (err) {
      if (this.abort.signal.aborted) return; // the main thread stopped reading: nobody to tell
      const e = err as NodeJS.ErrnoException;
      post({ kind: 'error', id, message: e.message, ...(e.code ? { code: e.code } : {}) });
    }
  }
}

const jobs = new Map<number, Job>();
const queue: Array<{ id: number; job: Job }> = [];
let running = false;

async function drainQueue(): Promise<void> {
  if (running) return;
  running = true;
  while (queue.length > 0) {
    const { id, job } = queue.shift()!;
    await job.run();
    jobs.delete(id);
  }
  running = false;
}

port.on('message', (message: ToWorker) => {
  switch (message.kind) {
    case 'open': {
      const job = new Job(message);
      jobs.set(message.id, job);
      queue.push({ id: message.id, job });
      void drainQueue();
      break;
    }
    case 'credit':
      jobs.get(message.id)?.addCredit(message.bytes);
      break;
    case 'cancel':
      jobs.get(message.id)?.cancel();
      break;
  }
});

import { Readable } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { LazyrootError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import type { Compression } from '../oci/media-types.js';

/** A layer's uncompressed tar as it is read, and the hash of all of it once read. */
export interface LayerTar {
  stream: Readable;
  /** The diff ID (sha256 of every uncompressed byte) and size; settles once the stream has ended. */
  hashed: Promise<{ diffId: Digest; size: number }>;
}

/** Main thread → worker. */
export type ToWorker =
  | { kind: 'open'; id: number; path: string; compression: Compression; window: number }
  /** The main thread took `bytes` more: the worker may run that much further ahead. */
  | { kind: 'credit'; id: number; bytes: number }
  | { kind: 'cancel'; id: number };

/** Worker → main thread. */
export type FromWorker =
  | { kind: 'data'; id: number; bytes: Uint8Array }
  | { kind: 'end'; id: number; diffId: Digest; size: number }
  | { kind: 'error'; id: number; message: string; code?: string };

interface Job {
  stream: Readable;
  received: number;
  credited: number;
  ended: boolean;
  resolve(result: { diffId: Digest; size: number }): void;
  reject(err: Error): void;
}

/**
 * How far the worker may decompress ahead of the unpacking, per blob: enough
 * to see the unpacking through a run of big files (where writing outpaces
 * zlib) on what was decompressed during the small ones before it.
 */
const defaultWindow = 16 << 20;

/**
 * Decompresses and hashes layer blobs on a worker thread. On the event loop,
 * zlib's work is handed back and forth: each decompressed chunk waits for the
 * loop to come round before the next one starts, and unpacking many small
 * files keeps the loop busy, so decompression and file creation take turns.
 * On a worker they run side by side, and sha256 (and fzstd, which is pure JS)
 * leave the main thread too. One worker serves every blob read through it,
 * one blob at a time, in the order asked; a blob's bytes run at most
 * `window` ahead of their consumer. close() ends the worker.
 *
 *   const reader = new LayerTarReader();
 *   try {
 *     const tar = reader.read(store.blobs.path(digest), 'gzip');
 *     await pipeline(tar.stream, sink);
 *     (await tar.hashed).diffId;
 *   } finally {
 *     await reader.close();
 *   }
 */
export class LayerTarReader {
  private readonly worker: Worker;
  private readonly jobs = new Map<number, Job>();
  private nextId = 0;
  private failure: Error | undefined;

  constructor(private readonly window = defaultWindow) {
    this.worker = new Worker(new URL('./layer-tar-worker.js', import.meta.url));
    this.worker.on('message', (message: FromWorker) => this.onMessage(message));
    // Not the blob's fault: kept apart from decompression errors, which the unpacker reports as a bad tar.
    this.worker.on('error', (err) => this.fail(new LazyrootError('UNAVAILABLE', `layer decompression worker failed: ${err.message}`, { cause: err })));
    this.worker.on('exit', (code) => this.fail(new LazyrootError('UNAVAILABLE', `layer decompression worker exited (code ${code})`)));
  }

  /** Streams the uncompressed tar of the blob at `path`. */
  read(path: string, compression: Compression): LayerTar {
    const id = this.nextId++;
    let resolve!: Job['resolve'];
    let reject!: Job['reject'];
    const hashed = new Promise<{ diffId: Digest; size: number }>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    hashed.catch(() => undefined); // the stream carries the same error to whoever reads it
    const job: Job = {
      received: 0,
      credited: 0,
      ended: false,
      resolve,
      reject,
      stream: new Readable({
        highWaterMark: 1 << 20,
        read: () => {
          // Room in the stream's buffer again: let the worker go on.
          if (job.received > job.credited) {
            this.post({ kind: 'credit', id, bytes: job.received - job.credited });
            job.credited = job.received;
          }
        },
        destroy: (err, callback) => {
          if (!job.ended) {
            job.ended = true;
            this.jobs.delete(id);
            this.post({ kind: 'cancel', id });
            reject(err ?? new Error('layer tar stream destroyed before its end'));
          }
          callback(err);
        },
      }),
    };
    if (this.failure) {
      job.stream.destroy(this.failure);
      return { stream: job.stream, hashed };
    }
    this.jobs.set(id, job);
    this.post({ kind: 'open', id, path, compression, window: this.window });
    return { stream: job.stream, hashed };
  }

  /** Ends the worker; streams not yet at their end fail. */
  async close(): Promise<void> {
    this.fail(new Error('layer decompression worker closed'));
    await this.worker.terminate();
  }

  private post(message: ToWorker): void {
    if (!this.failure) this.worker.postMessage(message);
  }

  private onMessage(message: FromWorker): void {
    const job = this.jobs.get(message.id);
    if (!job) return; // cancelled
    switch (message.kind) {
      case 'data':
        job.received += message.bytes.byteLength;
        job.stream.push(Buffer.from(message.bytes.buffer, message.bytes.byteOffset, message.bytes.byteLength));
        break;
      case 'end':
        job.ended = true;
        this.jobs.delete(message.id);
        job.stream.push(null);
        job.resolve({ diffId: message.diffId, size: message.size });
        break;
      case 'error': {
        const err: NodeJS.ErrnoException = new Error(message.message);
        if (message.code) err.code = message.code;
        this.finish(message.id, job, err);
        break;
      }
    }
  }

  private finish(id: number, job: Job, err: Error): void {
    job.ended = true;
    this.jobs.delete(id);
    job.reject(err);
    job.stream.destroy(err);
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const [id, job] of this.jobs) this.finish(id, job, err);
  }
}

import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { isErrorCode, LazyrootError } from '../errors.js';
import { createDecompressor } from '../oci/compression.js';
import { checkTocAgainstTar } from './estargz/toc-check.js';
import { checkZstdChunkedTocAgainstTar } from './zstd-chunked/tar-check.js';
import type { EstargzChunk, IndexEntry } from './types.js';

/** What the worker is given: the blob's path and the TOC (entries and chunks, cloned into the worker). */
export interface TocCheckJob {
  kind: 'estargz' | 'zstd-chunked';
  path: string;
  index: { entries: readonly IndexEntry[]; chunks: ReadonlyMap<string, readonly EstargzChunk[]> };
  what: string;
}

export type TocCheckResult = { ok: true } | { ok: false; message: string; code?: string };

/**
 * Checks a whole eStargz or zstd:chunked blob against its TOC (see
 * checkTocAgainstTar) on a worker thread of its own. The check decompresses
 * and hashes the whole layer (about 0.7 s of CPU for 47 MiB of gzip); on the
 * event loop that time was taken from the mount's readers, who are still
 * reading when a blob completes. Resolves when the tar agrees with the TOC;
 * rejects with the check's own error (INVALID_DATA naming the first
 * disagreement) when it does not, and with UNAVAILABLE when `signal` stops
 * it first.
 */
export function checkTocOffThread(job: TocCheckJob, signal?: AbortSignal): Promise<void> {
  // A TOC this big is checked here: cloning it into a worker would double the daemon's biggest structure.
  if (job.index.entries.length > maxEntriesForWorker) return runTocCheck(job);
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(new LazyrootError('UNAVAILABLE', `${job.what}: the TOC check was stopped before it began`));
    const worker = new Worker(new URL('./toc-check-worker.js', import.meta.url), { workerData: job });
    // A closing mount does not wait for the check: the worker ends, and the check is not done (not failed).
    const stop = () => {
      reject(new LazyrootError('UNAVAILABLE', `${job.what}: the TOC check was stopped (the mount is closing)`));
      void worker.terminate();
    };
    signal?.addEventListener('abort', stop, { once: true });
    worker.once('message', (result: TocCheckResult) => {
      if (result.ok) resolve();
      // A system error (the blob could not be read: ENOENT, EIO) leaves the check not done, never failed.
      else reject(new LazyrootError(result.code === undefined ? 'INVALID_DATA' : isErrorCode(result.code) ? result.code : 'UNAVAILABLE', result.message));
    });
    worker.once('error', (err) => reject(new LazyrootError('UNAVAILABLE', `${job.what}: the TOC check's worker failed: ${err.message}`, { cause: err })));
    worker.once('exit', (code) => {
      signal?.removeEventListener('abort', stop);
      // After an answer this changes nothing (a promise settles once).
      reject(new LazyrootError('UNAVAILABLE', `${job.what}: the TOC check's worker exited (code ${code}) without an answer`));
    });
  });
}

/**
 * TOCs of up to this many entries are checked on a worker (the realistic
 * bench image has 8,227); past it, the structured clone into the worker (about
 * the TOC's size in memory again, for the check's whole length) costs more
 * than the event loop time saved.
 */
const maxEntriesForWorker = 100_000;

/** The check itself, in the calling thread: the worker runs this. */
export async function runTocCheck(job: TocCheckJob): Promise<void> {
  const tar = pipeline(createReadStream(job.path, { highWaterMark: 1 << 20 }), createDecompressor(job.kind === 'estargz' ? 'gzip' : 'zstd'), () => undefined);
  try {
    if (job.kind === 'estargz') await checkTocAgainstTar(tar, job.index, job.what);
    else await checkZstdChunkedTocAgainstTar(tar, job.index, job.what);
  } finally {
    tar.destroy();
  }
}

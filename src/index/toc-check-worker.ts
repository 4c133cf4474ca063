import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream';
import { parentPort, workerData } from 'node:worker_threads';
import { createDecompressor } from '../oci/compression.js';
import { checkTocAgainstTar } from './estargz/toc-check.js';
import { checkZstdChunkedTocAgainstTar } from './zstd-chunked/tar-check.js';
import type { TocCheckJob, TocCheckResult } from './toc-check-thread.js';

/**
 * The worker thread of checkTocOffThread: decompresses one whole layer blob,
 * walks its tar stream against the TOC (checkTocAgainstTar or
 * checkZstdChunkedTocAgainstTar) and posts the outcome.
 */
const job = workerData as TocCheckJob;
const post = (result: TocCheckResult) => parentPort!.postMessage(result);

const tar = pipeline(createReadStream(job.path, { highWaterMark: 1 << 20 }), createDecompressor(job.kind === 'estargz' ? 'gzip' : 'zstd'), () => undefined);
try {
  if (job.kind === 'estargz') await checkTocAgainstTar(tar, job.index, job.what);
  else await checkZstdChunkedTocAgainstTar(tar, job.index, job.what);
  post({ ok: true });
} catch (err) {
  const e = err as Error & { code?: unknown };
  post({ ok: false, message: e.message, ...(typeof e.code === 'string' ? { code: e.code } : {}) });
} finally {
  tar.destroy();
}

import { parentPort, workerData } from 'node:worker_threads';
import { runTocCheck, type TocCheckJob, type TocCheckResult } from './toc-check-thread.js';

/** The worker thread of checkTocOffThread: runs one whole-blob TOC check and posts the outcome. */
const post = (result: TocCheckResult) => parentPort!.postMessage(result);
try {
  await runTocCheck(workerData as TocCheckJob);
  post({ ok: true });
} catch (err) {
  const e = err as Error & { code?: unknown };
  post({ ok: false, message: e.message, ...(typeof e.code === 'string' ? { code: e.code } : {}) });
}

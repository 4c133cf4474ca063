import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import lockfile from 'proper-lockfile';
import { LazyrootError } from '../errors.js';

export type Release = () => Promise<void>;

/**
 * An inter-process lock on `path` (proper-lockfile: an atomic mkdir whose mtime
 * is refreshed while held, so a lock left by a killed process goes stale in
 * seconds and is taken over). Waits while another process holds it.
 */
export async function acquireLock(path: string, what: string, waitMs = 10 * 60_000): Promise<Release> {
  await mkdir(dirname(path), { recursive: true });
  // proper-lockfile locks an existing file; the file itself stays empty.
  await writeFile(path, '', { flag: 'a' });
  const started = Date.now();
  for (;;) {
    try {
      const release = await lockfile.lock(path, {
        realpath: false,
        stale: 10_000,
        update: 2_000,
        retries: { retries: 20, factor: 1.3, minTimeout: 25, maxTimeout: 500 },
        onCompromised: () => {
          // Only happens if the event loop stalls for longer than `stale`;
          // the work under the lock is idempotent, so carry on.
        },
      });
      return async () => {
        await release().catch(() => undefined);
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ELOCKED') throw err;
      if (Date.now() - started > waitMs) {
        throw new LazyrootError('UNAVAILABLE', `${what}: still locked by another process after ${Math.round(waitMs / 1000)} s`);
      }
    }
  }
}

export async function withLock<T>(path: string, what: string, fn: () => Promise<T>): Promise<T> {
  const release = await acquireLock(path, what);
  try {
    return await fn();
  } finally {
    await release();
  }
}

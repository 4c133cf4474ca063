import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { LazyrootError } from '../errors.js';

export type Release = () => Promise<void>;

/**
 * An inter-process lock on `path`, held as an exclusive SQLite transaction on
 * a small lock database. SQLite's lock is an fcntl lock, which the kernel drops
 * the moment its process dies: a pull killed with SIGKILL never leaves a lock
 * for the next one to wait out (mtime-based lock files do, for their whole
 * stale period). Waiting polls without blocking the event loop.
 */
export async function acquireLock(path: string, what: string, waitMs = 10 * 60_000): Promise<Release> {
  await mkdir(dirname(path), { recursive: true });
  const db = new Database(path, { timeout: 0 });
  const started = Date.now();
  let delay = 5;
  for (;;) {
    try {
      db.exec('BEGIN EXCLUSIVE');
      break;
    } catch (err) {
      if ((err as { code?: string }).code !== 'SQLITE_BUSY') {
        db.close();
        throw err;
      }
      if (Date.now() - started > waitMs) {
        db.close();
        throw new LazyrootError('UNAVAILABLE', `${what}: still locked by another process after ${Math.round(waitMs / 1000)} s`);
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(100, delay * 2);
    }
  }
  let released = false;
  return async () => {
    if (released) return;
    released = true;
    db.exec('ROLLBACK');
    db.close();
  };
}

export async function withLock<T>(path: string, what: string, fn: () => Promise<T>): Promise<T> {
  const release = await acquireLock(path, what);
  try {
    return await fn();
  } finally {
    await release();
  }
}

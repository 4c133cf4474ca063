import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** fsyncs a directory so a rename inside it survives a crash. */
export async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Moves a finished temp file into place: fsync it, rename, fsync the directory. */
export async function commitFile(tmpPath: string, finalPath: string): Promise<void> {
  const handle = await open(tmpPath, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(tmpPath, finalPath);
  await syncDir(dirname(finalPath));
}

/**
 * Writes a whole file atomically: temp file in `tmpDir` (same filesystem),
 * fsync, rename. Readers see the old file or the new one, never a torn one.
 * `durable: false` skips both fsyncs, for caches whose reader takes a torn
 * file after a power cut for a miss: the rename stays atomic for processes.
 */
export async function writeFileAtomic(finalPath: string, data: Uint8Array | string, tmpDir: string, options: { durable?: boolean } = {}): Promise<void> {
  await writeFileAtomicFrom(finalPath, [data], tmpDir, options);
}

/**
 * writeFileAtomic of a file given as pieces, written one after another: a
 * big file made of many small strings never exists whole in memory.
 */
export async function writeFileAtomicFrom(finalPath: string, pieces: Iterable<Uint8Array | string>, tmpDir: string, options: { durable?: boolean } = {}): Promise<void> {
  const durable = options.durable ?? true;
  const tmpPath = join(tmpDir, `${basename(finalPath)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const handle = await open(tmpPath, 'wx');
  try {
    for (const piece of pieces) await handle.writeFile(piece);
    if (durable) await handle.sync();
  } catch (err) {
    await handle.close();
    await rm(tmpPath, { force: true });
    throw err;
  }
  await handle.close();
  try {
    await rename(tmpPath, finalPath);
  } catch (err) {
    await rm(tmpPath, { force: true });
    throw err;
  }
  if (durable) await syncDir(dirname(finalPath));
}

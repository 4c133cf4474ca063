import { constants } from 'node:fs';
import { lstat, open, readlink, realpath } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { join } from 'node:path';
import { LazyrootError } from '../errors.js';

/** Linux's own limit on symlinks followed while resolving one path. */
const maxSymlinks = 40;

/** passwd and group files are small; anything bigger is refused rather than read into memory. */
const defaultMaxBytes = 16 * 1024 * 1024;

/**
 * Reads a file of an untrusted rootfs as a process chrooted into it would see
 * it: symlinks are followed *inside* the rootfs (an absolute target starts at
 * rootfsDir, `..` stops at rootfsDir), so no link in the image can make us
 * read a host file. Returns undefined when the path does not exist in the
 * rootfs. Only regular files are read (a FIFO or device is an error, never a
 * hang).
 */
export async function readRootfsFile(
  rootfsDir: string,
  pathInRootfs: string,
  options: { maxBytes?: number } = {},
): Promise<Buffer | undefined> {
  const root = await realpath(rootfsDir);
  const resolved = await resolveInRootfs(root, pathInRootfs);
  if (!resolved) return undefined;
  const { hostPath, stats } = resolved;
  const what = `rootfs ${rootfsDir}: ${pathInRootfs}`;
  if (!stats.isFile()) throw new LazyrootError('INVALID_DATA', `${what}: not a regular file`);

  // O_NOFOLLOW + the inode check below: if the tree changed between resolving
  // and opening (a swapped directory or link), we notice instead of reading
  // whatever the new path leads to.
  const handle = await open(hostPath, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY).catch(
    (err: NodeJS.ErrnoException) => {
      throw new LazyrootError('INVALID_DATA', `${what}: cannot open (${err.code ?? err.message})`, { cause: err });
    },
  );
  try {
    const opened = await handle.stat();
    if (!opened.isFile() || opened.dev !== stats.dev || opened.ino !== stats.ino) {
      throw new LazyrootError('INVALID_DATA', `${what}: changed while it was being opened`);
    }
    const maxBytes = options.maxBytes ?? defaultMaxBytes;
    if (opened.size > maxBytes) throw new LazyrootError('INVALID_DATA', `${what}: larger than ${maxBytes} bytes`);
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

/**
 * Resolves `pathInRootfs` component by component against `root` (already a
 * real path), following symlinks within it. Returns the host path of the last
 * component and its lstat, or undefined if some component does not exist.
 */
export async function resolveInRootfs(
  root: string,
  pathInRootfs: string,
): Promise<{ hostPath: string; stats: Stats } | undefined> {
  const pending = pathInRootfs.split('/');
  // Components below root, each a real directory except perhaps the last,
  // with their lstat results (dirStats[0] is root itself).
  const resolved: string[] = [];
  const dirStats: Stats[] = [await lstat(root)];
  const current = (): Stats => dirStats[dirStats.length - 1]!;
  let linksFollowed = 0;

  while (pending.length > 0) {
    const name = pending.shift()!;
    if (name === '' || name === '.') continue;
    if (!current().isDirectory()) return undefined; // ENOTDIR: no such path
    if (name === '..') {
      // Never above root, like `..` at the real root.
      if (resolved.length > 0) {
        resolved.pop();
        dirStats.pop();
      }
      continue;
    }
    const hostPath = join(root, ...resolved, name);
    let entry: Stats;
    try {
      entry = await lstat(hostPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    if (entry.isSymbolicLink()) {
      if (++linksFollowed > maxSymlinks) {
        throw new LazyrootError('INVALID_DATA', `rootfs ${root}: ${pathInRootfs}: too many levels of symbolic links`);
      }
      const target = await readlink(hostPath);
      if (target.startsWith('/')) {
        resolved.length = 0;
        dirStats.length = 1;
      }
      pending.unshift(...target.split('/'));
      continue;
    }
    resolved.push(name);
    dirStats.push(entry);
  }
  return { hostPath: join(root, ...resolved), stats: current() };
}

import { lstat, readlink, realpath } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { LazyrootError } from '../errors.js';

/**
 * The one path a mountpoint goes by, whatever the caller typed: absolute,
 * with every symlink resolved — also the last component's, so that `mount
 * LINK` mounts at the target and `umount LINK` finds that mount. The last
 * component is never stat'ed through: a dead FUSE mount there answers
 * ENOTCONN, and `umount` must still find it.
 */
export async function canonicalMountpoint(dir: string, hops = 0): Promise<string> {
  const absolute = resolve(dir);
  if (absolute === '/') return absolute;
  let parent: string;
  try {
    parent = await realpath(dirname(absolute));
  } catch {
    return absolute; // a missing parent: the caller reports it
  }
  const path = join(parent, basename(absolute));
  const stats = await lstat(path).catch(() => undefined);
  if (!stats?.isSymbolicLink()) return path;
  if (hops >= 40) throw new LazyrootError('INVALID_ARGUMENT', `mountpoint ${dir}: too many symlinks`);
  return canonicalMountpoint(resolve(parent, await readlink(path)), hops + 1);
}

import { execFile } from 'node:child_process';
import { readFile, realpath, statfs } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { LazyrootError } from '../errors.js';

const run = promisify(execFile);

/** A FUSE mount as /proc/self/mountinfo lists it. */
export interface FuseMountInfo {
  mountpoint: string;
  /** `fuse`, `fuse.<subtype>` or `fuseblk`. */
  fstype: string;
  /** The fsname= of the mount. */
  source: string;
}

/**
 * - `none`: no FUSE filesystem is mounted there;
 * - `live`: one is, and its process answers;
 * - `stale`: one is, but its process is gone (killed): every access fails
 *   with ENOTCONN until it is unmounted.
 */
export type MountpointState = 'none' | 'live' | 'stale';

/** FUSE mounts at `mountpoint` in this mount namespace, lowest first. */
export async function fuseMountsAt(mountpoint: string): Promise<FuseMountInfo[]> {
  const target = await canonicalMountpoint(mountpoint);
  const table = await readFile('/proc/self/mountinfo', 'utf8');
  const found: FuseMountInfo[] = [];
  for (const line of table.split('\n')) {
    // id parent major:minor root mountpoint options [optional fields…] - fstype source super-options
    const fields = line.split(' ');
    const dash = fields.indexOf('-');
    if (dash < 0 || fields.length < dash + 3) continue;
    const fstype = fields[dash + 1]!;
    if (!(fstype === 'fuse' || fstype === 'fuseblk' || fstype.startsWith('fuse.'))) continue;
    if (unescapeMountField(fields[4]!) !== target) continue;
    found.push({ mountpoint: target, fstype, source: unescapeMountField(fields[dash + 2]!) });
  }
  return found;
}

/**
 * Whether a FUSE mount sits at `mountpoint` and whether its process still
 * serves it. statfs, not stat: the kernel answers stat from its attribute
 * cache (for a day, with our timeouts) even after the process died, while
 * statfs always asks the process. Only a listed FUSE mount is asked, and
 * asynchronously, so asking about a mount this very process serves cannot
 * deadlock.
 */
export async function mountpointState(mountpoint: string): Promise<MountpointState> {
  if ((await fuseMountsAt(mountpoint)).length === 0) return 'none';
  try {
    await statfs(mountpoint);
    return 'live';
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // The kernel aborts the connection when the last /dev/fuse descriptor closes.
    if (code === 'ENOTCONN' || code === 'ECONNABORTED') return 'stale';
    throw new LazyrootError('FAILED_PRECONDITION', `inspect FUSE mount at ${mountpoint}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Lazily unmounts stale FUSE mounts at `mountpoint` (all of a stack).
 * Returns how many were removed; a live mount is left alone.
 */
export async function cleanStaleMount(mountpoint: string): Promise<number> {
  let removed = 0;
  // Bounded: each pass removes the top mount of a stack, and a stack this deep is a bug elsewhere.
  for (let pass = 0; pass < 16; pass++) {
    if ((await mountpointState(mountpoint)) !== 'stale') return removed;
    await lazyUnmount(mountpoint);
    removed++;
  }
  throw new LazyrootError('FAILED_PRECONDITION', `clean stale FUSE mounts at ${mountpoint}: still stale after ${removed} unmounts`);
}

/**
 * `fusermount -u -z` works for the mount's owner without privileges (fuse3
 * names it fusermount3; Debian's fuse3 links fusermount to it); root may also
 * `umount -l`. The first that works wins.
 */
async function lazyUnmount(mountpoint: string): Promise<void> {
  const attempts: Array<[string, string[]]> = [
    ['fusermount3', ['-u', '-z', mountpoint]],
    ['fusermount', ['-u', '-z', mountpoint]],
    ['umount', ['-l', mountpoint]],
  ];
  const failures: string[] = [];
  for (const [command, args] of attempts) {
    try {
      await run(command, args);
      return;
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      failures.push(`${command}: ${e.stderr?.trim() || e.message}`);
    }
  }
  throw new LazyrootError('FAILED_PRECONDITION', `unmount stale FUSE mount at ${mountpoint}: ${failures.join('; ')}`);
}

/**
 * The path as the mount table writes it. realpath() of the mountpoint itself
 * fails on a stale mount (ENOTCONN), so only its parent is resolved.
 */
async function canonicalMountpoint(mountpoint: string): Promise<string> {
  const absolute = resolve(mountpoint);
  if (absolute === '/') return '/';
  try {
    return join(await realpath(dirname(absolute)), basename(absolute));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return absolute; // nothing can be mounted there
    throw err;
  }
}

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

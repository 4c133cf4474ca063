import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import { LazyrootError } from '../errors.js';
import { native } from '../native.js';

const run = promisify(execFile);

/** A mount as the OCI runtime spec writes it (containerd's mount.Mount). */
export interface Mount {
  destination: string;
  type: string;
  source: string;
  options: string[];
}

/**
 * Kernel overlayfs over layer diffs. `lowerdirs` are top first and may be
 * relative to `cwd` (the store root), which keeps the option string short for
 * images with many layers. Returns the mount; `performMount` makes it.
 */
export function overlayMount(options: { lowerdirs: string[]; upperdir?: string; workdir?: string; target: string }): Mount {
  const opts = [`lowerdir=${options.lowerdirs.join(':')}`];
  if (options.upperdir) opts.push(`upperdir=${options.upperdir}`, `workdir=${options.workdir}`);
  return { destination: options.target, type: 'overlay', source: 'overlay', options: opts };
}

// The kernel rejects mount data longer than a page.
const maxMountData = 4096;

/**
 * As root the system calls themselves (native/mount_calls.c), not the
 * mount/umount binaries: each of those is a fork of this process and an exec,
 * 10-20 ms on a container's start and teardown.
 */
const bySyscall = () => process.getuid?.() === 0;

export async function performMount(mount: Mount, cwd?: string): Promise<void> {
  const data = mount.options.join(',');
  if (data.length >= maxMountData) {
    throw new LazyrootError('FAILED_PRECONDITION', `mount ${mount.destination}: options are ${data.length} bytes, over the kernel's ${maxMountData}`);
  }
  // The syscall has no cwd of its own: relative dirs are made absolute, unless that makes the
  // options too long (many layers), which the binary then mounts from `cwd`.
  const absolute = cwd === undefined ? data : absoluteDirs(mount.options, cwd).join(',');
  if (bySyscall() && absolute.length < maxMountData) {
    try {
      await native().mountAsync(mount.source, mount.destination, mount.type, 0, absolute);
      return;
    } catch (err) {
      throw new LazyrootError('FAILED_PRECONDITION', `mount ${mount.type} on ${mount.destination}: ${(err as Error).message} (options ${absolute})`, { cause: err });
    }
  }
  try {
    await run('mount', ['-t', mount.type, mount.source, '-o', data, mount.destination], cwd ? { cwd } : {});
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim();
    throw new LazyrootError('FAILED_PRECONDITION', `mount ${mount.type} on ${mount.destination}: ${stderr || (err as Error).message}`, { cause: err });
  }
}

/** Overlay options with their directories resolved against `cwd`. */
function absoluteDirs(options: readonly string[], cwd: string): string[] {
  return options.map((o) => {
    const m = /^(lowerdir|upperdir|workdir)=(.*)$/.exec(o);
    if (!m) return o;
    return `${m[1]}=${m[2]!.split(':').map((d) => resolve(cwd, d)).join(':')}`;
  });
}

export async function unmount(target: string): Promise<void> {
  if (bySyscall()) {
    try {
      await native().umountAsync(target, 0);
      return;
    } catch (err) {
      const code = (err as { code?: string }).code;
      // EINVAL: not a mount point; ENOENT: not there at all. Either way nothing is mounted there.
      if (code === 'EINVAL' || code === 'ENOENT') return;
      throw new LazyrootError('IN_USE', `unmount ${target}: ${(err as Error).message}`, { cause: err });
    }
  }
  try {
    await run('umount', [target]);
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim() ?? '';
    if (/not mounted|no mount point/i.test(stderr)) return;
    throw new LazyrootError('IN_USE', `unmount ${target}: ${stderr || (err as Error).message}`, { cause: err });
  }
}

/** Mount points under (or at) a path, from /proc/self/mountinfo, deepest first. */
export async function mountsUnder(path: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const points = info
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    .map((p) => p.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8))))
    .filter((p) => p === path || p.startsWith(`${path}/`));
  return points.sort((a, b) => b.length - a.length);
}

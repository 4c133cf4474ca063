import { createRequire } from 'node:module';
import { constants } from 'node:os';

/**
 * The project's N-API addon (native/lazyroot_native.c): the system calls Node
 * does not expose. All act on the path itself, never following a final symlink;
 * failures throw Errors carrying the errno `code` (ENOENT, EEXIST, ENOTSUP…).
 */
export interface Native {
  /** mknod(2); `mode` includes the file type bits (S_IFCHR, S_IFBLK, S_IFIFO). */
  mknod(path: string, mode: number, major: number, minor: number): void;
  lsetxattr(path: string, name: string, value: Buffer): void;
  /** The attribute's value, or undefined when it is not set. */
  lgetxattr(path: string, name: string): Buffer | undefined;
  llistxattr(path: string): string[];
  lremovexattr(path: string, name: string): void;
  /** fcntl(fd, F_SETFD, FD_CLOEXEC): the descriptor is closed in every child this process starts. */
  closeOnExec(fd: number): void;
  /**
   * Sets atime and mtime with nanoseconds: utimensat(AT_SYMLINK_NOFOLLOW) on a
   * path (a symlink's own times), futimens on a descriptor. Seconds may be
   * negative; nanoseconds are 0..999999999.
   */
  utimens(target: string | number, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void;
  /**
   * True once a fuse_new has gone through the addon's wrapper
   * (native/fuse_times.c): getattr answers may then carry exact times.
   */
  fuseExactTimes(): boolean;
  /** mount(2) on libuv's thread pool (native/mount_calls.c); rejects with the errno's name as `code`. */
  mountAsync(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): Promise<void>;
  /** umount2(2) on libuv's thread pool; `flags` e.g. MNT_DETACH. */
  umountAsync(target: string, flags: number): Promise<void>;
}

/** umount2's lazy flag: detached now, gone once no longer busy (`umount -l`, `fusermount -z`). */
export const MNT_DETACH = 2;

export const S_IFIFO = 0o010000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;

let loaded: Native | undefined;

/**
 * Loads the addon on first use (built by `npm run build` into build/Release).
 * RTLD_GLOBAL: its `fuse_new` must be the one fuse-native's binding finds
 * (native/fuse_times.c).
 */
export function native(): Native {
  if (!loaded) {
    const require = createRequire(import.meta.url);
    // dist/src/native.js → ../../build/Release
    const module = { exports: {} as Native };
    process.dlopen(module, require.resolve('../../build/Release/lazyroot_native.node'), constants.dlopen.RTLD_NOW | constants.dlopen.RTLD_GLOBAL);
    loaded = module.exports;
  }
  return loaded;
}

/** glibc's major()/minor() for a Linux dev_t as Node reports it in `Stats.rdev`. */
export function devMajor(rdev: number): number {
  return ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
}
export function devMinor(rdev: number): number {
  return (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
}

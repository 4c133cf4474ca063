import { constants } from 'node:os';
import Fuse from 'fuse-native';
import type { FuseOperations, FuseOptions, FuseSignal, FuseStat } from 'fuse-native';
import { MNT_DETACH, native } from '../native.js';

const { ERANGE, ENODATA } = constants.errno;

// fuse-native copies the -o string into a 1024-byte buffer and silently cuts it there.
const maxOptionsLength = 1023;

/**
 * fuse-native's Fuse with what it lacks for an exact filesystem:
 * - mount options it has no switch for (`use_ino`, `ro`, `negative_timeout`…),
 *   appended to the `-o` string it builds;
 * - getxattr/listxattr with the kernel's size rules: a zero-size buffer asks
 *   for the size, a too-small one gets ERANGE. fuse-native copies into the
 *   buffer without looking at its size (and pads listxattr's size by 128),
 *   which libfuse then replies with past the end of the buffer.
 * - stat times with nanoseconds and before 1970: fuse-native carries them as
 *   unsigned milliseconds. getattr answers with `exactTime` are encoded for
 *   the addon's fuse_new wrapper (native/fuse_times.c), which rewrites the
 *   struct stat fuse-native fills (native-notes/fuse-native.md, "Stat times").
 * The overrides use fuse-native internals: its version is pinned.
 */
export class FuseBinding extends Fuse {
  private readonly extraOptions: readonly string[];

  constructor(mountpoint: string, ops: FuseOperations, options: FuseOptions, extraOptions: readonly string[]) {
    native(); // loaded (RTLD_GLOBAL) before fuse-native's binding first calls fuse_new: its wrapper is the one called
    super(mountpoint, ops, options);
    this.extraOptions = extraOptions;
  }

  protected override _op_getattr(signal: FuseSignal, path: string): void {
    this.ops.getattr!(path, (err, stat) => (err ? signal(err, statArray()) : signal(0, statArray(stat))));
  }

  protected override _op_fgetattr(signal: FuseSignal, path: string): void {
    this.ops.getattr!(path, (err, stat) => (err ? signal(err) : signal(0, statArray(stat))));
  }

  /** The `-o` argument as fuse-native passes it to libfuse. */
  mountOptions(): string {
    return this._fuseOptions();
  }

  protected override _fuseOptions(): string {
    const base = super._fuseOptions(); // '' or '-oa,b'
    const all = [base.slice(2), ...this.extraOptions].filter((o) => o !== '').join(',');
    if (all.length + 2 > maxOptionsLength) throw new Error(`FUSE options are ${all.length + 2} bytes, over fuse-native's ${maxOptionsLength}`);
    return all === '' ? '' : `-o${all}`;
  }

  protected override _op_getxattr(signal: FuseSignal, path: string, name: string, valueBuf: Buffer, position: number): void {
    this.ops.getxattr!(path, name, position, (err, value) => {
      if (err < 0) return signal(err, valueBuf.buffer);
      if (!value) return signal(-ENODATA, valueBuf.buffer);
      if (valueBuf.length === 0) return signal(value.length, valueBuf.buffer);
      if (value.length > valueBuf.length) return signal(-ERANGE, valueBuf.buffer);
      value.copy(valueBuf);
      return signal(value.length, valueBuf.buffer);
    });
  }

  protected override _op_listxattr(signal: FuseSignal, path: string, listBuf: Buffer): void {
    this.ops.listxattr!(path, (err, names) => {
      if (err < 0) return signal(err, listBuf.buffer);
      let size = 0;
      for (const name of names ?? []) size += Buffer.byteLength(name) + 1;
      if (listBuf.length === 0) return signal(size, listBuf.buffer);
      if (size > listBuf.length) return signal(-ERANGE, listBuf.buffer);
      let at = 0;
      for (const name of names ?? []) {
        at += listBuf.write(name, at);
        listBuf[at++] = 0;
      }
      return signal(size, listBuf.buffer);
    });
  }
}

/** In st_dev, which libfuse never sends to the kernel: "the times are exact" (native/fuse_times.c). */
const exactTimesTag = 0x6c7a7274;
let exactTimes = false;

/**
 * fuse-native's getStatArray (index.js), 18 words: mode, uid, gid, size (2),
 * dev, nlink, ino, rdev, blksize, blocks (2), atime (2), mtime (2), ctime (2);
 * each 2-word field is low, high. Times are milliseconds there; with
 * `exactTime` and the addon's wrapper in place, the atime pair holds the
 * nanoseconds, the mtime pair the seconds (64-bit two's complement) and
 * st_dev the tag.
 */
function statArray(stat?: FuseStat): Uint32Array {
  const ints = new Uint32Array(18);
  if (!stat) {
    ints[6] = 1;
    return ints;
  }
  ints[0] = stat.mode;
  ints[1] = stat.uid ?? 0;
  ints[2] = stat.gid ?? 0;
  setWords(ints, 3, stat.size ?? 0);
  ints[5] = stat.dev ?? 0;
  ints[6] = stat.nlink ?? 1;
  ints[7] = stat.ino ?? 0;
  ints[8] = stat.rdev ?? 0;
  ints[9] = stat.blksize ?? 0;
  setWords(ints, 10, stat.blocks ?? 0);
  const exact = stat.exactTime;
  if (exact && (exactTimes ||= native().fuseExactTimes())) {
    ints[5] = exactTimesTag;
    setWords(ints, 12, exact.nsec);
    const sec = BigInt.asUintN(64, BigInt(exact.sec));
    ints[14] = Number(sec & 0xffffffffn);
    ints[15] = Number(sec >> 32n);
    return ints;
  }
  setWords(ints, 12, millis(stat.atime));
  setWords(ints, 14, millis(stat.mtime));
  setWords(ints, 16, millis(stat.ctime));
  return ints;
}

function setWords(ints: Uint32Array, at: number, value: number): void {
  ints[at] = value % 2 ** 32;
  ints[at + 1] = Math.floor(value / 2 ** 32);
}

/** As fuse-native: a number is milliseconds, a Date its time, nothing is now; never below 0 (unsigned). */
function millis(time: number | Date | undefined): number {
  const ms = time === undefined ? Date.now() : typeof time === 'number' ? time : time.getTime();
  return Math.max(0, Math.floor(ms));
}

/**
 * fuse-native unmounts (and clears a dead mount before mounting) with
 * `exec('fusermount -uz MNT')`: a shell and fusermount forked from this big
 * process. As root, umount2(MNT_DETACH) is the same lazy unmount without
 * either (native/mount_calls.c); others keep fusermount, which is setuid.
 */
const unmountByFusermount = Fuse.unmount.bind(Fuse);
Fuse.unmount = (mountpoint: string, cb: (err: Error | null) => void): void => {
  if (process.getuid?.() !== 0) return unmountByFusermount(mountpoint, cb);
  native()
    .umountAsync(mountpoint, MNT_DETACH)
    .then(
      () => cb(null),
      (err: Error) => cb(err),
    );
};

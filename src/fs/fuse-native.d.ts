/**
 * Types for the parts of fuse-native 2.2.6 (CommonJS, ships no types) that
 * src/fs uses. Callbacks take a number: >= 0 is success (a byte count for
 * read/getxattr/listxattr), < 0 is -errno. The underscore members are
 * internals that src/fs/fuse-binding.ts overrides; the version is pinned in
 * package.json because of them (see native-notes/fuse-native.md).
 */
declare module 'fuse-native' {
  /** What getStatArray reads; times are milliseconds since the epoch. */
  export interface FuseStat {
    mode: number;
    uid?: number;
    gid?: number;
    size?: number;
    dev?: number;
    nlink?: number;
    /** 32 bits: fuse-native passes stat fields as a Uint32Array. */
    ino?: number;
    rdev?: number;
    blksize?: number;
    blocks?: number;
    atime?: number | Date;
    mtime?: number | Date;
    ctime?: number | Date;
    /**
     * Not fuse-native's: atime, mtime and ctime with nanoseconds, seconds may
     * be negative. FuseBinding passes it exactly (native/fuse_times.c); the
     * millisecond fields above are the fallback.
     */
    exactTime?: { sec: number; nsec: number };
  }

  export interface FuseStatfs {
    bsize: number;
    frsize: number;
    blocks: number;
    bfree: number;
    bavail: number;
    files: number;
    ffree: number;
    favail: number;
    fsid: number;
    flag: number;
    namemax: number;
  }

  type Done = (result: number) => void;

  export interface FuseOperations {
    init?(cb: Done): void;
    getattr?(path: string, cb: (err: number, stat?: FuseStat) => void): void;
    readdir?(path: string, cb: (err: number, names?: string[], stats?: FuseStat[]) => void): void;
    open?(path: string, flags: number, cb: (err: number, fh?: number) => void): void;
    opendir?(path: string, flags: number, cb: (err: number, fh?: number) => void): void;
    read?(path: string, fh: number, buf: Buffer, len: number, position: number, cb: Done): void;
    release?(path: string, fh: number, cb: Done): void;
    releasedir?(path: string, fh: number, cb: Done): void;
    readlink?(path: string, cb: (err: number, target?: string) => void): void;
    statfs?(path: string, cb: (err: number, statfs?: FuseStatfs) => void): void;
    getxattr?(path: string, name: string, position: number, cb: (err: number, value?: Buffer) => void): void;
    listxattr?(path: string, cb: (err: number, names?: string[]) => void): void;
    write?(path: string, fh: number, buf: Buffer, len: number, position: number, cb: Done): void;
    create?(path: string, mode: number, cb: (err: number, fh?: number) => void): void;
    truncate?(path: string, size: number, cb: Done): void;
    ftruncate?(path: string, fh: number, size: number, cb: Done): void;
    unlink?(path: string, cb: Done): void;
    rename?(src: string, dest: string, cb: Done): void;
    link?(src: string, dest: string, cb: Done): void;
    symlink?(target: string, path: string, cb: Done): void;
    mkdir?(path: string, mode: number, cb: Done): void;
    rmdir?(path: string, cb: Done): void;
    chmod?(path: string, mode: number, cb: Done): void;
    chown?(path: string, uid: number, gid: number, cb: Done): void;
    utimens?(path: string, atime: number, mtime: number, cb: Done): void;
    mknod?(path: string, mode: number, dev: number, cb: Done): void;
    setxattr?(path: string, name: string, value: Buffer, position: number, flags: number, cb: Done): void;
    removexattr?(path: string, name: string, cb: Done): void;
  }

  /** Milliseconds, per operation with a `default`, or false for none (fuse-native's default is 15 000). */
  export type FuseTimeout = number | false | ({ default?: number } & Partial<Record<keyof FuseOperations, number | false>>);

  export interface FuseOptions {
    timeout?: FuseTimeout;
    debug?: boolean;
    allowOther?: boolean;
    allowRoot?: boolean;
    defaultPermissions?: boolean;
    kernelCache?: boolean;
    autoCache?: boolean;
    /** Seconds. */
    attrTimeout?: number;
    entryTimeout?: number;
    fsname?: string;
    subtype?: string;
    maxRead?: number;
    force?: boolean;
    mkdir?: boolean;
  }

  /** The `signal` fuse-native hands its internal `_op_*` handlers: (result, ...payload). */
  export type FuseSignal = (result: number, ...payload: unknown[]) => void;

  export default class Fuse {
    constructor(mountpoint: string, ops: FuseOperations, options?: FuseOptions);
    readonly mnt: string;
    /** Looked up on each operation: replacing it switches the operations of a live mount (lazy-fs.ts openMount). */
    ops: FuseOperations;
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    static unmount(mountpoint: string, cb: (err: Error | null) => void): void;

    /** Internal: the `-o…` argument it passes to fuse_mount/fuse_new. */
    protected _fuseOptions(): string;
    /** Internal: getxattr with the kernel's buffer (length 0 for a size probe). */
    protected _op_getxattr(signal: FuseSignal, path: string, name: string, valueBuf: Buffer, position: number): void;
    /** Internal: listxattr with the kernel's buffer (length 0 for a size probe). */
    protected _op_listxattr(signal: FuseSignal, path: string, listBuf: Buffer): void;
    /** Internal: getattr, answered with the stat as a Uint32Array(18). */
    protected _op_getattr(signal: FuseSignal, path: string): void;
    /** Internal: fgetattr (fstat of an open file), answered likewise. */
    protected _op_fgetattr(signal: FuseSignal, path: string, fd: number): void;
  }
}

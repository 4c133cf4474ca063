import { constants } from 'node:os';
import { constants as fsConstants } from 'node:fs';
import { readdir } from 'node:fs/promises';
import type { FuseOperations, FuseStat, FuseStatfs } from 'fuse-native';
import { LazyrootError } from '../errors.js';
import { createToErrno, type FsLogger } from './errno.js';
import { FuseBinding } from './fuse-binding.js';
import { cleanStaleMount, mountpointState } from './stale-mount.js';
import { keepFuseDescriptorsPrivate } from './fuse-descriptors.js';
import { fileTypeBits, type FsNode, type FsTree } from './tree.js';

const { ENOENT, EROFS, EISDIR, ENOTDIR, EINVAL, EIO } = constants.errno;

/** Where file bytes come from: the lazy layer reader, a cache, or memory in tests. */
export interface FileReader {
  /**
   * Bytes [position, position + length) of a regular file. The range lies
   * inside the file and the answer must hold all `length` bytes: a short
   * answer is served as EIO, never as a short read the kernel would take
   * for end of file. May return a view into a cache: it is copied once,
   * straight into fuse's buffer, before the promise's turn ends.
   */
  read(node: FsNode, position: number, length: number): Promise<Buffer>;
}

export interface MountTreeOptions {
  /** Let users other than the mounter in, their modes checked by the kernel (allow_other). Default true. */
  allowOther?: boolean;
  /** libfuse's debug output on stderr. */
  debug?: boolean;
  /** A read with no bytes after this long fails with EIO; other operations get fuse-native's ETIMEDOUT. Default 30 000. */
  timeoutMs?: number;
  /** Source column of the mount table (fsname=); the type shows as fuse.lazyroot. Default 'lazyroot'. */
  fsName?: string;
  /** Where the detail of each failure goes (errno mapping logs it once). */
  logger?: FsLogger;
}

export interface FsStats {
  reads: number;
  bytesServed: number;
  /** Reads answered with an errno, timeouts included. */
  errors: number;
  timeouts: number;
  inFlight: number;
}

export interface MountedTree {
  readonly mountpoint: string;
  /** Lazy unmount: returns once the mount is gone from the namespace. */
  unmount(): Promise<void>;
  stats(): FsStats;
}

// The layers are immutable: the kernel may keep what it has learnt for as long as it likes.
const cacheSeconds = 24 * 60 * 60;
const defaultTimeoutMs = 30_000;
const blockSize = 4096;
// O_ACCMODE of Linux, which Node's fs.constants leaves out.
const accessModeMask = 0o3;

/**
 * Mounts `tree` read-only at `mountpoint` with fuse-native, file bytes read
 * through `reader` when the kernel asks for them. A stale FUSE mount left at
 * the mountpoint by a killed process is cleaned first; a live one is refused.
 */
export async function mountTree(tree: FsTree, mountpoint: string, reader: FileReader, options: MountTreeOptions = {}): Promise<MountedTree> {
  return (await openMount(mountpoint, options)).serve(tree, reader);
}

/** A FUSE mount made before its tree is known (openMount). */
export interface OpenMount {
  /** Serves `tree` through `reader` from now on; operations that came before are answered now. Once. */
  serve(tree: FsTree, reader: FileReader): MountedTree;
  /** Unmounts a mount never served; operations waiting for its tree get EIO. */
  abandon(): Promise<void>;
}

/**
 * Makes the FUSE mount at `mountpoint` before its tree exists: the kernel's
 * side of a mount (fuse-native's stats, mount(2), the INIT exchange: 25-45 ms
 * on the bench machine) then runs while the caller is still fetching and
 * merging the layers' indexes. Until `serve`, an operation waits for the tree
 * (fuse-native's operation timeout still bounds it); nothing but the caller
 * knows the mountpoint yet, so none is expected.
 */
export async function openMount(mountpoint: string, options: MountTreeOptions = {}): Promise<OpenMount> {
  const timeoutMs = options.timeoutMs ?? defaultTimeoutMs;
  const fsName = options.fsName ?? 'lazyroot';
  checkMountArgs(mountpoint, fsName, timeoutMs);

  const state = await mountpointState(mountpoint);
  if (state === 'live') throw new LazyrootError('IN_USE', `mount ${mountpoint}: a FUSE filesystem is mounted there already`);
  if (state === 'stale') await cleanStaleMount(mountpoint);
  // libfuse refuses a non-empty mountpoint and says why only on stderr ("fuse failed" reaches us).
  const present = await readdir(mountpoint).catch((err: NodeJS.ErrnoException) => {
    throw new LazyrootError(err.code === 'ENOENT' ? 'NOT_FOUND' : 'FAILED_PRECONDITION', `mount ${mountpoint}: ${err.code === 'ENOENT' ? 'no such directory' : err.message}`, { cause: err });
  });
  if (present.length > 0) throw new LazyrootError('FAILED_PRECONDITION', `mount ${mountpoint}: the mountpoint is not empty (${present.length} entries, e.g. ${JSON.stringify(present[0])})`);

  const toErrno = createToErrno(options.logger);
  const counters: FsStats = { reads: 0, bytesServed: 0, errors: 0, timeouts: 0, inFlight: 0 };
  const waiting = new WaitingOps();

  const fuse = new FuseBinding(
    mountpoint,
    waiting.ops,
    {
      // Reads keep their own deadline (EIO); the rest answer at once, the timeout only guards against a bug.
      timeout: { default: timeoutMs, read: false },
      debug: options.debug ?? false,
      allowOther: options.allowOther ?? true,
      defaultPermissions: true,
      kernelCache: true,
      attrTimeout: cacheSeconds,
      entryTimeout: cacheSeconds,
      fsname: fsName,
      subtype: 'lazyroot',
    },
    // use_ino: st_ino is ours, so hardlinks share it; ro: the kernel refuses writes before they reach us.
    ['use_ino', 'readdir_ino', 'ro', `negative_timeout=${cacheSeconds}`],
  );

  await new Promise<void>((resolve, reject) => {
    fuse.mount((err) => {
      if (!err) {
        keepFuseDescriptorsPrivate();
        return resolve();
      }
      reject(new LazyrootError('FAILED_PRECONDITION', `mount FUSE at ${mountpoint} (options ${fuse.mountOptions()}): ${err.message}`, { cause: err }));
    });
  });

  let unmounted: Promise<void> | undefined;
  const unmount = () =>
    (unmounted ??= new Promise<void>((resolve, reject) => {
      fuse.unmount((err) => {
        if (!err) return resolve();
        unmounted = undefined; // a later call may try again
        reject(new LazyrootError('IN_USE', `unmount FUSE at ${mountpoint}: ${err.message}`, { cause: err }));
      });
    }));
  let served = false;
  return {
    serve(tree, reader) {
      if (served) throw new Error(`mount ${mountpoint}: served twice`);
      served = true;
      // fuse-native looks its operations up on each call: from here on they go straight to the tree's.
      fuse.ops = { ...metadataOps(tree), ...readOnlyOps(), read: readOp(tree, reader, counters, toErrno, timeoutMs) };
      waiting.release(fuse.ops);
      return { mountpoint: fuse.mnt, stats: () => ({ ...counters }), unmount };
    },
    async abandon() {
      if (served) return;
      served = true;
      waiting.release(undefined);
      await unmount();
    },
  };
}

/**
 * The operations of a mount whose tree is not served yet: each call is held
 * until `release`, then made on the tree's operations (or answered EIO when
 * there are none). The same names as the served operations: fuse-native
 * tells the kernel which operations exist when it mounts.
 */
class WaitingOps {
  private held: Array<(ops: FuseOperations | undefined) => void> = [];
  readonly ops: FuseOperations;

  constructor() {
    const ops: Record<string, (...args: unknown[]) => void> = {};
    for (const name of operationNames) {
      ops[name] = (...args: unknown[]) => {
        this.held.push((served) => {
          const op = served?.[name as keyof FuseOperations] as ((...a: unknown[]) => void) | undefined;
          if (op) op(...args);
          else (args[args.length - 1] as (errno: number) => void)(-EIO);
        });
      };
    }
    this.ops = ops as FuseOperations;
  }

  release(served: FuseOperations | undefined): void {
    const held = this.held;
    this.held = [];
    for (const call of held) call(served);
  }
}

/** What a served mount implements (metadataOps, readOnlyOps, read); making the operations touches no tree. */
const operationNames: readonly string[] = Object.keys({ ...metadataOps(undefined as unknown as FsTree), ...readOnlyOps(), read: undefined });

function checkMountArgs(mountpoint: string, fsName: string, timeoutMs: number): void {
  // fuse-native unmounts with `exec('fusermount -uz "<path>"')`: $ and ` would reach the shell.
  if (/[$`\n]/.test(mountpoint)) throw new LazyrootError('INVALID_ARGUMENT', `mount ${JSON.stringify(mountpoint)}: $, \` and newlines are not allowed in a FUSE mountpoint`);
  // fsname goes into libfuse's comma-separated option string as is.
  if (!/^[\w.:@/+-]+$/.test(fsName)) throw new LazyrootError('INVALID_ARGUMENT', `mount ${mountpoint}: fsName ${JSON.stringify(fsName)} may hold only letters, digits and . _ : @ / + -`);
  if (!(Number.isInteger(timeoutMs) && timeoutMs > 0)) throw new LazyrootError('INVALID_ARGUMENT', `mount ${mountpoint}: timeoutMs must be a positive integer, not ${timeoutMs}`);
}

/** getattr, lookups, directories, links, xattrs, statfs: answered from the tree at once. */
function metadataOps(tree: FsTree): FuseOperations {
  return {
    getattr(path, cb) {
      const node = tree.lookup(path);
      if (!node) return cb(-ENOENT);
      cb(0, statOf(node));
    },
    opendir(path, _flags, cb) {
      const node = tree.lookup(path);
      if (!node) return cb(-ENOENT);
      if (node.type !== 'dir') return cb(-ENOTDIR);
      cb(0, node.ino);
    },
    readdir(path, cb) {
      const node = tree.lookup(path);
      if (!node) return cb(-ENOENT);
      if (!node.children) return cb(-ENOTDIR);
      const parent = path === '/' ? node : tree.lookup(path.slice(0, path.lastIndexOf('/')) || '/');
      // Stats give readdir its d_ino and d_type (with use_ino); only those two fields are read.
      const names = ['.', '..'];
      const stats: FuseStat[] = [direntOf(node), direntOf(parent ?? node)];
      for (const [name, child] of node.children) {
        names.push(name);
        stats.push(direntOf(child));
      }
      cb(0, names, stats);
    },
    releasedir(_path, _fh, cb) {
      cb(0);
    },
    open(path, flags, cb) {
      const node = tree.lookup(path);
      if (!node) return cb(-ENOENT);
      if (node.type === 'dir') return cb(-EISDIR);
      if ((flags & accessModeMask) !== fsConstants.O_RDONLY || flags & fsConstants.O_TRUNC) return cb(-EROFS);
      cb(0, node.ino); // the handle is the inode number: read finds its node by index, not by path
    },
    release(_path, _fh, cb) {
      cb(0);
    },
    readlink(path, cb) {
      const node = tree.lookup(path);
      if (!node) return cb(-ENOENT);
      if (node.type !== 'symlink') return cb(-EINVAL);
      cb(0, node.target);
    },
    getxattr(path, name, _position, cb) {
      const node = tree.lookup(path);
      if (!node) return cb(-ENOENT);
      cb(0, node.xattrs.get(name)); // undefined: ENODATA, in FuseBinding
    },
    listxattr(path, cb) {
      const node = tree.lookup(path);
      if (!node) return cb(-ENOENT);
      cb(0, [...node.xattrs.keys()]);
    },
    statfs(_path, cb) {
      cb(0, statfsOf(tree));
    },
  };
}

/** Every operation that would change the tree: EROFS (the `ro` mount already stops most in the kernel). */
function readOnlyOps(): FuseOperations {
  const refuse = (...args: unknown[]): void => (args[args.length - 1] as (n: number) => void)(-EROFS);
  return {
    write: refuse,
    create: refuse,
    truncate: refuse,
    ftruncate: refuse,
    unlink: refuse,
    rename: refuse,
    link: refuse,
    symlink: refuse,
    mkdir: refuse,
    rmdir: refuse,
    chmod: refuse,
    chown: refuse,
    utimens: refuse,
    mknod: refuse,
    setxattr: refuse,
    removexattr: refuse,
  };
}

/**
 * The hot path. Per read: one promise from the reader, one timer for the
 * deadline, one copy into fuse's buffer. Context strings for the log are
 * built only when a read fails.
 */
function readOp(
  tree: FsTree,
  reader: FileReader,
  counters: FsStats,
  toErrno: (err: unknown, context: string) => number,
  timeoutMs: number,
): NonNullable<FuseOperations['read']> {
  return (path, fh, buf, len, position, cb) => {
    const node = tree.node(fh) ?? tree.lookup(path);
    if (!node) return cb(-ENOENT);
    if (node.type !== 'file') return cb(-EISDIR);
    if (position >= node.size || len === 0) return cb(0);
    const length = Math.min(len, node.size - position);

    answerRead(() => reader.read(node, position, length), buf, length, cb, counters, timeoutMs, (err) => toErrno(err, `read ${path} [${position}, ${position + length})`));
  };
}

/**
 * Answers a FUSE read with what `read()` resolves to, copied into fuse's
 * `buf`, or an errno: within `timeoutMs` (then EIO via UNAVAILABLE, and a
 * late answer is dropped), a short answer as EIO (the kernel would read it as
 * EOF and zero-fill), counted in `counters`. Shared by every lazy filesystem.
 */
export function answerRead(
  read: () => Promise<Buffer>,
  buf: Buffer,
  length: number,
  cb: (result: number) => void,
  counters: FsStats,
  timeoutMs: number,
  errnoOf: (err: unknown) => number,
): void {
  counters.reads++;
  counters.inFlight++;
  let answered = false;
  const fail = (err: unknown): void => {
    counters.errors++;
    cb(errnoOf(err));
  };
  // After the answer fuse-native detaches `buf`: a late reader can no longer write into fuse's memory.
  const timer = setTimeout(() => {
    answered = true;
    counters.inFlight--;
    counters.timeouts++;
    fail(new LazyrootError('UNAVAILABLE', `no bytes after ${timeoutMs} ms`));
  }, timeoutMs);
  let pending: Promise<Buffer>;
  try {
    pending = read();
  } catch (err) {
    pending = Promise.reject(err);
  }
  pending.then(
    (data) => {
      if (answered) return;
      answered = true;
      clearTimeout(timer);
      counters.inFlight--;
      if (data.length < length) return fail(new LazyrootError('SIZE_MISMATCH', `the reader gave ${data.length} of ${length} bytes`));
      data.copy(buf, 0, 0, length);
      counters.bytesServed += length;
      cb(length);
    },
    (err: unknown) => {
      if (answered) return;
      answered = true;
      clearTimeout(timer);
      counters.inFlight--;
      fail(err);
    },
  );
}

export function statOf(node: FsNode): FuseStat {
  // fuse-native carries times as unsigned milliseconds; FuseBinding passes exactTime when it can.
  const ms = Math.max(0, node.mtime * 1000 + Math.floor(node.mtimeNsec / 1e6));
  return {
    mode: fileTypeBits[node.type] | node.mode,
    uid: node.uid,
    gid: node.gid,
    size: node.size,
    nlink: node.nlink,
    ino: node.ino,
    rdev: node.rdev,
    blksize: blockSize,
    blocks: Math.ceil(node.size / 512),
    atime: ms,
    mtime: ms,
    ctime: ms,
    exactTime: { sec: node.mtime, nsec: node.mtimeNsec },
  };
}

export function direntOf(node: FsNode): FuseStat {
  return { mode: fileTypeBits[node.type], ino: node.ino };
}

function statfsOf(tree: FsTree): FuseStatfs {
  return {
    bsize: blockSize,
    frsize: blockSize,
    blocks: Math.ceil(tree.totalBytes / blockSize),
    bfree: 0,
    bavail: 0,
    files: tree.nodeCount,
    ffree: 0,
    favail: 0,
    fsid: 0,
    flag: 1, // ST_RDONLY
    namemax: 255,
  };
}

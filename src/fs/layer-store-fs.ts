import { constants } from 'node:os';
import { constants as fsConstants } from 'node:fs';
import { readdir } from 'node:fs/promises';
import type { FuseOperations, FuseStat } from 'fuse-native';
import { LazyrootError } from '../errors.js';
import { createToErrno, type FsLogger } from './errno.js';
import { FuseBinding } from './fuse-binding.js';
import { answerRead, direntOf, statOf, type FsStats, type MountedTree } from './lazy-fs.js';
import { cleanStaleMount, mountpointState } from './stale-mount.js';
import { keepFuseDescriptorsPrivate } from './fuse-descriptors.js';
import type { FsNode, FsTree } from './tree.js';

const { ENOENT, EROFS, EISDIR, ENOTDIR, EINVAL, EACCES } = constants.errno;

/** One layer as the layer store shows it: `diff/` (overlay lower format), `info`, `blob`. */
export interface ServedLayer {
  /** The layer's files in overlayfs lower-directory format. */
  readonly diff: FsTree;
  /** containers/storage's Layer JSON. */
  readonly info: Buffer;
  /** Size of the compressed blob. */
  readonly blobSize: number;
  /** Bytes [position, position + length) of a regular file of `diff`, verified; all of them. */
  readFile(node: FsNode, position: number, length: number): Promise<Buffer>;
  /** Bytes [start, end) of the compressed blob, verified; all of them. */
  readBlob(start: number, end: number): Promise<Buffer>;
  /** A file of the layer was opened: the layer must stay open until `unhold`. */
  hold(): void;
  unhold(): void;
}

/**
 * What the layer store serves, found by the image reference and the layer's
 * compressed digest its path names. The filesystem knows nothing of
 * registries: it asks for layers and reports use.
 */
export interface LayerStoreBackend {
  /** The layer when it is open already (the common case: no promise). */
  peek(imageRef: string, digest: string): ServedLayer | undefined;
  /** Opens the layer; NOT_FOUND when the image has no layer with that digest. */
  open(imageRef: string, digest: string): Promise<ServedLayer>;
  /** containers/storage created `use` in the layer's directory: one more user. */
  use(imageRef: string, digest: string): void;
  /** containers/storage removed the layer's directory: one user fewer. */
  release(imageRef: string, digest: string): void;
}

export interface LayerStoreFsOptions {
  allowOther?: boolean;
  debug?: boolean;
  /** A read with no bytes after this long fails with EIO. Default 30 000. */
  readTimeoutMs?: number;
  logger?: FsLogger;
}

const cacheSeconds = 24 * 60 * 60;
const blockSize = 4096;
const accessModeMask = 0o3;
// A lookup may open a layer (manifest, index, or a whole plain gzip layer streamed once): fuse-native's
// silent 15 s default would fail it. Reads keep their own deadline.
const operationTimeoutMs = 10 * 60_000;

/** `sha256:<64 hex>` and the like: the one path component that names a layer. */
const digestPattern = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$/;
/** A piece of a standard-base64 reference (containers/storage does not escape its '/'). */
const base64Piece = /^[A-Za-z0-9+=]+$/;

/** What a path of the layer store names. */
type Place =
  | { kind: 'root' }
  | { kind: 'prefix' }
  /** `sub`: the path below the layer's directory ('' for the directory, '/diff/bin/sh'…). */
  | { kind: 'layer'; ref: string; digest: string; sub: string }
  | { kind: 'none' };

const rootPlace: Place = { kind: 'root' };
const prefixPlace: Place = { kind: 'prefix' };
const nowhere: Place = { kind: 'none' };
/** Encoded reference → reference ('' when it is not canonical base64): a handful of images, decoded once each. */
const decodedRefs = new Map<string, string>();
const maxDecodedRefs = 4096;

function decodeRef(encoded: string): string {
  let ref = decodedRefs.get(encoded);
  if (ref !== undefined) return ref;
  ref = encoded.split('/').every((p) => base64Piece.test(p)) ? Buffer.from(encoded, 'base64').toString('utf8') : '';
  if (ref !== '' && Buffer.from(ref, 'utf8').toString('base64') !== encoded) ref = '';
  if (decodedRefs.size < maxDecodedRefs) decodedRefs.set(encoded, ref);
  return ref;
}

/**
 * `<base64 of the image reference>/<compressed digest>/…`: containers/storage
 * joins the standard base64 of the reference (which may hold '/') and the
 * digest, so the reference is every component before the first that reads as
 * a digest. Directories on the way to it are shown as they are asked for.
 * Called for every operation but reads: one pass over the path, decoded
 * references remembered.
 */
export function placeOf(path: string): Place {
  if (path === '/') return rootPlace;
  // The first component holding ':' is the only candidate for the digest (base64 has none).
  const colon = path.indexOf(':');
  if (colon < 0) return path.split('/').every((p, i) => i === 0 || base64Piece.test(p)) ? prefixPlace : nowhere;
  const start = path.lastIndexOf('/', colon);
  let end = path.indexOf('/', colon);
  if (end < 0) end = path.length;
  const digest = path.slice(start + 1, end);
  if (start === 0 || !digestPattern.test(digest)) return nowhere; // start 0: a digest alone (a store without `:ref`)
  const ref = decodeRef(path.slice(1, start));
  if (ref === '') return nowhere;
  return { kind: 'layer', ref, digest, sub: path.slice(end) };
}

/** An open file: a file of `diff/`, `info` or `blob` of a layer. */
interface Handle {
  layer: ServedLayer;
  node: FsNode | undefined;
  kind: 'file' | 'info' | 'blob';
}

/**
 * Mounts an additional layer store (containers/storage's
 * `additionallayerstores`) at `mountpoint`: layers appear when they are looked
 * up, served by `backend`. Read-only but for the two notifications
 * containers/storage sends: creating `<layer>/use` (a use; answered ENOENT, as
 * it expects of a store that counts) and removing `<layer>` (a release;
 * ENOENT likewise).
 */
export async function mountLayerStore(mountpoint: string, backend: LayerStoreBackend, options: LayerStoreFsOptions = {}): Promise<MountedTree> {
  if (/[$`\n]/.test(mountpoint)) throw new LazyrootError('INVALID_ARGUMENT', `layer store ${JSON.stringify(mountpoint)}: $, \` and newlines are not allowed in a FUSE mountpoint`);
  const state = await mountpointState(mountpoint);
  if (state === 'live') throw new LazyrootError('IN_USE', `layer store ${mountpoint}: a FUSE filesystem is mounted there already`);
  if (state === 'stale') await cleanStaleMount(mountpoint);
  const present = await readdir(mountpoint).catch((err: NodeJS.ErrnoException) => {
    throw new LazyrootError(err.code === 'ENOENT' ? 'NOT_FOUND' : 'FAILED_PRECONDITION', `layer store ${mountpoint}: ${err.code === 'ENOENT' ? 'no such directory' : err.message}`, { cause: err });
  });
  if (present.length > 0) throw new LazyrootError('FAILED_PRECONDITION', `layer store ${mountpoint}: the mountpoint is not empty (${present.length} entries)`);

  const toErrno = createToErrno(options.logger);
  const counters: FsStats = { reads: 0, bytesServed: 0, errors: 0, timeouts: 0, inFlight: 0 };
  const ops = layerStoreOps(backend, counters, toErrno, options.readTimeoutMs ?? 30_000);
  const fuse = new FuseBinding(
    mountpoint,
    ops,
    {
      timeout: { default: operationTimeoutMs, read: false },
      debug: options.debug ?? false,
      allowOther: options.allowOther ?? true,
      defaultPermissions: true,
      kernelCache: true,
      attrTimeout: cacheSeconds,
      entryTimeout: cacheSeconds,
      fsname: 'lazyroot-layer-store',
      subtype: 'lazyroot',
    },
    // Not `ro`: the kernel would refuse the `use` create and the release rmdir before we see them.
    // No `use_ino`: layers number their inodes from 1 each; libfuse's own numbers keep them apart.
    [],
  );
  await new Promise<void>((resolve, reject) => {
    fuse.mount((err) => {
      if (!err) {
        keepFuseDescriptorsPrivate();
        return resolve();
      }
      reject(new LazyrootError('FAILED_PRECONDITION', `mount the layer store at ${mountpoint} (options ${fuse.mountOptions()}): ${err.message}`, { cause: err }));
    });
  });
  let unmounted: Promise<void> | undefined;
  return {
    mountpoint: fuse.mnt,
    stats: () => ({ ...counters }),
    unmount: () =>
      (unmounted ??= new Promise<void>((resolve, reject) => {
        fuse.unmount((err) => {
          if (!err) return resolve();
          unmounted = undefined;
          reject(new LazyrootError('IN_USE', `unmount the layer store at ${mountpoint}: ${err.message}`, { cause: err }));
        });
      })),
  };
}

function layerStoreOps(backend: LayerStoreBackend, counters: FsStats, toErrno: (err: unknown, context: string) => number, readTimeoutMs: number): FuseOperations {
  const handles: Array<Handle | undefined> = [undefined]; // 0 is no handle
  const freeHandles: number[] = [];
  const fail = (cb: (err: number) => void, err: unknown, context: string) => cb(toErrno(err, context));

  /** The layer a place names, open already or opened now. */
  const layerOf = (place: { ref: string; digest: string }): ServedLayer | Promise<ServedLayer> => backend.peek(place.ref, place.digest) ?? backend.open(place.ref, place.digest);

  /** What a path names below a layer's directory, once the layer is open. */
  type Target = { kind: 'layerDir' } | { kind: 'file'; name: 'info' | 'blob' } | { kind: 'diff'; node: FsNode };
  type Found = Target | { kind: 'root' } | { kind: 'prefix' };
  const layerDir: Target = { kind: 'layerDir' };
  const infoFile: Target = { kind: 'file', name: 'info' };
  const blobFile: Target = { kind: 'file', name: 'blob' };
  const targetIn = (layer: ServedLayer, sub: string): Target | undefined => {
    if (sub === '') return layerDir;
    if (sub === '/info') return infoFile;
    if (sub === '/blob') return blobFile;
    if (sub === '/diff') return { kind: 'diff', node: layer.diff.root };
    if (!sub.startsWith('/diff/')) return undefined;
    const node = layer.diff.lookup(sub.slice(5)); // '/bin/sh': a FUSE-style path of the tree
    return node ? { kind: 'diff', node } : undefined;
  };

  /** Runs `then` with the layer and target of `path`, or answers the callback with the failure. */
  const withTarget = (path: string, cb: (err: number) => void, then: (layer: ServedLayer | undefined, target: Found) => void): void => {
    const place = placeOf(path);
    if (place.kind === 'none') return cb(-ENOENT);
    if (place.kind === 'root' || place.kind === 'prefix') return then(undefined, place);
    const got = layerOf(place);
    const withLayer = (layer: ServedLayer) => {
      const target = targetIn(layer, place.sub);
      if (!target) return cb(-ENOENT);
      then(layer, target);
    };
    if (!(got instanceof Promise)) return withLayer(got);
    got.then(withLayer, (err: unknown) => fail(cb, err, `open layer ${place.digest} of ${place.ref}`));
  };

  const dirStat: FuseStat = { mode: 0o040555, uid: 0, gid: 0, size: 0, nlink: 2, blksize: blockSize, atime: 0, mtime: 0, ctime: 0 };
  const fileStat = (size: number): FuseStat => ({ mode: 0o100444, uid: 0, gid: 0, size, nlink: 1, blksize: blockSize, blocks: Math.ceil(size / 512), atime: 0, mtime: 0, ctime: 0 });

  const handleFor = (h: Handle): number => {
    h.layer.hold();
    const fh = freeHandles.pop() ?? handles.length;
    handles[fh] = h;
    return fh;
  };

  return {
    getattr(path, cb) {
      withTarget(path, cb, (layer, target) => {
        if (target.kind === 'root' || target.kind === 'prefix' || target.kind === 'layerDir') return cb(0, dirStat);
        if (target.kind === 'file') return cb(0, fileStat(target.name === 'info' ? layer!.info.length : layer!.blobSize));
        cb(0, statOf(target.node));
      });
    },
    opendir(path, _flags, cb) {
      withTarget(path, cb, (_layer, target) => {
        if (target.kind === 'file' || (target.kind === 'diff' && target.node.type !== 'dir')) return cb(-ENOTDIR);
        cb(0, 0);
      });
    },
    readdir(path, cb) {
      withTarget(path, cb, (_layer, target) => {
        // The root and the reference directories list nothing: layers appear when looked up.
        if (target.kind === 'root' || target.kind === 'prefix') return cb(0, ['.', '..'], [{ mode: 0o040000 }, { mode: 0o040000 }] as FuseStat[]);
        if (target.kind === 'layerDir') return cb(0, ['.', '..', 'diff', 'info', 'blob'], [0o040000, 0o040000, 0o040000, 0o100000, 0o100000].map((mode) => ({ mode }) as FuseStat));
        if (target.kind !== 'diff' || !target.node.children) return cb(-ENOTDIR);
        const names = ['.', '..'];
        const stats: FuseStat[] = [direntOf(target.node), { mode: 0o040000 } as FuseStat];
        for (const [name, child] of target.node.children) {
          names.push(name);
          stats.push(direntOf(child));
        }
        cb(0, names, stats);
      });
    },
    releasedir(_path, _fh, cb) {
      cb(0);
    },
    open(path, flags, cb) {
      if ((flags & accessModeMask) !== fsConstants.O_RDONLY || flags & fsConstants.O_TRUNC) return cb(-EROFS);
      withTarget(path, cb, (layer, target) => {
        if (target.kind === 'file') return cb(0, handleFor({ layer: layer!, node: undefined, kind: target.name }));
        if (target.kind === 'diff' && target.node.type === 'file') return cb(0, handleFor({ layer: layer!, node: target.node, kind: 'file' }));
        cb(target.kind === 'diff' && target.node.type !== 'dir' ? -EACCES : -EISDIR);
      });
    },
    release(_path, fh, cb) {
      const h = fh > 0 ? handles[fh] : undefined;
      if (h) {
        h.layer.unhold();
        handles[fh] = undefined;
        freeHandles.push(fh);
      }
      cb(0);
    },
    read(path, fh, buf, len, position, cb) {
      const h = handles[fh];
      if (!h) return cb(-EINVAL);
      const size = h.kind === 'info' ? h.layer.info.length : h.kind === 'blob' ? h.layer.blobSize : h.node!.size;
      if (position >= size || len === 0) return cb(0);
      const length = Math.min(len, size - position);
      if (h.kind === 'info') {
        h.layer.info.copy(buf, 0, position, position + length);
        counters.bytesServed += length;
        return cb(length);
      }
      const read = () => (h.kind === 'blob' ? h.layer.readBlob(position, position + length) : h.layer.readFile(h.node!, position, length));
      answerRead(read, buf, length, cb, counters, readTimeoutMs, (err) => toErrno(err, `read ${path} [${position}, ${position + length})`));
    },
    readlink(path, cb) {
      withTarget(path, cb, (_layer, target) => {
        if (target.kind !== 'diff' || target.node.type !== 'symlink') return cb(-EINVAL);
        cb(0, target.node.target);
      });
    },
    getxattr(path, name, _position, cb) {
      withTarget(path, cb, (_layer, target) => cb(0, target.kind === 'diff' ? target.node.xattrs.get(name) : undefined));
    },
    listxattr(path, cb) {
      withTarget(path, cb, (_layer, target) => cb(0, target.kind === 'diff' ? [...target.node.xattrs.keys()] : []));
    },
    statfs(_path, cb) {
      cb(0, { bsize: blockSize, frsize: blockSize, blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, favail: 0, fsid: 0, flag: 0, namemax: 255 });
    },
    /** containers/storage's "we use this layer": `os.Create(<layer>/use)`, then removing it. */
    create(path, _mode, cb) {
      const place = placeOf(path);
      if (place.kind !== 'layer' || place.sub !== '/use') return cb(-EROFS);
      backend.use(place.ref, place.digest);
      cb(-ENOENT); // what containers/storage expects of a store that counts uses
    },
    /** containers/storage's "we no longer use this layer": `rmdir(<layer>)`. */
    rmdir(path, cb) {
      const place = placeOf(path);
      if (place.kind !== 'layer' || place.sub !== '') return cb(-EROFS);
      backend.release(place.ref, place.digest);
      cb(-ENOENT);
    },
    unlink(_path, cb) {
      cb(-EROFS);
    },
    ...refuseWrites(),
  };
}

/** Every other change: EROFS. */
function refuseWrites(): FuseOperations {
  const refuse = (...args: unknown[]): void => (args[args.length - 1] as (n: number) => void)(-EROFS);
  return { write: refuse, truncate: refuse, ftruncate: refuse, rename: refuse, link: refuse, symlink: refuse, mkdir: refuse, chmod: refuse, chown: refuse, utimens: refuse, mknod: refuse, setxattr: refuse, removexattr: refuse };
}

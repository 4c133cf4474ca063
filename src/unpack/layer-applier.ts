import {
  chmodSync,
  closeSync,
  constants,
  copyFileSync,
  fchmodSync,
  fchownSync,
  lchownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Header as Headers } from 'tar-stream';
import { LazyrootError } from '../errors.js';
import { S_IFBLK, S_IFCHR, S_IFIFO, devMajor, devMinor, native } from '../native.js';
import { classifyEntry, hostile, normalizeEntryPath, parentOf } from '../oci/entry-path.js';
import { lookupInLayers } from '../union/lower-lookup.js';
import { isOverlayWhiteout, overlayOpaqueXattr } from '../union/overlay-format.js';
import { isIdentity, mapId, type IdMapping } from './id-mapping.js';
import { writeFully } from '../store/write-fully.js';
import { parseSparseMapPrefix, sparseFromPax, type SparseMap } from '../index/pax-sparse.js';
import { paxXattrs } from '../index/tar-binary-pax.js';
import { checkSparse } from '../index/tar-index.js';
import { epochTime, parsePaxTime, tarMtime, type TarTime } from '../index/tar-entry.js';
import type { PatchedHeader } from '../index/tar-stream-patches.js';

export interface ApplierOptions {
  /** The layer's diff directory: exists, empty, on the store's filesystem. */
  target: string;
  /** Diff directories of the layers below, top first (for implicit parents and hardlink copy-up). */
  lowers: readonly string[];
  /** Names the layer in errors. */
  what: string;
  idMapping?: IdMapping;
  /**
   * The layer is eStargz: its TOC (`stargz.index.json`) and landmark files
   * (`.prefetch.landmark`, `.no.prefetch.landmark`) at the root are metadata,
   * not content, and are left out (as the lazy mount leaves them out).
   */
  estargz?: boolean;
}

/** Root-level regular files of an eStargz layer that are its metadata. */
const estargzMetadata = new Set(['stargz.index.json', '.prefetch.landmark', '.no.prefetch.landmark']);

/** lstat, or undefined when nothing is there, also when a parent is not a directory (a whiteout). */
function lstatQuiet(path: string): Stats | undefined {
  try {
    return lstatSync(path, { throwIfNoEntry: false });
  } catch (err) {
    if (isErrno(err, 'ENOTDIR')) return undefined;
    throw err;
  }
}

/** Sets atime and mtime with nanoseconds, on a path (never following a final symlink) or a descriptor. */
function setTimes(target: string | number, atime: TarTime, mtime: TarTime): void {
  native().utimens(target, atime.sec, atime.nsec, mtime.sec, mtime.nsec);
}

/** A bigint stat's time in nanoseconds, as seconds and nanoseconds. */
function timeOfNs(ns: bigint): TarTime {
  let sec = ns / 1_000_000_000n;
  let nsec = ns % 1_000_000_000n;
  if (nsec < 0n) {
    nsec += 1_000_000_000n;
    sec -= 1n;
  }
  return { sec: Number(sec), nsec: Number(nsec) };
}

/** lstat, or undefined when nothing is there (no exception thrown for the common case). */
function lstatIfAny(path: string): Stats | undefined {
  return lstatSync(path, { throwIfNoEntry: false });
}

function isErrno(err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException | null)?.code === code;
}

const S_ISGID = 0o2000;

/**
 * The process's umask, read from /proc (process.umask() would set it to 0 for
 * a moment, and other threads may be creating files); 0o777 when unknown,
 * which makes every new file's mode be set explicitly.
 */
function currentUmask(): number {
  try {
    const m = /^Umask:\s*([0-7]+)$/m.exec(readFileSync('/proc/self/status', 'latin1'));
    if (m) return Number.parseInt(m[1]!, 8);
  } catch {
    // not Linux, or no /proc
  }
  return 0o777;
}

/** How regular files are created: never over an existing name, never through a final symlink. */
const createFileFlags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/**
 * Applies one layer's tar members, in order, to an overlay-format diff
 * directory: OCI whiteouts become 0/0 character devices, opaque markers the
 * `trusted.overlay.opaque` xattr. Safety rules: no absolute or `..` paths;
 * never write through a symlink (every parent must be a real directory of
 * this diff, or of a lower layer, which is then copied up); hardlinks only to
 * files inside the image. Files are created with O_EXCL|O_NOFOLLOW, so an
 * existing symlink at the final name is never followed either.
 *
 * Speed: members are applied strictly one at a time, so the file system calls
 * are synchronous. Through the thread pool each would cost a round trip and
 * win no parallelism; this way the event loop only waits on the thread pool
 * for decompression, which runs ahead meanwhile. The diff starts empty, so a
 * name can only exist if this layer made it: names are created straight away
 * (O_EXCL, mkdir, symlink, mknod), and only on EEXIST is the old entry looked
 * at and replaced, as a later member replaces an earlier one. Known
 * directories are remembered, so parents cost no system call. A regular file
 * is made with its permission bits and set up through its open descriptor;
 * chown and chmod are left out where they would change nothing (made by
 * root, owned 0:0, outside setgid directories; bits the umask left whole).
 */
export class LayerApplier {
  /** Directories of the diff known to be real directories. */
  private readonly dirs = new Set<string>(['']);
  /** Requested parent paths → where they really are (after lower-layer symlinks). */
  private readonly resolvedDirs = new Map<string, string>([['', '']]);
  /** Paths this layer whited out: a directory re-created there must hide the lower one. */
  private readonly whitedOut = new Set<string>();
  /** Directory times are set last: creating children changes them. */
  private readonly dirTimes = new Map<string, { atime: TarTime; mtime: TarTime }>();
  /**
   * Paths this layer's own members wrote, and their parents (umoci's
   * `upperPaths`): a whiteout of this layer never hides these. Everything
   * else in the diff is an artifact: a lower file copied up for a hardlink,
   * or a directory made to hold such a copy.
   */
  private readonly own = new Set<string>(['']);
  /** Directories made opaque in this layer (marker, or re-created after a whiteout). */
  private readonly opaqueDirs = new Set<string>();
  /**
   * Lower files copied up for hardlinks, by their path in the image: the
   * copy's inode and the names in this diff that link to it. A hardlink
   * names a file of the layers below even when this layer whites that path
   * out, before or after the link (a whiteout only hides lower layers).
   */
  private readonly copies = new Map<string, { ino: number; names: Set<string> }>();
  private readonly mapped: boolean;
  /**
   * Directories known to lack the setgid bit. What root creates in one is
   * owned by 0:0 already, so an entry owned by 0:0 needs no chown there.
   */
  private readonly plainDirs = new Set<string>();
  /** Whether what this process creates is owned by 0:0 (outside setgid directories). */
  private readonly createsAsRoot = process.geteuid?.() === 0 && process.getegid?.() === 0;
  /** Permission bits open() leaves out of a new file's mode. */
  private readonly umask = currentUmask();
  /** The diff directory, and it with a trailing slash: relative paths are canonical, so joining is concatenating. */
  private readonly target: string;
  private readonly prefix: string;
  entries = 0;

  constructor(private readonly options: ApplierOptions) {
    this.mapped = !isIdentity(options.idMapping);
    const target = join(options.target);
    this.target = target.length > 1 && target.endsWith('/') ? target.slice(0, -1) : target;
    this.prefix = this.target.endsWith('/') ? this.target : `${this.target}/`;
  }

  private full(rel: string): string {
    return rel === '' ? this.target : this.prefix + rel;
  }

  /** The diff's root takes the merged root's metadata, as overlayfs shows the upper root's. */
  async start(): Promise<void> {
    const lower = await lookupInLayers(this.options.lowers, '');
    if (lower) this.copyMetadata(lower.path, lower.stat, this.target, '');
    else {
      this.ownAsRoot(this.target, '');
      this.noteDirMode('', lstatSync(this.target).mode);
    }
  }

  /** Remembers whether the directory at `rel` is setgid (its new entries then take its group). */
  private noteDirMode(rel: string, mode: number): void {
    if (mode & S_ISGID) this.plainDirs.delete(rel);
    else this.plainDirs.add(rel);
  }

  /** A directory just made with mkdir, which passes the parent's setgid bit on: plain when the parent is known to be. */
  private noteNewDir(rel: string): void {
    if (this.plainDirs.has(parentOf(rel))) this.plainDirs.add(rel);
    else this.plainDirs.delete(rel);
  }

  /**
   * Directories no entry describes belong to the image's root (the mapped
   * root, under a mapping) and get the epoch as mtime, as umoci gives them:
   * the same image always unpacks to the same tree.
   */
  private ownAsRoot(full: string, rel: string): void {
    if (this.mapped) {
      const mapping = this.options.idMapping!;
      lchownSync(full, mapId(0, mapping.uids), mapId(0, mapping.gids));
    }
    if (!this.dirTimes.has(rel)) this.dirTimes.set(rel, { atime: epochTime, mtime: epochTime });
  }

  async apply(header: Headers, body: Readable): Promise<void> {
    this.entries++;
    const { what } = this.options;
    let sparse: SparseMap | undefined;
    if (header.type === null || header.type === undefined) {
      // tar-stream reports typeflags it does not know as null (old GNU sparse
      // 'S' is read by tar-stream-patches.ts): vendor extensions. Refuse rather
      // than misread the data that follows.
      throw new LazyrootError('UNSUPPORTED', `${what}: entry ${JSON.stringify(header.name)} has a typeflag lazyroot cannot read (a vendor extension)`);
    }
    if (header.type === 'file' || header.type === 'contiguous-file') {
      sparse = (header as PatchedHeader).gnuSparse ?? (header.pax ? sparseFromPax(header.pax as Record<string, string>, what) : undefined);
    }
    const requested = normalizeEntryPath(sparse?.realName ?? header.name, what);
    if (this.options.estargz && estargzMetadata.has(requested) && header.type === 'file') return drain(header, body);
    const role = classifyEntry(requested);
    switch (role.kind) {
      case 'reserved':
        return drain(header, body);
      case 'invalid-whiteout':
        throw hostile(what, header.name, 'is an invalid whiteout: of "." or "..", outside its own directory');
      case 'whiteout':
        await drain(header, body);
        return this.whiteout(role.target, header.name);
      case 'opaque': {
        await drain(header, body);
        const dir = await this.ensureDir(role.dir, header.name);
        native().lsetxattr(this.full(dir), overlayOpaqueXattr, Buffer.from('y'));
        this.opaqueDirs.add(dir);
        return;
      }
      case 'normal':
        break;
    }
    if (requested === '') {
      // The root's own entry (`./`): only its metadata applies.
      await drain(header, body);
      if (header.type !== 'directory') throw hostile(what, header.name, 'replaces the root with a non-directory');
      return this.setMetadata('', header, 'directory', false);
    }
    const path = await this.placeIn(requested, header.name);
    const full = this.full(path);
    this.markOwn(path);
    switch (header.type) {
      case 'file':
      case 'contiguous-file':
        if (sparse) {
          if (sparse.mapBytesInData === 0) checkSparse(sparse.regions, sparse, header.size ?? 0, what, header.name);
          this.clear(path, full);
          await this.writeSparse(full, body, sparse);
          this.setMetadata(path, header, header.type, false);
          return;
        }
        return this.writeFile(path, full, header, body);
      case 'directory': {
        const made = this.makeDir(path, full);
        if (this.whitedOut.has(path)) {
          native().lsetxattr(full, overlayOpaqueXattr, Buffer.from('y'));
          this.opaqueDirs.add(path);
        }
        this.setMetadata(path, header, 'directory', made);
        return;
      }
      case 'symlink':
        await drain(header, body);
        this.create(path, full, () => symlinkSync(header.linkname ?? '', full));
        break;
      case 'link':
        await drain(header, body);
        this.clear(path, full);
        await this.hardlink(path, header);
        return; // a hardlink shares its target's inode and metadata
      case 'character-device':
      case 'block-device':
      case 'fifo': {
        await drain(header, body);
        const kind = header.type === 'fifo' ? S_IFIFO : header.type === 'block-device' ? S_IFBLK : S_IFCHR;
        this.create(path, full, () => native().mknod(full, kind | 0o600, header.devmajor ?? 0, header.devminor ?? 0));
        break;
      }
      default:
        await drain(header, body);
        throw new LazyrootError('UNSUPPORTED', `${what}: entry ${JSON.stringify(header.name)} has unsupported type ${String(header.type)}`);
    }
    // A symlink or a device node just made.
    this.setMetadata(path, header, header.type, true);
  }

  /**
   * Removes hardlink copy-ups that an opaque directory of this layer hides,
   * then sets directory times, deepest first, once every child exists.
   */
  async finish(): Promise<void> {
    for (const copy of this.copies.values()) {
      for (const name of copy.names) {
        if (this.own.has(name)) continue;
        const hidden = this.underOpaque(name);
        if (hidden !== undefined && lstatQuiet(this.full(hidden))) {
          rmSync(this.full(hidden), { recursive: true, force: true });
          this.forgetDirs(hidden);
          this.dirTimes.delete(hidden);
        }
      }
    }
    const paths = [...this.dirTimes.keys()].sort((a, b) => b.length - a.length);
    for (const p of paths) {
      const t = this.dirTimes.get(p)!;
      if (p === '' || lstatQuiet(this.full(p))) setTimes(this.full(p), t.atime, t.mtime);
    }
  }

  /** `path` and its parents were written by this layer's own members. */
  private markOwn(path: string): void {
    for (let p = path; !this.own.has(p); p = parentOf(p)) this.own.add(p);
  }

  /**
   * When an opaque directory of this layer lies above `path`, the topmost
   * entry below it on the way to `path` that no own member wrote (what to
   * remove to hide `path`); otherwise undefined.
   */
  private underOpaque(path: string): string | undefined {
    const parts = path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (!this.opaqueDirs.has(dir)) continue;
      for (let j = i + 1; j <= parts.length; j++) {
        const below = parts.slice(0, j).join('/');
        if (!this.own.has(below)) return below;
      }
      return undefined;
    }
    return undefined;
  }

  /** A proper parent of `path` is a whiteout or an opaque directory of this layer: lower entries there are hidden. */
  private hiddenByThisLayer(path: string): boolean {
    const parts = path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (this.opaqueDirs.has(dir)) return true;
      const here = lstatQuiet(this.full(dir));
      if (here && isOverlayWhiteout(here)) return true;
    }
    return false;
  }

  /**
   * Makes a new name with `make` (which fails with EEXIST rather than reuse
   * or follow what is there). A name that exists was made earlier by this
   * same layer: that entry goes, and `make` runs again.
   */
  private create<T>(path: string, full: string, make: () => T): T {
    try {
      return make();
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err;
    }
    this.clear(path, full);
    return make();
  }

  /** Removes whatever this layer put at `path` before (a later member replaces it). */
  private clear(path: string, full: string): void {
    if (!lstatIfAny(full)) return;
    rmSync(full, { recursive: true, force: true });
    this.forgetDirs(path);
  }

  /**
   * A directory member: an existing directory stays (only its metadata
   * changes); anything else there is replaced. True when it made the directory.
   */
  private makeDir(path: string, full: string): boolean {
    if (this.dirs.has(path)) return false;
    let made = true;
    try {
      mkdirSync(full, 0o700);
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err;
      if (lstatIfAny(full)?.isDirectory()) made = false;
      else {
        // What this layer put here first hid any lower directory: the new one must go on hiding it.
        this.clear(path, full);
        mkdirSync(full, 0o700);
        native().lsetxattr(full, overlayOpaqueXattr, Buffer.from('y'));
        this.opaqueDirs.add(path);
      }
    }
    this.dirs.add(path);
    return made;
  }

  private async whiteout(requested: string, name: string): Promise<void> {
    const target = await this.placeIn(requested, name);
    this.whitedOut.add(target);
    const full = this.full(target);
    const existing = lstatIfAny(full);
    if (existing && !this.own.has(target) && !isOverlayWhiteout(existing)) {
      // Only a hardlink's copy-up of the lower file (or a directory made to hold
      // one) is there: the whiteout hides the lower entry; the copy lives on
      // under the links' names.
      rmSync(full, { recursive: true, force: true });
      this.forgetDirs(target);
      this.dirTimes.delete(target);
      native().mknod(full, S_IFCHR, 0, 0);
    } else if (!existing) {
      native().mknod(full, S_IFCHR, 0, 0);
    } else if (existing.isDirectory()) {
      // Created by this same layer: it stays, but must hide the lower directory.
      native().lsetxattr(full, overlayOpaqueXattr, Buffer.from('y'));
      this.opaqueDirs.add(target);
    }
    // An existing non-directory from this layer stays: it already hides the lower entry.
  }

  /** Where an entry at `requested` goes: its parent made a real directory, resolved as below. */
  private async placeIn(requested: string, entryName: string): Promise<string> {
    const slash = requested.lastIndexOf('/');
    const parentRel = slash < 0 ? '' : requested.slice(0, slash);
    const parent = this.resolvedDirs.get(parentRel) ?? (await this.ensureDir(parentRel, entryName));
    const base = slash < 0 ? requested : requested.slice(slash + 1);
    return parent ? `${parent}/${base}` : base;
  }

  /**
   * Makes `rel` a real directory of this diff and returns where it really is.
   * Missing parents are copied up from the layers below (metadata and all, as
   * overlayfs does), or created plain when no layer has them. A symlink of a
   * lower layer on the way is followed *inside the image root* (an absolute
   * target starts at the root, `..` stops there), as umoci and containerd do:
   * with `bin -> usr/bin` below, `bin/x` lands in `usr/bin/x`. A symlink this
   * same layer planted is refused: that is how archives try to escape.
   */
  private async ensureDir(rel: string, entryName: string): Promise<string> {
    const cached = this.resolvedDirs.get(rel);
    if (cached !== undefined) return cached;
    const pending = rel === '' ? [] : rel.split('/');
    const done: string[] = [];
    let hops = 0;
    while (pending.length > 0) {
      const part = pending.shift()!;
      if (part === '' || part === '.') continue;
      if (part === '..') {
        done.pop(); // never above the root
        continue;
      }
      const prefix = [...done, part].join('/');
      if (this.dirs.has(prefix)) {
        done.push(part);
        continue;
      }
      const full = this.full(prefix);
      const here = lstatIfAny(full);
      if (here?.isDirectory()) {
        this.dirs.add(prefix);
        this.noteDirMode(prefix, here.mode);
        done.push(part);
        continue;
      }
      if (here?.isSymbolicLink()) throw hostile(this.options.what, entryName, `would be written through the symlink ${JSON.stringify(prefix)}`);
      if (here && isOverlayWhiteout(here)) {
        // Whited out earlier in this layer, now re-created as a parent: a fresh, opaque directory.
        unlinkSync(full);
        mkdirSync(full, 0o755);
        this.noteNewDir(prefix);
        this.ownAsRoot(full, prefix);
        native().lsetxattr(full, overlayOpaqueXattr, Buffer.from('y'));
        this.dirs.add(prefix);
        done.push(part);
        continue;
      }
      if (here) throw hostile(this.options.what, entryName, `has a parent ${JSON.stringify(prefix)} that is not a directory`);
      const lower = await lookupInLayers(this.options.lowers, prefix);
      if (lower?.stat.isSymbolicLink()) {
        if (++hops > 40) throw hostile(this.options.what, entryName, `meets too many symlinks (a loop?) at ${JSON.stringify(prefix)}`);
        const target = readlinkSync(lower.path);
        if (target.startsWith('/')) done.length = 0;
        pending.unshift(...target.split('/'));
        continue;
      }
      mkdirSync(full, 0o755);
      this.noteNewDir(prefix);
      if (lower?.stat.isDirectory()) this.copyMetadata(lower.path, lower.stat, full, prefix);
      else this.ownAsRoot(full, prefix);
      this.dirs.add(prefix);
      done.push(part);
    }
    const resolved = done.join('/');
    this.resolvedDirs.set(rel, resolved);
    return resolved;
  }

  private forgetDirs(rel: string): void {
    for (const d of this.dirs) if (d === rel || d.startsWith(`${rel}/`)) this.dirs.delete(d);
    for (const d of this.plainDirs) if (d === rel || d.startsWith(`${rel}/`)) this.plainDirs.delete(d);
    for (const [k, v] of this.resolvedDirs) if (v === rel || v.startsWith(`${rel}/`)) this.resolvedDirs.delete(k);
    for (const d of this.dirTimes.keys()) if (d === rel || d.startsWith(`${rel}/`)) this.dirTimes.delete(d);
  }

  /**
   * A regular member: created with its permission bits (setuid and the like
   * come last, with the owner), written, and given its metadata through the
   * one descriptor.
   */
  private async writeFile(path: string, full: string, header: Headers, body: Readable): Promise<void> {
    const fd = this.create(path, full, () => openSync(full, createFileFlags, (header.mode ?? 0o644) & 0o777));
    try {
      if (header.size) await writeBody(fd, body);
      this.setMetadata(path, header, header.type, true, fd);
    } finally {
      closeSync(fd);
    }
  }

  /** A PAX sparse member: data regions written at their offsets, holes left as holes. */
  private async writeSparse(full: string, body: Readable, sparse: SparseMap): Promise<void> {
    const handle = await open(full, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    try {
      let regions = sparse.regions;
      let pending = Buffer.alloc(0);
      let mapDone = sparse.mapBytesInData === 0;
      let region = 0;
      let within = 0;
      for await (const chunk of body) {
        let data = chunk as Buffer;
        if (!mapDone) {
          pending = Buffer.concat([pending, data]);
          const parsed = parseSparseMapPrefix(pending, this.options.what);
          if (!parsed || pending.length < parsed.length) continue;
          regions = parsed.regions;
          data = pending.subarray(parsed.length);
          mapDone = true;
        }
        while (data.length > 0 && region < regions.length) {
          const r = regions[region]!;
          const take = Math.min(data.length, r.size - within);
          await writeFully(handle, data, 0, take, r.offset + within);
          data = data.subarray(take);
          within += take;
          if (within === r.size) {
            region++;
            within = 0;
          }
        }
      }
      await handle.truncate(sparse.realSize);
    } finally {
      await handle.close();
    }
  }

  private async hardlink(path: string, header: Headers): Promise<void> {
    const { what } = this.options;
    const targetRel = normalizeEntryPath(header.linkname ?? '', what);
    if (targetRel === '') throw hostile(what, header.name, 'is a hardlink to the root directory');
    // The target's parents must be real directories: no hardlink through a symlink.
    const parts = targetRel.split('/');
    for (let i = 1; i < parts.length; i++) {
      const prefix = parts.slice(0, i).join('/');
      const here = lstatIfAny(this.full(prefix));
      if (here?.isSymbolicLink()) throw hostile(what, header.name, `is a hardlink through the symlink ${JSON.stringify(prefix)}`);
    }
    const target = lstatQuiet(this.full(targetRel));
    if (target && !isOverlayWhiteout(target)) {
      if (target.isDirectory()) throw hostile(what, header.name, `is a hardlink to the directory ${JSON.stringify(header.linkname)}`);
      linkSync(this.full(targetRel), this.full(path));
      const copy = this.copies.get(targetRel);
      if (copy && copy.ino === target.ino) copy.names.add(path);
      return;
    }
    // A link to a file of a lower layer, which this layer may have hidden since.
    const copy = this.copies.get(targetRel);
    const holder = copy && [...copy.names].find((n) => lstatQuiet(this.full(n))?.ino === copy.ino);
    if (copy && holder !== undefined) {
      linkSync(this.full(holder), this.full(path));
      copy.names.add(path);
      return;
    }
    const lower = await lookupInLayers(this.options.lowers, targetRel);
    if (!lower || lower.stat.isDirectory()) {
      throw hostile(what, header.name, `is a hardlink to ${JSON.stringify(header.linkname)}, which is not a file in the image (outside the tree)`);
    }
    if (target || this.hiddenByThisLayer(targetRel)) {
      // Whited out (or under an opaque dir) in this layer: the file lives on under the link's name only.
      this.copyUp(lower.path, lower.stat, this.full(path));
      this.copies.set(targetRel, { ino: lstatSync(this.full(path)).ino, names: new Set([path]) });
      return;
    }
    // Copied up to its own path first, as overlayfs does, and linked there.
    const copyTo = await this.placeIn(targetRel, header.name);
    if (copyTo !== targetRel) throw hostile(what, header.name, `is a hardlink through a symlink of a lower layer`);
    this.copyUp(lower.path, lower.stat, this.full(targetRel));
    this.copies.set(targetRel, { ino: lstatSync(this.full(targetRel)).ino, names: new Set([targetRel, path]) });
    linkSync(this.full(targetRel), this.full(path));
  }

  private copyUp(source: string, stat: Stats, dest: string): void {
    if (stat.isFile()) copyFileSync(source, dest, constants.COPYFILE_EXCL);
    else if (stat.isSymbolicLink()) symlinkSync(readlinkSync(source), dest);
    else native().mknod(dest, (stat.mode & constants.S_IFMT) | 0o600, devMajor(stat.rdev), devMinor(stat.rdev));
    this.copyMetadata(source, stat, dest);
  }

  /**
   * Copies owner, mode, xattrs (not overlay's own) and times from a lower
   * entry. A directory's (`dirRel` given) times wait for finish().
   */
  private copyMetadata(source: string, stat: Stats, dest: string, dirRel?: string): void {
    const ns = lstatSync(source, { bigint: true });
    const atime = timeOfNs(ns.atimeNs);
    const mtime = timeOfNs(ns.mtimeNs);
    lchownSync(dest, stat.uid, stat.gid);
    if (!stat.isSymbolicLink()) chmodSync(dest, stat.mode & 0o7777);
    for (const name of native().llistxattr(source)) {
      if (name.startsWith('trusted.overlay.')) continue;
      const value = native().lgetxattr(source, name);
      if (value) native().lsetxattr(dest, name, value);
    }
    if (dirRel !== undefined) {
      this.noteDirMode(dirRel, stat.mode);
      this.dirTimes.set(dirRel, { atime, mtime });
    } else setTimes(dest, atime, mtime);
  }

  /**
   * Owner, mode, xattrs and times from the header; on `fd` when the entry is
   * open (a regular file, created with the mode's permission bits), else on
   * the path. `made`: the entry was created just now, so an owner or mode it
   * was born with need not be set again.
   */
  private setMetadata(path: string, header: Headers, type: Headers['type'], made: boolean, fd?: number): void {
    const full = this.full(path);
    const mapping = this.options.idMapping;
    const pax = header.pax as Record<string, string> | undefined;
    // tar-stream ignores PAX uid/gid/mtime records (used for values the header cannot hold).
    const headerUid = paxInt(pax?.uid) ?? header.uid ?? 0;
    const headerGid = paxInt(pax?.gid) ?? header.gid ?? 0;
    const uid = this.mapped ? mapId(headerUid, mapping!.uids) : headerUid;
    const gid = this.mapped ? mapId(headerGid, mapping!.gids) : headerGid;
    const ownedAlready = made && uid === 0 && gid === 0 && this.createsAsRoot && this.plainDirs.has(parentOf(path));
    if (ownedAlready) {
      // Created by root outside any setgid directory: 0:0 already.
    } else if (fd === undefined) lchownSync(full, uid, gid);
    else fchownSync(fd, uid, gid);
    // After chown, which clears setuid/setgid bits.
    const mode = (header.mode ?? 0o644) & 0o7777;
    if (type === 'directory') this.noteDirMode(path, mode);
    const modeAlready = made && fd !== undefined && (mode & 0o7000) === 0 && (mode & this.umask) === 0;
    if (type === 'symlink' || modeAlready) {
      // Symlinks have no mode of their own; a file just opened with these bits has them.
    } else if (fd === undefined) chmodSync(full, mode);
    else fchmodSync(fd, mode);
    if (pax) {
      for (const [name, value] of paxXattrs(pax)) {
        // overlayfs's own attributes would change how the layers merge: never from a tar.
        if (name.startsWith('trusted.overlay.')) continue;
        try {
          native().lsetxattr(full, name, value);
        } catch (err) {
          throw new LazyrootError('FAILED_PRECONDITION', `${this.options.what}: entry ${JSON.stringify(header.name)}: cannot set xattr ${name}: ${(err as Error).message}`, { cause: err });
        }
      }
    }
    const mtime = tarMtime(header);
    const atime = parsePaxTime(pax?.atime) ?? mtime;
    if (type === 'directory') this.dirTimes.set(path, { atime, mtime });
    else setTimes(fd ?? full, atime, mtime);
  }
}

function paxInt(value: string | undefined): number | undefined {
  return value !== undefined && /^\d+$/.test(value) ? Number(value) : undefined;
}


/**
 * Writes a member's data to `fd` as tar-stream hands it over (no stream
 * pipeline, so no AbortSignal or write stream per file); resolves at the
 * member's end.
 */
function writeBody(fd: number, body: Readable): Promise<void> {
  return new Promise((resolve, reject) => {
    let ended = false;
    const onData = (chunk: Buffer): void => {
      try {
        for (let done = 0; done < chunk.length; ) done += writeSync(fd, chunk, done, chunk.length - done);
      } catch (err) {
        body.off('data', onData);
        reject(err);
      }
    };
    body.on('data', onData);
    body.once('end', () => {
      ended = true;
      resolve();
    });
    body.once('error', reject);
    body.once('close', () => {
      if (!ended) reject(new Error('the member ended before its data did'));
    });
  });
}

/**
 * Reads a member's data to its end. tar-stream only hands out data for
 * members with a size that are not directories: the others need no reading.
 */
async function drain(header: Headers, body: Readable): Promise<void> {
  if (!header.size || header.type === 'directory') return;
  for await (const _ of body) void _;
}

import { constants, createWriteStream, type Stats } from 'node:fs';
import { chmod, copyFile, lchown, link, lstat, lutimes, mkdir, open, readlink, rm, symlink, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import type { Header as Headers } from 'tar-stream';
import { LazyrootError } from '../errors.js';
import { S_IFBLK, S_IFCHR, S_IFIFO, devMajor, devMinor, native } from '../native.js';
import { classifyEntry, hostile, normalizeEntryPath, parentOf } from '../oci/entry-path.js';
import { lookupInLayers } from '../union/lower-lookup.js';
import { isOverlayWhiteout, overlayOpaqueXattr } from '../union/overlay-format.js';
import { isIdentity, mapId, type IdMapping } from './id-mapping.js';
import { parseSparseMapPrefix, sparseFromPax, type SparseMap } from '../index/pax-sparse.js';
import { paxXattrs } from '../index/tar-binary-pax.js';

export interface ApplierOptions {
  /** The layer's diff directory: exists, empty, on the store's filesystem. */
  target: string;
  /** Diff directories of the layers below, top first (for implicit parents and hardlink copy-up). */
  lowers: readonly string[];
  /** Names the layer in errors. */
  what: string;
  idMapping?: IdMapping;
}

async function lstatOrUndefined(path: string): Promise<Stats | undefined> {
  try {
    return await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * Applies one layer's tar members, in order, to an overlay-format diff
 * directory: OCI whiteouts become 0/0 character devices, opaque markers the
 * `trusted.overlay.opaque` xattr. Safety rules: no absolute or `..` paths;
 * never write through a symlink (every parent must be a real directory of
 * this diff, or of a lower layer, which is then copied up); hardlinks only to
 * files inside the image. Files are created with O_EXCL, so an existing
 * symlink at the final name is never followed either.
 */
export class LayerApplier {
  /** Directories of the diff known to be real directories. */
  private readonly dirs = new Set<string>(['']);
  /** Requested parent paths → where they really are (after lower-layer symlinks). */
  private readonly resolvedDirs = new Map<string, string>([['', '']]);
  /** Paths this layer whited out: a directory re-created there must hide the lower one. */
  private readonly whitedOut = new Set<string>();
  /** Directory times are set last: creating children changes them. */
  private readonly dirTimes = new Map<string, { atime: Date; mtime: Date }>();
  private readonly mapped: boolean;
  entries = 0;

  constructor(private readonly options: ApplierOptions) {
    this.mapped = !isIdentity(options.idMapping);
  }

  private full(rel: string): string {
    return rel === '' ? this.options.target : join(this.options.target, rel);
  }

  /** The diff's root takes the merged root's metadata, as overlayfs shows the upper root's. */
  async start(): Promise<void> {
    const lower = await lookupInLayers(this.options.lowers, '');
    if (lower) await this.copyMetadata(lower.path, lower.stat, this.options.target, true);
    else await this.ownAsRoot(this.options.target);
  }

  /**
   * Directories no entry describes belong to the image's root (the mapped
   * root, under a mapping) and get the epoch as mtime, as umoci gives them:
   * the same image always unpacks to the same tree.
   */
  private async ownAsRoot(full: string): Promise<void> {
    if (this.mapped) {
      const mapping = this.options.idMapping!;
      await lchown(full, mapId(0, mapping.uids), mapId(0, mapping.gids));
    }
    const rel = full === this.options.target ? '' : full.slice(this.options.target.length + 1);
    if (!this.dirTimes.has(rel)) this.dirTimes.set(rel, { atime: epoch, mtime: epoch });
  }

  async apply(header: Headers, body: Readable): Promise<void> {
    this.entries++;
    const { what } = this.options;
    let sparse: SparseMap | undefined;
    if (header.type === null || header.type === undefined) {
      // tar-stream reports typeflags it does not know as null: old GNU sparse ('S'),
      // whose header extensions it cannot skip, or vendor extensions. Refuse
      // rather than misread the data that follows.
      throw new LazyrootError('UNSUPPORTED', `${what}: entry ${JSON.stringify(header.name)} has a typeflag lazyroot cannot read (old GNU sparse 'S' or a vendor extension); re-create the layer in PAX format (tar --format=posix)`);
    }
    if (header.type === 'file' || header.type === 'contiguous-file') sparse = sparseFromPax(header.pax as Record<string, string> | undefined, what);
    const requested = normalizeEntryPath(sparse?.realName ?? header.name, what);
    const role = classifyEntry(requested);
    switch (role.kind) {
      case 'reserved':
        return drain(body);
      case 'invalid-whiteout':
        throw hostile(what, header.name, 'is an invalid whiteout: of "." or "..", outside its own directory');
      case 'whiteout':
        await drain(body);
        return this.whiteout(role.target, header.name);
      case 'opaque': {
        await drain(body);
        const dir = await this.ensureDir(role.dir, header.name);
        native().lsetxattr(this.full(dir), overlayOpaqueXattr, Buffer.from('y'));
        return;
      }
      case 'normal':
        break;
    }
    if (requested === '') {
      // The root's own entry (`./`): only its metadata applies.
      await drain(body);
      if (header.type !== 'directory') throw hostile(what, header.name, 'replaces the root with a non-directory');
      return this.setMetadata('', header, 'directory');
    }
    const path = await this.placeIn(requested, header.name);
    const full = this.full(path);
    const existing = await lstatOrUndefined(full);
    if (existing && !(header.type === 'directory' && existing.isDirectory())) {
      await rm(full, { recursive: true, force: true });
      this.forgetDirs(path);
    }
    switch (header.type) {
      case 'file':
      case 'contiguous-file':
        await this.writeFile(full, body, sparse);
        break;
      case 'directory':
        await drain(body);
        if (!existing?.isDirectory()) await mkdir(full, { mode: 0o700 });
        this.dirs.add(path);
        if (this.whitedOut.has(path)) native().lsetxattr(full, overlayOpaqueXattr, Buffer.from('y'));
        break;
      case 'symlink':
        await drain(body);
        await symlink(header.linkname ?? '', full);
        break;
      case 'link':
        await drain(body);
        await this.hardlink(path, header);
        return; // a hardlink shares its target's inode and metadata
      case 'character-device':
      case 'block-device':
      case 'fifo': {
        await drain(body);
        const kind = header.type === 'fifo' ? S_IFIFO : header.type === 'block-device' ? S_IFBLK : S_IFCHR;
        native().mknod(full, kind | 0o600, header.devmajor ?? 0, header.devminor ?? 0);
        break;
      }
      default:
        await drain(body);
        throw new LazyrootError('UNSUPPORTED', `${what}: entry ${JSON.stringify(header.name)} has unsupported type ${String(header.type)}`);
    }
    await this.setMetadata(path, header, header.type);
  }

  /** Sets directory times, deepest first, once every child exists. */
  async finish(): Promise<void> {
    const paths = [...this.dirTimes.keys()].sort((a, b) => b.length - a.length);
    for (const p of paths) {
      const t = this.dirTimes.get(p)!;
      await lutimes(this.full(p), t.atime, t.mtime);
    }
  }

  private async whiteout(requested: string, name: string): Promise<void> {
    const target = await this.placeIn(requested, name);
    this.whitedOut.add(target);
    const full = this.full(target);
    const existing = await lstatOrUndefined(full);
    if (!existing) {
      native().mknod(full, S_IFCHR, 0, 0);
    } else if (existing.isDirectory()) {
      // Created by this same layer: it stays, but must hide the lower directory.
      native().lsetxattr(full, overlayOpaqueXattr, Buffer.from('y'));
    }
    // An existing non-directory from this layer stays: it already hides the lower entry.
  }

  /** Where an entry at `requested` goes: its parent made a real directory, resolved as below. */
  private async placeIn(requested: string, entryName: string): Promise<string> {
    const parent = await this.ensureDir(parentOf(requested), entryName);
    const base = requested.slice(requested.lastIndexOf('/') + 1);
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
      const here = await lstatOrUndefined(full);
      if (here?.isDirectory()) {
        this.dirs.add(prefix);
        done.push(part);
        continue;
      }
      if (here?.isSymbolicLink()) throw hostile(this.options.what, entryName, `would be written through the symlink ${JSON.stringify(prefix)}`);
      if (here && isOverlayWhiteout(here)) {
        // Whited out earlier in this layer, now re-created as a parent: a fresh, opaque directory.
        await unlink(full);
        await mkdir(full, { mode: 0o755 });
        await this.ownAsRoot(full);
        native().lsetxattr(full, overlayOpaqueXattr, Buffer.from('y'));
        this.dirs.add(prefix);
        done.push(part);
        continue;
      }
      if (here) throw hostile(this.options.what, entryName, `has a parent ${JSON.stringify(prefix)} that is not a directory`);
      const lower = await lookupInLayers(this.options.lowers, prefix);
      if (lower?.stat.isSymbolicLink()) {
        if (++hops > 40) throw hostile(this.options.what, entryName, `meets too many symlinks (a loop?) at ${JSON.stringify(prefix)}`);
        const target = await readlink(lower.path);
        if (target.startsWith('/')) done.length = 0;
        pending.unshift(...target.split('/'));
        continue;
      }
      await mkdir(full, { mode: 0o755 });
      if (lower?.stat.isDirectory()) await this.copyMetadata(lower.path, lower.stat, full, true);
      else await this.ownAsRoot(full);
      this.dirs.add(prefix);
      done.push(part);
    }
    const resolved = done.join('/');
    this.resolvedDirs.set(rel, resolved);
    return resolved;
  }

  private forgetDirs(rel: string): void {
    for (const d of this.dirs) if (d === rel || d.startsWith(`${rel}/`)) this.dirs.delete(d);
    for (const [k, v] of this.resolvedDirs) if (v === rel || v.startsWith(`${rel}/`)) this.resolvedDirs.delete(k);
  }

  private async writeFile(full: string, body: Readable, sparse: SparseMap | undefined): Promise<void> {
    if (!sparse) {
      await pipeline(body, createWriteStream(full, { flags: 'wx', mode: 0o600 }));
      return;
    }
    await this.writeSparse(full, body, sparse);
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
          await handle.write(data, 0, take, r.offset + within);
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
      const here = await lstatOrUndefined(this.full(prefix));
      if (here?.isSymbolicLink()) throw hostile(what, header.name, `is a hardlink through the symlink ${JSON.stringify(prefix)}`);
    }
    let target = await lstatOrUndefined(this.full(targetRel));
    if (!target || isOverlayWhiteout(target)) {
      // A link to a file of a lower layer: copy it up first, as overlayfs does.
      const lower = target ? undefined : await lookupInLayers(this.options.lowers, targetRel);
      if (!lower || lower.stat.isDirectory()) {
        throw hostile(what, header.name, `is a hardlink to ${JSON.stringify(header.linkname)}, which is not a file in the image (outside the tree)`);
      }
      const copyTo = await this.placeIn(targetRel, header.name);
      if (copyTo !== targetRel) throw hostile(what, header.name, `is a hardlink through a symlink of a lower layer`);
      await this.copyUp(lower.path, lower.stat, this.full(targetRel));
      target = await lstat(this.full(targetRel));
    }
    if (target.isDirectory()) throw hostile(what, header.name, `is a hardlink to the directory ${JSON.stringify(header.linkname)}`);
    await link(this.full(targetRel), this.full(path));
  }

  private async copyUp(source: string, stat: Stats, dest: string): Promise<void> {
    if (stat.isFile()) await copyFile(source, dest, constants.COPYFILE_EXCL);
    else if (stat.isSymbolicLink()) await symlink(await readlink(source), dest);
    else native().mknod(dest, (stat.mode & constants.S_IFMT) | 0o600, devMajor(stat.rdev), devMinor(stat.rdev));
    await this.copyMetadata(source, stat, dest, false);
  }

  /** Copies owner, mode, xattrs (not overlay's own) and times from a lower entry. */
  private async copyMetadata(source: string, stat: Stats, dest: string, isDir: boolean): Promise<void> {
    await lchown(dest, stat.uid, stat.gid);
    if (!stat.isSymbolicLink()) await chmod(dest, stat.mode & 0o7777);
    for (const name of native().llistxattr(source)) {
      if (name.startsWith('trusted.overlay.')) continue;
      const value = native().lgetxattr(source, name);
      if (value) native().lsetxattr(dest, name, value);
    }
    if (isDir) this.dirTimes.set(dest === this.options.target ? '' : dest.slice(this.options.target.length + 1), { atime: stat.atime, mtime: stat.mtime });
    else await lutimes(dest, stat.atime, stat.mtime);
  }

  private async setMetadata(path: string, header: Headers, type: Headers['type']): Promise<void> {
    const full = this.full(path);
    const mapping = this.options.idMapping;
    const pax = header.pax as Record<string, string> | undefined;
    // tar-stream ignores PAX uid/gid/mtime records (used for values the header cannot hold).
    const headerUid = paxInt(pax?.uid) ?? header.uid ?? 0;
    const headerGid = paxInt(pax?.gid) ?? header.gid ?? 0;
    const uid = this.mapped ? mapId(headerUid, mapping!.uids) : headerUid;
    const gid = this.mapped ? mapId(headerGid, mapping!.gids) : headerGid;
    await lchown(full, uid, gid);
    // After chown, which clears setuid/setgid bits.
    if (type !== 'symlink') await chmod(full, (header.mode ?? 0o644) & 0o7777);
    for (const [name, value] of paxXattrs(pax)) {
      // overlayfs's own attributes would change how the layers merge: never from a tar.
      if (name.startsWith('trusted.overlay.')) continue;
      try {
        native().lsetxattr(full, name, value);
      } catch (err) {
        throw new LazyrootError('FAILED_PRECONDITION', `${this.options.what}: entry ${JSON.stringify(header.name)}: cannot set xattr ${name}: ${(err as Error).message}`, { cause: err });
      }
    }
    const mtime = paxTime(pax?.mtime) ?? header.mtime ?? epoch;
    const atime = paxTime(pax?.atime) ?? mtime;
    if (type === 'directory') this.dirTimes.set(path, { atime, mtime });
    else await lutimes(full, atime, mtime);
  }
}

const epoch = new Date(0);

function paxInt(value: string | undefined): number | undefined {
  return value !== undefined && /^\d+$/.test(value) ? Number(value) : undefined;
}

function paxTime(value: string | undefined): Date | undefined {
  if (value === undefined) return undefined;
  const seconds = Number(value);
  return Number.isFinite(seconds) ? new Date(seconds * 1000) : undefined;
}

async function drain(body: Readable): Promise<void> {
  for await (const _ of body) void _;
}

/**
 * A comparable picture of a directory tree: every entry's type, metadata,
 * content hash, link target, device numbers, xattrs and hardlink grouping,
 * read without following symlinks. Two snapshots taken of trees made by
 * different unpackers (lazyroot's overlay diffs mounted by the kernel, and
 * `umoci unpack`) are compared with {@link diffTrees}:
 *
 *   const want = await snapshotTree(umociRootfs);
 *   const got = await snapshotTree(mergedDir);
 *   assert.deepEqual(diffTrees(want, got, { allow: [
 *     { path: /^usr$/, field: 'mtime', reason: 'implicit parent: umoci stamps it with the unpack time' },
 *   ] }), []);
 *
 * What is recorded, and what is deliberately not:
 * - mtime with nanoseconds (`mtime` whole seconds, floor, and `mtimeNsec`),
 *   compared as one field 'mtime': PAX records carry nanoseconds and an
 *   unpacker must keep them; atime and ctime never.
 * - `nlink` for non-directories only: a directory's link count is a property
 *   of the filesystem (ext4 counts subdirectories, btrfs says 1, overlayfs
 *   reports 1 for merged directories), not of the image.
 * - `hardlinkGroup` only for entries whose inode appears more than once in the
 *   snapshot. Groups are numbered 1, 2, … in the order of their first path, so
 *   equal trees give equal numbers; diffTrees compares the *members* of a
 *   path's group, not the numbers, so one extra link does not renumber every
 *   later group into a cascade of differences.
 * - xattrs as base64, because values are bytes (security.capability is a
 *   binary struct). `trusted.overlay.*` is overlayfs bookkeeping in a layer
 *   dir (opaque, redirect, origin…) and is left out unless asked for.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { native } from '../../src/native.js';

export type EntryType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';

export interface TreeEntry {
  /** Relative to the root, '/'-separated, no leading './'; the root itself is '.'. */
  path: string;
  type: EntryType;
  /** Permission bits with setuid (0o4000), setgid (0o2000) and sticky (0o1000). */
  mode: number;
  uid: number;
  gid: number;
  /** Regular files: bytes of content (the apparent size: holes count). */
  size?: number;
  /** Regular files: hex sha256 of the content. */
  sha256?: string;
  /** Symlinks: the target exactly as stored. */
  target?: string;
  /** Character and block devices: from st_rdev. */
  major?: number;
  minor?: number;
  /** Modification time, whole seconds since the epoch (floor). */
  mtime: number;
  /** Nanoseconds past `mtime` (0..999 999 999); compared together with it as 'mtime'. */
  mtimeNsec: number;
  /** Extended attribute name → base64 of the value. Empty when none. */
  xattrs: Record<string, string>;
  /** Link count; absent for directories (filesystem-specific, see above). */
  nlink?: number;
  /** Same number ⇔ same inode (dev + ino); absent for entries seen once. */
  hardlinkGroup?: number;
}

export interface SnapshotOptions {
  /**
   * Leave out this relative path (and, for a directory, everything under it).
   * Never asked about '.'.
   */
  ignore?: (relPath: string) => boolean;
  /** Keep `trusted.overlay.*` xattrs (default false: they are overlayfs-internal). */
  includeOverlayXattrs?: boolean;
}

/** Sort key making '/' sort before every other byte: 'a/b' < 'a-b' < 'a.b' < 'ab'. */
function sortKey(path: string): string {
  return path === '.' ? '' : path.replaceAll('/', '\u0000');
}

export function comparePaths(a: string, b: string): number {
  const ka = sortKey(a);
  const kb = sortKey(b);
  return ka < kb ? -1 : ka > kb ? 1 : 0;
}

const S_IFMT = 0o170000n;
const typeBits: Record<string, EntryType> = {
  [String(0o100000)]: 'file',
  [String(0o040000)]: 'dir',
  [String(0o120000)]: 'symlink',
  [String(0o020000)]: 'char',
  [String(0o060000)]: 'block',
  [String(0o010000)]: 'fifo',
  [String(0o140000)]: 'socket',
};

/**
 * glibc's gnu_dev_major/gnu_dev_minor on a 64-bit dev_t: major in bits 8-19
 * and 44-63, minor in bits 0-7 and 20-43 (each half a 32-bit number).
 */
export function splitRdev(rdev: bigint): { major: number; minor: number } {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & 0xfffff000n);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & 0xffffff00n);
  return { major: Number(major), minor: Number(minor) };
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

function readXattrs(path: string, includeOverlay: boolean): Record<string, string> {
  const addon = native();
  const out: Record<string, string> = {};
  for (const name of addon.llistxattr(path).sort()) {
    if (!includeOverlay && name.startsWith('trusted.overlay.')) continue;
    const value = addon.lgetxattr(path, name);
    // Listed, then removed before we read it: not part of the picture.
    if (value !== undefined) out[name] = value.toString('base64');
  }
  return out;
}

/** Walks `root` (not following symlinks) and describes every entry, sorted by path. */
export async function snapshotTree(root: string, options: SnapshotOptions = {}): Promise<TreeEntry[]> {
  const entries: TreeEntry[] = [];
  const inodes = new Map<string, TreeEntry[]>();
  const includeOverlay = options.includeOverlayXattrs ?? false;

  const visit = async (relPath: string): Promise<void> => {
    const full = relPath === '.' ? root : join(root, relPath);
    const st = await lstat(full, { bigint: true });
    const type = typeBits[String(Number(st.mode & S_IFMT))];
    if (type === undefined) throw new Error(`snapshotTree: ${full}: unknown file type 0o${(st.mode & S_IFMT).toString(8)}`);
    const entry: TreeEntry = {
      path: relPath,
      type,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtime: Number(st.mtimeNs / 1_000_000_000n) - (st.mtimeNs < 0n && st.mtimeNs % 1_000_000_000n !== 0n ? 1 : 0),
      mtimeNsec: Number(((st.mtimeNs % 1_000_000_000n) + 1_000_000_000n) % 1_000_000_000n),
      xattrs: readXattrs(full, includeOverlay),
    };
    if (type === 'file') {
      entry.size = Number(st.size);
      entry.sha256 = await sha256File(full);
    } else if (type === 'symlink') {
      entry.target = await readlink(full);
    } else if (type === 'char' || type === 'block') {
      Object.assign(entry, splitRdev(st.rdev));
    }
    if (type !== 'dir') {
      entry.nlink = Number(st.nlink);
      const key = `${st.dev}:${st.ino}`;
      const group = inodes.get(key);
      if (group) group.push(entry);
      else inodes.set(key, [entry]);
    }
    entries.push(entry);
    if (type === 'dir') {
      const names = await readdir(full);
      for (const name of names) {
        const child = relPath === '.' ? name : `${relPath}/${name}`;
        if (options.ignore?.(child)) continue;
        await visit(child);
      }
    }
  };

  await visit('.');
  entries.sort((a, b) => comparePaths(a.path, b.path));
  // Number the shared inodes by their first path in sort order.
  const shared = [...inodes.values()].filter((g) => g.length > 1);
  const firstPath = (g: TreeEntry[]): string => g.map((e) => e.path).sort(comparePaths)[0]!;
  shared.sort((a, b) => comparePaths(firstPath(a), firstPath(b)));
  shared.forEach((group, i) => {
    for (const entry of group) entry.hardlinkGroup = i + 1;
  });
  return entries;
}

export interface AllowedDifference {
  /** Matched against the entry's relative path ('.' for the root). */
  path: RegExp;
  /**
   * Which difference: a TreeEntry field ('mode', 'mtime', 'nlink', 'hardlinkGroup'…),
   * 'xattrs' for any xattr or 'xattrs.NAME' for one, 'exists' for "only in a/b".
   * Omitted: every difference at a matching path.
   */
  field?: string;
  reason: string;
}

export interface DiffOptions {
  /** Fields not compared at all (e.g. ['mtime'] when comparing against a fresh copy). */
  ignoreFields?: Array<keyof TreeEntry>;
  /** Known, named exceptions: matching differences are left out of the result. */
  allow?: AllowedDifference[];
}

export interface Difference {
  path: string;
  /** As in {@link AllowedDifference.field}. */
  field: string;
  message: string;
}

export interface DiffReport {
  /** Differences no `allow` entry covers: what a test asserts is empty. */
  differences: Difference[];
  /** Differences an `allow` entry covered, with its reason. */
  allowed: Array<Difference & { reason: string }>;
  /** Allow entries that matched nothing: stale exceptions (umoci fixed, test changed). */
  unusedAllows: AllowedDifference[];
}

const octal = (mode: number): string => mode.toString(8).padStart(4, '0');

function describe(field: keyof TreeEntry, value: unknown): string {
  if (value === undefined) return '(none)';
  if (field === 'mode' && typeof value === 'number') return octal(value);
  if (field === 'sha256' && typeof value === 'string') return value.slice(0, 12);
  if (field === 'mtime' && typeof value === 'number') return `${value} (${new Date(value * 1000).toISOString().replace('.000Z', 'Z')})`;
  if (typeof value === 'string') return JSON.stringify(value);
  return String(value);
}

/** An mtime with its nanoseconds: `1234567890.123456789 (2009-02-13T23:31:30Z)`. */
function describeTime(e: TreeEntry): string {
  const nsec = e.mtimeNsec ?? 0;
  return `${e.mtime}${nsec ? `.${String(nsec).padStart(9, '0')}` : ''} (${new Date(e.mtime * 1000).toISOString().replace('.000Z', 'Z')})`;
}

/** Compares two snapshots field by field; see {@link diffTrees}. */
export function diffTreesReport(a: TreeEntry[], b: TreeEntry[], options: DiffOptions = {}): DiffReport {
  const ignored = new Set<string>(options.ignoreFields ?? []);
  const raw: Difference[] = [];
  const byPathA = new Map(a.map((e) => [e.path, e]));
  const byPathB = new Map(b.map((e) => [e.path, e]));
  const linkedWith = (tree: TreeEntry[]): Map<string, string[]> => {
    const groups = new Map<number, string[]>();
    for (const e of tree) if (e.hardlinkGroup !== undefined) groups.set(e.hardlinkGroup, [...(groups.get(e.hardlinkGroup) ?? []), e.path]);
    const out = new Map<string, string[]>();
    for (const members of groups.values()) for (const p of members) out.set(p, members.filter((m) => m !== p).sort(comparePaths));
    return out;
  };
  const linksA = linkedWith(a);
  const linksB = linkedWith(b);
  const paths = [...new Set([...byPathA.keys(), ...byPathB.keys()])].sort(comparePaths);
  const scalarFields: Array<keyof TreeEntry> = ['type', 'mode', 'uid', 'gid', 'size', 'sha256', 'target', 'major', 'minor', 'mtime', 'nlink'];

  for (const path of paths) {
    const ea = byPathA.get(path);
    const eb = byPathB.get(path);
    if (!ea || !eb) {
      const present = (ea ?? eb)!;
      raw.push({ path, field: 'exists', message: `only in ${ea ? 'a' : 'b'}: ${path} (${present.type})` });
      continue;
    }
    for (const field of scalarFields) {
      if (ignored.has(field)) continue;
      // A type change makes the type-specific fields noise; report the type alone.
      if (field !== 'type' && ea.type !== eb.type && ['size', 'sha256', 'target', 'major', 'minor', 'nlink'].includes(field)) continue;
      if (field === 'mtime') {
        if (ea.mtime !== eb.mtime || ea.mtimeNsec !== eb.mtimeNsec) {
          raw.push({ path, field, message: `${path}: mtime ${describeTime(ea)} != ${describeTime(eb)}` });
        }
      } else if (ea[field] !== eb[field]) {
        raw.push({ path, field, message: `${path}: ${field} ${describe(field, ea[field])} != ${describe(field, eb[field])}` });
      }
    }
    if (!ignored.has('xattrs')) {
      const names = [...new Set([...Object.keys(ea.xattrs), ...Object.keys(eb.xattrs)])].sort();
      for (const name of names) {
        const va = ea.xattrs[name];
        const vb = eb.xattrs[name];
        if (va === vb) continue;
        const show = (v: string | undefined): string => (v === undefined ? '(none)' : `base64:${v}`);
        raw.push({ path, field: `xattrs.${name}`, message: `${path}: xattr ${name} ${show(va)} != ${show(vb)}` });
      }
    }
    if (!ignored.has('hardlinkGroup') && ea.type === eb.type) {
      const la = linksA.get(path) ?? [];
      const lb = linksB.get(path) ?? [];
      if (la.join('\n') !== lb.join('\n')) {
        raw.push({ path, field: 'hardlinkGroup', message: `${path}: hardlinked with [${la.join(', ')}] != [${lb.join(', ')}]` });
      }
    }
  }

  const allows = options.allow ?? [];
  const used = new Set<AllowedDifference>();
  const report: DiffReport = { differences: [], allowed: [], unusedAllows: [] };
  for (const d of raw) {
    const allow = allows.find(
      (x) => x.path.test(d.path) && (x.field === undefined || x.field === d.field || d.field.startsWith(`${x.field}.`)),
    );
    if (allow) {
      used.add(allow);
      report.allowed.push({ ...d, reason: allow.reason });
    } else {
      report.differences.push(d);
    }
  }
  report.unusedAllows = allows.filter((x) => !used.has(x));
  return report;
}

/**
 * Human-readable differences between two snapshots, e.g.
 * `etc/passwd: mode 0644 != 0600`, `only in a: x/y (file)`,
 * `bin/ping: xattr security.capability base64:… != (none)`,
 * `usr/bin/ls: hardlinked with [usr/bin/cat] != []`.
 * Empty means identical (up to `ignoreFields` and `allow`).
 */
export function diffTrees(a: TreeEntry[], b: TreeEntry[], options: DiffOptions = {}): string[] {
  return diffTreesReport(a, b, options).differences.map((d) => d.message);
}

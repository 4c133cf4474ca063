import { LazyrootError } from '../errors.js';
import type { IndexEntry } from '../index/types.js';
import type { MergedTree } from '../union/merge.js';

/**
 * An entry of the merged tree, as the union resolver hands it over: the
 * winning index entry, its layer, and its path inside that layer when it
 * differs (hardlinked names, paths written through a lower symlink).
 */
export type TreeEntry = IndexEntry & { layer: number; sourcePath?: string };

export type FsNodeType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo';

/** The entry a node reads through: a layer's entry (`sourcePath`, when set, is its path in that layer), or one made for an implicit directory. */
export type NodeEntry = IndexEntry & { sourcePath?: string };

/**
 * One inode of the mounted tree. Hardlinked paths share one node, so they
 * share `ino` and the kernel sees `nlink` of them. A node keeps only what its
 * entry does not say (a mount holds one per entry: hundreds of thousands);
 * the rest is read from the entry.
 */
export class FsNode {
  /** Paths naming this node; directories: 2 + subdirectories. */
  nlink: number;
  /** Directories: name → child. */
  readonly children: Map<string, FsNode> | undefined;
  readonly xattrs: ReadonlyMap<string, Buffer>;

  constructor(
    /** Stable for a given entry list: numbered in path order, the root is 1. */
    readonly ino: number,
    /** The entry the node was made from (for a hardlink group, the real file): where the reader finds the bytes. */
    readonly entry: NodeEntry,
    /** The layer holding the entry (-1: a directory the merge made up). */
    readonly layer: number,
  ) {
    const dir = entry.type === 'dir';
    this.nlink = dir ? 2 : 1;
    this.children = dir ? new Map() : undefined;
    this.xattrs = decodeXattrs(entry.xattrs);
  }

  get type(): FsNodeType {
    return this.entry.type as FsNodeType;
  }

  /** Permission bits with setuid/setgid/sticky (mode & 0o7777), as in IndexEntry. */
  get mode(): number {
    return this.entry.mode & 0o7777;
  }

  get uid(): number {
    return this.entry.uid;
  }

  get gid(): number {
    return this.entry.gid;
  }

  /** Regular files: bytes; symlinks: length of the target; others 0. */
  get size(): number {
    const e = this.entry;
    return e.type === 'file' ? e.size : e.type === 'symlink' ? Buffer.byteLength(e.linkname ?? '') : 0;
  }

  /** Whole seconds since the epoch (negative before 1970). */
  get mtime(): number {
    const e = this.entry;
    if (Number.isInteger(e.mtime) && (e.mtimeNsec ?? 0) < 1e9) return e.mtime;
    // An entry made by hand may hold fractional seconds.
    const whole = Math.floor(e.mtime);
    return whole + Math.floor(((e.mtimeNsec ?? 0) + Math.round((e.mtime - whole) * 1e9)) / 1e9);
  }

  /** Nanoseconds past `mtime`, 0..999 999 999. */
  get mtimeNsec(): number {
    const e = this.entry;
    if (Number.isInteger(e.mtime) && (e.mtimeNsec ?? 0) < 1e9) return e.mtimeNsec ?? 0;
    const whole = Math.floor(e.mtime);
    return ((e.mtimeNsec ?? 0) + Math.round((e.mtime - whole) * 1e9)) % 1e9;
  }

  /** Linux dev_t of char/block devices (glibc makedev), 0 otherwise. */
  get rdev(): number {
    const e = this.entry;
    return e.type === 'char' || e.type === 'block' ? makeDev(e.devmajor ?? 0, e.devminor ?? 0) : 0;
  }

  /** Symlinks: the target as written. */
  get target(): string | undefined {
    return this.entry.type === 'symlink' ? (this.entry.linkname ?? '') : undefined;
  }
}

/** The file-type bits of st_mode for each node type (S_IFREG, S_IFDIR…). */
export const fileTypeBits: Readonly<Record<FsNodeType, number>> = {
  file: 0o100000,
  dir: 0o040000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
  fifo: 0o010000,
};

/** glibc's makedev() for Linux: the dev_t that stat(2) reports for major:minor. */
export function makeDev(major: number, minor: number): number {
  const low = ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
  const high = (major & ~0xfff) >>> 0; // bits 32 and up, as a multiple of 2^32
  return low + high * 2 ** 32;
}

/**
 * A read-only tree of nodes, addressable by path (what FUSE's high-level API
 * passes, walked down the directories' children) and by inode number (what
 * we hand back as the open file handle, so reads find their node at once).
 */
export class FsTree {
  readonly root: FsNode;
  /** Distinct inodes, the root included. */
  readonly nodeCount: number;
  /** Bytes of all distinct regular files: what statfs reports as used. */
  readonly totalBytes: number;
  private readonly byIno: Array<FsNode | undefined>;

  constructor(root: FsNode, byIno: Array<FsNode | undefined>) {
    this.root = root;
    this.byIno = byIno;
    let count = 0;
    let bytes = 0;
    for (const node of byIno) {
      if (!node) continue;
      count++;
      if (node.type === 'file') bytes += node.size;
    }
    this.nodeCount = count;
    this.totalBytes = bytes;
  }

  /** The node at a path: FUSE's `/a/b`, or an entry path `a/b`; `/` and `''` are the root. */
  lookup(path: string): FsNode | undefined {
    let node = this.root;
    const n = path.length;
    let i = path.charCodeAt(0) === 0x2f ? 1 : 0;
    while (i < n) {
      let slash = path.indexOf('/', i);
      if (slash < 0) slash = n;
      const children = node.children;
      if (!children) return undefined;
      const next = children.get(path.slice(i, slash));
      if (!next) return undefined;
      node = next;
      i = slash + 1;
    }
    return node;
  }

  node(ino: number): FsNode | undefined {
    return this.byIno[ino];
  }
}

/**
 * Builds the tree from the union resolver's merged tree (mergeLayerTree: its
 * rows share the layers' entries), or from a list of entries: every path
 * once, hardlinks as `type: 'hardlink'` entries whose `linkname` names
 * another path of the list. Parents missing from the list appear as
 * root-owned 0755 directories, so a partial list still mounts.
 */
export function buildTree(merged: MergedTree | readonly TreeEntry[]): FsTree {
  if (!isEntryList(merged)) return buildFromRows(merged.paths, merged.entries, merged.layers);
  // Path order makes inode numbers stable: the same list always mounts with the same numbers.
  let sorted = true;
  for (let i = 1; i < merged.length && sorted; i++) if (merged[i - 1]!.path >= merged[i]!.path) sorted = false;
  const list = sorted ? merged : [...merged].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  for (let i = 1; i < list.length; i++) if (list[i - 1]!.path === list[i]!.path) throw invalid(`path ${JSON.stringify(list[i]!.path)} appears twice`);
  return buildFromRows(
    list.map((e) => e.path),
    list,
    list.map((e) => e.layer),
  );
}

function isEntryList(value: MergedTree | readonly TreeEntry[]): value is readonly TreeEntry[] {
  return Array.isArray(value);
}

/** The tree of rows sorted by path, each path once (`''`, the root, may be among them). */
function buildFromRows(paths: readonly string[], entries: readonly NodeEntry[], layers: ArrayLike<number>): FsTree {
  const n = paths.length;
  for (let i = 1; i < n; i++) if (!(paths[i - 1]! < paths[i]!)) throw invalid(`path ${JSON.stringify(paths[i])} appears twice or out of order`);
  const byIno: Array<FsNode | undefined> = [undefined];
  const newNode = (entry: NodeEntry, layer: number): FsNode => {
    const node = new FsNode(byIno.length, entry, layer);
    byIno.push(node);
    return node;
  };

  const rootRow = n > 0 && paths[0] === '' ? 0 : -1;
  const rootEntry = rootRow === 0 ? entries[0]! : undefined;
  if (rootEntry && rootEntry.type !== 'dir') throw invalid(`the root entry is a ${rootEntry.type}, not a directory`);
  const root = rootEntry ? newNode(rootEntry, layers[0]!) : newNode(implicitDir(''), -1);

  // The directory last found: in path order, most entries sit in the previous one's directory.
  let lastDirPath = '';
  let lastDir = root;
  const dirAt = (path: string): FsNode => {
    if (path === lastDirPath) return lastDir;
    if (path === '') return root;
    const parent = dirAt(parentOf(path));
    const name = baseName(path);
    let dir = parent.children!.get(name);
    if (dir) {
      if (dir.type !== 'dir') throw invalid(`${JSON.stringify(path)} is a ${dir.type} but has entries below it`);
    } else {
      dir = newNode(implicitDir(path), -1);
      attach(parent, name, dir, path);
    }
    lastDirPath = path;
    lastDir = dir;
    return dir;
  };

  // Real nodes first, then hardlinks onto them: a link may sort before its target.
  const links: number[] = [];
  for (let i = rootRow + 1; i < n; i++) {
    const entry = entries[i]!;
    if (entry.type === 'hardlink') {
      links.push(i);
      continue;
    }
    // Sorted, a path comes before everything below it: its parent is real or implicit already.
    const path = paths[i]!;
    const node = newNode(entry, layers[i]!);
    attach(dirAt(parentOf(path)), baseName(path), node, path);
    if (node.children) {
      lastDirPath = path;
      lastDir = node;
    }
  }

  const tree = new FsTree(root, byIno);
  for (const i of links) {
    const path = paths[i]!;
    const target = resolveLink(i, paths, entries);
    const node = tree.lookup(target);
    if (!node) throw invalid(`hardlink ${JSON.stringify(path)}: target ${JSON.stringify(target)} is not in the tree`);
    if (node.type === 'dir') throw invalid(`hardlink ${JSON.stringify(path)}: target ${JSON.stringify(target)} is a directory`);
    node.nlink++;
    attach(dirAt(parentOf(path)), baseName(path), node, path);
  }
  return tree;
}

/** Row of `path` in sorted `paths`, or -1. */
function rowOf(paths: readonly string[], path: string): number {
  let lo = 0;
  let hi = paths.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const p = paths[mid]!;
    if (p === path) return mid;
    if (p < path) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

/** Follows a chain of hardlink rows to the path of the real one. */
function resolveLink(row: number, paths: readonly string[], entries: readonly NodeEntry[]): string {
  const seen = new Set<number>();
  const linkPath = paths[row]!;
  let current = row;
  while (entries[current]!.type === 'hardlink') {
    if (seen.has(current)) throw invalid(`hardlink ${JSON.stringify(linkPath)}: links form a cycle`);
    seen.add(current);
    const target = entries[current]!.linkname;
    if (target === undefined) throw invalid(`hardlink ${JSON.stringify(paths[current])} has no target`);
    const next = rowOf(paths, target);
    if (next < 0) throw invalid(`hardlink ${JSON.stringify(linkPath)}: target ${JSON.stringify(target)} is not in the tree`);
    current = next;
  }
  return paths[current]!;
}

function attach(parent: FsNode, name: string, child: FsNode, path: string): void {
  // Only a hardlink can land on a name taken already: by an implicit parent of paths below it.
  if (parent.children!.has(name)) throw invalid(`hardlink ${JSON.stringify(path)} has entries below it`);
  parent.children!.set(name, child);
  if (child.type === 'dir') parent.nlink++; // the child's '..'
}

/** Shared by every node without xattrs (nearly all): one empty map, not thousands. */
const noXattrs: ReadonlyMap<string, Buffer> = new Map();

function decodeXattrs(xattrs: Record<string, string> | undefined): ReadonlyMap<string, Buffer> {
  if (!xattrs) return noXattrs;
  const map = new Map<string, Buffer>();
  for (const [name, value] of Object.entries(xattrs)) map.set(name, Buffer.from(value, 'base64'));
  return map.size ? map : noXattrs;
}

const implicitDir = (path: string): NodeEntry => ({ path, type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0 });

function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash < 0 ? '' : path.slice(0, slash);
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

function invalid(why: string): LazyrootError {
  return new LazyrootError('INVALID_DATA', `build mount tree: ${why}`);
}

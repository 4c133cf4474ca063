import { LazyrootError } from '../errors.js';
import type { IndexEntry } from '../index/types.js';

/**
 * An entry of the merged tree, as the union resolver hands it over: the
 * winning index entry, its layer, and its path inside that layer when it
 * differs (hardlinked names, paths written through a lower symlink).
 */
export type TreeEntry = IndexEntry & { layer: number; sourcePath?: string };

export type FsNodeType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo';

/**
 * One inode of the mounted tree. Hardlinked paths share one node, so they
 * share `ino` and the kernel sees `nlink` of them.
 */
export interface FsNode {
  /** Stable for a given entry list: numbered in path order, the root is 1. */
  readonly ino: number;
  readonly type: FsNodeType;
  /** Permission bits with setuid/setgid/sticky (mode & 0o7777), as in IndexEntry. */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** Regular files: bytes; symlinks: length of the target; others 0. */
  readonly size: number;
  /** Whole seconds since the epoch (negative before 1970). */
  readonly mtime: number;
  /** Nanoseconds past `mtime`, 0..999 999 999. */
  readonly mtimeNsec: number;
  /** Paths naming this node; directories: 2 + subdirectories. */
  readonly nlink: number;
  /** Linux dev_t of char/block devices (glibc makedev), 0 otherwise. */
  readonly rdev: number;
  /** Symlinks: the target as written. */
  readonly target?: string;
  readonly xattrs: ReadonlyMap<string, Buffer>;
  /** Directories: name → child. */
  readonly children?: Map<string, FsNode>;
  /** The entry the node was made from (for a hardlink group, the real file): where the reader finds the bytes. */
  readonly entry?: TreeEntry;
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
 * passes) and by inode number (what we hand back as the open file handle).
 */
export class FsTree {
  readonly root: FsNode;
  /** Distinct inodes, the root included. */
  readonly nodeCount: number;
  /** Bytes of all distinct regular files: what statfs reports as used. */
  readonly totalBytes: number;
  private readonly byPath: Map<string, FsNode>;
  private readonly byIno: Array<FsNode | undefined>;

  constructor(root: FsNode, byPath: Map<string, FsNode>, byIno: Array<FsNode | undefined>) {
    this.root = root;
    this.byPath = byPath;
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
    const hit = this.byPath.get(path); // FUSE paths are already canonical: the common case is one Map probe
    if (hit || path.startsWith('/')) return hit;
    return this.byPath.get(path === '' ? '/' : `/${path}`);
  }

  node(ino: number): FsNode | undefined {
    return this.byIno[ino];
  }
}

/** While the tree is built, links and subdirectories are still being counted. */
interface MutableNode extends FsNode {
  nlink: number;
}

/**
 * Builds the tree from the union resolver's merged list: every path once,
 * hardlinks as `type: 'hardlink'` entries whose `linkname` names another
 * path of the list. Parents missing from the list appear as root-owned 0755
 * directories, so a partial list still mounts.
 */
export function buildTree(entries: readonly TreeEntry[]): FsTree {
  const byEntryPath = new Map<string, TreeEntry>();
  for (const e of entries) {
    if (byEntryPath.has(e.path)) throw invalid(`path ${JSON.stringify(e.path)} appears twice`);
    byEntryPath.set(e.path, e);
  }

  // Path order makes inode numbers stable: the same list always mounts with the same numbers.
  // The union resolver hands its list over sorted already: sort only when it is not.
  const paths: string[] = [];
  let sorted = true;
  for (const e of entries) {
    if (e.path === '') continue;
    if (sorted && paths.length > 0 && paths[paths.length - 1]! >= e.path) sorted = false;
    paths.push(e.path);
  }
  if (!sorted) paths.sort();
  const byIno: Array<FsNode | undefined> = [undefined];
  const byPath = new Map<string, FsNode>();

  const rootEntry = byEntryPath.get('');
  if (rootEntry && rootEntry.type !== 'dir') throw invalid(`the root entry is a ${rootEntry.type}, not a directory`);
  const root = newNode(byIno, rootEntry ?? implicitDir(''));
  byPath.set('/', root);

  const dirAt = (path: string): FsNode => {
    const fusePath = `/${path}`;
    const existing = path === '' ? root : byPath.get(fusePath);
    if (existing) {
      if (existing.type !== 'dir') throw invalid(`${JSON.stringify(path)} is a ${existing.type} but has entries below it`);
      return existing;
    }
    const parent = dirAt(parentOf(path));
    const dir = newNode(byIno, implicitDir(path));
    attach(parent, path, dir);
    byPath.set(fusePath, dir);
    return dir;
  };

  // Real nodes first, then hardlinks onto them: a link may sort before its target.
  const links: TreeEntry[] = [];
  for (const path of paths) {
    const entry = byEntryPath.get(path)!;
    if (entry.type === 'hardlink') {
      links.push(entry);
      continue;
    }
    // Sorted, a path comes before everything below it: its parent is real or implicit already.
    const node = newNode(byIno, entry);
    attach(dirAt(parentOf(path)), path, node);
    byPath.set(`/${path}`, node);
  }

  for (const link of links) {
    const target = resolveLink(link, byEntryPath);
    const node = byPath.get(`/${target}`) as MutableNode | undefined;
    if (!node) throw invalid(`hardlink ${JSON.stringify(link.path)}: target ${JSON.stringify(target)} is not in the tree`);
    if (node.type === 'dir') throw invalid(`hardlink ${JSON.stringify(link.path)}: target ${JSON.stringify(target)} is a directory`);
    node.nlink++;
    attach(dirAt(parentOf(link.path)), link.path, node);
    byPath.set(`/${link.path}`, node);
  }

  return new FsTree(root, byPath, byIno);
}

/** Follows a chain of hardlink entries to the path of the real one. */
function resolveLink(link: TreeEntry, byEntryPath: Map<string, TreeEntry>): string {
  const seen = new Set<string>();
  let current = link;
  while (current.type === 'hardlink') {
    if (seen.has(current.path)) throw invalid(`hardlink ${JSON.stringify(link.path)}: links form a cycle`);
    seen.add(current.path);
    const target = current.linkname;
    if (target === undefined) throw invalid(`hardlink ${JSON.stringify(current.path)} has no target`);
    const next = byEntryPath.get(target);
    if (!next) throw invalid(`hardlink ${JSON.stringify(link.path)}: target ${JSON.stringify(target)} is not in the tree`);
    current = next;
  }
  return current.path;
}

function newNode(byIno: Array<FsNode | undefined>, entry: TreeEntry): MutableNode {
  const type = entry.type as FsNodeType;
  // Whole seconds and nanoseconds (an entry made by hand may hold fractional seconds).
  const mtime = Math.floor(entry.mtime);
  const mtimeNsec = (entry.mtimeNsec ?? 0) + Math.round((entry.mtime - mtime) * 1e9);
  const node: MutableNode = {
    ino: byIno.length,
    type,
    mode: entry.mode & 0o7777,
    uid: entry.uid,
    gid: entry.gid,
    size: type === 'file' ? entry.size : type === 'symlink' ? Buffer.byteLength(entry.linkname ?? '') : 0,
    mtime: mtime + Math.floor(mtimeNsec / 1e9),
    mtimeNsec: mtimeNsec % 1e9,
    nlink: type === 'dir' ? 2 : 1,
    rdev: type === 'char' || type === 'block' ? makeDev(entry.devmajor ?? 0, entry.devminor ?? 0) : 0,
    target: type === 'symlink' ? (entry.linkname ?? '') : undefined,
    xattrs: decodeXattrs(entry.xattrs),
    children: type === 'dir' ? new Map() : undefined,
    entry,
  };
  byIno.push(node);
  return node;
}

function attach(parent: FsNode, path: string, child: FsNode): void {
  const name = baseName(path);
  // Only a hardlink can land on a name taken already: by an implicit parent of paths below it.
  if (parent.children!.has(name)) throw invalid(`hardlink ${JSON.stringify(path)} has entries below it`);
  parent.children!.set(name, child);
  if (child.type === 'dir') (parent as MutableNode).nlink++; // the child's '..'
}

/** Shared by every node without xattrs (nearly all): one empty map, not thousands. */
const noXattrs: ReadonlyMap<string, Buffer> = new Map();

function decodeXattrs(xattrs: Record<string, string> | undefined): ReadonlyMap<string, Buffer> {
  if (!xattrs) return noXattrs;
  const map = new Map<string, Buffer>();
  for (const [name, value] of Object.entries(xattrs)) map.set(name, Buffer.from(value, 'base64'));
  return map.size ? map : noXattrs;
}

const implicitDir = (path: string): TreeEntry => ({ path, type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0, layer: -1 });

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

import type { IndexEntry } from '../index/types.js';
import { classifyEntry, hostile, parentOf } from '../oci/entry-path.js';

/**
 * A merged entry: the index entry that wins at a path, the layer holding its
 * data, and the path it has inside that layer's index (which differs from
 * `path` for hardlinked names and for paths written through a lower symlink).
 */
export type MergedEntry = IndexEntry & { layer: number; sourcePath: string };

/**
 * A file's identity in the merged tree. Hardlinks share one node: a link is
 * bound to the content it pointed at when it was made, so replacing or
 * deleting the target path later leaves the link's content alone (as the
 * copy-up in an overlay diff does). The entry's own `path` is its path in its
 * layer's index.
 */
interface Node {
  entry: IndexEntry;
  layer: number;
  /** Where `entry` is in its layer's list; -1 for an entry the merge made. */
  index: number;
}

/**
 * The merged tree as columns, one row per visible path, without a copy of
 * any layer's entry: `entries[i]` is the entry at `paths[i]` as its layer's
 * index has it (so its `path` is where it sits in that layer, which differs
 * from `paths[i]` for a file's further hardlinked names and for paths written
 * through a lower symlink), or one the merge made (implicit directories, the
 * root, `type: 'hardlink'` rows for further names of a file).
 */
export interface MergedTree {
  /** Every visible path, sorted (`''`, the root, first). */
  readonly paths: string[];
  readonly entries: IndexEntry[];
  /** The layer each row's entry comes from (-1: the implicit root). */
  readonly layers: Int32Array;
  /** Where each row's entry is in its layer's list (`layers[i]`); -1 for an entry the merge made. */
  readonly indexes: Int32Array;
}

/**
 * A copy of `e` at `path`, field by field: object spread of entries (whose
 * optional fields give them many shapes) takes V8's slow path.
 */
function mergedEntry(e: IndexEntry, path: string, layer: number, sourcePath: string): MergedEntry {
  const m: MergedEntry = { path, type: e.type, mode: e.mode, uid: e.uid, gid: e.gid, size: e.size, mtime: e.mtime, layer, sourcePath };
  if (e.mtimeNsec !== undefined) m.mtimeNsec = e.mtimeNsec;
  if (e.linkname !== undefined) m.linkname = e.linkname;
  if (e.devmajor !== undefined) m.devmajor = e.devmajor;
  if (e.devminor !== undefined) m.devminor = e.devminor;
  if (e.xattrs !== undefined) m.xattrs = e.xattrs;
  if (e.dataOffset !== undefined) m.dataOffset = e.dataOffset;
  if (e.sparse !== undefined) m.sparse = e.sparse;
  return m;
}

/** A further name of a hardlinked file: a copy of `e` (at its own path) of type hardlink, linking to `first`, the file's first path. */
function linkEntry(e: IndexEntry, first: string): IndexEntry {
  const link: IndexEntry = { path: e.path, type: 'hardlink', mode: e.mode, uid: e.uid, gid: e.gid, size: e.size, mtime: e.mtime };
  if (e.mtimeNsec !== undefined) link.mtimeNsec = e.mtimeNsec;
  link.linkname = first;
  if (e.devmajor !== undefined) link.devmajor = e.devmajor;
  if (e.devminor !== undefined) link.devminor = e.devminor;
  if (e.xattrs !== undefined) link.xattrs = e.xattrs;
  if (e.dataOffset !== undefined) link.dataOffset = e.dataOffset;
  if (e.sparse !== undefined) link.sparse = e.sparse;
  return link;
}

const implicitDir = (path: string): IndexEntry => ({ path, type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0 });

/**
 * mergeLayerTree as one list of entries, each a copy at its merged path with
 * its layer and `sourcePath` (its path in that layer's index); hardlinks come
 * out as `type: 'hardlink'` entries whose `linkname` is another returned
 * path holding the file.
 */
export function mergeLayers(layers: ReadonlyArray<readonly IndexEntry[]>, what: (layer: number) => string = (i) => `layer ${i + 1}`): MergedEntry[] {
  const { paths, entries, layers: layerOf } = mergeLayerTree(layers, what);
  const out: MergedEntry[] = new Array(paths.length);
  for (let i = 0; i < paths.length; i++) {
    const e = entries[i]!;
    out[i] = mergedEntry(e, paths[i]!, layerOf[i]!, e.path);
  }
  return out;
}

/**
 * Merges layer indexes (bottom layer first) into the tree a container sees,
 * with the semantics lazyroot's overlay unpacker writes to disk
 * (src/unpack/layer-applier.ts), so both paths show the same tree:
 * - whiteouts and opaque markers hide entries of *lower* layers only; entries
 *   of their own layer stay, in whatever order the tar has them, and a
 *   hardlink of the layer may name a lower file the layer hides (the link
 *   keeps it: `d/new-link -> d/t` with `d/.wh.t` leaves new-link, not d/t);
 * - a directory over a directory merges; anything else replaces;
 * - missing parents appear as root-owned 0755 directories with mtime 0;
 * - a parent that is a symlink of a lower layer is followed inside the root
 *   (`bin -> usr/bin`); one planted by the same layer is refused.
 * Returns every visible path, sorted; hardlinks come out as `type: 'hardlink'`
 * entries whose `linkname` is another returned path holding the file.
 */
export function mergeLayerTree(layers: ReadonlyArray<readonly IndexEntry[]>, what: (layer: number) => string = (i) => `layer ${i + 1}`): MergedTree {
  const tree = new Map<string, Node>();
  tree.set('', { entry: implicitDir(''), layer: -1, index: -1 });
  /** Nodes a hardlink of some layer put at a second path. */
  const linked = new Set<Node>();
  /**
   * Each directory's paths below it, made the first time something is
   * removed (a whiteout, an opaque directory, a path put again), then kept
   * up: a layer that only adds (a single-layer image, the bottom layer)
   * needs none.
   */
  let children: Map<string, Set<string>> | undefined;
  const childrenIndex = (): Map<string, Set<string>> => {
    if (children) return children;
    children = new Map([['', new Set()]]);
    for (const [path, node] of tree) if (path !== '' && node.entry.type === 'dir') children.set(path, new Set());
    for (const path of tree.keys()) if (path !== '') children.get(parentOf(path))!.add(path);
    return children;
  };

  /** Removes `path` and everything below it; `hidden` collects what was there. */
  const removeSubtree = (path: string, hidden?: Map<string, Node>): void => {
    const index = childrenIndex();
    const kids = index.get(path);
    if (kids) for (const k of [...kids]) removeSubtree(k, hidden);
    const node = tree.get(path);
    if (hidden && node) hidden.set(path, node);
    index.delete(path);
    tree.delete(path);
    index.get(parentOf(path))?.delete(path);
  };
  const put = (path: string, node: Node): void => {
    tree.set(path, node);
    if (!children) return;
    children.get(parentOf(path))!.add(path);
    if (node.entry.type === 'dir' && !children.has(path)) children.set(path, new Set());
  };

  layers.forEach((entries, layer) => {
    const name = what(layer);
    const whiteouts: string[] = [];
    const opaques: string[] = [];
    for (const e of entries) {
      const role = classifyEntry(e.path);
      if (role.kind === 'whiteout') whiteouts.push(role.target);
      else if (role.kind === 'opaque') opaques.push(role.dir);
      else if (role.kind === 'invalid-whiteout') throw hostile(name, e.path, 'is an invalid whiteout: of "." or "..", outside its own directory');
    }

    /** Resolves a parent path as the unpacker does, creating implicit directories. */
    const ensureDir = (rel: string, entryName: string): string => {
      // Paths in the tree are resolved already: a directory there needs no walk.
      if (tree.get(rel)?.entry.type === 'dir') return rel;
      const pending = rel === '' ? [] : rel.split('/');
      const done: string[] = [];
      let hops = 0;
      while (pending.length) {
        const part = pending.shift()!;
        if (part === '' || part === '.') continue;
        if (part === '..') {
          done.pop();
          continue;
        }
        const prefix = [...done, part].join('/');
        const node = tree.get(prefix);
        if (node?.entry.type === 'dir') {
          done.push(part);
          continue;
        }
        if (node?.entry.type === 'symlink') {
          if (node.layer === layer) throw hostile(name, entryName, `would be written through the symlink ${JSON.stringify(prefix)}`);
          if (++hops > 40) throw hostile(name, entryName, `meets too many symlinks (a loop?) at ${JSON.stringify(prefix)}`);
          const target = node.entry.linkname ?? '';
          if (target.startsWith('/')) done.length = 0;
          pending.unshift(...target.split('/'));
          continue;
        }
        // Not a directory, and put by this very layer (every node of this layer is one of its own entries or links).
        if (node && node.layer === layer) {
          throw hostile(name, entryName, `has a parent ${JSON.stringify(prefix)} that is not a directory`);
        }
        if (node) removeSubtree(prefix); // a lower file under a new directory: the directory wins
        put(prefix, { entry: implicitDir(prefix), layer, index: -1 });
        done.push(part);
      }
      return done.join('/');
    };

    // 1. This layer's whiteouts and opaque markers hide what the layers below put there.
    //    A hardlink of this layer may still name a hidden file (a whiteout only hides
    //    lower layers from the layers above, not from this layer's own links).
    const hidden = new Map<string, Node>();
    for (const dir of opaques) {
      const resolved = ensureDir(dir, `${dir}/.wh..wh..opq`);
      for (const k of [...(childrenIndex().get(resolved) ?? [])]) removeSubtree(k, hidden);
    }
    for (const target of whiteouts) {
      const parent = ensureDir(parentOf(target), target);
      const base = target.slice(target.lastIndexOf('/') + 1);
      removeSubtree(parent ? `${parent}/${base}` : base, hidden);
    }

    // 2. Its own entries, in tar order.
    for (let index = 0; index < entries.length; index++) {
      const e = entries[index]!;
      const role = classifyEntry(e.path);
      if (role.kind !== 'normal') continue;
      if (e.path === '') {
        tree.set('', { entry: { ...e, type: 'dir' }, layer, index: -1 });
        continue;
      }
      const slash = e.path.lastIndexOf('/');
      const rel = slash < 0 ? '' : e.path.slice(0, slash);
      const parent = ensureDir(rel, e.path);
      // Mostly the parent is where the entry says: its own path string, not a copy of it.
      const path = parent === rel ? e.path : parent ? `${parent}/${e.path.slice(slash + 1)}` : e.path.slice(slash + 1);
      const existing = tree.get(path);
      if (e.type === 'hardlink') {
        const target = tree.get(e.linkname ?? '') ?? hidden.get(e.linkname ?? '');
        if (!target || target.entry.type === 'dir') {
          throw hostile(name, e.path, `is a hardlink to ${JSON.stringify(e.linkname)}, which is not a file in the image (outside the tree)`);
        }
        if (existing) removeSubtree(path);
        put(path, target);
        linked.add(target);
        continue;
      }
      if (existing && !(e.type === 'dir' && existing.entry.type === 'dir')) removeSubtree(path);
      put(path, { entry: e, layer, index });
    }
  });

  // Flatten: the first path (in sorted order) of each node holds it; other paths link to it.
  const paths = [...tree.keys()].sort();
  const entries: IndexEntry[] = new Array(paths.length);
  const layerOf = new Int32Array(paths.length);
  const indexes = new Int32Array(paths.length);
  const holder = new Map<Node, string>();
  for (let i = 0; i < paths.length; i++) {
    const path = paths[i]!;
    const node = tree.get(path)!;
    layerOf[i] = node.layer;
    indexes[i] = node.index;
    const first = linked.has(node) ? holder.get(node) : undefined;
    if (first === undefined) {
      if (linked.has(node)) holder.set(node, path);
      entries[i] = node.entry;
    } else {
      entries[i] = linkEntry(node.entry, first);
      indexes[i] = -1;
    }
  }
  return { paths, entries, layers: layerOf, indexes };
}

import { classifyEntry, parentOf } from '../oci/entry-path.js';
import type { IndexEntry } from '../index/types.js';
import { overlayOpaqueXattr } from './overlay-format.js';

/** An entry of one layer as an overlayfs lower directory shows it. */
export type OverlayLowerEntry = IndexEntry & { layer: number };

/** `y`, base64, as IndexEntry xattrs hold values. */
const opaqueValue = Buffer.from('y').toString('base64');

/**
 * One layer's tar members in overlayfs's lower-directory format (what the
 * unpacker writes to `layers/<chain-id>/diff`, and what Podman stacks an
 * additional layer store's `diff/` as): `.wh.NAME` becomes a 0/0 character
 * device NAME, `.wh..wh..opq` becomes `trusted.overlay.opaque=y` on its
 * directory. Not merged with anything: the whiteouts stay, for overlayfs to
 * apply to the layers below. A 0/0 device in the tar itself is left out (it
 * would read as a whiteout: the unpacker refuses it the same way); aufs
 * metadata (`.wh..wh.plnk/…`) is left out; a path listed twice keeps its last
 * entry, as unpacking does. A whiteout of a name the layer also puts is
 * dropped: the layer's own entry already hides the lower one.
 *
 * A directory the layer writes into without listing it (an implicit parent)
 * takes its metadata from `lowerDir(path)`, the directory below, as the
 * unpacker's copy-up does: in overlayfs the upper directory's mode and owner
 * win, so a made-up 0755 would change what the container sees.
 */
export function overlayLowerEntries(entries: readonly IndexEntry[], layer = 0, lowerDir: (path: string) => IndexEntry | undefined = () => undefined): OverlayLowerEntry[] {
  const byPath = new Map<string, OverlayLowerEntry>();
  const whiteouts: IndexEntry[] = [];
  const opaqueDirs: string[] = [];
  for (const e of entries) {
    const role = classifyEntry(e.path);
    if (role.kind === 'whiteout') whiteouts.push({ ...e, path: role.target });
    else if (role.kind === 'opaque') opaqueDirs.push(role.dir);
    else if (role.kind === 'normal') {
      if (e.type === 'char' && (e.devmajor ?? 0) === 0 && (e.devminor ?? 0) === 0) continue;
      byPath.delete(e.path); // re-inserted: keeps path order of the last occurrence
      byPath.set(e.path, { ...e, layer });
    }
  }
  for (const w of whiteouts) {
    if (byPath.has(w.path)) continue;
    byPath.set(w.path, { path: w.path, type: 'char', mode: 0, uid: 0, gid: 0, size: 0, mtime: w.mtime, devmajor: 0, devminor: 0, layer });
  }
  for (const dir of opaqueDirs) {
    const existing = byPath.get(dir);
    const base: OverlayLowerEntry = existing ?? implicitDir(dir, layer, lowerDir);
    if (base.type !== 'dir') continue; // an opaque marker under a non-directory: the tree builder reports the conflict
    byPath.set(dir, { ...base, xattrs: { ...base.xattrs, [overlayOpaqueXattr]: opaqueValue } });
  }
  // Implicit parents, after the opaque markers (which may have made some of them already).
  for (const path of [...byPath.keys()]) {
    for (let parent = parentOf(path); parent !== '' && !byPath.has(parent); parent = parentOf(parent)) byPath.set(parent, implicitDir(parent, layer, lowerDir));
  }
  return [...byPath.values()];
}

function implicitDir(path: string, layer: number, lowerDir: (path: string) => IndexEntry | undefined): OverlayLowerEntry {
  const lower = lowerDir(path);
  if (lower?.type === 'dir') return { path, type: 'dir', mode: lower.mode, uid: lower.uid, gid: lower.gid, size: 0, mtime: lower.mtime, ...(lower.mtimeNsec !== undefined ? { mtimeNsec: lower.mtimeNsec } : {}), ...(lower.xattrs ? { xattrs: lower.xattrs } : {}), layer };
  return { path, type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0, layer };
}

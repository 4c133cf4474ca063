import { classifyEntry } from '../oci/entry-path.js';
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
 */
export function overlayLowerEntries(entries: readonly IndexEntry[], layer = 0): OverlayLowerEntry[] {
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
    const base: OverlayLowerEntry = existing ?? { path: dir, type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0, layer };
    if (base.type !== 'dir') continue; // an opaque marker under a non-directory: the tree builder reports the conflict
    byPath.set(dir, { ...base, xattrs: { ...base.xattrs, [overlayOpaqueXattr]: opaqueValue } });
  }
  return [...byPath.values()];
}

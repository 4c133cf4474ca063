import { LazyrootError } from '../errors.js';

/** OCI whiteout prefix: `.wh.NAME` deletes NAME from the layers below. */
export const whiteoutPrefix = '.wh.';
/** OCI opaque marker: `DIR/.wh..wh..opq` hides everything below DIR from lower layers. */
export const opaqueMarker = '.wh..wh..opq';
/** Reserved prefix of aufs metadata (`.wh..wh.plnk`, `.wh..wh.aufs`): never real files. */
const reservedPrefix = '.wh..wh.';

/**
 * A tar member's path made relative and canonical (`./a//b/` → `a/b`), or
 * `''` for the root itself. Absolute paths and any `..` component are
 * refused: a layer never needs them, and they are how archives escape.
 */
export function normalizeEntryPath(name: string, what: string): string {
  if (canonical.test(name)) return name; // the common case, without splitting (indexes hold many thousands)
  if (name === '') throw hostile(what, name, 'has an empty name (invalid)');
  if (name.includes('\0')) throw hostile(what, name, 'contains a NUL byte');
  if (name.startsWith('/')) throw hostile(what, name, 'is absolute: entries must stay inside the layer (escapes the root)');
  const parts: string[] = [];
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw hostile(what, name, 'has a ".." component: it escapes the layer root');
    parts.push(part);
  }
  return parts.join('/');
}

/** Already relative and canonical: no empty, `.` or `..` component, no leading or trailing slash, no NUL. */
const canonical = /^(?!\.\.?(?:\/|$))(?:[^/\0]+\/(?!\.\.?(?:\/|$)))*[^/\0]+$/;

export type EntryRole =
  | { kind: 'normal' }
  | { kind: 'whiteout'; target: string }
  | { kind: 'opaque'; dir: string }
  | { kind: 'reserved' }
  /** `.wh.`, `.wh..`, `.wh...`: a whiteout of the directory itself or of its parent. */
  | { kind: 'invalid-whiteout' };

const normalRole: EntryRole = Object.freeze({ kind: 'normal' });

/** What a (normalized) tar path means for the union: a file, a whiteout, an opaque marker. */
export function classifyEntry(path: string): EntryRole {
  if (!path.includes(whiteoutPrefix)) return normalRole; // nearly every entry: no allocation
  const slash = path.lastIndexOf('/');
  const base = path.slice(slash + 1);
  const parent = slash < 0 ? '' : path.slice(0, slash);
  // Anything inside aufs metadata (`.wh..wh.plnk/…`) is aufs's, not the image's.
  if (parent.split('/').some((part) => part.startsWith(reservedPrefix))) return { kind: 'reserved' };
  if (!base.startsWith(whiteoutPrefix)) return { kind: 'normal' };
  if (base === opaqueMarker) return { kind: 'opaque', dir: parent };
  if (base.startsWith(reservedPrefix)) return { kind: 'reserved' };
  const name = base.slice(whiteoutPrefix.length);
  if (name === '' || name === '.' || name === '..') return { kind: 'invalid-whiteout' };
  return { kind: 'whiteout', target: parent ? `${parent}/${name}` : name };
}

export function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash < 0 ? '' : path.slice(0, slash);
}

export function hostile(what: string, name: string, why: string): LazyrootError {
  return new LazyrootError('HOSTILE_ARCHIVE', `${what}: entry ${JSON.stringify(name)} ${why}; refused`);
}

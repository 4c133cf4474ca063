import { lstat } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { join } from 'node:path';
import { native } from '../native.js';
import { isOverlayWhiteout, overlayOpaqueXattr } from './overlay-format.js';

export interface LowerHit {
  /** The layer directory the entry lives in. */
  layerDir: string;
  path: string;
  stat: Stats;
}

async function lstatOrUndefined(path: string): Promise<Stats | undefined> {
  try {
    return await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
    throw err;
  }
}

function isOpaque(path: string): boolean {
  return native().lgetxattr(path, overlayOpaqueXattr)?.toString() === 'y';
}

/**
 * Finds `relPath` in a stack of overlay-format layer directories (top first)
 * the way overlayfs resolves it: walking down, a whiteout hides the name,
 * a non-directory hides everything below it, an opaque directory stops the
 * search from reaching lower layers. Symlinks are never followed.
 */
export async function lookupInLayers(layers: readonly string[], relPath: string): Promise<LowerHit | undefined> {
  const parts = relPath === '' ? [] : relPath.split('/');
  // `depthOpaque`: deepest ancestor depth at which an opaque dir was met.
  let candidates = layers.slice();
  for (let depth = 0; depth <= parts.length; depth++) {
    const prefix = parts.slice(0, depth).join('/');
    const next: string[] = [];
    for (const layer of candidates) {
      const stat = await lstatOrUndefined(join(layer, prefix));
      if (!stat) continue;
      if (isOverlayWhiteout(stat)) break; // hidden here and below
      if (depth === parts.length) return { layerDir: layer, path: join(layer, prefix), stat };
      if (!stat.isDirectory()) break; // a file hides lower entries of the same name
      next.push(layer);
      if (isOpaque(join(layer, prefix))) break; // lower layers are cut off from here down
    }
    if (next.length === 0) return undefined;
    candidates = next;
  }
  return undefined;
}

import type { Stats } from 'node:fs';

/**
 * overlayfs's on-disk format for an upper or lower directory (the kernel's
 * Documentation/filesystems/overlayfs.rst): a deleted entry is a character
 * device 0/0; a directory that hides what is below it carries this xattr = "y".
 */
export const overlayOpaqueXattr = 'trusted.overlay.opaque';

export function isOverlayWhiteout(stat: Stats): boolean {
  return stat.isCharacterDevice() && stat.rdev === 0;
}

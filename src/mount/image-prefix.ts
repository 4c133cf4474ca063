import { LazyrootError } from '../errors.js';
import { shortDigest } from '../oci/digest.js';
import type { ImageRecord } from '../store/metadata-db.js';

/**
 * The image cut to its first `layerCount` layers (the whole image when
 * undefined): what a mount of a chain that is no image's top serves — the
 * containerd snapshotter's parent of an ordinary layer pulled over a shared,
 * lazily served base. Everything downstream (drivers, leases, the union)
 * reads only `chainIds`, so the cut record is all they need.
 */
export function imagePrefix(image: ImageRecord, layerCount: number | undefined): ImageRecord {
  if (layerCount === undefined || layerCount === image.chainIds.length) return image;
  if (!Number.isInteger(layerCount) || layerCount < 1 || layerCount > image.chainIds.length) {
    throw new LazyrootError('INVALID_ARGUMENT', `image ${shortDigest(image.id)} has ${image.chainIds.length} layers: cannot mount its first ${layerCount}`);
  }
  const chainIds = image.chainIds.slice(0, layerCount);
  return { ...image, chainIds, topChainId: chainIds[chainIds.length - 1]! };
}

/** Whether `image` is a cut of its image (imagePrefix), not the whole. */
export const isPrefix = (image: ImageRecord, whole: ImageRecord): boolean => image.chainIds.length < whole.chainIds.length;

import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Store } from '../../src/store/store.js';

/**
 * What a store visibly holds: image names and IDs from its metadata and the
 * blob files on disk. Two equal snapshots mean a failed command changed nothing.
 */
export async function storeSnapshot(root: string): Promise<{ images: string[]; blobs: string[] }> {
  const store = await Store.open(root);
  try {
    const images = store.db.listImages().flatMap((i) => i.names.map((n) => `${n} ${i.id}`)).sort();
    const blobDir = join(root, 'blobs', 'sha256');
    const blobs = (await readdir(blobDir).catch(() => [] as string[])).sort();
    return { images, blobs };
  } finally {
    store.close();
  }
}

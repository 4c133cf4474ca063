import { processAlive } from '../process-alive.js';
import { readdir, readlink, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { withLock } from '../store/lock.js';
import type { Store } from '../store/store.js';
import { diskUsage } from './disk-usage.js';

export interface CleanResult {
  cleaned: boolean;
  /** Store disk usage before cleaning. */
  storeBytes: number;
  thresholdBytes?: number;
  removedLayers: string[];
  removedImages: string[];
  removedBlobs: number;
  /** Partly fetched blobs (lazy mounts') removed with their range maps. */
  removedPartialBlobs: number;
  /** Layers whose index files were removed. */
  removedIndexes: number;
}

export interface CleanOptions {
  /** Clean only when the store uses more than this many bytes. */
  thresholdBytes?: number;
}

/**
 * `lazyroot clean`: when the store uses more than `thresholdBytes` (or
 * always, without a threshold), removes unpacked layers, images, blobs,
 * partial blobs with their range maps, and layer indexes that no rootfs and
 * no live mount uses. Rootfses being created by a live process count as
 * users, mount daemons hold a lease on their image's blobs, and the whole
 * sweep holds the store lock that `create` takes to register, so nothing in
 * use is ever removed.
 */
export async function cleanStore(store: Store, options: CleanOptions = {}): Promise<CleanResult> {
  const storeBytes = await diskUsage(store.paths.root);
  const base = { storeBytes, ...(options.thresholdBytes !== undefined ? { thresholdBytes: options.thresholdBytes } : {}) };
  if (options.thresholdBytes !== undefined && storeBytes <= options.thresholdBytes) {
    return { ...base, cleaned: false, removedLayers: [], removedImages: [], removedBlobs: 0, removedPartialBlobs: 0, removedIndexes: 0 };
  }
  return withLock(store.paths.storeLock, 'store', async () => {
    const inUse = store.db.rootfsInUse();
    // Live mounts use their image too: a lazy mount its blobs, an overlay mount its layer dirs.
    const mounts = store.db.listMounts().filter((m) => m.alive);
    const usedLayers = new Set([...inUse.flatMap((r) => r.layerDirs), ...mounts.flatMap((m) => m.layerDirs)]);
    // …and so do containerd's remote snapshots (`lazyroot snapshotter`), mounted or not.
    const usedImages = new Set([...inUse.map((r) => r.imageId), ...mounts.map((m) => m.imageId), ...store.db.snapshots.imageIds()]);
    const removedLayers: string[] = [];
    for (const name of await readdir(store.paths.layers).catch(() => [] as string[])) {
      const tmp = /\.tmp-(\d+)-[0-9a-f]+$/.exec(name);
      if (tmp ? processAlive(Number(tmp[1])) : usedLayers.has(name)) continue;
      await rm(store.paths.layerDir(name), { recursive: true, force: true });
      if (!tmp) removedLayers.push(name);
    }
    const removed = new Set(removedLayers);
    for (const link of await readdir(store.paths.links).catch(() => [] as string[])) {
      const target = await readlink(join(store.paths.links, link)).catch(() => '');
      if (removed.has(target.split('/')[2] ?? '')) await rm(join(store.paths.links, link), { force: true });
    }
    const pruned = await store.pruneImages(usedImages);
    const { garbage } = pruned;
    return {
      ...base,
      cleaned: true,
      removedLayers,
      removedImages: pruned.images,
      removedBlobs: garbage.blobs.length,
      removedPartialBlobs: garbage.partialBlobs.length,
      removedIndexes: garbage.indexes.length,
    };
  });
}

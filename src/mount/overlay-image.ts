import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { LazyrootError } from '../errors.js';
import type { ImageRecord } from '../store/metadata-db.js';
import type { Store } from '../store/store.js';
import { mountsUnder, overlayMount, performMount } from './mounts.js';

/**
 * `mount` of an image whose layers are all in the store: kernel overlayfs,
 * read-only, over the unpacked layers (unpacked once per chain ID and shared
 * with `create`). No daemon serves it; reads go at disk speed. Returns the
 * layer dir names it uses (clean leaves them alone while it is mounted).
 */
export async function mountImageOnOverlay(store: Store, image: ImageRecord, mountpoint: string): Promise<string[]> {
  if ((await mountsUnder(mountpoint)).includes(mountpoint)) throw new LazyrootError('IN_USE', `mount ${mountpoint}: something is mounted there already`);
  // The unpacker (tar, zstd, worker threads) loads only when this path is taken.
  const { ensureLayersUnpacked } = await import('../unpack/layer-cache.js');
  const layers = await ensureLayersUnpacked(store, image);
  const lowers = layers.map((l) => l.link).reverse();
  // overlayfs without an upper dir wants two lower dirs at least.
  if (lowers.length < 2) {
    await mkdir(join(store.paths.root, 'empty-lower'), { recursive: true, mode: 0o755 });
    lowers.push('empty-lower');
  }
  await performMount(overlayMount({ lowerdirs: lowers, target: mountpoint }), store.paths.root);
  return layers.map((l) => l.name);
}

import type { ImageRecord } from '../store/metadata-db.js';
import type { Store } from '../store/store.js';

export type MountDriverKind = 'overlay' | 'fuse';

/**
 * The one place the driver is chosen (design.md, "The flow"): kernel overlayfs
 * when every layer blob of the image is in blobs/ (pulled, or promoted by a
 * lazy mount's prefetch) — no network, disk-speed reads — else a lazy FUSE
 * mount. `create --lazy`, `run --lazy` and `mount` all ask here.
 */
export async function chooseDriver(store: Store, image: ImageRecord | undefined): Promise<MountDriverKind> {
  return image && (await store.hasAllLayerBlobs(image)) ? 'overlay' : 'fuse';
}

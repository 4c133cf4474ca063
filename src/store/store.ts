import { chmod, mkdir } from 'node:fs/promises';
import { LazyrootError } from '../errors.js';
import { isDigest, type Digest } from '../oci/digest.js';
import { parseImageConfig, parseManifest } from '../oci/manifest.js';
import type { ImageConfig, ImageManifest } from '../oci/types.js';
import { formatReference, parseReference } from '../reference/reference.js';
import { BlobStore } from './blob-store.js';
import { collectGarbage, type Garbage } from './garbage.js';
import { withLock } from './lock.js';
import { MetadataDb, type ImageRecord, type LayerRecord } from './metadata-db.js';
import { StorePaths, defaultStoreRoot } from './paths.js';

export interface RemovedImage {
  imageId: Digest;
  /** False when only the name was removed (the image has other names). */
  imageRemoved: boolean;
  blobsRemoved: Digest[];
  /** Partly fetched blobs (a lazy mount's) removed with their range maps. */
  partialBlobsRemoved: Digest[];
  /** Layer blobs whose index files were removed. */
  indexesRemoved: Digest[];
}

export type { Garbage };

/** The store: blobs on disk plus their metadata. One per root directory. */
export class Store {
  readonly blobs: BlobStore;

  private constructor(
    readonly paths: StorePaths,
    readonly db: MetadataDb,
  ) {
    this.blobs = new BlobStore(paths);
  }

  static async open(root: string = process.env.LAZYROOT_STORE ?? defaultStoreRoot): Promise<Store> {
    const paths = new StorePaths(root);
    try {
      // 0711: traversable but not listable, so a container in a user namespace can reach its rootfs.
      await mkdir(paths.root, { recursive: true, mode: 0o711 });
      await chmod(paths.root, 0o711);
      // The rest at once, each on libuv's pool (one after another they were 10 round trips there,
      // 5-14 ms of a mount daemon's start measured while containerd kept the cores busy).
      await Promise.all([
        mkdir(paths.tmp, { recursive: true, mode: 0o711 }).then(() => chmod(paths.tmp, 0o711)),
        mkdir(paths.locks, { recursive: true, mode: 0o700 }),
        // The directories content lives in exist from the start: garbage collection empties them and
        // leaves them, so a store that has held an image and given it back is the size it was.
        ...paths.skeleton.map((dir) => mkdir(dir, { recursive: true })),
      ]);
      return new Store(paths, new MetadataDb(paths.database));
    } catch (err) {
      // SQLite needs a little room even to open (its shared-memory index after a crash): said as what it is.
      const code = (err as { code?: string }).code;
      if (code === 'SQLITE_FULL' || code === 'ENOSPC' || code === 'EDQUOT') {
        throw new LazyrootError('RESOURCE_EXHAUSTED', `store ${paths.root}: the store's disk is full (${(err as Error).message}); free some space and try again`, { cause: err });
      }
      throw err;
    }
  }

  close(): void {
    this.db.close();
  }

  /**
   * Finds an image by what a user typed: a name as pulled (`alpine`,
   * `docker.io/library/alpine:latest`, `oci:/dir:tag`), an image ID, or a
   * unique ID prefix of at least 4 hex digits.
   */
  findImage(text: string): ImageRecord | undefined {
    const byName = this.db.imageByName(text);
    if (byName) return byName;
    const id = text.startsWith('sha256:') ? text : `sha256:${text}`;
    if (isDigest(id)) {
      const byId = this.db.imageById(id);
      if (byId) return byId;
    }
    if (/^(sha256:)?[a-f0-9]{4,63}$/.test(text)) {
      const hits = this.db.imagesByIdPrefix(id);
      if (hits.length > 1) throw new LazyrootError('INVALID_ARGUMENT', `image ID prefix ${text} is ambiguous`);
      if (hits.length === 1) return hits[0];
    }
    try {
      return this.db.imageByName(formatReference(parseReference(text)));
    } catch {
      return undefined;
    }
  }

  getImage(text: string): ImageRecord {
    const image = this.findImage(text);
    if (!image) throw new LazyrootError('NOT_FOUND', `image ${text}: not in the store`);
    return image;
  }

  async manifestOf(image: ImageRecord): Promise<ImageManifest> {
    const bytes = await this.blobs.read(image.manifestDigest);
    const parsed = parseManifest(bytes, image.manifestMediaType, `image ${image.id}: manifest ${image.manifestDigest}`);
    if (parsed.kind !== 'manifest') throw new LazyrootError('INVALID_MANIFEST', `image ${image.id}: stored manifest is not an image manifest`);
    return parsed.manifest;
  }

  /** Whether every layer blob of the image is in blobs/ (pulled, or promoted by a lazy mount). */
  async hasAllLayerBlobs(image: ImageRecord): Promise<boolean> {
    for (const chainId of image.chainIds) {
      const blob = this.db.layer(chainId)?.blobs[0];
      if (!blob || !(await this.blobs.has(blob.digest, blob.size))) return false;
    }
    return true;
  }

  async configOf(image: ImageRecord): Promise<ImageConfig> {
    const bytes = await this.blobs.read(image.id);
    return parseImageConfig(bytes, image.chainIds.length, `image ${image.id}: config`);
  }

  /** Every blob an image is made of: manifests, config, layer blobs (what a lease on it holds). */
  blobsOf(image: ImageRecord): Digest[] {
    const layers = image.chainIds.flatMap((c) => this.db.layer(c)?.blobs.map((b) => b.digest) ?? []);
    return [...new Set([image.manifestDigest, ...image.manifests, image.id, ...layers])];
  }

  layersOf(image: ImageRecord): LayerRecord[] {
    return image.chainIds.map((chainId) => {
      const layer = this.db.layer(chainId);
      if (!layer) throw new LazyrootError('NOT_FOUND', `image ${image.id}: layer ${chainId} missing from the store`);
      return layer;
    });
  }

  /**
   * Removes a name (rmi). When no name is left the image goes, and with it
   * every layer, blob, partial blob and layer index that no other image, and
   * no running process, uses. An image a rootfs, a live mount or a snapshot of
   * `lazyroot snapshotter` uses stays.
   */
  async removeImage(text: string): Promise<RemovedImage> {
    return withLock(this.paths.storeLock, 'store', async () => {
      const image = this.getImage(text);
      const lastName = image.names.length <= 1 || !image.names.includes(text);
      const user = lastName ? this.db.rootfsInUse().find((r) => r.imageId === image.id) : undefined;
      if (user) throw new LazyrootError('IN_USE', `image ${text}: in use by rootfs ${user.id} (delete it first)`);
      const snapshot = lastName ? this.db.snapshots.ofImage(image.id)[0] : undefined;
      if (snapshot) throw new LazyrootError('IN_USE', `image ${text}: containerd's snapshot ${snapshot.key} is served from it (lazyroot snapshotter; remove the image in containerd first)`);
      const mount = lastName ? this.db.listMounts().find((m) => m.alive && m.imageId === image.id) : undefined;
      if (mount) throw new LazyrootError('IN_USE', `image ${text}: mounted at ${mount.mountpoint} (umount it first)`);
      let imageRemoved: boolean;
      if (image.names.includes(text)) {
        imageRemoved = this.db.untagOrRemove(text) !== undefined;
      } else {
        // Asked by ID, or by a name written differently: remove the image whole.
        const canonical = image.names.find((n) => n === safeFormat(text));
        if (canonical) imageRemoved = this.db.untagOrRemove(canonical) !== undefined;
        else {
          this.db.removeImage(image.id);
          imageRemoved = true;
        }
      }
      const garbage = imageRemoved ? await this.collectGarbage() : { blobs: [], partialBlobs: [], indexes: [] };
      return { imageId: image.id, imageRemoved, blobsRemoved: garbage.blobs, partialBlobsRemoved: garbage.partialBlobs, indexesRemoved: garbage.indexes };
    });
  }

  /**
   * Removes every image not in `keep`, then what nothing references any more.
   * Caller holds the store lock. Returns the removed image IDs and the garbage.
   */
  async pruneImages(keep: Set<Digest>): Promise<{ images: Digest[]; garbage: Garbage }> {
    const images = this.db
      .listImages()
      .map((i) => i.id)
      .filter((id) => !keep.has(id));
    for (const id of images) this.db.removeImage(id);
    return { images, garbage: await this.collectGarbage() };
  }

  /** Removes unreferenced layer rows, blobs, partial blobs and indexes (garbage.ts). Caller holds the store lock. */
  private collectGarbage(): Promise<Garbage> {
    return collectGarbage(this.paths, this.db, this.blobs);
  }
}

function safeFormat(text: string): string | undefined {
  try {
    return formatReference(parseReference(text));
  } catch {
    return undefined;
  }
}

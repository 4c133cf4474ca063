import { join, resolve } from 'node:path';
import { digestAlgorithm, digestHex, type Digest } from '../oci/digest.js';

export const defaultStoreRoot = '/var/lib/lazyroot';

/** Where everything lives inside a store (see design.md, "Store layout"). */
export class StorePaths {
  /**
   * Absolute, whatever the caller gave: paths under it end up in mount
   * options (overlay lowerdir=, the FUSE mount point) and in the argv of
   * daemons, which the kernel and other processes read from another working
   * directory.
   */
  readonly root: string;

  constructor(root: string) {
    this.root = resolve(root);
  }

  get database(): string {
    return join(this.root, 'meta.db');
  }
  get tmp(): string {
    return join(this.root, 'tmp');
  }
  get locks(): string {
    return join(this.root, 'locks');
  }
  blob(digest: Digest): string {
    return join(this.root, 'blobs', digestAlgorithm(digest), digestHex(digest));
  }
  /** A blob's download in progress: kept across crashes so the next pull resumes it. */
  blobDownload(digest: Digest): string {
    return join(this.tmp, `${digestAlgorithm(digest)}-${digestHex(digest)}.download`);
  }
  blobLock(digest: Digest): string {
    return join(this.locks, `blob-${digestAlgorithm(digest)}-${digestHex(digest)}`);
  }
  get storeLock(): string {
    return join(this.locks, 'store');
  }
  partialBlob(digest: Digest): string {
    return join(this.root, 'partial', digestAlgorithm(digest), digestHex(digest));
  }
  index(digest: Digest): string {
    return join(this.root, 'indexes', digestAlgorithm(digest), digestHex(digest));
  }
  /** Directories every store has from the start (Store.open makes them); garbage collection empties them and leaves them. */
  get skeleton(): string[] {
    return [join(this.root, 'blobs', 'sha256'), join(this.root, 'partial', 'sha256'), join(this.root, 'indexes', 'sha256'), this.mountsDir, this.rootfsRoot];
  }
  /** Stats files of running mount daemons. */
  get mountsDir(): string {
    return join(this.root, 'mounts');
  }
  get layers(): string {
    return join(this.root, 'layers');
  }
  /** An unpacked layer: `layers/<name>/diff`, where the name is the chain ID's hex (plus a mapping suffix). */
  layerDir(name: string): string {
    return join(this.root, 'layers', name);
  }
  /** Short symlinks to layer diffs, so a long overlay lowerdir= list still fits in a page. */
  get links(): string {
    return join(this.root, 'l');
  }
  get rootfsRoot(): string {
    return join(this.root, 'rootfs');
  }
  rootfsDir(id: string): string {
    return join(this.root, 'rootfs', id);
  }
}

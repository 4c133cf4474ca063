import { join } from 'node:path';
import { digestAlgorithm, digestHex, type Digest } from '../oci/digest.js';

export const defaultStoreRoot = '/var/lib/lazyroot';

/** Where everything lives inside a store (see design.md, "Store layout"). */
export class StorePaths {
  constructor(readonly root: string) {}

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
  layerDir(chainId: Digest): string {
    return join(this.root, 'layers', digestHex(chainId));
  }
  rootfsDir(id: string): string {
    return join(this.root, 'rootfs', id);
  }
}

import { processAlive } from '../process-alive.js';
import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import type { Digest } from '../oci/digest.js';
import { migrations } from './schema.js';
import { SnapshotTable } from './snapshot-table.js';

export interface LayerBlobRecord {
  digest: Digest;
  mediaType: string;
  size: number;
  annotations?: Record<string, string>;
}

export interface LayerRecord {
  chainId: Digest;
  parentChainId: Digest | null;
  diffId: Digest;
  diffIdVerified: boolean;
  uncompressedSize: number | null;
  blobs: LayerBlobRecord[];
}

export interface ImageRecord {
  id: Digest;
  names: string[];
  manifestDigest: Digest;
  manifestMediaType: string;
  manifests: Digest[];
  platform: string;
  topChainId: Digest | null;
  size: number;
  createdAt: number;
  metadata: string | null;
  /** Chain IDs bottom-up. */
  chainIds: Digest[];
}

export interface RootfsRecord {
  id: string;
  imageId: Digest;
  driver: 'overlay' | 'fuse';
  state: 'creating' | 'ready';
  pid: number;
  mapping: string | null;
  layerDirs: string[];
  mounted: boolean;
  /** Set when mounted somewhere other than rootfs/<id>/merged. */
  mountPoint: string | null;
  createdAt: number;
}

export interface MountRecord {
  mountpoint: string;
  /** The FUSE daemon; 0 for an overlay mount. */
  pid: number;
  imageId: Digest;
  createdAt: number;
  /** Whether the daemon process still runs (an overlay mount has none: always true). */
  alive: boolean;
  /** 'fuse': a lazy mount served by a daemon; 'overlay': kernel overlayfs over `layerDirs`. */
  driver: 'fuse' | 'overlay';
  layerDirs: string[];
}

type MountRow = { mountpoint: string; pid: number; image_id: string; created_at: number; driver: string; layer_dirs: string };

function toMount(row: MountRow): MountRecord {
  const driver = row.driver === 'overlay' ? 'overlay' : 'fuse';
  return {
    mountpoint: row.mountpoint,
    pid: row.pid,
    imageId: row.image_id,
    createdAt: row.created_at,
    alive: driver === 'overlay' || processAlive(row.pid),
    driver,
    layerDirs: JSON.parse(row.layer_dirs) as string[],
  };
}

export interface NewImage {
  id: Digest;
  name: string;
  manifestDigest: Digest;
  manifestMediaType: string;
  platform: string;
  size: number;
  layers: Array<{ chainId: Digest; parentChainId: Digest | null; diffId: Digest; diffIdVerified: boolean; blob: LayerBlobRecord }>;
  /** Every blob the image needs (manifest, config, layers), already in blobs/. */
  blobs: Array<{ digest: Digest; size: number; mediaType: string }>;
}

interface ImageRow {
  id: string;
  manifest_digest: string;
  manifest_media_type: string;
  platform: string;
  top_chain_id: string | null;
  size: number;
  created_at: number;
  metadata: string | null;
}


/**
 * The store's SQLite metadata. better-sqlite3 is synchronous: statements are
 * prepared once, multi-row writes run in one transaction, and nothing awaits
 * inside one. WAL plus a busy timeout make it safe across processes.
 */
export class MetadataDb {
  private readonly db: Database.Database;
  private readonly stmt;
  /** State of `lazyroot snapshotter` (containerd's snapshots). */
  readonly snapshots: SnapshotTable;

  constructor(path: string) {
    this.db = new Database(path, { timeout: 30_000 });
    // Two processes creating a store at once: switching a new database to WAL needs it alone, and
    // SQLite answers BUSY at once there rather than calling the busy handler. Try again briefly.
    for (let attempt = 0; ; attempt++) {
      try {
        this.db.pragma('journal_mode = WAL');
        break;
      } catch (err) {
        if ((err as { code?: string }).code !== 'SQLITE_BUSY' || attempt >= 100) throw err;
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10 + attempt);
      }
    }
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('foreign_keys = ON');
    this.migrate();
    this.snapshots = new SnapshotTable(this.db);
    const db = this.db;
    this.stmt = {
      insertImage: db.prepare(
        `INSERT INTO images (id, manifest_digest, manifest_media_type, platform, top_chain_id, size, created_at)
         VALUES (@id, @manifestDigest, @manifestMediaType, @platform, @topChainId, @size, @createdAt)
         ON CONFLICT(id) DO UPDATE SET manifest_digest = excluded.manifest_digest,
           manifest_media_type = excluded.manifest_media_type, size = excluded.size`,
      ),
      insertManifest: db.prepare('INSERT OR IGNORE INTO image_manifests (image_id, manifest_digest) VALUES (?, ?)'),
      insertImageLayer: db.prepare('INSERT OR REPLACE INTO image_layers (image_id, position, chain_id) VALUES (?, ?, ?)'),
      setName: db.prepare(
        'INSERT INTO image_names (name, image_id) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id',
      ),
      insertLayer: db.prepare(
        `INSERT INTO layers (chain_id, parent_chain_id, diff_id, diff_id_verified) VALUES (?, ?, ?, ?)
         ON CONFLICT(chain_id) DO UPDATE SET diff_id_verified = MAX(diff_id_verified, excluded.diff_id_verified)`,
      ),
      insertLayerBlob: db.prepare(
        'INSERT OR IGNORE INTO layer_blobs (chain_id, blob_digest, media_type, size, annotations) VALUES (?, ?, ?, ?, ?)',
      ),
      insertBlob: db.prepare('INSERT OR IGNORE INTO blobs (digest, size, media_type, created_at) VALUES (?, ?, ?, ?)'),
      imageById: db.prepare('SELECT * FROM images WHERE id = ?'),
      imagesByIdPrefix: db.prepare("SELECT * FROM images WHERE id LIKE ? ESCAPE '\\' LIMIT 2"),
      imageIdByName: db.prepare('SELECT image_id FROM image_names WHERE name = ?'),
      allImages: db.prepare('SELECT * FROM images ORDER BY created_at, id'),
      namesOf: db.prepare('SELECT name FROM image_names WHERE image_id = ? ORDER BY name'),
      manifestsOf: db.prepare('SELECT manifest_digest FROM image_manifests WHERE image_id = ? ORDER BY manifest_digest'),
      chainIdsOf: db.prepare('SELECT chain_id FROM image_layers WHERE image_id = ? ORDER BY position'),
      layer: db.prepare('SELECT * FROM layers WHERE chain_id = ?'),
      layerBlobs: db.prepare('SELECT * FROM layer_blobs WHERE chain_id = ? ORDER BY blob_digest'),
      deleteName: db.prepare('DELETE FROM image_names WHERE name = ?'),
      deleteImage: db.prepare('DELETE FROM images WHERE id = ?'),
      countNames: db.prepare('SELECT COUNT(*) AS n FROM image_names WHERE image_id = ?'),
      unusedLayers: db.prepare('SELECT chain_id FROM layers WHERE chain_id NOT IN (SELECT chain_id FROM image_layers)'),
      deleteLayer: db.prepare('DELETE FROM layers WHERE chain_id = ?'),
      allBlobs: db.prepare('SELECT digest, size FROM blobs'),
      deleteBlob: db.prepare('DELETE FROM blobs WHERE digest = ?'),
      setDiffIdVerified: db.prepare('UPDATE layers SET diff_id_verified = 1, uncompressed_size = ? WHERE chain_id = ?'),
      insertLease: db.prepare('INSERT INTO leases (id, pid, created_at) VALUES (?, ?, ?)'),
      insertLeaseBlob: db.prepare('INSERT OR IGNORE INTO lease_blobs (lease_id, digest) VALUES (?, ?)'),
      deleteLease: db.prepare('DELETE FROM leases WHERE id = ?'),
      allLeases: db.prepare('SELECT id, pid FROM leases'),
      leaseBlobs: db.prepare('SELECT digest FROM lease_blobs WHERE lease_id = ?'),
      setMetadata: db.prepare('UPDATE images SET metadata = ? WHERE id = ?'),
      insertRootfs: db.prepare(
        `INSERT INTO rootfs (id, image_id, driver, state, pid, mapping, layer_dirs, mounted, mount_point, created_at)
         VALUES (@id, @imageId, @driver, 'creating', @pid, @mapping, @layerDirs, 0, @mountPoint, @createdAt)`,
      ),
      rootfsById: db.prepare('SELECT * FROM rootfs WHERE id = ?'),
      allRootfs: db.prepare('SELECT * FROM rootfs ORDER BY created_at, id'),
      setRootfsReady: db.prepare("UPDATE rootfs SET state = 'ready', mounted = ? WHERE id = ?"),
      setRootfsMounted: db.prepare('UPDATE rootfs SET mounted = ? WHERE id = ?'),
      deleteRootfs: db.prepare('DELETE FROM rootfs WHERE id = ?'),
      rangesOf: db.prepare('SELECT start, end FROM blob_ranges WHERE digest = ? ORDER BY start'),
      clearRanges: db.prepare('DELETE FROM blob_ranges WHERE digest = ?'),
      rangeDigests: db.prepare('SELECT DISTINCT digest FROM blob_ranges'),
      insertRange: db.prepare('INSERT INTO blob_ranges (digest, start, end) VALUES (?, ?, ?)'),
      insertMount: db.prepare('INSERT OR REPLACE INTO mounts (mountpoint, pid, image_id, created_at, driver, layer_dirs) VALUES (?, ?, ?, ?, ?, ?)'),
      mountAt: db.prepare('SELECT * FROM mounts WHERE mountpoint = ?'),
      allMounts: db.prepare('SELECT * FROM mounts ORDER BY created_at'),
      deleteMount: db.prepare('DELETE FROM mounts WHERE mountpoint = ?'),
      putBigData: db.prepare('INSERT OR REPLACE INTO big_data (image_id, key, value) VALUES (?, ?, ?)'),
      getBigData: db.prepare('SELECT value FROM big_data WHERE image_id = ? AND key = ?'),
      bigDataKeys: db.prepare('SELECT key FROM big_data WHERE image_id = ? ORDER BY key'),
    };
  }

  private migrate(): void {
    const run = this.db.transaction(() => {
      const version = this.db.pragma('user_version', { simple: true }) as number;
      for (let i = version; i < migrations.length; i++) this.db.exec(migrations[i]!);
      if (version < migrations.length) this.db.pragma(`user_version = ${migrations.length}`);
    });
    run.immediate();
  }

  close(): void {
    this.db.close();
  }

  /** Records a fully pulled image and its layers and blobs, all or nothing. */
  recordImage(image: NewImage): void {
    const now = Date.now();
    const write = this.db.transaction(() => {
      for (const blob of image.blobs) this.stmt.insertBlob.run(blob.digest, blob.size, blob.mediaType, now);
      for (const layer of image.layers) {
        this.stmt.insertLayer.run(layer.chainId, layer.parentChainId, layer.diffId, layer.diffIdVerified ? 1 : 0);
        const b = layer.blob;
        this.stmt.insertLayerBlob.run(layer.chainId, b.digest, b.mediaType, b.size, b.annotations ? JSON.stringify(b.annotations) : null);
      }
      this.stmt.insertImage.run({
        id: image.id,
        manifestDigest: image.manifestDigest,
        manifestMediaType: image.manifestMediaType,
        platform: image.platform,
        topChainId: image.layers.at(-1)?.chainId ?? null,
        size: image.size,
        createdAt: now,
      });
      this.stmt.insertManifest.run(image.id, image.manifestDigest);
      image.layers.forEach((layer, i) => this.stmt.insertImageLayer.run(image.id, i, layer.chainId));
      this.stmt.setName.run(image.name, image.id);
    });
    write.immediate();
  }

  private toImage(row: ImageRow): ImageRecord {
    return {
      id: row.id,
      names: (this.stmt.namesOf.all(row.id) as Array<{ name: string }>).map((r) => r.name),
      manifestDigest: row.manifest_digest,
      manifestMediaType: row.manifest_media_type,
      manifests: (this.stmt.manifestsOf.all(row.id) as Array<{ manifest_digest: string }>).map((r) => r.manifest_digest),
      platform: row.platform,
      topChainId: row.top_chain_id,
      size: row.size,
      createdAt: row.created_at,
      metadata: row.metadata,
      chainIds: (this.stmt.chainIdsOf.all(row.id) as Array<{ chain_id: string }>).map((r) => r.chain_id),
    };
  }

  imageById(id: Digest): ImageRecord | undefined {
    const row = this.stmt.imageById.get(id) as ImageRow | undefined;
    return row && this.toImage(row);
  }

  imageByName(name: string): ImageRecord | undefined {
    const hit = this.stmt.imageIdByName.get(name) as { image_id: string } | undefined;
    return hit && this.imageById(hit.image_id);
  }

  /** Images whose ID starts with `prefix` (at most two: enough to tell ambiguity). */
  imagesByIdPrefix(prefix: string): ImageRecord[] {
    const escaped = prefix.replace(/[\\%_]/g, (c) => `\\${c}`);
    return (this.stmt.imagesByIdPrefix.all(`${escaped}%`) as ImageRow[]).map((r) => this.toImage(r));
  }

  listImages(): ImageRecord[] {
    return (this.stmt.allImages.all() as ImageRow[]).map((r) => this.toImage(r));
  }

  layer(chainId: Digest): LayerRecord | undefined {
    const row = this.stmt.layer.get(chainId) as
      | { chain_id: string; parent_chain_id: string | null; diff_id: string; diff_id_verified: number; uncompressed_size: number | null }
      | undefined;
    if (!row) return undefined;
    const blobs = (this.stmt.layerBlobs.all(chainId) as Array<{ blob_digest: string; media_type: string; size: number; annotations: string | null }>).map(
      (b): LayerBlobRecord => ({
        digest: b.blob_digest,
        mediaType: b.media_type,
        size: b.size,
        ...(b.annotations ? { annotations: JSON.parse(b.annotations) as Record<string, string> } : {}),
      }),
    );
    return {
      chainId: row.chain_id,
      parentChainId: row.parent_chain_id,
      diffId: row.diff_id,
      diffIdVerified: row.diff_id_verified === 1,
      uncompressedSize: row.uncompressed_size,
      blobs,
    };
  }

  markDiffIdVerified(chainId: Digest, uncompressedSize: number): void {
    this.stmt.setDiffIdVerified.run(uncompressedSize, chainId);
  }

  /**
   * Removes one name; when the image has no names left, removes the image too.
   * Returns the image ID if the image itself was removed.
   */
  untagOrRemove(name: string): Digest | undefined {
    const remove = this.db.transaction((): Digest | undefined => {
      const hit = this.stmt.imageIdByName.get(name) as { image_id: string } | undefined;
      if (!hit) return undefined;
      this.stmt.deleteName.run(name);
      const { n } = this.stmt.countNames.get(hit.image_id) as { n: number };
      if (n > 0) return undefined;
      this.stmt.deleteImage.run(hit.image_id);
      return hit.image_id;
    });
    return remove.immediate();
  }

  removeImage(id: Digest): void {
    this.stmt.deleteImage.run(id);
  }

  /** Drops layer rows no image uses; returns their chain IDs. */
  pruneLayers(): Digest[] {
    const prune = this.db.transaction(() => {
      const unused = (this.stmt.unusedLayers.all() as Array<{ chain_id: string }>).map((r) => r.chain_id);
      for (const chainId of unused) this.stmt.deleteLayer.run(chainId);
      return unused;
    });
    return prune.immediate();
  }

  /** Every blob an image, or a live process's lease, still needs. */
  referencedBlobs(): Set<Digest> {
    const used = new Set<Digest>();
    const rows = this.db
      .prepare(
        `SELECT manifest_digest AS d FROM image_manifests
         UNION SELECT id FROM images
         UNION SELECT blob_digest FROM layer_blobs`,
      )
      .all() as Array<{ d: string }>;
    for (const r of rows) used.add(r.d);
    for (const lease of this.stmt.allLeases.all() as Array<{ id: string; pid: number }>) {
      if (!processAlive(lease.pid)) {
        this.stmt.deleteLease.run(lease.id);
        continue;
      }
      for (const b of this.stmt.leaseBlobs.all(lease.id) as Array<{ digest: string }>) used.add(b.digest);
    }
    return used;
  }

  knownBlobs(): Array<{ digest: Digest; size: number }> {
    return this.stmt.allBlobs.all() as Array<{ digest: Digest; size: number }>;
  }

  /** A blob now whole in blobs/ (a lazy mount's prefetch promoted it): GC and `images` see it. */
  recordBlob(digest: Digest, size: number, mediaType: string): void {
    this.stmt.insertBlob.run(digest, size, mediaType, Date.now());
  }

  forgetBlob(digest: Digest): void {
    this.stmt.deleteBlob.run(digest);
  }

  createLease(): string {
    const id = randomUUID();
    this.stmt.insertLease.run(id, process.pid, Date.now());
    return id;
  }

  addToLease(leaseId: string, digests: Digest[]): void {
    const add = this.db.transaction(() => {
      for (const d of digests) this.stmt.insertLeaseBlob.run(leaseId, d);
    });
    add.immediate();
  }

  dropLease(leaseId: string): void {
    this.stmt.deleteLease.run(leaseId);
  }

  /** Claims a rootfs ID (state 'creating'); fails with ALREADY_EXISTS when taken. */
  insertRootfs(r: { id: string; imageId: Digest; driver: 'overlay' | 'fuse'; mapping: string | null; layerDirs: string[]; mountPoint: string | null }): boolean {
    try {
      this.stmt.insertRootfs.run({ ...r, layerDirs: JSON.stringify(r.layerDirs), pid: process.pid, createdAt: Date.now() });
      return true;
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') return false;
      throw err;
    }
  }

  private toRootfs(row: Record<string, unknown>): RootfsRecord {
    return {
      id: row.id as string,
      imageId: row.image_id as string,
      driver: row.driver as 'overlay' | 'fuse',
      state: row.state as 'creating' | 'ready',
      pid: row.pid as number,
      mapping: row.mapping as string | null,
      layerDirs: JSON.parse(row.layer_dirs as string) as string[],
      mounted: row.mounted === 1,
      mountPoint: (row.mount_point as string | null) ?? null,
      createdAt: row.created_at as number,
    };
  }

  rootfs(id: string): RootfsRecord | undefined {
    const row = this.stmt.rootfsById.get(id) as Record<string, unknown> | undefined;
    return row && this.toRootfs(row);
  }

  listRootfs(): RootfsRecord[] {
    return (this.stmt.allRootfs.all() as Array<Record<string, unknown>>).map((r) => this.toRootfs(r));
  }

  setRootfsReady(id: string, mounted: boolean): void {
    this.stmt.setRootfsReady.run(mounted ? 1 : 0, id);
  }

  setRootfsMounted(id: string, mounted: boolean): void {
    this.stmt.setRootfsMounted.run(mounted ? 1 : 0, id);
  }

  deleteRootfs(id: string): void {
    this.stmt.deleteRootfs.run(id);
  }

  /**
   * Rootfs rows that hold their layers and image: ready ones, and ones still
   * being created by a live process. Rows left 'creating' by a dead process are void.
   */
  rootfsInUse(): RootfsRecord[] {
    return this.listRootfs().filter((r) => r.state === 'ready' || processAlive(r.pid));
  }

  /** Verified ranges of a partial blob, as [start, end) pairs. */
  blobRanges(digest: Digest): Array<[number, number]> {
    return (this.stmt.rangesOf.all(digest) as Array<{ start: number; end: number }>).map((r) => [r.start, r.end]);
  }

  /** Replaces a partial blob's ranges (one transaction; callers batch). */
  setBlobRanges(digest: Digest, ranges: Array<[number, number]>): void {
    const write = this.db.transaction(() => {
      this.stmt.clearRanges.run(digest);
      for (const [s, e] of ranges) this.stmt.insertRange.run(digest, s, e);
    });
    write.immediate();
  }

  /** Every blob that has a range map: the partial blobs the store knows of. */
  rangeDigests(): Digest[] {
    return (this.stmt.rangeDigests.all() as Array<{ digest: string }>).map((r) => r.digest);
  }

  recordMount(mountpoint: string, pid: number, imageId: Digest, overlay?: { layerDirs: string[] }): void {
    this.stmt.insertMount.run(mountpoint, pid, imageId, Date.now(), overlay ? 'overlay' : 'fuse', JSON.stringify(overlay?.layerDirs ?? []));
  }

  mountAt(mountpoint: string): MountRecord | undefined {
    const row = this.stmt.mountAt.get(mountpoint) as MountRow | undefined;
    return row && toMount(row);
  }

  listMounts(): MountRecord[] {
    return (this.stmt.allMounts.all() as MountRow[]).map(toMount);
  }

  forgetMount(mountpoint: string): void {
    this.stmt.deleteMount.run(mountpoint);
  }

  setMetadata(imageId: Digest, metadata: string): void {
    this.stmt.setMetadata.run(metadata, imageId);
  }

  putBigData(imageId: Digest, key: string, value: Buffer): void {
    this.stmt.putBigData.run(imageId, key, value);
  }

  getBigData(imageId: Digest, key: string): Buffer | undefined {
    return (this.stmt.getBigData.get(imageId, key) as { value: Buffer } | undefined)?.value;
  }

  bigDataKeys(imageId: Digest): string[] {
    return (this.stmt.bigDataKeys.all(imageId) as Array<{ key: string }>).map((r) => r.key);
  }
}

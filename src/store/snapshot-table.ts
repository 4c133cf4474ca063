import type Database from 'better-sqlite3';
import type { Digest } from '../oci/digest.js';

/** containerd's snapshot kinds (snapshots.proto's Kind, lowercased). */
export type SnapshotKind = 'active' | 'view' | 'committed';

/** Where a remote snapshot's bytes come from: layer `layerPosition` of store image `imageId`. */
export interface RemoteLayerRef {
  imageId: Digest;
  layerPosition: number;
  ref: string;
}

export interface SnapshotRecord {
  /** Names its directory snapshotter/snapshots/<id>/. */
  id: number;
  key: string;
  parent: string | null;
  kind: SnapshotKind;
  labels: Record<string, string>;
  createdAt: number;
  updatedAt: number;
  remote: RemoteLayerRef | null;
}

type SnapshotRow = {
  id: number;
  key: string;
  parent: string | null;
  kind: string;
  labels: string;
  created_at: number;
  updated_at: number;
  image_id: string | null;
  layer_position: number | null;
  ref: string | null;
};

function toSnapshot(row: SnapshotRow): SnapshotRecord {
  return {
    id: row.id,
    key: row.key,
    parent: row.parent,
    kind: row.kind as SnapshotKind,
    labels: JSON.parse(row.labels) as Record<string, string>,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    remote: row.image_id !== null ? { imageId: row.image_id, layerPosition: row.layer_position ?? 0, ref: row.ref ?? '' } : null,
  };
}

/**
 * The `snapshots` table of the store's SQLite (schema.ts): the state of
 * `lazyroot snapshotter`, kept with the images it uses so that one `clean`
 * sees both. Synchronous, statements prepared once.
 */
export class SnapshotTable {
  private readonly stmt;

  constructor(private readonly db: Database.Database) {
    this.stmt = {
      byKey: db.prepare('SELECT * FROM snapshots WHERE key = ?'),
      all: db.prepare('SELECT * FROM snapshots ORDER BY id'),
      children: db.prepare('SELECT COUNT(*) AS n FROM snapshots WHERE parent = ?'),
      insert: db.prepare(
        `INSERT INTO snapshots (key, parent, kind, labels, created_at, updated_at, image_id, layer_position, ref)
         VALUES (@key, @parent, @kind, @labels, @now, @now, @imageId, @layerPosition, @ref)`,
      ),
      commit: db.prepare("UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, updated_at = ? WHERE key = ?"),
      setLabels: db.prepare('UPDATE snapshots SET labels = ?, updated_at = ? WHERE key = ?'),
      remove: db.prepare('DELETE FROM snapshots WHERE key = ?'),
      imageIds: db.prepare('SELECT DISTINCT image_id FROM snapshots WHERE image_id IS NOT NULL'),
      byImage: db.prepare('SELECT * FROM snapshots WHERE image_id = ? ORDER BY id'),
    };
  }

  get(key: string): SnapshotRecord | undefined {
    const row = this.stmt.byKey.get(key) as SnapshotRow | undefined;
    return row && toSnapshot(row);
  }

  list(): SnapshotRecord[] {
    return (this.stmt.all.all() as SnapshotRow[]).map(toSnapshot);
  }

  hasChildren(key: string): boolean {
    return (this.stmt.children.get(key) as { n: number }).n > 0;
  }

  /** Adds a snapshot; false when the key is taken. */
  insert(s: { key: string; parent: string | null; kind: SnapshotKind; labels: Record<string, string>; remote?: RemoteLayerRef }): SnapshotRecord | undefined {
    const add = this.db.transaction(() => {
      if (this.stmt.byKey.get(s.key)) return undefined;
      this.stmt.insert.run({
        key: s.key,
        parent: s.parent,
        kind: s.kind,
        labels: JSON.stringify(s.labels),
        now: Date.now(),
        imageId: s.remote?.imageId ?? null,
        layerPosition: s.remote?.layerPosition ?? null,
        ref: s.remote?.ref ?? null,
      });
      return this.get(s.key);
    });
    return add.immediate();
  }

  /** Turns active snapshot `key` into committed snapshot `name`; false when `name` is taken. */
  commit(key: string, name: string, labels: Record<string, string>): boolean {
    const run = this.db.transaction(() => {
      if (this.stmt.byKey.get(name)) return false;
      this.stmt.commit.run(name, JSON.stringify(labels), Date.now(), key);
      return true;
    });
    return run.immediate();
  }

  setLabels(key: string, labels: Record<string, string>): void {
    this.stmt.setLabels.run(JSON.stringify(labels), Date.now(), key);
  }

  remove(key: string): void {
    this.stmt.remove.run(key);
  }

  /** Store images that remote snapshots are served from: clean keeps them. */
  imageIds(): Digest[] {
    return (this.stmt.imageIds.all() as Array<{ image_id: string }>).map((r) => r.image_id);
  }

  ofImage(imageId: Digest): SnapshotRecord[] {
    return (this.stmt.byImage.all(imageId) as SnapshotRow[]).map(toSnapshot);
  }
}

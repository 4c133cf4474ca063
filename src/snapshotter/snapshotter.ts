import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { LazyrootError } from '../errors.js';
import type { SnapshotKind, SnapshotRecord } from '../store/snapshot-table.js';
import type { Store } from '../store/store.js';
import { parseFilters } from './filters.js';
import { remoteLayerRequest } from './labels.js';
import { snapshotMounts, type ContainerdMount } from './mounts.js';
import type { Logger, RemoteLayers } from './remote-layers.js';
import { dirUsage } from './usage.js';
import { tracePhase } from '../trace.js';

/**
 * containerd's Snapshotter interface over the store: state in the store's
 * SQLite (`snapshots`), ordinary snapshots as directories under
 * STORE/snapshotter/snapshots/<id>/ (`fs/` is the layer or the upper, `work/`
 * overlayfs's workdir), remote ones as layers of store images served by
 * RemoteLayers. Knows nothing of gRPC: errors are LazyrootErrors whose codes
 * service.ts turns into gRPC status codes.
 */
export class Snapshotter {
  readonly root: string;
  private readonly log: Logger;

  constructor(
    private readonly store: Store,
    private readonly remote: RemoteLayers,
    logger?: Logger,
  ) {
    this.root = join(store.paths.root, 'snapshotter');
    this.log = logger ?? (() => undefined);
  }

  private get table() {
    return this.store.db.snapshots;
  }

  private dirOf(s: SnapshotRecord): string {
    return join(this.root, 'snapshots', String(s.id));
  }

  stat(key: string): SnapshotRecord {
    const s = this.table.get(key);
    if (!s) throw new LazyrootError('NOT_FOUND', `snapshot ${key} does not exist`);
    return s;
  }

  /**
   * A new active snapshot on `parent`, or — when the labels name a layer that
   * can be served remotely — the committed snapshot of that layer under its
   * chain ID, answered with ALREADY_EXISTS so that containerd's unpacker
   * finds it (Stat) and never downloads the layer.
   */
  async prepare(key: string, parent: string, labels: Record<string, string>): Promise<ContainerdMount[]> {
    const request = remoteLayerRequest(labels);
    tracePhase(`snapshotter: Prepare ${key}`);
    if (request) {
      if (this.table.get(request.chainId)) throw new LazyrootError('ALREADY_EXISTS', `target snapshot ${request.chainId} already exists`);
      this.parentOf(parent);
      const remote = await this.remote.resolve(request);
      tracePhase(`snapshotter: layer ${request.chainId.slice(0, 19)} ${remote ? 'served lazily' : 'not served lazily'}`);
      if (remote) {
        const committed = this.table.insert({ key: request.chainId, parent: parent || null, kind: 'committed', labels, remote });
        // Start the image's lazy mount now, while containerd goes on with the pull, so that the
        // container's Prepare finds it ready (stargz mounts during Prepare too).
        if (committed) this.remote.mountAhead(remote.imageId);
        this.log(`remote snapshot ${request.chainId}: layer ${remote.layerPosition + 1} of ${remote.ref} (${request.labelSet} labels), served lazily`);
        throw new LazyrootError('ALREADY_EXISTS', `target snapshot ${request.chainId} already exists (served remotely)`);
      }
    }
    return this.create('active', key, parent, labels);
  }

  async view(key: string, parent: string, labels: Record<string, string>): Promise<ContainerdMount[]> {
    return this.create('view', key, parent, labels);
  }

  private parentOf(parent: string): SnapshotRecord | undefined {
    if (!parent) return undefined;
    const p = this.table.get(parent);
    if (!p) throw new LazyrootError('NOT_FOUND', `parent snapshot ${parent} does not exist`);
    if (p.kind !== 'committed') throw new LazyrootError('INVALID_ARGUMENT', `parent snapshot ${parent} is ${p.kind}, not committed`);
    return p;
  }

  private async create(kind: SnapshotKind, key: string, parent: string, labels: Record<string, string>): Promise<ContainerdMount[]> {
    if (!key) throw new LazyrootError('INVALID_ARGUMENT', 'snapshot key is empty');
    this.parentOf(parent);
    const s = this.table.insert({ key, parent: parent || null, kind, labels });
    if (!s) throw new LazyrootError('ALREADY_EXISTS', `snapshot ${key} already exists`);
    try {
      const dir = this.dirOf(s);
      await rm(dir, { recursive: true, force: true }); // a dir left by an id SQLite handed out before a crash
      await mkdir(join(dir, 'fs'), { recursive: true, mode: 0o755 });
      if (kind === 'active') await mkdir(join(dir, 'work'), { mode: 0o711 });
      return await this.mounts(key);
    } catch (err) {
      this.table.remove(key);
      await rm(this.dirOf(s), { recursive: true, force: true });
      throw err;
    }
  }

  async mounts(key: string): Promise<ContainerdMount[]> {
    const s = this.stat(key);
    if (s.remote) {
      // A committed remote layer: its image's lazy mount, read-only.
      return snapshotMounts({ kind: 'view', fsDir: '', workDir: '', lowerDirs: [await this.remote.lowerDirFor(s)] });
    }
    const dir = this.dirOf(s);
    const lowerDirs = s.kind === 'committed' ? await this.lowerDirs(key) : await this.lowerDirs(s.parent);
    return snapshotMounts({ kind: s.kind, fsDir: join(dir, 'fs'), workDir: join(dir, 'work'), lowerDirs });
  }

  /** The dirs of `key` and its ancestors, top first; a remote snapshot ends the list with the mount serving it and all below it. */
  private async lowerDirs(key: string | null): Promise<string[]> {
    const dirs: string[] = [];
    for (let at = key; at; ) {
      const s = this.table.get(at);
      if (!s) throw new LazyrootError('NOT_FOUND', `snapshot ${at} (an ancestor) does not exist`);
      if (s.remote) {
        dirs.push(await this.remote.lowerDirFor(s));
        break;
      }
      dirs.push(join(this.dirOf(s), 'fs'));
      at = s.parent;
    }
    return dirs;
  }

  async commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    const s = this.stat(key);
    if (s.kind !== 'active') throw new LazyrootError('FAILED_PRECONDITION', `snapshot ${key} is ${s.kind}, only an active snapshot can be committed`);
    if (!name) throw new LazyrootError('INVALID_ARGUMENT', 'commit: the name is empty');
    if (!this.table.commit(key, name, { ...s.labels, ...labels })) throw new LazyrootError('ALREADY_EXISTS', `snapshot ${name} already exists`);
    await rm(join(this.dirOf(s), 'work'), { recursive: true, force: true });
  }

  async remove(key: string): Promise<void> {
    const s = this.stat(key);
    if (this.table.hasChildren(key)) throw new LazyrootError('FAILED_PRECONDITION', `snapshot ${key} has children: remove them first`);
    this.table.remove(key);
    if (s.remote) {
      await this.remote.release(s.remote.imageId).catch((err) => this.log(`snapshot ${key}: unmounting image ${s.remote!.imageId} (Cleanup retries)`, err));
    } else {
      await rm(this.dirOf(s), { recursive: true, force: true });
    }
  }

  /** containerd's Update: only labels change (`labels` replaces them all, `labels.KEY` one). */
  update(key: string, labels: Record<string, string>, paths: string[]): SnapshotRecord {
    const s = this.stat(key);
    let next: Record<string, string>;
    if (paths.length === 0) {
      next = labels;
    } else {
      next = { ...s.labels };
      for (const path of paths) {
        if (path === 'labels') next = { ...labels };
        else if (path.startsWith('labels.')) {
          const label = path.slice('labels.'.length);
          if (labels[label] === undefined) delete next[label];
          else next[label] = labels[label]!;
        } else throw new LazyrootError('INVALID_ARGUMENT', `update of snapshot ${key}: cannot update field ${path}`);
      }
    }
    this.table.setLabels(key, next);
    return this.stat(key);
  }

  list(filters: readonly string[]): SnapshotRecord[] {
    const filter = parseFilters(filters);
    return this.table.list().filter((s) =>
      filter((path) => {
        const [field, ...rest] = path;
        if (field === 'name' && rest.length === 0) return s.key;
        if (field === 'parent' && rest.length === 0) return s.parent ?? ''; // containerd's adaptor: an empty parent is "", present
        if (field === 'kind' && rest.length === 0) return s.kind;
        if (field === 'labels' && rest.length > 0) return s.labels[rest.join('.')];
        return undefined;
      }),
    );
  }

  /** Disk the snapshot's own layer uses; a remote layer counts 0 (its bytes are the store's, shared). */
  async usage(key: string): Promise<{ size: number; inodes: number }> {
    const s = this.stat(key);
    if (s.remote) return { size: 0, inodes: 0 };
    return dirUsage(join(this.dirOf(s), 'fs'));
  }

  /** Removes dirs no snapshot owns and unmounts images no snapshot uses. */
  async cleanup(): Promise<void> {
    const ids = new Set(this.table.list().map((s) => String(s.id)));
    const dir = join(this.root, 'snapshots');
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!ids.has(name)) await rm(join(dir, name), { recursive: true, force: true });
    }
    for (const mountpoint of await this.remote.unusedMounts()) {
      await this.remote.unmount(mountpoint).catch((err) => this.log(`cleanup: unmounting ${mountpoint}`, err));
    }
  }
}

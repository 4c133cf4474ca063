import { chmod, chown, mkdir, rm, stat } from 'node:fs/promises';
import { tracePhase } from '../trace.js';
import { join } from 'node:path';
import { startMountDaemon } from '../mount/daemon.js';
import { unmountLazy } from '../mount/mount-service.js';
import { chooseDriver } from '../mount/driver.js';
import { LazyrootError } from '../errors.js';
import { native } from '../native.js';
import { mountsUnder, overlayMount, performMount, unmount, type Mount } from '../mount/mounts.js';
import { withLock } from '../store/lock.js';
import type { ImageRecord, RootfsRecord } from '../store/metadata-db.js';
import { pullReference, type ReferenceOptions } from '../store/operations.js';
import type { Store } from '../store/store.js';
import type { IdMapping } from '../unpack/id-mapping.js';
import { layerDirName } from '../unpack/layer-dir-name.js';
import { diskUsage } from './disk-usage.js';
import { processesRootedAt } from './rootfs-users.js';

/** What `create` prints: an OCI runtime-spec fragment, as GrootFS does. */
export interface SpecFragment {
  root: { path: string };
  process: { env: string[] };
  mounts: Mount[];
}

export interface CreateOptions extends ReferenceOptions {
  /** Do not mount: the caller mounts what `mounts` says. */
  withoutMount?: boolean;
  mapping?: IdMapping;
  /** Mount here instead of rootfs/ID/merged (a bundle's rootfs/ directory). */
  mountPoint?: string;
  /**
   * Do not unpack: the image's merged tree comes from a lazy FUSE mount at
   * rootfs/ID/lower (bytes fetched when read), with kernel overlayfs on top
   * for the writable upper. The upper is plain overlayfs format.
   */
  lazy?: {
    deadlineMs?: number;
    /** false: no lookup of span indexes pushed to the registry. */
    remoteIndex?: boolean;
    /** What the container will run instead of the image's Cmd ([]: the Cmd): its start is read ahead (LazyMountOptions.command). */
    command?: string[];
  };
  onLayer?: (index: number, reused: boolean) => void;
}

const idPattern = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export function checkRootfsId(id: string): void {
  if (!idPattern.test(id)) {
    throw new LazyrootError('INVALID_ARGUMENT', `rootfs ID ${JSON.stringify(id)}: use letters, digits, '.', '_' and '-' (at most 128), starting with a letter or digit`);
  }
}

export function rootfsPaths(store: Store, id: string) {
  const dir = store.paths.rootfsDir(id);
  return { dir, upper: join(dir, 'upper'), work: join(dir, 'work'), merged: join(dir, 'merged'), emptyLower: join(dir, 'empty'), lazyLower: join(dir, 'lower') };
}

/**
 * `lazyroot create REF ID`: the image (pulled first if needed) as a writable
 * root filesystem on kernel overlayfs at rootfs/ID/merged. The rootfs row is
 * written before any layer is unpacked, so a concurrent clean leaves them be.
 */
export async function createRootfs(store: Store, ref: string, id: string, options: CreateOptions = {}): Promise<{ rootfs: RootfsRecord; spec: SpecFragment }> {
  checkRootfsId(id);
  let image = store.findImage(ref);
  // Every layer already in blobs/ (pulled, or promoted by a lazy mount's prefetch): kernel
  // overlayfs needs no network then and reads at disk speed, so --lazy takes it.
  const lazy = options.lazy && (await chooseDriver(store, image)) === 'fuse' ? options.lazy : undefined;
  if (lazy && options.mapping) throw new LazyrootError('UNSUPPORTED', `create rootfs ${id}: --uid-mapping is not available with lazy mounts yet`);
  const paths = rootfsPaths(store, id);
  const target = options.mountPoint ?? paths.merged;
  const startLazyLower = (imageRef: string) =>
    startMountDaemon(
      {
        store: store.paths.root,
        ref: imageRef,
        mountpoint: paths.lazyLower,
        options: {
          ...(options.registry ? { registry: options.registry } : {}),
          ...(options.platform ? { platform: options.platform } : {}),
          ...(lazy?.deadlineMs !== undefined ? { deadlineMs: lazy.deadlineMs } : {}),
          ...(lazy?.remoteIndex === false ? { remoteIndex: false } : {}),
          ...(lazy?.command ? { command: lazy.command } : {}),
          // What a bundle reads first (bundle/user.ts), fetched while the mounts are made.
          readAtMount: ['etc/passwd', 'etc/group'],
        },
        env: process.env,
        logFile: join(paths.dir, 'mount-daemon.log'),
      },
    );
  let lazyMounted = false;
  if (!image && lazy) {
    // The mount daemon fetches the manifest and config itself: a warm standby has the
    // registry client loaded already, and this process need not load it at all.
    if (store.db.rootfs(id)) throw new LazyrootError('ALREADY_EXISTS', `rootfs ${id}: already exists`);
    await mkdir(paths.lazyLower, { recursive: true });
    try {
      tracePhase('create: lazy lower requested');
      await startLazyLower(ref);
      tracePhase('create: lazy lower ready');
    } catch (err) {
      await rm(paths.dir, { recursive: true, force: true });
      throw err instanceof LazyrootError ? err.withContext(`create rootfs ${id}`) : err;
    }
    lazyMounted = true;
    image = store.findImage(ref);
  }
  try {
    image ??= (await pullReference(store, ref, { ...options, ...(lazy ? { fetchLayers: false } : {}) })).image;
  } catch (err) {
    if (lazyMounted) await unmountLazy(store, paths.lazyLower).catch(() => undefined);
    throw err;
  }
  const chosen: ImageRecord = image;
  const layerNames = lazy ? [] : chosen.chainIds.map((c) => layerDirName(c, options.mapping));
  try {
    await withLock(store.paths.storeLock, 'store', async () => {
      if (!store.db.imageById(chosen.id)) throw new LazyrootError('NOT_FOUND', `image ${ref}: removed while the rootfs was being created`);
      const claimed = store.db.insertRootfs({
        id,
        imageId: chosen.id,
        driver: lazy ? 'fuse' : 'overlay',
        mapping: options.mapping ? JSON.stringify(options.mapping) : null,
        layerDirs: layerNames,
        mountPoint: options.mountPoint ?? null,
      });
      if (!claimed) throw new LazyrootError('ALREADY_EXISTS', `rootfs ${id}: already exists`);
    });
  } catch (err) {
    if (lazyMounted) await unmountLazy(store, paths.lazyLower).catch(() => undefined);
    throw err;
  }
  let mounted = false;
  try {
    if (lazy && !lazyMounted) {
      await mkdir(paths.lazyLower, { recursive: true });
      await startLazyLower(chosen.id);
      lazyMounted = true;
    }
    const layers = lazy
      ? []
      : await (await import('../unpack/layer-cache.js')).ensureLayersUnpacked(store, chosen, { ...(options.mapping ? { mapping: options.mapping } : {}), ...(options.onLayer ? { onLayer: options.onLayer } : {}) });
    for (const d of [paths.upper, paths.work, target]) await mkdir(d, { recursive: true, mode: 0o755 });
    // overlayfs shows the upper dir's owner, mode and times on the merged root: take
    // the image's (mapped) root's, or a container in a user namespace cannot write to /.
    const top = layers.at(-1);
    if (top) {
      const rootStat = await stat(top.diff, { bigint: true });
      await chown(paths.upper, Number(rootStat.uid), Number(rootStat.gid));
      await chmod(paths.upper, Number(rootStat.mode & 0o7777n));
      // With nanoseconds (utimes would keep milliseconds).
      const [aSec, aNsec] = splitNs(rootStat.atimeNs);
      const [mSec, mNsec] = splitNs(rootStat.mtimeNs);
      native().utimens(paths.upper, aSec, aNsec, mSec, mNsec);
    }
    const topFirst = [...layers].reverse();
    if (topFirst.length === 0 && !lazy) await mkdir(paths.emptyLower, { recursive: true });
    const fallback = lazy ? paths.lazyLower : paths.emptyLower;
    const relative = topFirst.length ? topFirst.map((l) => l.link) : [fallback];
    const absolute = topFirst.length ? topFirst.map((l) => join(store.paths.root, l.link)) : [fallback];
    if (lazy) {
      const rootStat = await stat(paths.lazyLower);
      await chown(paths.upper, rootStat.uid, rootStat.gid);
      await chmod(paths.upper, rootStat.mode & 0o7777);
    }
    const config = await store.configOf(chosen);
    const spec: SpecFragment = { root: { path: target }, process: { env: config.config?.Env ?? [] }, mounts: [] };
    if (options.withoutMount) {
      spec.mounts.push({ ...overlayMount({ lowerdirs: absolute, upperdir: paths.upper, workdir: paths.work, target: '/' }) });
    } else {
      await performMount(overlayMount({ lowerdirs: relative, upperdir: paths.upper, workdir: paths.work, target }), store.paths.root);
      mounted = true;
    }
    store.db.setRootfsReady(id, mounted);
    return { rootfs: store.db.rootfs(id)!, spec };
  } catch (err) {
    if (mounted) await unmount(target).catch(() => undefined);
    if (lazyMounted) await unmountLazy(store, paths.lazyLower).catch(() => undefined);
    await rm(paths.dir, { recursive: true, force: true });
    store.db.deleteRootfs(id);
    throw err instanceof LazyrootError ? err.withContext(`create rootfs ${id}`) : err;
  }
}

/** `lazyroot delete ID`: unmount and remove a rootfs; its layers stay cached until `clean`. Refused while a process runs on it, unless `force`. */
export async function deleteRootfs(store: Store, id: string, options: { force?: boolean } = {}): Promise<void> {
  const record = store.db.rootfs(id);
  if (!record) throw new LazyrootError('NOT_FOUND', `rootfs ${id}: no such rootfs`);
  const paths = rootfsPaths(store, id);
  if (!options.force) {
    // As GrootFS and containers/storage do: a rootfs a container still runs on is not pulled from under it.
    const root = record.mountPoint ?? paths.merged;
    const [user, ...more] = (await mountsUnder(root)).length ? await processesRootedAt(root) : [];
    if (user) {
      throw new LazyrootError('IN_USE', `rootfs ${id}: in use by process ${user.pid} (${user.name})${more.length ? ` and ${more.length} more` : ''}, whose root is ${root}: stop it first, or delete --force`);
    }
  }
  tracePhase('delete: not in use');
  if (record.mountPoint) for (const point of await mountsUnder(record.mountPoint)) await unmount(point);
  tracePhase('delete: overlay unmounted');
  for (const point of await mountsUnder(paths.merged)) await unmount(point);
  // A lazy rootfs's FUSE lower is served by a daemon: stop it through its record.
  if (record.driver === 'fuse' && (await mountsUnder(paths.lazyLower)).length) await unmountLazy(store, paths.lazyLower);
  tracePhase('delete: lazy unmounted');
  for (const point of await mountsUnder(paths.dir)) await unmount(point);
  await rm(paths.dir, { recursive: true, force: true });
  store.db.deleteRootfs(id);
}

/** A rootfs as `lazyroot list` shows it. */
export interface RootfsSummary {
  id: string;
  /** Its image's ID, and the image's names. */
  image: string;
  imageNames: string[];
  driver: 'overlay' | 'fuse';
  state: 'creating' | 'ready';
  mounted: boolean;
  /** Where it is (or is to be) mounted. */
  path: string;
  /** ISO 8601. */
  created: string;
}

/** `lazyroot list`: every rootfs, oldest first. */
export function listRootfs(store: Store): RootfsSummary[] {
  return store.db.listRootfs().map((r) => ({
    id: r.id,
    image: r.imageId,
    imageNames: store.db.imageById(r.imageId)?.names ?? [],
    driver: r.driver,
    state: r.state,
    mounted: r.mounted,
    path: r.mountPoint ?? rootfsPaths(store, r.id).merged,
    created: new Date(r.createdAt).toISOString(),
  }));
}

export interface RootfsStats {
  disk_usage: { total_bytes_used: number; exclusive_bytes_used: number };
}

/** GrootFS's stats: exclusive = the rootfs's own writes (upper); total adds its image's layers. */
export async function rootfsStats(store: Store, id: string): Promise<RootfsStats> {
  const record = store.db.rootfs(id);
  if (!record) throw new LazyrootError('NOT_FOUND', `rootfs ${id}: no such rootfs`);
  const seen = new Set<string>();
  const exclusive = await diskUsage(rootfsPaths(store, id).upper, seen);
  let layers = 0;
  for (const name of record.layerDirs) layers += await diskUsage(join(store.paths.layerDir(name), 'diff'), seen);
  return { disk_usage: { total_bytes_used: exclusive + layers, exclusive_bytes_used: exclusive } };
}

/** Nanoseconds since the epoch as [seconds, nanoseconds 0..999 999 999]. */
function splitNs(ns: bigint): [number, number] {
  const nsec = ((ns % 1_000_000_000n) + 1_000_000_000n) % 1_000_000_000n;
  return [Number((ns - nsec) / 1_000_000_000n), Number(nsec)];
}

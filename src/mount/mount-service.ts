import { createHash } from 'node:crypto';
import { tracePhase } from '../trace.js';
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { LazyrootError } from '../errors.js';
import { processAlive } from '../process-alive.js';
import { writeFileAtomic } from '../store/atomic-file.js';
import type { Store } from '../store/store.js';
import { cleanStaleMount, mountpointState } from '../fs/stale-mount.js';
import { mountImageOnOverlay } from './overlay-image.js';
import { chooseDriver } from './driver.js';
import { imagePrefix } from './image-prefix.js';
import { canonicalMountpoint } from './mountpoint.js';
import { flushCacheWrites } from './mount-cache.js';
import { unmount } from './mounts.js';
import type { MountRecord } from '../store/metadata-db.js';
import type { LazyMountOptions, LazyMountStats } from './lazy-mount.js';

function statsPath(store: Store, mountpoint: string): string {
  return join(store.paths.mountsDir, `${createHash('sha256').update(mountpoint).digest('hex').slice(0, 16)}.json`);
}

export interface ServeOptions extends LazyMountOptions {
  /** Called once: the mount is ready (served over FUSE by this process, or kernel overlayfs with nothing to serve), or failed. */
  onReady?: (error?: { code: string; message: string }, driver?: 'fuse' | 'overlay') => void;
  /** How long to wait for the unmount at the end before giving up on it (default 10 s). */
  unmountTimeoutMs?: number;
}

/**
 * The mount daemon's life (`lazyroot mount --foreground`): clean a stale
 * mount left at the mountpoint, mount, record it, tell the parent it is ready,
 * write stats every second, and on SIGTERM/SIGINT (or `lazyroot umount`)
 * unmount and exit. Resolves when the mount is gone.
 */
export async function serveMount(store: Store, ref: string, dir: string, options: ServeOptions = {}): Promise<void> {
  // Whatever fails before the mount is ready is the caller's answer (a full disk can fail the very
  // first write, the lease): the caller never waits for a reply that cannot come.
  let answered = false;
  const onReady: NonNullable<ServeOptions['onReady']> = (error, driver) => {
    if (answered) return;
    answered = true;
    options.onReady?.(error, driver);
  };
  try {
    const mountpoint = await canonicalMountpoint(dir);
    // While this process serves the mount, a lease holds its image's blobs: garbage collection
    // leaves its partial blobs, indexes and promoted blobs alone, from the moment the image is known.
    const lease = store.db.createLease();
    try {
      await serveLeased(store, ref, mountpoint, lease, { ...options, onReady });
    } finally {
      try {
        store.db.dropLease(lease);
      } catch (err) {
        // (a full disk): the lease of a process that is gone counts for nothing (metadata-db.ts).
        options.logger?.(`dropping lease ${lease}`, err);
      }
    }
  } catch (err) {
    const failure = asStoreFailure(err);
    onReady({ code: (failure as LazyrootError).code ?? 'UNAVAILABLE', message: (failure as Error).message });
    throw failure;
  }
}

/** SQLite's "database or disk is full" said as what it is. */
function asStoreFailure(err: unknown): unknown {
  if ((err as { code?: string }).code !== 'SQLITE_FULL') return err;
  return new LazyrootError('RESOURCE_EXHAUSTED', `the store's disk is full (${(err as Error).message}); free some space and try again`, { cause: err });
}

async function serveLeased(store: Store, ref: string, mountpoint: string, lease: string, options: ServeOptions): Promise<void> {
  let mount;
  try {
    if ((await mountpointState(mountpoint)) === 'stale') await cleanStaleMount(mountpoint);
    // Every layer local already (pulled, or promoted by an earlier mount's prefetch): kernel
    // overlayfs, and this daemon has nothing to serve.
    const found = store.findImage(ref);
    const local = found && imagePrefix(found, options.layerCount);
    if (local) store.db.addToLease(lease, store.blobsOf(local));
    if (local && (await chooseDriver(store, local)) === 'overlay') {
      const layerDirs = await mountImageOnOverlay(store, local, mountpoint);
      store.db.recordMount(mountpoint, 0, local.id, { layerDirs });
      options.onReady?.(undefined, 'overlay');
      return;
    }
    // Loaded here, in the daemon: the front ends that import this module (create/run --lazy, umount) never need it.
    const { mountImageLazily } = await import('./lazy-mount.js');
    mount = await mountImageLazily(store, ref, mountpoint, { ...options, lease });
    store.db.addToLease(lease, store.blobsOf(mount.image));
  } catch (err) {
    const e = err as LazyrootError;
    options.onReady?.({ code: e.code ?? 'UNAVAILABLE', message: e.message });
    throw err;
  }
  tracePhase('mount: ready');
  store.db.recordMount(mountpoint, process.pid, mount.image.id);
  const stats = statsPath(store, mountpoint);
  // Not durable: the numbers of a live daemon, rewritten every second.
  const writeStats = () =>
    writeFileAtomic(stats, JSON.stringify({ mountpoint, pid: process.pid, image: mount.image.names[0], ...mount.stats() }), store.paths.tmp, { durable: false }).catch(() => undefined);
  // `lazyroot mount --stats` asks for fresh numbers with SIGUSR1: listened for before anyone can ask.
  const onStatsRequest = () => void writeStats();
  process.on('SIGUSR1', onStatsRequest);
  // The answer does not wait for the first stats file (`mount --stats` asks for one and waits for
  // it): its writes go through libuv's pool, which a profile's checks keep busy just then. Waited
  // for, it put 22-130 ms between ready and the answer in traces of run --lazy with a profile.
  const firstStats = mkdir(store.paths.mountsDir, { recursive: true }).then(writeStats, () => undefined);
  options.onReady?.();
  const timer = setInterval(() => void writeStats(), 1000);
  await firstStats;
  await new Promise<void>((resolveStop) => {
    process.once('SIGTERM', resolveStop);
    process.once('SIGINT', resolveStop);
  });
  tracePhase('mount: unmount asked');
  clearInterval(timer);
  process.off('SIGUSR1', onStatsRequest);
  // A mount someone detached already (`umount -l`) can leave libfuse's unmount waiting for
  // ever: past this bound the daemon gives up on it and ends all the same.
  const unmounted = await Promise.race([mount.unmount().then(() => true), new Promise<false>((r) => setTimeout(() => r(false), options.unmountTimeoutMs ?? 10_000).unref())]).catch(
    (err: unknown) => {
      options.logger?.(`unmount ${mountpoint}`, err);
      return false;
    },
  );
  if (!unmounted) options.logger?.(`unmount ${mountpoint}: gave up waiting; the daemon exits anyway`, undefined);
  // Caches of this mount not written yet (an unmount right after the mount): written now, so the
  // next mount finds them, and before the record goes: `umount` returns once it is gone, and an
  // `rmi` or `clean` right after must not race a cache file (or its temp file) into the store.
  tracePhase('mount: unmounted');
  await flushCacheWrites();
  tracePhase('mount: caches written');
  // The lease goes before the record: a `clean` right after `umount` must find nothing of this mount's held.
  store.db.dropLease(lease);
  store.db.forgetMount(mountpoint);
  await rm(stats, { force: true });
}

/** Stats a running mount daemon wrote (`lazyroot mount --stats DIR`). */
export async function mountStats(store: Store, dir: string): Promise<MountStats> {
  const mountpoint = await canonicalMountpoint(dir);
  const record = store.db.mountAt(mountpoint);
  if (!record) throw new LazyrootError('NOT_FOUND', `${mountpoint}: no lazyroot mount there`);
  if (record.driver === 'overlay') return overlayStats(store, record);
  const path = statsPath(store, mountpoint);
  if (record.alive) {
    const before = (await stat(path).catch(() => undefined))?.mtimeMs ?? 0;
    process.kill(record.pid, 'SIGUSR1');
    for (let i = 0; i < 40 && ((await stat(path).catch(() => undefined))?.mtimeMs ?? 0) === before; i++) await new Promise((r) => setTimeout(r, 25));
  }
  const text = await readFile(path, 'utf8').catch(() => undefined);
  if (!text) throw new LazyrootError('UNAVAILABLE', `${mountpoint}: the mount daemon (pid ${record.pid}) has written no stats`);
  return { driver: 'fuse', ...(JSON.parse(text) as LazyMountStats & { mountpoint: string; pid: number }) };
}

/** What `mount --stats` shows: a lazy mount's daemon's numbers, or an overlay mount's (nothing fetched). */
export type MountStats = LazyMountStats & { mountpoint: string; /** The FUSE daemon (none for overlay). */ pid?: number; driver: 'fuse' | 'overlay' };

function overlayStats(store: Store, record: MountRecord): MountStats {
  const image = store.db.imageById(record.imageId);
  const sizes = (image?.chainIds ?? []).map((c) => store.db.layer(c)?.blobs[0]?.size ?? 0);
  return {
    mountpoint: record.mountpoint,
    driver: 'overlay',
    fs: { reads: 0, bytesServed: 0, errors: 0, timeouts: 0, inFlight: 0 },
    layers: [],
    bytesFetched: 0,
    bytesPrefetched: 0,
    bytesStreamed: 0,
    bytesIndexed: 0,
    imageBytes: sizes.reduce((a, b) => a + b, 0),
    rangeSupport: 'local',
    complete: true,
    prefetch: false,
    partialBytes: 0,
    profileBytes: 0,
    startupFiles: 0,
    startupBytes: 0,
    startupReading: false,
    recording: 'no',
  };
}

/**
 * `lazyroot umount DIR`: asks the daemon to unmount and waits for it; a mount
 * whose daemon is gone (killed) is cleaned directly.
 */
export async function unmountLazy(store: Store, dir: string, waitMs = 15_000): Promise<{ stale: boolean; mountpoint: string }> {
  const mountpoint = await canonicalMountpoint(dir);
  const record = store.db.mountAt(mountpoint);
  if (record?.driver === 'overlay') {
    await unmount(mountpoint);
    store.db.forgetMount(mountpoint);
    return { stale: false, mountpoint };
  }
  if (record?.alive) {
    process.kill(record.pid, 'SIGTERM');
    const until = Date.now() + waitMs;
    while (Date.now() < until) {
      if (!store.db.mountAt(mountpoint)) {
        // The record goes before the daemon has closed what it holds in the store (its database, log,
        // blobs): its end is waited for too, so that what follows `umount` (unmounting the store's
        // disk, removing the store) finds nothing held. Not when this process serves the mount (a
        // standby that took a `run --lazy` and now removes its rootfs): it would wait on itself.
        const daemonIsUs = record.pid === process.pid;
        while (!daemonIsUs && processAlive(record.pid) && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
        return { stale: false, mountpoint };
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new LazyrootError('UNAVAILABLE', `${mountpoint}: the mount daemon (pid ${record.pid}) did not unmount within ${waitMs / 1000} s (is the mount busy?)`);
  }
  const state = await mountpointState(mountpoint);
  if (state === 'none' && !record) throw new LazyrootError('NOT_FOUND', `${mountpoint}: no lazyroot mount there`);
  if (state === 'live' && !record) {
    // Served by a live process this store knows nothing of: not ours to detach.
    throw new LazyrootError('FAILED_PRECONDITION', `${mountpoint}: a live FUSE mount that this store did not make (another --store?)`);
  }
  if (state !== 'none') await cleanStaleMount(mountpoint);
  store.db.forgetMount(mountpoint);
  await rm(statsPath(store, mountpoint), { force: true });
  return { stale: true, mountpoint };
}

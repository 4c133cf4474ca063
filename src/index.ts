/**
 * lazyroot as a library: whatever the CLI does, a Node program can do.
 *
 *   import { openStore, mount, unmount } from 'lazyroot';
 *
 *   const store = await openStore('/var/lib/lazyroot');
 *   try {
 *     // A lazy FUSE mount served by a background daemon: bytes are fetched when read.
 *     await mount(store, 'docker://registry.example/app:1', '/mnt/app');
 *     …
 *     await unmount(store, '/mnt/app');
 *   } finally {
 *     store.close();
 *   }
 *
 * Every function may fail with a `LazyrootError` whose `code` says what kind
 * of failure it is (NOT_FOUND, IN_USE, UNAVAILABLE…); nothing here prints or
 * exits. The implementations load when a function is first called, so
 * importing the package costs little (the CLI starts through it too).
 */
import { LazyrootError } from './errors.js';
import { defaultStoreRoot } from './store/paths.js';
import type { Store } from './store/store.js';
import type { PullReferenceOptions, ReferenceOptions, ImageInspection, ImageSummary } from './store/operations.js';
import type { PullResult } from './store/pull.js';
import type { RemovedImage } from './store/store.js';
import type { IndexedLayerReport, IndexImageOptions } from './mount/index-image.js';
import type { PushedIndexes } from './mount/index-artifact.js';
import type { BackgroundMount, BackgroundMountOptions } from './mount/background-mount.js';
import type { MountStats, ServeOptions } from './mount/mount-service.js';
import type { DaemonMainOptions } from './mount/daemon-main.js';
import type { LayerStoreServer, ServeLayerStoreOptions } from './layer-store/serve-layer-store.js';
import type { RunningSnapshotter, SnapshotterOptions } from './snapshotter/daemon.js';
import type { SnapshotRecord } from './store/snapshot-table.js';
import type { MountRecord, RootfsRecord } from './store/metadata-db.js';
import type { CreateOptions, RootfsStats, RootfsSummary, SpecFragment } from './rootfs/rootfs.js';
import type { CleanOptions, CleanResult } from './rootfs/clean.js';
import type { BundleOptions } from './bundle/image-bundle.js';
import type { RunBundleOptions } from './bundle/bundle.js';
import type { RuntimeSpec } from './bundle/runtime-spec.js';
import type { AccessProfile } from './mount/access-profile.js';

export { LazyrootError, DigestMismatchError, isLazyrootError, type ErrorCode } from './errors.js';
export type { Store, RemovedImage, Garbage } from './store/store.js';
export type { ImageRecord, LayerRecord, LayerBlobRecord, RootfsRecord, MountRecord } from './store/metadata-db.js';
export type { PullReferenceOptions, ReferenceOptions, RegistryOptions, ImageInspection, ImageSummary } from './store/operations.js';
export type { PullResult, PullEvent } from './store/pull.js';
export type { IndexedLayerReport, IndexImageOptions } from './mount/index-image.js';
export type { PushedIndexes } from './mount/index-artifact.js';
export type { BackgroundMount, BackgroundMountOptions } from './mount/background-mount.js';
export type { MountStats, ServeOptions } from './mount/mount-service.js';
export type { DaemonMainOptions } from './mount/daemon-main.js';
export type { SnapshotterOptions, RunningSnapshotter } from './snapshotter/daemon.js';
export type { SnapshotRecord, SnapshotKind } from './store/snapshot-table.js';
export type { LazyMountOptions, LazyMountStats, LazyLayerStats } from './mount/lazy-mount.js';
export type { Mount } from './mount/mounts.js';
export type { AccessProfile, ProfileLayer } from './mount/access-profile.js';
export type { CreateOptions, RootfsStats, RootfsSummary, SpecFragment } from './rootfs/rootfs.js';
export type { CleanOptions, CleanResult } from './rootfs/clean.js';
export type { BundleOptions } from './bundle/image-bundle.js';
export type { RunBundleOptions } from './bundle/bundle.js';
export type { RuntimeSpec } from './bundle/runtime-spec.js';
export type { IdMapping, IdRange } from './unpack/id-mapping.js';
export type { Digest } from './oci/digest.js';
export type { Platform, ImageConfig, ImageManifest } from './oci/types.js';

/** Where a store lives when none is named: `$LAZYROOT_STORE`, else /var/lib/lazyroot. */
export function defaultStore(): string {
  return process.env.LAZYROOT_STORE ?? defaultStoreRoot;
}

// ── the store ────────────────────────────────────────────────────────────────

/** Opens (creating it if needed) the store at `root` (default: `defaultStore()`). Close it when done. */
export async function openStore(root: string = defaultStore()): Promise<Store> {
  const { Store } = await import('./store/store.js');
  return Store.open(root);
}

// ── images ───────────────────────────────────────────────────────────────────

/** `lazyroot pull`: brings an image into the store, every blob verified. */
export async function pull(store: Store, ref: string, options: PullReferenceOptions = {}): Promise<PullResult> {
  return (await import('./store/operations.js')).pullReference(store, ref, options);
}

/** `lazyroot images`: the images in the store, oldest first. */
export async function listImages(store: Store): Promise<ImageSummary[]> {
  return (await import('./store/operations.js')).listImages(store);
}

/** `lazyroot inspect`: manifest, config and layers, from the store, or from the image's source when it is not pulled. */
export async function inspectImage(store: Store, ref: string, options: ReferenceOptions = {}): Promise<ImageInspection> {
  return (await import('./store/operations.js')).inspectReference(store, ref, options);
}

/**
 * `lazyroot rmi`: removes a name; with the last name the image goes, and so
 * do its blobs, partial blobs, range maps and layer indexes that nothing else
 * uses. Fails with IN_USE while a rootfs or a live mount uses the image.
 */
export async function removeImage(store: Store, ref: string): Promise<RemovedImage> {
  return store.removeImage(ref);
}

/**
 * `lazyroot profile`: the access profile recorded for an image by its first
 * lazy mount (which blob ranges the workload read first; later mounts fetch
 * them at once), or undefined when it has none. NOT_FOUND when the image is
 * not in the store.
 */
export async function imageProfile(store: Store, ref: string): Promise<AccessProfile | undefined> {
  const { profiledImage, readProfile } = await import('./mount/access-profile.js');
  const image = profiledImage(store, ref);
  return readProfile(store, image, (message, error) => {
    throw new LazyrootError('INVALID_DATA', `${message}: ${(error as Error).message}`);
  });
}

/** `lazyroot profile --forget`: removes an image's access profile (the next lazy mount records a new one). Whether there was one. */
export async function forgetProfile(store: Store, ref: string): Promise<boolean> {
  const { profiledImage, removeProfile } = await import('./mount/access-profile.js');
  return removeProfile(store, profiledImage(store, ref));
}

/** `lazyroot index`: builds the span index of each gzip/tar layer ahead of a lazy mount. */
export async function indexImage(store: Store, ref: string, options: IndexImageOptions = {}): Promise<IndexedLayerReport[]> {
  return (await import('./mount/index-image.js')).indexImage(store, ref, options);
}

/**
 * `lazyroot index --push`: the span indexes (and access profile) of an image,
 * pushed to its repository as an OCI artifact whose subject is the image
 * manifest, for other machines' lazy mounts.
 */
export async function pushImageIndexes(store: Store, ref: string, options: IndexImageOptions = {}): Promise<PushedIndexes> {
  return (await import('./mount/index-artifact.js')).pushImageIndexes(store, ref, options);
}

// ── mounts ───────────────────────────────────────────────────────────────────

/**
 * `lazyroot mount REF DIR`: the image's merged rootfs, read-only, at `dir`,
 * served by a background daemon that outlives the caller (FUSE, bytes fetched
 * when read; kernel overlayfs with no daemon when every layer is in the
 * store). Resolves once the mount is ready. `store` may be a Store, its root
 * directory, or undefined for `defaultStore()`: given a directory, this
 * process opens nothing itself, and the mount is ready sooner. Undo with `unmount`.
 */
export async function mount(store: Store | string | undefined, ref: string, dir: string, options: BackgroundMountOptions = {}): Promise<BackgroundMount> {
  return (await import('./mount/background-mount.js')).mountInBackground(store, ref, dir, options);
}

/**
 * `lazyroot mount --foreground`: mounts and serves the mount in this process
 * until SIGTERM or SIGINT, then unmounts. Resolves when the mount is gone.
 */
export async function serveMount(store: Store, ref: string, dir: string, options: ServeOptions = {}): Promise<void> {
  return (await import('./mount/mount-service.js')).serveMount(store, ref, dir, options);
}

/**
 * `lazyroot layer-store DIR`: a Podman/CRI-O additional layer store at `dir`
 * (storage.conf `additionallayerstores = ["DIR:ref"]`): each image layer
 * appears on lookup and is served lazily. Resolves once mounted; `close()` unmounts.
 */
export async function serveLayerStore(store: Store, dir: string, options: ServeLayerStoreOptions = {}): Promise<LayerStoreServer> {
  return (await import('./layer-store/serve-layer-store.js')).serveLayerStore(store, dir, options);
}

export type { LayerStoreServer, ServeLayerStoreOptions };

/** `lazyroot umount DIR`: unmounts and stops the daemon; `stale` when the daemon was gone and the mount was cleaned up. */
export async function unmount(store: Store, dir: string): Promise<{ stale: boolean; mountpoint: string }> {
  return (await import('./mount/mount-service.js')).unmountLazy(store, dir);
}

/** `lazyroot mount --stats DIR`: bytes fetched, served, per layer. */
export async function mountStats(store: Store, dir: string): Promise<MountStats> {
  return (await import('./mount/mount-service.js')).mountStats(store, dir);
}

/** The mounts the store knows of, with whether their daemon still runs. */
export async function listMounts(store: Store): Promise<MountRecord[]> {
  return store.db.listMounts();
}

/**
 * The hidden `lazyroot mount-daemon`: serves one mount request (from fd 3, or
 * as a warm standby from its socket). For the CLI; resolves when the mount is gone.
 */
export async function runMountDaemon(options: DaemonMainOptions = {}): Promise<void> {
  return (await import('./mount/daemon-main.js')).runMountDaemon(options);
}

// ── containerd ───────────────────────────────────────────────────────────────

/**
 * `lazyroot snapshotter`: containerd's snapshots service (a proxy
 * snapshotter) on a unix socket, serving layers that carry stargz or CRI
 * labels lazily and the rest as ordinary overlay directories. Resolves once
 * it listens; `stop()` ends it (lazy mounts stay with their own daemons).
 */
export async function startSnapshotter(store: Store, options: SnapshotterOptions): Promise<RunningSnapshotter> {
  return (await import('./snapshotter/daemon.js')).startSnapshotter(store, options);
}

/** The snapshots `lazyroot snapshotter` holds for containerd (`lazyroot snapshots`). */
export async function listSnapshots(store: Store): Promise<SnapshotRecord[]> {
  return store.db.snapshots.list();
}

// ── rootfses ─────────────────────────────────────────────────────────────────

/**
 * `lazyroot create REF ID`: a writable rootfs on kernel overlayfs at
 * STORE/rootfs/ID/merged (pulled first when needed; `lazy: {}` for a lazy
 * FUSE lower instead of unpacked layers). Returns the row and the OCI
 * runtime-spec fragment (GrootFS style).
 */
export async function createRootfs(store: Store, ref: string, id: string, options: CreateOptions = {}): Promise<{ rootfs: RootfsRecord; spec: SpecFragment }> {
  return (await import('./rootfs/rootfs.js')).createRootfs(store, ref, id, options);
}

/** `lazyroot delete ID`: unmounts and removes a rootfs; its layers stay until `clean`. */
export async function deleteRootfs(store: Store, id: string, options: { force?: boolean } = {}): Promise<void> {
  return (await import('./rootfs/rootfs.js')).deleteRootfs(store, id, options);
}

/** `lazyroot list`. */
export async function listRootfs(store: Store): Promise<RootfsSummary[]> {
  return (await import('./rootfs/rootfs.js')).listRootfs(store);
}

/** `lazyroot stats ID`: total and exclusive disk usage, as GrootFS reports them. */
export async function rootfsStats(store: Store, id: string): Promise<RootfsStats> {
  return (await import('./rootfs/rootfs.js')).rootfsStats(store, id);
}

/**
 * `lazyroot clean [--threshold-bytes N]`: removes unpacked layers, images,
 * blobs, partial blobs, range maps and layer indexes that no rootfs and no
 * live mount uses (only when the store is over `thresholdBytes`, if given).
 */
export async function clean(store: Store, options: CleanOptions = {}): Promise<CleanResult> {
  return (await import('./rootfs/clean.js')).cleanStore(store, options);
}

// ── bundles ──────────────────────────────────────────────────────────────────

/** `lazyroot bundle REF DIR`: DIR/config.json from the image config, the rootfs mounted at DIR/rootfs. */
export async function makeBundle(store: Store, ref: string, dir: string, options: BundleOptions = {}): Promise<{ rootfsId: string; spec: RuntimeSpec }> {
  return (await import('./bundle/image-bundle.js')).makeBundle(store, ref, dir, options);
}

/** `lazyroot run REF`: bundle, `runc run`, clean up; resolves to the command's exit code. */
export async function runImage(store: Store, ref: string, options: BundleOptions & { stdio?: RunBundleOptions['stdio']; signal?: AbortSignal } = {}): Promise<number> {
  return (await import('./bundle/image-bundle.js')).runImage(store, ref, options);
}

import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { LazyrootError } from '../errors.js';
import type { Store } from '../store/store.js';
import { defaultStoreRoot } from '../store/paths.js';
import type { DaemonReady } from './daemon-channel.js';
import { startMountDaemon } from './daemon.js';
import type { LazyMountOptions } from './lazy-mount.js';
import { canonicalMountpoint } from './mountpoint.js';

export interface BackgroundMountOptions extends Omit<LazyMountOptions, 'logger' | 'lease'> {
  /** Where the daemon logs (default: STORE/mount-daemon.log). */
  logFile?: string;
  /** The environment the daemon runs with, where registry credentials are found (default: process.env). */
  env?: Record<string, string | undefined>;
  /** Give up when the mount is not ready after this long (default 120 s). */
  readyTimeoutMs?: number;
  /** The lazyroot CLI that runs the daemon (`BIN mount-daemon`); default: this package's bin/lazyroot.js. */
  bin?: string;
}

export interface BackgroundMount extends DaemonReady {
  mountpoint: string;
}

/**
 * `lazyroot mount REF DIR`: hands the mount to a daemon (a warm standby, or
 * a new process) and resolves once it is ready; the daemon outlives the
 * caller and serves the mount until `unmountLazy` (`lazyroot umount`). A
 * mount of an image whose layers are all in the store is kernel overlayfs
 * with no daemon (`driver: 'overlay'`, no pid). `store` may be the store's
 * root directory: this process then opens nothing itself, not even the
 * store — the sooner the daemon has the request, the sooner the rootfs is
 * visible.
 */
export async function mountInBackground(store: Store | string | undefined, ref: string, dir: string, options: BackgroundMountOptions = {}): Promise<BackgroundMount> {
  if (!dir) throw new LazyrootError('INVALID_ARGUMENT', 'mount: missing the mount point');
  const root = typeof store === 'object' ? store.paths.root : resolve(store ?? process.env.LAZYROOT_STORE ?? defaultStoreRoot);
  await mkdir(root, { recursive: true, mode: 0o711 });
  const { logFile, env, readyTimeoutMs, bin, ...mountOptions } = options;
  const mountpoint = await canonicalMountpoint(dir);
  const ready = await startMountDaemon(
    { store: root, ref, mountpoint, options: mountOptions, env: env ?? process.env, logFile: logFile ?? join(root, 'mount-daemon.log') },
    { ...(bin !== undefined ? { bin } : {}), ...(readyTimeoutMs !== undefined ? { readyTimeoutMs } : {}) },
  );
  return { mountpoint, ...ready };
}

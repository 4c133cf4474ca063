import { mkdir, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { LazyrootError } from '../errors.js';
import { packageBin } from '../mount/daemon.js';
import { spawnStandby } from '../mount/standby.js';
import { warmUp } from '../mount/warm-up.js';
import type { RegistryOptions } from '../store/operations.js';
import type { Store } from '../store/store.js';
import { CallCounter, metricsText, startMetricsServer } from './metrics.js';
import { RemoteLayers, type Logger } from './remote-layers.js';
import { loadSnapshotsService, snapshotsHandlers } from './service.js';
import { Snapshotter } from './snapshotter.js';

export interface SnapshotterOptions {
  /** The unix socket containerd's `[proxy_plugins.NAME] address` names. */
  address: string;
  registry?: RegistryOptions;
  /** Background download of the rest of remote layers once mounted (default true). */
  prefetch?: boolean;
  /** Look in the registry for span indexes pushed by `index --push` before streaming a gzip layer (default true). */
  remoteIndex?: boolean;
  /** `HOST:PORT` for a Prometheus text endpoint (GET /metrics); port 0 picks one. */
  metricsAddress?: string;
  logger?: Logger;
  /** One line per gRPC call, with its outcome and time (`--trace`). */
  trace?: (line: string) => void;
}

export interface RunningSnapshotter {
  address: string;
  /** The port /metrics is served on, when asked for. */
  metricsPort?: number;
  /** Stops accepting calls and waits for those in flight. Lazy mounts stay (their daemons are their own processes). */
  stop(): Promise<void>;
}

/**
 * `lazyroot snapshotter`: containerd's snapshots service on a unix socket.
 * Everything it knows is in the store's SQLite and the FUSE mounts' own
 * daemons, so a restart resumes where the last run stopped: running
 * containers keep reading through mounts that never went away.
 */
export async function startSnapshotter(store: Store, options: SnapshotterOptions): Promise<RunningSnapshotter> {
  if (!options.address) throw new LazyrootError('INVALID_ARGUMENT', 'snapshotter: --address SOCKET is required');
  const log = options.logger ?? (() => undefined);
  const remote = new RemoteLayers(store, {
    ...(options.registry ? { registry: options.registry } : {}),
    ...(options.prefetch === false ? { prefetch: false } : {}),
    ...(options.remoteIndex === false ? { remoteIndex: false } : {}),
    logger: log,
  });
  const snapshotter = new Snapshotter(store, remote, log);
  const server = new grpc.Server();
  const calls = new CallCounter();
  server.addService(loadSnapshotsService(), snapshotsHandlers(snapshotter, log, calls, options.trace));
  // Warmed up before it listens, as a standby is (mount/warm-up.ts): containerd's first Prepare
  // (resolving an image, the store, the registry client) would otherwise run V8's first-run code.
  if (process.env.LAZYROOT_WARM_UP !== '0') await warmUp(store.paths.tmp);
  await mkdir(dirname(options.address), { recursive: true });
  // A socket file left by a previous run (nothing listens on it: we are starting).
  await rm(options.address, { force: true });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix:${options.address}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(new LazyrootError('UNAVAILABLE', `snapshotter: cannot listen on ${options.address}: ${err.message}`, { cause: err })) : resolve(),
    ),
  );
  // Lazy mounts whose daemons are gone (reboot, kill -9) come back in the background.
  remote.remountAll().catch((err) => log('mounting remote snapshots again', err));
  // A warm standby for the first lazy mount (each mount daemon leaves the next one behind), and
  // the modules the first Prepare needs to resolve an image, loaded now rather than during it.
  spawnStandby(packageBin);
  await import('../source/registry/registry-source.js').catch(() => undefined);
  const metrics = options.metricsAddress ? await startMetricsServer(options.metricsAddress, () => metricsText(store, remote, calls), log) : undefined;
  return {
    address: options.address,
    ...(metrics ? { metricsPort: metrics.port } : {}),
    stop: () =>
      new Promise<void>((resolve) => {
        metrics?.server.close();
        const force = setTimeout(() => server.forceShutdown(), 5000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}

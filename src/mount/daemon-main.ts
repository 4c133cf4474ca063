import { tracePhase } from '../trace.js';
import { Socket } from 'node:net';
import type { LazyrootError } from '../errors.js';
import type { Store } from '../store/store.js';
import type { Duplex } from 'node:stream';
import { readMountRequest, replyReady, type MountRequest } from './daemon-channel.js';
import { adoptSettledSchemes } from '../source/registry/settled-schemes.js';
import { fileLogger, packageBin } from './daemon.js';
import { Frame, writeFrame, type RunRequest } from './run-channel.js';
import { awaitAssignment, claimStarting, spawnStandby, standbyPaths } from './standby.js';

// Loaded when used: a standby loads them before it waits, a spawned daemon once it has its request.
const service = () => import('./mount-service.js');
// The lazy path's own modules (layers, FUSE, fuse-native and libfuse): mount-service loads them on
// first use, which in a standby would be during the mount it was kept warm for.
const lazyMount = () => import('./lazy-mount.js');
const storeModule = () => import('../store/store.js');

/** How long after its mount is ready a daemon leaves the next standby. */
const standbyDelayMs = 1000;

export interface DaemonMainOptions {
  /** Load everything, then wait for a request on the standby socket (standby.ts) instead of fd 3. */
  standby?: boolean;
  /** The CLI that runs the standby this daemon leaves behind; default: this package's bin/lazyroot.js. */
  bin?: string;
  /**
   * A `run` handed over by a front end (run-channel.ts): the CLI supplies the
   * runner (bundle/, below this folder), and what it needs loaded before a
   * standby waits. Without it, run requests are declined.
   */
  runner?: { preload(): Promise<unknown>; serve(request: RunRequest, channel: Duplex, /** Called once the caller has the exit status. */ done?: () => void): Promise<void> };
}

/**
 * The mount daemon's side of `lazyroot mount` (the hidden `mount-daemon`
 * command): read the request from fd 3 (a pipe from the process that spawned
 * it) or, as a standby, first load everything a mount needs and wait for a
 * request on the standby socket; then serve the mount until `umount`
 * (SIGTERM). Once ready it leaves a standby behind for the next mount.
 * Resolves when the mount is gone, or at once when a standby is not needed;
 * the caller then ends the process, whatever native threads libfuse may still hold.
 */
export async function runMountDaemon(options: DaemonMainOptions = {}): Promise<void> {
  let channel: Duplex;
  if (options.standby) {
    // One standby on its way at a time: mounts ending meanwhile start no other.
    if (!claimStarting()) return;
    // Loaded before the wait: that is the point of a standby.
    await Promise.all([service(), lazyMount(), storeModule(), import('../source/registry/registry-source.js'), options.runner?.preload()]);
    // The first Date of a process loads time zone data (pages of the node binary not read yet
    // after a cold start: ~30 ms measured), which a mount's first access profile would pay.
    void new Date().toISOString();
    // Then a mount of a made-up image, so the real one runs compiled code (warm-up.ts).
    // (Parsing a made-up TOC alone was measured earlier: no gain. The whole mount is what counts.)
    if (process.env.LAZYROOT_WARM_UP !== '0') await (await import('./warm-up.js')).warmUp(standbyPaths().dir);
    const assigned = await awaitAssignment();
    if (!assigned) return;
    channel = assigned;
  } else {
    channel = new Socket({ fd: 3, readable: true, writable: true });
  }
  const received = (await readMountRequest(channel)) as MountRequest | RunRequest;
  // The caller's environment: auth files and passwords are found through it.
  for (const key of Object.keys(process.env)) delete process.env[key];
  Object.assign(process.env, received.env);
  tracePhase(`daemon: ${(received as RunRequest).kind === 'run' ? 'run' : 'mount'} request taken`);
  const logger = fileLogger(received.logFile);
  // A bug fails the operation it is in, never the mount: whatever escapes is logged, and the
  // daemon goes on serving.
  process.on('uncaughtException', (err) => logger('uncaught exception (the mount goes on)', err));
  process.on('unhandledRejection', (err) => logger('unhandled rejection (the mount goes on)', err));
  if ((received as RunRequest).kind === 'run') {
    if (!options.runner) {
      writeFrame(channel, Frame.Declined, 'this daemon runs no containers');
      channel.end();
      return;
    }
    // The next command finds a standby too (this one is taken for the whole run), started once
    // the run is over: loading one while the container starts costs it (CPU, and disk after a
    // cold boot: 50-150 ms measured on /bin/true).
    return options.runner.serve(received as RunRequest, channel, () => spawnStandby(options.bin ?? packageBin));
  }
  const request = received as MountRequest;
  adoptSettledSchemes(request.registrySchemes);
  const { Store } = await storeModule();
  let store: Store;
  try {
    store = await Store.open(request.store);
    tracePhase('daemon: store open');
  } catch (err) {
    // Told to the caller first: the log may be on the very disk that is full.
    replyReady(channel, { code: (err as LazyrootError).code ?? 'UNAVAILABLE', message: (err as Error).message });
    throw err;
  }
  // The next standby, once the mount's first reads are past (as for a run, above), or when the
  // mount ends sooner.
  let standbyTimer: NodeJS.Timeout | undefined;
  const leaveStandby = () => {
    clearTimeout(standbyTimer);
    standbyTimer = undefined;
    spawnStandby(options.bin ?? packageBin);
  };
  try {
    await (await service()).serveMount(store, request.ref, request.mountpoint, {
      ...request.options,
      logger,
      onReady: (error, driver) => {
        replyReady(channel, error, driver);
        // A mount that failed leaves the next standby at once: the command after it is not cold.
        if (error) leaveStandby();
        else standbyTimer = setTimeout(leaveStandby, standbyDelayMs);
      },
    });
    if (standbyTimer) leaveStandby();
  } catch (err) {
    logger('mount daemon stopped', err);
    throw err;
  } finally {
    clearTimeout(standbyTimer);
    store.close();
  }
}

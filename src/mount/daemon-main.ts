import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { readMountRequest, replyReady } from './daemon-channel.js';
import { fileLogger } from './daemon.js';
import { awaitAssignment, spawnStandby } from './standby.js';

const service = () => import('./mount-service.js');

/**
 * A mount daemon's life (`lazyroot mount-daemon`): read the request from fd 3
 * (a pipe from the process that spawned it) or, as a standby, first load
 * everything a mount needs and wait for a request on the standby socket;
 * then serve the mount until `umount` (SIGTERM). Once the mount is ready it
 * leaves a standby behind for the next mount. Resolves when the daemon is
 * done (the caller ends the process: libfuse may still hold native threads).
 */
export async function runMountDaemon(options: { standby: boolean; bin: string }): Promise<void> {
  let channel: Duplex;
  if (options.standby) {
    // Loaded before the wait: that is the point of a standby.
    await Promise.all([service(), import('../store/store.js'), import('../source/registry/registry-source.js')]);
    const assigned = await awaitAssignment();
    if (!assigned) return;
    channel = assigned;
  } else {
    channel = new Socket({ fd: 3, readable: true, writable: true });
  }
  const request = await readMountRequest(channel);
  for (const key of Object.keys(process.env)) delete process.env[key];
  Object.assign(process.env, request.env);
  const logger = fileLogger(request.logFile);
  const { Store } = await import('../store/store.js');
  const store = await Store.open(request.store);
  try {
    await (await service()).serveMount(store, request.ref, request.mountpoint, {
      ...request.options,
      logger,
      onReady: (error, driver) => {
        replyReady(channel, error, driver);
        if (!error) spawnStandby(options.bin);
      },
    });
  } catch (err) {
    logger('mount daemon stopped', err);
    throw err;
  } finally {
    store.close();
  }
}

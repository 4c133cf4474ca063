import { constants } from 'node:os';
import { tracePhase } from '../trace.js';
import { PassThrough, Writable, type Duplex } from 'node:stream';
import { LazyrootError, type ErrorCode } from '../errors.js';
import { fileLogger, serveMountsInThisProcess } from '../mount/daemon.js';
import type { DaemonReady } from '../mount/daemon-channel.js';
import { serveMount } from '../mount/mount-service.js';
import { Frame, readFrames, writeFrame, type RunRequest } from '../mount/run-channel.js';
import { Store } from '../store/store.js';
import { runImage } from './image-bundle.js';

/**
 * A warm standby running a whole `lazyroot run --lazy` for a front end
 * (cli/run-handoff-client.ts): the same runImage the CLI calls, with the
 * run's lazy mount served by this process and the container's stdio relayed
 * over the channel. The front end then loads only a few small modules, not
 * the CLI, SQLite and the store, which is most of a cold start; this process
 * loaded them before it was asked. When the run is over (container gone,
 * rootfs unmounted and deleted) it reports the exit code and ends.
 */
export async function serveRun(request: RunRequest, channel: Duplex, done?: () => void): Promise<void> {
  tracePhase('standby: run request');
  const logger = fileLogger(request.logFile);
  const stopped = new AbortController();
  let signalName: string | undefined;
  const stdin = new PassThrough();
  readFrames(channel, (type, payload) => {
    if (type === Frame.Stdin) stdin.write(payload);
    else if (type === Frame.StdinEnd) stdin.end();
    else if (type === Frame.Signal) {
      signalName ??= payload.toString();
      stopped.abort(new LazyrootError('UNAVAILABLE', `run: stopped by ${signalName}`));
    }
  });
  // The front end gone (killed): stop the container as a signal would.
  channel.on('close', () => stopped.abort(new LazyrootError('UNAVAILABLE', 'run: the caller went away')));
  channel.on('error', () => undefined);
  const relay = (type: Frame) =>
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        if (channel.destroyed || writeFrame(channel, type, chunk)) done();
        else channel.once('drain', () => done());
      },
    });

  let result: { code: number } | { error: { code: string; message: string } };
  let store: Store | undefined;
  const mounts: Array<Promise<void>> = [];
  try {
    // This process is the caller's for the whole run: its paths mean what they mean to the caller.
    process.chdir(request.cwd);
    store = await Store.open(request.store);
    const here = store;
    serveMountsInThisProcess(
      (mount) =>
        new Promise<DaemonReady>((resolve, reject) => {
          const serving = serveMount(here, mount.ref, mount.mountpoint, {
            ...mount.options,
            logger,
            onReady: (error, driver) =>
              error ? reject(new LazyrootError(error.code as ErrorCode, error.message)) : resolve({ ...(driver === 'overlay' ? {} : { pid: process.pid }), driver: driver ?? 'fuse' }),
          });
          mounts.push(serving.catch((err: unknown) => logger(`mount ${mount.mountpoint}`, err)));
        }),
    );
    tracePhase('standby: store open');
    const code = await runImage(store, request.ref, {
      lazy: { ...(request.deadlineMs !== undefined ? { deadlineMs: request.deadlineMs } : {}), ...(request.remoteIndex === false ? { remoteIndex: false } : {}) },
      registry: request.insecure ? { insecure: true } : {},
      args: request.args,
      stdio: { stdin, stdout: relay(Frame.Stdout), stderr: relay(Frame.Stderr) },
      signal: stopped.signal,
    });
    result = { code };
  } catch (err) {
    // Stopped by the caller's signal: the exit code a shell gives a process that signal killed.
    const signum = signalName ? (constants.signals as Record<string, number>)[signalName] : undefined;
    result = signum ? { code: 128 + signum } : { error: { code: (err as LazyrootError).code ?? 'INTERNAL', message: (err as Error).message } };
    if (!signum) logger('run', err);
  }
  // runImage returns once the rootfs is unmounted and deleted: the caller may go on at once.
  tracePhase('standby: run over');
  if (!channel.destroyed) {
    writeFrame(channel, Frame.Exit, JSON.stringify(result));
    channel.end();
  }
  done?.();
  // This process ends when its mount's service has wound down (caches written, lease dropped).
  await Promise.all(mounts);
  store?.close();
}

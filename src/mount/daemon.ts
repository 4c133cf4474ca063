import { spawn } from 'node:child_process';
import { daemonNodeFlags } from './daemon-memory.js';
import { createWriteStream } from 'node:fs';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { LazyrootError } from '../errors.js';
import { awaitReady, type DaemonReady, type MountRequest } from './daemon-channel.js';
import { claimStandby } from './standby.js';
import { tracePhase } from '../trace.js';
import { settledSchemesNow } from '../source/registry/settled-schemes.js';

export type { MountRequest } from './daemon-channel.js';

/**
 * This package's CLI (`bin/lazyroot.js`, from dist/src/mount/), which runs a
 * daemon as `lazyroot mount-daemon`. Found from this module, never from
 * process.argv[1]: a Node program using the library is not lazyroot.
 */
export const packageBin = fileURLToPath(new URL('../../../bin/lazyroot.js', import.meta.url));

export interface StartOptions {
  /** The lazyroot CLI that runs the daemon (`BIN mount-daemon`); default: this package's bin/lazyroot.js. */
  bin?: string;
  readyTimeoutMs?: number;
}

/**
 * Starts a mount daemon for `request` and resolves with its pid once the
 * mount is ready; the daemon outlives this process. A warm standby daemon
 * (standby.ts) takes the request when one is listening — its modules are
 * loaded already, which is most of a cold start — otherwise a new process is
 * spawned with the request on an extra pipe (fd 3).
 */
export async function startMountDaemon(request: MountRequest, options: StartOptions = {}): Promise<DaemonReady> {
  if (servedHere) return servedHere(request);
  const timeoutMs = options.readyTimeoutMs ?? 120_000;
  tracePhase('daemon: mount asked for');
  request = { ...request, registrySchemes: request.registrySchemes ?? settledSchemesNow() };
  const claimed = await claimStandby(request, timeoutMs);
  if (claimed !== undefined) return claimed;
  tracePhase('daemon: no standby, starting a daemon');

  const log = createWriteStream(request.logFile, { flags: 'a' });
  await new Promise((r) => log.once('open', r));
  const child = spawn(process.execPath, [...daemonNodeFlags, options.bin ?? packageBin, 'mount-daemon'], { detached: true, stdio: ['ignore', log, log, 'pipe'] });
  const channel = child.stdio[3] as Duplex;
  try {
    channel.write(`${JSON.stringify(request)}\n`);
    const exited = new Promise<never>((_, reject) =>
      child.on('exit', (code, signal) => reject(new LazyrootError('UNAVAILABLE', `mount daemon exited (${signal ?? `code ${code}`}) before it was ready; see ${request.logFile}`))),
    );
    return await Promise.race([awaitReady(channel, timeoutMs), exited]);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  } finally {
    channel.destroy();
    child.unref();
    log.end();
  }
}

let servedHere: ((request: MountRequest) => Promise<DaemonReady>) | undefined;

/**
 * In a standby that runs a whole `run --lazy` for a front end
 * (bundle/run-handoff.ts): the run's lazy mount is served by this process,
 * which is warm already, instead of being handed to yet another daemon.
 */
export function serveMountsInThisProcess(serve: (request: MountRequest) => Promise<DaemonReady>): void {
  servedHere = serve;
}

/** The daemon's log: appended lines with a timestamp. */
export function fileLogger(path: string): (message: string, error?: unknown) => void {
  const stream = createWriteStream(path, { flags: 'a' });
  stream.on('error', () => undefined); // a log that cannot be written must not take the mount down
  return (message, error) =>
    stream.write(`${new Date().toISOString()} ${message}${error === undefined ? '' : `: ${(error as Error)?.message ?? String(error)}`}\n`);
}

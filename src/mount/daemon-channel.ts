import type { SettledSchemes } from '../source/registry/settled-schemes.js';
import type { Duplex } from 'node:stream';
import { LazyrootError } from '../errors.js';
import type { LazyMountOptions } from './lazy-mount.js';

/**
 * The conversation between a caller of `mount` and the daemon that serves
 * it: one request line, replies as lines, over a pipe or a Unix socket.
 */

/**
 * What a mount daemon is asked to do. It travels as one JSON line over a
 * pipe or a socket, never in argv: `ps` must not show registry credentials.
 */
export interface MountRequest {
  store: string;
  ref: string;
  mountpoint: string;
  options: Omit<LazyMountOptions, 'logger'>;
  /** The caller's environment: auth files and passwords are found through it. */
  env: Record<string, string | undefined>;
  /** Where the daemon logs. */
  logFile: string;
  /** What the caller's registry pings settled (answers.ts): the daemon's first requests need no ping of their own. */
  registrySchemes?: SettledSchemes;
}

/**
 * The daemon's replies on the same channel: `accepted` at once (from then on
 * the caller must not start another daemon for this mount), then `ready PID`
 * or `error {"code","message"}`.
 */
/** A mount is ready: served by daemon `pid` (FUSE), or kernel overlayfs with no daemon (no pid). */
export interface DaemonReady {
  pid?: number;
  driver: 'fuse' | 'overlay';
}

export type Reply = { kind: 'accepted' } | { kind: 'ready'; pid?: number; driver?: 'fuse' | 'overlay' } | { kind: 'error'; code: string; message: string };

/** Reads replies from `channel` until `ready` (→ pid) or `error` (→ thrown). */
export function awaitReady(channel: Duplex, timeoutMs: number, onAccepted?: () => void): Promise<DaemonReady> {
  return new Promise<DaemonReady>((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => finish(new LazyrootError('UNAVAILABLE', `mount daemon not ready after ${timeoutMs / 1000} s`)), timeoutMs);
    const finish = (result: DaemonReady | Error) => {
      clearTimeout(timer);
      channel.off('data', onData);
      channel.off('close', onClose);
      if (!(result instanceof Error)) resolve(result);
      else reject(result);
    };
    const onClose = () => finish(new LazyrootError('UNAVAILABLE', 'mount daemon closed its channel before it was ready'));
    const onData = (chunk: Buffer) => {
      text += chunk.toString();
      for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n')) {
        const reply = JSON.parse(text.slice(0, nl)) as Reply;
        text = text.slice(nl + 1);
        if (reply.kind === 'accepted') onAccepted?.();
        else if (reply.kind === 'ready') return finish({ ...(reply.pid !== undefined ? { pid: reply.pid } : {}), driver: reply.driver ?? 'fuse' });
        else return finish(new LazyrootError((reply.code as LazyrootError['code']) ?? 'UNAVAILABLE', reply.message));
      }
    };
    channel.on('data', onData);
    channel.on('close', onClose);
  });
}

/** In the daemon: the one request on `channel`, acknowledged with `accepted`. */
export function readMountRequest(channel: Duplex): Promise<MountRequest> {
  return new Promise((resolve, reject) => {
    let text = '';
    const onData = (chunk: Buffer) => {
      text += chunk.toString();
      const nl = text.indexOf('\n');
      if (nl < 0) return;
      channel.off('data', onData);
      channel.off('end', onEnd);
      try {
        const request = JSON.parse(text.slice(0, nl)) as MountRequest;
        channel.write(`${JSON.stringify({ kind: 'accepted' } satisfies Reply)}\n`);
        resolve(request);
      } catch (err) {
        reject(new LazyrootError('INVALID_ARGUMENT', `mount daemon: unreadable request: ${(err as Error).message}`));
      }
    };
    const onEnd = () => reject(new LazyrootError('UNAVAILABLE', 'mount daemon: the channel closed before a request came'));
    channel.on('data', onData);
    channel.on('end', onEnd);
  });
}

/** In the daemon: tell the caller how the mount went, then let go of the channel. */
export function replyReady(channel: Duplex, error?: { code: string; message: string }, driver: 'fuse' | 'overlay' = 'fuse'): void {
  // An overlay mount needs no daemon: this process ends once it has answered.
  const reply: Reply = error ? { kind: 'error', code: error.code, message: error.message } : { kind: 'ready', ...(driver === 'fuse' ? { pid: process.pid } : {}), driver };
  channel.end(`${JSON.stringify(reply)}\n`);
}


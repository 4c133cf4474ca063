import { connect, type Socket } from 'node:net';
import { tracePhase } from '../trace.js';
import { join, resolve } from 'node:path';
import { isatty } from 'node:tty';
import { mkdir } from 'node:fs/promises';
import type { MountRequest } from '../mount/daemon-channel.js';
import { canonicalMountpoint } from '../mount/mountpoint.js';
import { Frame, readFrames, writeFrame, type RunRequest } from '../mount/run-channel.js';
import { claimStandby, standbyEnabled, standbyPaths, standbyPid } from '../mount/standby.js';

/**
 * The front end of `lazyroot run --lazy REF [-- CMD…]` (and of a plain
 * `lazyroot mount REF DIR`, below) when a warm standby
 * is waiting: instead of loading the CLI, SQLite and the store (most of a
 * cold start), it hands the whole run to the standby (bundle/run-handoff.ts)
 * and relays the container's stdio, the caller's signals and the exit code.
 * Only the plain form is handed over (`--store`, `-q`, `--lazy`,
 * `--insecure`, `--no-remote-index`, `--deadline-ms`), and only when no stdio is a terminal (a
 * relayed stream is a pipe to the container). Anything else, no standby, or
 * a standby that declines: undefined, and the caller runs the full CLI.
 * `LAZYROOT_HANDOFF=0` turns it off.
 */
export async function tryRunHandoff(argv: readonly string[]): Promise<number | undefined> {
  tracePhase('cli: started');
  if (process.env.LAZYROOT_HANDOFF === '0' || !standbyEnabled()) return undefined;
  const mount = parseMountArgs(argv.slice(2));
  if (mount) return handMountOver(mount);
  const run = parseRunArgs(argv.slice(2));
  if (!run || isatty(0) || isatty(1) || isatty(2)) return undefined;
  const store = resolve(run.store ?? process.env.LAZYROOT_STORE ?? '/var/lib/lazyroot');
  const request: RunRequest = {
    kind: 'run',
    store,
    ref: run.ref,
    args: run.args,
    ...(run.insecure ? { insecure: true } : {}),
    ...(run.deadlineMs !== undefined ? { deadlineMs: run.deadlineMs } : {}),
    ...(run.remoteIndex ? {} : { remoteIndex: false }),
    env: { ...process.env },
    logFile: join(store, 'mount-daemon.log'),
    cwd: process.cwd(),
  };
  const standby = standbyPid();
  const channel = await new Promise<Socket | undefined>((done) => {
    const s = connect(standbyPaths().socket);
    s.once('connect', () => done(s));
    s.once('error', () => done(undefined));
  });
  if (!channel) return undefined;
  return relay(channel, request, standby);
}

function relay(channel: Socket, request: RunRequest, standby: number | undefined): Promise<number | undefined> {
  return new Promise((done) => {
    let accepted = false;
    let finished = false;
    const finish = (code: number | undefined) => {
      if (finished) return;
      finished = true;
      for (const name of forwarded) process.off(name, onSignal);
      process.stdin.destroy();
      channel.destroy();
      done(code);
    };
    const forwarded = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
    const onSignal = (name: NodeJS.Signals) => {
      if (accepted) writeFrame(channel, Frame.Signal, name);
    };
    for (const name of forwarded) process.on(name, onSignal);

    channel.on('error', () => undefined);
    channel.on('close', () => {
      if (finished) return;
      if (accepted) process.stderr.write('lazyroot: the standby running this container went away without its exit status\n');
      // Not accepted: nothing was done (another caller took the standby); the full CLI runs it.
      finish(accepted ? 1 : undefined);
    });
    let head = '';
    const onHead = (chunk: Buffer) => {
      head += chunk.toString('latin1');
      const nl = head.indexOf('\n');
      if (nl < 0) return;
      channel.off('data', onHead);
      const reply = JSON.parse(head.slice(0, nl)) as { kind: string };
      if (reply.kind !== 'accepted') return finish(undefined);
      accepted = true;
      if (process.env.LAZYROOT_DEBUG) process.stderr.write(`lazyroot: run handed to the warm standby (pid ${standby ?? '?'})\n`);
      readFrames(channel, onFrame, Buffer.from(head.slice(nl + 1), 'latin1'));
      forwardStdin(channel);
    };
    const onFrame = (type: Frame, payload: Buffer) => {
      if (type === Frame.Stdout) process.stdout.write(payload);
      else if (type === Frame.Stderr) process.stderr.write(payload);
      else if (type === Frame.Declined) {
        accepted = false;
        finish(undefined);
      } else if (type === Frame.Exit) {
        tracePhase('cli: exit status received');
        const result = JSON.parse(payload.toString()) as { code?: number; error?: { code: string; message: string } };
        if (result.error) process.stderr.write(`lazyroot: ${result.error.message}\n`);
        finish(result.error ? (['INVALID_ARGUMENT', 'INVALID_REFERENCE'].includes(result.error.code) ? 2 : 1) : (result.code ?? 1));
      }
    };
    channel.on('data', onHead);
    channel.write(`${JSON.stringify(request)}\n`);
  });
}

/** The caller's stdin to the container, paced by the channel. */
function forwardStdin(channel: Socket): void {
  const stdin = process.stdin;
  stdin.on('data', (chunk: Buffer) => {
    if (!writeFrame(channel, Frame.Stdin, chunk)) {
      stdin.pause();
      channel.once('drain', () => stdin.resume());
    }
  });
  const end = () => {
    if (!channel.destroyed) writeFrame(channel, Frame.StdinEnd);
  };
  stdin.once('end', end);
  stdin.once('error', end);
}

interface RunArgs {
  store?: string;
  ref: string;
  args: string[];
  insecure: boolean;
  remoteIndex: boolean;
  deadlineMs?: number;
}

/** `[--store DIR] [-q] run --lazy [--insecure] [--no-remote-index] [--deadline-ms N] REF [-- CMD…]`, or undefined for anything else. */
export function parseRunArgs(args: readonly string[]): RunArgs | undefined {
  let i = 0;
  let store: string | undefined;
  for (; i < args.length && args[i] !== 'run'; i++) {
    const a = args[i]!;
    if (a === '--store' && i + 1 < args.length) store = args[++i];
    else if (a.startsWith('--store=')) store = a.slice('--store='.length);
    else if (a !== '-q' && a !== '--quiet') return undefined;
  }
  if (args[i++] !== 'run') return undefined;
  let lazy = false;
  let insecure = false;
  let remoteIndex = true;
  let deadline: string | undefined;
  for (; i < args.length && args[i]!.startsWith('-'); i++) {
    const a = args[i]!;
    if (a === '--lazy') lazy = true;
    else if (a === '--insecure') insecure = true;
    else if (a === '--no-remote-index') remoteIndex = false;
    else if (a === '--deadline-ms' && i + 1 < args.length) deadline = args[++i];
    else if (a.startsWith('--deadline-ms=')) deadline = a.slice('--deadline-ms='.length);
    else return undefined; // `--`, --help, flags the plain form does not take: the CLI decides
  }
  const ref = args[i++];
  if (!lazy || !ref || !store?.length && store !== undefined) return undefined;
  let deadlineMs: number | undefined;
  if (deadline !== undefined) {
    deadlineMs = Number(deadline);
    if (!/^\d+$/.test(deadline) || !(deadlineMs > 0)) return undefined; // the CLI says what is wrong
  }
  let rest = args.slice(i);
  if (rest[0] === '--') rest = rest.slice(1);
  else if (rest.some((a) => a.startsWith('-'))) return undefined;
  return { ...(store !== undefined ? { store } : {}), ref, args: rest, insecure, remoteIndex, ...(deadlineMs !== undefined ? { deadlineMs } : {}) };
}

interface MountArgs {
  store?: string;
  json: boolean;
  quiet: boolean;
  ref: string;
  dir: string;
  insecure: boolean;
  prefetch: boolean;
  remoteIndex: boolean;
  deadlineMs?: number;
}

/**
 * `lazyroot mount REF DIR` in its plain form, handed straight to the standby
 * as the library's background mount would hand it (the same request, the
 * same defaults as the CLI's), with the CLI's output. Undefined when no
 * standby took it: the full CLI then mounts (and starts a daemon).
 */
async function handMountOver(args: MountArgs): Promise<number | undefined> {
  const store = resolve(args.store ?? process.env.LAZYROOT_STORE ?? '/var/lib/lazyroot');
  let mountpoint: string;
  try {
    await mkdir(store, { recursive: true, mode: 0o711 });
    mountpoint = await canonicalMountpoint(args.dir);
  } catch {
    return undefined; // the CLI says what is wrong
  }
  const request: MountRequest = {
    store,
    ref: args.ref,
    mountpoint,
    options: {
      registry: args.insecure ? { insecure: true } : {},
      deadlineMs: args.deadlineMs ?? 30_000,
      cacheBytes: 64 << 20,
      prefetch: args.prefetch,
      prefetchDelayMs: 1000,
      ...(args.remoteIndex ? {} : { remoteIndex: false }),
    },
    env: { ...process.env },
    logFile: join(store, 'mount-daemon.log'),
  };
  const standby = standbyPid();
  let ready;
  try {
    ready = await claimStandby(request, 120_000);
  } catch (err) {
    const e = err as { code?: string; message: string };
    if (args.json) process.stdout.write(`${JSON.stringify({ error: { code: e.code ?? 'INTERNAL', message: e.message } })}\n`);
    process.stderr.write(`lazyroot: ${e.message}\n`);
    return e.code === 'INVALID_ARGUMENT' || e.code === 'INVALID_REFERENCE' ? 2 : 1;
  }
  if (!ready) return undefined;
  if (process.env.LAZYROOT_DEBUG) process.stderr.write(`lazyroot: mount handed to the warm standby (pid ${standby ?? '?'})\n`);
  const { pid, driver } = ready;
  if (args.json) process.stdout.write(`${JSON.stringify({ mountpoint, pid, driver })}\n`);
  else if (!args.quiet) {
    const how = driver === 'overlay' ? 'kernel overlayfs: every layer is in the store' : `lazy FUSE mount, daemon pid ${pid}`;
    process.stdout.write(`mounted ${args.ref} at ${mountpoint} (${how}; unmount with: lazyroot umount ${args.dir})\n`);
  }
  return 0;
}

/** `[--store DIR] [-q|--json] mount [--no-prefetch] [--insecure] [--no-remote-index] [--deadline-ms N] REF DIR`, or undefined for anything else. */
export function parseMountArgs(args: readonly string[]): MountArgs | undefined {
  let i = 0;
  let store: string | undefined;
  let json = false;
  let quiet = false;
  for (; i < args.length && args[i] !== 'mount'; i++) {
    const a = args[i]!;
    if (a === '--store' && i + 1 < args.length) store = args[++i];
    else if (a.startsWith('--store=')) store = a.slice('--store='.length);
    else if (a === '-q' || a === '--quiet') quiet = true;
    else if (a === '--json') json = true;
    else return undefined;
  }
  if (args[i++] !== 'mount') return undefined;
  let insecure = false;
  let prefetch = true;
  let remoteIndex = true;
  let deadline: string | undefined;
  const positional: string[] = [];
  for (; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith('-')) positional.push(a);
    else if (a === '--insecure') insecure = true;
    else if (a === '--no-prefetch') prefetch = false;
    else if (a === '--no-remote-index') remoteIndex = false;
    else if (a === '--deadline-ms' && i + 1 < args.length) deadline = args[++i];
    else if (a.startsWith('--deadline-ms=')) deadline = a.slice('--deadline-ms='.length);
    else return undefined; // --stats, --foreground, --help, other flags: the CLI
  }
  if (positional.length !== 2 || store === '') return undefined;
  let deadlineMs: number | undefined;
  if (deadline !== undefined) {
    deadlineMs = Number(deadline);
    if (!/^\d+$/.test(deadline) || !(deadlineMs > 0)) return undefined;
  }
  const [ref, dir] = positional as [string, string];
  return { ...(store !== undefined ? { store } : {}), json, quiet, ref, dir, insecure, prefetch, remoteIndex, ...(deadlineMs !== undefined ? { deadlineMs } : {}) };
}

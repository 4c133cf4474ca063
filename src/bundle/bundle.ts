import { spawn } from 'node:child_process';
import { tracePhase } from '../trace.js';
import { mkdir, readFile, rm, rmdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { LazyrootError } from '../errors.js';
import { writeFileAtomic } from '../store/atomic-file.js';
import type { RuntimeSpec } from './runtime-spec.js';
import { spawnRunc, type RuncProcess, type StdioChoice } from './runc-process.js';
import { pathExists } from '../store/path-exists.js';

export const configFileName = 'config.json';

/**
 * Writes `config.json` into the bundle directory (created if missing), atomically; `durable: false`
 * (a bundle `run` removes when the command ends) without the fsyncs that would only delay the start.
 */
export async function writeBundle(dir: string, spec: RuntimeSpec, options: { durable?: boolean } = {}): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, configFileName), `${JSON.stringify(spec, null, 2)}\n`, dir, options);
}

/** Streams to connect to the container; a missing one is /dev/null. */
export interface RunStdio {
  stdin?: Readable;
  stdout?: Writable;
  stderr?: Writable;
}

export interface RunBundleOptions {
  /** 'inherit' (the default) hands our own stdin/stdout/stderr to the container. */
  stdio?: 'inherit' | 'ignore' | RunStdio;
  /** Aborting kills the container; runBundle then rejects with an AbortError. */
  signal?: AbortSignal;
  /** runc's state directory (`runc --root`). Default: `runc-state` in the bundle dir, so runs never collide. */
  runcRoot?: string;
  /** The runc binary. Default: `runc` on PATH. */
  runc?: string;
}

/** runc's rule for container IDs. */
const validId = /^[\w+.-]+$/;

/** How long a killed container gets to exit before runc itself is killed. */
const killGraceMs = 2000;

/**
 * Runs the bundle in the foreground with `runc run` (no terminal) and resolves
 * to the container's exit code: its own status, or 128+N when signal N killed
 * it (runc reports that, and we do the same if runc itself is killed).
 * The container is always deleted afterwards, on success, failure or abort.
 * A failure of runc itself (bad config, missing executable) rejects with
 * runc's message instead of passing for an exit code.
 */
export async function runBundle(dir: string, id: string, options: RunBundleOptions = {}): Promise<number> {
  if (!validId.test(id)) throw new LazyrootError('INVALID_ARGUMENT', `run bundle ${dir}: invalid container id "${id}" (letters, digits, _ + - . only)`);
  const bundle = resolve(dir);
  const what = `run ${id} (bundle ${bundle})`;
  const { signal } = options;
  signal?.throwIfAborted();

  const runcRoot = resolve(options.runcRoot ?? join(bundle, 'runc-state'));
  const runc = options.runc ?? 'runc';
  // runc's errors (as opposed to the container's exit status) go to this log.
  const logPath = join(bundle, `runc-${id}.log`);
  await mkdir(runcRoot, { recursive: true, mode: 0o700 });
  await rm(logPath, { force: true });

  const stdio = options.stdio ?? 'inherit';
  tracePhase('runc: spawn');
  let child: RuncProcess;
  try {
    child = spawnRunc(runc, ['--root', runcRoot, '--log', logPath, '--log-format', 'json', 'run', '--bundle', bundle, id], stdioFor(stdio));
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw e.code === 'ENOENT'
      ? new LazyrootError('FAILED_PRECONDITION', `${what}: ${runc} not found (is runc installed?)`, { cause: err })
      : new LazyrootError('FAILED_PRECONDITION', `${what}: cannot start ${runc}: ${e.message}`, { cause: err });
  }
  tracePhase('runc: spawned');
  if (typeof stdio === 'object') connect(child, stdio);

  let aborted = false;
  const onAbort = () => {
    aborted = true;
    void killContainer(runc, runcRoot, id, child);
  };
  signal?.addEventListener('abort', onAbort, { once: true });

  try {
    const exitCode = await child.closed;
    if (aborted) throw abortError(what, signal?.reason);
    if (exitCode !== 0) {
      const runcError = await runcErrorIn(logPath);
      if (runcError) throw new LazyrootError('FAILED_PRECONDITION', `${what}: ${runcError}`);
    }
    return exitCode;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    // `runc run` removes its container when it returns; state left behind (runc killed, or failed
    // half-way) is deleted here. Not asked when there is none: that is another runc start, and a
    // fork of this process, on every run's way out (20-50 ms measured).
    if (await pathExists(join(runcRoot, id))) await runcQuiet(runc, ['--root', runcRoot, 'delete', '--force', id]);
    await rm(logPath, { force: true });
    if (options.runcRoot === undefined) await rmdir(runcRoot).catch(() => undefined); // only if empty
  }
}

function stdioFor(stdio: 'inherit' | 'ignore' | RunStdio): [StdioChoice, StdioChoice, StdioChoice] {
  if (typeof stdio === 'string') return [stdio, stdio, stdio];
  return [stdio.stdin ? 'pipe' : 'ignore', stdio.stdout ? 'pipe' : 'ignore', stdio.stderr ? 'pipe' : 'ignore'];
}

/** Copies between the caller's streams and runc's pipes, which the container writes to directly. */
function connect(child: RuncProcess, stdio: RunStdio): void {
  if (stdio.stdin && child.stdin) {
    child.stdin.on('error', () => undefined); // the container may exit without reading all of it
    stdio.stdin.pipe(child.stdin);
  }
  if (stdio.stdout && child.stdout) child.stdout.pipe(stdio.stdout, { end: false });
  if (stdio.stderr && child.stderr) child.stderr.pipe(stdio.stderr, { end: false });
}

/** SIGKILL the container; if runc has not returned soon after, kill runc itself (delete --force then cleans up). */
async function killContainer(runc: string, runcRoot: string, id: string, child: RuncProcess): Promise<void> {
  const timer = setTimeout(() => child.kill('SIGKILL'), killGraceMs).unref();
  void child.closed.finally(() => clearTimeout(timer));
  await runcQuiet(runc, ['--root', runcRoot, 'kill', id, 'KILL']);
}

/** Runs a runc housekeeping command, ignoring failure (e.g. a container that was never created). */
function runcQuiet(runc: string, args: string[]): Promise<void> {
  return new Promise((resolvePromise) => {
    const child = spawn(runc, args, { stdio: 'ignore' });
    child.once('error', () => resolvePromise());
    child.once('close', () => resolvePromise());
  });
}


/** The last error runc logged, if any: runc's own failure, not the container's exit status. */
async function runcErrorIn(logPath: string): Promise<string | undefined> {
  const text = await readFile(logPath, 'utf8').catch(() => '');
  let message: string | undefined;
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      const entry = JSON.parse(line) as { level?: string; msg?: string };
      if ((entry.level === 'error' || entry.level === 'fatal') && entry.msg) message = entry.msg;
    } catch {
      // not JSON: runc wrote something unexpected; the exit code still stands
    }
  }
  return message;
}

function abortError(what: string, reason: unknown): Error {
  const err = new Error(`${what}: aborted`, { cause: reason });
  err.name = 'AbortError';
  return err;
}

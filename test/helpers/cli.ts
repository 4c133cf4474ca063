/**
 * Runs the lazyroot CLI (`node bin/lazyroot.js …`) as a child process and
 * collects what it printed:
 *
 *   const r = await lazyroot(['--store', store, 'pull', ref]);
 *   assert.equal(r.code, 0, r.stderr);
 *
 * The promise carries the child's `pid` before it settles, for tests that
 * kill a command midway. Asynchronous on purpose: a test process that also
 * serves the registry or a fault proxy must keep its event loop free while
 * the CLI talks to it.
 */
import { spawn } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** bin/lazyroot.js, from dist/test/helpers/. */
export const lazyrootBin = resolve(dirname(fileURLToPath(import.meta.url)), '../../../bin/lazyroot.js');
/** bin/lazyroot: the `lazyroot` command, the native front end (native/front.c) that runs bin/lazyroot.js for all but a plain `run --lazy`. */
export const nativeFrontEnd = resolve(dirname(fileURLToPath(import.meta.url)), '../../../bin/lazyroot');

export interface CliRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  /** Working directory of the command (default: this process's). */
  cwd?: string;
}

export function lazyroot(args: string[], options: CliOptions = {}): Promise<CliRun> & { pid: number } {
  // No warm standby daemon outliving the test, unless a test asks for one (LAZYROOT_STANDBY set).
  const env = { LAZYROOT_STANDBY: '0', ...process.env };
  const child = spawn(process.execPath, [lazyrootBin, ...args], { cwd: options.cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const done = new Promise<CliRun>((resolvePromise, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolvePromise({ code, signal, stdout, stderr }));
  });
  return Object.assign(done, { pid: child.pid! });
}

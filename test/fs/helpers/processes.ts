/**
 * Child processes for tests that touch a mount this test process serves:
 * the serving process must never make a blocking call into its own mount
 * (its event loop answers the kernel), so synchronous syscalls such as the
 * native addon's lgetxattr run in a child, awaited asynchronously.
 */
import { spawn } from 'node:child_process';

export interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command to its end; never rejects on a non-zero exit (tests look at `code`). */
export function runCommand(command: string, args: string[], options: { timeoutMs?: number } = {}): Promise<Finished> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: options.timeoutMs ?? 20_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, ms: Date.now() - started }));
  });
}

/** Runs an ES module snippet in a child node; `args` arrive as process.argv.slice(1). Returns its stdout parsed as JSON. */
export async function runNodeJson<T>(source: string, args: string[]): Promise<T> {
  const done = await runCommand(process.execPath, ['--input-type=module', '-e', source, ...args]);
  if (done.code !== 0) throw new Error(`child node exited ${done.code}: ${done.stderr}`);
  return JSON.parse(done.stdout) as T;
}

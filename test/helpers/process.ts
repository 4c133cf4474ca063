/**
 * A long-lived child process that a test (or a benchmark) starts, waits for,
 * and stops by its PID:
 *
 *   const proc = spawnProcess('docker-registry', ['serve', configPath]);
 *   proc.child.stdout?.on('data', …);                       // attach readers now
 *   await proc.waitReady(() => answers(url), { describe: () => stderrTail });
 *   …
 *   await proc.stop();   // SIGTERM, SIGKILL after a grace period, then waits for the exit
 *
 * `waitReady` polls until the check is true; when the process exits first or
 * the timeout passes it stops the process and rejects, with what `describe`
 * adds (a log tail). Only the PIDs started here are ever signalled, also by
 * the last-resort cleanup when the test process exits without calling stop().
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';

export interface SpawnOptions {
  /** Default: stdin ignored, stdout and stderr piped. */
  stdio?: StdioOptions;
  /** Names the process in messages (default: the command). */
  name?: string;
  /** How long `stop()` waits after SIGTERM before SIGKILL (default 5000 ms). */
  graceMs?: number;
  /** Default: this process's environment. */
  env?: NodeJS.ProcessEnv;
}

export interface ReadyOptions {
  /** Default 10 000 ms. */
  timeoutMs?: number;
  /** Between two checks (default 10 ms). */
  intervalMs?: number;
  /** Added to the error when the process never gets ready, e.g. the tail of its log. */
  describe?: () => string | Promise<string>;
}

export interface ManagedProcess {
  child: ChildProcess;
  pid: number;
  /** How it ended (exit code, signal, or spawn error), or undefined while it runs. */
  exitStatus(): string | undefined;
  /** Resolves when the process has ended. */
  exited: Promise<void>;
  waitReady(check: () => boolean | Promise<boolean>, options?: ReadyOptions): Promise<void>;
  /** SIGTERM, SIGKILL after the grace period, then waits for the exit. Does nothing once it has ended. */
  stop(): Promise<void>;
}

// Last-resort cleanup if a test process dies without calling stop(): only our PIDs.
const livePids = new Set<number>();
process.on('exit', () => {
  for (const pid of livePids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

export function spawnProcess(command: string, args: string[], options: SpawnOptions = {}): ManagedProcess {
  const name = options.name ?? command;
  const graceMs = options.graceMs ?? 5000;
  const child = spawn(command, args, { stdio: options.stdio ?? ['ignore', 'pipe', 'pipe'], ...(options.env ? { env: options.env } : {}) });
  let status: string | undefined;
  const exited = new Promise<void>((resolve) => {
    child.on('exit', (code, signal) => {
      status = String(code ?? signal);
      if (child.pid !== undefined) livePids.delete(child.pid);
      resolve();
    });
    child.on('error', (err) => {
      // A process that could not be spawned never emits 'exit'.
      if (child.pid !== undefined) return;
      status = err.message;
      resolve();
    });
  });
  if (child.pid !== undefined) livePids.add(child.pid);

  const stop = async (): Promise<void> => {
    if (status !== undefined) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  };

  const waitReady = async (check: () => boolean | Promise<boolean>, ready: ReadyOptions = {}): Promise<void> => {
    const timeoutMs = ready.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let problem: string | undefined;
      if (status !== undefined) problem = `${name} exited (${status}) before it was ready`;
      else if (await check()) return;
      else if (Date.now() > deadline) problem = `${name} was not ready within ${timeoutMs / 1000} s`;
      if (problem !== undefined) {
        const detail = (await ready.describe?.()) ?? '';
        await stop();
        throw new Error(detail ? `${problem}:\n${detail}` : problem);
      }
      await new Promise((r) => setTimeout(r, ready.intervalMs ?? 10));
    }
  };

  return { child, pid: child.pid ?? -1, exitStatus: () => status, exited, waitReady, stop };
}

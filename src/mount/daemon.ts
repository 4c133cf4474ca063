import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { LazyrootError } from '../errors.js';

/**
 * Starts `argv` (a `lazyroot mount --foreground …` command line) detached,
 * with one extra pipe (fd 3) on which the child writes a single line once its
 * mount is ready: `ready` or `error <json>`. Resolves with the daemon's pid
 * when it is ready; the daemon outlives this process.
 */
export async function startDaemon(argv: string[], options: { readyTimeoutMs?: number; logFile?: string } = {}): Promise<number> {
  const log = options.logFile ? createWriteStream(options.logFile, { flags: 'a' }) : undefined;
  if (log) await new Promise((r) => log.once('open', r));
  const child = spawn(argv[0]!, argv.slice(1), {
    detached: true,
    stdio: ['ignore', log ?? 'ignore', log ?? 'ignore', 'pipe'],
  });
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  const timeoutMs = options.readyTimeoutMs ?? 120_000;
  try {
    const line = await new Promise<string>((resolve, reject) => {
      let text = '';
      const timer = setTimeout(() => reject(new LazyrootError('UNAVAILABLE', `mount daemon not ready after ${timeoutMs / 1000} s`)), timeoutMs);
      pipe.on('data', (chunk: Buffer) => {
        text += chunk.toString();
        const nl = text.indexOf('\n');
        if (nl >= 0) {
          clearTimeout(timer);
          resolve(text.slice(0, nl));
        }
      });
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new LazyrootError('UNAVAILABLE', `mount daemon exited (${signal ?? `code ${code}`}) before it was ready${options.logFile ? `; see ${options.logFile}` : ''}`));
      });
    });
    if (line.startsWith('error ')) {
      const { code, message } = JSON.parse(line.slice(6)) as { code: string; message: string };
      throw new LazyrootError((code as LazyrootError['code']) ?? 'UNAVAILABLE', message);
    }
    if (line !== 'ready') throw new LazyrootError('UNAVAILABLE', `mount daemon said ${JSON.stringify(line)}`);
    return child.pid!;
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  } finally {
    (pipe as unknown as { destroy(): void }).destroy();
    child.unref();
    log?.end();
  }
}

/** In the daemon: tell the parent (fd 3) how the mount went, then let go of the pipe. */
export function signalReady(fd: number | undefined, error?: { code: string; message: string }): void {
  if (fd === undefined) return;
  const stream = createWriteStream('', { fd, autoClose: true });
  stream.end(error ? `error ${JSON.stringify(error)}\n` : 'ready\n');
}

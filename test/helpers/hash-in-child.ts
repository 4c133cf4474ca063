import { spawn } from 'node:child_process';

/**
 * sha256sum of `path` in a child process: the test process serves the
 * registry (or the proxy) the mount fetches through, so its event loop must
 * stay free while the read waits. The hash, or the error sha256sum printed.
 */
export function hashInChild(path: string): Promise<{ hash?: string; error?: string }> {
  const child = spawn('sha256sum', [path], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve(code === 0 ? { hash: stdout.split(' ')[0]! } : { error: stderr.trim() })));
}

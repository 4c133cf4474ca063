/** Small helpers for running commands and finding mounts, shared by the benchmarks. */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Runs a command and returns its stdout; fails with its stderr. */
export async function capture(argv: string[], what = argv.join(' '), env?: NodeJS.ProcessEnv): Promise<string> {
  try {
    const { stdout } = await run(argv[0]!, argv.slice(1), { maxBuffer: 64 << 20, ...(env ? { env } : {}) });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`${what}: ${e.stderr?.trim().slice(-2000) || e.message}`);
  }
}

/** Mount points at or under `dir`, deepest first (from /proc/self/mountinfo, octal escapes decoded). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const points = text
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => !!p)
    .map((p) => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p === dir || p.startsWith(`${dir}/`));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

/**
 * Unmounts everything at or under `dir`, deepest first (`umount`, then a lazy
 * `umount -l` for what is busy or whose FUSE daemon is gone); fails naming
 * what stayed mounted, so that no caller removes a tree through a mount.
 */
export async function unmountAllUnder(dir: string): Promise<void> {
  for (const point of await mountsUnder(dir)) await capture(['umount', point]).catch(() => capture(['umount', '-l', point]).catch(() => undefined));
  const left = await mountsUnder(dir);
  if (left.length) throw new Error(`bench: could not unmount ${left.join(', ')}`);
}

/** CPU time (user + system, all threads) a live process has used so far, from /proc/PID/stat. */
export async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name in parentheses (which may hold spaces): state is field 3, utime 14, stime 15.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[14 - 3]) + Number(rest[15 - 3])) / (await clockTicks());
}

let ticks: number | undefined;
async function clockTicks(): Promise<number> {
  if (ticks === undefined) {
    const n = Number((await capture(['getconf', 'CLK_TCK']).catch(() => '100')).trim());
    ticks = Number.isFinite(n) && n > 0 ? n : 100;
  }
  return ticks;
}

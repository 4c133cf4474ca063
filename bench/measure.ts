import { spawn } from 'node:child_process';

export interface Measurement {
  seconds: number;
  /** Peak resident memory of the process, from GNU time when available. */
  maxRssMiB?: number;
}

/** Runs a command to completion and times it; fails loudly on a non-zero exit. */
export async function timeCommand(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<Measurement> {
  const useGnuTime = await hasGnuTime();
  const full = useGnuTime ? ['/usr/bin/time', '-f', '%M', ...argv] : argv;
  const started = process.hrtime.bigint();
  const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const child = spawn(full[0]!, full.slice(1), { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('error', reject);
    child.on('close', (c) => resolve({ code: c, stderr: err }));
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (code !== 0) throw new Error(`${argv.join(' ')} exited ${code}: ${stderr.slice(-2000)}`);
  const m: Measurement = { seconds };
  if (useGnuTime) {
    const kib = Number(stderr.trim().split('\n').at(-1));
    if (Number.isFinite(kib)) m.maxRssMiB = kib / 1024;
  }
  return m;
}

let gnuTime: boolean | undefined;
async function hasGnuTime(): Promise<boolean> {
  if (gnuTime === undefined) {
    gnuTime = await new Promise<boolean>((resolve) => {
      const c = spawn('/usr/bin/time', ['-f', '%M', 'true'], { stdio: 'ignore' });
      c.on('error', () => resolve(false));
      c.on('close', (code) => resolve(code === 0));
    });
  }
  return gnuTime;
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Drops the kernel's page cache so a run reads from disk, as a cold run would. */
export async function dropCaches(): Promise<void> {
  await new Promise<void>((resolve) => {
    const c = spawn('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches'], { stdio: 'ignore' });
    c.on('error', () => resolve());
    c.on('close', () => resolve());
  });
}

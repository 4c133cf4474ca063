import { spawn } from 'node:child_process';

export interface Measurement {
  seconds: number;
  /** Peak resident memory of the process, from GNU time when available. */
  maxRssMiB?: number;
  /**
   * With `expectStdout` (or `outputDone`): when the whole expected output had arrived. For a
   * command run in a container, whose stdout is flushed as it exits, that is
   * when it finished, before any teardown the tool does afterwards.
   */
  outputSeconds?: number;
}

export interface TimeOptions {
  env?: NodeJS.ProcessEnv;
  /** The command's whole stdout must be exactly this (else it fails, as a non-zero exit does). */
  expectStdout?: string;
  /**
   * Instead of `expectStdout`, for output known only by its shape: true once
   * the stdout so far is complete (that moment is `outputSeconds`); `check`
   * then judges the whole stdout (an error message, or undefined when right).
   */
  outputDone?: { done: (stdout: string) => boolean; check: (stdout: string) => string | undefined };
  /** Called the moment the expected output has arrived (to count what was fetched by then). */
  onOutput?: () => void;
}

/** Runs a command to completion and times it; fails loudly on a non-zero exit (or unexpected output). */
export async function timeCommand(argv: string[], options: TimeOptions = {}): Promise<Measurement> {
  const env = options.env ?? process.env;
  const expected = options.expectStdout;
  const done = options.outputDone?.done ?? ((out: string) => out.length >= expected!.length);
  const check = expected !== undefined || options.outputDone !== undefined;
  const useGnuTime = await hasGnuTime();
  const full = useGnuTime ? ['/usr/bin/time', '-f', '%M', ...argv] : argv;
  const started = process.hrtime.bigint();
  let outputAt: bigint | undefined;
  const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const child = spawn(full[0]!, full.slice(1), { env, stdio: ['ignore', check ? 'pipe' : 'ignore', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
      if (outputAt === undefined && done(out)) {
        outputAt = process.hrtime.bigint();
        options.onOutput?.();
      }
    });
    child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    child.on('error', reject);
    child.on('close', (c) => resolve({ code: c, stdout: out, stderr: err }));
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (code !== 0) throw new Error(`${argv.join(' ')} exited ${code}: ${stderr.slice(-2000)}`);
  if (expected !== undefined && stdout !== expected) {
    throw new Error(`${argv.join(' ')} printed ${JSON.stringify(stdout.slice(0, 500))}, expected ${JSON.stringify(expected)}; stderr: ${stderr.slice(-2000)}`);
  }
  const wrong = options.outputDone && (outputAt === undefined ? 'its output never looked complete' : options.outputDone.check(stdout));
  if (wrong) throw new Error(`${argv.join(' ')}: ${wrong}; it printed ${JSON.stringify(stdout.slice(0, 500))}; stderr: ${stderr.slice(-2000)}`);
  const m: Measurement = { seconds };
  if (check && outputAt !== undefined) m.outputSeconds = Number(outputAt - started) / 1e9;
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

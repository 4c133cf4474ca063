import { appendFileSync, readFileSync } from 'node:fs';

/**
 * `LAZYROOT_TRACE=FILE`: where the time of a mount or `run --lazy` goes. Each
 * process that serves one (the CLI, a mount daemon, a standby that took a
 * run) appends `epoch-ms pid phase` lines to FILE when it ends; registry
 * requests are among the phases. Read when called, not at load: a standby
 * takes its caller's environment with the request.
 */
const lines: string[] = [];
let flushAtExit = false;

/** Whether phases are traced: for callers whose phase text costs something to build. */
export function tracing(): boolean {
  return Boolean(process.env.LAZYROOT_TRACE);
}

export function tracePhase(name: string): void {
  const file = process.env.LAZYROOT_TRACE;
  if (!file) return;
  lines.push(`${(performance.timeOrigin + performance.now()).toFixed(1)} ${process.pid} ${name}`);
  if (flushAtExit) return;
  flushAtExit = true;
  process.on('exit', () => {
    try {
      appendFileSync(file, `${lines.join('\n')}\n`);
    } catch {
      // a trace that cannot be written costs nothing else
    }
  });
}

/**
 * Milliseconds of CPU the calling thread has run (Linux's
 * /proc/thread-self/schedstat, in nanoseconds), for phases whose own work is
 * on the main thread: process.cpuUsage() also counts V8's compiler and GC
 * threads and libuv's pool, which at a first mount after a warm-up ran as
 * much again beside the phase. Undefined where the file is missing.
 */
export function threadCpuMillis(): number | undefined {
  try {
    return Number(readFileSync('/proc/thread-self/schedstat', 'latin1').split(' ', 1)[0]) / 1e6;
  } catch {
    return undefined;
  }
}

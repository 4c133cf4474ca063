import { appendFileSync } from 'node:fs';

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

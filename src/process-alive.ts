/**
 * Is a process with this PID alive? Signal 0 checks without signalling;
 * EPERM means alive but not ours. Only positive PIDs: 0 and negative numbers
 * name process groups, never one process.
 */
export function processAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

import { readdir, readFile, stat } from 'node:fs/promises';

export interface RootfsUser {
  pid: number;
  /** The process's command name (/proc/PID/comm). */
  name: string;
}

/**
 * Processes whose root directory or working directory is the directory at
 * `path`: a container running on a rootfs has it as its root. Compared by
 * device and inode, not by path: a container's /proc/PID/root reads "/" from
 * outside its mount namespace, but it is the same inode.
 */
export async function processesRootedAt(path: string): Promise<RootfsUser[]> {
  const target = await stat(path).catch(() => undefined);
  if (!target) return [];
  const users: RootfsUser[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    for (const which of ['root', 'cwd']) {
      const seen = await stat(`/proc/${pid}/${which}`).catch(() => undefined); // gone, or not ours to see
      if (seen && seen.dev === target.dev && seen.ino === target.ino) {
        const name = (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '?')).trim();
        users.push({ pid, name });
        break;
      }
    }
  }
  return users;
}

import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Bytes a tree occupies on disk (allocated blocks, as `du -x` counts them),
 * each hardlinked inode once, never descending into another filesystem (a
 * rootfs's mounted merged view would be counted twice, and a lazy mount would
 * be fetched). `seen` lets several trees share one count.
 */
export async function diskUsage(root: string, seen: Set<string> = new Set()): Promise<number> {
  let total = 0;
  let device: number | undefined;
  const walk = async (path: string): Promise<void> => {
    let stat;
    try {
      stat = await lstat(path);
    } catch {
      return; // removed while we looked
    }
    device ??= stat.dev;
    if (stat.dev !== device) return;
    const key = `${stat.dev}:${stat.ino}`;
    if (!seen.has(key)) {
      seen.add(key);
      total += stat.blocks * 512;
    }
    if (stat.isDirectory()) {
      const names = await readdir(path).catch(() => [] as string[]);
      for (const name of names) await walk(join(path, name));
    }
  };
  await walk(root);
  return total;
}

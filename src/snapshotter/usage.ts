import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/** Disk bytes (allocated blocks) and inodes of a snapshot's dir, each inode once, never crossing into another filesystem. */
export async function dirUsage(root: string): Promise<{ size: number; inodes: number }> {
  const seen = new Set<number>();
  let size = 0;
  let device: number | undefined;
  const walk = async (path: string): Promise<void> => {
    const st = await lstat(path).catch(() => undefined);
    if (!st) return;
    device ??= st.dev;
    if (st.dev !== device || seen.has(st.ino)) return;
    seen.add(st.ino);
    size += st.blocks * 512;
    if (st.isDirectory()) for (const name of await readdir(path).catch(() => [] as string[])) await walk(join(path, name));
  };
  await walk(root);
  return { size, inodes: seen.size };
}

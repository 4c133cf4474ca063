import { access } from 'node:fs/promises';

/** Whether something is at `path` (any error, ENOENT or another, counts as no). */
export function pathExists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

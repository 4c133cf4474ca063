import { readdirSync, readlinkSync } from 'node:fs';
import { native } from '../native.js';

/**
 * The descriptors of /dev/fuse this process holds.
 *
 * libfuse 2 opens /dev/fuse without O_CLOEXEC, so every process spawned after
 * a mount (the warm standby, fuse-native's own `fusermount -u`, anything a
 * library user starts) would inherit the connection. The kernel aborts a FUSE
 * connection only when its last descriptor closes: an inherited copy keeps a
 * killed daemon's mount hanging instead of failing with ENOTCONN.
 */
export function fuseDescriptors(pid: number | 'self' = 'self'): number[] {
  const dir = `/proc/${pid}/fd`;
  const fds: number[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return fds; // the process is gone, or not ours to read
  }
  for (const name of names) {
    try {
      if (readlinkSync(`${dir}/${name}`) === '/dev/fuse') fds.push(Number(name));
    } catch {
      // closed while we looked
    }
  }
  return fds;
}

/** Marks every /dev/fuse descriptor of this process close-on-exec: only this process serves its mounts. */
export function keepFuseDescriptorsPrivate(): void {
  for (const fd of fuseDescriptors()) native().closeOnExec(fd);
}

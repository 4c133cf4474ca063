import { readFile } from 'node:fs/promises';
import { buildTar, dir, file, symlink, type TarEntry } from './tar-builder.js';
import type { ImageSpec } from './image-builder.js';

/** Applets the sample image links to busybox. */
const applets = ['sh', 'ls', 'cat', 'echo', 'true', 'false', 'id', 'env', 'head', 'wc', 'sha256sum', 'uname', 'sleep', 'stat', 'find'];

/**
 * A small, real, runnable image: Debian's static busybox with its common
 * applets (layer 1), users and a greeting (layer 2). About 1 MiB gzip.
 * Needs the busybox-static package (scripts/bootstrap installs it).
 */
export async function busyboxImageSpec(refName = 'latest'): Promise<ImageSpec> {
  const busybox = await readFile('/bin/busybox');
  const base: TarEntry[] = [
    dir('bin'),
    file('bin/busybox', busybox, { mode: 0o755 }),
    ...applets.map((a) => symlink(`bin/${a}`, 'busybox')),
    dir('etc'),
    dir('tmp', { mode: 0o1777 }),
    dir('root', { mode: 0o700 }),
  ];
  const app: TarEntry[] = [
    dir('etc'),
    file('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n'),
    file('etc/group', 'root:x:0:\nnogroup:x:65534:\napp:x:1000:\n'),
    dir('home'),
    dir('home/app', { uid: 1000, gid: 1000 }),
    file('etc/motd', 'hello from a lazyroot sample image\n'),
  ];
  return {
    layers: [
      { tar: await buildTar(base), compression: 'gzip' },
      { tar: await buildTar(app), compression: 'gzip' },
    ],
    config: {
      config: {
        Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
        Cmd: ['/bin/cat', '/etc/motd'],
        WorkingDir: '/',
      },
    },
    refName,
  };
}

/**
 * A merged entry list with one of everything a container rootfs holds, and
 * an in-memory reader serving its files, for mounting in tests:
 *
 *   const { entries, reader } = fixtureTree();
 *   const mounted = await mountTree(buildTree(entries), dir, reader, { timeoutMs: 800 });
 *
 * Two files misbehave on purpose: `data/unavailable` rejects with an
 * UNAVAILABLE LazyrootError, `data/hang` never answers.
 */
import { LazyrootError } from '../../../src/errors.js';
import type { FileReader } from '../../../src/fs/lazy-fs.js';
import type { TreeEntry } from '../../../src/fs/tree.js';

export const bigFileSize = 20 * 1024 * 1024;
const epoch = 1_700_000_000;

/** A vfs_cap_data v2 value granting cap_net_raw (effective + permitted): binary, with NUL bytes. */
export const netRawCapability = Buffer.from([
  0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
]);

export interface Fixture {
  entries: TreeEntry[];
  /** Contents by the path of the real file entry (a hardlink reads its target's). */
  contents: Map<string, Buffer>;
  reader: FileReader;
}

export function fixtureTree(): Fixture {
  const contents = new Map<string, Buffer>();
  const entries: TreeEntry[] = [];
  const base = { uid: 0, gid: 0, size: 0, mtime: epoch, layer: 0 };
  const add = (e: Partial<TreeEntry> & Pick<TreeEntry, 'path' | 'type' | 'mode'>): void => {
    entries.push({ ...base, ...e });
  };
  const file = (path: string, content: Buffer | string, extra: Partial<TreeEntry> = {}): void => {
    const bytes = Buffer.from(content);
    contents.set(path, bytes);
    add({ path, type: 'file', mode: 0o644, size: bytes.length, ...extra });
  };

  add({ path: '', type: 'dir', mode: 0o755 });
  add({ path: 'etc', type: 'dir', mode: 0o755 });
  file('etc/hosts', '127.0.0.1 localhost\n');
  file('etc/shadow', 'root:*:19000:0:99999:7:::\n', { mode: 0o600 });
  add({ path: 'etc/localtime', type: 'symlink', mode: 0o777, linkname: '/usr/share/zoneinfo/UTC' });
  add({ path: 'bin', type: 'dir', mode: 0o755 });
  file('bin/busybox', '#!busybox\n'.repeat(100), { mode: 0o755, mtime: epoch, mtimeNsec: 250_000_001 });
  file('etc/old', 'before 1970\n', { mtime: -86_401, mtimeNsec: 500_000_000 });
  add({ path: 'bin/sh', type: 'hardlink', mode: 0o755, linkname: 'bin/busybox' });
  file('bin/ping', 'ping\n', {
    mode: 0o755,
    xattrs: { 'security.capability': netRawCapability.toString('base64'), 'user.comment': Buffer.from('pings').toString('base64') },
  });
  add({ path: 'lib', type: 'symlink', mode: 0o777, linkname: 'usr/lib' });
  // usr/ and usr/bin/ are left out: the tree makes them as implicit parents.
  file('usr/bin/su', 'su\n', { mode: 0o4755 });
  add({ path: 'home', type: 'dir', mode: 0o755 });
  add({ path: 'home/user', type: 'dir', mode: 0o750, uid: 1000, gid: 1000 });
  file('home/user/notes.txt', 'mine\n', { mode: 0o640, uid: 1000, gid: 1000 });
  add({ path: 'dev', type: 'dir', mode: 0o755 });
  add({ path: 'dev/null', type: 'char', mode: 0o666, devmajor: 1, devminor: 3 });
  add({ path: 'dev/sda', type: 'block', mode: 0o660, gid: 6, devmajor: 8, devminor: 0 });
  add({ path: 'dev/wide', type: 'char', mode: 0o600, devmajor: 259, devminor: 70000 }); // both past 8 bits
  add({ path: 'run', type: 'dir', mode: 0o755 });
  add({ path: 'run/initctl', type: 'fifo', mode: 0o600 });
  add({ path: 'tmp', type: 'dir', mode: 0o1777 });
  add({ path: 'data', type: 'dir', mode: 0o755 });
  file('data/big.bin', pseudoRandom(bigFileSize, 42));
  file('data/empty', '');
  file('data/unavailable', Buffer.alloc(64 * 1024, 1));
  file('data/hang', Buffer.alloc(4096, 2));

  const reader: FileReader = {
    read(node, position, length) {
      const path = node.entry!.path;
      if (path === 'data/unavailable') {
        return Promise.reject(new LazyrootError('UNAVAILABLE', `layer sha256:ab12…: range of ${path} not fetched`));
      }
      if (path === 'data/hang') return new Promise<Buffer>(() => {});
      return Promise.resolve(contents.get(path)!.subarray(position, position + length));
    },
  };
  return { entries, contents, reader };
}

/** Deterministic bytes (xorshift32): the same seed always gives the same file. */
export function pseudoRandom(size: number, seed: number): Buffer {
  const words = new Uint32Array(Math.ceil(size / 4));
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  return Buffer.from(words.buffer, 0, size);
}

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  appendFile,
  chmod,
  chown,
  link,
  lstat,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  rmdir,
  symlink,
  truncate,
  unlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';
import { join } from 'node:path';
import { isLazyrootError } from '../../src/errors.js';
import { devMajor, devMinor } from '../../src/native.js';
import { mountTree, openMount, type MountedTree } from '../../src/fs/lazy-fs.js';
import { fuseMountsAt } from '../../src/fs/stale-mount.js';
import { buildTree, fileTypeBits, type FsTree } from '../../src/fs/tree.js';
import { bigFileSize, fixtureTree, netRawCapability, pseudoRandom, type Fixture } from './helpers/fixture-tree.js';
import { runCommand, runNodeJson } from './helpers/processes.js';
import { requireOrSkip } from '../helpers/requirements.js';

const needs = { root: true, fuse: true };
const timeoutMs = 800;
const nativeModule = new URL('../../src/native.js', import.meta.url).href;

interface Mounted {
  mnt: string;
  tree: FsTree;
  fixture: Fixture;
  mounted: MountedTree;
  logs: string[];
}

/** Mounts the fixture under a fresh 0755 temp dir (other users must reach it); unmounts after the test, even on failure. */
async function mountFixture(t: TestContext): Promise<Mounted> {
  const work = await mkdtemp(join(tmpdir(), 'lazyroot-fs-'));
  await chmod(work, 0o755);
  const mnt = join(work, 'mnt');
  await mkdir(mnt);
  const fixture = fixtureTree();
  const tree = buildTree(fixture.entries);
  const logs: string[] = [];
  let mounted: MountedTree | undefined;
  t.after(async () => {
    await mounted?.unmount();
    // Never recurse into a mount that is still there.
    if ((await fuseMountsAt(mnt)).length === 0) await rm(work, { recursive: true, force: true });
  });
  mounted = await mountTree(tree, mnt, fixture.reader, { timeoutMs, logger: (message) => logs.push(message) });
  return { mnt, tree, fixture, mounted, logs };
}

test('a mounted tree shows its entries to real syscalls', async (t) => {
  if (!requireOrSkip(t, needs)) return;
  const { mnt, tree, fixture, mounted } = await mountFixture(t);
  const at = (path: string) => join(mnt, path);

  await t.test('lstat: type, mode, owner, size, nlink, mtime, device numbers, our inode numbers', async () => {
    for (const e of fixture.entries) {
      const node = tree.lookup(e.path)!;
      const st = await lstat(at(e.path));
      const what = e.path || '/';
      assert.equal(st.ino, node.ino, `${what}: st_ino is ours (use_ino)`);
      assert.equal(st.mode, fileTypeBits[node.type] | node.mode, `${what}: mode`);
      assert.equal(st.uid, node.uid, `${what}: uid`);
      assert.equal(st.gid, node.gid, `${what}: gid`);
      assert.equal(st.size, node.size, `${what}: size`);
      assert.equal(st.nlink, node.nlink, `${what}: nlink`);
      const ns = (await lstat(at(e.path), { bigint: true })).mtimeNs;
      assert.equal(ns, BigInt(node.mtime) * 1_000_000_000n + BigInt(node.mtimeNsec), `${what}: mtime with nanoseconds`);
      if (e.type === 'char' || e.type === 'block') {
        assert.deepEqual([devMajor(st.rdev), devMinor(st.rdev)], [e.devmajor, e.devminor], `${what}: rdev`);
      }
    }
    const [busybox, sh] = await Promise.all([lstat(at('bin/busybox')), lstat(at('bin/sh'))]);
    assert.equal(sh.ino, busybox.ino, 'a hardlink pair shares st_ino');
    assert.equal(sh.nlink, 2);
    assert.equal((await lstat(at('bin/busybox'), { bigint: true })).mtimeNs % 1_000_000_000n, 250_000_001n, 'nanoseconds reach the kernel');
    assert.equal((await lstat(at('etc/old'), { bigint: true })).mtimeNs, -86_400_500_000_000n, 'so do times before 1970');
    assert.equal(busybox.ino, sh.ino);
    assert.ok((await lstat(at('usr/bin/su'))).mode & 0o4000, 'setuid bit');
    assert.equal((await lstat(at('home/user/notes.txt'))).uid, 1000);
    assert.ok((await lstat(at('run/initctl'))).isFIFO());
    assert.ok((await lstat(at('dev/sda'))).isBlockDevice());
    assert.ok((await lstat(at('dev/null'))).isCharacterDevice());
    assert.equal((await lstat(at('tmp'))).mode & 0o7777, 0o1777, 'sticky bit');
    assert.equal((await lstat(at('usr'))).mode & 0o7777, 0o755, 'implicit parent');
    assert.equal((await lstat(mnt)).nlink, 2 + 8, 'root: 2 + its subdirectories');
    await assert.rejects(lstat(at('etc/nope')), { code: 'ENOENT' });
  });

  await t.test('readdir lists each directory with entry types', async () => {
    for (const e of fixture.entries.filter((x) => x.type === 'dir')) {
      const node = tree.lookup(e.path)!;
      const listed = await readdir(at(e.path), { withFileTypes: true });
      assert.deepEqual(listed.map((d) => d.name).sort(), [...node.children!.keys()].sort(), e.path || '/');
      for (const d of listed) {
        const child = node.children!.get(d.name)!;
        const type = d.isFile() ? 'file' : d.isDirectory() ? 'dir' : d.isSymbolicLink() ? 'symlink' : d.isCharacterDevice() ? 'char' : d.isBlockDevice() ? 'block' : d.isFIFO() ? 'fifo' : '?';
        assert.equal(type, child.type, `${e.path}/${d.name}: d_type`);
      }
    }
  });

  await t.test('readlink gives targets as written', async () => {
    assert.equal(await readlink(at('etc/localtime')), '/usr/share/zoneinfo/UTC');
    assert.equal(await readlink(at('lib')), 'usr/lib');
  });

  await t.test('file bytes: whole files, and random ranges of a 20 MiB file', async () => {
    for (const [path, bytes] of fixture.contents) {
      if (path.startsWith('data/')) continue;
      assert.deepEqual(await readFile(at(path)), bytes, path);
    }
    assert.deepEqual(await readFile(at('bin/sh')), fixture.contents.get('bin/busybox'), 'through the hardlink');
    assert.equal((await readFile(at('data/empty'))).length, 0);

    const big = fixture.contents.get('data/big.bin')!;
    const digest = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    assert.equal(digest(await readFile(at('data/big.bin'))), digest(big), 'whole 20 MiB file');

    const handle = await open(at('data/big.bin'));
    try {
      const offsets = pseudoRandom(64 * 8, 7);
      for (let i = 0; i < 64; i++) {
        const position = offsets.readUInt32LE(i * 8) % bigFileSize;
        const length = 1 + (offsets.readUInt32LE(i * 8 + 4) % (256 * 1024));
        const buf = Buffer.alloc(length);
        const { bytesRead } = await handle.read(buf, 0, length, position);
        const want = big.subarray(position, position + length);
        assert.equal(bytesRead, want.length, `read ${length} at ${position}`);
        assert.ok(buf.subarray(0, bytesRead).equals(want), `bytes at ${position}`);
      }
      const tail = Buffer.alloc(100);
      assert.equal((await handle.read(tail, 0, 100, bigFileSize - 10)).bytesRead, 10, 'a read across the end is short');
    } finally {
      await handle.close();
    }
    const stats = mounted.stats();
    assert.ok(stats.reads > 0 && stats.bytesServed >= bigFileSize, JSON.stringify(stats));
  });

  await t.test('xattrs through the native addon: names, values, binary security.capability', async () => {
    type Xattrs = { names: string[]; values: Record<string, string>; absent: boolean };
    const dump = (path: string) =>
      runNodeJson<Xattrs>(
        `const { native } = await import(${JSON.stringify(nativeModule)});
         const [path] = process.argv.slice(1);
         const n = native();
         const names = n.llistxattr(path).sort();
         const values = Object.fromEntries(names.map((k) => [k, n.lgetxattr(path, k).toString('base64')]));
         console.log(JSON.stringify({ names, values, absent: n.lgetxattr(path, 'user.none') === undefined }));`,
        [path],
      );
    const ping = await dump(at('bin/ping'));
    assert.deepEqual(ping.names, ['security.capability', 'user.comment']);
    assert.deepEqual(Buffer.from(ping.values['security.capability']!, 'base64'), netRawCapability);
    assert.equal(Buffer.from(ping.values['user.comment']!, 'base64').toString(), 'pings');
    assert.ok(ping.absent, 'a missing attribute is ENODATA');
    assert.deepEqual((await dump(at('etc/hosts'))).names, []);
    assert.deepEqual((await dump(at('etc/localtime'))).names, [], 'on the symlink itself');
  });

  await t.test('xattr buffers: size probes give the exact size, too-small buffers ERANGE', async (st) => {
    if (!requireOrSkip(st, { tools: ['python3'] })) return;
    const probe = `
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.lgetxattr.restype = libc.llistxattr.restype = ctypes.c_ssize_t
path, name = sys.argv[1].encode(), b'security.capability'
out = {}
size = out['getProbe'] = libc.lgetxattr(path, name, None, 0)
buf = ctypes.create_string_buffer(size)
out['getSmall'] = libc.lgetxattr(path, name, buf, size - 1); out['getSmallErrno'] = ctypes.get_errno()
out['getExact'] = libc.lgetxattr(path, name, buf, size); out['value'] = buf.raw[:size].hex()
size = out['listProbe'] = libc.llistxattr(path, None, 0)
buf = ctypes.create_string_buffer(size)
out['listSmall'] = libc.llistxattr(path, buf, size - 1); out['listSmallErrno'] = ctypes.get_errno()
out['listExact'] = libc.llistxattr(path, buf, size); out['list'] = buf.raw[:size].decode()
print(json.dumps(out))`;
    const done = await runCommand('python3', ['-c', probe, at('bin/ping')]);
    assert.equal(done.code, 0, done.stderr);
    const out = JSON.parse(done.stdout) as Record<string, number | string>;
    const ERANGE = 34;
    assert.deepEqual(out, {
      getProbe: netRawCapability.length,
      getSmall: -1,
      getSmallErrno: ERANGE,
      getExact: netRawCapability.length,
      value: netRawCapability.toString('hex'),
      listProbe: 'security.capability\0user.comment\0'.length,
      listSmall: -1,
      listSmallErrno: ERANGE,
      listExact: 'security.capability\0user.comment\0'.length,
      list: 'security.capability\0user.comment\0',
    });
  });

  await t.test('statfs (stat -f): blocks of the files, inode count, nothing free, 255-byte names', async () => {
    const done = await runCommand('stat', ['-f', '-c', '%S %b %f %a %c %d %l', mnt]);
    assert.equal(done.code, 0, done.stderr);
    const [bsize, blocks, free, avail, files, ffree, namemax] = done.stdout.trim().split(' ').map(Number);
    assert.deepEqual(
      { bsize, blocks, free, avail, files, ffree, namemax },
      { bsize: 4096, blocks: Math.ceil(tree.totalBytes / 4096), free: 0, avail: 0, files: tree.nodeCount, ffree: 0, namemax: 255 },
    );
  });

  await t.test('another user reads what modes allow and is refused the rest (allow_other, default_permissions)', async (st) => {
    if (!requireOrSkip(st, { tools: ['setpriv', 'cat'] })) return;
    const as = (uid: number, path: string) => runCommand('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'cat', at(path)]);
    const hosts = await as(1000, 'etc/hosts');
    assert.equal(hosts.code, 0, hosts.stderr);
    assert.equal(hosts.stdout, '127.0.0.1 localhost\n');
    const shadow = await as(1000, 'etc/shadow');
    assert.notEqual(shadow.code, 0);
    assert.match(shadow.stderr, /Permission denied/);
    const own = await as(1000, 'home/user/notes.txt');
    assert.equal(own.stdout, 'mine\n', 'the owner of a 0640 file');
    const other = await as(1001, 'home/user/notes.txt');
    assert.match(other.stderr, /Permission denied/, 'a stranger to a 0750 directory');
  });

  await t.test('every write is EROFS', async () => {
    const attempts: Array<[string, () => Promise<unknown>]> = [
      ['create', () => writeFile(at('etc/new'), 'x')],
      ['append', () => appendFile(at('etc/hosts'), 'x')],
      ['truncate', () => truncate(at('etc/hosts'), 0)],
      ['mkdir', () => mkdir(at('newdir'))],
      ['unlink', () => unlink(at('etc/hosts'))],
      ['rmdir', () => rmdir(at('tmp'))],
      ['rename', () => rename(at('etc/hosts'), at('etc/hosts2'))],
      ['symlink', () => symlink('x', at('etc/link'))],
      ['link', () => link(at('etc/hosts'), at('etc/hosts3'))],
      ['chmod', () => chmod(at('etc/hosts'), 0o600)],
      ['chown', () => chown(at('etc/hosts'), 1, 1)],
      ['utimes', () => utimes(at('etc/hosts'), 1, 1)],
    ];
    for (const [name, attempt] of attempts) await assert.rejects(attempt(), { code: 'EROFS' }, name);
    const setxattr = await runNodeJson<string>(
      `const { native } = await import(${JSON.stringify(nativeModule)});
       try { native().lsetxattr(process.argv[1], 'user.k', Buffer.from('v')); console.log('"set"'); }
       catch (e) { console.log(JSON.stringify(e.code)); }`,
      [at('etc/hosts')],
    );
    assert.equal(setxattr, 'EROFS', 'setxattr');
  });

  await t.test('a read the reader rejects (UNAVAILABLE) is EIO to the reading process; the mount keeps serving', async () => {
    const before = mounted.stats().errors;
    const done = await runCommand('cat', [at('data/unavailable')]);
    assert.notEqual(done.code, 0);
    assert.match(done.stderr, /Input\/output error/);
    assert.ok(mounted.stats().errors > before);
    assert.equal(await readFile(at('etc/hosts'), 'utf8'), '127.0.0.1 localhost\n');
  });

  await t.test('a read that never answers fails with EIO after the timeout instead of hanging', async () => {
    const done = await runCommand('cat', [at('data/hang')], { timeoutMs: 15_000 });
    assert.equal(done.signal, null, 'cat ended by itself');
    assert.notEqual(done.code, 0);
    assert.match(done.stderr, /Input\/output error/);
    assert.ok(done.ms >= timeoutMs - 50 && done.ms < 10 * timeoutMs, `failed after ${done.ms} ms`);
    assert.ok(mounted.stats().timeouts >= 1);
    assert.equal(await readFile(at('etc/hosts'), 'utf8'), '127.0.0.1 localhost\n', 'other files still read');
  });

});

test('failures reach the injected logger with the path, range and errno', async (t) => {
  if (!requireOrSkip(t, needs)) return;
  const { mnt, logs } = await mountFixture(t);
  await runCommand('cat', [join(mnt, 'data/unavailable')]);
  assert.ok(logs.length >= 1);
  assert.match(logs[0]!, /^read \/data\/unavailable \[\d+, \d+\): EIO: layer sha256:ab12…: range of data\/unavailable not fetched$/);
});

test('unmount removes the mount; a second mount on a live one is refused', async (t) => {
  if (!requireOrSkip(t, needs)) return;
  const { mnt, mounted, fixture, tree } = await mountFixture(t);
  assert.equal((await fuseMountsAt(mnt))[0]?.fstype, 'fuse.lazyroot');
  await assert.rejects(mountTree(tree, mnt, fixture.reader), (err) => isLazyrootError(err, 'IN_USE'));
  await mounted.unmount();
  assert.deepEqual(await fuseMountsAt(mnt), []);
  await mounted.unmount(); // idempotent
});

test('a mount opened before its tree holds operations until served; abandoned, it answers them EIO and is gone', async (t) => {
  if (!requireOrSkip(t, needs)) return;
  const work = await mkdtemp(join(tmpdir(), 'lazyroot-fs-'));
  const mnt = join(work, 'mnt');
  await mkdir(mnt);
  let mounted: MountedTree | undefined;
  t.after(async () => {
    await mounted?.unmount();
    if ((await fuseMountsAt(mnt)).length === 0) await rm(work, { recursive: true, force: true });
  });
  const fixture = fixtureTree();
  const tree = buildTree(fixture.entries);

  const open = await openMount(mnt, { timeoutMs });
  assert.equal((await fuseMountsAt(mnt))[0]?.fstype, 'fuse.lazyroot', 'mounted before any tree');
  const listing = readdir(mnt);
  const reading = readFile(join(mnt, 'etc/hosts'));
  assert.equal(await Promise.race([listing.then(() => 'answered'), delay(300).then(() => 'held')]), 'held');
  mounted = open.serve(tree, fixture.reader);
  assert.deepEqual((await listing).sort(), [...tree.lookup('/')!.children!.keys()].sort());
  assert.deepEqual(await reading, fixture.contents.get('etc/hosts'));
  assert.throws(() => open.serve(tree, fixture.reader), /served twice/);
  await mounted.unmount();
  mounted = undefined;

  const abandoned = await openMount(mnt, { timeoutMs });
  // Its answer is expected as soon as it comes (while abandon() still unmounts): no rejection goes unhandled.
  const waiting = assert.rejects(lstat(join(mnt, 'etc')), (err: NodeJS.ErrnoException) => err.code === 'EIO');
  await delay(100);
  await abandoned.abandon();
  await waiting;
  assert.deepEqual(await fuseMountsAt(mnt), []);
});

test('mount arguments that would reach a shell or the option string are refused', async () => {
  const tree = buildTree([]);
  const reader = { read: () => Promise.resolve(Buffer.alloc(0)) };
  await assert.rejects(mountTree(tree, '/tmp/$(reboot)', reader), (err) => isLazyrootError(err, 'INVALID_ARGUMENT'));
  await assert.rejects(mountTree(tree, '/tmp/x', reader, { fsName: 'a,allow_root' }), (err) => isLazyrootError(err, 'INVALID_ARGUMENT'));
  await assert.rejects(mountTree(tree, '/tmp/x', reader, { timeoutMs: 0 }), (err) => isLazyrootError(err, 'INVALID_ARGUMENT'));
});

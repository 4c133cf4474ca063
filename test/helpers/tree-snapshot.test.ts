import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmod, chown, link, lutimes, mkdir, mkdtemp, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { native, S_IFBLK, S_IFCHR, S_IFIFO } from '../../src/native.js';
import { requireOrSkip } from './requirements.js';
import { comparePaths, diffTrees, diffTreesReport, snapshotTree, splitRdev, type TreeEntry } from './tree-snapshot.js';

let work: string;
before(async () => {
  work = await mkdtemp(join(tmpdir(), 'lazyroot-tree-snapshot-'));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');
const T = (n: number): number => 1_600_000_000 + n * 1000;

/** Every file type, hardlinks, special mode bits, owners, xattrs, wide device numbers. */
async function makeTree(root: string): Promise<{ server: Server }> {
  const addon = native();
  await mkdir(root);
  await writeFile(join(root, 'a.txt'), 'hello');
  await chown(join(root, 'a.txt'), 1000, 1001);
  await chmod(join(root, 'a.txt'), 0o640);
  addon.lsetxattr(join(root, 'a.txt'), 'user.test', Buffer.from([0, 1, 255]));
  await utimes(join(root, 'a.txt'), T(1), T(1) + 0.9);
  await mkdir(join(root, 'sub'));
  await chmod(join(root, 'sub'), 0o2755);
  addon.lsetxattr(join(root, 'sub'), 'trusted.overlay.opaque', Buffer.from('y'));
  await link(join(root, 'a.txt'), join(root, 'sub/b'));
  await writeFile(join(root, 'sub/c'), 'c');
  await chmod(join(root, 'sub/c'), 0o4755);
  await utimes(join(root, 'sub/c'), T(2), T(2));
  await symlink('a.txt', join(root, 'link'));
  await lutimes(join(root, 'link'), T(3), T(3));
  await symlink('/nope', join(root, 'dangling'));
  await lutimes(join(root, 'dangling'), T(4), T(4));
  addon.mknod(join(root, 'fifo'), S_IFIFO | 0o600, 0, 0);
  addon.mknod(join(root, 'chr'), S_IFCHR | 0o644, 1, 7);
  addon.mknod(join(root, 'wide'), S_IFCHR | 0o600, 510, 300_000);
  addon.mknod(join(root, 'blk'), S_IFBLK | 0o600, 8, 1);
  for (const [p, n] of [['fifo', 5], ['chr', 6], ['wide', 7], ['blk', 8]] as const) await utimes(join(root, p), T(n), T(n));
  // 'z/a' sorts before 'z-b' ('/' first), and numbers the second hardlink group.
  await mkdir(join(root, 'z'));
  await writeFile(join(root, 'z/a'), 'zz');
  await link(join(root, 'z/a'), join(root, 'z-b'));
  await utimes(join(root, 'z/a'), T(9), T(9));
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(join(root, 'sock'), resolve));
  await chmod(join(root, 'sock'), 0o700);
  await utimes(join(root, 'sock'), T(10), T(10));
  await utimes(join(root, 'z'), T(11), T(11));
  await utimes(join(root, 'sub'), T(12), T(12));
  await chmod(root, 0o755);
  await utimes(root, T(13), T(13));
  return { server };
}

test('snapshotTree describes every type, mode bit, owner, xattr and hardlink', async (t) => {
  if (!requireOrSkip(t, { root: true })) return;
  const root = join(work, 'every-type');
  const { server } = await makeTree(root);
  try {
    const a = { type: 'file', mode: 0o640, uid: 1000, gid: 1001, size: 5, sha256: sha('hello'), mtime: T(1), mtimeNsec: 900_000_000, xattrs: { 'user.test': 'AAH/' }, nlink: 2, hardlinkGroup: 1 } as const;
    const za = { type: 'file', mode: 0o644, uid: 0, gid: 0, size: 2, sha256: sha('zz'), mtime: T(9), xattrs: {}, nlink: 2, hardlinkGroup: 2 } as const;
    const expected: Array<Omit<TreeEntry, 'mtimeNsec'>> = [
      { path: '.', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: T(13), xattrs: {} },
      { path: 'a.txt', ...a },
      { path: 'blk', type: 'block', mode: 0o600, uid: 0, gid: 0, major: 8, minor: 1, mtime: T(8), xattrs: {}, nlink: 1 },
      { path: 'chr', type: 'char', mode: 0o644, uid: 0, gid: 0, major: 1, minor: 7, mtime: T(6), xattrs: {}, nlink: 1 },
      { path: 'dangling', type: 'symlink', mode: 0o777, uid: 0, gid: 0, target: '/nope', mtime: T(4), xattrs: {}, nlink: 1 },
      { path: 'fifo', type: 'fifo', mode: 0o600, uid: 0, gid: 0, mtime: T(5), xattrs: {}, nlink: 1 },
      { path: 'link', type: 'symlink', mode: 0o777, uid: 0, gid: 0, target: 'a.txt', mtime: T(3), xattrs: {}, nlink: 1 },
      { path: 'sock', type: 'socket', mode: 0o700, uid: 0, gid: 0, mtime: T(10), xattrs: {}, nlink: 1 },
      // trusted.overlay.opaque is overlay bookkeeping: left out by default.
      { path: 'sub', type: 'dir', mode: 0o2755, uid: 0, gid: 0, mtime: T(12), xattrs: {} },
      { path: 'sub/b', ...a },
      { path: 'sub/c', type: 'file', mode: 0o4755, uid: 0, gid: 0, size: 1, sha256: sha('c'), mtime: T(2), xattrs: {}, nlink: 1 },
      { path: 'wide', type: 'char', mode: 0o600, uid: 0, gid: 0, major: 510, minor: 300_000, mtime: T(7), xattrs: {}, nlink: 1 },
      { path: 'z', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: T(11), xattrs: {} },
      { path: 'z/a', ...za },
      { path: 'z-b', ...za },
    ];
    assert.deepEqual(await snapshotTree(root), expected.map((e) => ({ mtimeNsec: 0, ...e })));

    const withOverlay = await snapshotTree(root, { includeOverlayXattrs: true });
    assert.deepEqual(withOverlay.find((e) => e.path === 'sub')?.xattrs, { 'trusted.overlay.opaque': Buffer.from('y').toString('base64') });

    // ignore drops the directory and what is under it; a.txt is then the only link seen.
    const ignored = await snapshotTree(root, { ignore: (p) => p === 'sub' || p === 'sock' });
    assert.deepEqual(
      ignored.map((e) => e.path),
      ['.', 'a.txt', 'blk', 'chr', 'dangling', 'fifo', 'link', 'wide', 'z', 'z/a', 'z-b'],
    );
    const aOnly = ignored.find((e) => e.path === 'a.txt')!;
    assert.equal(aOnly.hardlinkGroup, undefined);
    assert.equal(aOnly.nlink, 2);
    assert.equal(ignored.find((e) => e.path === 'z/a')!.hardlinkGroup, 1);
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

test('comparePaths sorts "/" before every other byte; splitRdev undoes glibc makedev', () => {
  assert.deepEqual(['ab', 'a.b', 'a-b', 'a/b', '.', 'a'].sort(comparePaths), ['.', 'a', 'a/b', 'a-b', 'a.b', 'ab']);
  // makedev(510, 300000) = 0x4931fee0 (as stat reported it for a mknod'ed device).
  assert.deepEqual(splitRdev(0x4931fee0n), { major: 510, minor: 300_000 });
  // glibc gnu_dev_makedev, for numbers using the high halves of both.
  const makedev = (major: bigint, minor: bigint): bigint =>
    ((major & 0xfffn) << 8n) | ((major & 0xfffff000n) << 32n) | (minor & 0xffn) | ((minor & 0xffffff00n) << 12n);
  assert.deepEqual(splitRdev(makedev(0xfedcba98n, 0x76543210n)), { major: 0xfedcba98, minor: 0x76543210 });
});

function entry(path: string, fields: Partial<TreeEntry> = {}): TreeEntry {
  return { path, type: 'file', mode: 0o644, uid: 0, gid: 0, size: 1, sha256: 'aa'.repeat(32), mtime: 1_700_000_000, mtimeNsec: 0, xattrs: {}, nlink: 1, ...fields };
}

test('diffTrees reports each kind of difference, readably', () => {
  const a: TreeEntry[] = [
    { path: '.', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 0, mtimeNsec: 0, xattrs: {} },
    entry('etc/passwd'),
    entry('bin/ls', { nlink: 2, hardlinkGroup: 1 }),
    entry('bin/cat', { nlink: 2, hardlinkGroup: 1 }),
    entry('only-a'),
    entry('ping', { xattrs: { 'security.capability': 'AQAAAg==', 'user.a': 'MQ==' } }),
    entry('sl', { type: 'symlink', mode: 0o777, target: 'x', size: undefined, sha256: undefined }),
    entry('dev', { type: 'char', major: 1, minor: 3, size: undefined, sha256: undefined }),
  ];
  const b: TreeEntry[] = [
    { path: '.', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 1, mtimeNsec: 0, xattrs: {} },
    entry('etc/passwd', { mode: 0o600, uid: 1000, sha256: 'bb'.repeat(32), size: 2 }),
    entry('bin/ls', { nlink: 1 }),
    entry('bin/cat', { nlink: 1 }),
    entry('only-b'),
    entry('ping', { xattrs: { 'user.a': 'Mg==' } }),
    entry('sl', { type: 'symlink', mode: 0o777, target: 'y', size: undefined, sha256: undefined }),
    entry('dev', { type: 'fifo', size: undefined, sha256: undefined }),
  ];
  assert.deepEqual(diffTrees(a, a), []);
  assert.deepEqual(diffTrees(a, b), [
    '.: mtime 0 (1970-01-01T00:00:00Z) != 1 (1970-01-01T00:00:01Z)',
    'bin/cat: nlink 2 != 1',
    'bin/cat: hardlinked with [bin/ls] != []',
    'bin/ls: nlink 2 != 1',
    'bin/ls: hardlinked with [bin/cat] != []',
    // A type change is reported alone, without the type-specific fields.
    'dev: type "char" != "fifo"',
    'etc/passwd: mode 0644 != 0600',
    'etc/passwd: uid 0 != 1000',
    'etc/passwd: size 1 != 2',
    'etc/passwd: sha256 aaaaaaaaaaaa != bbbbbbbbbbbb',
    'only in a: only-a (file)',
    'only in b: only-b (file)',
    'ping: xattr security.capability base64:AQAAAg== != (none)',
    'ping: xattr user.a base64:MQ== != base64:Mg==',
    'sl: target "x" != "y"',
  ]);
  assert.deepEqual(diffTrees(a, b, { ignoreFields: ['mtime', 'nlink', 'hardlinkGroup', 'xattrs', 'type'] }).length, 7);
});

test('diffTrees honours allow (path, field, xattr name) and reports unused exceptions', () => {
  const a = [entry('usr'), entry('usr/bin/ping', { xattrs: { 'security.capability': 'AA==' } }), entry('x')];
  const b = [entry('usr', { mtime: 5 }), entry('usr/bin/ping', { mtime: 5 }), entry('y')];
  const allow = [
    { path: /^usr$/, field: 'mtime', reason: 'implicit parent: unpack time' },
    { path: /^usr\/bin\/ping$/, field: 'xattrs.security.capability', reason: 'capabilities dropped on purpose' },
    { path: /^x$/, field: 'exists', reason: 'x is a whiteout in overlay format' },
    { path: /^never$/, reason: 'stale' },
  ];
  const report = diffTreesReport(a, b, { allow });
  assert.deepEqual(
    report.differences.map((d) => d.message),
    ['usr/bin/ping: mtime 1700000000 (2023-11-14T22:13:20Z) != 5 (1970-01-01T00:00:05Z)', 'only in b: y (file)'],
  );
  assert.deepEqual(
    report.allowed.map((d) => [d.path, d.field, d.reason]),
    [
      ['usr', 'mtime', 'implicit parent: unpack time'],
      ['usr/bin/ping', 'xattrs.security.capability', 'capabilities dropped on purpose'],
      ['x', 'exists', 'x is a whiteout in overlay format'],
    ],
  );
  assert.deepEqual(report.unusedAllows, [allow[3]]);
  // 'xattrs' covers every xattr; no field covers everything at the path.
  assert.deepEqual(diffTrees(a, b, { allow: [{ path: /ping/, field: 'xattrs', reason: 'r' }, { path: /^(usr|y)$/, reason: 'r' }, { path: /ping/, field: 'mtime', reason: 'r' }, { path: /^x$/, reason: 'r' }] }), []);
});

test('mtimes are compared with nanoseconds, before 1970 too', async () => {
  const root = join(work, 'nanoseconds');
  await mkdir(root, { recursive: true });
  await writeFile(join(root, 'ns'), '');
  await writeFile(join(root, 'old'), '');
  native().utimens(join(root, 'ns'), 0, 0, 1_234_567_890, 123_456_789);
  native().utimens(join(root, 'old'), 0, 0, -2, 500_000_000);
  const snap = await snapshotTree(root);
  const get = (p: string) => snap.find((e) => e.path === p)!;
  assert.deepEqual([get('ns').mtime, get('ns').mtimeNsec], [1_234_567_890, 123_456_789]);
  assert.deepEqual([get('old').mtime, get('old').mtimeNsec], [-2, 500_000_000]);
  const other = snap.map((e) => (e.path === 'ns' ? { ...e, mtimeNsec: 122_999_000 } : e));
  assert.deepEqual(diffTrees(snap, other), ['ns: mtime 1234567890.123456789 (2009-02-13T23:31:30Z) != 1234567890.122999000 (2009-02-13T23:31:30Z)']);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isLazyrootError } from '../../src/errors.js';
import { devMajor, devMinor } from '../../src/native.js';
import { buildTree, makeDev, type TreeEntry } from '../../src/fs/tree.js';
import { fixtureTree } from './helpers/fixture-tree.js';

const entry = (e: Partial<TreeEntry> & Pick<TreeEntry, 'path' | 'type'>): TreeEntry => ({
  mode: 0o644,
  uid: 0,
  gid: 0,
  size: 0,
  mtime: 0,
  layer: 0,
  ...e,
});

test('hardlinked paths are one node: same inode, nlink counts the paths', () => {
  const tree = buildTree([
    entry({ path: 'a', type: 'file', size: 3 }),
    entry({ path: 'b', type: 'hardlink', linkname: 'a' }),
    entry({ path: 'd', type: 'dir', mode: 0o755 }),
    entry({ path: 'd/c', type: 'hardlink', linkname: 'a' }),
  ]);
  const a = tree.lookup('/a')!;
  assert.equal(tree.lookup('/b'), a);
  assert.equal(tree.lookup('/d/c'), a);
  assert.equal(a.nlink, 3);
  assert.equal(a.size, 3);
  assert.equal(a.entry?.path, 'a', 'the node reads through the real file entry');
});

test('a hardlink may sort before its target and may point at another link', () => {
  const tree = buildTree([
    entry({ path: 'a-link', type: 'hardlink', linkname: 'm-link' }),
    entry({ path: 'm-link', type: 'hardlink', linkname: 'z' }),
    entry({ path: 'z', type: 'file', size: 1 }),
  ]);
  assert.equal(tree.lookup('a-link'), tree.lookup('z'));
  assert.equal(tree.lookup('z')!.nlink, 3);
});

test('directory nlink is 2 + subdirectories; missing parents appear as root-owned 0755 dirs', () => {
  const tree = buildTree([entry({ path: 'x/y/f', type: 'file' }), entry({ path: 'x/z', type: 'dir', mode: 0o700 })]);
  const x = tree.lookup('/x')!;
  assert.equal(x.type, 'dir');
  assert.equal(x.mode, 0o755);
  assert.equal(x.nlink, 4, 'x has y and z below it');
  assert.equal(tree.lookup('/x/y')!.nlink, 2);
  assert.equal(tree.root.nlink, 3);
  assert.deepEqual([...x.children!.keys()].sort(), ['y', 'z']);
});

test('inode numbers are stable: path order, root is 1, whatever order the list comes in', () => {
  const { entries } = fixtureTree();
  const one = buildTree(entries);
  const two = buildTree([...entries].reverse());
  assert.equal(one.root.ino, 1);
  for (const e of entries) assert.equal(one.lookup(e.path)!.ino, two.lookup(e.path)!.ino, e.path);
  assert.equal(one.node(one.lookup('/etc/hosts')!.ino), one.lookup('/etc/hosts'));
});

test('lookup takes FUSE paths and entry paths; xattrs decode from base64', () => {
  const tree = buildTree([entry({ path: 'f', type: 'file', xattrs: { 'user.k': Buffer.from([0, 1, 2]).toString('base64') } })]);
  assert.equal(tree.lookup('/'), tree.root);
  assert.equal(tree.lookup(''), tree.root);
  assert.equal(tree.lookup('f'), tree.lookup('/f'));
  assert.equal(tree.lookup('/nope'), undefined);
  assert.deepEqual(tree.lookup('f')!.xattrs.get('user.k'), Buffer.from([0, 1, 2]));
});

test('statfs numbers: distinct inodes and bytes (a hardlink counts once)', () => {
  const tree = buildTree([entry({ path: 'a', type: 'file', size: 10 }), entry({ path: 'b', type: 'hardlink', linkname: 'a' })]);
  assert.equal(tree.nodeCount, 2);
  assert.equal(tree.totalBytes, 10);
});

test('makeDev encodes major:minor as glibc does, also past 8 and 12 bits', () => {
  for (const [major, minor] of [[1, 3], [8, 0], [259, 70000], [4095, 1048575], [5000, 3]] as const) {
    const dev = makeDev(major, minor);
    assert.equal(devMajor(dev), major, `${major}:${minor}`);
    assert.equal(devMinor(dev), minor, `${major}:${minor}`);
  }
  assert.equal(makeDev(1, 3), 0x103);
});

test('malformed lists are refused with INVALID_DATA', () => {
  const cases: Array<[string, TreeEntry[]]> = [
    ['duplicate path', [entry({ path: 'a', type: 'file' }), entry({ path: 'a', type: 'file' })]],
    ['link to a missing path', [entry({ path: 'b', type: 'hardlink', linkname: 'nope' })]],
    ['link cycle', [entry({ path: 'a', type: 'hardlink', linkname: 'b' }), entry({ path: 'b', type: 'hardlink', linkname: 'a' })]],
    ['link to a directory', [entry({ path: 'd', type: 'dir' }), entry({ path: 'l', type: 'hardlink', linkname: 'd' })]],
    ['entries below a file', [entry({ path: 'f', type: 'file' }), entry({ path: 'f/g', type: 'file' })]],
    ['entries below a link', [entry({ path: 'f', type: 'file' }), entry({ path: 'l', type: 'hardlink', linkname: 'f' }), entry({ path: 'l/x', type: 'file' })]],
    ['a root that is not a dir', [entry({ path: '', type: 'file' })]],
  ];
  for (const [name, entries] of cases) {
    assert.throws(() => buildTree(entries), (err) => isLazyrootError(err, 'INVALID_DATA'), name);
  }
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mergeLayers } from '../../src/union/merge.js';
import type { IndexEntry } from '../../src/index/types.js';
import type { LazyrootError } from '../../src/errors.js';

const f = (path: string, extra: Partial<IndexEntry> = {}): IndexEntry => ({ path, type: 'file', mode: 0o644, uid: 0, gid: 0, size: 1, mtime: 1, dataOffset: 512, ...extra });
const d = (path: string, extra: Partial<IndexEntry> = {}): IndexEntry => ({ path, type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 1, ...extra });
const l = (path: string, linkname: string): IndexEntry => ({ path, type: 'symlink', mode: 0o777, uid: 0, gid: 0, size: 0, mtime: 1, linkname });
const h = (path: string, linkname: string): IndexEntry => ({ path, type: 'hardlink', mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 1, linkname });
const wh = (path: string) => f(path.replace(/([^/]+)$/, '.wh.$1'), { size: 0 });
const opq = (dir: string) => f(`${dir}/.wh..wh..opq`, { size: 0 });

const paths = (layers: IndexEntry[][]) => mergeLayers(layers).map((e) => e.path).filter((p) => p !== '');

const table: Array<{ name: string; layers: IndexEntry[][]; visible: string[] }> = [
  { name: 'whiteout hides a lower file', layers: [[d('etc'), f('etc/a'), f('etc/b')], [wh('etc/b')]], visible: ['etc', 'etc/a'] },
  { name: 'opaque dir hides lower children, keeps its own', layers: [[d('x'), f('x/old')], [opq('x'), f('x/new')]], visible: ['x', 'x/new'] },
  { name: 'opaque marker after its new children', layers: [[d('x'), f('x/old')], [f('x/new'), opq('x')]], visible: ['x', 'x/new'] },
  { name: 'whiteout then re-create in one layer', layers: [[d('w'), f('w/old')], [wh('w'), d('w'), f('w/new')]], visible: ['w', 'w/new'] },
  { name: 're-create then whiteout in one layer', layers: [[d('w'), f('w/old')], [d('w'), f('w/new'), wh('w')]], visible: ['w', 'w/new'] },
  { name: 'deleted then re-created later', layers: [[f('p')], [wh('p')], [f('p')]], visible: ['p'] },
  { name: 'implicit parents', layers: [[f('a/b/c')]], visible: ['a', 'a/b', 'a/b/c'] },
  { name: 'file replaced by dir', layers: [[f('x')], [d('x'), f('x/y')]], visible: ['x', 'x/y'] },
  { name: 'dir replaced by file', layers: [[d('x'), f('x/y')], [f('x')]], visible: ['x'] },
  { name: 'write through a lower symlink lands in its target', layers: [[d('usr'), d('usr/bin'), l('bin', 'usr/bin')], [f('bin/tool')]], visible: ['bin', 'usr', 'usr/bin', 'usr/bin/tool'] },
  { name: 'an absolute lower symlink resolves inside the root', layers: [[d('usr'), d('usr/lib'), l('lib', '/usr/lib')], [f('lib/x.so')]], visible: ['lib', 'usr', 'usr/lib', 'usr/lib/x.so'] },
  { name: 'reserved aufs names are ignored', layers: [[f('a')], [f('.wh..wh.plnk/1')]], visible: ['a'] },
  // A whiteout hides lower entries from the layers above, not from its own layer's links (both orders).
  { name: 'hardlink to a lower file, then its whiteout', layers: [[d('d'), f('d/t')], [h('d/new-link', 'd/t'), wh('d/t')]], visible: ['d', 'd/new-link'] },
  { name: 'whiteout of a lower file, then a hardlink to it', layers: [[d('d'), f('d/t')], [wh('d/t'), h('d/new-link', 'd/t')]], visible: ['d', 'd/new-link'] },
  { name: 'hardlink into a dir the same layer makes opaque', layers: [[d('o'), f('o/x')], [h('o-link', 'o/x'), opq('o')]], visible: ['o', 'o-link'] },
  { name: 'a chain across layers, its middle whited out', layers: [[f('a')], [h('b', 'a')], [h('c', 'b'), wh('b')]], visible: ['a', 'c'] },
];

for (const c of table) {
  test(`merge: ${c.name}`, () => assert.deepEqual(paths(c.layers), [...c.visible].sort()));
}

test('merge: a link to a file its own layer whites out keeps the lower file (issue: the lazy mount refused the image)', () => {
  const merged = mergeLayers([[d('d'), f('d/t', { dataOffset: 1024 })], [h('d/new-link', 'd/t'), wh('d/t')]]);
  const link = merged.find((e) => e.path === 'd/new-link')!;
  assert.deepEqual([link.type, link.layer, link.sourcePath, link.dataOffset], ['file', 0, 'd/t', 1024]);
});

test('merge: a directory over a directory takes the new metadata and keeps lower children', () => {
  const merged = mergeLayers([[d('etc', { mode: 0o755, mtime: 1 }), f('etc/a')], [d('etc', { mode: 0o700, mtime: 9 })]]);
  const etc = merged.find((e) => e.path === 'etc')!;
  assert.deepEqual([etc.mode, etc.mtime, etc.layer], [0o700, 9, 1]);
  assert.ok(merged.some((e) => e.path === 'etc/a' && e.layer === 0));
});

test('merge: hardlinks share a file and stay bound to its content when the target is replaced', () => {
  const merged = mergeLayers([[f('bin/tool', { dataOffset: 100, size: 4 })], [h('bin/alias', 'bin/tool')], [f('bin/tool', { dataOffset: 900, size: 7 })]]);
  const alias = merged.find((e) => e.path === 'bin/alias')!;
  const tool = merged.find((e) => e.path === 'bin/tool')!;
  assert.deepEqual([alias.type, alias.dataOffset, alias.layer], ['file', 100, 0], 'the alias keeps the old content');
  assert.deepEqual([tool.type, tool.dataOffset, tool.layer], ['file', 900, 2]);
});

test('merge: several names of one file come out as one file and links to it', () => {
  const merged = mergeLayers([[f('a', { dataOffset: 7 }), h('b', 'a'), h('c', 'b')]]);
  assert.deepEqual(
    merged.filter((e) => e.path).map((e) => [e.path, e.type, e.linkname ?? '']),
    [['a', 'file', ''], ['b', 'hardlink', 'a'], ['c', 'hardlink', 'a']],
  );
});

test('merge: hostile stacks are refused like the unpacker refuses them', () => {
  const cases: Array<[IndexEntry[][], RegExp]> = [
    [[[l('link', '/etc'), f('link/passwd')]], /entry "link\/passwd" would be written through the symlink "link"/],
    [[[h('h', 'missing')]], /is a hardlink to "missing", which is not a file in the image/],
    [[[d('a'), f('a/.wh..')]], /invalid whiteout/],
    [[[f('x'), f('x/y')]], /has a parent "x" that is not a directory/],
  ];
  for (const [layers, message] of cases) {
    assert.throws(() => mergeLayers(layers), (e: LazyrootError) => e.code === 'HOSTILE_ARCHIVE' && message.test(e.message));
  }
});

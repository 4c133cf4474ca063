import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { LazyrootError } from '../../src/errors.js';
import { indexTar } from '../../src/index/tar-index.js';
import type { IndexEntry } from '../../src/index/types.js';
import { native } from '../../src/native.js';
import { unpackLayer } from '../../src/unpack/unpack-layer.js';
import { blockdev, buildTar, chardev, dir, fifo, file, hardlink, opaque, raw, symlink, whiteout, type TarEntry } from '../helpers/tar-builder.js';
import { chunked } from './layer-fixtures.js';

const index = (tar: Buffer, chunk = 7777): Promise<IndexEntry[]> => indexTar(chunked(tar, chunk), 'test layer');

/** The file's bytes as the index says they lie in the tar (sparse-aware). */
function contentAt(tar: Buffer, e: IndexEntry): Buffer {
  const start = e.dataOffset!;
  if (!e.sparse) return tar.subarray(start, start + e.size);
  const out = Buffer.alloc(e.size);
  let stored = start;
  for (const r of e.sparse) {
    tar.copy(out, r.offset, stored, stored + r.size);
    stored += r.size;
  }
  return out;
}

let work: string;
before(async () => {
  work = await mkdtemp(join(tmpdir(), 'lazyroot-tar-index-'));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

test('every member in order, with its metadata and where its data lies', async () => {
  const big = randomBytes(700_001);
  const longName = `deep/${'d'.repeat(120)}/${'f'.repeat(110)}.txt`;
  const tar = await buildTar([
    dir('./', { mode: 0o755 }),
    dir('etc', { mode: 0o750, uid: 1, gid: 2, mtime: 1_600_000_000 }),
    file('etc/hosts', '127.0.0.1 localhost\n', { mode: 0o4755, uid: 1000, gid: 1001 }),
    file('./usr//bin/sh', big),
    hardlink('usr/bin/sh2', './usr//bin/sh'),
    symlink('bin', 'usr/bin'),
    symlink('abs', '/etc/../../outside'),
    file(longName, 'long\n'),
    file('empty', ''),
    whiteout('etc/old.conf'),
    opaque('var/cache'),
    file('.wh..wh.plnk/1234.5678', 'aufs'),
    fifo('run/fifo'),
    chardev('dev/null', 1, 3),
    blockdev('dev/sda', 8, 0),
    file('x', 'v', { xattrs: { 'user.k': 'v', 'trusted.overlay.opaque': 'y' } }),
  ]);
  for (const chunk of [97, 511, 7777, tar.length]) {
    const entries = await index(tar, chunk);
    assert.deepEqual(
      entries.map((e) => [e.path, e.type]),
      [
        ['', 'dir'],
        ['etc', 'dir'],
        ['etc/hosts', 'file'],
        ['usr/bin/sh', 'file'],
        ['usr/bin/sh2', 'hardlink'],
        ['bin', 'symlink'],
        ['abs', 'symlink'],
        [longName, 'file'],
        ['empty', 'file'],
        ['etc/.wh.old.conf', 'file'],
        ['var/cache/.wh..wh..opq', 'file'],
        ['.wh..wh.plnk/1234.5678', 'file'],
        ['run/fifo', 'fifo'],
        ['dev/null', 'char'],
        ['dev/sda', 'block'],
        ['x', 'file'],
      ],
      `with ${chunk}-byte chunks`,
    );
    const byPath = new Map(entries.map((e) => [e.path, e]));
    assert.deepEqual(byPath.get('etc'), { path: 'etc', type: 'dir', mode: 0o750, uid: 1, gid: 2, size: 0, mtime: 1_600_000_000 });
    const hosts = byPath.get('etc/hosts')!;
    assert.deepEqual([hosts.mode, hosts.uid, hosts.gid, hosts.size, hosts.mtime], [0o4755, 1000, 1001, 20, 1_700_000_000]);
    assert.equal(contentAt(tar, hosts).toString(), '127.0.0.1 localhost\n');
    assert.ok(contentAt(tar, byPath.get('usr/bin/sh')!).equals(big));
    assert.equal(contentAt(tar, byPath.get(longName)!).toString(), 'long\n');
    assert.equal(byPath.get('empty')!.size, 0);
    assert.equal(byPath.get('usr/bin/sh2')!.linkname, 'usr/bin/sh', 'hardlink target normalized');
    assert.equal(byPath.get('abs')!.linkname, '/etc/../../outside', 'symlink target as written');
    assert.deepEqual([byPath.get('dev/null')!.devmajor, byPath.get('dev/null')!.devminor], [1, 3]);
    assert.deepEqual([byPath.get('dev/sda')!.devmajor, byPath.get('dev/sda')!.devminor], [8, 0]);
    assert.deepEqual(byPath.get('x')!.xattrs, { 'user.k': Buffer.from('v').toString('base64') }, 'trusted.overlay.* never comes from a tar');
    for (const e of entries) {
      if (e.type === 'file') assert.ok(e.dataOffset! % 512 === 0 && e.dataOffset! + e.size <= tar.length);
      else assert.equal(e.dataOffset, undefined);
    }
  }
});

test('PAX uid, gid and fractional mtime override the header fields', async () => {
  const tar = await buildTar([raw({ name: 'big-ids', uid: 7, gid: 8, pax: { uid: '3000000000', gid: '4000000001', mtime: '1700000000.25' }, data: 'abc' })]);
  const [e] = await index(tar);
  assert.deepEqual([e!.uid, e!.gid, e!.mtime, e!.mtimeNsec, e!.size], [3_000_000_000, 4_000_000_001, 1_700_000_000, 250_000_000, 3]);
  assert.equal(contentAt(tar, e!).toString(), 'abc');
});

test('GNU tar: binary xattrs, long names, PAX sparse 0.0, 0.1 and 1.0 (data offset after the in-data map)', async () => {
  const src = join(work, 'gnu-src');
  await mkdir(src, { recursive: true });
  const sparse = Buffer.alloc(9_000_000);
  const handle = await open(join(src, 'sparse.img'), 'w');
  for (const [at, data] of [[0, Buffer.from('head')], [2_000_000, randomBytes(100_000)], [8_999_000, randomBytes(1000)]] as const) {
    await handle.write(data, 0, data.length, at);
    data.copy(sparse, at);
  }
  await handle.truncate(sparse.length);
  await handle.close();
  const holeAtEnd = Buffer.alloc(3_000_000);
  holeAtEnd.write('start', 0);
  await writeFile(join(src, 'hole-at-end.img'), holeAtEnd.subarray(0, 5));
  execFileSync('truncate', ['-s', String(holeAtEnd.length), join(src, 'hole-at-end.img')]);
  const cap = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x80, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  await writeFile(join(src, 'capable'), 'bin');
  native().lsetxattr(join(src, 'capable'), 'user.cap', cap);
  const longName = `${'n'.repeat(150)}.txt`;
  await writeFile(join(src, longName), 'long');
  for (const version of ['0.0', '0.1', '1.0']) {
    const tar = execFileSync('tar', ['--format=posix', '--sparse', `--sparse-version=${version}`, '--xattrs', '--xattrs-include=*', '-C', src, '-cf', '-', 'sparse.img', 'hole-at-end.img', 'capable', longName], { maxBuffer: 64 << 20 });
    const entries = await index(tar);
    const byPath = new Map(entries.map((e) => [e.path, e]));
    const s = byPath.get('sparse.img')!;
    assert.equal(s.size, sparse.length, `sparse ${version}: real size`);
    assert.ok(s.sparse && s.sparse.length >= 3, `sparse ${version}: map ${JSON.stringify(s.sparse)}`);
    assert.ok(contentAt(tar, s).equals(sparse), `sparse ${version}: regions read at dataOffset rebuild the file`);
    const h = byPath.get('hole-at-end.img')!;
    assert.ok(contentAt(tar, h).equals(holeAtEnd), `sparse ${version}: trailing hole`);
    assert.equal(Buffer.from(byPath.get('capable')!.xattrs!['user.cap']!, 'base64').toString('hex'), cap.toString('hex'), 'binary xattr byte for byte');
    assert.equal(contentAt(tar, byPath.get(longName)!).toString(), 'long');
    if (version === '1.0') assert.ok(s.dataOffset! % 512 === 0 && tar.subarray(s.dataOffset! - 512, s.dataOffset!).toString('latin1').match(/^\d+\n/), 'data starts after the in-data map');
  }
  // GNU format long names ('L' members) too.
  const gnu = execFileSync('tar', ['--format=gnu', '-C', src, '-cf', '-', longName, 'capable']);
  const entries = await index(gnu);
  assert.deepEqual(entries.map((e) => e.path), [longName, 'capable']);
  assert.equal(contentAt(gnu, entries[0]!).toString(), 'long');
});

test("old GNU sparse ('S', with extension blocks) is read by indexer and unpacker alike, holes kept as holes", async () => {
  const src = join(work, 'old-sparse');
  await mkdir(src, { recursive: true });
  // 7 data runs: 4 fit in the header, the rest need a GNU sparse extension block.
  const want = Buffer.alloc(7 << 20);
  const handle = await open(join(src, 'f.img'), 'w');
  for (let i = 0; i < 7; i++) {
    const data = randomBytes(1000 + i);
    await handle.write(data, 0, data.length, i << 20);
    data.copy(want, i << 20);
  }
  await handle.truncate(want.length);
  await handle.close();
  await writeFile(join(src, 'after.txt'), 'after the sparse member\n');
  const tar = execFileSync('tar', ['--format=gnu', '--sparse', '--hole-detection=raw', '-C', src, '-cf', '-', 'f.img', 'after.txt']);
  assert.equal(tar[156], 'S'.charCodeAt(0), 'GNU tar wrote an old GNU sparse member');
  const entries = await index(tar);
  assert.deepEqual(entries.map((e) => [e.path, e.type, e.size]), [['f.img', 'file', want.length], ['after.txt', 'file', 24]]);
  assert.equal(entries[0]!.sparse!.length, 7);
  assert.ok(contentAt(tar, entries[0]!).equals(want));
  assert.equal(contentAt(tar, entries[1]!).toString(), 'after the sparse member\n');
  const target = join(work, 'old-sparse-unpack');
  await mkdir(target);
  await unpackLayer(Readable.from([tar]), { target, lowers: [], what: 'test layer' });
  const { readFile, stat } = await import('node:fs/promises');
  assert.ok((await readFile(join(target, 'f.img'))).equals(want));
  assert.ok((await stat(join(target, 'f.img'))).blocks * 512 < 1 << 20, 'holes stay holes');
  assert.equal(await readFile(join(target, 'after.txt'), 'utf8'), 'after the sparse member\n');
});

describe('hostile names are refused as the unpacker refuses them', () => {
  const cases: Array<{ name: string; entries: TarEntry[] }> = [
    { name: 'dot-dot', entries: [file('../escape', 'x')] },
    { name: 'dot-dot inside', entries: [dir('a'), file('a/../../b', 'x')] },
    { name: 'absolute', entries: [file('/etc/passwd', 'x')] },
    { name: 'PAX path', entries: [raw({ name: 'innocent', pax: { path: '../../pax-escape' }, data: 'x' })] },
    { name: 'GNU long name', entries: [raw({ name: 'innocent', gnuLongName: `../${'x'.repeat(120)}`, data: 'x' })] },
    { name: 'hardlink out', entries: [hardlink('h', '../../etc/passwd')] },
    { name: 'hardlink to root', entries: [hardlink('h', './')] },
    { name: 'invalid whiteout', entries: [file('a/.wh..', '')] },
    { name: 'root as a file', entries: [raw({ name: './', typeflag: '0', data: 'x' })] },
  ];
  for (const c of cases) {
    test(c.name, async () => {
      const tar = await buildTar(c.entries);
      const target = join(work, `hostile-${c.name.replace(/\W/g, '-')}`);
      await mkdir(target, { recursive: true });
      const unpackError = await unpackLayer(Readable.from([tar]), { target, lowers: [], what: 'test layer' }).then(
        () => assert.fail('the unpacker accepted it'),
        (err: LazyrootError) => err,
      );
      await assert.rejects(index(tar), (err: LazyrootError) => {
        assert.equal(err.code, 'HOSTILE_ARCHIVE');
        assert.equal(err.message, unpackError.message);
        return true;
      });
    });
  }
});

test('a truncated or damaged tar fails as HOSTILE_ARCHIVE naming the layer', async () => {
  const tar = await buildTar([file('a', randomBytes(5000)), file('b', 'b')]);
  await assert.rejects(index(tar.subarray(0, 3000)), (err: LazyrootError) => err.code === 'HOSTILE_ARCHIVE' && /^test layer: not a valid tar stream/.test(err.message));
  const bad = await buildTar([raw({ name: 'a', data: 'x', checksum: 'invalid' })]);
  await assert.rejects(index(bad), (err: LazyrootError) => err.code === 'HOSTILE_ARCHIVE');
});

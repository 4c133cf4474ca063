import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { isLazyrootError } from '../../src/errors.js';
import { TarArchive } from '../../src/source/tar-archive.js';
import { buildTar, dir, file, gzip, hardlink, raw, symlink, zstd } from '../helpers/tar-builder.js';

const run = promisify(execFile);
let work: string;
let scratch: string;
let counter = 0;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'lazyroot-tar-archive-'));
  scratch = join(work, 'scratch');
  await mkdir(scratch);
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

async function archiveOf(bytes: Buffer): Promise<TarArchive> {
  const path = join(work, `a-${counter++}.tar`);
  await writeFile(path, bytes);
  return TarArchive.open(path, { tmpDir: scratch, description: `test:${path}` });
}

async function read(archive: TarArchive, path: string, start = 0, end?: number): Promise<string> {
  const size = await archive.size(path);
  assert.notEqual(size, undefined, `${path} should exist`);
  const chunks: Buffer[] = [];
  for await (const chunk of archive.open(path, start, end ?? size!)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString();
}

const longName = `${'long-directory-name/'.repeat(8)}file.txt`;

test('finds members by name, after PAX long names, with ranged reads', async () => {
  const archive = await archiveOf(
    await buildTar([
      dir('a'),
      file('a/one', 'first member'),
      file(longName, 'behind a PAX header'),
      file('x', 'xattr member', { xattrs: { 'user.k': 'v'.repeat(300) } }),
      file('./dotted', 'dot slash'),
      file('empty', ''),
    ]),
  );
  assert.equal(await read(archive, 'a/one'), 'first member');
  assert.equal(await read(archive, longName), 'behind a PAX header');
  assert.equal(await read(archive, 'x'), 'xattr member');
  assert.equal(await read(archive, 'dotted'), 'dot slash');
  assert.equal(await read(archive, './a//one'), 'first member');
  assert.equal(await read(archive, 'a/one', 6, 9), 'mem');
  assert.equal(await read(archive, 'empty'), '');
  assert.equal(await archive.size('a'), undefined, 'a directory is not a file');
  assert.equal(await archive.size('missing'), undefined);
  await archive.close();
});

test('reads GNU tar output, GNU long names included', async () => {
  const tree = join(work, 'gnu-tree');
  await mkdir(join(tree, 'sub'), { recursive: true });
  const longFile = `${'n'.repeat(150)}.txt`;
  await writeFile(join(tree, 'sub', longFile), 'gnu long name');
  await writeFile(join(tree, 'plain'), 'plain');
  const path = join(work, 'gnu.tar');
  await run('tar', ['--format=gnu', '-cf', path, '-C', tree, '.']);
  const archive = await TarArchive.open(path, { tmpDir: scratch, description: 'gnu' });
  assert.equal(await read(archive, `sub/${longFile}`), 'gnu long name');
  assert.equal(await read(archive, 'plain'), 'plain');
});

test('follows symlinks and hard links between members, never out of the archive', async () => {
  const archive = await archiveOf(
    await buildTar([
      file('blobs/sha256/abc', 'layer bytes'),
      symlink('id1/layer.tar', '../blobs/sha256/abc'),
      symlink('abs', '/blobs/sha256/abc'),
      hardlink('hard', 'blobs/sha256/abc'),
      symlink('loop1', 'loop2'),
      symlink('loop2', 'loop1'),
      symlink('escape', '../../../etc/passwd'),
      raw({ name: '../outside', data: 'hostile' }),
    ]),
  );
  assert.equal(await read(archive, 'id1/layer.tar'), 'layer bytes');
  assert.equal(await read(archive, 'abs'), 'layer bytes');
  assert.equal(await read(archive, 'hard'), 'layer bytes');
  await assert.rejects(archive.size('loop1'), /more than 40 links/);
  await assert.rejects(archive.size('escape'), (err: unknown) => isLazyrootError(err, 'HOSTILE_ARCHIVE'));
  // A member named ../outside cannot be looked up: its name could only escape.
  assert.equal(archive.names().includes('outside'), false);
  await assert.rejects(archive.size('../outside'), (err: unknown) => isLazyrootError(err, 'HOSTILE_ARCHIVE'));
});

test('a compressed archive is decompressed once into tmpDir, removed by close()', async () => {
  const tar = await buildTar([file('a', 'compressed member')]);
  for (const compress of [gzip, zstd]) {
    const archive = await archiveOf(compress(tar));
    assert.equal((await readdir(scratch)).length, 1);
    assert.equal(await read(archive, 'a'), 'compressed member');
    await archive.close();
    assert.deepEqual(await readdir(scratch), []);
  }
});

test('truncated, corrupt and non-tar files fail naming the archive', async () => {
  const tar = await buildTar([file('a', 'x'.repeat(5000)), file('b', 'y')]);
  const path = join(work, 'truncated.tar');
  await writeFile(path, tar.subarray(0, 2000));
  await assert.rejects(TarArchive.open(path, { tmpDir: scratch, description: 'oci-archive:/t.tar' }), (err: unknown) => {
    assert.ok(isLazyrootError(err, 'INVALID_DATA'));
    assert.match((err as Error).message, /^oci-archive:\/t\.tar: not a valid tar archive \(truncated\)$/);
    return true;
  });
  await assert.rejects(archiveOf(Buffer.alloc(1024, 'garbage')), /not a valid tar archive/);
  await assert.rejects(archiveOf(gzip(tar).subarray(0, 100)), /cannot decompress \(gzip\)/);
  assert.deepEqual(await readdir(scratch), [], 'a failed open leaves no temp files');
  await assert.rejects(TarArchive.open(join(work, 'absent.tar'), { tmpDir: scratch, description: 'x' }), (err: unknown) =>
    isLazyrootError(err, 'NOT_FOUND'),
  );
});

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import tarStream from 'tar-stream';
import {
  blockdev,
  buildTar,
  chardev,
  dir,
  fifo,
  file,
  gzip,
  hardlink,
  opaque,
  raw,
  symlink,
  whiteout,
  zstd,
} from './tar-builder.js';

interface Member {
  name: string;
  type: string;
  linkname: string | null;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  devmajor: number;
  devminor: number;
  pax: Record<string, string> | null;
  data: string;
}

async function readMembers(tar: Buffer): Promise<Member[]> {
  const extract = tarStream.extract();
  const out: Member[] = [];
  Readable.from([tar]).pipe(extract as unknown as NodeJS.WritableStream);
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const chunk of entry) chunks.push(chunk as Buffer);
    const h = entry.header;
    out.push({
      name: h.name,
      type: h.type,
      linkname: h.linkname,
      mode: h.mode,
      uid: h.uid,
      gid: h.gid,
      size: h.size,
      devmajor: h.devmajor,
      devminor: h.devminor,
      pax: (h.pax as Record<string, string> | null) ?? null,
      data: Buffer.concat(chunks).toString(),
    });
  }
  return out;
}

test('every helper writes the member it names', async () => {
  const tar = await buildTar([
    dir('etc', { mode: 0o700 }),
    file('etc/hosts', 'localhost\n', { uid: 1000, gid: 100, uname: 'u', gname: 'g' }),
    symlink('bin', 'usr/bin'),
    hardlink('etc/hosts2', 'etc/hosts'),
    whiteout('etc/old.conf'),
    whiteout('top'),
    opaque('var/cache/'),
    fifo('run/fifo'),
    chardev('dev/null', 1, 3),
    blockdev('dev/sda', 8, 0),
    file('xattr', 'x', { xattrs: { 'user.key': 'value', 'security.capability': 'caps' } }),
  ]);
  const members = await readMembers(tar);
  assert.deepEqual(
    members.map((m) => [m.name, m.type]),
    [
      ['etc/', 'directory'],
      ['etc/hosts', 'file'],
      ['bin', 'symlink'],
      ['etc/hosts2', 'link'],
      ['etc/.wh.old.conf', 'file'],
      ['.wh.top', 'file'],
      ['var/cache/.wh..wh..opq', 'file'],
      ['run/fifo', 'fifo'],
      ['dev/null', 'character-device'],
      ['dev/sda', 'block-device'],
      ['xattr', 'file'],
    ],
  );
  const byName = new Map(members.map((m) => [m.name, m]));
  assert.equal(byName.get('etc/')?.mode, 0o700);
  assert.equal(byName.get('etc/hosts')?.data, 'localhost\n');
  assert.equal(byName.get('etc/hosts')?.uid, 1000);
  assert.equal(byName.get('etc/hosts')?.gid, 100);
  assert.equal(byName.get('bin')?.linkname, 'usr/bin');
  assert.equal(byName.get('etc/hosts2')?.linkname, 'etc/hosts');
  assert.equal(byName.get('dev/null')?.devmajor, 1);
  assert.equal(byName.get('dev/null')?.devminor, 3);
  assert.equal(byName.get('dev/sda')?.devmajor, 8);
  assert.equal(byName.get('xattr')?.pax?.['SCHILY.xattr.user.key'], 'value');
  assert.equal(byName.get('xattr')?.pax?.['SCHILY.xattr.security.capability'], 'caps');
});

test('GNU tar reads the built archive, long names included', async () => {
  const longName = `${'d'.repeat(120)}/${'f'.repeat(120)}`;
  const tar = await buildTar([dir('a'), file('a/b', 'hello'), file(longName, 'long'), symlink('a/link', 'b')]);
  const listing = spawnSync('tar', ['-tf', '-'], { input: tar });
  assert.equal(listing.status, 0, listing.stderr.toString());
  assert.deepEqual(listing.stdout.toString().trim().split('\n'), ['a/', 'a/b', longName, 'a/link']);
});

test('raw entries keep hostile names byte for byte', async () => {
  const tar = await buildTar([
    file('ok', 'fine'),
    raw({ name: '../escape', data: 'boom' }),
    raw({ name: '/etc/passwd', data: 'root' }),
    raw({ name: 'evil', typeflag: '2', linkname: '../../../../etc/shadow' }),
    raw({ name: 'innocent', pax: { path: '../../pax-escape' }, data: 'p' }),
    raw({ name: Buffer.from('a/./b/../../c') }),
  ]);
  // Headers sit at 512-byte boundaries; find each raw name at the start of one.
  const headerNames: string[] = [];
  for (let off = 0; off + 512 <= tar.length; off += 512) {
    const block = tar.subarray(off, off + 512);
    if (block.subarray(257, 262).toString() !== 'ustar') continue;
    headerNames.push(block.subarray(0, block.indexOf(0)).toString());
  }
  for (const name of ['../escape', '/etc/passwd', 'evil', 'a/./b/../../c']) assert.ok(headerNames.includes(name), name);
  const members = await readMembers(tar);
  assert.deepEqual(
    members.map((m) => m.name),
    ['ok', '../escape', '/etc/passwd', 'evil', '../../pax-escape', 'a/./b/../../c'],
  );
  assert.equal(members[3]?.linkname, '../../../../etc/shadow');
  assert.equal(members[1]?.data, 'boom');
});

test('raw entries can lie about their size and checksum', async () => {
  const lying = await buildTar([raw({ name: 'short', data: 'abc', size: 4096 })]);
  const header = lying.subarray(0, 512);
  assert.equal(parseInt(header.subarray(124, 136).toString(), 8), 4096);
  const badSum = await buildTar([raw({ name: 'x', data: 'abc', checksum: 'invalid' })]);
  await assert.rejects(readMembers(badSum), /checksum|Invalid tar header/i);
});

test('output is deterministic and compresses both ways', async () => {
  const entries = [dir('a'), file('a/b', 'hello'.repeat(100))];
  const one = await buildTar(entries);
  const two = await buildTar(entries);
  assert.ok(one.equals(two));
  assert.equal(one.length % 512, 0);
  assert.ok(gunzipSync(gzip(one)).equals(one));
  const z = zstd(one);
  assert.deepEqual([...z.subarray(0, 4)], [0x28, 0xb5, 0x2f, 0xfd]);
  const back = spawnSync('zstd', ['-d', '-c', '-q'], { input: z });
  assert.ok(back.stdout.equals(one));
});

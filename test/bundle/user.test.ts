import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveUser } from '../../src/bundle/user.js';
import { LazyrootError } from '../../src/errors.js';

const passwd = [
  'root:x:0:0:root:/root:/bin/sh',
  '# a comment',
  'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin',
  'app:x:1000:1000:app:/home/app:/bin/sh',
  'nohome:x:1001:1001:::/bin/sh',
  'broken:x:notanumber:5:::',
  '',
].join('\n');

const group = [
  'root:x:0:',
  'wheel:x:10:root,app',
  'app:x:1000:app',
  'staff:x:50: app , daemon',
  'audio:x:29:daemon',
  'wheel2:x:10:app',
  '',
].join('\n');

/** A rootfs with just /etc/passwd and /etc/group (either left out when undefined). */
async function fakeRootfs(t: { after: (fn: () => Promise<void>) => void }, files: { passwd?: string; group?: string } = { passwd, group }) {
  const dir = await mkdtemp(join(tmpdir(), 'lazyroot-user-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await mkdir(join(dir, 'etc'));
  if (files.passwd !== undefined) await writeFile(join(dir, 'etc/passwd'), files.passwd);
  if (files.group !== undefined) await writeFile(join(dir, 'etc/group'), files.group);
  return dir;
}

function isError(code: string, pattern: RegExp) {
  return (err: unknown) => err instanceof LazyrootError && err.code === code && pattern.test(err.message);
}

test('empty or missing User is root:root with root\'s home and groups', async (t) => {
  const rootfs = await fakeRootfs(t);
  for (const spec of [undefined, '']) {
    assert.deepEqual(await resolveUser(spec, rootfs), { uid: 0, gid: 0, additionalGids: [10], home: '/root' });
  }
});

test('name: uid, gid and home from passwd; supplementary groups list the user', async (t) => {
  const rootfs = await fakeRootfs(t);
  // wheel (10, listed twice under two names) and staff; app's own group is its primary gid.
  assert.deepEqual(await resolveUser('app', rootfs), { uid: 1000, gid: 1000, additionalGids: [10, 50], home: '/home/app' });
  assert.deepEqual(await resolveUser('daemon', rootfs), { uid: 1, gid: 1, additionalGids: [50, 29], home: '/usr/sbin' });
});

test('uid: passwd entry by number when there is one, else gid 0 and no home', async (t) => {
  const rootfs = await fakeRootfs(t);
  assert.deepEqual(await resolveUser('1000', rootfs), { uid: 1000, gid: 1000, additionalGids: [10, 50], home: '/home/app' });
  assert.deepEqual(await resolveUser('4242', rootfs), { uid: 4242, gid: 0, additionalGids: [] });
});

test('name:group and uid:group look the group up in /etc/group', async (t) => {
  const rootfs = await fakeRootfs(t);
  assert.deepEqual(await resolveUser('app:staff', rootfs), { uid: 1000, gid: 50, additionalGids: [10, 1000], home: '/home/app' });
  assert.deepEqual(await resolveUser('4242:audio', rootfs), { uid: 4242, gid: 29, additionalGids: [] });
});

test('uid:gid needs no lookup; name:gid takes the uid from passwd', async (t) => {
  const rootfs = await fakeRootfs(t);
  assert.deepEqual(await resolveUser('4242:4343', rootfs), { uid: 4242, gid: 4343, additionalGids: [] });
  assert.deepEqual(await resolveUser('1000:7', rootfs), { uid: 1000, gid: 7, additionalGids: [10, 1000, 50], home: '/home/app' });
  assert.deepEqual(await resolveUser('app:7', rootfs), { uid: 1000, gid: 7, additionalGids: [10, 1000, 50], home: '/home/app' });
  assert.deepEqual(await resolveUser('0:0', rootfs), { uid: 0, gid: 0, additionalGids: [10], home: '/root' });
});

test('"name:" is read as "name"', async (t) => {
  const rootfs = await fakeRootfs(t);
  assert.deepEqual(await resolveUser('app:', rootfs), await resolveUser('app', rootfs));
});

test('an entry with an empty home gives no home', async (t) => {
  const rootfs = await fakeRootfs(t);
  assert.deepEqual(await resolveUser('nohome', rootfs), { uid: 1001, gid: 1001, additionalGids: [] });
});

test('an unknown user or group is NOT_FOUND, naming the user and the image', async (t) => {
  const rootfs = await fakeRootfs(t);
  const image = { image: 'example.com/app:1' };
  await assert.rejects(resolveUser('ghost', rootfs, image), isError('NOT_FOUND', /^image example\.com\/app:1: User "ghost": user "ghost" not found/));
  await assert.rejects(resolveUser('app:ghosts', rootfs, image), isError('NOT_FOUND', /example\.com\/app:1: User "app:ghosts": group "ghosts" not found/));
  await assert.rejects(resolveUser('1000:ghosts', rootfs, image), isError('NOT_FOUND', /group "ghosts"/));
  // Without an image name, the rootfs is named instead.
  await assert.rejects(resolveUser('ghost', rootfs), isError('NOT_FOUND', new RegExp(`^rootfs ${rootfs}: `)));
});

test('a line that does not parse is skipped, never read as uid 0', async (t) => {
  const rootfs = await fakeRootfs(t);
  await assert.rejects(resolveUser('broken', rootfs), isError('NOT_FOUND', /user "broken"/));
});

test('no /etc/passwd or /etc/group: numbers still work, names are errors', async (t) => {
  const rootfs = await fakeRootfs(t, {});
  assert.deepEqual(await resolveUser(undefined, rootfs), { uid: 0, gid: 0, additionalGids: [] });
  assert.deepEqual(await resolveUser('1000', rootfs), { uid: 1000, gid: 0, additionalGids: [] });
  assert.deepEqual(await resolveUser('1000:1000', rootfs), { uid: 1000, gid: 1000, additionalGids: [] });
  await assert.rejects(resolveUser('app', rootfs, { image: 'scratchy' }), isError('NOT_FOUND', /image scratchy: User "app": .*the rootfs has no \/etc\/passwd/));
  await assert.rejects(resolveUser('0:wheel', rootfs), isError('NOT_FOUND', /the rootfs has no \/etc\/group/));
});

test('malformed User values are INVALID_DATA', async (t) => {
  const rootfs = await fakeRootfs(t);
  for (const spec of ['a:b:c', ':1000', '-1', '2147483648', '0:99999999999']) {
    await assert.rejects(resolveUser(spec, rootfs, { image: 'img' }), isError('INVALID_DATA', /img: invalid User/), spec);
  }
  assert.equal((await resolveUser('2147483647', rootfs)).uid, 2147483647);
});

test('CRLF line endings are tolerated', async (t) => {
  const rootfs = await fakeRootfs(t, { passwd: passwd.replaceAll('\n', '\r\n'), group: group.replaceAll('\n', '\r\n') });
  assert.deepEqual(await resolveUser('app', rootfs), { uid: 1000, gid: 1000, additionalGids: [10, 50], home: '/home/app' });
});

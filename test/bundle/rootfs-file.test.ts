import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readRootfsFile } from '../../src/bundle/rootfs-file.js';
import { resolveUser } from '../../src/bundle/user.js';
import { LazyrootError } from '../../src/errors.js';

type T = { after: (fn: () => Promise<void>) => void };

async function tempDir(t: T, prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A rootfs whose files are given by path; a value `{ link }` makes a symlink. */
async function rootfsWith(t: T, entries: Record<string, string | { link: string }>): Promise<string> {
  const root = await tempDir(t, 'lazyroot-rootfs-');
  for (const [path, content] of Object.entries(entries)) {
    const host = join(root, path);
    await mkdir(join(host, '..'), { recursive: true });
    if (typeof content === 'string') await writeFile(host, content);
    else await symlink(content.link, host);
  }
  return root;
}

/** A passwd file on the host, outside any rootfs: no test may ever read it. */
async function hostPasswd(t: T): Promise<string> {
  const dir = await tempDir(t, 'lazyroot-host-');
  const path = join(dir, 'passwd');
  await writeFile(path, 'intruder:x:4242:4242:host only:/host:/bin/sh\n');
  return path;
}

test('a plain file is read; a missing one is undefined', async (t) => {
  const root = await rootfsWith(t, { 'etc/motd': 'hi\n' });
  assert.equal((await readRootfsFile(root, '/etc/motd'))?.toString(), 'hi\n');
  assert.equal((await readRootfsFile(root, 'etc/motd'))?.toString(), 'hi\n');
  assert.equal(await readRootfsFile(root, '/etc/passwd'), undefined);
  assert.equal(await readRootfsFile(root, '/nope/passwd'), undefined);
  // A file where a directory should be: no such path, as ENOTDIR.
  assert.equal(await readRootfsFile(root, '/etc/motd/passwd'), undefined);
});

test('regression: an absolute symlink /etc/passwd -> /data/passwd resolves inside the rootfs', async (t) => {
  const root = await rootfsWith(t, {
    'etc/passwd': { link: '/data/passwd' },
    'data/passwd': 'app:x:1234:1234::/home/app:/bin/sh\n',
  });
  assert.deepEqual(await resolveUser('app', root), { uid: 1234, gid: 1234, additionalGids: [], home: '/home/app' });
});

test('regression: an absolute symlink to a host file reads the rootfs\'s path, never the host\'s', async (t) => {
  const host = await hostPasswd(t);
  const root = await rootfsWith(t, { 'etc/passwd': { link: host } });
  // The host file exists, but inside the rootfs that path does not.
  assert.equal(await readRootfsFile(root, '/etc/passwd'), undefined);
  await assert.rejects(resolveUser('intruder', root), (err: unknown) => err instanceof LazyrootError && err.code === 'NOT_FOUND');
  // Put a file at that path inside the rootfs: that one is read.
  await mkdir(join(root, host, '..'), { recursive: true });
  await writeFile(join(root, host), 'intruder:x:7:7::/inside:/bin/sh\n');
  assert.deepEqual(await resolveUser('intruder', root), { uid: 7, gid: 7, additionalGids: [], home: '/inside' });
});

test('regression: ../../../../etc/passwd never climbs out of the rootfs', async (t) => {
  // From /etc, any number of .. stops at the rootfs's /, so this link points at itself.
  const root = await rootfsWith(t, { 'etc/passwd': { link: '../../../../etc/passwd' } });
  await assert.rejects(readRootfsFile(root, '/etc/passwd'), /too many levels of symbolic links/);
  await assert.rejects(resolveUser('root', root, { image: 'evil:1' }), (err: unknown) => err instanceof LazyrootError && /^image evil:1: .*\/etc\/passwd/.test(err.message));
  await assert.rejects(resolveUser('0', root));
});

test('regression: a relative ../ link to a host file is read at that path inside the rootfs', async (t) => {
  const host = await hostPasswd(t);
  const climb = `${'../'.repeat(30)}${host.slice(1)}`;
  const root = await rootfsWith(t, { 'etc/passwd': { link: climb } });
  assert.equal(await readRootfsFile(root, '/etc/passwd'), undefined);
  await assert.rejects(resolveUser('intruder', root), (err: unknown) => err instanceof LazyrootError && err.code === 'NOT_FOUND');
  assert.deepEqual(await resolveUser('4242', root), { uid: 4242, gid: 0, additionalGids: [] });
});

test('a symlinked directory is followed within the rootfs, and so are chains of links', async (t) => {
  const root = await rootfsWith(t, {
    etc: { link: '/private/etc' },
    'private/etc/passwd': { link: '../../usr/share/passwd' },
    'usr/share/passwd': { link: 'passwd.real' },
    'usr/share/passwd.real': 'svc:x:99:98::/srv:/bin/sh\n',
    'private/etc/group': 'extra:x:500:svc\n',
  });
  assert.deepEqual(await resolveUser('svc', root), { uid: 99, gid: 98, additionalGids: [500], home: '/srv' });
});

test('a directory symlink pointing at the host\'s /etc stays in the rootfs', async (t) => {
  const root = await rootfsWith(t, { etc: { link: '/../../etc' } });
  // /etc -> /etc inside the rootfs is a loop, not the host's /etc.
  await assert.rejects(readRootfsFile(root, '/etc/passwd'), /too many levels/);
});

test('a FIFO or a directory at /etc/passwd is refused, not read (and does not hang)', async (t) => {
  const root = await rootfsWith(t, { 'etc/group': '' });
  execFileSync('mkfifo', [join(root, 'etc/passwd')]);
  await assert.rejects(readRootfsFile(root, '/etc/passwd'), /not a regular file/);
  await assert.rejects(resolveUser('app', root, { image: 'fifo:1' }), /image fifo:1: .*\/etc\/passwd: not a regular file/);
  await rm(join(root, 'etc/passwd'));
  await mkdir(join(root, 'etc/passwd'));
  await assert.rejects(readRootfsFile(root, '/etc/passwd'), /not a regular file/);
});

test('a dangling symlink is a missing file', async (t) => {
  const root = await rootfsWith(t, { 'etc/passwd': { link: '/nowhere/passwd' } });
  assert.equal(await readRootfsFile(root, '/etc/passwd'), undefined);
  assert.deepEqual(await resolveUser('0', root), { uid: 0, gid: 0, additionalGids: [] });
});

test('files above the size limit are refused', async (t) => {
  const root = await rootfsWith(t, { 'etc/passwd': 'x'.repeat(100) });
  await assert.rejects(readRootfsFile(root, '/etc/passwd', { maxBytes: 10 }), /larger than 10 bytes/);
});

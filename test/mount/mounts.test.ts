import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mountsUnder, overlayMount, performMount, unmount } from '../../src/mount/mounts.js';
import { isLazyrootError } from '../../src/errors.js';
import { missingRequirements } from '../helpers/requirements.js';

const missing = missingRequirements({ root: true });
if (missing.length && process.env.CI) throw new Error(`CI: mount tests need ${missing.join(', ')}`);
const skip = missing.length ? `needs ${missing.join(', ')}` : false;

test('overlayfs by the mount(2) and umount2(2) calls: relative dirs resolved against cwd, the merged view, unmount, then not mounted', { skip }, async () => {
  const work = await mkdtemp(join(tmpdir(), 'lazyroot-mounts-'));
  try {
    for (const d of ['lower1', 'lower2', 'upper', 'work', 'merged']) await mkdir(join(work, d));
    await writeFile(join(work, 'lower1', 'a'), 'from lower1');
    await writeFile(join(work, 'lower2', 'a'), 'from lower2');
    await writeFile(join(work, 'lower2', 'b'), 'only in lower2');
    const target = join(work, 'merged');
    // Lowerdirs relative to the store root (cwd), top first, as rootfs.ts passes them.
    await performMount(overlayMount({ lowerdirs: ['lower1', 'lower2'], upperdir: join(work, 'upper'), workdir: join(work, 'work'), target }), work);
    assert.deepEqual(await mountsUnder(target), [target]);
    assert.equal(await readFile(join(target, 'a'), 'utf8'), 'from lower1');
    assert.equal(await readFile(join(target, 'b'), 'utf8'), 'only in lower2');
    await writeFile(join(target, 'c'), 'written');
    assert.equal(await readFile(join(work, 'upper', 'c'), 'utf8'), 'written');
    await unmount(target);
    assert.deepEqual(await mountsUnder(target), []);
    // Unmounting what is not mounted (or not there) is nothing to do, as with umount's "not mounted".
    await unmount(target);
    await unmount(join(work, 'no-such-dir'));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
});

test('a mount the kernel refuses says which mount and why', { skip }, async () => {
  const work = await mkdtemp(join(tmpdir(), 'lazyroot-mounts-'));
  try {
    const target = join(work, 'merged');
    await mkdir(target);
    await assert.rejects(performMount(overlayMount({ lowerdirs: [join(work, 'missing-lower')], target })), (err: unknown) => {
      assert.ok(isLazyrootError(err, 'FAILED_PRECONDITION'));
      assert.match((err as Error).message, new RegExp(`^mount overlay on ${target}: .*lowerdir=${join(work, 'missing-lower')}`));
      return true;
    });
    assert.deepEqual(await mountsUnder(target), []);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
});

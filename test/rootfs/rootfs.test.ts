import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { lstat, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Store } from '../../src/store/store.js';
import { createRootfs, deleteRootfs, rootfsStats } from '../../src/rootfs/rootfs.js';
import { cleanStore } from '../../src/rootfs/clean.js';
import { mountsUnder } from '../../src/mount/mounts.js';
import { pullReference } from '../../src/store/operations.js';
import type { LazyrootError } from '../../src/errors.js';
import { buildImage, writeOciLayout, type ImageSpec } from '../helpers/image-builder.js';
import { buildTar, dir, file } from '../helpers/tar-builder.js';
import { missingRequirements } from '../helpers/requirements.js';

const missing = missingRequirements({ root: true, tools: ['mount'] });
if (missing.length && process.env.CI) throw new Error(`CI: rootfs tests need ${missing.join(', ')}`);

describe('rootfs on kernel overlayfs', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let store: Store;
  let spec: ImageSpec;
  let ref: string;
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-rootfs-'));
    store = await Store.open(join(work, 'store'));
    spec = {
      layers: [
        { tar: await buildTar([dir('etc'), file('etc/os-release', 'ID=test\n'), dir('home'), dir('home/u', { uid: 1000, gid: 1000 }), file('home/u/f', 'mine', { uid: 1000, gid: 1001 })]), compression: 'gzip' },
        { tar: await buildTar([file('etc/motd', 'hi\n')]), compression: 'none' },
      ],
      config: { config: { Env: ['PATH=/bin', 'A=1'] } },
      refName: 'v1',
    };
    await writeOciLayout(join(work, 'layout'), [spec]);
    ref = `oci:${join(work, 'layout')}:v1`;
  });
  after(async () => {
    for (const r of store.db.listRootfs()) await deleteRootfs(store, r.id);
    store.close();
    await rm(work, { recursive: true, force: true });
  });

  test('create mounts the merged image and prints a GrootFS spec fragment; delete removes it', async () => {
    const { spec: fragment, rootfs } = await createRootfs(store, ref, 'one');
    const merged = join(store.paths.root, 'rootfs/one/merged');
    assert.deepEqual(fragment, { root: { path: merged }, process: { env: ['PATH=/bin', 'A=1'] }, mounts: [] });
    assert.equal(rootfs.state, 'ready');
    assert.deepEqual(await mountsUnder(merged), [merged]);
    assert.equal(await readFile(join(merged, 'etc/motd'), 'utf8'), 'hi\n');
    await writeFile(join(merged, 'etc/written'), 'by the container');
    assert.equal(await readFile(join(store.paths.root, 'rootfs/one/upper/etc/written'), 'utf8'), 'by the container');
    const stats = await rootfsStats(store, 'one');
    assert.ok(stats.disk_usage.exclusive_bytes_used > 0);
    assert.ok(stats.disk_usage.total_bytes_used > stats.disk_usage.exclusive_bytes_used);
    await assert.rejects(createRootfs(store, ref, 'one'), (e: LazyrootError) => e.code === 'ALREADY_EXISTS' && /rootfs one: already exists/.test(e.message));
    await deleteRootfs(store, 'one');
    assert.deepEqual(await mountsUnder(merged), []);
    assert.equal(existsSync(join(store.paths.root, 'rootfs/one')), false);
    await assert.rejects(deleteRootfs(store, 'one'), /rootfs one: no such rootfs/);
  });

  test('--without-mount lists the overlay mount to make, with absolute paths', async () => {
    const { spec: fragment } = await createRootfs(store, ref, 'unmounted', { withoutMount: true });
    assert.equal(fragment.mounts.length, 1);
    const m = fragment.mounts[0]!;
    assert.equal(m.type, 'overlay');
    const lower = m.options.find((o) => o.startsWith('lowerdir='))!.slice('lowerdir='.length).split(':');
    assert.equal(lower.length, 2);
    for (const l of lower) assert.ok(l.startsWith('/') && existsSync(join(l, 'etc')), l);
    assert.deepEqual(await mountsUnder(join(store.paths.root, 'rootfs/unmounted')), []);
    await deleteRootfs(store, 'unmounted');
  });

  test('--uid-mapping/--gid-mapping: the rootfs shows mapped owners; the identity layers are untouched', async () => {
    const mapping = { uids: [{ containerId: 0, hostId: 100000, size: 65536 }], gids: [{ containerId: 0, hostId: 200000, size: 65536 }] };
    await createRootfs(store, ref, 'mapped', { mapping });
    const merged = join(store.paths.root, 'rootfs/mapped/merged');
    const root = await lstat(join(merged, 'etc/os-release'));
    assert.deepEqual([root.uid, root.gid], [100000, 200000]);
    const mine = await lstat(join(merged, 'home/u/f'));
    assert.deepEqual([mine.uid, mine.gid], [101000, 201001]);
    await createRootfs(store, ref, 'plain');
    const plain = await lstat(join(store.paths.root, 'rootfs/plain/merged/home/u/f'));
    assert.deepEqual([plain.uid, plain.gid], [1000, 1001]);
    const layerDirs = await readdir(store.paths.layers);
    assert.equal(layerDirs.filter((d) => d.includes('-map-')).length, 2, 'mapped copies cached per mapping');
    await deleteRootfs(store, 'mapped');
    await deleteRootfs(store, 'plain');
  });

  test('a layer whose content does not match its diff ID fails create, leaving no rootfs and no layer', async () => {
    const lying: ImageSpec = { ...spec, refName: 'lie', config: { rootfs: { type: 'layers', diff_ids: [buildImage(spec).diffIds[1]!, buildImage(spec).diffIds[0]!] } } };
    await writeOciLayout(join(work, 'lying'), [lying]);
    const before = await readdir(store.paths.layers).catch(() => []);
    await assert.rejects(createRootfs(store, `oci:${join(work, 'lying')}:lie`, 'liar'), (e: LazyrootError) => {
      assert.equal(e.code, 'DIGEST_MISMATCH');
      assert.match(e.message, /^create rootfs liar: image sha256:[0-9a-f]{12}: layer 1\/2 \(chain sha256:[0-9a-f]{12}\): uncompressed content vs the config's diff ID: digest mismatch/);
      return true;
    });
    assert.equal(store.db.rootfs('liar'), undefined);
    assert.deepEqual(await readdir(store.paths.layers), before);
  });

  test('clean honours the threshold and never removes what a rootfs uses', async () => {
    const other: ImageSpec = { layers: [{ tar: await buildTar([file('other', 'x'.repeat(100_000))]), compression: 'gzip' }], refName: 'other' };
    await writeOciLayout(join(work, 'other'), [other]);
    await createRootfs(store, ref, 'keeper');
    await createRootfs(store, `oci:${join(work, 'other')}:other`, 'temp');
    await deleteRootfs(store, 'temp');
    const skipped = await cleanStore(store, { thresholdBytes: 2 ** 40 });
    assert.equal(skipped.cleaned, false);
    assert.ok(store.findImage(`oci:${join(work, 'other')}:other`), 'nothing removed under the threshold');
    const result = await cleanStore(store, { thresholdBytes: 0 });
    assert.equal(result.cleaned, true);
    // The other image, and the one pulled by the failed create above: no rootfs uses them.
    assert.ok(result.removedImages.includes(buildImage(other).configDigest));
    assert.ok(!result.removedImages.includes(buildImage(spec).configDigest));
    const keeperLayers = store.db.rootfs('keeper')!.layerDirs;
    assert.ok(keeperLayers.every((l) => !result.removedLayers.includes(l)), 'layers of a live rootfs stay');
    assert.ok(result.removedLayers.some((l) => l.includes('-map-')), 'unused mapped copies go');
    assert.deepEqual(await readdir(store.paths.layers), keeperLayers.slice().sort());
    assert.ok(store.findImage(ref), 'the image of a live rootfs stays');
    assert.equal(await readFile(join(store.paths.root, 'rootfs/keeper/merged/etc/motd'), 'utf8'), 'hi\n');
    assert.ok(existsSync(store.blobs.path(buildImage(spec).layerDigests[0]!)));
    assert.ok(!existsSync(store.blobs.path(buildImage(other).layerDigests[0]!)));
    await assert.rejects(store.removeImage(ref), (e: LazyrootError) => e.code === 'IN_USE' && /in use by rootfs keeper/.test(e.message));
    await deleteRootfs(store, 'keeper');
  });

  test('clean spares what a rootfs still being created by a live process uses, and only that', async () => {
    const spec2: ImageSpec = { layers: [{ tar: await buildTar([file('wip', 'x')]), compression: 'gzip' }], refName: 'wip' };
    await writeOciLayout(join(work, 'wip'), [spec2]);
    const image = (await pullReference(store, `oci:${join(work, 'wip')}:wip`)).image;
    // Another process mid-create: it has registered the rootfs (as create does first) and is busy.
    const storeModule = join(process.cwd(), 'dist', 'src', 'store', 'store.js');
    const script = `const { Store } = await import(${JSON.stringify(storeModule)});
      const s = await Store.open(${JSON.stringify(store.paths.root)});
      s.db.insertRootfs({ id: 'wip', imageId: ${JSON.stringify(image.id)}, driver: 'overlay', mapping: null, layerDirs: [], mountPoint: null });
      console.log('registered'); setInterval(() => {}, 1000);`;
    const creator = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const gone = new Promise((r) => creator.on('close', r));
    await new Promise<void>((r) => creator.stdout.once('data', () => r()));
    try {
      assert.deepEqual([store.db.rootfs('wip')?.state, store.db.rootfs('wip')?.pid], ['creating', creator.pid]);
      const during = await cleanStore(store, { thresholdBytes: 0 });
      assert.ok(!during.removedImages.includes(image.id), 'the image a live creator is using stays');
      assert.ok(store.findImage(image.id));
    } finally {
      creator.kill('SIGKILL');
      await gone;
    }
    // The creator died before finishing: its claim is void, and the image can go.
    const after = await cleanStore(store, { thresholdBytes: 0 });
    assert.ok(after.removedImages.includes(image.id));
    store.db.deleteRootfs('wip');
  });

  test('a rootfs ID that could escape the store is refused', async () => {
    for (const bad of ['../x', 'a/b', '', '.hidden']) {
      await assert.rejects(createRootfs(store, ref, bad), (e: LazyrootError) => e.code === 'INVALID_ARGUMENT');
    }
  });

  test('pulled images are created from the store without their source', async () => {
    const fresh = await Store.open(join(work, 'store2'));
    try {
      await pullReference(fresh, ref);
      await rm(join(work, 'layout-copy'), { recursive: true, force: true });
      const { spec: fragment } = await createRootfs(fresh, ref, 'x');
      assert.equal(await readFile(join(fragment.root.path, 'etc/os-release'), 'utf8'), 'ID=test\n');
      await deleteRootfs(fresh, 'x');
    } finally {
      fresh.close();
    }
  });
});

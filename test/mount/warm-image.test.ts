import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mountImageLazily } from '../../src/mount/lazy-mount.js';
import { serveWarmImage } from '../../src/mount/warm-image.js';
import { exerciseFirstMountStages } from '../../src/mount/warm-up.js';
import { Store } from '../../src/store/store.js';
import { missingRequirements } from '../helpers/requirements.js';

const missing = missingRequirements({ root: true, fuse: true });
if (process.env.CI && missing.length) throw new Error(`warm image test needs ${missing.join(', ')} under CI=true`);

/** Every regular file under `root`, read whole (symbolic links followed). */
async function readAll(root: string, dir = ''): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const e of await readdir(join(root, dir), { withFileTypes: true })) {
    const path = dir ? `${dir}/${e.name}` : e.name;
    if (e.isDirectory()) for (const [p, b] of await readAll(root, path)) out.set(p, b);
    else out.set(path, await readFile(join(root, path)));
  }
  return out;
}

/**
 * A standby warms up on a made-up eStargz image (warm-up.ts), and a warm-up
 * that fails fails silently (it costs only warmth). So the image is checked
 * here: it mounts, every file reads (tar headers agree with the TOC), and
 * once prefetch has it whole its tar stream agrees with the TOC entry by
 * entry — with the entry kinds ctr-remote writes (symbolic links, chunked
 * files, the landmark).
 */
describe('the standby\'s warm-up image', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  test('mounts lazily, every file reads, and the whole layers agree with their TOCs', async () => {
    const work = await mkdtemp(join(tmpdir(), 'lazyroot-warm-image-'));
    const image = await serveWarmImage();
    const store = await Store.open(join(work, 'store'));
    const target = join(work, 'mnt');
    await mkdir(target);
    try {
      const mounted = await mountImageLazily(store, image.ref, target, { registry: { insecure: true }, prefetch: true, prefetchDelayMs: 0 });
      try {
        const files = await readAll(target);
        for (const path of image.files) assert.ok(files.has(path), `${path} is in the tree`);
        assert.ok(!files.has('.no.prefetch.landmark'), 'the landmark is not part of the rootfs');
        assert.equal(files.get('usr/lib/d10/big')?.length, 20_000, 'a file in five chunks reads whole');
        assert.deepEqual(files.get('usr/lib/d16/l16'), files.get('usr/lib/d16/f16'), 'a symbolic link reads as its target');
        assert.ok(!files.has('usr/lib/d3/f1'), 'the whiteout of the upper layer hides the file');
        const began = Date.now();
        while (!mounted.stats().complete && Date.now() - began < 30_000) await new Promise((r) => setTimeout(r, 50));
        assert.equal(mounted.stats().complete, true, 'prefetch has both layers, checked whole against their TOCs');
        assert.equal(mounted.stats().fs.errors, 0);
        // Read again once whole: a layer whose tar disagreed with its TOC would be refused now (EIO).
        assert.equal((await readAll(target)).size, files.size);
      } finally {
        await mounted.unmount();
      }
    } finally {
      store.close();
      await image.close();
      await rm(work, { recursive: true, force: true });
    }
  });
});

/**
 * A warm-up also runs a first mount's CPU-bound stages over the image's
 * layers again and again in memory (warm-up.ts). A failure there would cost
 * only warmth, silently: so the stages are checked to run through and to
 * build the image's tree.
 */
describe('the warm-up\'s first-mount stages', () => {
  test('parse both TOCs, merge them and build the tree the mount serves', async () => {
    const image = await serveWarmImage();
    try {
      const tree = await exerciseFirstMountStages(image.layerBlobs, 3);
      assert.ok(tree, 'a tree was built');
      for (const path of image.files) assert.ok(tree.lookup(path), `${path} is in the tree`);
      assert.equal(tree.lookup('usr/lib/d10/big')?.size, 20_000);
      assert.equal(tree.lookup('usr/lib/d3/f1'), undefined, 'the whiteout of the upper layer hides the file');
      assert.equal(tree.lookup('.no.prefetch.landmark'), undefined);
    } finally {
      await image.close();
    }
  });
});

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { lstat, mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import Database from 'better-sqlite3';
import { Store } from '../../src/store/store.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { buildImage, type ImageSpec } from '../helpers/image-builder.js';
import { buildTar, dir, file } from '../helpers/tar-builder.js';
import { busyboxImageSpec } from '../helpers/sample-images.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';

/**
 * What a lazy mount leaves in the store — partial blobs, their range rows in
 * SQLite, layer indexes — goes with `rmi` and with `clean`, and the store is
 * back to the bytes it had before. SQLite's own file is the one exception:
 * rows deleted free pages that SQLite keeps in meta.db for reuse (no VACUUM:
 * it would rewrite the whole database under a lock that live mount daemons
 * wait on), so meta.db, -wal and -shm are left out of the byte count and the
 * tables are checked to be empty instead.
 */

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry'] });
if (missing.length && process.env.CI) throw new Error(`CI: garbage collection tests need ${missing.join(', ')}`);

const sqliteFiles = new Set(['meta.db', 'meta.db-wal', 'meta.db-shm']);

/**
 * Bytes on disk (allocated blocks) of every path in the store that has any,
 * SQLite's files aside. Empty files take none, and may come and stay: the
 * store's lock file, the mount daemons' log when nothing went wrong.
 */
async function usage(root: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  const walk = async (path: string, device?: number): Promise<void> => {
    const st = await lstat(path);
    if (device !== undefined && st.dev !== device) return; // a mount inside the store
    if (st.blocks > 0) out[relative(root, path) || '.'] = st.blocks * 512;
    if (!st.isDirectory()) return;
    for (const name of await readdir(path)) {
      if (path === root && sqliteFiles.has(name)) continue;
      await walk(join(path, name), st.dev);
    }
  };
  await walk(root);
  return out;
}

const total = (u: Record<string, number>) => Object.values(u).reduce((a, b) => a + b, 0);

function query<T>(root: string, fn: (db: Database.Database) => T): T {
  const db = new Database(join(root, 'meta.db'), { readonly: true, fileMustExist: true });
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

/** Rows of every table that has any. */
function nonEmptyTables(root: string): Record<string, number> {
  return query(root, (db) => {
    const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as Array<{ name: string }>).map((t) => t.name);
    const counts: Record<string, number> = {};
    for (const t of tables) {
      const { n } = db.prepare(`SELECT COUNT(*) AS n FROM "${t}"`).get() as { n: number };
      if (n > 0) counts[t] = n;
    }
    return counts;
  });
}

const rangeRows = (root: string, digest: string) => query(root, (db) => (db.prepare('SELECT COUNT(*) AS n FROM blob_ranges WHERE digest = ?').get(digest) as { n: number }).n);
const hex = (digest: string) => digest.slice('sha256:'.length);
const exists = (path: string) => lstat(path).then(
  () => true,
  () => false,
);

function noise(seed: string, size: number): Buffer {
  const blocks: Buffer[] = [];
  for (let i = 0; i * 64 < size; i++) blocks.push(createHash('sha512').update(`${seed}/${i}`).digest());
  return Buffer.concat(blocks).subarray(0, size);
}

async function readAt(path: string, position: number, length: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buffer, 0, length, position);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

function ok(r: { code: number | null; stderr: string; stdout: string }, what: string): string {
  assert.equal(r.code, 0, `${what}: ${r.stderr}`);
  return r.stdout;
}

const fakeDigest = (seed: string) => `sha256:${createHash('sha256').update(seed).digest('hex')}`;

describe('garbage collection of partial blobs, range rows and indexes (no mounts)', () => {
  test('what no image and no live lease names goes; what an image or a live lease names, and a live writer’s temp file, stay', async () => {
    const root = await mkdtemp(join(tmpdir(), 'lazyroot-gc-unit-'));
    const store = await Store.open(root);
    try {
      const [kept, leased, orphan] = ['kept', 'leased', 'orphan'].map(fakeDigest) as [string, string, string];
      const imageId = fakeDigest('config');
      store.db.recordImage({
        id: imageId,
        name: 'example.com/kept:1',
        manifestDigest: fakeDigest('manifest'),
        manifestMediaType: 'application/vnd.oci.image.manifest.v1+json',
        platform: 'linux/amd64',
        size: 1,
        layers: [{ chainId: fakeDigest('diff'), parentChainId: null, diffId: fakeDigest('diff'), diffIdVerified: false, blob: { digest: kept, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', size: 10 } }],
        blobs: [],
      });
      const lease = store.db.createLease();
      store.db.addToLease(lease, [leased]);
      const deadPid = spawnSync('true').pid!;
      const files = (digest: string) => ({
        partial: store.paths.partialBlob(digest),
        index: store.paths.index(digest),
        local: `${store.paths.index(digest)}.local`,
        tar: `${store.paths.index(digest)}.tar`,
      });
      for (const digest of [kept, leased, orphan]) {
        for (const path of Object.values(files(digest))) {
          await mkdir(dirname(path), { recursive: true });
          await writeFile(path, 'x');
        }
        store.db.setBlobRanges(digest, [[0, 1]]);
      }
      const liveTemp = `${store.paths.index(orphan)}.tar.${process.pid}.tmp`;
      const deadTemp = `${store.paths.index(orphan)}.tar.${deadPid}.tmp`;
      const strayBlob = store.paths.blob(orphan);
      for (const path of [liveTemp, deadTemp, strayBlob]) await writeFile(path, 'x');
      // Whole-file writes (a mount's tree cache, stats) go through tmp/ as NAME.PID.RAND.tmp; a download resumes.
      const liveWholeFile = join(store.paths.tmp, `${hex(imageId)}.tree.${process.pid}.0a1b2c3d.tmp`);
      const deadWholeFile = join(store.paths.tmp, `${hex(imageId)}.tree.${deadPid}.0a1b2c3d.tmp`);
      const download = store.paths.blobDownload(orphan);
      for (const path of [liveWholeFile, deadWholeFile, download]) await writeFile(path, 'x');
      store.db.setBlobRanges(fakeDigest('rows only'), [[0, 5]]);

      const { images, garbage } = await store.pruneImages(new Set([imageId]));
      assert.deepEqual(images, []);
      assert.deepEqual(garbage.blobs, [orphan], 'a blob file no row names and nothing uses');
      assert.deepEqual([...garbage.partialBlobs].sort(), [orphan, fakeDigest('rows only')].sort());
      assert.deepEqual(garbage.indexes, [orphan]);
      for (const digest of [kept, leased]) {
        for (const [kind, path] of Object.entries(files(digest))) assert.ok(await exists(path), `${kind} of ${digest === kept ? 'an image' : 'a leased'} layer stays`);
        assert.deepEqual(store.db.blobRanges(digest), [[0, 1]]);
      }
      for (const path of [...Object.values(files(orphan)), deadTemp, strayBlob]) assert.equal(await exists(path), false, `${path} goes`);
      assert.ok(await exists(liveTemp), 'a temp file whose writer is alive stays');
      assert.equal(await exists(deadWholeFile), false, "a whole-file write's temp file whose writer is gone goes");
      assert.ok(await exists(liveWholeFile), "a whole-file write's temp file whose writer is alive stays");
      assert.ok(await exists(download), 'a download in progress stays (the next pull resumes it)');
      assert.deepEqual(store.db.rangeDigests().sort(), [kept, leased].sort());

      // The lease dropped (its mount ended): the next collection takes the leased layer too.
      store.db.dropLease(lease);
      const next = await store.pruneImages(new Set([imageId]));
      assert.deepEqual(next.garbage.partialBlobs, [leased]);
      assert.deepEqual(next.garbage.indexes, [leased]);
    } finally {
      store.close();
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe('lazy mounts give their disk back: rmi and clean remove partial blobs, indexes and range rows', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let registry: TestRegistry;
  const big: Record<string, Buffer> = {};
  const mounts: Array<{ store: string; dir: string }> = [];
  const rootfses: Array<{ store: string; id: string }> = [];

  /** Images a, b, c: the busybox layer they share, and a data layer of their own (6 MiB of noise, then a small file). */
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-gc-'));
    registry = await startRegistry();
    const base = (await busyboxImageSpec('x')).layers[0]!;
    for (const name of ['a', 'b', 'c']) {
      big[name] = noise(name, 6 << 20);
      const spec: ImageSpec = {
        layers: [
          base,
          {
            tar: await buildTar([dir('data'), file('data/big.bin', big[name]!), file('data/small.txt', `small ${name}\n`), dir('etc'), file('etc/motd', `image ${name}\n`)]),
            compression: 'gzip',
          },
        ],
        config: { config: { Cmd: ['/bin/cat', '/etc/motd'], Env: ['PATH=/bin'] } },
        refName: name,
      };
      await registry.pushImage(`gc/${name}`, 'v1', buildImage(spec));
    }
  });

  after(async () => {
    for (const m of mounts) await lazyroot(['--store', m.store, 'umount', m.dir]);
    for (const r of rootfses) await lazyroot(['--store', r.store, 'delete', r.id]);
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  const ref = (name: string) => `docker://${registry.host}/gc/${name}:v1`;

  /** A fresh store, opened once and nothing pulled: the bytes to come back to. */
  async function freshStore(name: string): Promise<{ store: string; baseline: Record<string, number> }> {
    const store = join(work, name);
    (await Store.open(store)).close();
    return { store, baseline: await usage(store) };
  }

  /** Span-indexes the image (so reads fetch ranges, not whole layers) and mounts it without prefetch. */
  async function lazyMount(store: string, name: string): Promise<string> {
    ok(await lazyroot(['--store', store, 'index', ref(name)]), `index ${name}`);
    const target = join(work, `mnt-${relative(work, store)}-${name}`);
    await mkdir(target, { recursive: true });
    ok(await lazyroot(['--store', store, 'mount', '--no-prefetch', ref(name), target]), `mount ${name}`);
    mounts.push({ store, dir: target });
    return target;
  }

  async function umount(store: string, target: string): Promise<void> {
    ok(await lazyroot(['--store', store, 'umount', target]), `umount ${target}`);
    mounts.splice(
      mounts.findIndex((m) => m.dir === target),
      1,
    );
  }

  async function layerDigests(store: string, name: string): Promise<{ base: string; data: string; id: string }> {
    const inspected = JSON.parse(ok(await lazyroot(['--store', store, 'inspect', ref(name)]), `inspect ${name}`)) as { id: string; layers: Array<{ digest: string }> };
    return { base: inspected.layers[0]!.digest, data: inspected.layers[1]!.digest, id: inspected.id };
  }

  async function assertBackToBaseline(store: string, baseline: Record<string, number>): Promise<void> {
    const now = await usage(store);
    assert.deepEqual(now, baseline, 'every path of the store has the bytes it had before (meta.db aside)');
    assert.equal(total(now), total(baseline));
    assert.deepEqual(nonEmptyTables(store), {}, 'no rows left of the images, their layers, blobs, ranges, leases, mounts');
  }

  test('rmi after a lazy mount removes its partial blobs, layer indexes and range rows; with clean, the store is back to its bytes', async () => {
    const { store, baseline } = await freshStore('store-rmi');
    const target = await lazyMount(store, 'a');
    assert.equal(await readFile(join(target, 'data/small.txt'), 'utf8'), 'small a\n');
    assert.deepEqual(await readAt(join(target, 'data/big.bin'), 1 << 20, 64 << 10), big.a!.subarray(1 << 20, (1 << 20) + (64 << 10)));
    const { data } = await layerDigests(store, 'a');
    await umount(store, target);

    // What the mount left: a sparse partial blob of the data layer with its range rows, both layers' indexes.
    assert.ok(await exists(join(store, 'partial/sha256', hex(data))), 'a partial blob of the data layer');
    assert.ok(rangeRows(store, data) > 0, 'range rows of the data layer');
    const indexFiles = await readdir(join(store, 'indexes/sha256'));
    assert.equal(indexFiles.filter((n) => !n.endsWith('.tree') && !n.endsWith('.profile')).length, 2, 'an index per layer');
    assert.equal(indexFiles.filter((n) => n.endsWith('.profile')).length, 1, "the image's access profile, recorded by its first mount");
    // (and the image's merged tree, `.tree`, kept for the next mount: written in the background, so not counted here)
    const used = total(await usage(store)) - total(baseline);
    console.log(`# the mount left ${used} bytes in the store (meta.db aside)`);
    assert.ok(used > 0);

    const removed = ok(await lazyroot(['--store', store, 'rmi', ref('a')]), 'rmi');
    assert.match(removed, /^deleted sha256:[0-9a-f]{64} \(\d+ blobs freed, [12] partly fetched blobs, 2 layer indexes\)$/m);
    assert.deepEqual(await readdir(join(store, 'partial/sha256')), []);
    assert.deepEqual(await readdir(join(store, 'indexes/sha256')), []);
    assert.equal(rangeRows(store, data), 0);
    ok(await lazyroot(['--store', store, 'clean']), 'clean');
    await assertBackToBaseline(store, baseline);
  });

  test('clean --threshold-bytes removes what unused images left, never what a live mount or a lazy rootfs uses; once they are gone, all of it', async () => {
    const { store, baseline } = await freshStore('store-clean');
    // a: a live lazy mount. b: a lazy rootfs. c: mounted, read, unmounted — unused.
    const mountA = await lazyMount(store, 'a');
    assert.equal(await readFile(join(mountA, 'data/small.txt'), 'utf8'), 'small a\n');
    ok(await lazyroot(['--store', store, 'index', ref('b')]), 'index b');
    const spec = JSON.parse(ok(await lazyroot(['--store', store, 'create', '--lazy', ref('b'), 'rb']), 'create --lazy b')) as { root: { path: string } };
    rootfses.push({ store, id: 'rb' });
    assert.equal(await readFile(join(spec.root.path, 'data/small.txt'), 'utf8'), 'small b\n');
    const mountC = await lazyMount(store, 'c');
    assert.equal(await readFile(join(mountC, 'data/small.txt'), 'utf8'), 'small c\n');
    await umount(store, mountC);
    const [a, b, c] = [await layerDigests(store, 'a'), await layerDigests(store, 'b'), await layerDigests(store, 'c')];
    const partialC = join(store, 'partial/sha256', hex(c.data));
    const indexOf = (digest: string) => join(store, 'indexes/sha256', hex(digest));
    assert.ok(await exists(partialC), "c's data layer was fetched in part");
    assert.ok(rangeRows(store, c.data) > 0);

    // Under the threshold: nothing goes.
    const skipped = JSON.parse(ok(await lazyroot(['--store', store, '--json', 'clean', '--threshold-bytes', String(2 ** 50)]), 'clean (under the threshold)')) as {
      cleaned: boolean;
    };
    assert.equal(skipped.cleaned, false);
    assert.ok(await exists(partialC));
    assert.ok(await exists(indexOf(c.data)));

    // Over it: c goes, with its partial blob, range rows and index; a's and b's stay, the shared layer too.
    const cleaned = JSON.parse(ok(await lazyroot(['--store', store, '--json', 'clean', '--threshold-bytes', '0']), 'clean')) as {
      cleaned: boolean;
      removedImages: string[];
      removedPartialBlobs: number;
      removedIndexes: number;
    };
    assert.equal(cleaned.cleaned, true);
    assert.deepEqual(cleaned.removedImages, [c.id]);
    assert.ok(cleaned.removedPartialBlobs >= 1 && cleaned.removedIndexes === 1, JSON.stringify(cleaned));
    assert.equal(await exists(partialC), false);
    assert.equal(await exists(indexOf(c.data)), false);
    assert.equal(rangeRows(store, c.data), 0);
    for (const digest of [a.base, a.data, b.data]) assert.ok(await exists(indexOf(digest)), `index of ${digest} stays`);
    const present = async (digest: string) => (await exists(join(store, 'partial/sha256', hex(digest)))) || (await exists(join(store, 'blobs/sha256', hex(digest))));
    for (const digest of [a.data, b.data]) assert.ok(await present(digest), `bytes of ${digest} stay`);
    // And both still read, bytes not fetched before included.
    assert.deepEqual(await readAt(join(mountA, 'data/big.bin'), 3 << 20, 64 << 10), big.a!.subarray(3 << 20, (3 << 20) + (64 << 10)));
    assert.deepEqual(await readAt(join(spec.root.path, 'data/big.bin'), 2 << 20, 64 << 10), big.b!.subarray(2 << 20, (2 << 20) + (64 << 10)));

    // rmi refuses what is in use.
    const rmiA = await lazyroot(['--store', store, 'rmi', ref('a')]);
    assert.equal(rmiA.code, 1);
    assert.match(rmiA.stderr, /mounted at .*umount it first/);
    const rmiB = await lazyroot(['--store', store, 'rmi', ref('b')]);
    assert.equal(rmiB.code, 1);
    assert.match(rmiB.stderr, /in use by rootfs rb/);

    // Once the mount and the rootfs are gone, clean takes the rest: back to the bytes of the fresh store.
    await umount(store, mountA);
    ok(await lazyroot(['--store', store, 'delete', 'rb']), 'delete rb');
    rootfses.pop();
    const last = JSON.parse(ok(await lazyroot(['--store', store, '--json', 'clean', '--threshold-bytes', '0']), 'clean')) as { removedImages: string[] };
    assert.deepEqual([...last.removedImages].sort(), [a.id, b.id].sort());
    await assertBackToBaseline(store, baseline);
  });
});

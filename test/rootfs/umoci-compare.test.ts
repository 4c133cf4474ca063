import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Store } from '../../src/store/store.js';
import { createRootfs, deleteRootfs } from '../../src/rootfs/rootfs.js';
import { unpackLayer } from '../../src/unpack/unpack-layer.js';
import type { LazyrootError } from '../../src/errors.js';
import { allFeaturesLayout, gnuTarUnpack, umociAllows, type EdgeCaseImage } from '../helpers/edge-case-images.js';
import { checkOutsideUntouched, hostileLayers, type HostileLayer } from '../helpers/hostile-layers.js';
import { writeOciLayout } from '../helpers/image-builder.js';
import { diffTreesReport, snapshotTree, type AllowedDifference } from '../helpers/tree-snapshot.js';
import { umociUnpackWithLog } from '../helpers/umoci.js';
import { missingRequirements } from '../helpers/requirements.js';

const missing = missingRequirements({ root: true, tools: ['umoci', 'mount', 'tar', 'zstd'] });
if (missing.length && process.env.CI) throw new Error(`CI: umoci comparison needs ${missing.join(', ')}`);

/**
 * Where lazyroot's overlay rootfs and umoci's single directory cannot agree,
 * by construction: named here so that any other difference fails the test.
 */
const overlayVsUmoci: AllowedDifference[] = [
  {
    path: /./,
    field: 'hardlinkGroup',
    reason: 'a hardlink in an upper layer to a lower file: overlay diffs hold a copy-up (own inode in the upper); umoci links to the one lower inode',
  },
  { path: /./, field: 'nlink', reason: 'same cause as hardlinkGroup: link counts differ across the copy-up' },
];

/** Images lazyroot refuses on purpose, with a clear error: known gaps, named. */
const lazyrootRefuses: Record<string, { error: RegExp; reason: string }> = {
  'vendor-typeflag': { error: /typeflag lazyroot cannot read \(a vendor extension\)/, reason: "a GNU volume header ('V') means nothing in a rootfs; umoci refuses it too" },
};

describe('rootfs trees equal umoci unpack, entry by entry', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let store: Store;
  let images: EdgeCaseImage[];
  let layoutDir: string;
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-umoci-'));
    store = await Store.open(join(work, 'store'));
    layoutDir = join(work, 'layout');
    images = (await allFeaturesLayout(layoutDir)).images;
  });
  after(async () => {
    for (const r of store.db.listRootfs()) await deleteRootfs(store, r.id);
    store.close();
    await rm(work, { recursive: true, force: true });
  });

  test('every edge-case image', async (t) => {
    for (const image of images) {
      await t.test(image.name, async () => {
        const ref = `oci:${layoutDir}:${image.name}`;
        const refusal = lazyrootRefuses[image.name];
        if (refusal) {
          await assert.rejects(createRootfs(store, ref, `cmp-${image.name}`), (e: LazyrootError) => e.code === 'UNSUPPORTED' && refusal.error.test(e.message));
          return;
        }
        const { spec } = await createRootfs(store, ref, `cmp-${image.name}`);
        const ours = spec.root.path;
        const ourTree = await snapshotTree(ours);
        const entries = new Set(ourTree.map((e) => e.path));
        for (const p of image.expect?.visible ?? []) assert.ok(entries.has(p), `${p} visible`);
        for (const p of image.expect?.hidden ?? []) assert.ok(!entries.has(p), `${p} hidden`);
        for (const p of image.unlikeUmoci?.hidden ?? []) assert.ok(!entries.has(p), `${p} hidden: ${image.unlikeUmoci!.reason}`);
        for (const [p, content] of Object.entries(image.expect?.content ?? {})) assert.equal(await readFile(join(ours, p), 'utf8'), content, p);
        for (const [p, hex] of Object.entries(image.expect?.sha256 ?? {})) {
          assert.equal(createHash('sha256').update(await readFile(join(ours, p))).digest('hex'), hex, p);
        }
        const bundle = join(work, `umoci-${image.name}`);
        if (image.umociFails) {
          await assert.rejects(umociUnpackWithLog(layoutDir, image.name, bundle), image.umociFails.error, `umoci still fails: ${image.umociFails.reason}`);
          if (!image.gnuTarReference) return;
          // umoci cannot be the reference: GNU tar is.
          const gnu = await gnuTarUnpack(image, join(work, `gnutar-${image.name}`));
          const report = diffTreesReport(ourTree, await snapshotTree(gnu), { allow: image.gnuTarReference.quirks });
          assert.deepEqual(report.differences.map((d) => d.message), [], `${image.name}: lazyroot vs GNU tar`);
          return;
        }
        const theirs = (await umociUnpackWithLog(layoutDir, image.name, bundle)).rootfs;
        const report = diffTreesReport(ourTree, await snapshotTree(theirs), { allow: [...overlayVsUmoci, ...umociAllows(image)] });
        assert.deepEqual(report.differences.map((d) => d.message), [], `${image.name}: lazyroot vs umoci`);
        await rm(bundle, { recursive: true, force: true });
      });
    }
  });
});

describe('hostile layers are refused; nothing outside the target changes', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let store: Store;
  let layers: HostileLayer[];
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-hostile-'));
    store = await Store.open(join(work, 'store'));
    await mkdir(join(work, 'outside'));
    layers = await hostileLayers(join(work, 'outside'));
  });
  after(async () => {
    store.close();
    await rm(work, { recursive: true, force: true });
  });

  test('every hostile layer', async (t) => {
    for (const layer of layers) {
      await t.test(layer.name, async () => {
        // The unpacker itself, into a target whose surroundings persist for the check.
        const target = join(work, `target-${layer.name}`, 'diff');
        await mkdir(target, { recursive: true });
        await assert.rejects(unpackLayer(Readable.from([layer.tar]), { target, lowers: [], what: 'hostile layer' }), (err: LazyrootError) => {
          assert.equal(err.code, 'HOSTILE_ARCHIVE', err.message);
          assert.match(err.message, layer.expectError);
          return true;
        });
        assert.deepEqual(await checkOutsideUntouched(layer, target), []);

        // And through `create`: the same refusal, no rootfs, no layer left behind.
        const spec = { layers: [{ tar: layer.tar, compression: 'none' as const }], refName: layer.name };
        const layout = join(work, `layout-${layer.name}`);
        await writeOciLayout(layout, [spec]);
        await assert.rejects(createRootfs(store, `oci:${layout}:${layer.name}`, `evil-${layer.name}`), (err: LazyrootError) => {
          assert.equal(err.code, 'HOSTILE_ARCHIVE', err.message);
          assert.match(err.message, /^create rootfs evil-\S+: image sha256:[0-9a-f]{12}: layer 1\/1 /);
          return true;
        });
        assert.equal(store.db.rootfs(`evil-${layer.name}`), undefined);
        assert.deepEqual(await readdir(store.paths.layers).catch(() => []), []);
        assert.deepEqual(await checkOutsideUntouched(layer, target), []);
      });
    }
  });
});

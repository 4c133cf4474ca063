import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { allFeaturesLayout, gnuTarUnpack, umociAllows, type EdgeCaseImage } from '../helpers/edge-case-images.js';
import { diffTreesReport, snapshotTree, type AllowedDifference } from '../helpers/tree-snapshot.js';
import { umociUnpackWithLog } from '../helpers/umoci.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';

const missing = missingRequirements({ root: true, fuse: true, tools: ['umoci', 'zstd'] });
if (missing.length && process.env.CI) throw new Error(`CI: lazy edge-case tests need ${missing.join(', ')}`);

/** Where the lazy FUSE tree and umoci's directory differ by design, named. */
const fuseVsUmoci: AllowedDifference[] = [];

/** Images whose lazy mount differs from umoci on purpose (beyond the image's own named exceptions). */
const lazyRefuses: Record<string, RegExp> = {
  'vendor-typeflag': /typeflag lazyroot cannot read \(a vendor extension\)/,
};

describe('lazy FUSE mounts of every edge-case image equal umoci unpack', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let layout: string;
  let images: EdgeCaseImage[];
  const store = () => join(work, 'store');
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-lazy-edge-'));
    layout = join(work, 'layout');
    images = (await allFeaturesLayout(layout)).images;
  });
  after(() => rm(work, { recursive: true, force: true }));

  test('every edge-case image', async (t) => {
    for (const image of images) {
      await t.test(image.name, async () => {
        const target = join(work, `mnt-${image.name}`);
        await mkdir(target, { recursive: true });
        const mounted = await lazyroot(['--store', store(), 'mount', `oci:${layout}:${image.name}`, target]);
        const refusal = lazyRefuses[image.name];
        if (refusal) {
          assert.notEqual(mounted.code, 0);
          assert.match(mounted.stderr, refusal);
          return;
        }
        assert.equal(mounted.code, 0, mounted.stderr);
        try {
          const ours = await snapshotTree(target);
          const entries = new Set(ours.map((e) => e.path));
          for (const p of image.expect?.visible ?? []) assert.ok(entries.has(p), `${p} visible`);
          for (const p of image.expect?.hidden ?? []) assert.ok(!entries.has(p), `${p} hidden`);
          for (const p of image.unlikeUmoci?.hidden ?? []) assert.ok(!entries.has(p), `${p} hidden: ${image.unlikeUmoci!.reason}`);
          for (const [p, content] of Object.entries(image.expect?.content ?? {})) {
            const { execFile } = await import('node:child_process');
            // Read in a child: a blocking read of our own mount from this process could deadlock (native-notes/fuse-native.md).
            const got = await new Promise<string>((resolve, reject) => execFile('cat', [join(target, p)], (err, out) => (err ? reject(err) : resolve(out))));
            assert.equal(got, content, p);
          }
          if (image.umociFails) {
            if (!image.gnuTarReference) return;
            const gnu = await gnuTarUnpack(image, join(work, `gnutar-${image.name}`));
            const report = diffTreesReport(ours, await snapshotTree(gnu), { allow: image.gnuTarReference.quirks });
            assert.deepEqual(report.differences.map((d) => d.message), [], `${image.name}: lazy mount vs GNU tar`);
            return;
          }
          const theirs = (await umociUnpackWithLog(layout, image.name, join(work, `umoci-${image.name}`))).rootfs;
          const report = diffTreesReport(ours, await snapshotTree(theirs), { allow: [...fuseVsUmoci, ...umociAllows(image)] });
          assert.deepEqual(report.differences.map((d) => d.message), [], `${image.name}: lazy mount vs umoci`);
        } finally {
          const u = await lazyroot(['--store', store(), 'umount', target]);
          assert.equal(u.code, 0, u.stderr);
        }
      });
    }
  });
});

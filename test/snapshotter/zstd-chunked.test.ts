import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lazyroot } from '../helpers/cli.js';
import { buildImage } from '../helpers/image-builder.js';
import { startRegistry } from '../helpers/registry.js';
import { requireOrSkip } from '../helpers/requirements.js';
import { busyboxImageSpec } from '../helpers/sample-images.js';
import { startSnapshotterWorld } from '../helpers/snapshotter.js';
import { zstdChunked } from '../helpers/zstd-chunked.js';

/**
 * A zstd:chunked image through containerd's proxy snapshotter: its layers are
 * lazily readable (their own TOC), so rpull leaves them to the lazy mount and
 * containerd downloads none. The blobs are the test writer's
 * (helpers/zstd-chunked.ts, containers/storage's layout); podman's own are
 * mounted in test/mount/zstd-chunked.test.ts.
 */
const needs = { root: true, fuse: true, tools: ['containerd', 'ctr-remote', 'runc', 'containerd-shim-runc-v2', 'docker-registry', 'busybox', 'zstd'] };

test('rpull of a zstd:chunked image is served by the lazy mount: containerd fetches no layer, and it runs', async (t) => {
  if (!requireOrSkip(t, needs)) return;
  const registry = await startRegistry();
  t.after(() => registry.stop());
  const world = await startSnapshotterWorld();
  t.after(() => world.stop());
  const spec = await busyboxImageSpec();
  spec.layers = spec.layers.map((layer) => {
    const chunked = zstdChunked(layer.tar, { chunkSize: 256 * 1024 });
    return { tar: layer.tar, compression: 'zstd' as const, blob: chunked.blob, annotations: chunked.annotations };
  });
  const image = buildImage(spec);
  await registry.pushImage('zc/busybox', 'v1', image);
  const ref = `${registry.host}/zc/busybox:v1`;
  await world.ctr(['image', 'rpull', '--plain-http', '--snapshotter', 'lazyroot', ref]);
  const content = await world.ctr(['content', 'ls', '-q']);
  for (const layer of image.layers) assert.doesNotMatch(content, new RegExp(layer.descriptor.digest), 'containerd fetched a zstd:chunked layer');
  const snapshots = JSON.parse((await lazyroot(['--store', world.store, '--json', 'snapshots'])).stdout) as Array<{ remote: { ref: string } | null }>;
  assert.equal(snapshots.filter((s) => s.remote?.ref === ref).length, image.layers.length, JSON.stringify(snapshots));
  const out = await world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', ref, `zc-${process.pid}`]);
  assert.equal(out.code, 0, out.stderr);
  assert.equal(out.stdout, 'hello from a lazyroot sample image\n');
});

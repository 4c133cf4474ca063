/**
 * The snapshotter on a machine with nothing local: a gzip image whose span
 * indexes another machine pushed (`index --push`) is served by a lazy mount
 * that takes them from the registry instead of streaming the layers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { mkdtemp, rm } from 'node:fs/promises';
import { lazyroot } from '../helpers/cli.js';
import { buildImage } from '../helpers/image-builder.js';
import { startRegistry } from '../helpers/registry.js';
import { requireOrSkip } from '../helpers/requirements.js';
import { busyboxImageSpec } from '../helpers/sample-images.js';
import { startSnapshotterWorld } from '../helpers/snapshotter.js';

const needs = { root: true, fuse: true, tools: ['containerd', 'ctr-remote', 'runc', 'containerd-shim-runc-v2', 'docker-registry', 'busybox'] };

test('containerd + lazyroot snapshotter: a gzip image with an index artifact in the registry runs with no layer streamed', async (t) => {
  if (!requireOrSkip(t, needs)) return;
  const registry = await startRegistry();
  t.after(() => registry.stop());
  const work = await mkdtemp(join(tmpdir(), 'lazyroot-snap-remote-index-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  const spec = await busyboxImageSpec();
  spec.config = { config: { Env: ['PATH=/bin'], Cmd: ['/bin/cat', '/etc/passwd'], WorkingDir: '/' } };
  const image = buildImage(spec);
  await registry.pushImage('shared/busybox', 'v1', image);
  const ref = `${registry.host}/shared/busybox:v1`;
  // Another machine indexed the image and pushed the indexes.
  const pushed = await lazyroot(['--store', join(work, 'store-a'), '--json', 'index', '--push', `docker://${ref}`]);
  assert.equal(pushed.code, 0, pushed.stderr);

  const world = await startSnapshotterWorld();
  t.after(() => world.stop());
  await world.ctr(['image', 'rpull', '--plain-http', '--snapshotter', 'lazyroot', ref]);
  const content = await world.ctr(['content', 'ls', '-q']);
  for (const layer of image.layers) assert.doesNotMatch(content, new RegExp(layer.descriptor.digest), 'containerd fetched a layer');
  const out = await world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', ref, `remote-index-${process.pid}`]);
  assert.equal(out.code, 0, out.stderr);
  assert.match(out.stdout, /^root:x:0:0:root/);

  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const [mountpoint] = info.split('\n').map((l) => l.split(' ')[4] ?? '').filter((p) => p.startsWith(`${world.store}/snapshotter/mounts/`));
  assert.ok(mountpoint, 'the image is served by a lazy mount');
  const stats = await lazyroot(['--store', world.store, '--json', 'mount', '--stats', mountpoint]);
  assert.equal(stats.code, 0, stats.stderr);
  assert.equal((JSON.parse(stats.stdout) as { bytesIndexed: number }).bytesIndexed, 0, 'no layer was streamed to build an index');
  assert.ok((await registry.accessLog()).some((l) => l.includes(`/manifests/sha256-${image.manifestDigest.slice(7)}`)), 'the fallback tag was read');
  await world.ctr(['images', 'rm', '--sync', ref]);
});

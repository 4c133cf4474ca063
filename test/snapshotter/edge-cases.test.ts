import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { chainIds } from '../../src/oci/chain-id.js';
import { loadSnapshotsService } from '../../src/snapshotter/service.js';
import { allFeaturesLayout, umociAllows } from '../helpers/edge-case-images.js';
import { pushToRegistry } from '../helpers/image-builder.js';
import { startRegistry } from '../helpers/registry.js';
import { requireOrSkip } from '../helpers/requirements.js';
import { startSnapshotterWorld } from '../helpers/snapshotter.js';
import { diffTreesReport, snapshotTree } from '../helpers/tree-snapshot.js';
import { umociUnpackWithLog } from '../helpers/umoci.js';

const run = promisify(execFile);

/** The root of an overlay with an upper dir has the upper's attributes: the container's own dir, made now (as with containerd's overlayfs snapshotter). */
const overlayRoot = [{ path: /^\.$/, field: 'mtime', reason: "an overlay's root is its upper dir" }];

/** Images a lazy mount refuses on purpose (test/mount/lazy-edge-cases.test.ts). */
const lazyRefuses = new Set(['vendor-typeflag']);

type Reply = any; // eslint-disable-line @typescript-eslint/no-explicit-any

/**
 * A container's root through `lazyroot snapshotter` — remote layers (stargz
 * labels, as ctr-remote sends them), then the container's active snapshot,
 * mounted as containerd mounts it (kernel overlayfs over the image's lazy
 * mount) — equals `umoci unpack` of the same image, for every edge-case
 * image umoci can unpack and whose layers are all served remotely (an image
 * with a zstd layer goes the ordinary way, checked as such).
 */
test('container roots through the snapshotter equal umoci unpack for the edge-case images', async (t) => {
  if (!requireOrSkip(t, { root: true, fuse: true, tools: ['containerd', 'ctr-remote', 'docker-registry', 'skopeo', 'umoci'] })) return;
  const registry = await startRegistry();
  t.after(() => registry.stop());
  const world = await startSnapshotterWorld();
  t.after(() => world.stop());
  const layout = join(world.dir, 'layout');
  const { images } = await allFeaturesLayout(layout);
  const Client = grpc.makeGenericClientConstructor(loadSnapshotsService(), 'Snapshots');
  const client = new Client(`unix:${world.socket}`, grpc.credentials.createInsecure()) as unknown as Record<string, (r: object, cb: (e: grpc.ServiceError | null, v: Reply) => void) => void> & grpc.Client;
  t.after(() => client.close());
  const call = (method: string, request: object): Promise<Reply> =>
    new Promise((resolve, reject) => client[method]!.call(client, request, (err, reply) => (err ? reject(err) : resolve(reply))));

  for (const image of images) {
    if (image.umociFails || lazyRefuses.has(image.name)) continue;
    await t.test(image.name, async (st) => {
      const repo = `edge/${image.name}`;
      await pushToRegistry(layout, `${repo}:v1`, registry.host, { layoutRef: image.name });
      const ref = `${registry.host}/${repo}:v1`;
      const manifest = (await (await fetch(`${registry.url}/v2/${repo}/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' } })).json()) as {
        config: { digest: string };
        layers: Array<{ digest: string; mediaType: string }>;
      };
      const config = (await (await fetch(`${registry.url}/v2/${repo}/blobs/${manifest.config.digest}`)).json()) as { rootfs: { diff_ids: string[] } };
      const chain = chainIds(config.rootfs.diff_ids);
      const layers = manifest.layers.map((l) => l.digest);
      for (const [i, chainId] of chain.entries()) {
        const labels = {
          'containerd.io/snapshot.ref': chainId,
          'containerd.io/snapshot/remote/stargz.reference': ref,
          'containerd.io/snapshot/remote/stargz.digest': layers[i]!,
          'containerd.io/snapshot/remote/stargz.layers': layers.slice(i).join(','),
        };
        const key = `extract-${image.name}-${i} ${chainId}`;
        const answer = await call('Prepare', { key, parent: i === 0 ? '' : chain[i - 1], labels }).then(
          () => 'prepared',
          (err: grpc.ServiceError) => (err.code === grpc.status.ALREADY_EXISTS ? 'exists' : Promise.reject(err)),
        );
        if (answer === 'prepared') {
          // By design a whole image goes the ordinary way when one of its layers is zstd: containerd
          // downloads and applies it (its applier, not ours, makes that tree). Check that this is why.
          await call('Remove', { key });
          assert.ok(manifest.layers.some((l) => l.mediaType.endsWith('+zstd')), `${image.name}: layer ${i + 1} was not served remotely, with no zstd layer in the image: ${await world.log()}`);
          st.diagnostic(`${image.name}: has a zstd layer, so the ordinary path (compared by test/mount/lazy-edge-cases.test.ts as a lazy mount)`);
          return;
        }
      }
      const key = `container-${image.name}`;
      const { mounts } = await call('Prepare', { key, parent: chain[chain.length - 1], labels: {} });
      const target = join(world.dir, `root-${image.name}`);
      await mkdir(target);
      await run('mount', ['-t', mounts[0].type, mounts[0].source, '-o', (mounts[0].options as string[]).join(','), target]);
      let ours;
      try {
        ours = await snapshotTree(target);
      } finally {
        await run('umount', [target]);
      }
      const entries = new Set(ours.map((e) => e.path));
      for (const p of image.expect?.visible ?? []) assert.ok(entries.has(p), `${p} visible`);
      for (const p of image.expect?.hidden ?? []) assert.ok(!entries.has(p), `${p} hidden`);
      const theirs = (await umociUnpackWithLog(layout, image.name, join(world.dir, `umoci-${image.name}`))).rootfs;
      const report = diffTreesReport(ours, await snapshotTree(theirs), { allow: [...overlayRoot, ...umociAllows(image)] });
      assert.deepEqual(report.differences.map((d) => d.message), [], `${image.name}: container root vs umoci`);
      await call('Remove', { key });
    });
  }
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { chainIds } from '../../src/oci/chain-id.js';
import { loadSnapshotsService } from '../../src/snapshotter/service.js';
import { lazyroot } from '../helpers/cli.js';
import { buildEstargzImage } from '../helpers/estargz.js';
import { startRegistry } from '../helpers/registry.js';
import { requireOrSkip } from '../helpers/requirements.js';
import { startSnapshotterWorld } from '../helpers/snapshotter.js';
import { dir, file, symlink } from '../helpers/tar-builder.js';

const run = promisify(execFile);

type Call = (request: Record<string, unknown>, callback: (err: grpc.ServiceError | null, reply: any) => void) => void; // eslint-disable-line @typescript-eslint/no-explicit-any

/** A Snapshots client on the snapshotter's socket, as containerd is one. */
function client(socket: string): { call(method: string, request: Record<string, unknown>): Promise<any>; close(): void } { // eslint-disable-line @typescript-eslint/no-explicit-any
  const Client = grpc.makeGenericClientConstructor(loadSnapshotsService(), 'Snapshots');
  const c = new Client(`unix:${socket}`, grpc.credentials.createInsecure()) as unknown as Record<string, Call> & grpc.Client;
  return {
    call: (method, request) => new Promise((resolve, reject) => c[method]!.call(c, request, (err, reply) => (err ? reject(err) : resolve(reply)))),
    close: () => c.close(),
  };
}

test('the CRI label set (sent the way the CRI plugin sends it) is served lazily: ALREADY_EXISTS with snapshot.ref, then an overlay on one lazy mount', async (t) => {
  if (!requireOrSkip(t, { root: true, fuse: true, tools: ['containerd', 'ctr-remote', 'docker-registry'] })) return;
  const registry = await startRegistry();
  t.after(() => registry.stop());
  const world = await startSnapshotterWorld();
  t.after(() => world.stop());
  const busybox = await readFile('/bin/busybox');
  const image = await buildEstargzImage([
    [dir('bin'), file('bin/busybox', busybox, { mode: 0o755 }), symlink('bin/sh', 'busybox')],
    [dir('etc'), file('etc/motd', 'cri\n')],
  ]);
  const manifestDigest = await registry.pushImage('cri/app', 'v1', image);
  const ref = `${registry.host}/cri/app:v1`;
  const config = JSON.parse(image.configBytes.toString()) as { rootfs: { diff_ids: string[] } };
  const chain = chainIds(config.rootfs.diff_ids);
  const snapshots = client(world.socket);
  t.after(() => snapshots.close());

  // containerd's unpacker: Prepare("extract-… CHAIN", parent, layer annotations + snapshot.ref), bottom-up.
  for (const [i, chainId] of chain.entries()) {
    const labels = {
      'containerd.io/snapshot.ref': chainId,
      'containerd.io/snapshot/cri.image-ref': ref,
      'containerd.io/snapshot/cri.manifest-digest': manifestDigest,
      'containerd.io/snapshot/cri.layer-digest': image.layerDigests[i]!,
      'containerd.io/snapshot/cri.image-layers': image.layerDigests.slice(i).join(','),
    };
    await assert.rejects(
      snapshots.call('Prepare', { key: `extract-${i} ${chainId}`, parent: i === 0 ? '' : chain[i - 1], labels }),
      (err: grpc.ServiceError) => err.code === grpc.status.ALREADY_EXISTS,
    );
    const { info } = await snapshots.call('Stat', { key: chainId });
    assert.equal(info.kind, 'COMMITTED');
    assert.equal(info.labels['containerd.io/snapshot.ref'], chainId);
  }
  // Without snapshot.ref, never ALREADY_EXISTS: an ordinary active snapshot.
  const plain = await snapshots.call('Prepare', { key: 'no-ref', parent: '', labels: { 'containerd.io/snapshot/cri.image-ref': ref } });
  assert.equal(plain.mounts[0].type, 'bind');
  await snapshots.call('Remove', { key: 'no-ref' });

  // clean sees what containerd references: the image stays while its snapshots do.
  const cleaned = await lazyroot(['--store', world.store, 'clean']);
  assert.equal(cleaned.code, 0, cleaned.stderr);
  const images = await lazyroot(['--store', world.store, '--json', 'images']);
  const stored = JSON.parse(images.stdout) as Array<{ id: string }>;
  assert.equal(stored.length, 1, 'clean removed an image remote snapshots use');
  const rmi = await lazyroot(['--store', world.store, 'rmi', stored[0]!.id]);
  assert.equal(rmi.code, 1);
  assert.match(rmi.stderr, /containerd's snapshot sha256:[0-9a-f]+ is served from it/);

  const { mounts } = await snapshots.call('Prepare', { key: 'container', parent: chain[chain.length - 1], labels: {} });
  assert.equal(mounts.length, 1);
  assert.equal(mounts[0].type, 'overlay');
  const lower = (mounts[0].options as string[]).find((o) => o.startsWith('lowerdir='))!.slice('lowerdir='.length);
  assert.equal(lower.split(':').length, 1, 'one lazy mount serves the whole chain');
  const target = join(world.dir, 'rootfs');
  await mkdir(target);
  await run('mount', ['-t', 'overlay', 'overlay', '-o', mounts[0].options.join(','), target]);
  try {
    assert.equal(await readFile(join(target, 'etc/motd'), 'utf8'), 'cri\n');
  } finally {
    await run('umount', [target]);
  }
  const layerGets = (await registry.accessLog()).filter((l) => l.startsWith('GET') && image.layerDigests.some((d) => l.includes(d)));
  assert.ok(layerGets.length > 0, 'read from the registry by the lazy mount');

  await snapshots.call('Remove', { key: 'container' });
  for (const chainId of [...chain].reverse()) await snapshots.call('Remove', { key: chainId });
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  assert.ok(!info.includes(`${world.store}/snapshotter/mounts/`), 'the lazy mount is gone with the last snapshot');
});

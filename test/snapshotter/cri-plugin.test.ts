import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { lazyroot } from '../helpers/cli.js';
import { buildEstargzImage } from '../helpers/estargz.js';
import { startRegistry } from '../helpers/registry.js';
import { requireOrSkip } from '../helpers/requirements.js';
import { startSnapshotterWorld } from '../helpers/snapshotter.js';
import { dir, file, symlink } from '../helpers/tar-builder.js';

/**
 * Kubernetes' path: the kubelet pulls through containerd's CRI plugin
 * (runtime.v1 ImageService.PullImage on containerd's socket). With lazyroot
 * as the CRI snapshotter and `disable_snapshot_annotations = false`, the CRI
 * plugin sends its own label set (cri.image-ref, cri.layer-digest, …), and
 * the layers must be served lazily: containerd downloads none of them.
 */
const protoPath = fileURLToPath(new URL('../../../test/helpers/cri/image-service.proto', import.meta.url));

type Unary = (request: Record<string, unknown>, callback: (err: grpc.ServiceError | null, reply: any) => void) => void; // eslint-disable-line @typescript-eslint/no-explicit-any

function imageService(socket: string): { call(method: string, request: Record<string, unknown>): Promise<any>; close(): void } { // eslint-disable-line @typescript-eslint/no-explicit-any
  const definition = protoLoader.loadSync(protoPath, { keepCase: true, longs: Number, defaults: true });
  const pkg = grpc.loadPackageDefinition(definition) as unknown as { runtime: { v1: { ImageService: grpc.ServiceClientConstructor } } };
  const c = new pkg.runtime.v1.ImageService(`unix:${socket}`, grpc.credentials.createInsecure()) as unknown as Record<string, Unary> & grpc.Client;
  return {
    call: (method, request) => new Promise((resolve, reject) => c[method]!.call(c, request, (err, reply) => (err ? reject(err) : resolve(reply)))),
    close: () => c.close(),
  };
}

test("containerd's CRI plugin (Kubernetes' PullImage) pulls through lazyroot lazily: CRI labels, no layer downloaded, the image runs", async (t) => {
  if (!requireOrSkip(t, { root: true, fuse: true, tools: ['containerd', 'ctr-remote', 'runc', 'containerd-shim-runc-v2', 'docker-registry'] })) return;
  const registry = await startRegistry();
  t.after(() => registry.stop());
  const world = await startSnapshotterWorld({ cri: { plainHttp: [registry.host] } });
  t.after(() => world.stop());
  const busybox = await readFile('/bin/busybox');
  const image = await buildEstargzImage(
    [
      [dir('bin'), file('bin/busybox', busybox, { mode: 0o755 }), symlink('bin/sh', 'busybox'), symlink('bin/cat', 'busybox')],
      [dir('etc'), file('etc/motd', 'pulled by the kubelet\n')],
    ],
    { config: { Env: ['PATH=/bin'], Cmd: ['/bin/cat', '/etc/motd'] } },
  );
  await registry.pushImage('k8s/app', 'v1', image);
  const ref = `${registry.host}/k8s/app:v1`;

  const cri = imageService(world.containerd.address);
  t.after(() => cri.close());
  const pulled = await cri.call('PullImage', { image: { image: ref } });
  assert.match(pulled.image_ref, /^sha256:[0-9a-f]{64}$/);
  const listed = await cri.call('ListImages', {});
  assert.ok(listed.images.some((i: { repo_tags: string[] }) => i.repo_tags.includes(ref)), JSON.stringify(listed));

  // Both layers are remote snapshots, recognised by the CRI label set; containerd's content store has no layer.
  const snapshots = JSON.parse((await lazyroot(['--store', world.store, '--json', 'snapshots'])).stdout) as Array<{ key: string; kind: string; labels: Record<string, string>; remote: unknown }>;
  assert.equal(snapshots.length, 2, JSON.stringify(snapshots));
  for (const s of snapshots) {
    assert.ok(s.remote, `${s.key} is served lazily`);
    assert.ok(s.labels['containerd.io/snapshot/cri.layer-digest'], `${s.key} was prepared with the CRI plugin's labels: ${JSON.stringify(s.labels)}`);
  }
  const content = await world.ctr(['-n', 'k8s.io', 'content', 'ls', '-q']);
  for (const layer of image.layerDigests) assert.doesNotMatch(content, new RegExp(layer), `containerd downloaded layer ${layer}`);

  // The image the CRI plugin pulled runs (namespace k8s.io, as the kubelet's containers do).
  const out = await world.ctrStatus(['-n', 'k8s.io', 'run', '--rm', '--snapshotter', 'lazyroot', ref, `cri-${process.pid}`]);
  assert.equal(out.code, 0, out.stderr);
  assert.equal(out.stdout, 'pulled by the kubelet\n');
});

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { startRegistry } from './registry.js';
import { pushToRegistry, writeDockerArchive, writeOciArchive, writeOciLayout } from './image-builder.js';
import { buildTar, dir, file } from './tar-builder.js';

const run = promisify(execFile);
let work: string;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'lazyroot-image-builder-'));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function skopeo(...args: string[]): Promise<Buffer> {
  const { stdout } = await run('skopeo', ['--insecure-policy', ...args], { encoding: 'buffer', maxBuffer: 1 << 28 });
  return stdout;
}

async function twoLayers(): Promise<Buffer[]> {
  return [await buildTar([dir('etc'), file('etc/motd', 'hi\n')]), await buildTar([file('bin/tool', 'x'.repeat(5000), { mode: 0o755 })])];
}

test('writeOciLayout: skopeo reads the same manifest and config', async () => {
  const [a, b] = await twoLayers();
  const dirPath = join(work, 'layout');
  const layout = await writeOciLayout(dirPath, [
    {
      layers: [
        { tar: a!, compression: 'gzip' },
        { tar: b!, compression: 'zstd' },
      ],
      refName: 'v1',
    },
    { layers: [{ tar: a!, compression: 'none' }], refName: 'v2' },
  ]);
  for (const [i, ref] of ['v1', 'v2'].entries()) {
    const image = layout.images[i]!;
    const raw = await skopeo('inspect', '--raw', `oci:${dirPath}:${ref}`);
    assert.ok(raw.equals(image.manifestBytes));
    assert.equal(sha256(raw), image.manifestDigest);
    const config = await skopeo('inspect', '--config', '--raw', `oci:${dirPath}:${ref}`);
    assert.ok(config.equals(image.configBytes));
  }
  const first = layout.images[0]!;
  assert.deepEqual(first.diffIds, [sha256(a!), sha256(b!)]);
  assert.equal(first.layers[1]!.descriptor.mediaType, 'application/vnd.oci.image.layer.v1.tar+zstd');
  assert.equal(JSON.parse(first.configBytes.toString()).rootfs.diff_ids[1], sha256(b!));
});

test('writeOciLayout with index: skopeo picks each platform from the nested index', async () => {
  const [a] = await twoLayers();
  const dirPath = join(work, 'multi');
  const layout = await writeOciLayout(
    dirPath,
    [
      { layers: [{ tar: a!, compression: 'gzip' }], platform: { os: 'linux', architecture: 'amd64' } },
      { layers: [{ tar: a!, compression: 'gzip' }], platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    ],
    { index: true, indexRefName: 'multi' },
  );
  const raw = await skopeo('inspect', '--raw', `oci:${dirPath}:multi`);
  assert.equal(sha256(raw), layout.index?.digest);
  const arm = await skopeo('--override-arch', 'arm64', 'inspect', '--config', '--raw', `oci:${dirPath}:multi`);
  assert.ok(arm.equals(layout.images[1]!.configBytes));
});

test('writeOciArchive: skopeo reads it', async () => {
  const [a] = await twoLayers();
  const path = join(work, 'image.oci.tar');
  const layout = await writeOciArchive(path, [{ layers: [{ tar: a!, compression: 'gzip' }], refName: 'latest' }]);
  const raw = await skopeo('inspect', '--raw', `oci-archive:${path}:latest`);
  assert.equal(sha256(raw), layout.images[0]!.manifestDigest);
});

for (const format of ['legacy', 'blobs'] as const) {
  test(`writeDockerArchive (${format}): skopeo reads the config and layers`, async () => {
    const [a, b] = await twoLayers();
    const path = join(work, `docker-${format}.tar`);
    const archive = await writeDockerArchive(
      path,
      [
        {
          layers: [
            { tar: a!, compression: 'none' },
            { tar: b!, compression: 'none' },
          ],
          repoTags: ['example.com/app:1'],
        },
      ],
      { format },
    );
    const config = await skopeo('inspect', '--config', '--raw', `docker-archive:${path}`);
    assert.equal(sha256(config), archive.images[0]!.configDigest);
    // skopeo 1.9.3 gzips uncompressed layers when the destination is oci:, so copy to dir:, which keeps them.
    const out = join(work, `copied-${format}`);
    await skopeo('copy', '--quiet', `docker-archive:${path}`, `dir:${out}`);
    const manifest = JSON.parse(await readFile(join(out, 'manifest.json'), 'utf8'));
    assert.deepEqual(
      manifest.layers.map((l: { digest: string }) => l.digest),
      archive.images[0]!.diffIds,
    );
  });
}

test('pushToRegistry: the registry serves the pushed manifest', async (t) => {
  const registry = await startRegistry();
  t.after(() => registry.stop());
  const host = registry.host;
  const [a] = await twoLayers();
  const dirPath = join(work, 'push');
  const layout = await writeOciLayout(dirPath, [{ layers: [{ tar: a!, compression: 'gzip' }], refName: 'v1' }]);
  const digest = await pushToRegistry(dirPath, 'test/app:1', host, { layoutRef: 'v1' });
  assert.equal(digest, layout.images[0]!.manifestDigest);
  const response = await fetch(`http://${host}/v2/test/app/manifests/1`, {
    headers: { accept: 'application/vnd.oci.image.manifest.v1+json' },
  });
  assert.equal(response.headers.get('docker-content-digest'), digest);
  const blob = await fetch(`http://${host}/v2/test/app/blobs/${layout.images[0]!.layerDigests[0]}`);
  assert.ok(Buffer.from(await blob.arrayBuffer()).equals(layout.images[0]!.layers[0]!.blob));
});

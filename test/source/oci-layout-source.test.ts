import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isLazyrootError, type ErrorCode } from '../../src/errors.js';
import type { Platform } from '../../src/oci/types.js';
import { openOciLayoutSource } from '../../src/source/oci-layout-source.js';
import { writeOciLayout, type ImageSpec } from '../helpers/image-builder.js';
import { checkEveryBlob, readBlob, sha256, skopeo } from '../helpers/source-checks.js';
import { buildTar, dir, file, symlink } from '../helpers/tar-builder.js';

const amd64: Platform = { os: 'linux', architecture: 'amd64' };
const arm64: Platform = { os: 'linux', architecture: 'arm64', variant: 'v8' };
let work: string;
let layers: Buffer[];
let counter = 0;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'lazyroot-oci-layout-'));
  layers = [
    await buildTar([dir('etc'), file('etc/os-release', 'ID=test\n'), symlink('etc/link', 'os-release')]),
    await buildTar([file('usr/bin/app', Buffer.alloc(70_000, 7), { mode: 0o755 })]),
    await buildTar([file('data', 'zstd layer')]),
  ];
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

function threeLayers(refName?: string, platform?: Platform): ImageSpec {
  return {
    layers: [
      { tar: layers[0]!, compression: 'none' },
      { tar: layers[1]!, compression: 'gzip' },
      { tar: layers[2]!, compression: 'zstd' },
    ],
    ...(refName !== undefined ? { refName } : {}),
    ...(platform ? { platform } : {}),
  };
}

function newDir(): string {
  return join(work, `layout-${counter++}`);
}

async function rejectsWith(promise: Promise<unknown>, code: ErrorCode, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(isLazyrootError(err, code), `expected ${code}, got ${String(err)}`);
    assert.match((err as Error).message, pattern);
    return true;
  });
}

test('resolves the only image like skopeo, and serves every blob', async () => {
  const path = newDir();
  const layout = await writeOciLayout(path, [threeLayers('v1')]);
  const source = await openOciLayoutSource({ transport: 'oci', path });
  const image = await source.resolve(amd64);
  const skopeoManifest = await skopeo('inspect', '--raw', `oci:${path}:v1`);
  const skopeoConfig = await skopeo('inspect', '--config', '--raw', `oci:${path}:v1`);
  assert.equal(image.manifestDigest, sha256(skopeoManifest));
  assert.ok(image.manifestBytes.equals(skopeoManifest));
  assert.equal(image.manifest.config.digest, sha256(skopeoConfig));
  const skopeoLayers = JSON.parse(skopeoManifest.toString()).layers.map((l: { digest: string }) => l.digest);
  assert.deepEqual(
    image.manifest.layers.map((l) => l.digest),
    skopeoLayers,
  );
  assert.deepEqual(image.config.rootfs.diff_ids, layout.images[0]!.diffIds);
  assert.equal(image.name, `oci:${path}`);
  assert.deepEqual(image.platform, amd64);
  assert.equal(image.indexDigest, undefined);
  await checkEveryBlob(source, image);
  await source.close();
});

test('chooses by ref name or digest, and lists the choices otherwise', async () => {
  const path = newDir();
  const layout = await writeOciLayout(path, [threeLayers('v1'), { layers: [{ tar: layers[0]!, compression: 'gzip' }], refName: 'v2' }]);
  for (const [i, ref] of ['v1', 'v2'].entries()) {
    const source = await openOciLayoutSource({ transport: 'oci', path, ref });
    const image = await source.resolve(amd64);
    assert.equal(image.manifestDigest, layout.images[i]!.manifestDigest);
    assert.equal(image.manifestDigest, sha256(await skopeo('inspect', '--raw', `oci:${path}:${ref}`)));
    assert.equal(image.name, `oci:${path}:${ref}`);
  }
  const byDigest = await openOciLayoutSource({ transport: 'oci', path, ref: layout.images[1]!.manifestDigest });
  assert.equal((await byDigest.resolve(amd64)).manifestDigest, layout.images[1]!.manifestDigest);

  const unnamed = await openOciLayoutSource({ transport: 'oci', path });
  await rejectsWith(unnamed.resolve(amd64), 'INVALID_ARGUMENT', /holds 2 images.*v1.*v2/);
  const unknown = await openOciLayoutSource({ transport: 'oci', path, ref: 'v3' });
  await rejectsWith(unknown.resolve(amd64), 'NOT_FOUND', new RegExp(`oci:${path}: no image "v3" in index.json \\(it has: v1 \\[linux/amd64\\], v2`));
});

test('a multi-platform index picks the platform asked for', async () => {
  const path = newDir();
  const layout = await writeOciLayout(path, [threeLayers(undefined, amd64), threeLayers(undefined, arm64)], { index: true, indexRefName: 'multi' });
  const source = await openOciLayoutSource({ transport: 'oci', path, ref: 'multi' });
  for (const [i, platform, arch] of [
    [0, amd64, 'amd64'],
    [1, arm64, 'arm64'],
  ] as const) {
    const image = await source.resolve(platform);
    assert.equal(image.manifestDigest, layout.images[i]!.manifestDigest);
    assert.equal(image.indexDigest, layout.index!.digest);
    assert.deepEqual(image.platform, platform);
    const skopeoConfig = await skopeo('--override-arch', arch, 'inspect', '--config', '--raw', `oci:${path}:multi`);
    assert.equal(image.manifest.config.digest, sha256(skopeoConfig));
  }
  // arm64 with no variant matches v8, as containerd normalises it.
  assert.equal((await source.resolve({ os: 'linux', architecture: 'arm64' })).manifestDigest, layout.images[1]!.manifestDigest);
  await rejectsWith(
    source.resolve({ os: 'linux', architecture: 's390x' }),
    'NOT_FOUND',
    new RegExp(`index ${layout.index!.digest}: no manifest for platform linux/s390x \\(available: linux/amd64, linux/arm64/v8\\)`),
  );
});

test('several platforms listed straight in index.json are chosen by platform', async () => {
  const path = newDir();
  const layout = await writeOciLayout(path, [threeLayers(undefined, amd64), threeLayers(undefined, arm64)]);
  const source = await openOciLayoutSource({ transport: 'oci', path });
  assert.equal((await source.resolve(arm64)).manifestDigest, layout.images[1]!.manifestDigest);
  await rejectsWith(source.resolve({ os: 'windows', architecture: 'amd64' }), 'NOT_FOUND', /no image for platform windows\/amd64 \(available: linux\/amd64, linux\/arm64\/v8\)/);
});

test('bad layouts fail naming the file and blob at fault', async (t) => {
  const layoutWith = async (): Promise<{ path: string; layout: Awaited<ReturnType<typeof writeOciLayout>> }> => {
    const path = newDir();
    return { path, layout: await writeOciLayout(path, [threeLayers('v1')]) };
  };
  const resolveIn = async (path: string): Promise<unknown> => (await openOciLayoutSource({ transport: 'oci', path })).resolve(amd64);
  const blobFile = (path: string, digest: string): string => join(path, 'blobs', 'sha256', digest.slice('sha256:'.length));

  await t.test('missing directory', async () => {
    await rejectsWith(resolveIn(join(work, 'nope')), 'NOT_FOUND', /oci:.*nope/);
  });
  await t.test('missing index.json', async () => {
    const { path } = await layoutWith();
    await unlink(join(path, 'index.json'));
    await rejectsWith(resolveIn(path), 'NOT_FOUND', new RegExp(`^oci:${path}: index.json: missing from directory$`));
  });
  await t.test('index.json not JSON', async () => {
    const { path } = await layoutWith();
    await writeFile(join(path, 'index.json'), '{"manifests": [');
    await rejectsWith(resolveIn(path), 'INVALID_MANIFEST', new RegExp(`^oci:${path}: index.json: not valid JSON`));
  });
  await t.test('missing oci-layout, or a version we do not know', async () => {
    const { path } = await layoutWith();
    await writeFile(join(path, 'oci-layout'), '{"imageLayoutVersion":"2.0.0"}');
    await rejectsWith(resolveIn(path), 'UNSUPPORTED', /oci-layout: unsupported imageLayoutVersion "2.0.0"/);
    await unlink(join(path, 'oci-layout'));
    await rejectsWith(resolveIn(path), 'NOT_FOUND', /oci-layout: missing from directory/);
  });
  await t.test('manifest blob missing', async () => {
    const { path, layout } = await layoutWith();
    await unlink(blobFile(path, layout.images[0]!.manifestDigest));
    await rejectsWith(resolveIn(path), 'NOT_FOUND', new RegExp(`manifest ${layout.images[0]!.manifestDigest.slice(0, 19)}.*missing from directory`));
  });
  await t.test('manifest bytes that do not match their digest', async () => {
    const { path, layout } = await layoutWith();
    const file = blobFile(path, layout.images[0]!.manifestDigest);
    const bytes = await readFile(file);
    await writeFile(file, Buffer.from(bytes.toString().replace('"schemaVersion":2', '"schemaVersion":3')));
    await assert.rejects(resolveIn(path), (err: unknown) => {
      assert.ok(isLazyrootError(err, 'DIGEST_MISMATCH'));
      assert.match((err as Error).message, new RegExp(`manifest ${layout.images[0]!.manifestDigest}: digest mismatch`));
      assert.equal((err as { want?: string }).want, layout.images[0]!.manifestDigest);
      return true;
    });
  });
  await t.test('manifest size in the descriptor lying', async () => {
    const { path, layout } = await layoutWith();
    const index = JSON.parse(await readFile(join(path, 'index.json'), 'utf8'));
    index.manifests[0].size += 1;
    await writeFile(join(path, 'index.json'), JSON.stringify(index));
    await rejectsWith(
      resolveIn(path),
      'SIZE_MISMATCH',
      new RegExp(`manifest ${layout.images[0]!.manifestDigest.slice(0, 19)}.*descriptor says ${layout.images[0]!.manifestBytes.length + 1} bytes, the blob has ${layout.images[0]!.manifestBytes.length}`),
    );
  });
  await t.test('config blob corrupt', async () => {
    const { path, layout } = await layoutWith();
    const file = blobFile(path, layout.images[0]!.configDigest);
    const bytes = await readFile(file);
    bytes[bytes.length - 2] ^= 1;
    await writeFile(file, bytes);
    await rejectsWith(resolveIn(path), 'DIGEST_MISMATCH', new RegExp(`config ${layout.images[0]!.configDigest}: digest mismatch`));
  });
  await t.test('layer blob missing or truncated', async () => {
    const { path, layout } = await layoutWith();
    const source = await openOciLayoutSource({ transport: 'oci', path });
    const image = await source.resolve(amd64);
    const [missing, truncated] = [image.manifest.layers[1]!, image.manifest.layers[2]!];
    await unlink(blobFile(path, missing.digest));
    await rejectsWith(readBlob(source, missing), 'NOT_FOUND', new RegExp(`blob ${missing.digest.slice(0, 19)}.*missing from directory`));
    const bytes = await readFile(blobFile(path, truncated.digest));
    await writeFile(blobFile(path, truncated.digest), bytes.subarray(0, 10));
    await rejectsWith(readBlob(source, truncated), 'SIZE_MISMATCH', new RegExp(`blob ${truncated.digest.slice(0, 19)}`));
    assert.ok(layout.images[0]!.layerDigests.includes(missing.digest));
  });
  await t.test('offset and ranges outside the blob', async () => {
    const { path } = await layoutWith();
    const source = await openOciLayoutSource({ transport: 'oci', path });
    const layer = (await source.resolve(amd64)).manifest.layers[0]!;
    await rejectsWith(source.openBlob(layer, layer.size + 1), 'INVALID_DATA', /offset/);
    await rejectsWith(source.readRange(layer, 0, layer.size + 1), 'INVALID_DATA', /range/);
    assert.equal((await readBlob(source, layer, layer.size)).length, 0);
  });
});

test('openBlob reports progress and stops when aborted', async () => {
  const path = newDir();
  await writeOciLayout(path, [threeLayers('v1')]);
  const source = await openOciLayoutSource({ transport: 'oci', path });
  const layer = (await source.resolve(amd64)).manifest.layers[0]!;
  let progress = 0;
  const bytes = Buffer.concat(await (await source.openBlob(layer, 100, { onProgress: (n) => (progress += n) })).toArray());
  assert.equal(bytes.length, layer.size - 100);
  assert.equal(progress, layer.size - 100);

  const controller = new AbortController();
  const stream = await source.openBlob(layer, 0, { signal: controller.signal });
  controller.abort();
  await assert.rejects(stream.toArray(), { name: 'AbortError' });
  await rejectsWith(source.openBlob(layer, 0, { signal: controller.signal }), 'UNAVAILABLE', /aborted/);
});

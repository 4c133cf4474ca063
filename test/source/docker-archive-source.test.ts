import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isLazyrootError, type ErrorCode } from '../../src/errors.js';
import { MediaType } from '../../src/oci/media-types.js';
import type { Platform } from '../../src/oci/types.js';
import { DockerArchiveSource } from '../../src/source/docker-archive-source.js';
import { tarOfFiles, writeDockerArchive, type DockerImageSpec } from '../helpers/image-builder.js';
import { checkEveryBlob, sha256, skopeo } from '../helpers/source-checks.js';
import { buildTar, dir, file, symlink } from '../helpers/tar-builder.js';

const amd64: Platform = { os: 'linux', architecture: 'amd64' };
let work: string;
let scratch: string;
let tars: Buffer[];
let counter = 0;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'lazyroot-docker-archive-'));
  scratch = join(work, 'scratch');
  await mkdir(scratch);
  tars = [
    await buildTar([dir('etc'), file('etc/motd', 'welcome\n')]),
    await buildTar([file('usr/bin/tool', Buffer.alloc(40_000, 3), { mode: 0o755 })]),
  ];
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

function spec(repoTags: string[], compression: 'none' | 'gzip' = 'none'): DockerImageSpec {
  return {
    layers: tars.map((tar) => ({ tar, compression })),
    repoTags,
  };
}

function open(path: string, ref?: string): Promise<DockerArchiveSource> {
  return DockerArchiveSource.open({ transport: 'docker-archive', path, ...(ref !== undefined ? { ref } : {}) }, { tmpDir: scratch });
}

function newPath(): string {
  return join(work, `archive-${counter++}.tar`);
}

async function rejectsWith(promise: Promise<unknown>, code: ErrorCode, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(isLazyrootError(err, code), `expected ${code}, got ${String(err)}`);
    assert.match((err as Error).message, pattern);
    return true;
  });
}

for (const format of ['legacy', 'blobs'] as const) {
  test(`${format} docker save: same config and layers as skopeo sees, every blob served`, async () => {
    const path = newPath();
    const archive = await writeDockerArchive(path, [spec(['example.com/app:1'])], { format });
    const source = await open(path);
    const image = await source.resolve(amd64);
    const skopeoConfig = await skopeo('inspect', '--config', '--raw', `docker-archive:${path}`);
    assert.equal(image.manifest.config.digest, sha256(skopeoConfig));
    assert.ok(image.configBytes.equals(skopeoConfig));
    // skopeo copies uncompressed layers as they are to dir: (its oci: destination would gzip them).
    const copied = join(work, `copied-${format}`);
    await skopeo('copy', '--quiet', `docker-archive:${path}`, `dir:${copied}`);
    const skopeoManifest = JSON.parse(await readFile(join(copied, 'manifest.json'), 'utf8'));
    assert.deepEqual(
      image.manifest.layers.map((l) => [l.digest, l.size]),
      skopeoManifest.layers.map((l: { digest: string; size: number }) => [l.digest, l.size]),
    );
    assert.deepEqual(
      image.manifest.layers.map((l) => l.digest),
      archive.images[0]!.diffIds,
    );
    assert.ok(image.manifest.layers.every((l) => l.mediaType === MediaType.ociLayer));
    assert.equal(image.manifestMediaType, MediaType.ociManifest);
    assert.deepEqual(image.platform, amd64);
    await checkEveryBlob(source, image);
    // The generated manifest is served too, and is the same on every open.
    assert.equal(sha256(Buffer.concat(await (await source.openBlob({ mediaType: image.manifestMediaType, digest: image.manifestDigest, size: image.manifestBytes.length })).toArray())), image.manifestDigest);
    const again = await open(path);
    assert.equal((await again.resolve(amd64)).manifestDigest, image.manifestDigest);
    await source.close();
  });
}

test('chooses by RepoTag (Docker Hub names normalised) or @N, and names the choices otherwise', async () => {
  const path = newPath();
  const archive = await writeDockerArchive(path, [
    spec(['alpine:3.20', 'alpine:latest']),
    { layers: [{ tar: tars[0]!, compression: 'none' }], repoTags: ['registry.example.com:5000/team/app:v2'] },
  ]);
  const cases: Array<[string, number]> = [
    ['alpine:3.20', 0],
    ['docker.io/library/alpine:3.20', 0],
    ['alpine', 0],
    ['registry.example.com:5000/team/app:v2', 1],
    ['@1', 1],
    ['@0', 0],
  ];
  for (const [ref, index] of cases) {
    const image = await (await open(path, ref)).resolve(amd64);
    assert.equal(image.manifest.config.digest, archive.images[index]!.configDigest, ref);
  }
  const choices = /alpine:3\.20 alpine:latest \(@0\), registry\.example\.com:5000\/team\/app:v2 \(@1\)/;
  await rejectsWith((await open(path, 'alpine:3.19')).resolve(amd64), 'NOT_FOUND', new RegExp(`docker-archive:${path}: no image tagged "alpine:3.19" \\(it has: ${choices.source}\\)`));
  await rejectsWith((await open(path, '@2')).resolve(amd64), 'NOT_FOUND', /no image @2: the archive has 2/);
  await rejectsWith((await open(path)).resolve(amd64), 'INVALID_ARGUMENT', choices);
});

test('compressed layers get their media type from their magic bytes', async () => {
  const path = newPath();
  const archive = await writeDockerArchive(path, [spec([], 'gzip')]);
  const source = await open(path);
  const image = await source.resolve(amd64);
  assert.ok(image.manifest.layers.every((l) => l.mediaType === MediaType.ociLayerGzip));
  assert.deepEqual(
    image.manifest.layers.map((l) => l.digest),
    archive.images[0]!.layerDigests,
  );
  await checkEveryBlob(source, image);
});

test('layer.tar symlinked to blobs/ (docker 25+) is followed inside the archive', async () => {
  const layerBytes = tars[0]!;
  const diffId = sha256(layerBytes);
  const config = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [diffId] } }),
  );
  const configHex = sha256(config).slice(7);
  const manifest = [{ Config: `blobs/sha256/${configHex}`, RepoTags: ['linked:1'], Layers: ['abc/layer.tar'] }];
  const path = newPath();
  await writeFile(
    path,
    await buildTar([
      file(`blobs/sha256/${configHex}`, config),
      file(`blobs/sha256/${diffId.slice(7)}`, layerBytes),
      dir('abc'),
      symlink('abc/layer.tar', `../blobs/sha256/${diffId.slice(7)}`),
      file('manifest.json', JSON.stringify(manifest)),
    ]),
  );
  const source = await open(path);
  const image = await source.resolve(amd64);
  assert.deepEqual(image.manifest.layers.map((l) => l.digest), [diffId]);
  await checkEveryBlob(source, image);
});

test('bad archives fail naming the archive and the member at fault', async (t) => {
  const base = newPath();
  const archive = await writeDockerArchive(base, [spec(['app:1'])]);
  const withFiles = async (edit: (files: Map<string, Buffer>) => void): Promise<string> => {
    const files = new Map(archive.files);
    edit(files);
    const path = newPath();
    await writeFile(path, await tarOfFiles(files));
    return path;
  };
  const [layer0, layer1] = archive.manifest[0]!.Layers;

  await t.test('layer missing from the archive', async () => {
    const path = await withFiles((files) => files.delete(layer1!));
    await rejectsWith((await open(path)).resolve(amd64), 'NOT_FOUND', new RegExp(`^docker-archive:${path}: layer ${layer1}: missing from archive$`));
  });
  await t.test('uncompressed layer that is not the config says', async () => {
    const path = await withFiles((files) => files.set(layer0!, tars[1]!));
    await rejectsWith(
      (await open(path)).resolve(amd64),
      'DIGEST_MISMATCH',
      new RegExp(`^docker-archive:${path}: layer ${layer0}: against the config's diff ID 0: digest mismatch \\(want ${archive.images[0]!.diffIds[0]}, got ${sha256(tars[1]!)}\\)$`),
    );
  });
  await t.test('config whose name is not its digest', async () => {
    const configName = archive.manifest[0]!.Config;
    const path = await withFiles((files) => files.set(configName, Buffer.from(files.get(configName)!.toString().replace('amd64', 'arm64'))));
    await rejectsWith((await open(path)).resolve(amd64), 'DIGEST_MISMATCH', new RegExp(`config ${configName}: digest mismatch`));
  });
  await t.test('manifest.json missing or not JSON', async () => {
    const missing = await withFiles((files) => files.delete('manifest.json'));
    await rejectsWith((await open(missing)).resolve(amd64), 'NOT_FOUND', /manifest.json: missing from archive/);
    const broken = await withFiles((files) => files.set('manifest.json', Buffer.from('[{')));
    await rejectsWith((await open(broken)).resolve(amd64), 'INVALID_MANIFEST', new RegExp(`^docker-archive:${broken}: manifest.json: not valid JSON`));
  });
  await t.test('unknown tag', async () => {
    await rejectsWith((await open(base, 'app:2')).resolve(amd64), 'NOT_FOUND', /no image tagged "app:2" \(it has: app:1 \(@0\)\)/);
  });
  await t.test('truncated archive', async () => {
    const bytes = await readFile(base);
    const path = newPath();
    await writeFile(path, bytes.subarray(0, bytes.length - 3000));
    await rejectsWith(open(path), 'INVALID_DATA', new RegExp(`docker-archive:${path}: not a valid tar archive \\(truncated\\)`));
  });
  await t.test('blob that is not part of the image', async () => {
    const source = await open(base);
    await source.resolve(amd64);
    await rejectsWith(
      source.openBlob({ mediaType: MediaType.ociLayer, digest: `sha256:${'0'.repeat(64)}`, size: 1 }),
      'NOT_FOUND',
      /is not part of the image/,
    );
  });
});

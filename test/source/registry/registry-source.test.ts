/**
 * RegistrySource against the real docker-registry (distribution 2.8) on
 * loopback, without auth: tags, digests, indexes, blobs, ranges, schema1.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { isLazyrootError } from '../../../src/errors.js';
import { sha256 } from '../../../src/oci/digest.js';
import { MediaType } from '../../../src/oci/media-types.js';
import type { Descriptor, ImageIndex } from '../../../src/oci/types.js';
import { parseDockerReference } from '../../../src/reference/reference.js';
import { RegistrySource, type RegistrySourceOptions } from '../../../src/source/registry/registry-source.js';
import { buildImage, pushToRegistry, writeOciLayout, type BuiltImage } from '../../helpers/image-builder.js';
import { signSchema1, startRegistry, type TestRegistry } from '../../helpers/registry.js';
import { requireOrSkip } from '../../helpers/requirements.js';
import { buildTar, file, gzip } from '../../helpers/tar-builder.js';

const amd64 = { os: 'linux', architecture: 'amd64' };
const arm64 = { os: 'linux', architecture: 'arm64', variant: 'v8' };
const fast: RegistrySourceOptions = { retries: 2, retryBaseDelayMs: 1, retryMaxDelayMs: 5 };

let registry: TestRegistry;
let image: BuiltImage;
let pushedDigest: string;
const sources: RegistrySource[] = [];

function source(ref: string, options: RegistrySourceOptions = {}): RegistrySource {
  const s = new RegistrySource(parseDockerReference(`${registry.host}/${ref}`), { ...fast, ...options });
  sources.push(s);
  return s;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function layerImage(name: string, platform = amd64): Promise<BuiltImage> {
  // ~64 KiB that gzip cannot shrink, so ranges and offsets land inside real data.
  const big = Buffer.concat(Array.from({ length: 1024 }, (_, i) => createHash('sha512').update(`${name} ${i}`).digest()));
  return buildImage({
    layers: [
      { tar: await buildTar([file('etc/name', `${name}\n`)]), compression: 'gzip' },
      { tar: await buildTar([file('data/big', big)]), compression: 'gzip' },
    ],
    platform,
  });
}

before(async () => {
  registry = await startRegistry({ schema1: true });
  image = await layerImage('hello');
  pushedDigest = await registry.pushImage('library/hello', 'v1', image);
});

after(async () => {
  for (const s of sources) await s.close();
  await registry?.stop();
});

test('anonymous pull: manifest, config and every blob, verified against what was pushed', async () => {
  const hello = source('library/hello:v1');
  const resolved = await hello.resolve(amd64);
  assert.equal(resolved.name, `${registry.host}/library/hello:v1`);
  assert.equal(resolved.manifestDigest, image.manifestDigest);
  assert.equal(resolved.manifestDigest, pushedDigest);
  assert.equal(resolved.manifestMediaType, MediaType.ociManifest);
  assert.deepEqual(resolved.manifestBytes, image.manifestBytes);
  assert.deepEqual(resolved.configBytes, image.configBytes);
  assert.deepEqual(resolved.config.rootfs.diff_ids, image.diffIds);
  assert.deepEqual(resolved.platform, amd64);
  assert.equal(resolved.indexDigest, undefined);
  for (const [i, layer] of resolved.manifest.layers.entries()) {
    const bytes = await readAll(await hello.openBlob(layer));
    assert.equal(sha256(bytes), layer.digest);
    assert.deepEqual(bytes, image.layers[i]!.blob);
  }
  // Loopback registry without TLS: HTTPS was tried, then plain HTTP remembered.
  assert.ok((await registry.accessLog()).includes('GET /v2/library/hello/manifests/v1 200'));
});

test('an image pushed by skopeo from an OCI layout pulls the same', async (t) => {
  if (!requireOrSkip(t, { tools: ['skopeo'] })) return;
  const layoutDir = await mkdtemp(join(tmpdir(), 'lazyroot-layout-'));
  try {
    const spec = { layers: [{ tar: await buildTar([file('etc/name', 'skopeo\n')]), compression: 'gzip' as const }], platform: amd64 };
    const layout = await writeOciLayout(layoutDir, [spec]);
    const digest = await pushToRegistry(layoutDir, 'tools/skopeo:v1', registry.host);
    const resolved = await source('tools/skopeo:v1').resolve(amd64);
    assert.equal(resolved.manifestDigest, digest);
    assert.deepEqual(resolved.config.rootfs.diff_ids, layout.images[0]!.diffIds);
  } finally {
    await rm(layoutDir, { recursive: true, force: true });
  }
});

test('by digest: the manifest bytes are verified against the digest asked for', async () => {
  const resolved = await source(`library/hello@${image.manifestDigest}`).resolve(amd64);
  assert.equal(resolved.manifestDigest, image.manifestDigest);
  assert.ok((await registry.accessLog()).includes(`GET /v2/library/hello/manifests/${image.manifestDigest} 200`));
});

test('unknown tag: NOT_FOUND naming the registry, repository and tag', async () => {
  await assert.rejects(source('library/hello:nope').resolve(amd64), (err) => {
    assert.ok(isLazyrootError(err, 'NOT_FOUND'));
    assert.match(err.message, new RegExp(`^${registry.host}/library/hello:nope: manifest: 404 MANIFEST_UNKNOWN`));
    assert.deepEqual((err as unknown as { registryCodes: string[] }).registryCodes, ['MANIFEST_UNKNOWN']);
    return true;
  });
});

test('unknown blob: NOT_FOUND naming the blob', async () => {
  const missing: Descriptor = { mediaType: MediaType.ociLayerGzip, digest: sha256('nothing'), size: 10 };
  await assert.rejects(source('library/hello:v1').openBlob(missing), (err) => {
    assert.ok(isLazyrootError(err, 'NOT_FOUND'));
    assert.match(err.message, new RegExp(`library/hello:v1: blob ${missing.digest}: 404 BLOB_UNKNOWN`));
    return true;
  });
});

test('openBlob from an offset resumes with a 206 range', async () => {
  const hello = source('library/hello:v1');
  const layer = image.layers[1]!;
  const offset = Math.floor(layer.blob.length / 3);
  const rest = await readAll(await hello.openBlob(layer.descriptor, offset));
  assert.deepEqual(rest, layer.blob.subarray(offset));
  assert.equal(hello.rangeSupport, 'supported');
  assert.equal((await readAll(await hello.openBlob(layer.descriptor, layer.blob.length))).length, 0);
  await assert.rejects(hello.openBlob(layer.descriptor, layer.blob.length + 1), (e) => isLazyrootError(e, 'INVALID_DATA'));
});

test('readRange returns exactly [start, end)', async () => {
  const hello = source('library/hello:v1');
  const layer = image.layers[1]!;
  const bytes = await hello.readRange(layer.descriptor, 100, 1100);
  assert.deepEqual(bytes, layer.blob.subarray(100, 1100));
  const tail = await hello.readRange(layer.descriptor, layer.blob.length - 7, layer.blob.length);
  assert.deepEqual(tail, layer.blob.subarray(layer.blob.length - 7));
  assert.equal(hello.rangeSupport, 'supported');
  await assert.rejects(hello.readRange(layer.descriptor, 5, 5), (e) => isLazyrootError(e, 'INVALID_DATA'));
  await assert.rejects(hello.readRange(layer.descriptor, 0, layer.blob.length + 1), (e) => isLazyrootError(e, 'INVALID_DATA'));
});

test('several blob downloads at once share the source', async () => {
  const hello = source('library/hello:v1');
  const layer = image.layers[1]!;
  const results = await Promise.all(
    Array.from({ length: 6 }, async (_, i) => readAll(await hello.openBlob(layer.descriptor, i * 100))),
  );
  results.forEach((bytes, i) => assert.deepEqual(bytes, layer.blob.subarray(i * 100)));
});

test('index: the manifest for the platform is chosen; a missing platform lists those available', async () => {
  const x86 = await layerImage('multi-amd64', amd64);
  const arm = await layerImage('multi-arm64', arm64);
  await registry.pushImage('multi', x86.manifestDigest, x86);
  await registry.pushImage('multi', arm.manifestDigest, arm);
  const index: ImageIndex = {
    schemaVersion: 2,
    mediaType: MediaType.ociIndex,
    manifests: [
      { ...x86.manifestDescriptor, platform: amd64 },
      { ...arm.manifestDescriptor, platform: arm64 },
    ],
  };
  const indexBytes = Buffer.from(JSON.stringify(index));
  const indexDigest = await registry.pushManifest('multi', 'v1', indexBytes, MediaType.ociIndex);
  assert.equal(indexDigest, sha256(indexBytes));

  const multi = source('multi:v1');
  const resolved = await multi.resolve({ os: 'linux', architecture: 'arm64' });
  assert.equal(resolved.manifestDigest, arm.manifestDigest);
  assert.equal(resolved.indexDigest, indexDigest);
  assert.deepEqual(resolved.platform, arm64);
  assert.deepEqual(resolved.config.rootfs.diff_ids, arm.diffIds);

  await assert.rejects(multi.resolve({ os: 'linux', architecture: 's390x' }), (err) => {
    assert.ok(isLazyrootError(err, 'NOT_FOUND'));
    assert.match(err.message, new RegExp(`${registry.host}/multi:v1: no manifest for platform linux/s390x in index ${indexDigest}`));
    assert.match(err.message, /available: linux\/amd64, linux\/arm64\/v8/);
    return true;
  });
});

test('schema1: a signed manifest resolves to converted layers, then builds a schema2 image', async () => {
  const baseTar = await buildTar([file('etc/os-release', 'old\n')]);
  const appTar = await buildTar([file('usr/bin/app', 'binary\n')]);
  const emptyTar = await buildTar([]);
  const [baseBlob, appBlob, emptyBlob] = [gzip(baseTar), gzip(appTar), gzip(emptyTar)];
  for (const blob of [baseBlob, appBlob, emptyBlob]) await registry.pushBlob('legacy', blob);
  const v1 = (fields: Record<string, unknown>): { v1Compatibility: string } => ({ v1Compatibility: JSON.stringify(fields) });
  const { signed, payload } = signSchema1({
    schemaVersion: 1,
    name: 'legacy',
    tag: 'v1',
    architecture: 'amd64',
    fsLayers: [{ blobSum: sha256(appBlob) }, { blobSum: sha256(emptyBlob) }, { blobSum: sha256(baseBlob) }],
    history: [
      v1({ id: 'c3', parent: 'c2', created: '2016-01-01T00:00:03Z', container_config: { Cmd: ['/bin/sh', '-c', 'make'] }, config: { Cmd: ['/usr/bin/app'] }, architecture: 'amd64', os: 'linux' }),
      v1({ id: 'c2', parent: 'c1', created: '2016-01-01T00:00:02Z', container_config: { Cmd: ['/bin/sh', '-c', '#(nop) ENV A=1'] }, throwaway: true }),
      v1({ id: 'c1', created: '2016-01-01T00:00:01Z', container_config: { Cmd: ['/bin/sh', '-c', '#(nop) ADD base'] } }),
    ],
  });
  const registryDigest = await registry.pushManifest('legacy', 'v1', signed, MediaType.dockerSchema1Signed);
  assert.equal(registryDigest, sha256(payload), 'the registry and we agree on the schema1 digest');

  const resolved = await source('legacy:v1').resolve(amd64);
  assert.equal(resolved.converted, 'schema1');
  assert.equal(resolved.manifestDigest, registryDigest);
  assert.equal(resolved.manifestMediaType, MediaType.dockerSchema1Signed);
  assert.deepEqual(
    resolved.manifest.layers,
    [baseBlob, appBlob].map((blob) => ({ mediaType: MediaType.dockerLayerGzip, digest: sha256(blob), size: blob.length })),
  );
  assert.deepEqual(resolved.config.rootfs.diff_ids, []);
  assert.ok(resolved.schema1);
  const built = resolved.schema1.build([sha256(baseTar), sha256(appTar)]);
  assert.equal(built.manifestDigest, sha256(built.manifestBytes));
  assert.deepEqual(built.config.rootfs.diff_ids, [sha256(baseTar), sha256(appTar)]);
  assert.deepEqual(built.config.config, { Cmd: ['/usr/bin/app'] });
  assert.equal(built.config.history?.length, 3);
  assert.equal(built.manifest.config.digest, sha256(built.configBytes));
  // Sizes came from HEAD requests: schema1 has none.
  assert.ok((await registry.accessLog()).includes(`HEAD /v2/legacy/blobs/${sha256(appBlob)} 200`));

  const byDigest = await source(`legacy@${registryDigest}`).resolve(amd64);
  assert.equal(byDigest.manifestDigest, registryDigest);
});

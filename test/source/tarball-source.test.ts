import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isLazyrootError } from '../../src/errors.js';
import { MediaType } from '../../src/oci/media-types.js';
import type { Platform } from '../../src/oci/types.js';
import { emptyConfigFor } from '../../src/source/image-source.js';
import { TarballSource } from '../../src/source/tarball-source.js';
import { checkEveryBlob, readBlob, sha256 } from '../helpers/source-checks.js';
import { buildTar, dir, file, gzip, symlink, zstd } from '../helpers/tar-builder.js';

const amd64: Platform = { os: 'linux', architecture: 'amd64' };
let work: string;
let rootfs: Buffer;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'lazyroot-tarball-'));
  rootfs = await buildTar([dir('bin'), file('bin/sh', Buffer.alloc(300_000, 9), { mode: 0o755 }), symlink('sbin', 'bin')]);
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

async function sourceFor(name: string, bytes: Buffer): Promise<TarballSource> {
  const path = join(work, name);
  await writeFile(path, bytes);
  return new TarballSource({ transport: 'tarball', path });
}

test('a rootfs tarball is an image of one layer, whatever its compression', async () => {
  const diffId = sha256(rootfs);
  for (const [name, bytes, mediaType] of [
    ['rootfs.tar', rootfs, MediaType.ociLayer],
    ['rootfs.tar.gz', gzip(rootfs), MediaType.ociLayerGzip],
    ['rootfs.tgz', gzip(rootfs), MediaType.ociLayerGzip],
    ['rootfs.tar.zst', zstd(rootfs), MediaType.ociLayerZstd],
  ] as const) {
    const source = await sourceFor(name, bytes);
    const image = await source.resolve(amd64);
    assert.deepEqual(image.manifest.layers, [{ mediaType, digest: sha256(bytes), size: bytes.length }], name);
    assert.deepEqual(image.config, emptyConfigFor([diffId], amd64));
    assert.equal(image.name, `tarball:${join(work, name)}`);
    assert.deepEqual(image.platform, amd64);
    await checkEveryBlob(source, image);
    const manifestBlob = await readBlob(source, { mediaType: MediaType.ociManifest, digest: image.manifestDigest, size: image.manifestBytes.length });
    assert.ok(manifestBlob.equals(image.manifestBytes));
  }
});

test('the same tarball always gives the same image ID', async () => {
  const one = await (await sourceFor('stable.tar.gz', gzip(rootfs))).resolve(amd64);
  const two = await (await sourceFor('stable.tar.gz', gzip(rootfs))).resolve(amd64);
  assert.equal(one.manifestDigest, two.manifestDigest);
  assert.ok(one.configBytes.equals(two.configBytes));
  // Canonical JSON: keys sorted, no whitespace.
  assert.equal(one.manifestBytes.toString(), JSON.stringify(JSON.parse(one.manifestBytes.toString())));
  assert.match(one.manifestBytes.toString(), /^\{"config":\{"digest":/);
  const arm = await (await sourceFor('stable.tar.gz', gzip(rootfs))).resolve({ os: 'linux', architecture: 'arm64', variant: 'v8' });
  assert.notEqual(arm.manifestDigest, one.manifestDigest);
  assert.equal(arm.config.variant, 'v8');
});

test('files that are not tarballs fail naming the file', async () => {
  const notTar = await sourceFor('junk.tar', Buffer.alloc(2048, 'junk'));
  await assert.rejects(notTar.resolve(amd64), (err: unknown) => {
    assert.ok(isLazyrootError(err, 'INVALID_DATA'));
    assert.match((err as Error).message, new RegExp(`^tarball:${join(work, 'junk.tar')}: not a tar archive \\(bad header checksum\\)$`));
    return true;
  });
  const badGzip = await sourceFor('broken.tar.gz', gzip(rootfs).subarray(0, Math.floor(gzip(rootfs).length / 2)));
  await assert.rejects(badGzip.resolve(amd64), /broken\.tar\.gz: cannot read gzip layer/);
  const missing = new TarballSource({ transport: 'tarball', path: join(work, 'absent.tar') });
  await assert.rejects(missing.resolve(amd64), (err: unknown) => isLazyrootError(err, 'NOT_FOUND') && /absent\.tar/.test((err as Error).message));
  const empty = await sourceFor('empty.tar', Buffer.alloc(0));
  await assert.rejects(empty.resolve(amd64), /not a tar archive \(empty\)/);
});

test('blobs other than its own are refused', async () => {
  const source = await sourceFor('own.tar', rootfs);
  await source.resolve(amd64);
  await assert.rejects(source.openBlob({ mediaType: MediaType.ociLayer, digest: `sha256:${'1'.repeat(64)}`, size: 3 }), /is not part of this image/);
});

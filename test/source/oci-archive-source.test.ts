import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { isLazyrootError } from '../../src/errors.js';
import type { Platform } from '../../src/oci/types.js';
import { openOciArchiveSource } from '../../src/source/oci-archive-source.js';
import { buildOciLayout, tarOfFiles, writeOciArchive, writeOciLayout, type ImageSpec } from '../helpers/image-builder.js';
import { checkEveryBlob, readBlob, sha256, skopeo } from '../helpers/source-checks.js';
import { buildTar, dir, file, gzip, zstd } from '../helpers/tar-builder.js';

const run = promisify(execFile);
const amd64: Platform = { os: 'linux', architecture: 'amd64' };
const arm64: Platform = { os: 'linux', architecture: 'arm64', variant: 'v8' };
let work: string;
let scratch: string;
let spec: ImageSpec;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'lazyroot-oci-archive-'));
  scratch = join(work, 'scratch');
  await mkdir(scratch);
  spec = {
    layers: [
      { tar: await buildTar([dir('etc'), file('etc/hostname', 'box\n')]), compression: 'gzip' },
      { tar: await buildTar([file('opt/big', Buffer.alloc(100_000, 1))]), compression: 'none' },
      { tar: await buildTar([file('opt/z', 'zstd')]), compression: 'zstd' },
    ],
    refName: 'latest',
  };
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

test('resolves like skopeo does and serves every blob', async () => {
  const path = join(work, 'image.tar');
  await writeOciArchive(path, [spec]);
  const source = await openOciArchiveSource({ transport: 'oci-archive', path, ref: 'latest' }, { tmpDir: scratch });
  assert.equal(source.description, `oci-archive:${path}`);
  const image = await source.resolve(amd64);
  const skopeoManifest = await skopeo('inspect', '--raw', `oci-archive:${path}:latest`);
  const skopeoConfig = await skopeo('inspect', '--config', '--raw', `oci-archive:${path}:latest`);
  assert.equal(image.manifestDigest, sha256(skopeoManifest));
  assert.equal(image.manifest.config.digest, sha256(skopeoConfig));
  assert.deepEqual(
    image.manifest.layers.map((l) => l.digest),
    JSON.parse(skopeoManifest.toString()).layers.map((l: { digest: string }) => l.digest),
  );
  assert.equal(image.name, `oci-archive:${path}:latest`);
  await checkEveryBlob(source, image);
  await source.close();
});

test('reads an archive made by GNU tar from a layout directory (./ names), and a multi-platform one', async () => {
  const layoutDir = join(work, 'layout-for-gnu');
  const layout = await writeOciLayout(layoutDir, [{ ...spec, platform: amd64 }, { ...spec, platform: arm64 }], { index: true });
  const path = join(work, 'gnu.tar');
  await run('tar', ['-cf', path, '-C', layoutDir, '.']);
  const source = await openOciArchiveSource({ transport: 'oci-archive', path }, { tmpDir: scratch });
  const image = await source.resolve(arm64);
  assert.equal(image.manifestDigest, layout.images[1]!.manifestDigest);
  assert.equal(image.indexDigest, layout.index!.digest);
  const skopeoConfig = await skopeo('--override-arch', 'arm64', 'inspect', '--config', '--raw', `oci-archive:${path}`);
  assert.equal(image.manifest.config.digest, sha256(skopeoConfig));
  await assert.rejects(source.resolve({ os: 'linux', architecture: 'ppc64le' }), /available: linux\/amd64, linux\/arm64\/v8/);
  await checkEveryBlob(source, image);
  await source.close();
});

test('gzip- and zstd-compressed archives work, and leave nothing in tmpDir after close', async () => {
  const tarPath = join(work, 'plain.tar');
  const layout = await writeOciArchive(tarPath, [spec]);
  const tar = await readFile(tarPath);
  for (const [name, bytes] of [
    ['image.tar.gz', gzip(tar)],
    ['image.tar.zst', zstd(tar)],
  ] as const) {
    const path = join(work, name);
    await writeFile(path, bytes);
    const source = await openOciArchiveSource({ transport: 'oci-archive', path }, { tmpDir: scratch });
    const image = await source.resolve(amd64);
    assert.equal(image.manifestDigest, layout.images[0]!.manifestDigest);
    await checkEveryBlob(source, image);
    await source.close();
    assert.deepEqual(await readdir(scratch), []);
  }
});

test('bad archives fail naming the archive and the member or blob', async (t) => {
  const open = (path: string): ReturnType<typeof openOciArchiveSource> => openOciArchiveSource({ transport: 'oci-archive', path }, { tmpDir: scratch });
  const layout = buildOciLayout([spec]);
  const withFiles = async (name: string, edit: (files: Map<string, Buffer>) => void): Promise<string> => {
    const files = new Map(layout.files);
    edit(files);
    const path = join(work, name);
    await writeFile(path, await tarOfFiles(files));
    return path;
  };
  const blobName = (digest: string): string => `blobs/sha256/${digest.slice('sha256:'.length)}`;

  await t.test('missing index.json', async () => {
    const path = await withFiles('no-index.tar', (files) => files.delete('index.json'));
    await assert.rejects((await open(path)).resolve(amd64), new RegExp(`^LazyrootError: oci-archive:${path}: index.json: missing from archive$`));
  });
  await t.test('index.json not JSON', async () => {
    const path = await withFiles('bad-index.tar', (files) => files.set('index.json', Buffer.from('not json')));
    await assert.rejects((await open(path)).resolve(amd64), (err: unknown) => {
      assert.ok(isLazyrootError(err, 'INVALID_MANIFEST'));
      assert.match((err as Error).message, new RegExp(`^oci-archive:${path}: index.json: not valid JSON`));
      return true;
    });
  });
  await t.test('layer blob missing', async () => {
    const layer = layout.images[0]!.layers[1]!.descriptor;
    const path = await withFiles('no-layer.tar', (files) => files.delete(blobName(layer.digest)));
    const source = await open(path);
    const image = await source.resolve(amd64);
    await assert.rejects(readBlob(source, image.manifest.layers[1]!), (err: unknown) => {
      assert.ok(isLazyrootError(err, 'NOT_FOUND'));
      assert.match((err as Error).message, new RegExp(`blob ${layer.digest.slice(0, 19)}.*missing from archive`));
      return true;
    });
  });
  await t.test('manifest whose bytes do not match its digest', async () => {
    const digest = layout.images[0]!.manifestDigest;
    const path = await withFiles('bad-manifest.tar', (files) => {
      const bytes = Buffer.from(files.get(blobName(digest))!);
      bytes[bytes.length - 1] = 0x20; // same size, different bytes
      files.set(blobName(digest), bytes);
    });
    await assert.rejects((await open(path)).resolve(amd64), (err: unknown) => {
      assert.ok(isLazyrootError(err, 'DIGEST_MISMATCH'));
      assert.match((err as Error).message, new RegExp(`manifest ${digest}: digest mismatch`));
      return true;
    });
  });
  await t.test('truncated archive', async () => {
    const full = await tarOfFiles(layout.files);
    const path = join(work, 'truncated.tar');
    await writeFile(path, full.subarray(0, Math.floor(full.length / 2) + 100));
    await assert.rejects(open(path), new RegExp(`oci-archive:${path}: not a valid tar archive \\(truncated\\)`));
  });
});

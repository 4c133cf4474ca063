import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { parseReference } from '../../src/reference/reference.js';
import { DockerArchiveSource } from '../../src/source/docker-archive-source.js';
import { OciLayoutSource } from '../../src/source/oci-layout-source.js';
import { openSource } from '../../src/source/open-source.js';
import { RegistrySource } from '../../src/source/registry/registry-source.js';
import { TarballSource } from '../../src/source/tarball-source.js';
import { writeDockerArchive, writeOciArchive, writeOciLayout } from '../helpers/image-builder.js';
import { buildTar, file } from '../helpers/tar-builder.js';

let work: string;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'lazyroot-open-source-'));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

test('each transport opens its source, and all resolve the same layer', async () => {
  const tar = await buildTar([file('hello', 'world')]);
  const spec = { layers: [{ tar, compression: 'none' as const }], refName: 'v1' };
  await writeOciLayout(join(work, 'layout'), [spec]);
  await writeOciArchive(join(work, 'image.oci.tar'), [spec]);
  await writeDockerArchive(join(work, 'image.docker.tar'), [{ ...spec, repoTags: ['hello:v1'] }]);
  await writeFile(join(work, 'rootfs.tar'), tar);
  const cases = [
    [`oci:${join(work, 'layout')}:v1`, OciLayoutSource],
    [`oci-archive:${join(work, 'image.oci.tar')}:v1`, OciLayoutSource],
    [`docker-archive:${join(work, 'image.docker.tar')}:@0`, DockerArchiveSource],
    [join(work, 'rootfs.tar'), TarballSource],
  ] as const;
  const platform = { os: 'linux', architecture: 'amd64' };
  for (const [text, kind] of cases) {
    const source = await openSource(parseReference(text), { tmpDir: work });
    assert.ok(source instanceof kind, text);
    const image = await source.resolve(platform);
    assert.deepEqual(image.config.rootfs.diff_ids, [`sha256:${createHash('sha256').update(tar).digest('hex')}`], text);
    await source.close();
  }
});

test('docker references open a registry source (no network until resolve)', async () => {
  const source = await openSource(parseReference('docker://127.0.0.1:1/app:v1'), { tmpDir: work, registry: { insecure: true } });
  assert.ok(source instanceof RegistrySource);
  await source.close();
});

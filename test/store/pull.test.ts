import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Store } from '../../src/store/store.js';
import { pullReference, type ReferenceOptions } from '../../src/store/operations.js';
import { chainIds } from '../../src/oci/chain-id.js';
import { MediaType } from '../../src/oci/media-types.js';
import type { LazyrootError } from '../../src/errors.js';
import { startRegistry, signSchema1, type TestRegistry } from '../helpers/registry.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { buildImage, pushToRegistry, writeDockerArchive, writeOciArchive, writeOciLayout, type ImageSpec } from '../helpers/image-builder.js';
import { buildTar, dir, file, gzip, symlink } from '../helpers/tar-builder.js';
import { skopeo } from '../helpers/source-checks.js';
import { storeSnapshot } from '../helpers/store-snapshot.js';
import { missingRequirements } from '../helpers/requirements.js';

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const needs = { tools: ['docker-registry', 'skopeo', 'zstd', 'htpasswd'] };
const missing = missingRequirements(needs);
if (missing.length && process.env.CI) throw new Error(`CI: pull tests need ${missing.join(', ')} (run scripts/bootstrap)`);
const fast: ReferenceOptions = { registry: { retries: 2, retryBaseDelayMs: 10, retryMaxDelayMs: 20, requestTimeoutMs: 5000 } };

async function layerSpec(name: string, compression: 'gzip' | 'zstd' | 'none', size = 4096): Promise<ImageSpec['layers'][number]> {
  // Incompressible and deterministic: sha512 in counter mode.
  const blocks: Buffer[] = [];
  for (let i = 0; i * 64 < size; i++) blocks.push(createHash('sha512').update(`${name}/${i}`).digest());
  const content = Buffer.concat(blocks).subarray(0, size);
  return { tar: await buildTar([dir('data'), file(`data/${name}`, content), symlink(`data/${name}.link`, name)]), compression };
}

describe('pull', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let registry: TestRegistry;
  let work: string;
  let storeRoot: string;
  let store: Store;
  let n = 0;

  before(async () => {
    registry = await startRegistry();
    work = await mkdtemp(join(tmpdir(), 'lazyroot-pull-'));
  });
  after(async () => {
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  async function freshStore(): Promise<Store> {
    store?.close();
    storeRoot = join(work, `store-${n++}`);
    store = await Store.open(storeRoot);
    return store;
  }

  async function pushLayout(repoTag: string, specs: ImageSpec[], opts: { index?: boolean } = {}): Promise<string> {
    const layout = join(work, `layout-${n++}`);
    await writeOciLayout(layout, specs, opts);
    await pushToRegistry(layout, repoTag, registry.host, opts.index ? { all: true } : {});
    return layout;
  }

  /** The stored image must carry exactly what `skopeo inspect --raw` reports, and every blob must verify. */
  async function assertMatchesSkopeo(s: Store, name: string, ref: string): Promise<void> {
    const raw = await skopeo('inspect', '--raw', '--tls-verify=false', ref);
    const config = await skopeo('inspect', '--config', '--raw', '--tls-verify=false', ref);
    const image = s.getImage(name);
    const manifest = JSON.parse(raw.toString()) as { config: { digest: string }; layers: Array<{ digest: string }> };
    assert.equal(image.manifestDigest, sha256(raw));
    assert.equal(image.id, sha256(config));
    assert.equal(image.id, manifest.config.digest);
    const stored = await s.manifestOf(image);
    assert.deepEqual(stored.layers.map((l) => l.digest), manifest.layers.map((l) => l.digest));
    for (const digest of [image.manifestDigest, image.id, ...manifest.layers.map((l) => l.digest)]) {
      assert.equal(sha256(await readFile(s.blobs.path(digest))), digest);
    }
    const diffIds = (JSON.parse(config.toString()) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids;
    assert.deepEqual(image.chainIds, chainIds(diffIds));
  }

  test('gzip, zstd and uncompressed images from a real registry match skopeo inspect', async () => {
    for (const compression of ['gzip', 'zstd', 'none'] as const) {
      await pushLayout(`formats/${compression}:v1`, [{ layers: [await layerSpec('a', compression), await layerSpec('b', compression)] }]);
      const s = await freshStore();
      const ref = `docker://${registry.host}/formats/${compression}:v1`;
      const result = await pullReference(s, ref, fast);
      assert.equal(result.layersDownloaded, 2);
      await assertMatchesSkopeo(s, `${registry.host}/formats/${compression}:v1`, ref);
    }
  });

  test('a multi-platform index gives the manifest for --platform, and names the platforms it has when none fits', async () => {
    const specs: ImageSpec[] = [
      { layers: [await layerSpec('amd', 'gzip')], platform: { os: 'linux', architecture: 'amd64' } },
      { layers: [await layerSpec('arm', 'gzip')], platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    ];
    await pushLayout('multi/app:v1', specs, { index: true });
    const ref = `docker://${registry.host}/multi/app:v1`;
    const s = await freshStore();
    const arm = await pullReference(s, ref, { ...fast, platform: 'linux/arm64' });
    assert.equal(arm.image.platform, 'linux/arm64/v8');
    assert.equal(arm.image.id, buildImage(specs[1]!).configDigest);
    const before = await storeSnapshot(storeRoot);
    await assert.rejects(pullReference(s, ref, { ...fast, platform: 'linux/s390x' }), (err: LazyrootError) => {
      assert.match(err.message, /linux\/s390x/);
      assert.match(err.message, /linux\/amd64/);
      assert.match(err.message, /linux\/arm64/);
      return true;
    });
    assert.deepEqual(await storeSnapshot(storeRoot), before);
  });

  test('oci:, oci-archive:, docker-archive: and rootfs tarballs pull into the same store', async () => {
    const s = await freshStore();
    const spec: ImageSpec = { layers: [await layerSpec('local', 'gzip'), await layerSpec('local2', 'none')], refName: 'v1' };
    const built = buildImage(spec);
    await writeOciLayout(join(work, 'layout-local'), [spec]);
    await writeOciArchive(join(work, 'local.oci.tar'), [spec]);
    await writeDockerArchive(join(work, 'local.docker.tar'), [{ ...spec, repoTags: ['local/app:v1'] }]);
    const rootfs = await buildTar([dir('etc'), file('etc/hostname', 'rootfs\n')]);
    await writeFile(join(work, 'rootfs.tar.gz'), gzip(rootfs));

    const fromLayout = await pullReference(s, `oci:${join(work, 'layout-local')}:v1`);
    assert.equal(fromLayout.image.id, built.configDigest);
    assert.equal(fromLayout.image.manifestDigest, built.manifestDigest);
    const fromArchive = await pullReference(s, `oci-archive:${join(work, 'local.oci.tar')}:v1`);
    assert.equal(fromArchive.image.id, built.configDigest);
    assert.equal(fromArchive.bytesTransferred, 0, 'same blobs: nothing copied twice');
    const fromDocker = await pullReference(s, `docker-archive:${join(work, 'local.docker.tar')}:local/app:v1`);
    assert.equal(fromDocker.image.id, built.configDigest, 'docker-archive keeps the config bytes');
    const fromTarball = await pullReference(s, join(work, 'rootfs.tar.gz'));
    assert.equal(fromTarball.image.chainIds.length, 1);
    assert.equal(s.db.layer(fromTarball.image.chainIds[0]!)!.diffId, sha256(rootfs));
    assert.deepEqual(
      s.db.listImages().flatMap((i) => i.names).sort(),
      [`docker-archive:${join(work, 'local.docker.tar')}:local/app:v1`, `oci-archive:${join(work, 'local.oci.tar')}:v1`, `oci:${join(work, 'layout-local')}:v1`, `tarball:${join(work, 'rootfs.tar.gz')}`].sort(),
    );
  });

  test('a schema1 image is converted, its diff IDs computed from the layers', async (t) => {
    const schema1Registry = await startRegistry({ schema1: true });
    t.after(() => schema1Registry.stop());
    const tars = [await buildTar([file('one', '1')]), await buildTar([file('two', '2')])];
    const blobs = tars.map((tar) => gzip(tar));
    for (const blob of blobs) await schema1Registry.pushBlob('old/app', blob);
    const v1 = (id: string, parent: string | undefined, extra: object = {}) =>
      JSON.stringify({ id, ...(parent ? { parent } : {}), created: '2016-01-01T00:00:00Z', container_config: { Cmd: [`/bin/sh -c #${id}`] }, ...extra });
    const ids = ['a'.repeat(64), 'b'.repeat(64), 'c'.repeat(64)];
    const manifest = {
      schemaVersion: 1,
      name: 'old/app',
      tag: 'v1',
      architecture: 'amd64',
      // Top-down: the newest layer first. The middle entry is an empty (throwaway) layer.
      fsLayers: [{ blobSum: sha256(blobs[1]!) }, { blobSum: sha256(gzip(await buildTar([]))) }, { blobSum: sha256(blobs[0]!) }],
      history: [
        { v1Compatibility: v1(ids[2]!, ids[1], { os: 'linux', architecture: 'amd64', config: { Env: ['A=1'], Cmd: ['/bin/sh'] } }) },
        { v1Compatibility: v1(ids[1]!, ids[0], { throwaway: true }) },
        { v1Compatibility: v1(ids[0]!, undefined) },
      ],
    };
    await schema1Registry.pushBlob('old/app', gzip(await buildTar([])));
    const { signed } = signSchema1(manifest);
    await schema1Registry.pushManifest('old/app', 'v1', signed, MediaType.dockerSchema1Signed);
    const s = await freshStore();
    const result = await pullReference(s, `docker://${schema1Registry.host}/old/app:v1`, fast);
    const config = await s.configOf(result.image);
    assert.deepEqual(config.rootfs.diff_ids, tars.map(sha256));
    assert.deepEqual(config.config?.Env, ['A=1']);
    assert.equal(config.history?.filter((h) => h.empty_layer).length, 1);
    const stored = await s.manifestOf(result.image);
    assert.deepEqual(stored.layers.map((l) => l.digest), blobs.map(sha256));
    assert.ok(s.layersOf(result.image).every((l) => l.diffIdVerified));
  });

  test('--verify-diff-ids refuses a layer whose content does not match the config', async () => {
    const good = await layerSpec('honest', 'gzip');
    const lie = sha256(Buffer.from('not the layer'));
    await pushLayout('lies/diffid:v1', [{ layers: [good], config: { rootfs: { type: 'layers', diff_ids: [lie] } } }]);
    const s = await freshStore();
    const ref = `docker://${registry.host}/lies/diffid:v1`;
    await assert.rejects(pullReference(s, ref, { ...fast, verifyDiffIds: true }), (err: LazyrootError) => {
      assert.equal(err.code, 'DIGEST_MISMATCH');
      assert.match(err.message, /lies\/diffid:v1: layer 1\/1 sha256:[0-9a-f]{64}: uncompressed content does not match the config's diff ID/);
      assert.ok(err.message.includes(lie));
      return true;
    });
    assert.deepEqual((await storeSnapshot(storeRoot)).images, []);
  });

  describe('bad input: a clear error naming the culprit, and no change to the store', () => {
    let proxy: FaultProxy;
    let spec: ImageSpec;
    let layerDigest: string;
    before(async () => {
      spec = { layers: [await layerSpec('bad', 'gzip', 200_000)] };
      const built = buildImage(spec);
      layerDigest = built.layerDigests[0]!;
      await pushLayout('bad/app:v1', [spec]);
      proxy = await startFaultProxy(registry.host);
    });
    after(() => proxy?.close());

    async function expectFailure(ref: string, code: string, message: RegExp, options: ReferenceOptions = fast): Promise<void> {
      const s = await freshStore();
      const before = await storeSnapshot(storeRoot);
      await assert.rejects(pullReference(s, ref, options), (err: LazyrootError) => {
        assert.equal(err.code, code, err.message);
        assert.match(err.message, message);
        return true;
      });
      assert.deepEqual(await storeSnapshot(storeRoot), before);
      const tmp = await readdir(join(storeRoot, 'tmp'));
      assert.ok(tmp.every((f) => f.endsWith('.download')), `only resumable downloads may stay in tmp/: ${tmp}`);
    }
    const viaProxy = () => `docker://${proxy.host}/bad/app:v1`;
    const blobPath = () => new RegExp(`/blobs/${layerDigest}`);
    const manifestPath = /\/manifests\//;

    test('a blob whose bytes do not match its digest', async () => {
      proxy.setRules([{ path: blobPath(), fault: { kind: 'corrupt', atByte: 1000 } }]);
      await expectFailure(viaProxy(), 'DIGEST_MISMATCH', new RegExp(`bad/app:v1: layer 1/1 ${layerDigest.slice(0, 19)}.*digest mismatch \\(want ${layerDigest}, got sha256:`));
    });

    test('a truncated blob', async () => {
      proxy.setRules([{ path: blobPath(), fault: { kind: 'truncate', bytes: 5000 } }]);
      await expectFailure(viaProxy(), 'UNAVAILABLE', new RegExp(`bad/app:v1: layer 1/1 ${layerDigest.slice(0, 19)}`));
    });

    test('a manifest that is not JSON', async () => {
      proxy.setRules([{ path: manifestPath, fault: { kind: 'status', status: 200, body: '{"schemaVersion": 2, oops' } }]);
      await expectFailure(viaProxy(), 'INVALID_MANIFEST', /bad\/app:v1.*manifest.*not valid JSON/);
    });

    test('a manifest of an unknown media type', async () => {
      proxy.setRules([{ path: manifestPath, fault: { kind: 'status', status: 200, body: JSON.stringify({ schemaVersion: 2, mediaType: 'application/x-unknown', config: {}, layers: [] }) } }]);
      await expectFailure(viaProxy(), 'INVALID_MANIFEST', /bad\/app:v1.*unknown manifest media type application\/x-unknown/);
    });

    test('a manifest whose descriptor size lies', async () => {
      const built = buildImage(spec);
      const lying = { ...built.manifest, layers: [{ ...built.manifest.layers[0]!, size: built.manifest.layers[0]!.size - 100 }] };
      const bytes = Buffer.from(JSON.stringify(lying));
      proxy.setRules([]);
      await registry.pushManifest('bad/app', 'lying', bytes, MediaType.ociManifest).catch(() => {
        // A registry that checks sizes on push: serve the lie through the proxy instead.
        proxy.setRules([{ path: /\/bad\/app\/manifests\/lying/, fault: { kind: 'status', status: 200, body: bytes.toString() } }]);
      });
      await expectFailure(`docker://${proxy.host}/bad/app:lying`, 'SIZE_MISMATCH', /bad\/app:lying: layer 1\/1 .*more bytes than the \d+ its descriptor declares/);
    });

    test('an unknown tag (404)', async () => {
      proxy.setRules([]);
      await expectFailure(`docker://${proxy.host}/bad/app:nope`, 'NOT_FOUND', /bad\/app:nope.*404/);
    });

    test('a registry that answers 500', async () => {
      proxy.setRules([{ path: manifestPath, fault: { kind: 'status', status: 500 } }]);
      await expectFailure(viaProxy(), 'UNAVAILABLE', /bad\/app:v1.*500/);
    });

    test('a registry that drops the connection', async () => {
      proxy.setRules([{ path: manifestPath, fault: { kind: 'reset-after', bytes: 0 } }]);
      await expectFailure(viaProxy(), 'UNAVAILABLE', /bad\/app:v1/);
    });

    test('a registry that needs credentials we do not have (401)', async (t) => {
      const locked = await startRegistry({ auth: 'basic' });
      t.after(() => locked.stop());
      await expectFailure(`docker://${locked.host}/bad/app:v1`, 'UNAUTHORIZED', new RegExp(`${locked.host.replace(/\./g, '\\.')}.*401`), {
        registry: { ...fast.registry, env: { HOME: work } },
      });
    });

    test('a reference that does not parse', async () => {
      await expectFailure('docker://Bad/Name', 'INVALID_REFERENCE', /reference "docker:\/\/Bad\/Name": invalid repository component "Bad"/);
    });

    test('a blob cut off mid-transfer once is resumed with Range, not fetched again', async () => {
      proxy.setRules([{ path: blobPath(), fault: { kind: 'reset-after', bytes: 50_000 }, times: 1 }]);
      proxy.log.length = 0;
      const s = await freshStore();
      const result = await pullReference(s, viaProxy(), fast);
      assert.equal(result.bytesTransferred, buildImage(spec).layers[0]!.blob.length);
      const blobRequests = proxy.log.filter((l) => l.includes(layerDigest) && l.startsWith('GET'));
      assert.equal(blobRequests.length, 2, blobRequests.join('\n'));
      assert.match(blobRequests[1]!, /range=bytes=\d+-$/);
    });
  });

  after(() => store?.close());
});

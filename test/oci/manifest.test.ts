import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseImageConfig, parseManifest } from '../../src/oci/manifest.js';
import { MediaType } from '../../src/oci/media-types.js';
import { chainIds } from '../../src/oci/chain-id.js';
import { sha256 } from '../../src/oci/digest.js';
import { parsePlatform, selectPlatform, platformMatches } from '../../src/oci/platform.js';
import type { LazyrootError } from '../../src/errors.js';

const d = (c: string) => `sha256:${c.repeat(64)}`;
const manifest = {
  schemaVersion: 2,
  mediaType: MediaType.ociManifest,
  config: { mediaType: MediaType.ociConfig, digest: d('c'), size: 100 },
  layers: [{ mediaType: MediaType.ociLayerGzip, digest: d('1'), size: 10 }],
};
const bytes = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v));
const fails = (code: string, pattern: RegExp) => (err: LazyrootError) => err.code === code && pattern.test(err.message);

test('manifests and indexes parse by their mediaType, Content-Type or shape', () => {
  assert.equal(parseManifest(bytes(manifest), undefined, 'm').kind, 'manifest');
  const { mediaType: _, ...untyped } = manifest;
  const parsed = parseManifest(bytes(untyped), undefined, 'm');
  assert.equal(parsed.kind, 'manifest');
  assert.equal(parsed.mediaType, MediaType.ociManifest);
  assert.equal(parseManifest(bytes(untyped), MediaType.dockerManifest, 'm').mediaType, MediaType.dockerManifest);
  const index = { schemaVersion: 2, manifests: [{ mediaType: MediaType.ociManifest, digest: d('a'), size: 5 }] };
  assert.equal(parseManifest(bytes(index), undefined, 'i').kind, 'index');
  assert.equal(parseManifest(bytes({ schemaVersion: 1, name: 'x', fsLayers: [] }), undefined, 's').kind, 'schema1');
});

test('malformed manifests are refused naming the document and the fault', () => {
  assert.throws(() => parseManifest(bytes('{not json'), undefined, 'registry/x:1: manifest'), fails('INVALID_MANIFEST', /^registry\/x:1: manifest: not valid JSON/));
  assert.throws(() => parseManifest(bytes('[]'), undefined, 'm'), fails('INVALID_MANIFEST', /not a JSON object/));
  assert.throws(() => parseManifest(bytes({ ...manifest, mediaType: 'application/x-nope' }), undefined, 'm'), fails('INVALID_MANIFEST', /unknown manifest media type application\/x-nope/));
  assert.throws(() => parseManifest(bytes({ ...manifest, schemaVersion: 3 }), undefined, 'm'), fails('INVALID_MANIFEST', /unsupported schemaVersion 3/));
  assert.throws(
    () => parseManifest(bytes({ ...manifest, layers: [{ mediaType: MediaType.ociLayerGzip, digest: 'sha256:xyz', size: 1 }] }), undefined, 'm'),
    fails('INVALID_MANIFEST', /layers\[0\]: descriptor digest "sha256:xyz" is not a valid digest/),
  );
  assert.throws(
    () => parseManifest(bytes({ ...manifest, layers: [{ mediaType: MediaType.ociLayerGzip, digest: d('1'), size: -1 }] }), undefined, 'm'),
    fails('INVALID_MANIFEST', /invalid size -1/),
  );
  assert.throws(
    () => parseManifest(bytes({ ...manifest, layers: [{ mediaType: 'application/x-weird', digest: d('1'), size: 1 }] }), undefined, 'm'),
    fails('UNSUPPORTED', /unsupported layer media type application\/x-weird/),
  );
  assert.throws(() => parseManifest(bytes({ schemaVersion: 2, foo: 1 }), undefined, 'm'), fails('INVALID_MANIFEST', /neither a manifest nor an index/));
});

test('configs must list one diff ID per layer', () => {
  const config = { os: 'linux', architecture: 'amd64', rootfs: { type: 'layers', diff_ids: [d('e')] } };
  assert.equal(parseImageConfig(bytes(config), 1, 'c').rootfs.diff_ids.length, 1);
  assert.throws(() => parseImageConfig(bytes(config), 2, 'cfg'), fails('INVALID_MANIFEST', /cfg: config lists 1 diff IDs but the manifest has 2 layers/));
  assert.throws(() => parseImageConfig(bytes({ os: 'linux', architecture: 'amd64' }), 0, 'c'), fails('INVALID_MANIFEST', /no rootfs.diff_ids/));
});

test('chain IDs follow the OCI spec', () => {
  const [a, b, c] = [d('1'), d('2'), d('3')];
  const ids = chainIds([a, b, c]);
  assert.equal(ids[0], a);
  assert.equal(ids[1], sha256(`${a} ${b}`));
  assert.equal(ids[2], sha256(`${ids[1]} ${c}`));
});

test('platform selection honours variants and skips platform-less entries', () => {
  const entries = [
    { mediaType: MediaType.ociManifest, digest: d('0'), size: 1 },
    { mediaType: MediaType.ociManifest, digest: d('1'), size: 1, platform: { os: 'linux', architecture: 'arm', variant: 'v6' } },
    { mediaType: MediaType.ociManifest, digest: d('2'), size: 1, platform: { os: 'linux', architecture: 'arm', variant: 'v7' } },
    { mediaType: MediaType.ociManifest, digest: d('3'), size: 1, platform: { os: 'linux', architecture: 'amd64' } },
    { mediaType: MediaType.ociManifest, digest: d('4'), size: 1, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
  ];
  assert.equal(selectPlatform(entries, parsePlatform('linux/arm/v7'))?.digest, d('2'));
  assert.equal(selectPlatform(entries, parsePlatform('linux/arm'))?.digest, d('2'), 'arm defaults to v7');
  assert.equal(selectPlatform(entries, parsePlatform('linux/amd64'))?.digest, d('3'));
  assert.equal(selectPlatform(entries, parsePlatform('linux/arm64'))?.digest, d('4'));
  assert.equal(selectPlatform(entries, parsePlatform('linux/s390x')), undefined);
  assert.ok(platformMatches({ os: 'linux', architecture: 'arm64' }, { os: 'linux', architecture: 'arm64' }));
  assert.throws(() => parsePlatform('linux'), /expected os\/arch\[\/variant\]/);
});

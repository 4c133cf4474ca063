import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sha256 } from '../../src/oci/digest.js';
import { parseImageConfig, parseManifest } from '../../src/oci/manifest.js';
import { MediaType } from '../../src/oci/media-types.js';
import { planSchema1, schema1ManifestDigest, schema1Payload } from '../../src/oci/schema1.js';
import { isLazyrootError } from '../../src/errors.js';
import { signSchema1 } from '../helpers/registry.js';

const base = sha256('base layer');
const empty = sha256('empty layer');
const app = sha256('app layer');
const diffBase = sha256('base diff');
const diffApp = sha256('app diff');

/** A schema1 manifest as Docker 1.x pushed it: newest entry first. */
function schema1Document(): Record<string, unknown> {
  const v1 = (fields: Record<string, unknown>): { v1Compatibility: string } => ({ v1Compatibility: JSON.stringify(fields) });
  return {
    schemaVersion: 1,
    name: 'team/app',
    tag: 'v1',
    architecture: 'arm64',
    fsLayers: [{ blobSum: app }, { blobSum: empty }, { blobSum: base }],
    history: [
      v1({
        id: 'c3',
        parent: 'c2',
        created: '2016-03-01T00:00:03Z',
        author: 'someone@example.com',
        container_config: { Cmd: ['/bin/sh', '-c', 'cp app /usr/bin/app'] },
        config: { Env: ['PATH=/usr/bin'], Cmd: ['/usr/bin/app'], WorkingDir: '/srv' },
        architecture: 'arm64',
        os: 'linux',
        Size: 1234,
        docker_version: '1.10.3',
      }),
      v1({
        id: 'c2',
        parent: 'c1',
        created: '2016-03-01T00:00:02Z',
        container_config: { Cmd: ['/bin/sh', '-c', '#(nop) ENV PATH=/usr/bin'] },
        throwaway: true,
      }),
      v1({ id: 'c1', created: '2016-03-01T00:00:01Z', container_config: { Cmd: ['/bin/sh', '-c', '#(nop) ADD file:abc in /'] }, comment: 'base' }),
    ],
  };
}

test('schema1: layers come out bottom-up with throwaway entries skipped', () => {
  const plan = planSchema1(schema1Document(), 'team/app:v1');
  assert.deepEqual(plan.entries, [
    { digest: base, throwaway: false },
    { digest: empty, throwaway: true },
    { digest: app, throwaway: false },
  ]);
  assert.deepEqual(plan.layers, [base, app]);
  assert.deepEqual(plan.platform, { os: 'linux', architecture: 'arm64' });
});

test('schema1: the config is the top v1Compatibility, minus v1 fields, plus rootfs and history', () => {
  const plan = planSchema1(schema1Document(), 'team/app:v1');
  const layers = [
    { mediaType: MediaType.dockerLayerGzip, digest: base, size: 100 },
    { mediaType: MediaType.dockerLayerGzip, digest: app, size: 200 },
  ];
  const { config, configBytes, manifest, manifestBytes } = plan.build(layers, [diffBase, diffApp]);

  const raw = JSON.parse(configBytes.toString('utf8')) as Record<string, unknown>;
  for (const dropped of ['id', 'parent', 'Size', 'throwaway', 'parent_id', 'layer_id']) assert.equal(dropped in raw, false, dropped);
  assert.deepEqual(config.rootfs, { type: 'layers', diff_ids: [diffBase, diffApp] });
  assert.deepEqual(config.config, { Env: ['PATH=/usr/bin'], Cmd: ['/usr/bin/app'], WorkingDir: '/srv' });
  assert.equal(config.architecture, 'arm64');
  assert.equal(config.os, 'linux');
  assert.equal(raw.docker_version, '1.10.3');
  assert.deepEqual(config.history, [
    { created: '2016-03-01T00:00:01Z', created_by: '/bin/sh -c #(nop) ADD file:abc in /', comment: 'base' },
    { created: '2016-03-01T00:00:02Z', created_by: '/bin/sh -c #(nop) ENV PATH=/usr/bin', empty_layer: true },
    { created: '2016-03-01T00:00:03Z', created_by: '/bin/sh -c cp app /usr/bin/app', author: 'someone@example.com' },
  ]);
  // The result is a valid schema2 image by our own parsers.
  assert.deepEqual(parseImageConfig(configBytes, 2, 'converted config').rootfs.diff_ids, [diffBase, diffApp]);

  assert.equal(manifest.mediaType, MediaType.dockerManifest);
  assert.deepEqual(manifest.config, { mediaType: MediaType.dockerConfig, size: configBytes.length, digest: sha256(configBytes) });
  assert.deepEqual(manifest.layers, layers);
  const reparsed = parseManifest(manifestBytes, undefined, 'converted manifest');
  assert.equal(reparsed.kind, 'manifest');
});

test('schema1: conversion is deterministic and the pending config has no diff IDs yet', () => {
  const layers = [
    { mediaType: MediaType.dockerLayerGzip, digest: base, size: 1 },
    { mediaType: MediaType.dockerLayerGzip, digest: app, size: 2 },
  ];
  const a = planSchema1(schema1Document(), 'x').build(layers, [diffBase, diffApp]);
  const b = planSchema1(schema1Document(), 'x').build(layers, [diffBase, diffApp]);
  assert.deepEqual(a.configBytes, b.configBytes);
  assert.deepEqual(a.manifestBytes, b.manifestBytes);
  assert.deepEqual(planSchema1(schema1Document(), 'x').pendingConfig.config.rootfs.diff_ids, []);
});

test('schema1: build refuses descriptors or diff IDs that do not match the plan', () => {
  const plan = planSchema1(schema1Document(), 'team/app:v1');
  const good = [
    { mediaType: MediaType.dockerLayerGzip, digest: base, size: 1 },
    { mediaType: MediaType.dockerLayerGzip, digest: app, size: 2 },
  ];
  assert.throws(() => plan.build(good, [diffBase]), (e) => isLazyrootError(e, 'INVALID_MANIFEST') && /needs 2 layers/.test(e.message));
  assert.throws(() => plan.build([good[1]!, good[0]!], [diffBase, diffApp]), /schema1 layer 0 is sha256:/);
});

test('schema1: repeated consecutive entries (old Docker pushes) are dropped', () => {
  const doc = schema1Document();
  (doc.fsLayers as unknown[]).unshift({ blobSum: app });
  (doc.history as unknown[]).unshift((doc.history as unknown[])[0]);
  const plan = planSchema1(doc, 'x');
  assert.deepEqual(plan.layers, [base, app]);
  assert.equal(plan.entries.length, 3);
});

test('schema1: malformed documents are INVALID_MANIFEST naming the manifest', () => {
  const mismatch = schema1Document();
  (mismatch.history as unknown[]).pop();
  assert.throws(() => planSchema1(mismatch, 'team/app:v1'), (e) => isLazyrootError(e, 'INVALID_MANIFEST') && /team\/app:v1: schema1: 3 fsLayers but 2 history/.test(e.message));
  const badJson = schema1Document();
  (badJson.history as Array<{ v1Compatibility: string }>)[1]!.v1Compatibility = '{nope';
  assert.throws(() => planSchema1(badJson, 'm'), /history\[1\]\.v1Compatibility is not valid JSON/);
  const badDigest = schema1Document();
  (badDigest.fsLayers as Array<{ blobSum: string }>)[0]!.blobSum = 'md5:abc';
  assert.throws(() => planSchema1(badDigest, 'm'), /fsLayers\[0\]\.blobSum "md5:abc" is not a valid digest/);
  assert.throws(() => planSchema1({ schemaVersion: 1, fsLayers: [], history: [] }, 'm'), /no layers/);
});

test('schema1: a signed manifest is identified by its payload without signatures', () => {
  const { signed, payload } = signSchema1(schema1Document());
  assert.notDeepEqual(signed, payload);
  assert.deepEqual(schema1Payload(signed, 'm'), payload);
  assert.equal(schema1ManifestDigest(signed, 'm'), sha256(payload));
  // Unsigned: the bytes are the payload.
  assert.equal(schema1ManifestDigest(payload, 'm'), sha256(payload));
  assert.match(schema1ManifestDigest(signed, 'm', 'sha512'), /^sha512:[a-f0-9]{128}$/);
});

test('schema1: signatures that disagree on the payload are refused', () => {
  const { signed } = signSchema1(schema1Document());
  const doc = JSON.parse(signed.toString('utf8')) as { signatures: Array<{ protected: string }> };
  const header = JSON.parse(Buffer.from(doc.signatures[0]!.protected, 'base64url').toString('utf8')) as Record<string, unknown>;
  const other = { ...doc.signatures[0]!, protected: Buffer.from(JSON.stringify({ ...header, formatLength: 3 })).toString('base64url') };
  const tampered = Buffer.from(JSON.stringify({ ...doc, signatures: [doc.signatures[0], other] }));
  assert.throws(() => schema1Payload(tampered, 'm'), (e) => isLazyrootError(e, 'INVALID_MANIFEST') && /disagree/.test(e.message));
});

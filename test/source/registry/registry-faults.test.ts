/**
 * RegistrySource when things go wrong between it and the real registry: the
 * fault-injecting proxy (test/helpers/fault-proxy.ts) sits in front of
 * docker-registry and fails chosen requests with 5xx, resets, truncation,
 * stalls, corrupted bytes, ignored Range headers or bodies that are not
 * manifests.
 */
import { after, before, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { DigestMismatchError, isLazyrootError } from '../../../src/errors.js';
import { sha256 } from '../../../src/oci/digest.js';
import { parseDockerReference } from '../../../src/reference/reference.js';
import { RegistryError } from '../../../src/source/registry/registry-error.js';
import { RegistrySource, type RegistrySourceOptions } from '../../../src/source/registry/registry-source.js';
import { startFaultProxy, type FaultProxy } from '../../helpers/fault-proxy.js';
import { buildImage, type BuiltImage } from '../../helpers/image-builder.js';
import { startRegistry, type TestRegistry } from '../../helpers/registry.js';
import { buildTar, file } from '../../helpers/tar-builder.js';

const amd64 = { os: 'linux', architecture: 'amd64' };
const fast: RegistrySourceOptions = { retries: 2, retryBaseDelayMs: 1, retryMaxDelayMs: 5 };

let registry: TestRegistry;
let proxy: FaultProxy;
let image: BuiltImage;
const sources: RegistrySource[] = [];

function source(ref = 'app:v1', options: RegistrySourceOptions = {}): RegistrySource {
  const s = new RegistrySource(parseDockerReference(`${proxy.host}/${ref}`), { ...fast, ...options });
  sources.push(s);
  return s;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function requestsFor(path: RegExp): string[] {
  return proxy.log.filter((line) => path.test(line));
}

const bigLayer = (): BuiltImage['layers'][number] => image.layers[0]!;

before(async () => {
  registry = await startRegistry();
  const data = Buffer.concat(Array.from({ length: 2048 }, (_, i) => createHash('sha512').update(`faults ${i}`).digest()));
  image = buildImage({ layers: [{ tar: await buildTar([file('data/random', data)]), compression: 'gzip' }] });
  await registry.pushImage('app', 'v1', image);
  proxy = await startFaultProxy(registry.host);
});

beforeEach(() => {
  proxy.setRules([]);
  proxy.log.length = 0;
});

after(async () => {
  for (const s of sources) await s.close();
  await proxy?.close();
  await registry?.stop();
});

test('500 twice, then 200: the manifest request is retried and succeeds', async () => {
  proxy.setRules([{ method: 'GET', path: /\/manifests\/v1$/, fault: { kind: 'status', status: 500 }, times: 2 }]);
  const resolved = await source().resolve(amd64);
  assert.equal(resolved.manifestDigest, image.manifestDigest);
  assert.equal(requestsFor(/manifests\/v1/).length, 3);
});

test('500 forever: UNAVAILABLE after the retries, naming the image and the registry\'s words', async () => {
  proxy.setRules([{ method: 'GET', path: /\/manifests\/v1$/, fault: { kind: 'status', status: 500 } }]);
  await assert.rejects(source().resolve(amd64), (err) => {
    assert.ok(err instanceof RegistryError);
    assert.equal(err.code, 'UNAVAILABLE');
    assert.equal(err.temporary, true);
    assert.equal(err.status, 500);
    assert.deepEqual(err.registryCodes, ['UNKNOWN']);
    assert.match(err.message, new RegExp(`^${proxy.host}/app:v1: manifest: 500 UNKNOWN injected 500 \\(GET http://${proxy.host}/v2/app/manifests/v1 after 3 attempts\\)$`));
    return true;
  });
  assert.equal(requestsFor(/manifests\/v1/).length, 3);
});

test('a 404 is not retried', async () => {
  await assert.rejects(source('app:missing').resolve(amd64), (e) => isLazyrootError(e, 'NOT_FOUND'));
  assert.equal(requestsFor(/manifests\/missing/).length, 1);
});

// (A reset mid-blob is in transport.test.ts, against a fake that can time it exactly.)
test('a connection closed mid-blob makes the stream fail, naming the blob and how far it got', async () => {
  proxy.setRules([{ method: 'GET', path: /\/blobs\//, fault: { kind: 'truncate', bytes: 20_000 } }]);
  const layer = bigLayer();
  await assert.rejects(readAll(await source().openBlob(layer.descriptor)), (err) => {
    assert.ok(isLazyrootError(err, 'UNAVAILABLE'));
    assert.match(err.message, new RegExp(`^${proxy.host}/app:v1: blob ${layer.descriptor.digest}: connection lost after byte 20000 of ${layer.blob.length}`));
    return true;
  });
});

test('after a drop, openBlob from the offset reached gives the rest (206)', async () => {
  proxy.setRules([{ method: 'GET', path: /\/blobs\//, fault: { kind: 'truncate', bytes: 30_000 }, times: 1 }]);
  const layer = bigLayer();
  const s = source();
  const got: Buffer[] = [];
  const first = await s.openBlob(layer.descriptor);
  await assert.rejects(async () => {
    for await (const chunk of first) got.push(chunk as Buffer);
  });
  const offset = Buffer.concat(got).length;
  assert.equal(offset, 30_000);
  const rest = await readAll(await s.openBlob(layer.descriptor, offset));
  assert.equal(sha256(Buffer.concat([...got, rest])), layer.descriptor.digest);
  assert.equal(s.rangeSupport, 'supported');
  assert.deepEqual(requestsFor(/range=/), [`GET /v2/app/blobs/${layer.descriptor.digest} range=bytes=${offset}-`]);
});

test('a registry that ignores Range: openBlob skips to the offset, readRange slices, rangeSupport says so', async () => {
  proxy.setRules([{ method: 'GET', path: /\/blobs\//, fault: { kind: 'ignore-range' } }]);
  const layer = bigLayer();
  const s = source();
  assert.equal(s.rangeSupport, 'unknown');
  const offset = 12_345;
  assert.deepEqual(await readAll(await s.openBlob(layer.descriptor, offset)), layer.blob.subarray(offset));
  assert.equal(s.rangeSupport, 'ignored');
  assert.deepEqual(await s.readRange(layer.descriptor, 40_000, 40_100), layer.blob.subarray(40_000, 40_100));
});

test('a stalled blob fails after the request timeout instead of hanging', async () => {
  proxy.setRules([{ method: 'GET', path: /\/blobs\//, fault: { kind: 'stall', afterBytes: 1000 } }]);
  const layer = bigLayer();
  const started = Date.now();
  await assert.rejects(readAll(await source('app:v1', { requestTimeoutMs: 300 }).openBlob(layer.descriptor)), (err) => {
    assert.ok(isLazyrootError(err, 'UNAVAILABLE'));
    assert.match(err.message, new RegExp(`blob ${layer.descriptor.digest}: connection lost after byte 1000 .*UND_ERR_BODY_TIMEOUT`));
    return true;
  });
  assert.ok(Date.now() - started < 5000);
});

test('a manifest that is not JSON is INVALID_MANIFEST naming the image', async () => {
  proxy.setRules([{ method: 'GET', path: /\/manifests\/v1$/, fault: { kind: 'status', status: 200, body: '<html>captive portal</html>' } }]);
  await assert.rejects(source().resolve(amd64), (err) => {
    assert.ok(isLazyrootError(err, 'INVALID_MANIFEST'));
    assert.match(err.message, new RegExp(`^${proxy.host}/app:v1: manifest: not valid JSON`));
    return true;
  });
});

test('a manifest with an unknown mediaType is INVALID_MANIFEST saying which type', async () => {
  const odd = { ...image.manifest, mediaType: 'application/vnd.example.thing.v1+json' };
  proxy.setRules([{ method: 'GET', path: /\/manifests\/v1$/, fault: { kind: 'status', status: 200, body: JSON.stringify(odd) } }]);
  await assert.rejects(source().resolve(amd64), (err) => {
    assert.ok(isLazyrootError(err, 'INVALID_MANIFEST'));
    assert.match(err.message, /app:v1: manifest: unknown manifest media type application\/vnd\.example\.thing\.v1\+json/);
    return true;
  });
});

test('manifest bytes that do not match the digest asked for: DigestMismatchError', async () => {
  proxy.setRules([{ method: 'GET', path: /\/manifests\/sha256:/, fault: { kind: 'corrupt', atByte: 40 } }]);
  await assert.rejects(source(`app@${image.manifestDigest}`).resolve(amd64), (err) => {
    assert.ok(err instanceof DigestMismatchError);
    assert.equal(err.want, image.manifestDigest);
    assert.notEqual(err.got, image.manifestDigest);
    assert.match(err.message, new RegExp(`^${proxy.host}/app@${image.manifestDigest}: manifest: digest mismatch`));
    return true;
  });
});

test('a config blob that does not match its digest: DigestMismatchError naming the config', async () => {
  proxy.setRules([{ method: 'GET', path: new RegExp(`/blobs/${image.configDigest}$`), fault: { kind: 'corrupt', atByte: 5 } }]);
  await assert.rejects(source().resolve(amd64), (err) => {
    assert.ok(err instanceof DigestMismatchError);
    assert.match(err.message, new RegExp(`app:v1: config ${image.configDigest}: digest mismatch`));
    return true;
  });
});

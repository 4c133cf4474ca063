/**
 * RegistrySource with mirrors from a hosts.toml, against real registries on
 * loopback: an upstream docker-registry, a docker-registry in proxy mode in
 * front of it (a pull-through cache), and the fault relay standing for a
 * mirror that fails or lies.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { parseDockerReference } from '../../../src/reference/reference.js';
import { RegistrySource, type RegistrySourceOptions } from '../../../src/source/registry/registry-source.js';
import { startFaultProxy, type FaultProxy } from '../../helpers/fault-proxy.js';
import { freePort } from '../../helpers/free-port.js';
import { buildImage, type BuiltImage } from '../../helpers/image-builder.js';
import { startRegistry, type TestRegistry } from '../../helpers/registry.js';
import { missingRequirements } from '../../helpers/requirements.js';
import { buildTar, file } from '../../helpers/tar-builder.js';

const missing = missingRequirements({ tools: ['docker-registry'] });
if (missing.length && process.env.CI) throw new Error(`CI: mirror tests need ${missing.join(', ')}`);
const skip = missing.length ? `needs ${missing.join(', ')}` : false;

const amd64 = { os: 'linux', architecture: 'amd64' };
const fast: RegistrySourceOptions = { retries: 1, retryBaseDelayMs: 1, retryMaxDelayMs: 5 };

let upstream: TestRegistry;
let cache: TestRegistry;
let relay: FaultProxy;
let image: BuiltImage;
let work: string;
const sources: RegistrySource[] = [];

before(async () => {
  if (skip) return;
  work = await mkdtemp(join(tmpdir(), 'lazyroot-mirrors-'));
  upstream = await startRegistry();
  const data = Buffer.concat(Array.from({ length: 4096 }, (_, i) => createHash('sha512').update(`mirrors ${i}`).digest()));
  image = buildImage({ layers: [{ tar: await buildTar([file('data/random', data)]), compression: 'gzip' }] });
  await upstream.pushImage('app', 'v1', image);
  cache = await startRegistry({ proxyRemoteUrl: upstream.url });
  relay = await startFaultProxy(cache.host);
});

after(async () => {
  for (const s of sources) await s.close();
  await relay?.close();
  await cache?.stop();
  await upstream?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

/** A hosts dir whose hosts.toml for the upstream says `toml`. */
async function hostsDir(name: string, toml: string): Promise<string> {
  const dir = join(work, name);
  await mkdir(join(dir, upstream.host), { recursive: true });
  await writeFile(join(dir, upstream.host, 'hosts.toml'), toml);
  return dir;
}

function source(dir: string, options: RegistrySourceOptions = {}, ref = 'app:v1'): RegistrySource {
  const s = new RegistrySource(parseDockerReference(`${upstream.host}/${ref}`), { ...fast, hostsDir: dir, ...options });
  sources.push(s);
  return s;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}


const blobGets = async (registry: TestRegistry, digest: string) => (await registry.accessLog()).filter((l) => l.startsWith(`GET /v2/app/blobs/${digest}`));

test('a pull-through mirror: everything through it with ns=; a Range on a miss is answered whole and kept, a later one gets 206 and goes back to ranges', { skip }, async () => {
  const dir = await hostsDir('through-cache', `[host."http://${relay.host}"]\n  capabilities = ["pull", "resolve"]\n`);
  const layer = image.layers[0]!;
  const s = source(dir);
  const resolved = await s.resolve(amd64);
  assert.equal(resolved.manifestDigest, image.manifestDigest);
  assert.ok(relay.log.length > 0 && relay.log.every((l) => /[?&]ns=127\.0\.0\.1%3A\d+|[?&]ns=127\.0\.0\.1:\d+/.test(l)), relay.log.join('\n'));

  // Cold cache: the Range request gets 200 and the whole blob, handed over to be kept.
  let handed: Readable | undefined;
  const slice = await s.readRange(layer.descriptor, 100, 300, { onWholeBlob: (b) => (handed = b) });
  assert.ok(slice.equals(layer.blob.subarray(100, 300)));
  assert.ok(handed, 'the whole-blob answer was handed over');
  assert.ok((await readAll(handed!)).equals(layer.blob), 'the whole blob, from byte 0, read once');
  assert.equal(s.rangeSupport, 'ignored');

  // Once the cache has the blob it answers 206: the next request gets a range, not the blob again.
  for (let i = 0; i < 100 && !/\b206\b/.test((await cache.accessLog()).join('\n')); i++) {
    let again: Readable | undefined;
    const bytes = await s.readRange(layer.descriptor, 1000, 1100, { onWholeBlob: (b) => (again = b) });
    assert.ok(bytes.equals(layer.blob.subarray(1000, 1100)));
    if (again) await readAll(again);
    else break;
  }
  assert.equal(s.rangeSupport, 'supported', 'a 206 goes back to ranges');
  const cacheLog = await cache.accessLog();
  assert.ok(cacheLog.some((l) => /^GET \/v2\/app\/blobs\/\S+ 206$/.test(l)), cacheLog.join('\n'));
  assert.equal(s.mirrorStats()[0]!.failures, 0);
  assert.ok(s.mirrorStats()[0]!.served >= 3);
  // The client itself never reached the upstream: only the cache did.
  assert.ok(!(await upstream.accessLog()).some((l) => l.includes('ns=')));
});

test('capabilities: a pull-only mirror serves blobs, manifests come from the upstream', { skip }, async () => {
  const dir = await hostsDir('pull-only', `[host."http://${relay.host}"]\n  capabilities = ["pull"]\n`);
  relay.log.length = 0;
  const before = (await upstream.accessLog()).filter((l) => l.includes('/manifests/')).length;
  const s = source(dir);
  await s.resolve(amd64);
  assert.ok((await upstream.accessLog()).filter((l) => l.includes('/manifests/')).length > before, 'manifest from the upstream');
  assert.ok(!relay.log.some((l) => l.includes('/manifests/')), 'not from the mirror');
  assert.ok(relay.log.some((l) => l.includes(`/blobs/${image.configDigest}`)), 'the config blob from the mirror');
});

test('a mirror that is down is passed over, told once, counted; the upstream serves', { skip }, async () => {
  const closed = await freePort();
  const dir = await hostsDir('down', `[host."http://127.0.0.1:${closed}"]\n`);
  const told: string[] = [];
  const s = source(dir, { onMirrorSkipped: (m) => told.push(m) });
  const layer = image.layers[0]!;
  assert.equal((await s.resolve(amd64)).manifestDigest, image.manifestDigest);
  assert.ok((await readAll(await s.openBlob(layer.descriptor))).equals(layer.blob));
  assert.ok((await s.readRange(layer.descriptor, 10, 20)).equals(layer.blob.subarray(10, 20)));
  assert.equal(told.length, 1, told.join('\n'));
  assert.match(told[0]!, new RegExp(`registry mirror http://127\\.0\\.0\\.1:${closed} for ${upstream.host.replace(/\./g, '\\.')}: unreachable`));
  assert.equal(s.mirrorStats()[0]!.failures, 1, 'then left alone');
});

test('a mirror that stalls is passed over after its timeout and left alone; the upstream serves', { skip }, async () => {
  const dir = await hostsDir('stalling', `[host."http://${relay.host}"]\n`);
  const layer = image.layers[0]!;
  relay.setRules([{ method: 'GET', path: /\/blobs\//, fault: { kind: 'stall' } }]);
  try {
    const s = source(dir, { requestTimeoutMs: 300 });
    const began = Date.now();
    assert.ok((await s.readRange(layer.descriptor, 0, 64)).equals(layer.blob.subarray(0, 64)));
    assert.ok(Date.now() - began < 5000, `passed over in ${Date.now() - began} ms`);
    assert.equal(s.mirrorStats()[0]!.failures, 1);
    const relayed = relay.log.length;
    assert.ok((await s.readRange(image.layers[0]!.descriptor, 64, 128)).equals(layer.blob.subarray(64, 128)));
    assert.equal(relay.log.length, relayed, 'left alone after it stalled');
  } finally {
    relay.setRules([]);
  }
});

test('a mirror that answers 5xx or 404 for a blob is passed over for that blob', { skip }, async () => {
  const dir = await hostsDir('failing', `[host."http://${relay.host}"]\n`);
  const layer = image.layers[0]!;
  for (const status of [503, 404]) {
    relay.setRules([{ method: 'GET', path: new RegExp(`/blobs/${layer.descriptor.digest}`), fault: { kind: 'status', status } }]);
    const s = source(dir);
    const before = (await blobGets(upstream, layer.descriptor.digest)).length;
    assert.ok((await s.readRange(layer.descriptor, 0, 64)).equals(layer.blob.subarray(0, 64)));
    assert.ok((await blobGets(upstream, layer.descriptor.digest)).length > before, `${status}: the upstream served it`);
    assert.equal(s.mirrorStats()[0]!.failures, 1);
  }
  relay.setRules([]);
});

test('a mirror that lies: a manifest by digest or a config with the wrong bytes is passed over; distrust() passes it over for a blob', { skip }, async () => {
  const dir = await hostsDir('lying', `[host."http://${relay.host}"]\n`);
  const s = source(dir, {}, `app@${image.manifestDigest}`);
  relay.setRules([
    { method: 'GET', path: /\/manifests\//, fault: { kind: 'corrupt', atByte: 10 } },
    { method: 'GET', path: new RegExp(`/blobs/${image.configDigest}`), fault: { kind: 'corrupt', atByte: 5 } },
  ]);
  const resolved = await s.resolve(amd64);
  assert.equal(resolved.manifestDigest, image.manifestDigest);
  assert.ok(resolved.configBytes.equals(image.configBytes));
  assert.equal(s.mirrorStats()[0]!.lies, 2);
  relay.setRules([]);

  const layer = image.layers[0]!;
  const fromMirror = await s.readRange(layer.descriptor, 0, 32, { onWholeBlob: (b) => void readAll(b) });
  assert.ok(fromMirror.equals(layer.blob.subarray(0, 32)));
  assert.equal(s.distrust(layer.descriptor.digest), true, 'a mirror served it');
  const before = (await blobGets(upstream, layer.descriptor.digest)).length;
  const relayed = relay.log.length;
  assert.ok((await s.readRange(layer.descriptor, 32, 64)).equals(layer.blob.subarray(32, 64)));
  assert.equal(relay.log.length, relayed, 'the mirror is not asked for that blob again');
  assert.equal((await blobGets(upstream, layer.descriptor.digest)).length, before + 1);
  assert.equal(s.distrust(layer.descriptor.digest), false, 'the upstream served it: nowhere else to go');
  assert.equal(s.mirrorStats()[0]!.lies, 3);
});

test('a hosts.toml with a `server`: the upstream is that URL', { skip }, async () => {
  const dir = join(work, 'server');
  await mkdir(join(dir, 'registry.invalid'), { recursive: true });
  await writeFile(join(dir, 'registry.invalid', 'hosts.toml'), `server = "${upstream.url}"\n`);
  const s = new RegistrySource(parseDockerReference('registry.invalid/app:v1'), { ...fast, hostsDir: dir });
  sources.push(s);
  assert.equal((await s.resolve(amd64)).manifestDigest, image.manifestDigest);
});

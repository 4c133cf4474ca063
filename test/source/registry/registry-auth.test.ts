/**
 * RegistrySource against the real docker-registry with auth: htpasswd basic
 * auth, and token auth with an in-process token server issuing real JWTs.
 * Credentials come from options or from auth files.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { isLazyrootError } from '../../../src/errors.js';
import { sha256 } from '../../../src/oci/digest.js';
import { parseDockerReference } from '../../../src/reference/reference.js';
import { RegistrySource, type RegistrySourceOptions } from '../../../src/source/registry/registry-source.js';
import { buildImage, type BuiltImage } from '../../helpers/image-builder.js';
import { startRegistry, type TestRegistry } from '../../helpers/registry.js';
import { buildTar, file } from '../../helpers/tar-builder.js';

const amd64 = { os: 'linux', architecture: 'amd64' };
// No auth files from the machine running the tests.
const noAuthFiles = { HOME: '/nonexistent-home' };
const fast: RegistrySourceOptions = { retries: 1, retryBaseDelayMs: 1, retryMaxDelayMs: 5, env: noAuthFiles };

let image: BuiltImage;
let scratch: string;
const sources: RegistrySource[] = [];

function sourceFor(registry: TestRegistry, ref: string, options: RegistrySourceOptions = {}): RegistrySource {
  const s = new RegistrySource(parseDockerReference(`${registry.host}/${ref}`), { ...fast, ...options });
  sources.push(s);
  return s;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Resolves and downloads every blob: a whole pull, minus the store. */
async function pull(source: RegistrySource): Promise<void> {
  const resolved = await source.resolve(amd64);
  assert.equal(resolved.manifestDigest, image.manifestDigest);
  for (const layer of resolved.manifest.layers) assert.equal(sha256(await readAll(await source.openBlob(layer))), layer.digest);
}

before(async () => {
  image = buildImage({ layers: [{ tar: await buildTar([file('etc/motd', 'private\n')]), compression: 'gzip' }] });
  scratch = await mkdtemp(join(tmpdir(), 'lazyroot-auth-'));
});

after(async () => {
  for (const s of sources) await s.close();
  await rm(scratch, { recursive: true, force: true });
});

describe('basic auth (htpasswd)', () => {
  let registry: TestRegistry;
  before(async () => {
    registry = await startRegistry({ auth: 'basic', users: { alice: 'wonder:land', bob: 'builder' } });
    await registry.pushImage('private/app', 'v1', image);
  });
  after(() => registry.stop());

  test('good credentials pull', async () => {
    await pull(sourceFor(registry, 'private/app:v1', { credentials: { username: 'alice', password: 'wonder:land' } }));
  });

  test('a wrong password is UNAUTHORIZED naming the registry and the user', async () => {
    const s = sourceFor(registry, 'private/app:v1', { credentials: { username: 'alice', password: 'nope' } });
    await assert.rejects(s.resolve(amd64), (err) => {
      assert.ok(isLazyrootError(err, 'UNAUTHORIZED'));
      assert.match(err.message, new RegExp(`^${registry.host}/private/app:v1: manifest: 401 UNAUTHORIZED`));
      assert.match(err.message, new RegExp(`credentials for ${registry.host} \\(user "alice"\\) were refused`));
      assert.equal(err.temporary, false);
      return true;
    });
  });

  test('no credentials at all is UNAUTHORIZED saying so', async () => {
    await assert.rejects(sourceFor(registry, 'private/app:v1').resolve(amd64), (err) => {
      assert.ok(isLazyrootError(err, 'UNAUTHORIZED'));
      assert.match(err.message, new RegExp(`no credentials found for ${registry.host}`));
      return true;
    });
  });

  test('credentials from a Docker config.json ($DOCKER_CONFIG, auth field, http:// key)', async () => {
    const dockerConfig = join(scratch, 'docker');
    await mkdir(dockerConfig, { recursive: true });
    const auth = Buffer.from('bob:builder').toString('base64');
    await writeFile(
      join(dockerConfig, 'config.json'),
      JSON.stringify({ auths: { 'https://index.docker.io/v1/': { auth: 'eDp5' }, [`http://${registry.host}`]: { auth } } }),
    );
    await pull(sourceFor(registry, 'private/app:v1', { env: { ...noAuthFiles, DOCKER_CONFIG: dockerConfig } }));
  });

  test('credentials from a containers auth.json ($XDG_RUNTIME_DIR, username/password fields) win over Docker\'s', async () => {
    const runtimeDir = join(scratch, 'xdg');
    await mkdir(join(runtimeDir, 'containers'), { recursive: true });
    await writeFile(
      join(runtimeDir, 'containers', 'auth.json'),
      JSON.stringify({ auths: { [registry.host]: { username: 'alice', password: 'wonder:land' } } }),
    );
    const dockerConfig = join(scratch, 'docker-wrong');
    await mkdir(dockerConfig, { recursive: true });
    await writeFile(join(dockerConfig, 'config.json'), JSON.stringify({ auths: { [registry.host]: { auth: Buffer.from('bob:wrong').toString('base64') } } }));
    await pull(sourceFor(registry, 'private/app:v1', { env: { ...noAuthFiles, XDG_RUNTIME_DIR: runtimeDir, DOCKER_CONFIG: dockerConfig } }));
  });

  test('an explicit authFile is the only file read', async () => {
    const authFile = join(scratch, 'explicit.json');
    await writeFile(authFile, JSON.stringify({ auths: { [`${registry.host}/private`]: { auth: Buffer.from('bob:builder').toString('base64') } } }));
    await pull(sourceFor(registry, 'private/app:v1', { authFile }));
  });
});

describe('token auth', () => {
  let registry: TestRegistry;
  before(async () => {
    registry = await startRegistry({ auth: 'token' });
    await registry.pushImage('team/app', 'v1', image);
  });
  after(() => registry.stop());

  test('a token is fetched with service, scope and basic credentials, then reused', async () => {
    const s = sourceFor(registry, 'team/app:v1', { credentials: registry.credentials! });
    await pull(s);
    await pull(s);
    const requests = registry.tokenRequests();
    assert.equal(requests.length, 1, requests.join('\n'));
    assert.match(requests[0]!, /service=lazyroot-test-registry/);
    assert.match(requests[0]!, /scope=repository%3Ateam%2Fapp%3Apull/);
    assert.match(requests[0]!, /account=tester/);
  });

  test('concurrent first requests share one token fetch', async () => {
    const before = registry.tokenRequests().length;
    const s = sourceFor(registry, 'team/app:v1', { credentials: registry.credentials! });
    const layer = image.layers[0]!;
    const parts = await Promise.all([0, 10, 20, 30, 40].map((start) => s.readRange(layer.descriptor, start, start + 10)));
    assert.deepEqual(Buffer.concat(parts), layer.blob.subarray(0, 50));
    assert.equal(registry.tokenRequests().length - before, 1);
  });

  test('refused credentials at the token service are UNAUTHORIZED naming the registry', async () => {
    const s = sourceFor(registry, 'team/app:v1', { credentials: { username: 'tester', password: 'wrong' } });
    await assert.rejects(s.resolve(amd64), (err) => {
      assert.ok(isLazyrootError(err, 'UNAUTHORIZED'));
      assert.match(err.message, new RegExp(`^${registry.host}/team/app:v1: manifest: token from 127\\.0\\.0\\.1:\\d+: 401`));
      assert.match(err.message, /scope=repository:team\/app:pull/);
      assert.match(err.message, /user "tester"\) were refused/);
      return true;
    });
  });

  test('an anonymous token without access ends UNAUTHORIZED, not in a loop', async () => {
    const before = registry.tokenRequests().length;
    await assert.rejects(sourceFor(registry, 'team/app:v1').resolve(amd64), (e) => isLazyrootError(e, 'UNAUTHORIZED'));
    assert.ok(registry.tokenRequests().length - before <= 2);
  });
});

// The two expiry tests wait out a token's life: run them side by side.
describe('token expiry', { concurrency: true }, () => {
  let told: TestRegistry;
  let silent: TestRegistry;
  before(async () => {
    // Tokens the registry accepts for 2 s: one service says so, the other leaves expires_in out.
    [told, silent] = await Promise.all([
      startRegistry({ auth: 'token', tokenTtlSeconds: 2 }),
      startRegistry({ auth: 'token', tokenTtlSeconds: 2, omitExpiresIn: true }),
    ]);
    await Promise.all([told.pushImage('app', 'v1', image), silent.pushImage('app', 'v1', image)]);
  });
  after(async () => {
    await told.stop();
    await silent.stop();
  });

  test('a token past its expires_in is renewed before the next request', async () => {
    const s = sourceFor(told, 'app:v1', { credentials: told.credentials! });
    const resolved = await s.resolve(amd64);
    await new Promise((r) => setTimeout(r, 2100));
    const layer = resolved.manifest.layers[0]!;
    assert.equal(sha256(await readAll(await s.openBlob(layer))), layer.digest);
    assert.equal(told.tokenRequests().length, 2);
    assert.ok(!(await told.accessLog()).includes(`GET /v2/app/blobs/${layer.digest} 401`), 'no request left with a dead token');
  });

  test('a token that dies mid-pull (no expires_in: assumed 60 s) is refreshed on the 401', async () => {
    const s = sourceFor(silent, 'app:v1', { credentials: silent.credentials! });
    const resolved = await s.resolve(amd64);
    await new Promise((r) => setTimeout(r, 2500));
    const layer = resolved.manifest.layers[0]!;
    assert.equal(sha256(await readAll(await s.openBlob(layer))), layer.digest);
    const blobRequests = (await silent.accessLog()).filter((line) => line.startsWith(`GET /v2/app/blobs/${layer.digest}`));
    assert.deepEqual(blobRequests, [`GET /v2/app/blobs/${layer.digest} 401`, `GET /v2/app/blobs/${layer.digest} 200`]);
    assert.equal(silent.tokenRequests().length, 2);
  });
});

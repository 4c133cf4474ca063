/**
 * Narrow transport paths that need a server misbehaving in one exact way, so
 * they run against small in-process node:http fakes rather than the real
 * registry: a reset at a chosen byte, redirects to another host, Retry-After,
 * plain HTTP to a non-loopback host, a self-signed certificate.
 */
import { after, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { isLazyrootError } from '../../../src/errors.js';
import { sha256 } from '../../../src/oci/digest.js';
import { MediaType } from '../../../src/oci/media-types.js';
import type { Descriptor } from '../../../src/oci/types.js';
import { parseDockerReference } from '../../../src/reference/reference.js';
import { RegistrySource, type RegistrySourceOptions } from '../../../src/source/registry/registry-source.js';

const run = promisify(execFile);
const amd64 = { os: 'linux', architecture: 'amd64' };
const fast: RegistrySourceOptions = { retries: 2, retryBaseDelayMs: 1, retryMaxDelayMs: 5, env: { HOME: '/nonexistent-home' } };
const blob = Buffer.alloc(100_000, 7);
const blobDescriptor: Descriptor = { mediaType: MediaType.ociLayerGzip, digest: sha256(blob), size: blob.length };

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

interface Fake {
  host: string;
  /** `METHOD PATH` of every request, with ` auth` when it carried Authorization. */
  requests: string[];
  /** Connections that never became an HTTP request (a TLS hello, for one). */
  garbage: number;
  server: Server;
}

const servers: Server[] = [];
const sources: RegistrySource[] = [];

async function startFake(handler: Handler, address = '127.0.0.1'): Promise<Fake> {
  const fake: Fake = { host: '', requests: [], garbage: 0, server: createServer() };
  fake.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    fake.requests.push(`${req.method} ${req.url}${req.headers.authorization ? ' auth' : ''}`);
    handler(req, res);
  });
  fake.server.on('clientError', (_err, socket) => {
    fake.garbage++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => fake.server.listen(0, address, resolve));
  fake.host = `${address}:${(fake.server.address() as AddressInfo).port}`;
  servers.push(fake.server);
  return fake;
}

function source(ref: string, options: RegistrySourceOptions = {}): RegistrySource {
  const s = new RegistrySource(parseDockerReference(ref), { ...fast, ...options });
  sources.push(s);
  return s;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

const notFound = { errors: [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown' }] };

after(async () => {
  for (const s of sources) await s.close();
  for (const server of servers) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});

test('a connection reset mid-blob fails the stream with the byte count and the blob', async () => {
  const fake = await startFake((req, res) => {
    if (req.url === '/v2/') return json(res, 200, {});
    res.writeHead(200, { 'content-length': String(blob.length) });
    res.write(blob.subarray(0, 10_000), () => setTimeout(() => req.socket.resetAndDestroy(), 20));
  });
  const stream = await source(`${fake.host}/app:v1`).openBlob(blobDescriptor);
  await assert.rejects(readAll(stream), (err) => {
    assert.ok(isLazyrootError(err, 'UNAVAILABLE'));
    assert.match(err.message, new RegExp(`^${fake.host}/app:v1: blob ${blobDescriptor.digest}: connection lost after byte 10000 of 100000`));
    assert.match(err.message, /ECONNRESET|other side closed|UND_ERR_SOCKET/);
    return true;
  });
});

test('a blob redirect to another host does not carry our Authorization; its signed query is redacted in errors', async () => {
  let storageAnswer = 200;
  const storage = await startFake((_req, res) => {
    if (storageAnswer !== 200) return json(res, storageAnswer, { error: 'denied' });
    res.writeHead(200, { 'content-length': String(blob.length) });
    res.end(blob);
  }, '127.0.0.2');
  const registry = await startFake((req, res) => {
    if (req.headers.authorization !== `Basic ${Buffer.from('user:pass').toString('base64')}`) {
      return json(res, 401, { errors: [{ code: 'UNAUTHORIZED' }] }, { 'www-authenticate': 'Basic realm="fake"' });
    }
    if (req.url === '/v2/') return json(res, 200, {});
    res.writeHead(307, { location: `http://${storage.host}/store/blob?X-Amz-Signature=s3cr3t&X-Amz-Expires=300` });
    res.end();
  });
  const s = source(`${registry.host}/app:v1`, { credentials: { username: 'user', password: 'pass' } });
  assert.deepEqual(await readAll(await s.openBlob(blobDescriptor)), blob);
  assert.ok(registry.requests.includes(`GET /v2/app/blobs/${blobDescriptor.digest} auth`));
  assert.deepEqual(storage.requests, ['GET /store/blob?X-Amz-Signature=s3cr3t&X-Amz-Expires=300']);

  storageAnswer = 403;
  await assert.rejects(s.openBlob(blobDescriptor), (err) => {
    assert.ok(isLazyrootError(err, 'UNAUTHORIZED'));
    assert.match(err.message, new RegExp(`GET http://${storage.host}/store/blob\\?X-Amz-Signature=REDACTED&X-Amz-Expires=REDACTED`));
    assert.doesNotMatch(err.message, /s3cr3t/);
    return true;
  });
});

test('a redirect to plain HTTP on a non-loopback host is refused', async () => {
  const registry = await startFake((req, res) => {
    if (req.url === '/v2/') return json(res, 200, {});
    res.writeHead(302, { location: 'http://storage.example.com/blob' });
    res.end();
  });
  await assert.rejects(source(`${registry.host}/app:v1`).openBlob(blobDescriptor), (err) => {
    assert.ok(isLazyrootError(err, 'FAILED_PRECONDITION'));
    assert.match(err.message, /blob sha256:[a-f0-9]+: refusing http to storage\.example\.com/);
    return true;
  });
});

test('429 with Retry-After is retried (Retry-After capped by retryMaxDelayMs)', async () => {
  let calls = 0;
  const registry = await startFake((req, res) => {
    if (req.url === '/v2/') return json(res, 200, {});
    calls++;
    if (calls === 1) return json(res, 429, { errors: [{ code: 'TOOMANYREQUESTS' }] }, { 'retry-after': '30' });
    return json(res, 404, notFound);
  });
  const started = Date.now();
  await assert.rejects(source(`${registry.host}/app:v1`).resolve(amd64), (e) => isLazyrootError(e, 'NOT_FOUND'));
  assert.equal(calls, 2);
  assert.ok(Date.now() - started < 2000);
});

test('HTTPS is tried first on loopback; the fallback to HTTP is remembered', async () => {
  const registry = await startFake((req, res) => (req.url === '/v2/' ? json(res, 200, {}) : json(res, 404, notFound)));
  const s = source(`${registry.host}/app:v1`);
  for (let i = 0; i < 3; i++) await assert.rejects(s.resolve(amd64), (e) => isLazyrootError(e, 'NOT_FOUND'));
  assert.equal(registry.garbage, 1, 'one TLS hello, then plain HTTP only');
  assert.deepEqual(registry.requests, ['GET /v2/', 'GET /v2/app/manifests/v1', 'GET /v2/app/manifests/v1', 'GET /v2/app/manifests/v1']);
});

function nonLoopbackAddress(): string | undefined {
  for (const addresses of Object.values(networkInterfaces())) {
    for (const a of addresses ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}

test('a non-loopback registry is never spoken to in plain HTTP unless insecure', async (t: TestContext) => {
  const address = nonLoopbackAddress();
  if (address === undefined) {
    t.skip('this machine has no non-loopback IPv4 address');
    return;
  }
  const registry = await startFake((req, res) => (req.url === '/v2/' ? json(res, 200, {}) : json(res, 404, notFound)), address);
  await assert.rejects(source(`${registry.host}/app:v1`).resolve(amd64), (err) => {
    assert.ok(isLazyrootError(err, 'UNAVAILABLE'));
    assert.match(err.message, new RegExp(`^${registry.host}/app:v1: ping ${registry.host}: GET https://${registry.host}/v2/`));
    return true;
  });
  assert.deepEqual(registry.requests, [], 'no plain HTTP request reached the server');

  await assert.rejects(source(`${registry.host}/app:v1`, { insecure: true }).resolve(amd64), (e) => isLazyrootError(e, 'NOT_FOUND'));
  assert.deepEqual(registry.requests, ['GET /v2/', 'GET /v2/app/manifests/v1']);
});

test('a self-signed certificate is refused, unless the registry is insecure', async (t: TestContext) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazyroot-tls-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
  ]);
  const requests: string[] = [];
  const server = createHttpsServer({ key: await readFile(join(dir, 'key.pem')), cert: await readFile(join(dir, 'cert.pem')) }, (req, res) => {
    requests.push(`${req.method} ${req.url}`);
    if (req.url === '/v2/') json(res, 200, {});
    else json(res, 404, notFound);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;

  await assert.rejects(source(`${host}/app:v1`).resolve(amd64), (err) => {
    assert.ok(isLazyrootError(err, 'UNAVAILABLE'));
    assert.equal(err.temporary, false);
    assert.match(err.message, /self[- ]signed certificate/);
    return true;
  });
  assert.deepEqual(requests, [], 'a bad certificate is not a reason to fall back to HTTP');

  await assert.rejects(source(`${host}/app:v1`, { insecure: true }).resolve(amd64), (e) => isLazyrootError(e, 'NOT_FOUND'));
  assert.deepEqual(requests, ['GET /v2/', 'GET /v2/app/manifests/v1']);
});

test('an abort signal stops a request without retries', async () => {
  const registry = await startFake((req, res) => {
    if (req.url === '/v2/') json(res, 200, {});
    // Anything else: never answered.
  });
  const controller = new AbortController();
  setTimeout(() => controller.abort(new Error('user gave up')), 50);
  const started = Date.now();
  await assert.rejects(source(`${registry.host}/app:v1`).resolve(amd64, { signal: controller.signal }), /user gave up/);
  assert.ok(Date.now() - started < 1500);
});


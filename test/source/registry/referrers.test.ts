/**
 * OCI referrers: the referrers API path and its failures against an
 * in-process fake (no registry from Debian's or npm's packages has the
 * referrers API), and pushing with the tag fallback against the real
 * docker-registry 2.8 behind token auth (the token must carry `pull,push`).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { isLazyrootError } from '../../../src/errors.js';
import { sha256 } from '../../../src/oci/digest.js';
import { MediaType } from '../../../src/oci/media-types.js';
import { emptyConfigBytes, emptyConfigDescriptor, lazyrootIndexArtifactType, newestFirst, referrersTagFor, withReferrer, emptyReferrersIndex } from '../../../src/oci/referrers.js';
import type { Descriptor } from '../../../src/oci/types.js';
import { parseDockerReference } from '../../../src/reference/reference.js';
import { RegistryPusher } from '../../../src/source/registry/push.js';
import { RegistrySource } from '../../../src/source/registry/registry-source.js';
import { buildImage } from '../../helpers/image-builder.js';
import { startRegistry, type TestRegistry } from '../../helpers/registry.js';
import { missingRequirements } from '../../helpers/requirements.js';
import { buildTar, file } from '../../helpers/tar-builder.js';

const fast = { retries: 1, retryBaseDelayMs: 1, retryMaxDelayMs: 5 };
const subject = sha256('the image manifest');
const artifact = (n: number, type = lazyrootIndexArtifactType, created?: string): Descriptor => ({
  mediaType: MediaType.ociManifest,
  digest: sha256(`artifact ${n}`),
  size: 100 + n,
  artifactType: type,
  ...(created ? { annotations: { 'org.opencontainers.image.created': created } } : {}),
});

test('the fallback tag of a digest, and the read-modify-write of its index', () => {
  assert.equal(referrersTagFor(`sha256:${'ab'.repeat(32)}`), `sha256-${'ab'.repeat(32)}`);
  let index = withReferrer(emptyReferrersIndex(), artifact(1));
  index = withReferrer(index, artifact(2, 'application/vnd.example.sbom'));
  index = withReferrer(index, artifact(1)); // the same digest again: replaced, not doubled
  assert.deepEqual(index.manifests.map((d) => d.digest), [artifact(2).digest, artifact(1).digest]);
  index = withReferrer(index, artifact(3), { replaceSameType: true }); // ours replace ours, others stay
  assert.deepEqual(index.manifests.map((d) => d.digest), [artifact(2).digest, artifact(3).digest]);
  assert.deepEqual(
    newestFirst([artifact(1, undefined, '2026-01-01T00:00:00Z'), artifact(2, undefined, '2026-03-01T00:00:00Z'), artifact(3, undefined, '2026-02-01T00:00:00Z')]).map((d) => d.size),
    [102, 103, 101],
  );
});

describe('referrers through a fake registry that has the referrers API (error paths)', () => {
  let server: Server;
  let host: string;
  let handler: (req: IncomingMessage, res: ServerResponse) => void = () => undefined;
  const seen: string[] = [];
  const sources: RegistrySource[] = [];
  const source = () => {
    const s = new RegistrySource(parseDockerReference(`${host}/team/app:v1`), fast);
    sources.push(s);
    return s;
  };
  const json = (res: ServerResponse, status: number, body: unknown, type = 'application/json') => {
    res.writeHead(status, { 'content-type': type });
    res.end(typeof body === 'string' ? body : JSON.stringify(body));
  };

  before(async () => {
    server = createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      if (req.url === '/v2/') return json(res, 200, {});
      handler(req, res);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    for (const s of sources) await s.close();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  test('an answer of the referrers API is used (filtered by artifact type here too); the fallback tag is not read', async () => {
    seen.length = 0;
    handler = (req, res) => {
      if (req.url?.startsWith(`/v2/team/app/referrers/${subject}`)) {
        return json(res, 200, { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [artifact(1), artifact(2, 'application/vnd.example.sbom')] }, MediaType.ociIndex);
      }
      json(res, 404, { errors: [{ code: 'MANIFEST_UNKNOWN' }] });
    };
    const found = await source().referrers(subject, { artifactType: lazyrootIndexArtifactType });
    assert.deepEqual(found.map((d) => d.digest), [artifact(1).digest]);
    assert.ok(seen.some((l) => l.startsWith(`GET /v2/team/app/referrers/${subject}?artifactType=`)));
    assert.ok(!seen.some((l) => l.includes('/manifests/sha256-')));
  });

  test('404 from the referrers API: the fallback tag is read; none there either is no referrers, not an error', async () => {
    seen.length = 0;
    handler = (_req, res) => json(res, 404, '404 page not found', 'text/plain');
    assert.deepEqual(await source().referrers(subject), []);
    assert.deepEqual(seen.filter((l) => l !== 'GET /v2/'), [`GET /v2/team/app/referrers/${subject}`, `GET /v2/team/app/manifests/${referrersTagFor(subject)}`]);
  });

  test('a failing referrers API is an error naming the repository, the subject and the API (no silent fallback)', async () => {
    handler = (_req, res) => json(res, 500, { errors: [{ code: 'UNKNOWN', message: 'database on fire' }] });
    await assert.rejects(source().referrers(subject), (err: unknown) => {
      assert.ok(isLazyrootError(err, 'UNAVAILABLE'));
      assert.match((err as Error).message, new RegExp(`team/app:v1: referrers of ${subject} \\(referrers API\\): 500 UNKNOWN database on fire`));
      return true;
    });
    handler = (_req, res) => json(res, 403, { errors: [{ code: 'DENIED', message: 'no' }] });
    await assert.rejects(source().referrers(subject), /referrers of sha256:[0-9a-f]+ \(referrers API\): 403 DENIED no/);
  });

  test('an answer that is not an image index is refused, naming what sent it', async () => {
    handler = (_req, res) => json(res, 200, '<html>proxy login</html>', 'text/html');
    await assert.rejects(source().referrers(subject), (err: unknown) => isLazyrootError(err, 'INVALID_MANIFEST') && /referrers API\): not JSON/.test((err as Error).message));
    handler = (_req, res) => json(res, 200, { schemaVersion: 2, manifests: 'many' });
    await assert.rejects(source().referrers(subject), /not an image index/);
  });

  test('a referrer whose bytes do not match its descriptor is refused (digest, size, bound)', async () => {
    const real = Buffer.from('{"schemaVersion":2}');
    const descriptor: Descriptor = { mediaType: MediaType.ociManifest, digest: sha256(real), size: real.length };
    handler = (_req, res) => json(res, 200, '{"schemaVersion":3}', MediaType.ociManifest);
    await assert.rejects(source().fetchVerified('manifest', descriptor, 1 << 20), (err: unknown) => isLazyrootError(err, 'DIGEST_MISMATCH') && (err as Error).message.includes(descriptor.digest));
    handler = (_req, res) => json(res, 200, real.toString(), MediaType.ociManifest);
    assert.deepEqual(await source().fetchVerified('manifest', descriptor, 1 << 20), real);
    await assert.rejects(source().fetchVerified('blob', { ...descriptor, size: 10 << 20 }, 1 << 20), (err: unknown) => isLazyrootError(err, 'RESOURCE_EXHAUSTED'));
  });

  test('a registry that takes the subject (answers OCI-Subject) lists the pushed artifact itself: no fallback tag is written', async () => {
    seen.length = 0;
    handler = (req, res) => {
      req.resume();
      if (req.method === 'PUT' && req.url?.startsWith('/v2/team/app/manifests/sha256:')) {
        res.writeHead(201, { 'oci-subject': subject, 'docker-content-digest': req.url.split('/').pop()! });
        return res.end();
      }
      json(res, 404, { errors: [{ code: 'MANIFEST_UNKNOWN' }] });
    };
    const pusher = new RegistryPusher(parseDockerReference(`${host}/team/app`), fast);
    try {
      const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest, artifactType: lazyrootIndexArtifactType, config: emptyConfigDescriptor, layers: [], subject: { mediaType: MediaType.ociManifest, digest: subject, size: 1 } }));
      const pushed = await pusher.pushReferrer(bytes, { mediaType: MediaType.ociManifest, digest: sha256(bytes), size: bytes.length }, subject);
      assert.equal(pushed.via, 'referrers-api');
      assert.ok(!seen.some((l) => l.includes('/manifests/sha256-')), seen.join('\n'));
    } finally {
      await pusher.close();
    }
  });
});

const missing = missingRequirements({ tools: ['docker-registry', 'openssl'] });
if (missing.length && process.env.CI) throw new Error(`CI: referrer push tests need ${missing.join(', ')}`);

describe('pushing a referrer to docker-registry 2.8 behind token auth (tag fallback)', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let registry: TestRegistry;
  before(async () => {
    registry = await startRegistry({ auth: 'token' });
  });
  after(async () => {
    await registry?.stop();
  });

  test('blobs, the artifact and the fallback tag go up with a pull,push token; without credentials the refusal says so', async () => {
    const image = buildImage({ layers: [{ tar: await buildTar([file('a.txt', 'a')]), compression: 'gzip' }] });
    await registry.pushImage('team/app', 'v1', image);
    const ref = parseDockerReference(`${registry.host}/team/app:v1`);
    const pusher = new RegistryPusher(ref, { ...fast, credentials: registry.credentials! });
    try {
      const blob = Buffer.from('an index');
      assert.equal(await pusher.pushBlob(emptyConfigBytes), true);
      assert.equal(await pusher.pushBlob(blob), true);
      assert.equal(await pusher.pushBlob(blob), false, 'already there: not uploaded again');
      const manifest = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MediaType.ociManifest,
          artifactType: lazyrootIndexArtifactType,
          config: emptyConfigDescriptor,
          layers: [{ mediaType: 'application/vnd.lazyroot.span-index.v1', digest: sha256(blob), size: blob.length }],
          subject: { mediaType: image.manifest.mediaType, digest: image.manifestDigest, size: image.manifestBytes.length },
        }),
      );
      const descriptor: Descriptor = { mediaType: MediaType.ociManifest, digest: sha256(manifest), size: manifest.length, artifactType: lazyrootIndexArtifactType };
      const pushed = await pusher.pushReferrer(manifest, descriptor, image.manifestDigest);
      assert.deepEqual(pushed, { digest: descriptor.digest, via: 'tag-fallback', tag: referrersTagFor(image.manifestDigest), uploaded: 0 });
      assert.ok(registry.tokenRequests().some((l) => l.includes('scope=repository%3Ateam%2Fapp%3Apull%2Cpush')), registry.tokenRequests().join('\n'));
      // A pull-only client finds it.
      const reader = new RegistrySource(ref, { ...fast, credentials: registry.credentials! });
      try {
        assert.deepEqual((await reader.referrers(image.manifestDigest, { artifactType: lazyrootIndexArtifactType })).map((d) => d.digest), [descriptor.digest]);
        assert.deepEqual(await reader.fetchVerified('manifest', descriptor, 1 << 20), manifest);
      } finally {
        await reader.close();
      }
    } finally {
      await pusher.close();
    }
    const anonymous = new RegistryPusher(ref, { ...fast, env: {} });
    try {
      await assert.rejects(anonymous.pushBlob(Buffer.from('x')), (err: unknown) => {
        assert.ok(isLazyrootError(err, 'UNAUTHORIZED'), String(err));
        assert.match((err as Error).message, /team\/app: blob sha256:[0-9a-f]+.*pushing needs push rights to team\/app: no credentials found/);
        return true;
      });
    } finally {
      await anonymous.close();
    }
  });
});

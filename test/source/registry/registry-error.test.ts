import { test } from 'node:test';
import assert from 'node:assert/strict';
import { errorForStatus, parseErrorBody, redactUrl, RegistryError } from '../../../src/source/registry/registry-error.js';

test('registry error: URLs lose credentials and signed query values, keep API parameters', () => {
  assert.equal(
    redactUrl('https://user:pw@s3.example.com/blob?X-Amz-Signature=abc&X-Amz-Credential=def'),
    'https://s3.example.com/blob?X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED',
  );
  assert.equal(
    redactUrl('https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull'),
    'https://auth.docker.io/token?service=registry.docker.io&scope=repository:library/alpine:pull',
  );
});

test('registry error: the registry\'s error codes are data', () => {
  const body = Buffer.from(JSON.stringify({ errors: [{ code: 'DENIED', message: 'requested access to the resource is denied' }, { code: 'X' }] }));
  assert.deepEqual(parseErrorBody(body), [{ code: 'DENIED', message: 'requested access to the resource is denied' }, { code: 'X' }]);
  assert.deepEqual(parseErrorBody(Buffer.from('<html>')), []);
  const err = errorForStatus('docker.io/library/alpine:3.20: manifest', 'GET', new URL('https://registry-1.docker.io/v2/library/alpine/manifests/3.20'), 403, body);
  assert.ok(err instanceof RegistryError);
  assert.equal(err.code, 'UNAUTHORIZED');
  assert.equal(err.status, 403);
  assert.deepEqual(err.registryCodes, ['DENIED', 'X']);
  assert.equal(err.temporary, false);
  assert.equal(
    err.message,
    'docker.io/library/alpine:3.20: manifest: 403 DENIED requested access to the resource is denied; X (GET https://registry-1.docker.io/v2/library/alpine/manifests/3.20)',
  );
});

test('registry error: status kinds', () => {
  const kind = (status: number): [string, boolean] => {
    const e = errorForStatus('w', 'GET', new URL('https://r/v2/'), status, Buffer.alloc(0));
    return [e.code, e.temporary];
  };
  assert.deepEqual(kind(404), ['NOT_FOUND', false]);
  assert.deepEqual(kind(401), ['UNAUTHORIZED', false]);
  assert.deepEqual(kind(429), ['UNAVAILABLE', true]);
  assert.deepEqual(kind(503), ['UNAVAILABLE', true]);
  assert.deepEqual(kind(501), ['FAILED_PRECONDITION', false]);
  assert.deepEqual(kind(400), ['FAILED_PRECONDITION', false]);
  assert.deepEqual(kind(416), ['INVALID_DATA', false]);
});

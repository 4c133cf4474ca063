import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseChallenges } from '../../../src/source/registry/challenge.js';

test('challenge: Docker Hub bearer challenge with a quoted scope containing commas', () => {
  assert.deepEqual(
    parseChallenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push"'),
    [{ scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull,push' } }],
  );
});

test('challenge: several challenges in one header and across headers', () => {
  assert.deepEqual(parseChallenges(['Basic realm="registry", Bearer realm="https://t/token",service=reg', 'Negotiate']), [
    { scheme: 'basic', params: { realm: 'registry' } },
    { scheme: 'bearer', params: { realm: 'https://t/token', service: 'reg' } },
    { scheme: 'negotiate', params: {} },
  ]);
});

test('challenge: case, spaces around "=", escaped quotes, error params', () => {
  assert.deepEqual(parseChallenges('BEARER Realm = "https://x/t" , error="invalid_token", error_description="say \\"hi\\""'), [
    { scheme: 'bearer', params: { realm: 'https://x/t', error: 'invalid_token', error_description: 'say "hi"' } },
  ]);
});

test('challenge: nothing usable', () => {
  assert.deepEqual(parseChallenges(undefined), []);
  assert.deepEqual(parseChallenges(''), []);
  assert.deepEqual(parseChallenges('realm="orphan"'), []);
});

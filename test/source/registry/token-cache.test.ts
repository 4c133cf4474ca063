import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isLazyrootError } from '../../../src/errors.js';
import { TokenCache, parseTokenResponse } from '../../../src/source/registry/token-cache.js';

const body = (value: unknown): Buffer => Buffer.from(JSON.stringify(value));

test('token response: token or access_token, expires_in defaulting to 60 s', () => {
  assert.deepEqual(parseTokenResponse(body({ token: 'a', expires_in: 300 }), 'w'), { token: 'a', expiresInSeconds: 300 });
  assert.deepEqual(parseTokenResponse(body({ access_token: 'b' }), 'w'), { token: 'b', expiresInSeconds: 60 });
  assert.deepEqual(parseTokenResponse(body({ token: '', access_token: 'c', expires_in: 0 }), 'w'), { token: 'c', expiresInSeconds: 60 });
  assert.throws(() => parseTokenResponse(body({ expires_in: 3 }), 'img: token'), (e) => isLazyrootError(e) && /img: token: token service answer has no token/.test(e.message));
  assert.throws(() => parseTokenResponse(Buffer.from('<html>'), 'w'), /not JSON/);
});

test('token cache: a token is dropped shortly before it expires', () => {
  let now = 1_000_000;
  const cache = new TokenCache(() => now);
  cache.set('k', { token: 't', expiresInSeconds: 300 });
  assert.equal(cache.get('k'), 't');
  now += 289_000;
  assert.equal(cache.get('k'), 't');
  now += 2_000; // within the last 10 s
  assert.equal(cache.get('k'), undefined);

  cache.set('short', { token: 's', expiresInSeconds: 2 });
  now += 1_700;
  assert.equal(cache.get('short'), 's');
  now += 200; // past 90 % of its life
  assert.equal(cache.get('short'), undefined);
});

test('token cache: keys are independent and can be forgotten', () => {
  const cache = new TokenCache(() => 0);
  cache.set('a', { token: '1', expiresInSeconds: 60 });
  cache.set('b', { token: '2', expiresInSeconds: 60 });
  cache.delete('a');
  assert.equal(cache.get('a'), undefined);
  assert.equal(cache.get('b'), '2');
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { placeOf } from '../../src/fs/layer-store-fs.js';

const digest = `sha256:${'ab'.repeat(32)}`;
// containers/storage: path.Join(store, base64.StdEncoding.EncodeToString([]byte(ref)), digest)
const b64 = (ref: string) => Buffer.from(ref).toString('base64');

test('layer store paths: a reference whose standard base64 holds "/" spans several components', () => {
  // Found by trying: this reference's base64 has a '/' in it.
  const ref = ['127.0.0.1:5000/busybox:latest', 'docker.io/library/busybox:latest', 'quay.io/a/b?:1', 'registry.example/x/y:z>?'].find((r) => b64(r).includes('/'));
  assert.ok(ref, 'a reference with "/" in its base64');
  const place = placeOf(`/${b64(ref)}/${digest}/diff/bin/sh`);
  assert.deepEqual(place, { kind: 'layer', ref, digest, sub: '/diff/bin/sh' });
  // The components before the digest are directories on the way.
  assert.deepEqual(placeOf(`/${b64(ref).split('/')[0]}`), { kind: 'prefix' });
});

test('layer store paths: the root, a layer directory, and what names nothing', () => {
  const ref = '127.0.0.1:5000/lazy/busybox:latest';
  assert.deepEqual(placeOf('/'), { kind: 'root' });
  assert.deepEqual(placeOf(`/${b64(ref)}/${digest}`), { kind: 'layer', ref, digest, sub: '' });
  assert.deepEqual(placeOf(`/${b64(ref)}/${digest}/diff/a:b`), { kind: 'layer', ref, digest, sub: '/diff/a:b' }, 'a ":" below the digest');
  assert.deepEqual(placeOf(`/${digest}/diff`), { kind: 'none' }, 'a store used without :ref');
  assert.deepEqual(placeOf('/not base64!'), { kind: 'none' });
  assert.deepEqual(placeOf(`/QQ/${digest}`), { kind: 'none' }, 'not canonical base64 (no padding)');
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatReference, parseReference } from '../../src/reference/reference.js';
import { LazyrootError } from '../../src/errors.js';

const digest = `sha256:${'a'.repeat(64)}`;

test('docker references get Docker Hub defaults', () => {
  const cases: Array<[string, string]> = [
    ['alpine', 'docker.io/library/alpine:latest'],
    ['alpine:3.20', 'docker.io/library/alpine:3.20'],
    ['docker://alpine:3.20', 'docker.io/library/alpine:3.20'],
    ['user/app', 'docker.io/user/app:latest'],
    ['docker.io/alpine', 'docker.io/library/alpine:latest'],
    ['index.docker.io/library/alpine', 'docker.io/library/alpine:latest'],
    ['localhost:5000/app:v1', 'localhost:5000/app:v1'],
    ['docker://127.0.0.1:5000/a/b/c:tag', '127.0.0.1:5000/a/b/c:tag'],
    ['quay.io/org/app@' + digest, 'quay.io/org/app@' + digest],
    ['ghcr.io/org/app:1.0@' + digest, 'ghcr.io/org/app:1.0@' + digest],
    ['localhost/app', 'localhost/app:latest'],
    ['[::1]:5000/app', '[::1]:5000/app:latest'],
  ];
  for (const [input, canonical] of cases) assert.equal(formatReference(parseReference(input)), canonical, input);
});

test('path transports keep their path and ref', () => {
  assert.deepEqual(parseReference('oci:/images/layout'), { transport: 'oci', path: '/images/layout' });
  assert.deepEqual(parseReference('oci:/images/layout:v1'), { transport: 'oci', path: '/images/layout', ref: 'v1' });
  assert.deepEqual(parseReference(`oci:/images/layout:${digest}`), { transport: 'oci', path: '/images/layout', ref: digest });
  assert.deepEqual(parseReference('oci-archive:/tmp/a.tar:latest'), { transport: 'oci-archive', path: '/tmp/a.tar', ref: 'latest' });
  assert.deepEqual(parseReference('docker-archive:/tmp/a.tar:busybox:1.36'), {
    transport: 'docker-archive',
    path: '/tmp/a.tar',
    ref: 'busybox:1.36',
  });
  assert.deepEqual(parseReference('docker-archive:/tmp/a.tar'), { transport: 'docker-archive', path: '/tmp/a.tar' });
  assert.deepEqual(parseReference('/tmp/rootfs.tar.gz'), { transport: 'tarball', path: '/tmp/rootfs.tar.gz' });
  assert.deepEqual(parseReference('rootfs.tgz'), { transport: 'tarball', path: 'rootfs.tgz' });
});

test('bad references are refused naming what is wrong', () => {
  const cases: Array<[string, RegExp]> = [
    ['', /empty reference/],
    ['Alpine', /invalid repository component "Alpine"/],
    ['alpine:', /invalid tag ""/],
    ['alpine@sha256:1234', /invalid digest "sha256:1234"/],
    ['docker://', /empty image name/],
    ['oci:', /oci: needs a path/],
    ['registry.io/', /empty repository/],
    ['a//b', /invalid repository component ""/],
  ];
  for (const [input, message] of cases) {
    assert.throws(
      () => parseReference(input),
      (err: LazyrootError) => err.code === 'INVALID_REFERENCE' && message.test(err.message),
      input,
    );
  }
});

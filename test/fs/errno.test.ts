import { test } from 'node:test';
import assert from 'node:assert/strict';
import { constants } from 'node:os';
import { DigestMismatchError, LazyrootError } from '../../src/errors.js';
import { createToErrno, errnoName, errnoOf } from '../../src/fs/errno.js';

const { errno } = constants;

test('LazyrootError kinds map to the errno a reading process expects', () => {
  assert.equal(errnoOf(new LazyrootError('NOT_FOUND', 'x')), -errno.ENOENT);
  assert.equal(errnoOf(new LazyrootError('UNAVAILABLE', 'x')), -errno.EIO);
  assert.equal(errnoOf(new LazyrootError('UNAUTHORIZED', 'x')), -errno.EACCES);
  assert.equal(errnoOf(new LazyrootError('UNSUPPORTED', 'x')), -errno.EOPNOTSUPP);
  assert.equal(errnoOf(new LazyrootError('IN_USE', 'x')), -errno.EBUSY);
  assert.equal(errnoOf(new DigestMismatchError('blob', 'sha256:a', 'sha256:b')), -errno.EIO);
});

test('Node system errors keep their errno; anything unknown is EIO, never a bare -1', () => {
  assert.equal(errnoOf(Object.assign(new Error('ro'), { code: 'EROFS' })), -errno.EROFS);
  assert.equal(errnoOf(Object.assign(new Error('no'), { code: 'ENOENT' })), -errno.ENOENT);
  for (const odd of [new Error('plain'), 'a string', undefined, null, 42, { code: 'ERR_SOMETHING' }, { code: 'NOT_AN_ERRNO' }]) {
    assert.equal(errnoOf(odd), -errno.EIO, String(odd));
  }
});

test('regression: a LazyrootError with a code outside the table (ENOENT carried from a worker thread) is EIO, never NaN', () => {
  // NaN went to the kernel as a read of 0 bytes: an end of file, a binary read as empty ("exec format error").
  const odd = new LazyrootError('ENOENT' as never, 'ENOENT: no such file or directory');
  assert.equal(errnoOf(odd), -errno.EIO);
  assert.ok(Number.isInteger(createToErrno()(odd, 'read /bin/sh [0, 30)')));
});

test('toErrno logs each failure once through the injected logger, with its context', () => {
  const lines: string[] = [];
  const toErrno = createToErrno((message) => lines.push(message));
  const shared = new LazyrootError('UNAVAILABLE', 'registry stalled');
  assert.equal(toErrno(shared, 'read /a [0, 10)'), -errno.EIO);
  assert.equal(toErrno(shared, 'read /a [10, 20)'), -errno.EIO);
  assert.equal(toErrno(new Error('other'), 'read /b [0, 1)'), -errno.EIO);
  assert.deepEqual(lines, ['read /a [0, 10): EIO: registry stalled', 'read /b [0, 1): EIO: other']);
});

test('errnoName names negated errnos for messages', () => {
  assert.equal(errnoName(-errno.ENOENT), 'ENOENT');
  assert.equal(errnoName(-9999), 'errno 9999');
});

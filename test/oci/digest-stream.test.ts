import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DigestStream } from '../../src/oci/digest-stream.js';

const chunks = [Buffer.from('hello, '), Buffer.alloc(0), Buffer.from('world'), Buffer.alloc(70_000, 7)];
const whole = Buffer.concat(chunks);

async function through(hashing: DigestStream): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(
    Readable.from(chunks),
    hashing,
    new Writable({
      write(chunk: Buffer, _enc, done) {
        out.push(chunk);
        done();
      },
    }),
  );
  return Buffer.concat(out);
}

test('digest stream: passes the bytes on unchanged, with their sha256 and count', async () => {
  const hashing = new DigestStream();
  assert.deepEqual(await through(hashing), whole);
  assert.equal(hashing.bytes, whole.length);
  assert.equal(hashing.digest(), `sha256:${createHash('sha256').update(whole).digest('hex')}`);
  assert.equal(hashing.digest(), hashing.digest(), 'asking twice gives the same answer');
});

test('digest stream: sha512 on request; an empty stream has the empty digest', async () => {
  const sha512 = new DigestStream('sha512');
  await through(sha512);
  assert.equal(sha512.digest(), `sha512:${createHash('sha512').update(whole).digest('hex')}`);

  const empty = new DigestStream();
  await pipeline(Readable.from([]), empty, new Writable({ write: (_c, _e, done) => done() }));
  assert.equal(empty.bytes, 0);
  assert.equal(empty.digest(), `sha256:${createHash('sha256').digest('hex')}`);
});

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { isLazyrootError } from '../../src/errors.js';
import { estargzFooter, parseEstargzFooter } from '../../src/index/estargz/footer.js';
import { buildEstargz } from '../helpers/estargz.js';
import { file } from '../helpers/tar-builder.js';

// The footer of a layer written by Debian's ctr-remote 0.12.0 (TOC at 0x5007fa).
const ctrRemoteFooter = Buffer.from(
  '1f8b08040000000000ff1a00534716003030303030303030303035303037666153544152475a010000ffff0000000000000000',
  'hex',
);

function refused(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(isLazyrootError(err, 'INVALID_DATA'), String(err));
    assert.match((err as Error).message, pattern);
    return true;
  });
}

test('the 51-byte eStargz footer written by ctr-remote', () => {
  assert.equal(ctrRemoteFooter.length, 51);
  assert.deepEqual(parseEstargzFooter(ctrRemoteFooter, 5_245_585), { tocOffset: 0x5007fa, footerSize: 51, format: 'estargz' });
  // Ours is byte for byte the same.
  assert.ok(estargzFooter(0x5007fa).equals(ctrRemoteFooter));
});

test('only the last bytes count: a longer tail is fine', () => {
  const tail = Buffer.concat([Buffer.alloc(100, 7), estargzFooter(1234)]);
  assert.equal(parseEstargzFooter(tail, 10_000).tocOffset, 1234);
});

test('the 47-byte legacy stargz footer', async () => {
  const built = await buildEstargz([file('a', 'x')], { legacyFooter: true });
  const tail = built.blob.subarray(built.blob.length - 51);
  assert.deepEqual(parseEstargzFooter(tail, built.blob.length), { tocOffset: built.tocOffset, footerSize: 47, format: 'stargz' });
  // A blob of exactly 47 bytes or more can hold it; the tail may be 47 bytes.
  assert.equal(parseEstargzFooter(built.blob.subarray(built.blob.length - 47), built.blob.length).footerSize, 47);
});

test('a blob that is not eStargz is refused, naming the blob', () => {
  const plain = gzipSync(Buffer.alloc(4096, 1));
  refused(() => parseEstargzFooter(plain.subarray(-51), plain.length, 'layer sha256:abc'), /^layer sha256:abc: not an eStargz blob/);
  refused(() => parseEstargzFooter(Buffer.alloc(51), 51), /no gzip magic/);
  refused(() => parseEstargzFooter(Buffer.alloc(20), 20), /smaller than the 51-byte footer/);
});

test('a footer that lies is refused', () => {
  const footer = (edit: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(estargzFooter(100));
    edit(b);
    return b;
  };
  refused(() => parseEstargzFooter(footer((b) => b.write('STARGY', 32, 'latin1')), 1000), /no "STARGZ" magic/);
  refused(() => parseEstargzFooter(footer((b) => b.write('XX', 12, 'latin1')), 1000), /subfield ID is not "SG"/);
  refused(() => parseEstargzFooter(footer((b) => b.write('00000000000000zz', 16, 'latin1')), 1000), /not 16 hex digits/);
  refused(() => parseEstargzFooter(footer((b) => b.write('ffffffffffffffff', 16, 'latin1')), 1000), /too large/);
  refused(() => parseEstargzFooter(footer((b) => (b[45] = 1)), 1000), /not a valid gzip member/);
  // The TOC must start before the footer.
  refused(() => parseEstargzFooter(estargzFooter(949), 1000), /not before the footer/);
  assert.equal(parseEstargzFooter(estargzFooter(948), 1000).tocOffset, 948);
});

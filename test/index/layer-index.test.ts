import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import type { LazyrootError } from '../../src/errors.js';
import { spanStart } from '../../src/index/gzip-native.js';
import { buildGzipIndex, buildTarIndex, type LayerIndex } from '../../src/index/layer-index.js';
import { indexTar } from '../../src/index/tar-index.js';
import { chunked, gzipCli, makeLayer, multiMemberGzip, type FixtureLayer } from './layer-fixtures.js';

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Span i's bytes, as the index defines them. */
function spanBytes(index: LayerIndex, blob: Buffer, i: number): Buffer {
  const cp = index.checkpoints[i]!;
  const next = index.checkpoints[i + 1];
  const start = index.compression === 'gzip' ? spanStart(cp) : cp.compressedOffset;
  return blob.subarray(start, next ? next.compressedOffset : blob.length);
}

let layer: FixtureLayer;
before(async () => {
  layer = await makeLayer({ incompressible: 2, compressible: 3, small: 60, zeros: 1, sparse: true });
});
after(async () => {
  await rm(layer.dir, { recursive: true, force: true });
});

test('buildGzipIndex: digests, sizes, entries and span digests in one pass', async () => {
  const blob = gzipCli(layer.tar);
  const index = await buildGzipIndex(chunked(blob), { spanBytes: 256 * 1024, what: 'layer sha256:test' });
  assert.equal(index.compression, 'gzip');
  assert.equal(index.blobDigest, sha(blob));
  assert.equal(index.diffId, sha(layer.tar), 'diff ID is the sha256 of the tar');
  assert.equal(index.compressedSize, blob.length);
  assert.equal(index.uncompressedSize, layer.tar.length);
  assert.deepEqual(index.entries, await indexTar(Readable.from([layer.tar]), 'tar'), 'the same entries as indexing the tar itself');
  assert.ok(index.checkpoints.length >= Math.floor(blob.length / (256 * 1024)) - 1, `${index.checkpoints.length} checkpoints`);
  index.checkpoints.forEach((cp, i) => assert.equal(cp.spanDigest, sha(spanBytes(index, blob, i)), `span ${i} digest`));
  // The spans cover the blob: back to back, sharing one byte where a checkpoint has bits.
  for (let i = 1; i < index.checkpoints.length; i++) {
    const cp = index.checkpoints[i]!;
    assert.ok(cp.compressedOffset > index.checkpoints[i - 1]!.compressedOffset);
    assert.ok(cp.uncompressedOffset > index.checkpoints[i - 1]!.uncompressedOffset);
  }
  // The index depends on the blob only, not on how it was chunked.
  const again = await buildGzipIndex(chunked(blob, 1_000_003), { spanBytes: 256 * 1024 });
  assert.deepEqual(again.checkpoints, index.checkpoints);
  // Every regular file's bytes lie at dataOffset in the uncompressed stream.
  for (const e of index.entries) {
    if (e.type !== 'file' || e.sparse) continue;
    const want = layer.files.get(e.path);
    assert.ok(want, `fixture has ${e.path}`);
    assert.ok(layer.tar.subarray(e.dataOffset!, e.dataOffset! + e.size).equals(want), e.path);
  }
});

test('multi-member gzip layers index like one stream', async () => {
  const cuts = [1000, 300_001, Math.floor(layer.tar.length / 2), layer.tar.length - 10_000];
  const blob = multiMemberGzip(layer.tar, cuts);
  const index = await buildGzipIndex(chunked(blob), { spanBytes: 128 * 1024 });
  assert.equal(index.diffId, sha(layer.tar));
  assert.equal(index.blobDigest, sha(blob));
  index.checkpoints.forEach((cp, i) => assert.equal(cp.spanDigest, sha(spanBytes(index, blob, i))));
});

test('buildTarIndex: uncompressed layers get plain spans with digests', async () => {
  const index = await buildTarIndex(chunked(layer.tar, 100_000), { spanBytes: 1 << 20 });
  assert.equal(index.compression, 'none');
  assert.equal(index.blobDigest, sha(layer.tar));
  assert.equal(index.diffId, index.blobDigest);
  assert.equal(index.compressedSize, layer.tar.length);
  assert.equal(index.checkpoints.length, Math.ceil(layer.tar.length / (1 << 20)));
  index.checkpoints.forEach((cp, i) => {
    assert.deepEqual([cp.compressedOffset, cp.uncompressedOffset, cp.bits, cp.window.length], [i << 20, i << 20, 0, 0]);
    assert.equal(cp.spanDigest, sha(spanBytes(index, layer.tar, i)));
  });
  // GNU tar pads to 10240-byte records: with that span the last span is full, and no empty one follows.
  assert.equal(layer.tar.length % 10240, 0);
  const exact = await buildTarIndex(chunked(layer.tar), { spanBytes: 10240 });
  assert.equal(exact.checkpoints.length, layer.tar.length / 10240);
  assert.equal(exact.checkpoints.at(-1)!.spanDigest, sha(layer.tar.subarray(layer.tar.length - 10240)));
});

test('expected digests are checked once the blob has been read', async () => {
  const blob = gzipSync(layer.tar);
  await assert.rejects(buildGzipIndex(chunked(blob), { expectDigest: `sha256:${'0'.repeat(64)}`, what: 'layer x' }), (err: LazyrootError) => {
    assert.equal(err.code, 'DIGEST_MISMATCH');
    assert.match(err.message, /^layer x: blob: digest mismatch/);
    return true;
  });
  await assert.rejects(buildGzipIndex(chunked(blob), { expectDiffId: `sha256:${'1'.repeat(64)}` }), (err: LazyrootError) => err.code === 'DIGEST_MISMATCH');
  const ok = await buildGzipIndex(chunked(blob), { expectDigest: sha(blob), expectDiffId: sha(layer.tar) });
  assert.equal(ok.diffId, sha(layer.tar));
});

test('corrupt gzip fails naming the layer and the compressed offset; a corrupt tar inside fails as HOSTILE_ARCHIVE', async () => {
  // A second member whose header is garbage: zlib fails right there (damage inside deflate data
  // may instead inflate to garbage, caught by the CRC at the member's end or by the tar reader).
  const first = gzipSync(layer.tar.subarray(0, 1_000_000));
  const blob = Buffer.concat([first, Buffer.from('this is not a gzip member header'), gzipSync(layer.tar.subarray(1_000_000))]);
  await assert.rejects(buildGzipIndex(chunked(blob), { what: 'layer sha256:bad' }), (err: LazyrootError & { compressedOffset?: number }) => {
    assert.equal(err.code, 'INVALID_DATA');
    assert.match(err.message, /^layer sha256:bad: cannot decompress \(gzip\): corrupt gzip data \(incorrect header check\) at compressed offset \d+/);
    assert.ok(err.compressedOffset! >= first.length && err.compressedOffset! <= first.length + 4, `offset ${err.compressedOffset}`);
    return true;
  });
  const truncated = gzipSync(layer.tar).subarray(0, 100_000);
  await assert.rejects(buildGzipIndex(chunked(truncated), { what: 'layer t' }), /layer t: cannot decompress \(gzip\): gzip data ends early/);
  const notTar = gzipSync(Buffer.alloc(10_000, 'x'));
  await assert.rejects(buildGzipIndex(chunked(notTar), { what: 'layer n' }), (err: LazyrootError) => err.code === 'HOSTILE_ARCHIVE' && /^layer n: not a valid tar stream/.test(err.message));
});

test('bytes that are not the blob are a digest mismatch naming the layer, not the gzip or tar error they cause', async () => {
  const tar = Buffer.concat([Buffer.alloc(512, 0x61), Buffer.alloc(200_000, 0x62)]);
  const blob = gzipSync(tar);
  const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
  const corrupt = Buffer.from(blob);
  for (let i = 20; i < 60; i++) corrupt[i] = corrupt[i]! ^ 0x5a; // the deflate stream breaks here
  const truncated = blob.subarray(0, blob.length >> 1);
  for (const [name, bytes] of [['corrupt', corrupt], ['truncated', truncated]] as const) {
    await assert.rejects(buildGzipIndex(Readable.from([bytes]), { what: 'layer 2/3 sha256:abcd', expectDigest: digest }), (err: unknown) => {
      assert.equal((err as LazyrootError).code, 'DIGEST_MISMATCH', `${name}: ${String(err)}`);
      assert.match((err as Error).message, /^layer 2\/3 sha256:abcd: blob: digest mismatch/);
      return true;
    });
  }
  // Without a digest to check, the decoding error is what there is to say.
  await assert.rejects(buildGzipIndex(Readable.from([corrupt]), { what: 'layer L' }), /layer L: cannot decompress \(gzip\)/);
});

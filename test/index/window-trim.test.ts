import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { inflateFrom, spanStart, trimWindow } from '../../src/index/gzip-native.js';
import { buildGzipIndex, type LayerIndex } from '../../src/index/layer-index.js';
import { decodeIndex, encodeIndex } from '../../src/index/index-file.js';
import { chunked, gzipCli, makeLayer, multiMemberGzip, type FixtureLayer } from './layer-fixtures.js';

let layer: FixtureLayer;
before(async () => {
  layer = await makeLayer({ incompressible: 1, compressible: 3, small: 200, zeros: 1 });
});
after(async () => {
  await rm(layer.dir, { recursive: true, force: true });
});

const nonZero = (b: Buffer): number => b.reduce((n, x) => n + (x === 0 ? 0 : 1), 0);

/** Every checkpoint, with its trimmed window, inflates to the tar's bytes, well past its own span. */
function assertInflatesRight(index: LayerIndex, blob: Buffer, tar: Buffer): void {
  for (const [i, cp] of index.checkpoints.entries()) {
    const n = Math.min(300_000, tar.length - cp.uncompressedOffset);
    const out = inflateFrom(cp, blob.subarray(spanStart(cp)), 0, n);
    assert.ok(out.equals(tar.subarray(cp.uncompressedOffset, cp.uncompressedOffset + n)), `checkpoint ${i} (uncompressed byte ${cp.uncompressedOffset}) inflates to the tar's bytes`);
  }
}

test('an index keeps of each window only the bytes inflation copies from it (the rest zero), and every span inflates as before', async () => {
  const blob = gzipCli(layer.tar);
  const index = await buildGzipIndex(chunked(blob, 100_000), { spanBytes: 32 * 1024 });
  const windows = index.checkpoints.filter((cp) => cp.window.length > 0);
  assert.ok(windows.length >= 20, `${windows.length} windows`);
  for (const cp of windows) {
    // Same length as the output before it (at most 32 KiB), so back-references resolve the same.
    assert.equal(cp.window.length, Math.min(32768, cp.uncompressedOffset));
    const before = layer.tar.subarray(cp.uncompressedOffset - cp.window.length, cp.uncompressedOffset);
    for (let k = 0; k < cp.window.length; k++) {
      if (cp.window[k] !== 0 && cp.window[k] !== before[k]) assert.fail(`window of checkpoint at ${cp.uncompressedOffset}: byte ${k} is neither the tar's nor 0`);
    }
  }
  const kept = windows.reduce((n, cp) => n + nonZero(cp.window), 0);
  const whole = windows.reduce((n, cp) => n + nonZero(layer.tar.subarray(cp.uncompressedOffset - cp.window.length, cp.uncompressedOffset)), 0);
  assert.ok(kept < whole / 2, `trimmed windows keep ${kept} of ${whole} non-zero bytes`);
  assertInflatesRight(index, blob, layer.tar);
  // Stored, they are that much smaller, and read back the same.
  const file = encodeIndex(index);
  const back = decodeIndex(file);
  back.checkpoints.forEach((cp, i) => assert.ok(cp.window.equals(index.checkpoints[i]!.window)));
  const untrimmed = encodeIndex({ ...index, checkpoints: index.checkpoints.map((cp) => ({ ...cp, window: layer.tar.subarray(cp.uncompressedOffset - cp.window.length, cp.uncompressedOffset) })) });
  assert.ok(file.length < untrimmed.length * 0.8, `index file ${file.length} bytes, ${untrimmed.length} with whole windows`);
});

test('trimmed windows across gzip members, and however the stream is cut', async () => {
  const cuts = [1000, 300_001, Math.floor(layer.tar.length / 2), layer.tar.length - 10_000];
  const blob = multiMemberGzip(layer.tar, cuts);
  const a = await buildGzipIndex(chunked(blob, 7_001), { spanBytes: 48 * 1024 });
  const b = await buildGzipIndex(chunked(blob, 1 << 20), { spanBytes: 48 * 1024 });
  assert.deepEqual(a.checkpoints, b.checkpoints, 'the index depends on the blob only');
  assertInflatesRight(a, blob, layer.tar);
});

test('a window that cannot be shown to inflate the same when trimmed is kept whole', async () => {
  const blob = gzipCli(layer.tar);
  const index = await buildGzipIndex(chunked(blob), { spanBytes: 64 * 1024 });
  const cp = index.checkpoints.find((c) => c.window.length === 32768)!;
  const whole = layer.tar.subarray(cp.uncompressedOffset - 32768, cp.uncompressedOffset);
  const compressed = blob.subarray(spanStart(cp));
  // Too few compressed bytes for the output asked for: nothing can be checked.
  assert.ok((await trimWindow({ ...cp, window: whole }, compressed.subarray(0, 100), 32768)).equals(whole));
  // Enough: trimmed, and the trim inflates the same.
  const trimmed = await trimWindow({ ...cp, window: whole }, compressed, 32768);
  assert.ok(nonZero(trimmed) < nonZero(whole), `${nonZero(trimmed)} of ${nonZero(whole)} bytes kept`);
  assert.ok(inflateFrom({ ...cp, window: trimmed }, compressed, 0, 32768).equals(layer.tar.subarray(cp.uncompressedOffset, cp.uncompressedOffset + 32768)));
});

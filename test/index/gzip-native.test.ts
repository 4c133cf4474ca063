import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { createGzipIndexer, inflateFrom, inflateFromAsync, inflateMember, spanStart, type RawGzipCheckpoint } from '../../src/index/gzip-native.js';
import { compressibleText, gzipCli, multiMemberGzip } from './layer-fixtures.js';

interface Indexed {
  out: Buffer;
  checkpoints: RawGzipCheckpoint[];
}

function index(blob: Buffer, span: number, chunk = 65536, maxOut?: number): Indexed {
  const indexer = createGzipIndexer(span, maxOut);
  const outs: Buffer[] = [];
  const checkpoints: RawGzipCheckpoint[] = [];
  for (let i = 0; i < blob.length; i += chunk) {
    const { out, checkpoints: cps } = indexer.push(blob.subarray(i, i + chunk));
    outs.push(...out);
    checkpoints.push(...cps);
  }
  const end = indexer.end();
  assert.equal(end.compressedSize, blob.length);
  const out = Buffer.concat(outs);
  assert.equal(end.uncompressedSize, out.length);
  return { out, checkpoints };
}

/** Every span inflated alone from its checkpoint, with only its own bytes, matches the data. */
function checkSpans(blob: Buffer, { out, checkpoints }: Indexed): void {
  checkpoints.forEach((cp, i) => {
    const next = checkpoints[i + 1];
    const bytes = blob.subarray(spanStart(cp), next ? next.compressedOffset : blob.length);
    const uEnd = next ? next.uncompressedOffset : out.length;
    const got = inflateFrom(cp, bytes, 0, uEnd - cp.uncompressedOffset);
    assert.ok(got.equals(out.subarray(cp.uncompressedOffset, uEnd)), `span ${i} inflates alone`);
  });
}

const text = compressibleText(3_000_000);
const mixed = Buffer.concat([text.subarray(0, 1_000_000), randomBytes(1_000_000), Buffer.alloc(2_000_000), text.subarray(1_000_000)]);

test('the indexer inflates exactly what gunzip does and records checkpoints every span', () => {
  const blob = gzipSync(mixed);
  // Byte by byte over a small blob: every boundary case of the push loop.
  const small = gzipSync(text.subarray(0, 200_000));
  const byByte = index(small, 16_384, 1);
  assert.ok(byByte.out.equals(text.subarray(0, 200_000)));
  checkSpans(small, byByte);
  for (const chunk of [4093, 65536, blob.length]) {
    const result = index(blob, 256 * 1024, chunk);
    assert.ok(result.out.equals(mixed), `output with ${chunk}-byte pushes`);
    const cps = result.checkpoints;
    assert.deepEqual([cps[0]!.compressedOffset, cps[0]!.bits, cps[0]!.uncompressedOffset, cps[0]!.window.length], [0, 0, 0, 0], 'a checkpoint at offset 0');
    assert.ok(cps.length >= Math.floor(blob.length / (256 * 1024)) - 1, `about one checkpoint per span (${cps.length})`);
    for (let i = 1; i < cps.length; i++) {
      const cp = cps[i]!;
      assert.ok(cp.bits >= 0 && cp.bits <= 7);
      assert.ok(cp.compressedOffset - cps[i - 1]!.compressedOffset >= 256 * 1024 || cp.uncompressedOffset - cps[i - 1]!.uncompressedOffset >= 4 * 256 * 1024);
      assert.equal(cp.window.length, Math.min(32768, cp.uncompressedOffset));
      assert.ok(cp.window.equals(mixed.subarray(cp.uncompressedOffset - cp.window.length, cp.uncompressedOffset)), 'window is the data just before');
    }
    checkSpans(blob, result);
  }
});

test('highly compressible data still gets a checkpoint every maxUncompressedSpan bytes of output', () => {
  const zeros = Buffer.alloc(64 * 1024 * 1024);
  const blob = gzipSync(zeros);
  const result = index(blob, 4 * 1024 * 1024, 65536, 8 * 1024 * 1024);
  assert.ok(blob.length < 4 * 1024 * 1024);
  assert.ok(result.checkpoints.length >= 5, `${result.checkpoints.length} checkpoints in 64 MiB of zeros`);
  for (let i = 1; i < result.checkpoints.length; i++) {
    const gap = result.checkpoints[i]!.uncompressedOffset - result.checkpoints[i - 1]!.uncompressedOffset;
    assert.ok(gap < 12 * 1024 * 1024, `gap ${gap}`);
  }
  checkSpans(blob, result);
});

test('inflateFrom skips, crosses spans, and reads to the end of the blob', async () => {
  const blob = gzipCli(mixed);
  const result = index(blob, 200_000);
  assert.ok(result.out.equals(mixed));
  for (let k = 0; k < 60; k++) {
    const i = Math.floor(Math.random() * result.checkpoints.length);
    const cp = result.checkpoints[i]!;
    const skip = Math.floor(Math.random() * (mixed.length - cp.uncompressedOffset));
    const length = Math.floor(Math.random() * Math.min(3_000_000, mixed.length - cp.uncompressedOffset - skip));
    const got = k % 2 ? await inflateFromAsync(cp, blob.subarray(spanStart(cp)), skip, length) : inflateFrom(cp, blob.subarray(spanStart(cp)), skip, length);
    const at = cp.uncompressedOffset + skip;
    assert.ok(got.equals(mixed.subarray(at, at + length)), `from checkpoint ${i}, skip ${skip}, ${length} bytes`);
  }
});

test('multi-member gzip (concatenated `gzip -c` outputs): one stream, checkpoints cross members', async () => {
  const cuts = [123_457, 1_000_003, 1_000_100, 2_500_000];
  const blob = multiMemberGzip(mixed, cuts);
  const result = index(blob, 100_000);
  assert.ok(result.out.equals(mixed), 'output is the members concatenated');
  assert.ok(result.out.equals(gunzipSync(blob)));
  checkSpans(blob, result);
  // Member starts after a span carry an empty window and bits 0, and are read in gzip mode.
  const memberStarts = result.checkpoints.filter((cp) => cp.compressedOffset > 0 && cp.window.length === 0);
  assert.ok(memberStarts.length >= 1, `member-start checkpoints: ${memberStarts.length}`);
  for (const cp of memberStarts) assert.equal(cp.bits, 0);
  // From any checkpoint to the end crosses every later member boundary.
  for (const cp of result.checkpoints) {
    const got = await inflateFromAsync(cp, blob.subarray(spanStart(cp)), 0, mixed.length - cp.uncompressedOffset);
    assert.ok(got.equals(mixed.subarray(cp.uncompressedOffset)));
  }
  // Tiny members (smaller than a span) are crossed without checkpoints of their own.
  const tiny = multiMemberGzip(text.subarray(0, 300_000), Array.from({ length: 29 }, (_, i) => (i + 1) * 10_000));
  const tinyResult = index(tiny, 1 << 20);
  assert.equal(tinyResult.checkpoints.length, 1);
  assert.ok(inflateFrom(tinyResult.checkpoints[0]!, tiny, 5_000, 290_000).equals(text.subarray(5_000, 295_000)));
});

test('corrupt, truncated and empty gzip data fail naming the compressed offset', () => {
  const blob = gzipSync(text);
  const bad = Buffer.from(blob);
  const at = Math.floor(blob.length / 2);
  for (let i = at; i < at + 64; i++) bad[i] = 0xff;
  assert.throws(() => index(bad, 1 << 20), (err: Error & { code?: string; compressedOffset?: number }) => {
    assert.equal(err.code, 'Z_DATA_ERROR');
    assert.match(err.message, /corrupt gzip data \(.+\) at compressed offset \d+/);
    // Found where the damage breaks the deflate stream, or at the latest by the CRC in the trailer.
    assert.ok(err.compressedOffset! >= at && err.compressedOffset! <= blob.length, `offset ${err.compressedOffset}`);
    return true;
  });
  assert.throws(() => index(blob.subarray(0, blob.length - 100), 1 << 20), (err: Error & { code?: string; compressedOffset?: number }) => {
    assert.equal(err.code, 'Z_BUF_ERROR');
    assert.match(err.message, new RegExp(`truncated at compressed offset ${blob.length - 100}`));
    return true;
  });
  assert.throws(() => createGzipIndexer().end(), /gzip data is empty/);
  assert.throws(() => index(Buffer.concat([blob, Buffer.from('trailing garbage')]), 1 << 20), (err: Error & { compressedOffset?: number }) => {
    assert.match(err.message, /at compressed offset/);
    assert.ok(err.compressedOffset! >= blob.length);
    return true;
  });
  assert.throws(() => index(Buffer.from('not gzip at all, just text'), 1 << 20), /incorrect header check|corrupt gzip data/);
  // inflateFrom: running out of input is an error, not a short answer.
  const cp = { compressedOffset: 0, bits: 0, window: Buffer.alloc(0) };
  assert.throws(() => inflateFrom(cp, blob.subarray(0, 1000), 0, text.length), (err: Error & { code?: string }) => err.code === 'Z_BUF_ERROR');
  // (Damaged deflate data may also inflate to garbage without an error: that is what span digests are for.)
  const reserved = { compressedOffset: 1000, bits: 0, window: Buffer.alloc(100) }; // raw mode: a block of reserved type 3
  assert.throws(() => inflateFrom(reserved, Buffer.from([0x07, 0, 0, 0]), 0, 10), (err: Error & { code?: string; compressedOffset?: number }) => {
    assert.equal(err.code, 'Z_DATA_ERROR');
    assert.match(err.message, /corrupt gzip data \(invalid block type\) at compressed offset 100\d/);
    return true;
  });
  assert.throws(() => inflateFrom(cp, Buffer.from('not gzip at all'), 0, 10), (err: Error & { code?: string }) => err.code === 'Z_DATA_ERROR' && /incorrect header check/.test(err.message));
});

test('inflateMember: a member whole with the members after it (as zlib.gunzip), or the first `limit` bytes; other bytes after it ignored; corrupt and cut members rejected with their code', async () => {
  const data = Buffer.from('lazyroot chunk '.repeat(20_000));
  const member = gzipSync(data);
  assert.deepEqual(await inflateMember(member, data.length + 10), data);
  assert.deepEqual(await inflateMember(member, 1000), data.subarray(0, 1000));
  const next = gzipSync(Buffer.from('the next member'));
  assert.deepEqual(await inflateMember(Buffer.concat([member, next, next]), 1 << 30), Buffer.concat([data, Buffer.from('the next memberthe next member')]));
  assert.deepEqual(await inflateMember(Buffer.concat([member, Buffer.from('not gzip')]), 1 << 30), data, 'bytes after the member that start no other are ignored');
  assert.equal((await inflateMember(gzipSync(Buffer.alloc(0)), 10)).length, 0);
  // A member that inflates far beyond what is asked for costs only the limit.
  const bomb = gzipSync(Buffer.alloc(64 << 20));
  assert.equal((await inflateMember(bomb, 4096)).length, 4096);
  await assert.rejects(inflateMember(member.subarray(0, member.length - 20), 1 << 30), (err: NodeJS.ErrnoException) => err.code === 'Z_BUF_ERROR' && /ends early/.test(err.message));
  await assert.rejects(inflateMember(Buffer.from('not a gzip member'), 100), (err: NodeJS.ErrnoException) => err.code === 'Z_DATA_ERROR' && /incorrect header check/.test(err.message));
  const flipped = Buffer.from(member);
  flipped[flipped.length - 6]! ^= 0xff; // the CRC
  await assert.rejects(inflateMember(flipped, 1 << 30), (err: NodeJS.ErrnoException) => err.code === 'Z_DATA_ERROR' && /incorrect data check/.test(err.message));
});

test('what a pool job inflated is handed over without a copy: V8 counts it while its Buffer lives, gets it back when collected, and the bytes stay right across collections', async () => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const collect = async () => {
    for (let i = 0; i < 3; i++) {
      gc();
      await new Promise((r) => setImmediate(r));
    }
  };
  const data = randomBytes(1 << 20);
  const whole = Buffer.concat([data, data, data, data]);
  const member = gzipSync(whole);
  const size = 4 << 20;
  let held: Buffer[] = [];
  for (let i = 0; i < 16; i++) held.push(await inflateMember(member, size));
  await collect();
  for (const out of held) assert.ok(out.equals(whole), 'an output held across collections keeps its bytes');
  const whileHeld = process.memoryUsage().external;
  held = [];
  await collect();
  // Measured as what collecting them gives back (other tests' garbage makes any earlier baseline noise).
  const givenBack = whileHeld - process.memoryUsage().external;
  assert.ok(givenBack >= 12 * size, `V8 counted the 16 outputs of 4 MiB while they were held and got them back once collected: ${givenBack} bytes`);
});

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { LazyrootError } from '../../src/errors.js';
import { createGzipIndexer } from '../../src/index/gzip-native.js';
import { decodedBytesCache, LayerRangeReader, readFileRange, type IndexedLayer } from '../../src/index/gzip-reader.js';
import { buildGzipIndex, buildTarIndex, type LayerIndex } from '../../src/index/layer-index.js';
import { decodeIndexHead, encodeIndex, indexHeadLength } from '../../src/index/index-file.js';
import type { IndexEntry } from '../../src/index/types.js';
import { chunked, gzipCli, makeLayer, MemoryBlob, multiMemberGzip, type FixtureLayer } from './layer-fixtures.js';

const MiB = 1024 * 1024;
let layer: FixtureLayer;
let blob: Buffer;
let index: LayerIndex;

before(async () => {
  // ≥ 30 MiB of mixed files: random (incompressible), text (compressible), zeros, many small ones, a sparse file.
  layer = await makeLayer({ incompressible: 6, compressible: 12, small: 400, zeros: 2, sparse: true });
  assert.ok(layer.tar.length >= 30 * MiB, `layer tar is ${layer.tar.length} bytes`);
  blob = gzipCli(layer.tar);
  index = await buildGzipIndex(chunked(blob), { spanBytes: MiB, what: 'big layer' });
});
after(async () => {
  await rm(layer.dir, { recursive: true, force: true });
});

const files = (idx: LayerIndex): IndexEntry[] => idx.entries.filter((e) => e.type === 'file');
const gzipLayer = (data: Buffer, idx: LayerIndex, corruptAt?: number): IndexedLayer & { blob: MemoryBlob } => ({ ...idx, blob: new MemoryBlob(data, corruptAt) });

/** Reads every file whole in random-sized pieces, and at random ranges, and compares with the originals. */
async function readAllFiles(reader: LayerRangeReader, l: IndexedLayer, idx: LayerIndex): Promise<number> {
  let reads = 0;
  for (const e of files(idx)) {
    const want = layer.files.get(e.path);
    assert.ok(want, `fixture has ${e.path}`);
    assert.equal(e.size, want.length, e.path);
    const pieces: Buffer[] = [];
    for (let at = 0; at < e.size; ) {
      const length = 1 + Math.floor(Math.random() * 600_000);
      const got = await reader.readFileRange(e, at, length, l);
      assert.equal(got.length, Math.min(length, e.size - at));
      pieces.push(got);
      at += got.length;
      reads++;
    }
    assert.ok(Buffer.concat(pieces).equals(want), `${e.path}: read whole in pieces`);
    for (let k = 0; k < 3 && e.size > 0; k++) {
      const at = Math.floor(Math.random() * e.size);
      const length = Math.floor(Math.random() * (e.size - at + 1000));
      const got = await reader.readFileRange(e, at, length, l);
      assert.ok(got.equals(want.subarray(at, at + length)), `${e.path}: ${length} bytes at ${at}`);
      reads++;
    }
    assert.equal((await reader.readFileRange(e, e.size + 10, 100, l)).length, 0, 'past the end: nothing');
  }
  return reads;
}

test('every file of a ≥ 30 MiB gzip layer reads back exactly, at random offsets and lengths', async () => {
  assert.equal(index.diffId, `sha256:${createHash('sha256').update(layer.tar).digest('hex')}`, 'diff ID is the sha256 of the tar');
  assert.ok(index.checkpoints.length >= 10, `${index.checkpoints.length} checkpoints`);
  const l = gzipLayer(blob, index);
  const reader = new LayerRangeReader({ cacheBytes: 24 * MiB });
  const reads = await readAllFiles(reader, l, index);
  console.log(`gzip layer: ${(layer.tar.length / MiB).toFixed(1)} MiB tar, ${(blob.length / MiB).toFixed(1)} MiB gzip, ${index.checkpoints.length} spans, ${files(index).length} files; ${reads} reads, ${reader.stats.fetches} span fetches (${(reader.stats.bytesFetched / MiB).toFixed(1)} MiB), ${reader.stats.decodes} inflations, ${reader.stats.cacheHits} cache hits`);
  const sparse = files(index).find((e) => e.sparse);
  assert.ok(sparse && sparse.sparse!.length >= 2, 'the layer has a sparse file');
  assert.ok(l.blob.bytes < blob.length * 4, 'spans are re-fetched only when evicted');
});

test('readers sharing one cache (the layers of a mount) stay under its one bound together, and read right', async () => {
  const bound = 6 * MiB;
  const shared = decodedBytesCache(bound);
  const tarIndex = await buildTarIndex(chunked(layer.tar), { spanBytes: MiB });
  // Two layers, two readers: a gzip one and an uncompressed one of the same files.
  const a = new LayerRangeReader({ cacheBytes: bound, cache: shared });
  const b = new LayerRangeReader({ cacheBytes: bound, cache: shared });
  const la = gzipLayer(blob, index);
  const lb = { ...gzipLayer(layer.tar, tarIndex), blobDigest: 'sha256:' + 'b'.repeat(64) } as IndexedLayer & { blob: MemoryBlob };
  let peak = 0;
  for (const e of files(index).slice(0, 60)) {
    const want = layer.files.get(e.path)!;
    const eb = files(tarIndex).find((f) => f.path === e.path)!;
    assert.ok((await a.readFileRange(e, 0, e.size, la)).equals(want), e.path);
    assert.ok((await b.readFileRange(eb, 0, eb.size, lb)).equals(want), e.path);
    peak = Math.max(peak, shared.calculatedSize);
  }
  assert.ok(peak <= bound, `the shared cache held ${peak} bytes, over its bound of ${bound}`);
  assert.ok(peak > bound / 2, `both readers used the one cache (${peak} bytes)`);
});

test('reads across span boundaries', async () => {
  const l = gzipLayer(blob, index);
  const reader = new LayerRangeReader({ cacheBytes: 4 * MiB });
  let crossings = 0;
  for (const cp of index.checkpoints.slice(1)) {
    const e = files(index).find((f) => !f.sparse && f.dataOffset! < cp.uncompressedOffset && f.dataOffset! + f.size > cp.uncompressedOffset);
    if (!e) continue;
    const boundary = cp.uncompressedOffset - e.dataOffset!;
    const at = Math.max(0, boundary - 5000);
    const got = await reader.readFileRange(e, at, 10_000, l);
    assert.ok(got.equals(layer.files.get(e.path)!.subarray(at, at + 10_000)), `${e.path} across the span starting at ${cp.uncompressedOffset}`);
    crossings++;
  }
  assert.ok(crossings >= 5, `${crossings} boundaries crossed inside files`);
});

test('multi-member gzip (concatenated gzip -c) and uncompressed layers read the same', async () => {
  const cuts = [777, 5 * MiB + 3, 5 * MiB + 600, Math.floor(layer.tar.length * 0.7)];
  const multi = multiMemberGzip(layer.tar, cuts);
  const multiIndex = await buildGzipIndex(chunked(multi), { spanBytes: 2 * MiB });
  assert.equal(multiIndex.diffId, index.diffId);
  await readAllFiles(new LayerRangeReader({ cacheBytes: 16 * MiB }), gzipLayer(multi, multiIndex), multiIndex);

  const tarIndex = await buildTarIndex(chunked(layer.tar), { spanBytes: 4 * MiB });
  assert.deepEqual(tarIndex.entries, index.entries);
  await readAllFiles(new LayerRangeReader({ cacheBytes: 16 * MiB }), gzipLayer(layer.tar, tarIndex), tarIndex);
});

test('sparse files: holes read as zeros, data regions as written', async () => {
  const e = files(index).find((f) => f.sparse)!;
  const want = layer.files.get(e.path)!;
  const reader = new LayerRangeReader();
  const l = gzipLayer(blob, index);
  for (const [at, length] of [[0, e.size], [0, 12_288], [12_000, 1000], [999_000, 400_000], [5_000_000, 4096], [5_003_000, 996_999], [2_000_000, 100]]) {
    assert.ok((await reader.readFileRange(e, at!, length!, l)).equals(want.subarray(at!, at! + length!)), `${length} bytes at ${at}`);
  }
  const hole = await reader.readFileRange(e, 2_000_000, 100, l);
  assert.ok(hole.equals(Buffer.alloc(100)));
});

test('a range read fetches exactly the spans it needs, once', async () => {
  const cps = index.checkpoints;
  const spanRange = (i: number): [number, number] => [cps[i]!.bits ? cps[i]!.compressedOffset - 1 : cps[i]!.compressedOffset, i + 1 < cps.length ? cps[i + 1]!.compressedOffset : blob.length];
  const inside = (i: number): IndexEntry | undefined =>
    files(index).find((f) => !f.sparse && f.size > 10_000 && f.dataOffset! >= cps[i]!.uncompressedOffset && f.dataOffset! + 10_000 <= (cps[i + 1]?.uncompressedOffset ?? Infinity));
  const i = cps.findIndex((_, k) => k > 0 && inside(k) !== undefined);
  assert.ok(i > 0, 'a file that starts inside a span');
  const e = inside(i)!;
  const l = gzipLayer(blob, index);
  const reader = new LayerRangeReader();
  await reader.readFileRange(e, 0, 10_000, l);
  assert.deepEqual(l.blob.calls, [spanRange(i)], 'one fetch: the covering span');
  await reader.readFileRange(e, 100, 5000, l);
  assert.equal(l.blob.calls.length, 1, 'a second read of the span is served from the cache');

  // Across a boundary: both spans, each fetched once, nothing else.
  const boundary = cps[i + 1]!.uncompressedOffset;
  const across = files(index).find((f) => !f.sparse && f.dataOffset! < boundary - 1000 && f.dataOffset! + f.size > boundary + 1000)!;
  assert.ok(across, 'a file across the boundary');
  const l2 = gzipLayer(blob, index);
  await new LayerRangeReader().readFileRange(across, boundary - across.dataOffset! - 1000, 2000, l2);
  assert.deepEqual(l2.blob.calls.sort((a, b) => a[0] - b[0]), [spanRange(i), spanRange(i + 1)]);
  assert.equal(l2.blob.bytes, spanRange(i)[1] - spanRange(i)[0] + spanRange(i + 1)[1] - spanRange(i + 1)[0]);

  // Concurrent reads of one span share its fetch.
  const l3 = gzipLayer(blob, index);
  const r3 = new LayerRangeReader();
  await Promise.all(Array.from({ length: 8 }, (_, k) => r3.readFileRange(e, k * 1000, 1000, l3)));
  assert.equal(l3.blob.calls.length, 1);

  // Uncompressed layers: the covering spans' raw bytes only.
  const tarIndex = await buildTarIndex(chunked(layer.tar), { spanBytes: MiB });
  const big = files(tarIndex).find((f) => f.size > 3 * MiB)!;
  const l4 = gzipLayer(layer.tar, tarIndex);
  await new LayerRangeReader().readFileRange(big, MiB, 10, l4);
  const at = big.dataOffset! + MiB;
  assert.deepEqual(l4.blob.calls, [[Math.floor(at / MiB) * MiB, Math.floor(at / MiB) * MiB + MiB]]);
});

test('a corrupted span fails with DIGEST_MISMATCH naming layer and span; other spans still read', async () => {
  const k = Math.floor(index.checkpoints.length / 2);
  const cp = index.checkpoints[k]!;
  const next = index.checkpoints[k + 1]!;
  const corruptAt = Math.floor((cp.compressedOffset + next.compressedOffset) / 2);
  const l = gzipLayer(blob, index, corruptAt);
  const reader = new LayerRangeReader();
  const victim = files(index).find((f) => !f.sparse && f.dataOffset! <= cp.uncompressedOffset + 100 && f.dataOffset! + f.size > cp.uncompressedOffset + 200)!;
  assert.ok(victim, 'a file in the corrupted span');
  for (let attempt = 0; attempt < 2; attempt++) {
    await assert.rejects(reader.readFileRange(victim, cp.uncompressedOffset - victim.dataOffset! + 100, 100, l), (err: LazyrootError & { want?: string; got?: string }) => {
      assert.equal(err.code, 'DIGEST_MISMATCH');
      assert.match(err.message, new RegExp(`^layer ${index.blobDigest.slice(0, 19)}: span ${k} \\(bytes \\d+-${next.compressedOffset}\\): digest mismatch \\(want ${cp.spanDigest}, got sha256:`));
      assert.equal(err.want, cp.spanDigest);
      return true;
    }, 'a failed span is not cached: asking again fails again');
  }
  // Every file outside the damaged span still reads.
  let ok = 0;
  for (const e of files(index)) {
    const end = e.dataOffset! + (e.sparse ? e.sparse.reduce((n, r) => n + r.size, 0) : e.size);
    if (end > cp.uncompressedOffset && e.dataOffset! < next.uncompressedOffset) continue;
    const got = await reader.readFileRange(e, 0, e.size, l);
    assert.ok(got.equals(layer.files.get(e.path)!), e.path);
    ok++;
  }
  assert.ok(ok > 100);
});

test('readFileRange refuses what is not a regular file; the shared reader works', async () => {
  const l = gzipLayer(blob, index);
  const d = index.entries.find((e) => e.type === 'dir')!;
  await assert.rejects(readFileRange(d, 0, 10, l), (err: LazyrootError) => err.code === 'INVALID_DATA');
  const f = files(index).find((e) => e.size > 100)!;
  assert.ok((await readFileRange(f, 10, 50, l)).equals(layer.files.get(f.path)!.subarray(10, 60)));
});

test('throughput: building an index vs gzip -dc on the same blob (printed, not asserted)', async () => {
  const path = join(layer.dir, 'layer.tar.gz');
  await writeFile(path, blob);
  const time = (fn: () => void): number => {
    let best = Infinity;
    for (let i = 0; i < 3; i++) {
      const t = performance.now();
      fn();
      best = Math.min(best, performance.now() - t);
    }
    return best;
  };
  const gzipMs = time(() => {
    const r = spawnSync('sh', ['-c', `gzip -dc '${path}' > /dev/null`]);
    assert.equal(r.status, 0);
  });
  const nativeMs = time(() => {
    const indexer = createGzipIndexer(4 * MiB);
    for (let i = 0; i < blob.length; i += 65536) indexer.push(blob.subarray(i, i + 65536));
    indexer.end();
  });
  let fullMs = Infinity;
  for (let i = 0; i < 2; i++) {
    const t = performance.now();
    await buildGzipIndex(chunked(blob), { spanBytes: 4 * MiB });
    fullMs = Math.min(fullMs, performance.now() - t);
  }
  const mb = layer.tar.length / 1e6;
  const rate = (ms: number): string => `${(mb / (ms / 1000)).toFixed(0)} MB/s`;
  console.log(
    `throughput on ${(blob.length / 1e6).toFixed(1)} MB gzip → ${mb.toFixed(1)} MB tar (uncompressed MB/s): ` +
      `gzip -dc ${rate(gzipMs)} (${gzipMs.toFixed(0)} ms); native indexer ${rate(nativeMs)} (${nativeMs.toFixed(0)} ms); ` +
      `buildGzipIndex with blob, span and diff-ID hashes and the tar index ${rate(fullMs)} (${fullMs.toFixed(0)} ms)`,
  );
});

/** The index as a mount reads a stored or registry one: its head decoded, each window fetched (and counted) when first needed. */
function headOnly(idx: LayerIndex): { head: LayerIndex; fetched: number[] } {
  const file = encodeIndex(idx);
  const windowsAt = indexHeadLength(file)!;
  const fetched: number[] = [];
  const head = decodeIndexHead(file.subarray(0, windowsAt), 'head of big layer', async (start, end) => {
    fetched.push(start);
    return file.subarray(windowsAt + start, windowsAt + end);
  });
  return { head, fetched };
}

test('an index read by its head alone: a span\'s window is fetched beside its bytes, or cut from the span before it when that is decoded', async () => {
  const { head, fetched } = headOnly(index);
  const l = gzipLayer(blob, head);
  const reader = new LayerRangeReader();
  // Every file whole, in pieces and at random: each byte right.
  await readAllFiles(reader, l, head);
  const spans = head.checkpoints.length;
  const distinct = new Set(fetched);
  assert.equal(distinct.size, fetched.length, 'no window fetched twice');
  // Read in order, most spans find the span before them decoded: their windows are never fetched.
  assert.ok(fetched.length < spans / 2, `${fetched.length} of ${spans} windows fetched`);

  // A read from the middle of a span whose neighbour is not decoded fetches its window, and the bytes are right.
  const { head: fresh, fetched: freshFetched } = headOnly(index);
  const big = files(index).filter((e) => !e.sparse && e.size > 3 * MiB).at(-1)!;
  const got = await new LayerRangeReader().readFileRange(big, 2 * MiB, 4096, gzipLayer(blob, fresh));
  assert.ok(got.equals(layer.files.get(big.path)!.subarray(2 * MiB, 2 * MiB + 4096)));
  assert.equal(freshFetched.length, 1, 'one window fetched');
});

test('compressedRange: the blob bytes a read needs, its first span\'s window asked for at once (not after the region arrives)', async () => {
  const { head, fetched } = headOnly(index);
  const l = gzipLayer(blob, head);
  const reader = new LayerRangeReader();
  const big = files(index).filter((e) => !e.sparse && e.size > 3 * MiB).at(-1)!;
  const cps = head.checkpoints;
  const at = big.dataOffset! + 2 * MiB;
  let i = 0;
  while (i + 1 < cps.length && cps[i + 1]!.uncompressedOffset <= at) i++;
  let j = i;
  while (j + 1 < cps.length && cps[j + 1]!.uncompressedOffset < at + 3 * 65536) j++;
  const range = reader.compressedRange(big, 2 * MiB, 3 * 65536, l);
  assert.deepEqual(range, [cps[i]!.bits ? cps[i]!.compressedOffset - 1 : cps[i]!.compressedOffset, j + 1 < cps.length ? cps[j + 1]!.compressedOffset : blob.length]);
  assert.equal(fetched.length, 1, 'the first span\'s window is on its way, and only it');
  const got = await reader.readFileRange(big, 2 * MiB, 3 * 65536, l);
  assert.ok(got.equals(layer.files.get(big.path)!.subarray(2 * MiB, 2 * MiB + 3 * 65536)));
  assert.equal(fetched.length, 1, 'the read used it; the spans after took theirs from the span before');
  assert.equal(reader.compressedRange(big, 2 * MiB, 1000, l), undefined, 'decoded spans need nothing');
});

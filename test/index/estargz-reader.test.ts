import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isLazyrootError } from '../../src/errors.js';
import { EstargzChunkCache, readEstargzFile } from '../../src/index/estargz/reader.js';
import { readEstargzIndex } from '../../src/index/estargz/toc.js';
import type { BlobRangeReader } from '../../src/index/types.js';
import { buildEstargz, corruptingReader, incompressible, memoryBlobReader, type BuildEstargzOptions } from '../helpers/estargz.js';
import { dir, file, type TarEntry } from '../helpers/tar-builder.js';

const KiB = 1024;
const big = incompressible(40 * KiB + 123);
const text = Buffer.from(Array.from({ length: 3000 }, (_, i) => `${i} `).join(''));

async function layer(entries: TarEntry[] = [dir('d'), file('d/small', 'hi\n'), file('big', big), file('text', text)], options: BuildEstargzOptions = { chunkSize: 8 * KiB }) {
  const built = await buildEstargz(entries, options);
  const reader = memoryBlobReader(built.blob);
  const index = await readEstargzIndex(reader);
  reader.reset();
  const open = (path: string) => ({ entry: index.entries.find((e) => e.path === path)!, chunks: index.chunks.get(path)! });
  return { built, reader, index, open };
}

test('any range of a chunked file reads back exactly', async () => {
  const { reader, open } = await layer();
  const { entry, chunks } = open('big');
  assert.equal(chunks.length, 6);
  const cache = new EstargzChunkCache();
  for (const [offset, length] of [
    [0, big.length],
    [0, 1],
    [8 * KiB - 1, 2],
    [8 * KiB, 8 * KiB],
    [3 * KiB, 30 * KiB],
    [big.length - 5, 5],
    [big.length - 5, 500],
    [big.length, 1],
    [big.length + 100, 1],
    [17, 0],
  ] as const) {
    const bytes = await readEstargzFile(entry, chunks, offset, length, reader, { cache: new EstargzChunkCache() });
    assert.ok(bytes.equals(big.subarray(offset, offset + length)), `${offset}+${length}`);
    const again = await readEstargzFile(entry, chunks, offset, length, reader, { cache });
    assert.ok(again.equals(bytes));
  }
  const small = open('d/small');
  assert.equal((await readEstargzFile(small.entry, small.chunks, 0, 100, reader)).toString(), 'hi\n');
  const t = open('text');
  assert.ok((await readEstargzFile(t.entry, t.chunks, 100, 5000, reader)).equals(text.subarray(100, 5100)));
});

test('only the chunks covering the range are fetched, adjacent ones in one read, cached ones not at all', async () => {
  const { reader, open } = await layer();
  const { entry, chunks } = open('big');
  const cache = new EstargzChunkCache();
  // Bytes inside chunks 1..3: one read from chunk 1's member start to chunk 3's end.
  await readEstargzFile(entry, chunks, 8 * KiB + 10, 2 * 8 * KiB, reader, { cache });
  assert.deepEqual(reader.reads, [[chunks[1]!.compressedStart, chunks[3]!.compressedEnd]]);
  // Chunks 0..5 with 1..3 cached: two reads, for chunk 0 and for chunks 4..5.
  reader.reset();
  await readEstargzFile(entry, chunks, 0, big.length, reader, { cache });
  assert.deepEqual(reader.reads, [
    [chunks[0]!.compressedStart, chunks[0]!.compressedEnd],
    [chunks[4]!.compressedStart, chunks[5]!.compressedEnd],
  ]);
  reader.reset();
  await readEstargzFile(entry, chunks, 0, big.length, reader, { cache });
  assert.deepEqual(reader.reads, []);
  assert.equal(cache.size, 6);
});

test('concurrent reads of the same chunks share one fetch', async () => {
  const { built, open } = await layer();
  const { entry, chunks } = open('big');
  const reads: Array<[number, number]> = [];
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const slow: BlobRangeReader = {
    size: built.blob.length,
    async read(start, end) {
      reads.push([start, end]);
      await gate;
      return Buffer.from(built.blob.subarray(start, end));
    },
  };
  const cache = new EstargzChunkCache();
  const all = Promise.all([
    readEstargzFile(entry, chunks, 0, 100, slow, { cache }),
    readEstargzFile(entry, chunks, 50, 100, slow, { cache }),
    readEstargzFile(entry, chunks, 0, 9 * KiB, slow, { cache }),
  ]);
  await new Promise((r) => setImmediate(r));
  release();
  const [a, b, c] = await all;
  assert.ok(a.equals(big.subarray(0, 100)) && b.equals(big.subarray(50, 150)) && c.equals(big.subarray(0, 9 * KiB)));
  // Chunk 0 once (first read), chunk 1 once (the third read waits on chunk 0's fetch).
  assert.deepEqual(reads, [
    [chunks[0]!.compressedStart, chunks[0]!.compressedEnd],
    [chunks[1]!.compressedStart, chunks[1]!.compressedEnd],
  ]);
  assert.equal(cache.inFlight.size, 0);
});

test('the chunk cache is bounded by bytes', async () => {
  const { reader, open } = await layer();
  const { entry, chunks } = open('big');
  const cache = new EstargzChunkCache(20 * KiB);
  // One read of the whole file: its chunks are checked at once and cached as each is done.
  await readEstargzFile(entry, chunks, 0, big.length, reader, { cache });
  assert.ok(cache.bytes <= 20 * KiB, `${cache.bytes}`);
  assert.equal(cache.size, 3, 'three 8 KiB chunks fit');
  // A chunk at a time, in order: the most recent are kept, the oldest go first.
  const inOrder = new EstargzChunkCache(20 * KiB);
  for (const c of chunks) await readEstargzFile(entry, chunks, c.offset, c.size, reader, { cache: inOrder });
  assert.ok(inOrder.bytes <= 20 * KiB, `${inOrder.bytes}`);
  // 8 KiB chunks and a last one of 123 bytes: the three most recent fit.
  assert.equal(inOrder.size, 3);
  assert.ok(inOrder.get(chunks[5]!.chunkDigest));
  assert.equal(inOrder.get(chunks[0]!.chunkDigest), undefined);
});

test('payloads sharing a gzip member (innerOffset) read back exactly', async () => {
  const entries = [file('a', 'aaaa'), file('b', 'bbbbbb'), file('c', big), file('d', text)];
  const { reader, open } = await layer(entries, { chunkSize: 8 * KiB, minChunkSize: 16 * KiB });
  const b = open('b');
  assert.ok((b.chunks[0]!.innerOffset ?? 0) > 0);
  for (const [path, content] of [
    ['a', Buffer.from('aaaa')],
    ['b', Buffer.from('bbbbbb')],
    ['c', big],
    ['d', text],
  ] as const) {
    const { entry, chunks } = open(path);
    const bytes = await readEstargzFile(entry, chunks, 0, entry.size, reader, { cache: new EstargzChunkCache() });
    assert.ok(bytes.equals(content), path);
  }
});

test('bytes that do not match the chunk digest are never returned', async () => {
  const { reader, open } = await layer();
  const { entry, chunks } = open('big');
  const cache = new EstargzChunkCache();
  // Stored (incompressible) data: the flipped byte inflates; the digest catches it
  // (or the gzip CRC, when the member ends with the chunk and zlib checks it first).
  const flipped = corruptingReader(reader, chunks[2]!.compressedStart + 100);
  await assert.rejects(readEstargzFile(entry, chunks, 0, big.length, flipped, { cache, what: 'layer sha256:beef' }), (err: unknown) => {
    assert.ok(isLazyrootError(err, 'DIGEST_MISMATCH'));
    assert.match((err as Error).message, /^layer sha256:beef: "big": chunk 2 \(file bytes 16384–24576, blob bytes \d+–\d+\): digest mismatch \(want sha256:[0-9a-f]{64}, got (sha256:[0-9a-f]{64}|undecodable gzip data: corrupt gzip member \(incorrect data check\) at byte \d+ of \d+)\)$/);
    return true;
  });
  assert.equal(cache.get(chunks[2]!.chunkDigest), undefined);
  // A broken gzip header: the bytes do not even inflate.
  const t = open('text');
  await assert.rejects(
    readEstargzFile(t.entry, t.chunks, 0, 10, corruptingReader(reader, t.chunks[0]!.compressedStart), { cache }),
    (err: unknown) => isLazyrootError(err, 'DIGEST_MISMATCH') && /"text": chunk 0 .*undecodable gzip data/.test((err as Error).message),
  );
  // A chunk digest in the TOC that the bytes do not have (a lying TOC).
  const lying = chunks.map((c, i) => (i === 0 ? { ...c, chunkDigest: `sha256:${'a'.repeat(64)}` } : c));
  await assert.rejects(readEstargzFile(entry, lying, 0, 10, reader, { cache }), (err: unknown) => isLazyrootError(err, 'DIGEST_MISMATCH'));
});

test('a short answer from the blob, a non-file entry and a bad range are errors', async () => {
  const { reader, open, index } = await layer();
  const { entry, chunks } = open('big');
  const short: BlobRangeReader = { size: reader.size, read: async (s, e) => (await reader.read(s, e)).subarray(1) };
  await assert.rejects(readEstargzFile(entry, chunks, 0, 10, short, { cache: new EstargzChunkCache() }), (err: unknown) =>
    isLazyrootError(err, 'UNAVAILABLE'),
  );
  const d = index.entries.find((e) => e.path === 'd')!;
  await assert.rejects(readEstargzFile(d, [], 0, 10, reader), (err: unknown) => isLazyrootError(err, 'INVALID_DATA'));
  await assert.rejects(readEstargzFile(entry, chunks, -1, 10, reader), (err: unknown) => isLazyrootError(err, 'INVALID_DATA'));
  await assert.rejects(readEstargzFile(entry, chunks.slice(0, 2), 0, big.length, reader), /no chunk covers/);
});

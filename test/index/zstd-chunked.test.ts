/**
 * The zstd:chunked TOC reader, file reader, frame decoder and tar check, on
 * blobs from the test writer (helpers/zstd-chunked.ts): honest blobs read
 * back exactly; hostile ones (names escaping the root, frames outside the
 * blob, chunks that do not tile, too many records, corrupted frames, windows
 * and expansions out of bounds, a TOC that lies about the tar) are refused
 * with typed errors and never give wrong bytes. Podman's own blobs are read
 * in test/mount/zstd-chunked.test.ts.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { LRUCache } from 'lru-cache';
import { buildTar, dir, file, hardlink, symlink, whiteout } from '../helpers/tar-builder.js';
import { incompressible } from '../helpers/estargz.js';
import { zstdChunked, zstdFrame, type ZstdChunkedLayer } from '../helpers/zstd-chunked.js';
import { readZstdChunkedIndex, type ReadZstdChunkedIndexOptions } from '../../src/index/zstd-chunked/toc.js';
import { ZstdChunkedReader } from '../../src/index/zstd-chunked/reader.js';
import { decodeFrames } from '../../src/index/zstd-chunked/frames.js';
import { checkZstdChunkedTocAgainstTar } from '../../src/index/zstd-chunked/tar-check.js';
import { LazyrootError } from '../../src/errors.js';
import { ZstdChunkedHeaderCheck } from '../../src/index/zstd-chunked/header-check.js';
import { manifestChecksumAnnotation, manifestPositionAnnotation } from '../../src/index/zstd-chunked/format.js';
import { TarIndexer } from '../../src/index/tar-index.js';
import type { BlobRangeReader, IndexEntry } from '../../src/index/types.js';

const big = incompressible(40_000, 'zc');
const tarEntries = () => [
  dir('etc'),
  file('etc/hostname', 'box\n', { mode: 0o600, uid: 7, gid: 8 }),
  file('data/big.bin', big),
  symlink('etc/link', 'hostname'),
  hardlink('etc/hard', 'etc/hostname'),
  whiteout('etc/old'),
  file('empty', ''),
];

/** An in-memory blob that counts what is read of it. */
function memoryBlob(bytes: Buffer): BlobRangeReader & { reads: Array<[number, number]>; confirmed: Array<[number, number]> } {
  const reads: Array<[number, number]> = [];
  const confirmed: Array<[number, number]> = [];
  return {
    size: bytes.length,
    reads,
    confirmed,
    read: async (s, e) => {
      reads.push([s, e]);
      return Buffer.from(bytes.subarray(s, e));
    },
    confirm: (s, e) => void confirmed.push([s, e]),
  };
}

function options(layer: ZstdChunkedLayer, extra: Partial<ReadZstdChunkedIndexOptions> = {}): ReadZstdChunkedIndexOptions {
  return { checksum: layer.annotations[manifestChecksumAnnotation]!, position: layer.annotations[manifestPositionAnnotation]!, what: 'layer sha256:test', ...extra };
}

async function tarIndex(tar: Buffer): Promise<IndexEntry[]> {
  const indexer = new TarIndexer('tar');
  await indexer.write(tar);
  await indexer.end();
  return indexer.entries;
}

const essentials = (e: IndexEntry) => ({ path: e.path, type: e.type, mode: e.mode, uid: e.uid, gid: e.gid, size: e.size, mtime: e.mtime, linkname: e.linkname });

describe('zstd:chunked TOC', () => {
  test('read with one range from the position annotation, or from the footer: the same entries as the tar', async () => {
    const tar = await buildTar(tarEntries());
    const layer = zstdChunked(tar, { chunkSize: 8192 });
    const blob = memoryBlob(layer.blob);
    const index = await readZstdChunkedIndex(blob, options(layer));
    assert.equal(blob.reads.length, 1, 'one range request');
    assert.deepEqual(blob.reads[0], [layer.tocOffset - 8, layer.tocOffset + Number(layer.annotations[manifestPositionAnnotation]!.split(':')[1])]);
    assert.deepEqual(index.entries.map(essentials), (await tarIndex(tar)).map(essentials));
    assert.equal(index.chunks.get('data/big.bin')!.length, 5);
    const viaFooter = memoryBlob(layer.blob);
    const again = await readZstdChunkedIndex(viaFooter, options(layer, { position: undefined }));
    assert.equal(viaFooter.reads.length, 2);
    assert.deepEqual(again.entries, index.entries);
    // The whole blob decodes (skippable frames included) to the tar, as `create` reads it.
    assert.ok(decodeFrames(layer.blob, tar.length).equals(tar));
  });

  test('a TOC whose checksum is not the annotation\'s is refused: DIGEST_MISMATCH naming the layer', async () => {
    const layer = zstdChunked(await buildTar(tarEntries()));
    await assert.rejects(readZstdChunkedIndex(memoryBlob(layer.blob), options(layer, { checksum: `sha256:${'1'.repeat(64)}` })), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'DIGEST_MISMATCH');
      assert.match(err.message, /layer sha256:test: zstd:chunked TOC/);
      return true;
    });
  });

  test('an empty layer: entries null', async () => {
    const layer = zstdChunked(await buildTar([]));
    assert.equal(layer.toc.entries, null);
    assert.deepEqual((await readZstdChunkedIndex(memoryBlob(layer.blob), options(layer))).entries, []);
  });

  const hostile: Array<[string, (entries: Array<Record<string, unknown>>) => void, string, RegExp]> = [
    ['a name with ".."', (e) => (e[1]!.name = '../../etc/passwd'), 'HOSTILE_ARCHIVE', /escapes the layer root/],
    ['an absolute name', (e) => (e[1]!.name = '/etc/passwd'), 'HOSTILE_ARCHIVE', /absolute/],
    ['a hardlink out of the root', (e) => (e.find((x) => x.type === 'hardlink')!.linkName = '../x'), 'HOSTILE_ARCHIVE', /escapes/],
    ['frames past the TOC', (e) => (e.find((x) => x.name === 'etc/hostname')!.endOffset = 10_000_000), 'INVALID_DATA', /not before the TOC/],
    ['backward frames', (e) => (e.find((x) => x.name === 'etc/hostname')!.endOffset = 1), 'INVALID_DATA', /empty, backward/],
    ['chunks that do not tile the file', (e) => (e.filter((x) => x.type === 'chunk')[1]!.chunkOffset = 9000), 'INVALID_DATA', /does not continue the file/],
    ['a file without digest', (e) => delete e.find((x) => x.name === 'etc/hostname')!.digest, 'UNSUPPORTED', /no digest/],
    ['a chunk after no file', (e) => e.unshift({ type: 'chunk', name: 'x', offset: 1, chunkSize: 1 }), 'INVALID_DATA', /follows no regular file/],
    ['a negative size', (e) => (e.find((x) => x.name === 'etc/hostname')!.size = -1), 'INVALID_DATA', /not a non-negative integer/],
    ['an unknown type', (e) => (e[0]!.type = 'socket'), 'UNSUPPORTED', /unknown entry type/],
  ];
  for (const [name, edit, code, message] of hostile) {
    test(`hostile TOC (checksum matching): ${name} is refused`, async () => {
      const layer = zstdChunked(await buildTar(tarEntries()), { chunkSize: 8192, editToc: (toc) => edit(toc.entries as Array<Record<string, unknown>>) });
      await assert.rejects(readZstdChunkedIndex(memoryBlob(layer.blob), options(layer)), (err: Error & { code?: string }) => {
        assert.equal(err.code, code, err.message);
        assert.match(err.message, message);
        return true;
      });
    });
  }

  test('more records than the limit: RESOURCE_EXHAUSTED before any is mapped', async () => {
    const layer = zstdChunked(await buildTar(tarEntries()), { chunkSize: 8192 });
    await assert.rejects(readZstdChunkedIndex(memoryBlob(layer.blob), options(layer, { maxTocRecords: 5 })), { code: 'RESOURCE_EXHAUSTED' });
  });

  test('a position annotation pointing outside the blob, or at bytes that are not a skippable frame, is refused', async () => {
    const layer = zstdChunked(await buildTar(tarEntries()));
    const [, length, raw] = layer.annotations[manifestPositionAnnotation]!.split(':');
    await assert.rejects(readZstdChunkedIndex(memoryBlob(layer.blob), options(layer, { position: `${layer.blob.length}:${length}:${raw}:1` })), { code: 'INVALID_DATA' });
    await assert.rejects(readZstdChunkedIndex(memoryBlob(layer.blob), options(layer, { position: `1:${length}:${raw}:1` })), { code: 'INVALID_DATA' });
  });
});

describe('zstd:chunked file reads', () => {
  async function setup(chunkSize?: number) {
    const tar = await buildTar(tarEntries());
    const layer = zstdChunked(tar, chunkSize ? { chunkSize } : {});
    const index = await readZstdChunkedIndex(memoryBlob(layer.blob), options(layer));
    const blob = memoryBlob(layer.blob);
    const reader = new ZstdChunkedReader(blob, new LRUCache<string, Buffer>({ maxSize: 1 << 24, sizeCalculation: (b) => Math.max(1, b.length) }), 1 << 24, 'layer sha256:test');
    const entry = (path: string) => index.entries.find((e) => e.path === path)!;
    const read = (path: string, position: number, length: number) => reader.read(entry(path), index.chunks.get(path) ?? [], position, length);
    return { layer, index, blob, reader, read };
  }

  test('every file reads back exactly; a range in the middle fetches only the chunks that hold it, and confirms them', async () => {
    const { index, blob, read } = await setup(8192);
    assert.equal((await read('etc/hostname', 0, 100)).toString(), 'box\n');
    assert.equal((await read('empty', 0, 100)).length, 0);
    blob.reads.length = 0;
    assert.ok((await read('data/big.bin', 10_000, 100)).equals(big.subarray(10_000, 10_100)));
    const chunk1 = index.chunks.get('data/big.bin')![1]!;
    assert.deepEqual(blob.reads, [[chunk1.compressedStart, chunk1.compressedEnd]]);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(blob.confirmed.at(-1), [chunk1.compressedStart, chunk1.compressedEnd]);
    assert.ok((await read('data/big.bin', 0, big.length)).equals(big));
    assert.ok((await read('data/big.bin', 39_990, 100)).equals(big.subarray(39_990)));
  });

  test('a corrupted frame is DIGEST_MISMATCH, never bytes, and is not confirmed', async () => {
    const { index, layer, read, blob } = await setup(8192);
    const chunk = index.chunks.get('data/big.bin')![2]!;
    layer.blob[Math.floor((chunk.compressedStart + chunk.compressedEnd) / 2)]! ^= 0x55;
    await assert.rejects(read('data/big.bin', chunk.offset, 10), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'DIGEST_MISMATCH');
      assert.match(err.message, /"data\/big\.bin": chunk 2/);
      return true;
    });
    await new Promise((r) => setImmediate(r));
    assert.ok(!blob.confirmed.some(([s]) => s === chunk.compressedStart));
    // Other chunks are still served.
    assert.ok((await read('data/big.bin', 0, 10)).equals(big.subarray(0, 10)));
  });

  test('a TOC chunk digest that does not match the frames is DIGEST_MISMATCH', async () => {
    const tar = await buildTar(tarEntries());
    const layer = zstdChunked(tar, { editToc: (toc) => (toc.entries!.find((e) => e.name === 'etc/hostname')!.digest = `sha256:${'2'.repeat(64)}`) });
    const index = await readZstdChunkedIndex(memoryBlob(layer.blob), options(layer));
    const reader = new ZstdChunkedReader(memoryBlob(layer.blob), new LRUCache<string, Buffer>({ max: 10 }), 1 << 20, 'l');
    await assert.rejects(reader.read(index.entries.find((e) => e.path === 'etc/hostname')!, index.chunks.get('etc/hostname')!, 0, 4), { code: 'DIGEST_MISMATCH' });
  });
});

describe('zstd frame decoding bounds', () => {
  test('exact output, skippable frames skipped', () => {
    const data = Buffer.from('hello zstd frames\n'.repeat(100));
    const skip = Buffer.alloc(12);
    skip.writeUInt32LE(0x184d2a5e, 0);
    skip.writeUInt32LE(4, 4);
    assert.ok(decodeFrames(Buffer.concat([zstdFrame(data.subarray(0, 500)), skip, zstdFrame(data.subarray(500))]), data.length).equals(data));
  });

  test('more or fewer bytes than expected, trailing garbage, a truncated frame: refused', () => {
    const frame = zstdFrame(Buffer.from('x'.repeat(1000)));
    assert.throws(() => decodeFrames(frame, 999), /declare|more than/);
    assert.throws(() => decodeFrames(frame, 1001), /decode to 1000 bytes/);
    assert.throws(() => decodeFrames(Buffer.concat([frame, Buffer.from([1, 2, 3, 4, 5])]), 1000), /no zstd frame/);
    assert.throws(() => decodeFrames(frame.subarray(0, frame.length - 3), 1000), /truncated/);
  });

  test('a frame asking for a huge window is refused before anything is allocated', () => {
    // Magic, descriptor 0 (no size, not single segment), window descriptor 0xF8 (2^41 bytes), an empty raw last block.
    const frame = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 0x01, 0x00, 0x00]);
    assert.throws(() => decodeFrames(frame, 0), /window/);
  });

  test('RLE blocks expanding past what is expected stop at the bound', () => {
    // Window 1 MiB, no declared size; 100 RLE blocks of 128 KiB each: 12.5 MiB from 400 bytes.
    const blocks: number[] = [];
    for (let i = 0; i < 100; i++) {
      const header = ((128 * 1024) << 3) | (1 << 1) | (i === 99 ? 1 : 0);
      blocks.push(header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff, 0x41);
    }
    const frame = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x50, ...blocks]);
    assert.throws(() => decodeFrames(frame, 1000), /more than the 1000 bytes expected/);
  });
});

describe('zstd:chunked TOC against the tar stream', () => {
  test('an honest layer passes; a TOC lying about a mode or a chunk is caught', async () => {
    const tar = await buildTar(tarEntries());
    const honest = zstdChunked(tar, { chunkSize: 8192 });
    const index = await readZstdChunkedIndex(memoryBlob(honest.blob), options(honest));
    await checkZstdChunkedTocAgainstTar(Readable.from([tar]), index, 'l');
    const lyingMode = zstdChunked(tar, { editToc: (toc) => (toc.entries!.find((e) => e.name === 'etc/hostname')!.mode = 0o4755) });
    const lie = await readZstdChunkedIndex(memoryBlob(lyingMode.blob), options(lyingMode));
    await assert.rejects(checkZstdChunkedTocAgainstTar(Readable.from([tar]), lie, 'l'), /TOC disagrees with the layer's tar stream: entry 1 "etc\/hostname": the tar has mode 600/);
    const otherBytes = Buffer.from('box\n');
    otherBytes[0] = 0x63;
    const lyingChunk = zstdChunked(tar, {
      editToc: (toc) => (toc.entries!.find((e) => e.name === 'etc/hostname')!.digest = `sha256:${createHash('sha256').update(otherBytes).digest('hex')}`),
    });
    const lie2 = await readZstdChunkedIndex(memoryBlob(lyingChunk.blob), options(lyingChunk));
    await assert.rejects(checkZstdChunkedTocAgainstTar(Readable.from([tar]), lie2, 'l'), /"etc\/hostname": chunk 0/);
  });
});

describe('zstd:chunked tar headers checked before a file is served', () => {
  async function check(edit?: (entries: Array<Record<string, unknown>>) => void, chunkSize?: number) {
    const tar = await buildTar([...tarEntries(), file('data/after', 'after\n'), file('data/b.txt', 'b'.repeat(5001))]);
    const layer = zstdChunked(tar, { ...(chunkSize ? { chunkSize } : {}), ...(edit ? { editToc: (toc) => edit(toc.entries as Array<Record<string, unknown>>) } : {}) });
    const index = await readZstdChunkedIndex(memoryBlob(layer.blob), options(layer));
    const blob = memoryBlob(layer.blob);
    const logged: string[] = [];
    const headers = new ZstdChunkedHeaderCheck(index, { readUnverified: (s, e) => blob.read(s, e) }, 'layer sha256:test', (m) => logged.push(m));
    return { headers, index, logged };
  }

  test('an honest layer: every file with data passes', async () => {
    const { headers, index } = await check(undefined, 8192);
    for (const e of index.entries) if (e.type === 'file') await headers.check(e.path);
  });

  test('a TOC lying about a mode, an owner or a size refuses that file only, logged once', async () => {
    const { headers, logged } = await check((e) => {
      e.find((x) => x.name === 'data/after')!.mode = 0o4755;
    });
    await assert.rejects(headers.check('data/after'), /"data\/after": refused: the TOC disagrees with the layer's tar stream: entry "data\/after": the tar has mode 644, the TOC 4755/);
    await assert.rejects(headers.check('data/after'));
    assert.equal(logged.length, 1);
    await headers.check('data/b.txt');
    await headers.check('etc/hostname');
  });

  test('regression: a header fetch that fails, or brings bytes that do not decode, fails that read only (UNAVAILABLE, nothing logged); the next read checks again', async () => {
    const tar = await buildTar([...tarEntries(), file('data/after', 'after\n'), file('data/b.txt', 'b'.repeat(5001))]);
    const layer = zstdChunked(tar);
    const index = await readZstdChunkedIndex(memoryBlob(layer.blob), options(layer));
    const blob = memoryBlob(layer.blob);
    let calls = 0;
    const flaky = {
      async readUnverified(s: number, e: number): Promise<Buffer> {
        calls++;
        if (calls === 1) throw new LazyrootError('UNAVAILABLE', 'bytes 1-2: no answer within 1500 ms');
        const bytes = await blob.read(s, e);
        if (calls === 2) bytes.fill(0xff); // damaged on the way: no zstd frame
        return bytes;
      },
    };
    const logged: string[] = [];
    const headers = new ZstdChunkedHeaderCheck(index, flaky, 'layer sha256:test', (m) => logged.push(m));
    await assert.rejects(headers.check('data/after'), (err: LazyrootError) => err.code === 'UNAVAILABLE' && /no answer within 1500 ms/.test(err.message));
    await assert.rejects(headers.check('data/after'), (err: LazyrootError) => {
      assert.equal(err.code, 'UNAVAILABLE');
      assert.match(err.message, /layer sha256:test: "data\/after": blob bytes \d+–\d+, fetched for the tar headers before its bytes, do not decode \(damaged on the way\?\)/);
      return true;
    });
    await headers.check('data/after');
    assert.deepEqual(logged, []);
  });

  test('a TOC pointing a file at another file\'s frames (with their digest) is refused: the header there names the other file', async () => {
    const { headers, index } = await check((e) => {
      const a = e.find((x) => x.name === 'etc/hostname')!;
      const b = e.find((x) => x.name === 'data/b.txt')!;
      Object.assign(b, { size: a.size, offset: a.offset, endOffset: a.endOffset, digest: a.digest });
    });
    assert.equal(index.chunks.get('data/b.txt')![0]!.compressedStart, index.chunks.get('etc/hostname')![0]!.compressedStart);
    await assert.rejects(headers.check('data/b.txt'), /refused: the TOC disagrees/);
  });
});

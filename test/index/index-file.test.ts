import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LazyrootError } from '../../src/errors.js';
import { checkWindows, decodeIndex, decodeIndexHead, encodeIndex, fetchesWindows, indexHeadLength, readIndexFile, writeIndexFile } from '../../src/index/index-file.js';
import { buildGzipIndex } from '../../src/index/layer-index.js';
import type { IndexEntry } from '../../src/index/types.js';
import type { LayerIndex } from '../../src/index/layer-index.js';
import { buildTar, chardev, dir, file, hardlink, symlink, whiteout } from '../helpers/tar-builder.js';
import { chunked, compressibleText, gzipCli } from './layer-fixtures.js';

/** A decoded index with its checkpoints as plain objects (decodeIndex inflates windows when first asked for). */
function plain(index: LayerIndex): LayerIndex {
  return {
    ...index,
    checkpoints: index.checkpoints.map((cp) => ({ compressedOffset: cp.compressedOffset, bits: cp.bits, uncompressedOffset: cp.uncompressedOffset, window: cp.window, spanDigest: cp.spanDigest })),
  };
}

/** {@link plain} of an index whose windows are read as needed (readIndexFile, decodeIndexHead), every window loaded first. */
async function loaded(index: LayerIndex): Promise<LayerIndex> {
  await Promise.all(index.checkpoints.map((cp) => cp.lazyWindow?.load()));
  return plain(index);
}

/** Seals a version 2 file again after an edit: its trailer is the sha256 of its head (every byte before the windows). */
function reseal(file: Buffer): void {
  createHash('sha256').update(file.subarray(0, indexHeadLength(file)!)).digest().copy(file, file.length - 32);
}

let work: string;
before(async () => {
  work = await mkdtemp(join(tmpdir(), 'lazyroot-index-file-'));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

const sha = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A synthetic index of a big layer: many entries of every kind, many checkpoints. */
function bigIndex(entryCount: number, checkpointCount: number): LayerIndex {
  const entries: IndexEntry[] = [];
  for (let i = 0; i < entryCount; i++) {
    const path = `usr/lib/pkg-${i % 97}/sub-${i % 13}/file-${i}.so`;
    switch (i % 10) {
      case 0:
        entries.push({ path: path.replace(/\/file-.*/, ''), type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 1_700_000_000 });
        break;
      case 1:
        entries.push({ path, type: 'symlink', mode: 0o777, uid: 0, gid: 0, size: 0, mtime: 1_700_000_000, linkname: `../target-${i}` });
        break;
      case 2:
        entries.push({ path, type: 'hardlink', mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 1_700_000_000, linkname: `usr/lib/x-${i}` });
        break;
      case 3:
        entries.push({ path, type: 'file', mode: 0o4755, uid: 1000, gid: 1000, size: i * 100, mtime: 1_700_000_000, mtimeNsec: 123_456_789, dataOffset: i * 4096, xattrs: { 'security.capability': randomBytes(20).toString('base64') } });
        break;
      case 4:
        entries.push({ path, type: 'file', mode: 0o644, uid: 0, gid: 0, size: 10_000_000, mtime: 1, dataOffset: i * 4096, sparse: [{ offset: 0, size: 4096 }, { offset: 9_000_000, size: 512 }] });
        break;
      case 5:
        entries.push({ path: `dev/c${i}`, type: 'char', mode: 0o666, uid: 0, gid: 0, size: 0, mtime: 0, devmajor: 1, devminor: i % 256 });
        break;
      default:
        entries.push({ path: `${path}.ünïcode`, type: 'file', mode: 0o644, uid: 0, gid: 0, size: i, mtime: 1_700_000_000, dataOffset: i * 4096 });
    }
  }
  const text = compressibleText(32768 * 4);
  const checkpoints = Array.from({ length: checkpointCount }, (_, i) => ({
    compressedOffset: i * 4_194_304 + (i ? 17 : 0),
    bits: i % 8,
    uncompressedOffset: i * 12_000_000,
    window: i === 0 ? Buffer.alloc(0) : i % 2 ? randomBytes(32768) : text.subarray(i % 3, 32768 + (i % 3)),
    spanDigest: sha(`span ${i}`),
  }));
  return {
    compression: 'gzip',
    blobDigest: sha('blob'),
    diffId: sha('diff'),
    compressedSize: checkpointCount * 4_194_304,
    uncompressedSize: 2 ** 40 + 12345,
    entries,
    checkpoints,
  };
}

test('encode → decode gives the same index back; reading 8,000 entries is fast', () => {
  const index = bigIndex(8000, 250);
  const t0 = performance.now();
  const bytes = encodeIndex(index);
  const t1 = performance.now();
  const back = decodeIndex(bytes);
  const t2 = performance.now();
  assert.deepEqual(plain(back), index);
  // Decode again warm (the first call also compiles the decoder).
  const t3 = performance.now();
  decodeIndex(bytes);
  const t4 = performance.now();
  console.log(`index file: 8000 entries + 250 windows = ${(bytes.length / 1024).toFixed(0)} KiB; encode ${(t1 - t0).toFixed(1)} ms, decode ${(t2 - t1).toFixed(1)} ms (warm ${(t4 - t3).toFixed(1)} ms)`);
  assert.ok(t4 - t3 < 1000, 'decoding 8,000 entries takes well under a second');
  // Random windows are stored raw, compressible ones deflated: the file is smaller than the windows.
  assert.ok(bytes.length < 250 * 32768);
});

test('a real layer index round-trips through a file written atomically', async () => {
  const tar = await buildTar([
    dir('etc'),
    file('etc/hosts', '127.0.0.1 localhost\n', { xattrs: { 'user.a': 'b' } }),
    symlink('bin', 'usr/bin'),
    hardlink('etc/hosts2', 'etc/hosts'),
    whiteout('etc/old'),
    chardev('dev/null', 1, 3),
    file('big.txt', compressibleText(3_000_000)),
  ]);
  const index = await buildGzipIndex(chunked(gzipCli(tar)), { spanBytes: 100_000 });
  assert.ok(index.checkpoints.length > 3);
  const path = join(work, 'sha256-abc');
  await writeIndexFile(path, index);
  assert.deepEqual(await loaded(await readIndexFile(path)), index);
  // A second writer of the same index is not an error; no temp files are left behind.
  await writeIndexFile(path, index);
  assert.deepEqual(await readdir(work), ['sha256-abc']);
  assert.deepEqual(await loaded(await readIndexFile(path)), index);
});

test('damaged, foreign and missing index files are refused clearly', async () => {
  const bytes = encodeIndex(bigIndex(50, 3));
  const path = join(work, 'damaged');
  for (const at of [0, 20, 200, indexHeadLength(bytes)! - 1, bytes.length - 1]) {
    const bad = Buffer.from(bytes);
    bad[at]! ^= 1;
    await writeFile(path, bad);
    await assert.rejects(readIndexFile(path), (err: LazyrootError) => {
      assert.equal(err.code, 'INVALID_DATA');
      assert.match(err.message, /index file .*damaged: not a valid lazyroot index \((bad magic|checksum mismatch: the file is damaged)\); rebuild it/);
      return true;
    });
  }
  // A damaged window (past the head the trailer seals): the file is read, and that window fails when its span is first decoded.
  const bad = Buffer.from(bytes);
  bad[bytes.length - 40]! ^= 1;
  await writeFile(path, bad);
  const read = await readIndexFile(path);
  const k = read.checkpoints.length - 1;
  await assert.rejects(read.checkpoints[k]!.lazyWindow!.load(), (err: LazyrootError) => err.code === 'DIGEST_MISMATCH' && err.message.includes(`index file ${path}: checkpoint ${k}: its window`));
  await writeFile(path, bytes.subarray(0, 100));
  await assert.rejects(readIndexFile(path), /not a valid lazyroot index/);
  await assert.rejects(readIndexFile(join(work, 'missing')), (err: LazyrootError) => err.code === 'NOT_FOUND');
  assert.throws(() => encodeIndex({ ...bigIndex(1, 1), blobDigest: 'sha512:abc' }), /not a sha256 digest/);
  assert.equal(decodeIndex(bytes).entries.length, 50);
});

test('entry tuples are read a batch at a time: names with quotes, brackets, commas and backslashes round-trip', () => {
  const index = bigIndex(10, 2);
  const odd = ['a"b', 'c]d', 'e,f', 'g\\h', 'i[j]', 'k\\"]l', '{m}', 'n\u2028o'];
  index.entries = Array.from({ length: 1500 }, (_, i): IndexEntry => ({ path: `d/${odd[i % odd.length]}${i}`, type: 'file', mode: 0o644, uid: 0, gid: 0, size: i, mtime: 1, dataOffset: i * 512 }));
  assert.deepEqual(plain(decodeIndex(encodeIndex(index))), index);
  index.entries = [];
  assert.deepEqual(decodeIndex(encodeIndex(index)).entries, []);
});

test('a window is inflated when first asked for; one that does not inflate (a hostile index with a right checksum) fails then, naming the checkpoint', () => {
  const index = bigIndex(10, 3);
  const file = encodeIndex(index);
  const back = decodeIndex(file);
  assert.ok(back.checkpoints[1]!.window.equals(index.checkpoints[1]!.window), 'a window decodes as it was');
  // Damage the second checkpoint's stored window (deflated: compressible text), then seal the file again.
  const damaged = Buffer.from(file);
  const count = damaged.readUInt32LE(12);
  const windowsAt = 128 + 96 * count + damaged.readUInt32LE(100);
  const record = 128 + 96 * 2;
  const offset = Number(damaged.readBigUInt64LE(record + 16));
  assert.ok(damaged.readUInt32LE(record + 24) < 32768, 'the window is stored deflated');
  damaged[windowsAt + offset] = 0xff; // a reserved block type
  // Sealed again: the window's digest, then the head's.
  createHash('sha256').update(damaged.subarray(windowsAt + offset, windowsAt + offset + damaged.readUInt32LE(record + 24))).digest().copy(damaged, record + 64);
  reseal(damaged);
  const lazy = decodeIndex(damaged, 'index file x');
  assert.ok(lazy.checkpoints[1]!.window.equals(index.checkpoints[1]!.window), 'the other windows are right');
  assert.throws(
    () => lazy.checkpoints[2]!.window,
    (err: LazyrootError) => err.code === 'INVALID_DATA' && /index file x: not a valid lazyroot index \(checkpoint 2: its window does not inflate to the 32768 bytes the table says\)/.test(err.message),
  );
});

/** The same index as a version 1 file (64-byte records, no window digests), as lazyroot wrote before version 2. */
function asVersion1(v2: Buffer): Buffer {
  const count = v2.readUInt32LE(12);
  const header = Buffer.from(v2.subarray(0, 128));
  header.writeUInt16LE(1, 8);
  const records = Array.from({ length: count }, (_, i) => v2.subarray(128 + 96 * i, 128 + 96 * i + 64));
  const body = Buffer.concat([header, ...records, v2.subarray(128 + 96 * count, v2.length - 32)]);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

test('version 1 files (no window digests) are still read; they have no head to read alone', () => {
  const index = bigIndex(40, 4);
  const v1 = asVersion1(encodeIndex(index));
  assert.equal(v1.readUInt16LE(8), 1);
  assert.deepEqual(plain(decodeIndex(v1)), plain(decodeIndex(encodeIndex(index))));
  assert.equal(indexHeadLength(v1), undefined);
  assert.throws(() => decodeIndexHead(v1.subarray(0, 128 + 64 * 4 + v1.readUInt32LE(100)), 'old', async () => Buffer.alloc(0)), /format version 1 has no window digests/);
});

test('an index read by its head alone fetches each window when asked, checks it by its digest, and asks again after a failure', async () => {
  const index = bigIndex(30, 4);
  const file = encodeIndex(index);
  const headLength = indexHeadLength(file)!;
  const windowsAt = headLength;
  const asked: Array<[number, number]> = [];
  let serve = (start: number, end: number): Buffer => file.subarray(windowsAt + start, windowsAt + end);
  const head = decodeIndexHead(file.subarray(0, headLength), 'remote index x', async (start, end) => {
    asked.push([start, end]);
    return serve(start, end);
  });
  assert.ok(fetchesWindows(head));
  assert.deepEqual(plain({ ...head, checkpoints: [] }), plain({ ...decodeIndex(file), checkpoints: [] }), 'entries and sizes as the whole file has them');
  assert.equal(asked.length, 0, 'no window fetched before one is asked for');
  assert.throws(() => head.checkpoints[2]!.window, /used before it was fetched/);
  const w2 = await head.checkpoints[2]!.lazyWindow!.load();
  assert.ok(w2.equals(index.checkpoints[2]!.window));
  assert.ok(head.checkpoints[2]!.window.equals(w2));
  await head.checkpoints[2]!.lazyWindow!.load();
  assert.equal(asked.length, 1, 'a window is fetched once');
  assert.equal(head.checkpoints[0]!.lazyWindow!.loaded?.length, 0, 'the first checkpoint has no window to fetch');

  // Wrong bytes for a window: a digest mismatch naming the checkpoint; the right ones on the next try.
  serve = (start, end) => Buffer.alloc(end - start, 0x41);
  await assert.rejects(head.checkpoints[3]!.lazyWindow!.load(), (err: LazyrootError) => err.code === 'DIGEST_MISMATCH' && /checkpoint 3: its window/.test(err.message));
  serve = (start, end) => file.subarray(windowsAt + start, windowsAt + end);
  assert.ok((await head.checkpoints[3]!.lazyWindow!.load()).equals(index.checkpoints[3]!.window));

  assert.throws(() => decodeIndexHead(file.subarray(0, headLength - 1), 'cut', async () => Buffer.alloc(0)), /not a valid lazyroot index/);
});

test('checkWindows: a whole index from elsewhere whose window is not the one its digest names is refused', () => {
  const index = bigIndex(10, 3);
  const damaged = encodeIndex(index);
  const count = damaged.readUInt32LE(12);
  const windowsAt = 128 + 96 * count + damaged.readUInt32LE(100);
  const record = 128 + 96 * 1;
  damaged[windowsAt + Number(damaged.readBigUInt64LE(record + 16)) + 5]! ^= 0x10; // the head, and so the trailer, unchanged
  assert.throws(() => checkWindows(decodeIndex(damaged), 'remote index y'), (err: LazyrootError) => err.code === 'DIGEST_MISMATCH' && /remote index y: checkpoint 1: its window/.test(err.message));
  checkWindows(decodeIndex(encodeIndex(index)), 'honest');
});

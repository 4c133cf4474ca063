import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { isLazyrootError, type ErrorCode } from '../../src/errors.js';
import { estargzFooter } from '../../src/index/estargz/footer.js';
import { indexFromToc, indexFromTocJson, readEstargzIndex } from '../../src/index/estargz/toc.js';
import { buildEstargz, incompressible, memoryBlobReader, type BuildEstargzOptions } from '../helpers/estargz.js';
import { buildTar, chardev, defaultMtime, dir, fifo, file, hardlink, symlink, whiteout, type TarEntry } from '../helpers/tar-builder.js';

const KiB = 1024;
const mtime = defaultMtime.getTime() / 1000;

async function index(entries: TarEntry[], options: BuildEstargzOptions = {}, tocDigest?: string) {
  const built = await buildEstargz(entries, options);
  const reader = memoryBlobReader(built.blob);
  const result = await readEstargzIndex(reader, { ...(tocDigest ? { tocDigest } : {}), what: 'layer L' });
  return { built, reader, result };
}

async function refused(entries: TarEntry[], options: BuildEstargzOptions, code: ErrorCode, pattern: RegExp): Promise<void> {
  const built = await buildEstargz(entries, options);
  await assert.rejects(readEstargzIndex(memoryBlobReader(built.blob), { what: 'layer L' }), (err: unknown) => {
    assert.ok(isLazyrootError(err, code), `expected ${code}, got ${String(err)}`);
    assert.match((err as Error).message, pattern);
    return true;
  });
}

test('entries and chunks from a TOC, in one read: the footer and the TOC together', async () => {
  const big = incompressible(10 * KiB + 5);
  const { built, reader, result } = await index(
    [
      dir('etc'),
      file('etc/hosts', 'localhost\n', { uid: 7, gid: 8, xattrs: { 'user.a': 'b' } }),
      dir('private', { mode: 0o700 }),
      file('big', big, { mode: 0o4755 }),
      symlink('link', '/etc/hosts'),
      hardlink('hard', 'etc/hosts'),
      chardev('null', 1, 3),
      fifo('pipe'),
      file('empty', ''),
      whiteout('etc/gone'),
    ],
    { chunkSize: 4 * KiB },
  );
  // The blob is under 64 KiB: the first read, of its last 64 KiB, is all of it.
  assert.ok(built.blob.length < 64 * KiB);
  assert.deepEqual(reader.reads, [[0, built.blob.length]]);
  assert.equal(result.tocDigest, built.tocDigest);
  assert.deepEqual(result.entries, [
    { path: 'etc', type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime },
    { path: 'etc/hosts', type: 'file', mode: 0o644, uid: 7, gid: 8, size: 10, mtime, xattrs: { 'user.a': 'Yg==' } },
    { path: 'private', type: 'dir', mode: 0o700, uid: 0, gid: 0, size: 0, mtime },
    { path: 'big', type: 'file', mode: 0o4755, uid: 0, gid: 0, size: big.length, mtime },
    { path: 'link', type: 'symlink', mode: 0o777, uid: 0, gid: 0, size: 0, mtime, linkname: '/etc/hosts' },
    { path: 'hard', type: 'hardlink', mode: 0o644, uid: 0, gid: 0, size: 0, mtime, linkname: 'etc/hosts' },
    { path: 'null', type: 'char', mode: 0o666, uid: 0, gid: 0, size: 0, mtime, devmajor: 1, devminor: 3 },
    { path: 'pipe', type: 'fifo', mode: 0o644, uid: 0, gid: 0, size: 0, mtime },
    { path: 'empty', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 0, mtime },
    { path: 'etc/.wh.gone', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 0, mtime },
  ]);
  // Only files with data have a chunk list (an empty file reads as none: no memory per empty file).
  assert.deepEqual([...result.chunks.keys()], ['etc/hosts', 'big']);
  const chunks = result.chunks.get('big')!;
  assert.deepEqual(
    chunks.map((c) => [c.offset, c.size]),
    [
      [0, 4096],
      [4096, 4096],
      [8192, 2053],
    ],
  );
  // Each member ends where the next begins; the last one at the TOC.
  assert.equal(chunks[0]!.compressedEnd, chunks[1]!.compressedStart);
  assert.equal(chunks[1]!.compressedEnd, chunks[2]!.compressedStart);
  assert.equal(result.chunks.get('etc/hosts')![0]!.compressedEnd, chunks[0]!.compressedStart);
  assert.equal(chunks[2]!.compressedEnd, built.tocOffset);
  assert.equal(result.chunks.get('empty'), undefined);
  assert.equal(result.prefetch.landmark, 'none');
});

test('the legacy stargz footer, and a single-chunk file with only a whole-file digest', async () => {
  const { built, result } = await index([file('a', 'aaa')], {
    legacyFooter: true,
    editToc: (toc) => {
      delete toc.entries[0]!.chunkDigest;
    },
  });
  assert.equal(result.footer.footerSize, 47);
  assert.equal(built.toc.entries[0]!.chunkDigest, undefined);
  assert.equal(result.chunks.get('a')![0]!.chunkDigest, built.toc.entries[0]!.digest);
});

test('the TOC digest is checked when given', async () => {
  const built = await buildEstargz([file('a', 'aaa')]);
  const ok = await readEstargzIndex(memoryBlobReader(built.blob), { tocDigest: built.tocDigest });
  assert.equal(ok.tocDigest, built.tocDigest);
  const wrong = `sha256:${'1'.repeat(64)}`;
  await assert.rejects(readEstargzIndex(memoryBlobReader(built.blob), { tocDigest: wrong, what: 'layer sha256:feed' }), (err: unknown) => {
    assert.ok(isLazyrootError(err, 'DIGEST_MISMATCH'));
    assert.match((err as Error).message, /^layer sha256:feed: TOC stargz\.index\.json: digest mismatch \(want sha256:1{64}, got sha256:/);
    return true;
  });
  await assert.rejects(readEstargzIndex(memoryBlobReader(built.blob), { tocDigest: 'md5:abc' }), (err: unknown) =>
    isLazyrootError(err, 'INVALID_DATA'),
  );
});

test('landmarks are eStargz metadata: reported as the prefetch hint, not as files', async () => {
  const landmark = (name: string): TarEntry => file(name, Buffer.from([0xf]));
  const prefetched = await index([dir('etc'), file('etc/a', 'a'), landmark('.prefetch.landmark'), file('b', 'bbbb')]);
  assert.deepEqual(
    prefetched.result.entries.map((e) => e.path),
    ['etc', 'etc/a', 'b'],
  );
  assert.ok(!prefetched.result.chunks.has('.prefetch.landmark'));
  assert.equal(prefetched.result.prefetch.landmark, 'prefetch');
  assert.deepEqual(prefetched.result.prefetch.paths, ['etc', 'etc/a']);
  // Prefetching [0, compressedEnd) covers etc/a and not b.
  assert.ok(prefetched.result.chunks.get('etc/a')![0]!.compressedEnd <= prefetched.result.prefetch.compressedEnd);
  assert.ok(prefetched.result.chunks.get('b')![0]!.compressedStart >= prefetched.result.prefetch.compressedEnd);

  const none = await index([landmark('.no.prefetch.landmark'), file('b', 'bbbb')]);
  assert.deepEqual(none.result.entries.map((e) => e.path), ['b']);
  assert.deepEqual(none.result.prefetch, { landmark: 'no-prefetch', paths: [], compressedEnd: 0 });
  // A landmark-named file below the root is an ordinary file.
  const nested = await index([dir('x'), landmark('x/.prefetch.landmark')]);
  assert.deepEqual(nested.result.entries.map((e) => e.path), ['x', 'x/.prefetch.landmark']);
});

test('innerOffset: small payloads sharing a gzip member', async () => {
  const { result } = await index([file('a', 'aaaa'), file('b', 'bbbbbb'), file('c', incompressible(3000))], { minChunkSize: 64 * KiB });
  const [a, b, c] = ['a', 'b', 'c'].map((p) => result.chunks.get(p)![0]!);
  assert.equal(a!.compressedStart, 0);
  assert.equal(b!.compressedStart, 0);
  assert.ok((a!.innerOffset ?? 0) > 0 && (b!.innerOffset ?? 0) > a!.innerOffset!);
  assert.equal(c!.compressedEnd, a!.compressedEnd);
});

test('hostile names are refused', async () => {
  const rename = (name: string, field = 'name', index = 0) => ({
    editToc: (toc: { entries: Array<Record<string, unknown>> }) => {
      toc.entries[index]![field] = name;
    },
  });
  await refused([file('a', 'x')], rename('../../etc/passwd'), 'HOSTILE_ARCHIVE', /"\.\.\/\.\.\/etc\/passwd".*escapes/);
  await refused([file('a', 'x')], rename('/etc/passwd'), 'HOSTILE_ARCHIVE', /is absolute/);
  await refused([file('a', 'x')], rename('a\0b'), 'HOSTILE_ARCHIVE', /NUL/);
  await refused([file('a', 'x'), hardlink('h', 'a')], rename('../outside', 'linkName', 1), 'HOSTILE_ARCHIVE', /escapes/);
  await refused([file('a', 'x'), hardlink('h', 'a')], rename('./', 'linkName', 1), 'INVALID_DATA', /hardlink to the layer root/);
  // A chunk that claims to belong to another file.
  await refused([file('a', incompressible(5000))], { chunkSize: 4096, ...rename('other', 'name', 1) }, 'INVALID_DATA', /chunk of "other"/);
});

test('a TOC that contradicts itself or the blob is refused', async () => {
  const edit = (fn: (entries: Array<Record<string, unknown>>) => void) => ({
    chunkSize: 4096,
    editToc: (toc: { entries: Array<Record<string, unknown>> }) => fn(toc.entries),
  });
  const two = [file('a', incompressible(5000))];
  await refused(two, edit((e) => (e[0]!.offset = 1 << 30)), 'INVALID_DATA', /not before the TOC/);
  await refused(two, edit((e) => (e[1]!.chunkOffset = 4000)), 'INVALID_DATA', /does not continue the file at byte 4096/);
  await refused(two, edit((e) => (e[1]!.chunkSize = 100)), 'INVALID_DATA', /its chunks cover 4196 of its 5000 bytes/);
  await refused(two, edit((e) => (e[0]!.size = 4000)), 'INVALID_DATA', /chunk 0 .* runs past the end of the file \(4000 bytes\)/);
  await refused(two, edit((e) => (e[1]!.offset = e[0]!.offset)), 'INVALID_DATA', /empty or backward gzip member/);
  await refused(two, edit((e) => e.reverse()), 'INVALID_DATA', /chunk that follows no regular file/);
  await refused(two, edit((e) => (e[0]!.size = -1)), 'INVALID_DATA', /"size" is -1/);
  await refused(two, edit((e) => (e[0]!.mode = '0644')), 'INVALID_DATA', /"mode"/);
  await refused(two, edit((e) => (e[0]!.modtime = 'yesterday')), 'INVALID_DATA', /RFC 3339/);
  await refused(two, edit((e) => (e[0]!.xattrs = { 'user.x': 'not base64!' })), 'INVALID_DATA', /not base64/);
  await refused(two, edit((e) => (e[0]!.chunkDigest = 'sha256:nope')), 'INVALID_DATA', /chunk 0 digest/);
  await refused(two, edit((e) => delete e[1]!.chunkDigest), 'UNSUPPORTED', /chunk 1 has no chunkDigest/);
  await refused(two, edit((e) => (e[0]!.type = 'socket')), 'UNSUPPORTED', /unknown entry type "socket"/);
  await refused(two, { editToc: (toc) => (toc.version = 2) }, 'UNSUPPORTED', /TOC version 2/);
  await refused(two, { tocJson: Buffer.from('{"version":1,"entries":[') }, 'INVALID_DATA', /not valid JSON/);
  await refused(two, { tocJson: Buffer.from('[]') }, 'INVALID_DATA', /not a JSON object/);
});

test('a TOC member that is not one, or inflates without end, is refused', async () => {
  const tocMember = async (tar: Buffer): Promise<Buffer> => {
    const payload = gzipSync(Buffer.alloc(512));
    return Buffer.concat([payload, gzipSync(tar), estargzFooter(payload.length)]);
  };
  const misnamed = await tocMember(await buildTar([file('other.json', '{}')]));
  await assert.rejects(readEstargzIndex(memoryBlobReader(misnamed)), /named "other\.json", not stargz\.index\.json/);
  const empty = await tocMember(Buffer.alloc(1024));
  await assert.rejects(readEstargzIndex(memoryBlobReader(empty)), /no stargz\.index\.json tar entry/);
  const notGzip = Buffer.concat([Buffer.alloc(100, 1), estargzFooter(10)]);
  await assert.rejects(readEstargzIndex(memoryBlobReader(notGzip)), /the TOC is not a gzip member/);
  const bomb = await tocMember(await buildTar([file('stargz.index.json', Buffer.alloc(2 * 1024 * 1024, 0x20))]));
  await assert.rejects(readEstargzIndex(memoryBlobReader(bomb), { maxTocBytes: 1024 * 1024 }), (err: unknown) => {
    assert.ok(isLazyrootError(err, 'INVALID_DATA'));
    assert.match((err as Error).message, /inflates to more than 1048576 bytes/);
    return true;
  });
  await assert.rejects(readEstargzIndex(memoryBlobReader(Buffer.alloc(30))), /not an eStargz blob/);
});

test('a TOC with more records than the limit is refused before any is mapped, naming the limit', async () => {
  const entries = [dir('d'), ...Array.from({ length: 30 }, (_, i) => file(`d/f${i}`, `file ${i}\n`))];
  const built = await buildEstargz(entries, {});
  await assert.rejects(readEstargzIndex(memoryBlobReader(built.blob), { what: 'layer L', maxTocRecords: 20 }), (err: unknown) => {
    assert.ok(isLazyrootError(err, 'RESOURCE_EXHAUSTED'), String(err));
    assert.match((err as Error).message, /^layer L: the TOC lists \d+ entries and chunks, more than the limit of 20 \(--max-toc-records\)$/);
    return true;
  });
  // At the limit or under it: read as usual.
  const { result } = await index(entries);
  assert.equal(result.entries.length, 31);
});

test('the TOC JSON read in batches maps as JSON.parse of the whole would, whatever its layout', () => {
  const digest = (i: number) => `sha256:${i.toString(16).padStart(64, '0')}`;
  const records: Array<Record<string, unknown>> = [{ name: 'd/', type: 'dir', mode: 0o755 }];
  for (let i = 0; i < 5000; i++) {
    // Names with quotes, backslashes, brackets and braces; every seventh file has a byte; some empty files twice.
    const name = i % 13 === 0 ? `d/q"u\\o]t}e{[${i}` : `d/f${i}`;
    if (i % 7 === 0) records.push({ name, type: 'reg', mode: 0o644, size: 1, offset: 10 + i, digest: digest(i), chunkDigest: digest(i), modtime: '2024-01-02T03:04:05.5Z' });
    else records.push({ name, type: 'reg', mode: 0o600, size: 0, xattrs: { 'user.k': 'AA==' } });
  }
  records.push({ name: 'd/f7', type: 'reg', mode: 0o644, size: 0 }); // an empty file again over one with data
  const toc = { version: 1, entries: records };
  const expected = indexFromToc(JSON.parse(JSON.stringify(toc)), 1e9, 'layer L');
  assert.equal(expected.chunks.has('d/f7'), false);
  assert.equal(expected.chunks.has('d/f14'), true);
  const layouts = {
    compact: JSON.stringify(toc),
    tabs: JSON.stringify(toc, null, '\t'),
    'entries first': JSON.stringify({ entries: records, version: 1 }),
    'extra keys': JSON.stringify({ version: 1, other: { a: [1, { b: ']' }] }, entries: records, more: 'x' }, null, 1),
    'windows lines': JSON.stringify(toc, null, 2).replace(/\n/g, '\r\n'),
  };
  for (const [layout, text] of Object.entries(layouts)) {
    const got = indexFromTocJson(Buffer.from(text), 1e9, 'layer L');
    assert.deepEqual(got.entries, expected.entries, layout);
    assert.deepEqual([...got.chunks], [...expected.chunks], layout);
    assert.deepEqual(got.prefetch, expected.prefetch, layout);
  }
  assert.deepEqual(indexFromTocJson(Buffer.from('{"version":1,"entries":[]}'), 1e9, 'L').entries, []);
  // Not JSON, or not a TOC: the errors of the plain path.
  for (const bad of ['{"version":1,"entries":[{"name":"a","type":"dir"},]}', '{"version":1,"entries":[{"name":"a" "type":"dir"}]}', '{"version":1,"entries":[', '[]{}']) {
    assert.throws(() => indexFromTocJson(Buffer.from(bad), 1e9, 'layer L'), (err: unknown) => isLazyrootError(err, 'INVALID_DATA') && /^layer L: TOC stargz.index.json is not valid JSON/.test((err as Error).message), bad);
  }
  assert.throws(() => indexFromTocJson(Buffer.from('{"version":2,"entries":[]}'), 1e9, 'L'), (err: unknown) => isLazyrootError(err, 'UNSUPPORTED'));
  assert.throws(() => indexFromTocJson(Buffer.from('{"version":1}'), 1e9, 'L'), /has no "entries" array/);
  assert.throws(() => indexFromTocJson(Buffer.from(JSON.stringify(toc)), 1e9, 'L', 100), /the TOC lists 5002 entries and chunks, more than the limit of 100/);
});

test('a TOC read as it inflates reports what the plain read would, in the same order', async () => {
  const entries = [dir('d'), ...Array.from({ length: 700 }, (_, i) => file(`d/f${i}`, i % 3 ? '' : `file ${i}\n`))];
  const bad = (edit: (toc: { version: number; entries: Array<Record<string, unknown>> }) => void) => buildEstargz(entries, { editToc: edit });
  const wrong = `sha256:${'0'.repeat(64)}`;
  // A record it refuses, deep in the TOC: named with its index; a wrong digest is reported before it.
  const hostile = await bad((toc) => void (toc.entries[600]!.name = '../escape'));
  await assert.rejects(readEstargzIndex(memoryBlobReader(hostile.blob), { what: 'layer L' }), (err: unknown) => isLazyrootError(err, 'HOSTILE_ARCHIVE'));
  await assert.rejects(readEstargzIndex(memoryBlobReader(hostile.blob), { what: 'layer L', tocDigest: wrong }), (err: unknown) => isLazyrootError(err, 'DIGEST_MISMATCH'));
  const notObject = await bad((toc) => void (toc.entries[650] = 7 as unknown as Record<string, unknown>));
  await assert.rejects(readEstargzIndex(memoryBlobReader(notObject.blob), { what: 'layer L' }), /layer L: TOC entry 650: is not an object/);
  // Past the record limit, the limit is what is reported, whatever else is wrong.
  await assert.rejects(readEstargzIndex(memoryBlobReader(hostile.blob), { what: 'layer L', maxTocRecords: 100 }), (err: unknown) => isLazyrootError(err, 'RESOURCE_EXHAUSTED'));
  const v2 = await bad((toc) => void (toc.version = 2));
  await assert.rejects(readEstargzIndex(memoryBlobReader(v2.blob), { what: 'layer L' }), (err: unknown) => isLazyrootError(err, 'UNSUPPORTED'));
  await assert.rejects(readEstargzIndex(memoryBlobReader(v2.blob), { what: 'layer L', tocDigest: wrong }), (err: unknown) => isLazyrootError(err, 'DIGEST_MISMATCH'));
  // The plain TOC maps as the whole-JSON path maps it (sha512 digests checked too).
  const plain = await buildEstargz(entries);
  const streamed = await readEstargzIndex(memoryBlobReader(plain.blob), { tocDigest: plain.tocDigest });
  const whole = indexFromToc(JSON.parse(plain.tocJson.toString('utf8')), plain.tocOffset, 'eStargz layer');
  assert.deepEqual(streamed.entries, whole.entries);
  assert.deepEqual([...streamed.chunks], [...whole.chunks]);
  const { createHash } = await import('node:crypto');
  const sha512 = `sha512:${createHash('sha512').update(plain.tocJson).digest('hex')}`;
  assert.equal((await readEstargzIndex(memoryBlobReader(plain.blob), { tocDigest: sha512 })).entries.length, entries.length);
});

test('a TOC bigger than the first read (the last 1 % of the blob, at least 64 KiB) is read whole by a second read of the rest', async () => {
  // 6,000 files with names that do not repeat: a TOC that does not fit in 64 KiB, in a blob of under 6.4 MB.
  const entries: TarEntry[] = [dir('d')];
  for (let i = 0; i < 6000; i++) entries.push(file(`d/${i.toString(36)}-${(i * 7919).toString(16)}.txt`, `${i}\n`));
  const { built, reader, result } = await index(entries);
  const size = built.blob.length;
  const tail = Math.max(64 * KiB, Math.ceil(size / 100));
  assert.ok(size < 100 * 64 * KiB && built.tocOffset < size - tail, `blob ${size} bytes, TOC at ${built.tocOffset}`);
  assert.deepEqual(reader.reads, [
    [size - tail, size],
    [built.tocOffset, size - tail],
  ]);
  assert.equal(result.tocDigest, built.tocDigest);
  assert.equal(result.entries.length, 6001);
  assert.equal(result.chunks.get('d/0-0.txt')?.length, 1);
});

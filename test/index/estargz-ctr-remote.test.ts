/**
 * eStargz layers written by the real producer: images built here, pushed to
 * Debian's docker-registry with skopeo, converted by Debian's `ctr-remote
 * images convert --estargz --oci` in a private containerd, pushed back, then
 * read lazily over HTTP Range requests with readEstargzIndex/readEstargzFile.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { isLazyrootError } from '../../src/errors.js';
import { readEstargzFile, EstargzChunkCache } from '../../src/index/estargz/reader.js';
import { readEstargzIndex, tocDigestAnnotation, type EstargzIndex } from '../../src/index/estargz/toc.js';
import type { IndexEntry } from '../../src/index/types.js';
import {
  convertToEstargz,
  corruptingReader,
  incompressible,
  registryBlobReader,
  startContainerd,
  type Containerd,
  type ConvertedImage,
  type CountingBlobReader,
} from '../helpers/estargz.js';
import { pushToRegistry, writeOciLayout } from '../helpers/image-builder.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { missingRequirements, requireOrSkip } from '../helpers/requirements.js';
import { defaultMtime, dir, fifo, file, hardlink, opaque, symlink, whiteout, type TarEntry, buildTar } from '../helpers/tar-builder.js';

const needs = { root: true, tools: ['containerd', 'ctr-remote', 'docker-registry', 'skopeo'] };
const MiB = 1024 * 1024;

const big = incompressible(5 * MiB + 12_345);
const tool = Buffer.from(Array.from({ length: 4000 }, (_, i) => `line ${i}: lazily fetched\n`).join(''));
const layers: TarEntry[][] = [
  [
    dir('etc'),
    file('etc/hostname', 'lazyroot\n'),
    file('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n'),
    file('etc/attr', 'carries an xattr\n', { xattrs: { 'user.lazyroot': 'v1' } }),
    dir('private', { mode: 0o700, uid: 1000, gid: 1000 }),
    file('private/secret', 'sesame\n', { mode: 0o600, uid: 1000, gid: 1000 }),
    dir('usr'),
    dir('usr/bin'),
    file('usr/bin/tool', tool, { mode: 0o4755 }),
    hardlink('usr/bin/tool-link', 'usr/bin/tool'),
    symlink('bin', 'usr/bin'),
    symlink('etc/abs', '/etc/hostname'),
    dir('data'),
    file('data/big.bin', big),
    file('empty', ''),
    fifo('run.fifo'),
  ],
  [dir('etc'), whiteout('etc/passwd'), file('etc/hostname', 'changed\n'), opaque('data'), file('data/new', 'new\n')],
];

let work: string;
let registry: TestRegistry | undefined;
let containerd: Containerd | undefined;
let converted: ConvertedImage;
let prioritized: ConvertedImage;
const timings: string[] = [];

before(async () => {
  if (missingRequirements(needs).length > 0) return;
  const t0 = Date.now();
  work = await mkdtemp(join(tmpdir(), 'lazyroot-estargz-'));
  registry = await startRegistry();
  containerd = await startContainerd();
  timings.push(`registry ${registry.startupMs} ms, containerd ${containerd.startupMs} ms`);
  const tars = await Promise.all(layers.map((entries) => buildTar(entries)));
  await writeOciLayout(join(work, 'layout'), [{ layers: tars.map((tar) => ({ tar, compression: 'gzip' as const })) }]);
  await pushToRegistry(join(work, 'layout'), 'app:v1', registry.host);
  const t1 = Date.now();
  converted = await convertToEstargz(`${registry.host}/app:v1`, `${registry.host}/app:esgz`, containerd);
  const t2 = Date.now();
  prioritized = await convertToEstargz(`${registry.host}/app:v1`, `${registry.host}/app:esgz-prefetch`, containerd, {
    prioritizedFiles: ['etc/hostname', 'usr/bin/tool'],
  });
  timings.push(`setup ${t1 - t0} ms, pull+convert+push ${t2 - t1} ms, again with a record file ${Date.now() - t2} ms`);
});

after(async () => {
  await containerd?.stop();
  await registry?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

function layerOf(image: ConvertedImage, i: number): { digest: string; size: number; tocDigest: string; mediaType: string } {
  const layer = image.manifest.layers[i]!;
  const tocDigest = layer.annotations?.[tocDigestAnnotation];
  assert.ok(tocDigest, `layer ${i} of ${image.ref} has no ${tocDigestAnnotation} annotation`);
  return { digest: layer.digest, size: layer.size, tocDigest, mediaType: layer.mediaType };
}

async function openLayer(image: ConvertedImage, i: number): Promise<{ reader: CountingBlobReader; index: EstargzIndex; digest: string }> {
  const layer = layerOf(image, i);
  const reader = await registryBlobReader(registry!.url, image.ref.slice(image.ref.indexOf('/') + 1, image.ref.lastIndexOf(':')), layer.digest);
  assert.equal(reader.size, layer.size);
  const index = await readEstargzIndex(reader, { tocDigest: layer.tocDigest, what: `layer ${layer.digest}` });
  return { reader, index, digest: layer.digest };
}

/** The IndexEntry a tar-builder entry should become. */
function expected(entry: TarEntry): IndexEntry {
  assert.equal(entry.kind, 'packed');
  if (entry.kind !== 'packed') throw new Error('unreachable');
  const h = entry.header;
  const types: Record<string, IndexEntry['type']> = { file: 'file', directory: 'dir', symlink: 'symlink', link: 'hardlink', fifo: 'fifo' };
  const out: IndexEntry = {
    path: h.name.replace(/\/$/, ''),
    type: types[h.type!]!,
    mode: h.mode!,
    uid: h.uid ?? 0,
    gid: h.gid ?? 0,
    size: h.type === 'file' ? (entry.data?.length ?? 0) : 0,
    mtime: defaultMtime.getTime() / 1000,
  };
  if (h.linkname) out.linkname = h.linkname;
  const xattrs = Object.entries(h.pax ?? {}).filter(([k]) => k.startsWith('SCHILY.xattr.'));
  if (xattrs.length) out.xattrs = Object.fromEntries(xattrs.map(([k, v]) => [k.slice(13), Buffer.from(v).toString('base64')]));
  return out;
}

function contentOf(entry: TarEntry): Buffer | undefined {
  return entry.kind === 'packed' && entry.header.type === 'file' ? (entry.data ?? Buffer.alloc(0)) : undefined;
}

function skip(t: TestContext): boolean {
  return !requireOrSkip(t, needs);
}

test('ctr-remote converts to eStargz: OCI gzip layers carrying the TOC digest annotation', (t) => {
  if (skip(t)) return;
  for (const line of timings) t.diagnostic(line);
  assert.equal(converted.manifest.layers.length, 2);
  for (let i = 0; i < 2; i++) {
    const layer = layerOf(converted, i);
    assert.equal(layer.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
    assert.match(layer.tocDigest, /^sha256:[0-9a-f]{64}$/);
  }
});

test('the footer and TOC are found with one range read (the last 1 % of the blob, at least 64 KiB) and the TOC digest matches the annotation', async (t) => {
  if (skip(t)) return;
  for (let i = 0; i < 2; i++) {
    const { reader, index } = await openLayer(converted, i);
    const tail = Math.max(64 * 1024, Math.ceil(reader.size / 100));
    assert.deepEqual(reader.reads, [[Math.max(0, reader.size - tail), reader.size]]);
    assert.ok(index.tocOffset >= reader.size - tail);
    assert.equal(index.footer.format, 'estargz');
    assert.equal(index.tocDigest, layerOf(converted, i).tocDigest);
    t.diagnostic(`layer ${i}: blob ${reader.size} bytes, TOC read ${reader.bytesRead()} bytes (footer + ${reader.size - 51 - index.tocOffset})`);
  }
});

test('every entry of both layers is in the index with its metadata; landmarks are reported apart', async (t) => {
  if (skip(t)) return;
  for (let i = 0; i < 2; i++) {
    const { index } = await openLayer(converted, i);
    const want = layers[i]!.map(expected).sort((a, b) => a.path.localeCompare(b.path));
    const got = [...index.entries].sort((a, b) => a.path.localeCompare(b.path));
    assert.deepEqual(got, want);
    assert.equal(index.prefetch.landmark, 'no-prefetch');
    assert.ok(!index.entries.some((e) => e.path.endsWith('.landmark')));
  }
  const { index } = await openLayer(converted, 0);
  const byPath = new Map(index.entries.map((e) => [e.path, e]));
  assert.equal(byPath.get('private')!.mode, 0o700);
  assert.equal(byPath.get('usr/bin/tool')!.mode, 0o4755);
  assert.equal(byPath.get('usr/bin/tool-link')!.linkname, 'usr/bin/tool');
  assert.equal(byPath.get('etc/abs')!.linkname, '/etc/hostname');
  assert.deepEqual(byPath.get('etc/attr')!.xattrs, { 'user.lazyroot': Buffer.from('v1').toString('base64') });
  const second = await openLayer(converted, 1);
  assert.ok(second.index.entries.some((e) => e.path === 'etc/.wh.passwd'));
  assert.ok(second.index.entries.some((e) => e.path === 'data/.wh..wh..opq'));
});

test('every file read through readEstargzFile equals the original; the 5 MiB file is two chunks', async (t) => {
  if (skip(t)) return;
  for (let i = 0; i < 2; i++) {
    const { reader, index } = await openLayer(converted, i);
    const cache = new EstargzChunkCache();
    const byPath = new Map(index.entries.map((e) => [e.path, e]));
    for (const entry of layers[i]!) {
      const content = contentOf(entry);
      if (content === undefined || entry.kind !== 'packed') continue;
      const path = entry.header.name;
      const ie = byPath.get(path)!;
      const bytes = await readEstargzFile(ie, index.chunks.get(path)!, 0, ie.size, reader, { cache });
      assert.ok(bytes.equals(content), `${path} differs`);
    }
  }
  const { reader, index } = await openLayer(converted, 0);
  const chunks = index.chunks.get('data/big.bin')!;
  assert.deepEqual(
    chunks.map((c) => [c.offset, c.size]),
    [
      [0, 4 * MiB],
      [4 * MiB, big.length - 4 * MiB],
    ],
  );
  assert.equal(chunks[0]!.compressedEnd, chunks[1]!.compressedStart);
  const entry = index.entries.find((e) => e.path === 'data/big.bin')!;
  // Across the chunk boundary, from a cold cache: both chunks, one range read.
  reader.reset();
  const across = await readEstargzFile(entry, chunks, 4 * MiB - 100, 200, reader, { cache: new EstargzChunkCache() });
  assert.ok(across.equals(big.subarray(4 * MiB - 100, 4 * MiB + 100)));
  assert.deepEqual(reader.reads, [[chunks[0]!.compressedStart, chunks[1]!.compressedEnd]]);
  // Past the end: short; at the end: empty.
  const tail = await readEstargzFile(entry, chunks, big.length - 10, 100, reader);
  assert.ok(tail.equals(big.subarray(big.length - 10)));
  assert.equal((await readEstargzFile(entry, chunks, big.length, 10, reader)).length, 0);
});

test('reading one small file fetches a small part of the blob', async (t) => {
  if (skip(t)) return;
  const { reader, index } = await openLayer(converted, 0);
  const tocBytes = reader.bytesRead();
  reader.reset();
  const entry = index.entries.find((e) => e.path === 'etc/hostname')!;
  const bytes = await readEstargzFile(entry, index.chunks.get('etc/hostname')!, 0, entry.size, reader, { cache: new EstargzChunkCache() });
  assert.equal(bytes.toString(), 'lazyroot\n');
  assert.equal(reader.reads.length, 1);
  const fileBytes = reader.bytesRead();
  assert.ok(fileBytes < 1024, `fetched ${fileBytes} bytes for a 9-byte file`);
  const share = ((tocBytes + fileBytes) / reader.size) * 100;
  t.diagnostic(`etc/hostname: ${fileBytes} bytes fetched for the file, ${tocBytes} for footer + TOC: ${tocBytes + fileBytes} of ${reader.size} (${share.toFixed(2)}%)`);
  assert.ok(share < 2);

  // A second read of the same file is served from the cache: nothing fetched.
  const cache = new EstargzChunkCache();
  await readEstargzFile(entry, index.chunks.get('etc/hostname')!, 0, entry.size, reader, { cache });
  reader.reset();
  await readEstargzFile(entry, index.chunks.get('etc/hostname')!, 2, 3, reader, { cache });
  assert.equal(reader.reads.length, 0);
});

test('a wrong TOC digest is refused with DIGEST_MISMATCH naming the layer', async (t) => {
  if (skip(t)) return;
  const layer = layerOf(converted, 0);
  const reader = await registryBlobReader(registry!.url, 'app', layer.digest);
  const wrong = `sha256:${'0'.repeat(64)}`;
  await assert.rejects(readEstargzIndex(reader, { tocDigest: wrong, what: `layer ${layer.digest}` }), (err: unknown) => {
    assert.ok(isLazyrootError(err, 'DIGEST_MISMATCH'), String(err));
    assert.ok((err as Error).message.includes(layer.digest), (err as Error).message);
    assert.ok((err as Error).message.includes(layer.tocDigest), (err as Error).message);
    return true;
  });
  // The digest of the other layer is as wrong.
  await assert.rejects(readEstargzIndex(reader, { tocDigest: layerOf(converted, 1).tocDigest }), (err: unknown) =>
    isLazyrootError(err, 'DIGEST_MISMATCH'),
  );
});

test('a corrupted chunk is refused with DIGEST_MISMATCH naming the file and chunk; nothing is returned', async (t) => {
  if (skip(t)) return;
  const { reader, index, digest } = await openLayer(converted, 0);
  const chunks = index.chunks.get('data/big.bin')!;
  const entry = index.entries.find((e) => e.path === 'data/big.bin')!;
  // Incompressible data is stored, not deflated: a flipped byte inflates fine and only the digest sees it.
  const bad = corruptingReader(reader, chunks[1]!.compressedStart + 5000);
  const cache = new EstargzChunkCache();
  await assert.rejects(readEstargzFile(entry, chunks, 4 * MiB - 10, 20, bad, { cache, what: `layer ${digest}` }), (err: unknown) => {
    assert.ok(isLazyrootError(err, 'DIGEST_MISMATCH'), String(err));
    assert.match((err as Error).message, /"data\/big\.bin": chunk 1 /);
    assert.ok((err as Error).message.includes(chunks[1]!.chunkDigest));
    assert.ok((err as Error).message.includes(digest));
    return true;
  });
  assert.equal(cache.get(chunks[1]!.chunkDigest), undefined, 'the bad chunk is not cached');
  // The good chunk is still readable, the bad one still refused.
  const first = await readEstargzFile(entry, chunks, 0, 100, bad, { cache });
  assert.ok(first.equals(big.subarray(0, 100)));
  await assert.rejects(readEstargzFile(entry, chunks, 4 * MiB, 1, bad, { cache }), (err: unknown) => isLazyrootError(err, 'DIGEST_MISMATCH'));

  // A deflated member with a flipped byte: undecodable or wrong, refused the same way.
  const toolChunks = index.chunks.get('usr/bin/tool')!;
  const toolEntry = index.entries.find((e) => e.path === 'usr/bin/tool')!;
  const mid = Math.floor((toolChunks[0]!.compressedStart + toolChunks[0]!.compressedEnd) / 2);
  await assert.rejects(
    readEstargzFile(toolEntry, toolChunks, 0, toolEntry.size, corruptingReader(reader, mid), { cache }),
    (err: unknown) => isLazyrootError(err, 'DIGEST_MISMATCH') && /"usr\/bin\/tool": chunk 0 /.test((err as Error).message),
  );
});

test('--estargz-record-in: prioritized files come first and the prefetch landmark marks their end', async (t) => {
  if (skip(t)) return;
  const { reader, index } = await openLayer(prioritized, 0);
  assert.equal(index.prefetch.landmark, 'prefetch');
  assert.ok(index.prefetch.paths.includes('etc/hostname'), JSON.stringify(index.prefetch.paths));
  assert.ok(index.prefetch.paths.includes('usr/bin/tool'), JSON.stringify(index.prefetch.paths));
  assert.ok(!index.prefetch.paths.includes('data/big.bin'));
  const toolChunks = index.chunks.get('usr/bin/tool')!;
  assert.ok(toolChunks.every((c) => c.compressedEnd <= index.prefetch.compressedEnd));
  assert.ok(index.chunks.get('data/big.bin')!.every((c) => c.compressedStart >= index.prefetch.compressedEnd));
  t.diagnostic(`prefetch region: ${index.prefetch.compressedEnd} of ${reader.size} bytes; paths ${JSON.stringify(index.prefetch.paths)}`);
  // Same files, same bytes.
  const want = layers[0]!.map(expected).sort((a, b) => a.path.localeCompare(b.path));
  assert.deepEqual([...index.entries].sort((a, b) => a.path.localeCompare(b.path)), want);
});

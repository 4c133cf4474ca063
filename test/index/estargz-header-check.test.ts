import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { EstargzHeaderCheck } from '../../src/index/estargz/header-check.js';
import { checkTocAgainstTar } from '../../src/index/estargz/toc-check.js';
import { checkTocOffThread } from '../../src/index/toc-check-thread.js';
import { readEstargzIndex } from '../../src/index/estargz/toc.js';
import { buildEstargz, incompressible, memoryBlobReader, type BuildEstargzOptions } from '../helpers/estargz.js';
import { dir, file, symlink, type TarEntry } from '../helpers/tar-builder.js';

const KiB = 1024;
const longName = `d/${'n'.repeat(150)}.txt`; // past ustar's 100 bytes: a PAX path
const entries: TarEntry[] = [
  dir('d'),
  file('d/a.txt', 'the 28 bytes of data/a.txt.\n'),
  file('d/b.bin', incompressible(20 * KiB + 7, 'b')),
  symlink('d/link', 'a.txt'),
  file('d/empty', ''),
  file(longName, 'long\n'),
  file('d/c.txt', 'c\n'),
];

async function layer(options: BuildEstargzOptions = { chunkSize: 8 * KiB }) {
  const built = await buildEstargz(entries, options);
  const index = await readEstargzIndex(memoryBlobReader(built.blob));
  return { built, index, check: new EstargzHeaderCheck(index, memoryBlobReader(built.blob), 'layer X') };
}

/** b.bin said to be a.txt's 28 bytes (a.txt's member and digest); a.txt said to be empty. */
const lie: BuildEstargzOptions['editToc'] = (toc) => {
  const a = toc.entries.find((e) => e.name === 'd/a.txt')!;
  const b = toc.entries.find((e) => e.name === 'd/b.bin')!;
  for (let i = toc.entries.length - 1; i >= 0; i--) if (toc.entries[i]!.type === 'chunk' && toc.entries[i]!.name === 'd/b.bin') toc.entries.splice(i, 1);
  Object.assign(b, { size: 28, offset: a.offset, chunkDigest: a.chunkDigest, digest: a.digest });
  delete b.chunkSize;
  a.size = 0;
  delete a.offset;
  delete a.chunkDigest;
  delete a.digest;
};

test('an honest eStargz layer: every file\'s tar header agrees with the TOC, and the whole tar stream too', async () => {
  for (const options of [{ chunkSize: 8 * KiB }, { chunkSize: 8 * KiB, minChunkSize: 64 * KiB }]) {
    const { built, index, check } = await layer(options);
    for (const [path] of index.chunks) await check.check(path);
    await checkTocAgainstTar(Readable.from([gunzipSync(built.blob)]), index, 'layer X');
  }
});

test('regression: a TOC pointing a file at another file\'s bytes (with their chunk digest) fails that file, and the whole-stream check', async () => {
  const { built, index, check } = await layer({ chunkSize: 8 * KiB, editToc: lie });
  await assert.rejects(check.check('d/b.bin'), /"d\/b\.bin": the TOC disagrees with the layer's tar stream: the tar header before its bytes names "d\/a\.txt"/);
  await check.check('d/c.txt'); // the files it tells the truth about are served
  await check.check(longName);
  await assert.rejects(checkTocAgainstTar(Readable.from([gunzipSync(built.blob)]), index, 'layer X'), /the TOC disagrees with the layer's tar stream: entry 1 "d\/a\.txt": the tar has 28 bytes, the TOC 0/);
});

test('the whole-stream check compares file bytes with the chunk digests, and the entries\' order and kinds', async () => {
  // Same names and sizes, but the TOC's digest for c.txt is of other bytes.
  const { built, index } = await layer({
    chunkSize: 8 * KiB,
    editToc: (toc) => {
      const c = toc.entries.find((e) => e.name === 'd/c.txt')!;
      const a = toc.entries.find((e) => e.name === 'd/a.txt')!;
      c.chunkDigest = a.chunkDigest;
      c.digest = a.digest;
    },
  });
  await assert.rejects(checkTocAgainstTar(Readable.from([gunzipSync(built.blob)]), index, 'layer X'), /"d\/c\.txt": chunk 0 \(file bytes 0-2\) is sha256:[0-9a-f]+ in the tar/);
  const swapped = await layer({
    chunkSize: 8 * KiB,
    editToc: (toc) => {
      toc.entries.find((e) => e.name === 'd/link')!.linkName = 'c.txt';
    },
  });
  await assert.rejects(checkTocAgainstTar(Readable.from([gunzipSync(swapped.built.blob)]), swapped.index, 'layer X'), /"d\/link": the tar links to "a\.txt", the TOC to "c\.txt"/);
});

test('regression: header bytes damaged on the way (they do not inflate) fail that read only; the next read checks again and serves the file', async () => {
  const { built, index } = await layer();
  // c.txt's header lies in the member before its first chunk (the long-named file's): damage that member once.
  const first = index.chunks.get('d/c.txt')![0]!;
  const before = [...index.chunks.values()].flat().find((c) => c.compressedEnd === first.compressedStart)!;
  const honest = memoryBlobReader(built.blob);
  let damaged = 0;
  const flaky = {
    size: honest.size,
    async read(start: number, end: number) {
      const bytes = await honest.read(start, end);
      if (damaged === 0 && start <= before.compressedStart + 12 && before.compressedStart + 12 < end) {
        damaged++;
        bytes[before.compressedStart + 12 - start]! ^= 0xff;
      }
      return bytes;
    },
  };
  const check = new EstargzHeaderCheck(index, flaky, 'layer X');
  await assert.rejects(check.check('d/c.txt'), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'UNAVAILABLE');
    assert.match(err.message, /layer X: "d\/c\.txt": blob bytes \d+-\d+, fetched for the tar header before its bytes, do not inflate \(damaged on the way\?\)/);
    return true;
  });
  assert.equal(damaged, 1);
  await check.check('d/c.txt');
});

test('the whole-stream check on a worker thread: an honest blob passes, a lying TOC is INVALID_DATA with the check\'s message, a stopped check is UNAVAILABLE', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'lazyroot-toc-check-'));
  try {
    const honest = await layer();
    const honestPath = join(dir, 'honest');
    await writeFile(honestPath, honest.built.blob);
    const job = (path: string, index: typeof honest.index) => ({ kind: 'estargz' as const, path, index: { entries: index.entries, chunks: index.chunks }, what: 'layer X' });
    await checkTocOffThread(job(honestPath, honest.index));

    const lying = await layer({ chunkSize: 8 * KiB, editToc: lie });
    const lyingPath = join(dir, 'lying');
    await writeFile(lyingPath, lying.built.blob);
    await assert.rejects(checkTocOffThread(job(lyingPath, lying.index)), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'INVALID_DATA');
      assert.match(err.message, /layer X: the TOC disagrees with the layer's tar stream: entry 1 "d\/a\.txt": the tar has 28 bytes, the TOC 0/);
      return true;
    });

    const stopped = new AbortController();
    const running = checkTocOffThread(job(honestPath, honest.index), stopped.signal);
    stopped.abort();
    await assert.rejects(running, (err: Error & { code?: string }) => err.code === 'UNAVAILABLE' && /the TOC check was stopped/.test(err.message));
    await assert.rejects(checkTocOffThread(job(honestPath, honest.index), stopped.signal), /stopped before it began/);

    // regression: a blob that cannot be read (another process promoted the partial file away) is a
    // check not done (UNAVAILABLE), never a lying TOC, nor an error code the errno table lacks.
    await assert.rejects(checkTocOffThread(job(join(dir, 'gone'), honest.index)), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'UNAVAILABLE');
      assert.match(err.message, /ENOENT/);
      return true;
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

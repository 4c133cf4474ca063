import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { BlobStore } from '../../src/store/blob-store.js';
import { StorePaths } from '../../src/store/paths.js';
import { sha256 } from '../../src/oci/digest.js';
import { LazyrootError } from '../../src/errors.js';

async function newStore(t: { after: (fn: () => Promise<void>) => void }) {
  const root = await mkdtemp(join(tmpdir(), 'lazyroot-blobs-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  return { root, paths: new StorePaths(root), blobs: new BlobStore(new StorePaths(root)) };
}

/** A source that serves `data` from an offset, optionally failing after `failAfter` bytes. */
function sourceOf(data: Buffer, plan: { failAfter?: number[]; errorCode?: string } = {}) {
  const calls: number[] = [];
  const fetchFrom = async (offset: number) => {
    calls.push(offset);
    const limit = plan.failAfter?.[calls.length - 1];
    const slice = data.subarray(offset, limit === undefined ? data.length : Math.min(data.length, offset + limit));
    return Readable.from(
      (async function* () {
        for (let i = 0; i < slice.length; i += 1000) yield slice.subarray(i, i + 1000);
        if (limit !== undefined) throw Object.assign(new Error('socket hang up'), { code: plan.errorCode ?? 'ECONNRESET' });
      })(),
    );
  };
  return { fetchFrom, calls };
}

async function tmpFiles(root: string): Promise<string[]> {
  return readdir(join(root, 'tmp')).catch(() => []);
}

test('ingest stores a verified blob once; a second ingest downloads nothing', async (t) => {
  const { blobs } = await newStore(t);
  const data = randomBytes(10_000);
  const digest = sha256(data);
  const src = sourceOf(data);
  const first = await blobs.ingest(digest, data.length, src.fetchFrom, { what: 'test blob' });
  assert.deepEqual(first, { downloaded: true, transferred: data.length });
  assert.deepEqual(await readFile(blobs.path(digest)), data);
  const second = await blobs.ingest(digest, data.length, src.fetchFrom, { what: 'test blob' });
  assert.deepEqual(second, { downloaded: false, transferred: 0 });
  assert.deepEqual(src.calls, [0]);
});

test('bytes that do not match the digest are refused and leave nothing behind', async (t) => {
  const { root, blobs } = await newStore(t);
  const data = randomBytes(5000);
  const digest = sha256(Buffer.from('something else'));
  await assert.rejects(blobs.ingest(digest, data.length, sourceOf(data).fetchFrom, { what: 'layer X' }), (err: LazyrootError) => {
    assert.equal(err.code, 'DIGEST_MISMATCH');
    assert.match(err.message, /^layer X: digest mismatch \(want sha256:[0-9a-f]{64}, got sha256:[0-9a-f]{64}\)$/);
    return true;
  });
  assert.equal(await blobs.has(digest), false);
  assert.deepEqual(await tmpFiles(root), []);
});

test('a source sending more bytes than the descriptor says is stopped', async (t) => {
  const { root, blobs } = await newStore(t);
  const data = randomBytes(5000);
  await assert.rejects(blobs.ingest(sha256(data), 4000, sourceOf(data).fetchFrom, { what: 'layer Y' }), (err: LazyrootError) => {
    assert.equal(err.code, 'SIZE_MISMATCH');
    assert.match(err.message, /layer Y: more bytes than the 4000 its descriptor declares/);
    return true;
  });
  assert.deepEqual(await tmpFiles(root), []);
});

test('a source that keeps ending early fails as truncated after resuming', async (t) => {
  const { root, blobs } = await newStore(t);
  const data = randomBytes(5000);
  const short = data.subarray(0, 3000);
  const src = sourceOf(short);
  await assert.rejects(blobs.ingest(sha256(data), data.length, src.fetchFrom, { what: 'layer Z', resumeAttempts: 2 }), (err: LazyrootError) => {
    assert.equal(err.code, 'SIZE_MISMATCH');
    assert.match(err.message, /layer Z: truncated: the source sent 3000 of 5000 bytes/);
    return true;
  });
  assert.deepEqual(src.calls, [0, 3000, 3000]);
  assert.equal(await blobs.has(sha256(data)), false);
  assert.deepEqual(await tmpFiles(root), []);
});

test('a dropped connection resumes from the byte it stopped at', async (t) => {
  const { blobs } = await newStore(t);
  const data = randomBytes(20_000);
  const src = sourceOf(data, { failAfter: [7000, 6000] });
  const result = await blobs.ingest(sha256(data), data.length, src.fetchFrom, { what: 'blob' });
  // Each retry starts where the bytes on disk end: after the first failure
  // somewhere in (0, 7000], never from 0 again.
  assert.equal(src.calls.length, 3);
  assert.equal(src.calls[0], 0);
  assert.ok(src.calls[1]! > 0 && src.calls[1]! <= 7000, `second request from ${src.calls[1]}`);
  assert.ok(src.calls[2]! > src.calls[1]! && src.calls[2]! <= src.calls[1]! + 6000, `third request from ${src.calls[2]}`);
  assert.equal(result.transferred, data.length);
  assert.deepEqual(await readFile(blobs.path(sha256(data))), data);
});

test('a download interrupted for good is resumed by the next ingest, and the tap still sees every byte', async (t) => {
  const { root, blobs } = await newStore(t);
  const data = randomBytes(20_000);
  const digest = sha256(data);
  await assert.rejects(
    blobs.ingest(digest, data.length, sourceOf(data, { failAfter: [8000] }).fetchFrom, { what: 'blob', resumeAttempts: 0 }),
    /socket hang up/,
  );
  const partial = await tmpFiles(root);
  assert.equal(partial.length, 1, 'the partial download is kept');
  const kept = (await stat(join(root, 'tmp', partial[0]!))).size;
  assert.ok(kept > 0 && kept <= 8000);
  const src = sourceOf(data);
  const seen: Buffer[] = [];
  const result = await blobs.ingest(digest, data.length, src.fetchFrom, { what: 'blob', tap: (c) => void seen.push(Buffer.from(c)) });
  assert.deepEqual(src.calls, [kept]);
  assert.equal(result.transferred, data.length - kept);
  assert.deepEqual(Buffer.concat(seen), data);
  assert.deepEqual(await tmpFiles(root), []);
});

test('concurrent ingests of one blob fetch it once', async (t) => {
  const { blobs } = await newStore(t);
  const data = randomBytes(200_000);
  const src = sourceOf(data);
  const results = await Promise.all([1, 2, 3].map(() => blobs.ingest(sha256(data), data.length, src.fetchFrom, { what: 'blob' })));
  assert.equal(src.calls.length, 1);
  assert.equal(results.filter((r) => r.downloaded).length, 1);
});

test('put verifies small blobs', async (t) => {
  const { blobs } = await newStore(t);
  const bytes = Buffer.from('{"a":1}');
  await blobs.put(sha256(bytes), bytes, 'config');
  assert.deepEqual(await blobs.read(sha256(bytes)), bytes);
  await assert.rejects(blobs.put(sha256('x'), bytes, 'config of img'), /config of img: digest mismatch/);
});

test('a full disk while downloading names the blob and says the disk is full (a 1 MiB tmpfs store)', async (t) => {
  if (process.getuid?.() !== 0) {
    if (process.env.CI) throw new Error('CI: this test mounts a tmpfs and needs root');
    return t.skip('needs root to mount a tmpfs');
  }
  const root = await mkdtemp(join(tmpdir(), 'lazyroot-full-'));
  const { execFileSync } = await import('node:child_process');
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', root]);
  t.after(async () => {
    execFileSync('umount', [root]);
    await rm(root, { recursive: true, force: true });
  });
  const blobs = new BlobStore(new StorePaths(root));
  const data = randomBytes(3 << 20);
  await assert.rejects(blobs.ingest(sha256(data), data.length, sourceOf(data).fetchFrom, { what: 'image x: layer 1/2 sha256:abcd' }), (err: unknown) => {
    assert.equal((err as LazyrootError).code, 'RESOURCE_EXHAUSTED', String(err));
    assert.match((err as Error).message, /^image x: layer 1\/2 sha256:abcd: the store's disk is full \(ENOSPC writing /);
    return true;
  });
});

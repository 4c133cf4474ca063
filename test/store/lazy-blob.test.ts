import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Store } from '../../src/store/store.js';
import { LazyBlob } from '../../src/store/lazy-blob.js';
import { IntervalSet } from '../../src/store/interval-set.js';
import { sha256 } from '../../src/oci/digest.js';
import type { LazyrootError } from '../../src/errors.js';

test('IntervalSet merges, covers and reports gaps', () => {
  const set = new IntervalSet();
  set.add(10, 20);
  set.add(30, 40);
  set.add(20, 25); // touches: merges
  assert.deepEqual(set.ranges(), [[10, 25], [30, 40]]);
  assert.ok(set.covers(12, 25));
  assert.ok(!set.covers(24, 31));
  assert.deepEqual(set.missing(0, 50), [[0, 10], [25, 30], [40, 50]]);
  set.add(0, 100);
  assert.deepEqual(set.ranges(), [[0, 100]]);
  assert.equal(set.total, 100);
});

async function setup(t: { after: (fn: () => Promise<void>) => void }) {
  const root = await mkdtemp(join(tmpdir(), 'lazyroot-lazyblob-'));
  const store = await Store.open(root);
  t.after(async () => {
    store.close();
    await rm(root, { recursive: true, force: true });
  });
  const data = randomBytes(1 << 20);
  const calls: Array<[number, number]> = [];
  const fetcher = async (start: number, end: number) => {
    calls.push([start, end]);
    return Buffer.from(data.subarray(start, end));
  };
  return { root, store, data, calls, fetcher };
}

test('fetches a range once, keeps it only after confirm, and survives a restart', async (t) => {
  const { store, data, calls, fetcher } = await setup(t);
  const digest = sha256(data);
  const blob = await LazyBlob.open(store, digest, data.length, fetcher, { what: 'layer' });
  assert.ok((await blob.read(1000, 2000)).equals(data.subarray(1000, 2000)));
  await blob.read(1000, 2000); // not confirmed yet: fetched again
  assert.equal(calls.length, 2);
  blob.confirm(1000, 2000);
  await new Promise((r) => setTimeout(r, 20));
  assert.ok((await blob.read(1200, 1800)).equals(data.subarray(1200, 1800)));
  assert.equal(calls.length, 2, 'served from the partial blob');
  await blob.close();

  const again = await LazyBlob.open(store, digest, data.length, fetcher, { what: 'layer' });
  assert.ok((await again.read(1000, 2000)).equals(data.subarray(1000, 2000)));
  assert.equal(calls.length, 2, 'verified ranges persist across restarts');
  assert.equal(again.bytesPresent, 1000);
  await again.close();
});

/**
 * Range rows describe one partial file. Another process can promote that file
 * (rename it into blobs/) or remove it while rows still say what it held, and
 * a new sparse file at the same path holds zeros there: seen under load, a
 * second mount of an image's first layers served /bin/sh as zeros while the
 * first mount's prefetch promoted the same blob.
 */
test('regression: range rows whose partial file is gone vouch for nothing: the bytes are fetched, never zeros', async (t) => {
  const { store, data, calls, fetcher } = await setup(t);
  const digest = sha256(data);
  const first = await LazyBlob.open(store, digest, data.length, fetcher, { what: 'layer' });
  await first.read(0, 4096);
  first.confirm(0, 4096);
  await new Promise((r) => setTimeout(r, 20));
  await first.close(); // its rows say [0, 4096) is in the partial file
  assert.deepEqual(store.db.blobRanges(digest), [[0, 4096]]);
  // The file goes (another process promoted or removed it), the rows stay.
  await rm(store.paths.partialBlob(digest));
  const second = await LazyBlob.open(store, digest, data.length, fetcher, { what: 'layer' });
  assert.equal(second.bytesPresent, 0, 'nothing is present in a file made anew');
  assert.ok((await second.read(0, 4096)).equals(data.subarray(0, 4096)), 'the right bytes, not zeros');
  assert.equal(calls.length, 2, 'fetched again');
  await second.close();
});

test('regression: a blob another opener promoted is read from blobs/, whatever rows were written for its partial file', async (t) => {
  const { store, data, fetcher } = await setup(t);
  const digest = sha256(data);
  const whole = await LazyBlob.open(store, digest, data.length, fetcher, { what: 'layer' });
  await whole.read(0, data.length);
  whole.confirm(0, data.length);
  const began = Date.now();
  while (!whole.isComplete && Date.now() - began < 5000) await new Promise((r) => setTimeout(r, 20));
  assert.ok(whole.isComplete, 'promoted into blobs/');
  // Rows a slower process wrote for the partial file after the promotion.
  store.db.setBlobRanges(digest, [[0, data.length]]);
  const later = await LazyBlob.open(store, digest, data.length, async () => {
    throw new Error('nothing to fetch');
  }, { what: 'layer' });
  assert.ok(later.isComplete);
  assert.ok((await later.read(100_000, 200_000)).equals(data.subarray(100_000, 200_000)));
  await later.close();
  await whole.close();
});

test('concurrent reads of one range share a fetch', async (t) => {
  const { store, data, calls, fetcher } = await setup(t);
  const blob = await LazyBlob.open(store, sha256(data), data.length, fetcher, { what: 'layer' });
  await Promise.all([blob.read(0, 4096), blob.read(0, 4096), blob.read(0, 4096)]);
  assert.equal(calls.length, 1);
  await blob.close();
});

test('a fetch that never answers fails after the deadline, and later reads work', async (t) => {
  const { store, data } = await setup(t);
  let stall = true;
  const blob = await LazyBlob.open(
    store,
    sha256(data),
    data.length,
    async (s, e) => (stall ? new Promise<Buffer>(() => {}) : Buffer.from(data.subarray(s, e))),
    { what: 'layer X', deadlineMs: 150 },
  );
  const started = Date.now();
  await assert.rejects(blob.read(0, 10), (e: LazyrootError) => e.code === 'UNAVAILABLE' && /layer X: bytes 0-10: no answer within 150 ms/.test(e.message));
  assert.ok(Date.now() - started < 2000);
  stall = false;
  assert.ok((await blob.read(0, 10)).equals(data.subarray(0, 10)));
  await blob.close();
});

test('regression: a range the source left unanswered fails again within a short grace, not a second deadline; once the source answers it is read', async (t) => {
  const { store, data } = await setup(t);
  let stall = true;
  const blob = await LazyBlob.open(
    store,
    sha256(data),
    data.length,
    async (s, e) => (stall ? new Promise<Buffer>(() => {}) : Buffer.from(data.subarray(s, e))),
    { what: 'layer X', deadlineMs: 2000 },
  );
  await assert.rejects(blob.read(0, 10), /no answer within 2000 ms/);
  const started = Date.now();
  // The kernel's retry of the failed read: asks afresh, waits the grace (a quarter of the deadline), not the deadline.
  await assert.rejects(blob.read(0, 10), (e: LazyrootError) => e.code === 'UNAVAILABLE' && /no answer within 500 ms, after the source left them unanswered/.test(e.message));
  assert.ok(Date.now() - started < 1500, `failed again after ${Date.now() - started} ms`);
  stall = false;
  assert.ok((await blob.read(0, 10)).equals(data.subarray(0, 10)));
  await blob.close();
});

test('regression: a read-ahead request the source leaves unanswered fails the read at its deadline; the read does not wait a second one', async (t) => {
  const { store, data } = await setup(t);
  const blob = await LazyBlob.open(store, sha256(data), data.length, async () => new Promise<Buffer>(() => {}), { what: 'layer X', deadlineMs: 1000 });
  const units = [{ start: 0, end: 4096, verify: async () => undefined }, { start: 4096, end: data.length, verify: async () => undefined }];
  const started = Date.now();
  // As an eStargz layer reads: the region around the bytes, then the bytes themselves.
  await assert.rejects(
    (async () => {
      await blob.fetchRegion(units, 0, 10, 1 << 20);
      return blob.read(0, 4096);
    })(),
    /no answer within 1000 ms/,
  );
  const took = Date.now() - started;
  assert.ok(took < 1500, `failed after ${took} ms, deadline 1000 ms`);
  await blob.close();
});

test('once every byte is confirmed the blob is verified whole and moved into blobs/', async (t) => {
  const { store, data, fetcher } = await setup(t);
  const digest = sha256(data);
  const blob = await LazyBlob.open(store, digest, data.length, fetcher, { what: 'layer' });
  for (let s = 0; s < data.length; s += 256 * 1024) {
    const e = Math.min(data.length, s + 256 * 1024);
    await blob.read(s, e);
    blob.confirm(s, e);
  }
  for (let i = 0; i < 50 && !blob.isComplete; i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(blob.isComplete);
  assert.ok((await readFile(store.blobs.path(digest))).equals(data));
  assert.ok(!existsSync(store.paths.partialBlob(digest)));
  assert.deepEqual(store.db.blobRanges(digest), []);
  await blob.close();
});

test('regression: a range map that cannot be written (SQLITE_FULL) fails no read and kills nothing; it is written once it can be', async (t) => {
  const { store, data, fetcher } = await setup(t);
  const digest = sha256(data);
  const write = store.db.setBlobRanges.bind(store.db);
  let full = true;
  store.db.setBlobRanges = (d, ranges) => {
    if (full) throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    write(d, ranges);
  };
  const blob = await LazyBlob.open(store, digest, data.length, fetcher, { what: 'layer' });
  await blob.read(1000, 2000);
  blob.confirm(1000, 2000);
  await new Promise((r) => setTimeout(r, 300)); // the batched write has run, and failed
  assert.equal(blob.persistError, 'database or disk is full');
  assert.ok((await blob.read(1200, 1800)).equals(data.subarray(1200, 1800)), 'still served');
  full = false;
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(blob.persistError, undefined);
  assert.deepEqual(store.db.blobRanges(digest), [[1000, 2000]]);
  await blob.close();
});

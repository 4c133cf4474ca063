import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable, Transform } from 'node:stream';
import { Store } from '../../src/store/store.js';
import { LazyBlob, LazyBlobGroup, type PrefetchUnit, type RangeFetcher } from '../../src/store/lazy-blob.js';
import { sha256 } from '../../src/oci/digest.js';
import { DigestMismatchError } from '../../src/errors.js';

const MiB = 1 << 20;
const mediaType = 'application/vnd.oci.image.layer.v1.tar+gzip';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function openStore(t: { after: (fn: () => Promise<void>) => void }): Promise<Store> {
  const root = await mkdtemp(join(tmpdir(), 'lazyroot-prefetch-'));
  const store = await Store.open(root);
  t.after(async () => {
    store.close();
    await rm(root, { recursive: true, force: true });
  });
  return store;
}

interface Call {
  start: number;
  end: number;
  at: number;
}

/** A source over `data` that logs calls and how many are in flight at once. */
function source(data: Buffer, options: { delayMs?: number; corrupt?: (start: number, end: number, call: number) => boolean } = {}) {
  const calls: Call[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const fetcher: RangeFetcher = async (start, end) => {
    calls.push({ start, end, at: Date.now() });
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    try {
      if (options.delayMs) await sleep(options.delayMs);
      const out = Buffer.from(data.subarray(start, end));
      if (options.corrupt?.(start, end, calls.length)) out[0] = out[0]! ^ 0xff;
      return out;
    } finally {
      inFlight--;
    }
  };
  return { calls, fetcher, maxInFlight: () => maxInFlight };
}

/**
 * Units like a gzip index's: spans of `span` bytes verified by sha256, with
 * unverified gaps of `gap` bytes between them (like eStargz tar headers).
 */
function unitsOf(data: Buffer, span: number, gap = 0): PrefetchUnit[] {
  const units: PrefetchUnit[] = [];
  for (let at = 0; at < data.length; ) {
    const end = Math.min(data.length, at + span);
    const want = createHash('sha256').update(data.subarray(at, end)).digest('hex');
    const where = at;
    units.push({
      start: at,
      end,
      verify: async (bytes) => {
        const got = createHash('sha256').update(bytes).digest('hex');
        if (got !== want) throw new DigestMismatchError(`span at ${where}`, want, got);
      },
    });
    at = end;
    if (gap && at < data.length) {
      const gapEnd = Math.min(data.length, at + gap);
      units.push({ start: at, end: gapEnd });
      at = gapEnd;
    }
  }
  return units;
}

test('prefetch completes a blob with one request at a time, verifies it whole, promotes it and records it in the store', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(3 * MiB + 123);
  const digest = sha256(data);
  const src = source(data, { delayMs: 2 });
  const group = new LazyBlobGroup({ quietMs: 0 });
  const blob = await LazyBlob.open(store, digest, data.length, src.fetcher, { what: 'layer', mediaType, group });
  const units = unitsOf(data, 256 * 1024, 100);
  await blob.prefetch(units, { signal: new AbortController().signal, windowBytes: MiB });
  assert.equal(blob.isComplete, true);
  assert.equal(blob.prefetchState, 'done');
  assert.equal(src.maxInFlight(), 1, 'never more than one prefetch request in flight');
  assert.ok(src.calls.every((c) => c.end - c.start <= MiB), 'windows stay within windowBytes');
  assert.equal(src.calls.reduce((n, c) => n + c.end - c.start, 0), data.length, 'each byte fetched once');
  assert.equal(blob.stats.bytesPrefetched, data.length);
  assert.equal(blob.stats.bytesFetched, 0, 'demand counters untouched');
  assert.ok((await readFile(store.blobs.path(digest))).equals(data), 'promoted to blobs/, whole and right');
  assert.equal(existsSync(store.paths.partialBlob(digest)), false);
  assert.deepEqual(store.db.blobRanges(digest), []);
  assert.deepEqual(
    store.db.knownBlobs().filter((b) => b.digest === digest),
    [{ digest, size: data.length }],
    'the blobs row GC and the overlay path rely on',
  );
  assert.ok((await blob.read(5, 500)).equals(data.subarray(5, 500)));
  await blob.close();
});

test('prefetch skips what demand reads already kept, and resumes after a restart', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(2 * MiB);
  const digest = sha256(data);
  const src = source(data);
  const units = unitsOf(data, 128 * 1024);
  const first = await LazyBlob.open(store, digest, data.length, src.fetcher, { what: 'layer' });
  await first.read(0, 128 * 1024);
  first.confirm(0, 128 * 1024);
  await sleep(20);
  await first.close();
  const calls = src.calls.length;
  const again = await LazyBlob.open(store, digest, data.length, src.fetcher, { what: 'layer', group: new LazyBlobGroup({ quietMs: 0 }) });
  await again.prefetch(units, { signal: new AbortController().signal });
  assert.ok(src.calls.slice(calls).every((c) => c.start >= 128 * 1024), 'the kept span is not fetched again');
  assert.ok((await readFile(store.blobs.path(digest))).equals(data));
  await again.close();
});

test('demand reads go first: no prefetch request starts while a read waits for the network', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(4 * MiB);
  const digest = sha256(data);
  let releaseDemand!: () => void;
  const demandGate = new Promise<void>((r) => (releaseDemand = r));
  const demandStart = 3 * MiB + 7;
  const calls: Call[] = [];
  const fetcher: RangeFetcher = async (start, end) => {
    calls.push({ start, end, at: Date.now() });
    if (start === demandStart) await demandGate;
    else await sleep(15);
    return Buffer.from(data.subarray(start, end));
  };
  const group = new LazyBlobGroup({ quietMs: 30, starveMs: 10_000 });
  const blob = await LazyBlob.open(store, digest, data.length, fetcher, { what: 'layer', group });
  const done = blob.prefetch(unitsOf(data, 64 * 1024), { signal: new AbortController().signal, windowBytes: 64 * 1024 });
  while (calls.length < 3) await sleep(5);
  const demand = blob.read(demandStart, demandStart + 1000);
  await sleep(5);
  const startedBefore = calls.length;
  await sleep(300);
  assert.equal(group.waitingReads, 1);
  assert.ok(calls.length <= startedBefore + 1, `prefetch kept going while a read waited (${calls.length - startedBefore} new requests)`);
  assert.equal(blob.prefetchState, 'waiting');
  releaseDemand();
  const released = Date.now();
  assert.ok((await demand).equals(data.subarray(demandStart, demandStart + 1000)));
  await done; // the demand read's range is never confirmed here: prefetch fetches its unit once the claim lapses
  const next = calls.find((c) => c.at >= released && c.start !== demandStart);
  assert.ok(next && next.at - released >= 25, 'prefetch waited for the quiet period after the read');
  assert.ok(blob.isComplete);
  await blob.close();
});

test('under sustained demand reads prefetch still makes progress, one request at a time', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(2 * MiB);
  const digest = sha256(data);
  const src = source(data, { delayMs: 10 });
  const group = new LazyBlobGroup({ quietMs: 30, starveMs: 50 });
  const blob = await LazyBlob.open(store, digest, data.length, src.fetcher, { what: 'layer', group });
  const abort = new AbortController();
  const done = blob.prefetch(unitsOf(data, 64 * 1024), { signal: abort.signal, windowBytes: 64 * 1024 });
  // Readers that never let up: some demand read is always waiting.
  let reading = true;
  const readers = [0, 1, 2].map(async (k) => {
    for (let i = 0; reading; i++) {
      const at = ((k * 7919 + i * 104729) % (data.length - 100)) | 0;
      await blob.read(at, at + 100);
      await sleep(1);
    }
  });
  await sleep(1200);
  const prefetched = blob.stats.bytesPrefetched;
  reading = false;
  await Promise.all(readers);
  abort.abort();
  await done.catch(() => undefined);
  assert.ok(prefetched >= 4 * 64 * 1024, `prefetch fetched ${prefetched} bytes while reads never stopped`);
  await blob.close();
});

test('fetchRegion: reads that walk the blob in order bring their neighbours along; scattered reads fetch only what they need; a bad neighbour is not kept', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(4 * MiB);
  const digest = sha256(data);
  const unitBytes = 16 * 1024;
  const corruptAt = 40 * unitBytes; // one unit the source always corrupts
  const src = source(data);
  const fetcher: RangeFetcher = async (start, end, signal, onWhole) => {
    const bytes = await src.fetcher(start, end, signal, onWhole);
    // Byte corruptAt comes back wrong inside a larger region; alone, it is right (the read's own fetch).
    if (start < corruptAt && corruptAt < end) bytes[corruptAt - start] ^= 0xff;
    return bytes;
  };
  const units = unitsOf(data, unitBytes);
  const blob = await LazyBlob.open(store, digest, data.length, fetcher, { what: 'layer' });
  // 64 units read in blob order, each as its own read.
  for (let i = 0; i < 64; i++) {
    const at = i * unitBytes;
    await blob.fetchRegion(units, at, at + unitBytes, 1 * MiB);
    const bytes = await blob.readVerified(at, at + unitBytes);
    assert.ok(bytes?.equals(data.subarray(at, at + unitBytes)), `unit ${i}`);
  }
  const sequential = src.calls.length;
  assert.ok(sequential <= 16, `64 reads in blob order made ${sequential} requests`);
  // The region that brought unit 40 corrupted did not keep it: its own read fetched it again.
  assert.ok(src.calls.some((c) => c.start === corruptAt), 'unit 40 was fetched on its own after its region brought it corrupted');

  // Scattered reads: each fetches its own unit and no more.
  const before = src.calls.length;
  for (const i of [200, 140, 230, 170, 250]) await blob.fetchRegion(units, i * unitBytes + 5, i * unitBytes + 50, 1 * MiB);
  const scattered = src.calls.slice(before);
  assert.equal(scattered.length, 5);
  for (const c of scattered) assert.equal(c.end - c.start, unitBytes);
  await blob.close();
});

test('fetchRegion: many scattered reads at once (a parallel tree walk) each bring their region; fetchAhead joins wanted units into few parallel requests', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(8 * MiB);
  const digest = sha256(data);
  const unitBytes = 16 * 1024;
  const units = unitsOf(data, unitBytes);
  const src = source(data, { delayMs: 20 });
  const blob = await LazyBlob.open(store, digest, data.length, src.fetcher, { what: 'layer' });
  // 16 readers at once, each at its own place, none continuing another: each fetches a whole region.
  const starts = Array.from({ length: 16 }, (_, k) => (k * 29 + 3) * unitBytes);
  await Promise.all(starts.map((at) => blob.fetchRegion(units, at + 5, at + 50, 256 * 1024)));
  const busy = src.calls.slice(); // the first few started before the others: those fetched only their unit
  assert.ok(busy.filter((c) => c.end - c.start > unitBytes).length >= 8, `regions: ${busy.map((c) => c.end - c.start).join(' ')}`);
  assert.ok(busy.every((c) => c.end - c.start <= 256 * 1024));

  // fetchAhead (past everything fetched above): wanted ranges 40 KiB apart share a request (gap ≤ 64 KiB); far ones get their own, all in parallel.
  const before = src.calls.length;
  const wanted: Array<[number, number]> = [
    [7.5 * MiB, 7.5 * MiB + 100],
    [7.5 * MiB + 40 * 1024, 7.5 * MiB + 41 * 1024],
    [7 * MiB + 900 * 1024, 7 * MiB + 901 * 1024],
  ];
  await blob.fetchAhead(units, wanted, { gapBytes: 64 * 1024 });
  const ahead = src.calls.slice(before);
  assert.equal(ahead.length, 2, JSON.stringify(ahead));
  for (const [s0, e] of wanted) assert.ok((await blob.readVerified(s0, e))?.equals(data.subarray(s0, e)), `${s0} kept`);
  assert.equal(blob.stats.prefetchRequests, 2);
  await blob.close();
});

test('fetchRegion: a read across requests under way waits for them and asks only for what none brings; then read() asks nothing', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(MiB);
  const digest = sha256(data);
  const unitBytes = 16 * 1024;
  const units = unitsOf(data, unitBytes);
  const src = source(data, { delayMs: 30 });
  const blob = await LazyBlob.open(store, digest, data.length, src.fetcher, { what: 'layer' });
  // Two readers of units 4 and 6 (no read-ahead), then, while both requests are under way, a read of units 4–7.
  const first = blob.fetchRegion(units, 4 * unitBytes, 5 * unitBytes, 0);
  const second = blob.fetchRegion(units, 6 * unitBytes, 7 * unitBytes, 0);
  await sleep(5);
  await blob.fetchRegion(units, 4 * unitBytes + 100, 8 * unitBytes - 100, 0);
  const bytes = await blob.read(4 * unitBytes, 8 * unitBytes);
  await Promise.all([first, second]);
  assert.ok(bytes.equals(data.subarray(4 * unitBytes, 8 * unitBytes)));
  const asked = src.calls.map((c) => [c.start / unitBytes, c.end / unitBytes]);
  // Units 5 and 7, which no request brought, are asked for once each; 4 and 6 are never asked again.
  assert.deepEqual(
    asked.sort((a, b) => a[0]! - b[0]!),
    [
      [4, 5],
      [5, 6],
      [6, 7],
      [7, 8],
    ],
  );
  assert.equal(blob.stats.bytesFetched, 4 * unitBytes, 'no byte fetched twice');
  await blob.close();
});

test('a span that fails verification is not kept; prefetch retries it and the blob is right', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(MiB);
  const digest = sha256(data);
  const src = source(data, { corrupt: (_s, _e, call) => call === 2 });
  const blob = await LazyBlob.open(store, digest, data.length, src.fetcher, { what: 'layer', group: new LazyBlobGroup({ quietMs: 0 }) });
  await blob.prefetch(unitsOf(data, 128 * 1024), { signal: new AbortController().signal, windowBytes: 128 * 1024, retryDelayMs: 10 });
  assert.equal(blob.stats.prefetchFailures, 1);
  assert.ok((await readFile(store.blobs.path(digest))).equals(data));
  await blob.close();
});

test('unverified bytes that were wrong fail the whole-blob check, are dropped and fetched again', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(MiB);
  const digest = sha256(data);
  // Corrupt the first answer covering the gap unit at 128 KiB (a window that starts there or spans it).
  let corrupted = false;
  const src = source(data, {
    corrupt: (s, e) => {
      if (corrupted || !(s === 128 * 1024 && e >= 128 * 1024 + 512)) return false;
      corrupted = true;
      return true;
    },
  });
  const units = unitsOf(data, 128 * 1024, 512);
  const blob = await LazyBlob.open(store, digest, data.length, src.fetcher, { what: 'layer', group: new LazyBlobGroup({ quietMs: 0 }) });
  // One unit per request: the gap at 128 KiB is its own window.
  await blob.prefetch(units, { signal: new AbortController().signal, windowBytes: 1, retryDelayMs: 10 });
  assert.ok(corrupted);
  assert.equal(blob.stats.prefetchFailures, 1, 'the assembled blob did not match once');
  assert.ok((await readFile(store.blobs.path(digest))).equals(data));
  await blob.close();
});

test('a source that answers a ranged request with the whole blob: that answer is kept whole, read once, and every read is served from it', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(2 * MiB);
  const digest = sha256(data);
  let ranged = 0;
  const streams: number[] = [];
  const blob = await LazyBlob.open(
    store,
    digest,
    data.length,
    async (s, e, _signal, onWhole) => {
      ranged++;
      // The whole blob (a pull-through cache on a miss): handed over, the range taken from it as it passes.
      const whole = new PassThrough();
      onWhole(whole);
      whole.end(data);
      await new Promise((r) => setTimeout(r, 5));
      return Buffer.from(data.subarray(s, e));
    },
    {
      what: 'layer',
      mediaType,
      openStream: async (offset) => {
        streams.push(offset);
        return Readable.from([data.subarray(offset, offset + MiB), data.subarray(offset + MiB)]);
      },
    },
  );
  assert.ok((await blob.read(10, 20)).equals(data.subarray(10, 20)));
  const reads = await Promise.all([blob.read(MiB, MiB + 4096), blob.read(0, 100), blob.read(2 * MiB - 50, 2 * MiB)]);
  assert.ok(reads[0]!.equals(data.subarray(MiB, MiB + 4096)));
  assert.ok(reads[1]!.equals(data.subarray(0, 100)));
  assert.ok(reads[2]!.equals(data.subarray(2 * MiB - 50)));
  for (let i = 0; i < 10; i++) await blob.read(i * 1000, i * 1000 + 10);
  assert.equal(ranged, 1, 'one ranged request, answered with the whole blob');
  assert.deepEqual(streams, [], 'not asked for again');
  assert.equal(blob.isComplete, true);
  assert.equal(blob.completedBy, 'streamed');
  assert.equal(blob.stats.bytesStreamed, data.length);
  assert.ok((await readFile(store.blobs.path(digest))).equals(data));
  assert.equal(store.db.knownBlobs().filter((b) => b.digest === digest).length, 1);
  await blob.close();
});

test('a whole-blob answer after ranged ones (a pull-through cache still fetching the blob) is not kept: its range is taken and the rest dropped, until such answers cost a blob\'s size', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(2 * MiB);
  const digest = sha256(data);
  let answerWhole = false;
  /** How far into each whole answer its reader got before dropping it. */
  const wholeRead: number[] = [];
  const blob = await LazyBlob.open(
    store,
    digest,
    data.length,
    async (s, e, _signal, onWhole) => {
      if (!answerWhole) return Buffer.from(data.subarray(s, e));
      // Streamed in 64 KiB chunks as a socket would; the range is taken as the answer passes to its reader (as RegistrySource does).
      let sent = 0;
      const socket = new Readable({
        read() {
          setImmediate(() => {
            if (sent >= data.length) return void this.push(null);
            this.push(data.subarray(sent, sent + 64 * 1024));
            sent += 64 * 1024;
          });
        },
      });
      let settle!: { resolve: (b: Buffer) => void; reject: (e: Error) => void };
      const taken = new Promise<Buffer>((resolve, reject) => (settle = { resolve, reject }));
      const chunks: Buffer[] = [];
      let at = 0;
      const passing = new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          chunks.push(chunk);
          at += chunk.length;
          if (at >= e) settle.resolve(Buffer.concat(chunks).subarray(s, e));
          callback(null, chunk);
        },
      });
      passing.on('close', () => {
        wholeRead.push(sent);
        socket.destroy();
        settle.reject(new Error('dropped before the range'));
      });
      socket.pipe(passing);
      onWhole(passing);
      return taken;
    },
    { what: 'layer', mediaType, openStream: async () => assert.fail('the blob is never asked for whole') },
  );
  // A ranged answer first, kept.
  assert.ok((await blob.readUnverified(0, 4096)).equals(data.subarray(0, 4096)));
  answerWhole = true;
  // Whole answers now: each gives its range, the blob is not downloaded again.
  for (const [s, e] of [[MiB, MiB + 100], [100_000, 100_100]] as const) assert.ok((await blob.read(s, e)).equals(data.subarray(s, e)));
  assert.equal(blob.stats.bytesStreamed, 0);
  assert.equal(blob.stats.bytesFetched, 4096 + 200);
  assert.equal(blob.isComplete, false);
  assert.ok(wholeRead.every((n) => n < data.length), `the rest of each answer was dropped: ${wholeRead.join(', ')}`);
  // Answers not kept have cost a blob's size by now: the source no longer does Range for it, and the next is kept.
  assert.ok((await blob.read(2 * MiB - 10, 2 * MiB)).equals(data.subarray(2 * MiB - 10)));
  await blob.read(5, 10);
  assert.equal(blob.isComplete, true);
  assert.equal(blob.completedBy, 'streamed');
  assert.equal(blob.stats.bytesStreamed, data.length);
  await blob.close();
});

test('a blob completed while its group is being read is checked and promoted only once the reads pause; its bytes are served meanwhile', async (t) => {
  const store = await openStore(t);
  const group = new LazyBlobGroup({ pauseMs: 150 });
  const data = randomBytes(MiB);
  const src = source(data);
  let checks = 0;
  const blob = await LazyBlob.open(store, sha256(data), data.length, src.fetcher, { what: 'layer', group });
  blob.checkWholeWith(async () => void checks++);
  const half = data.length / 2;
  for (const [s, e] of [[0, half], [half, data.length]] as const) {
    assert.ok((await blob.read(s, e)).equals(data.subarray(s, e)));
    blob.confirm(s, e);
  }
  // Reads go on (hits, every 30 ms): every byte is kept, but the whole hash and check wait.
  for (let i = 0; i < 15; i++) {
    await sleep(30);
    assert.ok((await blob.read(i * 1000, i * 1000 + 10)).equals(data.subarray(i * 1000, i * 1000 + 10)));
  }
  assert.equal(blob.isComplete, false, 'not promoted while reads go on');
  assert.equal(checks, 0);
  // The reads stop: promoted after the pause.
  for (let i = 0; i < 100 && !blob.isComplete; i++) await sleep(20);
  assert.equal(blob.isComplete, true);
  assert.equal(checks, 1);
  assert.ok((await readFile(store.blobs.path(sha256(data)))).equals(data));
  await blob.close();
});

test('cache bound: least recently used ranges are evicted, evicted ranges are fetched again, complete blobs are never touched', async (t) => {
  const store = await openStore(t);
  const group = new LazyBlobGroup({ cacheMaxBytes: 2 * MiB });
  // A complete blob in the same group: not counted, never evicted.
  const whole = randomBytes(3 * MiB);
  await store.blobs.put(sha256(whole), whole, 'whole');
  const complete = await LazyBlob.open(store, sha256(whole), whole.length, async () => assert.fail('no fetch'), { what: 'whole', group });
  assert.equal(complete.isComplete, true);

  const data = randomBytes(8 * MiB);
  const digest = sha256(data);
  const src = source(data);
  const blob = await LazyBlob.open(store, digest, data.length, src.fetcher, { what: 'layer', group });
  const block = async (i: number) => {
    const bytes = await blob.read(i * MiB, (i + 1) * MiB);
    assert.ok(bytes.equals(data.subarray(i * MiB, (i + 1) * MiB)));
    blob.confirm(i * MiB, (i + 1) * MiB);
    await sleep(10);
    assert.ok(group.partialBytes <= 2 * MiB, `kept ${group.partialBytes} bytes`);
  };
  for (let i = 0; i < 8; i++) await block(i);
  assert.equal(blob.bytesPresent, 2 * MiB);
  assert.equal(blob.stats.evictedBytes, 6 * MiB);
  // Blocks 6 and 7 are kept; reading 6 makes 7 the least recently used.
  const before = src.calls.length;
  await blob.read(6 * MiB, 6 * MiB + 10);
  assert.equal(src.calls.length, before, 'block 6 served from disk');
  await block(0);
  assert.equal(src.calls.length, before + 1, 'evicted block 0 fetched again');
  await blob.read(6 * MiB + 100, 6 * MiB + 200);
  assert.equal(src.calls.length, before + 1, 'block 6 (recently used) kept');
  assert.ok((await blob.read(7 * MiB, 7 * MiB + 10)).equals(data.subarray(7 * MiB, 7 * MiB + 10)));
  assert.equal(src.calls.length, before + 2, 'block 7 (least recently used) was evicted');
  assert.ok((await complete.read(0, 3 * MiB)).equals(whole), 'the complete blob is intact');
  await blob.close();
  const persisted = store.db.blobRanges(digest).reduce((n, [s, e]) => n + e - s, 0);
  assert.ok(persisted <= 2 * MiB, 'evictions are persisted');

  // A restart with a lower bound trims what the last run kept.
  const small = new LazyBlobGroup({ cacheMaxBytes: MiB });
  const reopened = await LazyBlob.open(store, digest, data.length, src.fetcher, { what: 'layer', group: small });
  small.enforceBound();
  assert.ok(small.partialBytes <= MiB);
  await reopened.close();
  await complete.close();
});

test('prefetch stays under the cache bound: it waits instead of evicting', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(6 * MiB);
  const src = source(data);
  const group = new LazyBlobGroup({ cacheMaxBytes: 2 * MiB, quietMs: 0 });
  const blob = await LazyBlob.open(store, sha256(data), data.length, src.fetcher, { what: 'layer', group });
  const stop = new AbortController();
  const run = blob.prefetch(unitsOf(data, 256 * 1024), { signal: stop.signal, windowBytes: 512 * 1024 });
  for (let i = 0; i < 300 && !(blob.prefetchState === 'waiting' && group.partialBytes >= 1.5 * MiB); i++) await sleep(10);
  await sleep(100);
  assert.equal(blob.prefetchState, 'waiting');
  assert.ok(group.partialBytes <= 2 * MiB && group.partialBytes >= 1.5 * MiB, `kept ${group.partialBytes}`);
  assert.equal(blob.stats.evictedBytes, 0);
  stop.abort();
  await assert.rejects(run);
  assert.equal(blob.prefetchState, 'stopped');
  // Demand reads still work, and evict as needed.
  assert.ok((await blob.read(5 * MiB, 5 * MiB + 100)).equals(data.subarray(5 * MiB, 5 * MiB + 100)));
  await blob.close();
});

test('regression: prefetch never fetches what demand reads kept while it waited for its turn', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(MiB);
  const src = source(data);
  const group = new LazyBlobGroup({ quietMs: 0 });
  group.holdPrefetch(300);
  const blob = await LazyBlob.open(store, sha256(data), data.length, src.fetcher, { what: 'layer', group });
  const units = unitsOf(data, 256 * 1024);
  const done = blob.prefetch(units, { signal: new AbortController().signal });
  for (const u of units) {
    await blob.read(u.start, u.end);
    blob.confirm(u.start, u.end);
  }
  await done;
  assert.equal(blob.isComplete, true);
  assert.equal(src.calls.length, units.length, 'only the demand reads fetched');
  assert.equal(blob.stats.bytesPrefetched, 0);
  await blob.close();
});

test('a demand read inside the prefetch request in flight waits for it instead of fetching the bytes again', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(MiB);
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const calls: Call[] = [];
  const blob = await LazyBlob.open(
    store,
    sha256(data),
    data.length,
    async (s, e) => {
      calls.push({ start: s, end: e, at: Date.now() });
      await gate;
      return Buffer.from(data.subarray(s, e));
    },
    { what: 'layer', group: new LazyBlobGroup({ quietMs: 0 }) },
  );
  const done = blob.prefetch(unitsOf(data, 256 * 1024), { signal: new AbortController().signal, windowBytes: MiB });
  while (calls.length === 0) await sleep(5);
  const read = blob.read(300_000, 300_100);
  await sleep(20);
  open();
  assert.ok((await read).equals(data.subarray(300_000, 300_100)));
  await done;
  assert.equal(calls.length, 1, 'one request: the prefetch window');
  assert.equal(blob.stats.requests, 0);
  await blob.close();
});

test('a read waiting on a request it did not make (a profile\'s, say) that the source leaves hanging asks for itself after a third of its time, and gets its bytes within its deadline', async (t) => {
  const store = await openStore(t);
  const data = randomBytes(MiB);
  const digest = sha256(data);
  const units = unitsOf(data, 64 * 1024);
  let calls = 0;
  // The first request (the fetch-ahead's) never answers, as one sent just before a stalled source recovered.
  const fetcher: RangeFetcher = async (start, end) => (calls++ === 0 ? new Promise<Buffer>(() => {}) : Buffer.from(data.subarray(start, end)));
  const blob = await LazyBlob.open(store, digest, data.length, fetcher, { what: 'layer', deadlineMs: 1500 });
  void blob.fetchAhead(units, [[0, 100]], {}).catch(() => undefined);
  await sleep(20);
  const began = Date.now();
  await blob.fetchRegion(units, 10, 200, 0);
  const bytes = await blob.read(0, 64 * 1024);
  const took = Date.now() - began;
  assert.ok(bytes.equals(data.subarray(0, 64 * 1024)));
  assert.ok(took >= 400 && took < 1500, `read after ${took} ms: it waited a third of its 1500 ms on the hanging request, then asked itself`);
  assert.equal(calls, 2, 'one request of its own');
  await blob.close();
});

test('the units of a big fetched range are checked in two calls at once (two of libuv\'s threads), a small range\'s in one; a unit failing its check is not kept, the others are', async (t) => {
  const store = await openStore(t);
  const unitBytes = 200 * 1024;
  const data = randomBytes(4 * unitBytes + 4 * 16 * 1024);
  const digest = sha256(data);
  const src = source(data);
  const batches: Array<Array<[number, number]>> = [];
  let running = 0;
  let together = 0;
  const badAt = 3 * unitBytes;
  // Checks like eStargz members': many units of one fetched buffer in one call.
  const checkMany: PrefetchUnit['checkMany'] = async (batch, bytes, from) => {
    batches.push(batch.map((u) => [u.start, u.end]));
    running++;
    together = Math.max(together, running);
    await sleep(20);
    running--;
    return batch.map((u) => (u.start === badAt || !bytes.subarray(u.start - from, u.end - from).equals(data.subarray(u.start, u.end)) ? new Error(`unit at ${u.start}`) : undefined));
  };
  const unit = (start: number, end: number): PrefetchUnit => ({ start, end, checkMany, verify: async () => undefined });
  const big = [0, 1, 2, 3].map((i) => unit(i * unitBytes, (i + 1) * unitBytes));
  const small = [0, 1, 2, 3].map((i) => unit(4 * unitBytes + i * 16 * 1024, 4 * unitBytes + (i + 1) * 16 * 1024));
  const units = [...big, ...small];
  const blob = await LazyBlob.open(store, digest, data.length, src.fetcher, { what: 'layer' });

  await blob.fetchAhead(units, [[0, 4 * unitBytes]], { windowBytes: 4 * unitBytes, gapBytes: 0 });
  assert.deepEqual(batches, [
    [[0, unitBytes], [unitBytes, 2 * unitBytes]],
    [[2 * unitBytes, 3 * unitBytes], [3 * unitBytes, 4 * unitBytes]],
  ]);
  assert.equal(together, 2, 'the two halves were checked at once');
  for (const u of big) assert.equal((await blob.readVerified(u.start, u.end))?.equals(data.subarray(u.start, u.end)) === true, u.start !== badAt, `unit at ${u.start} kept`);

  batches.length = 0;
  await blob.fetchAhead(units, [[4 * unitBytes, data.length]], { windowBytes: data.length, gapBytes: 0 });
  assert.deepEqual(batches, [small.map((u) => [u.start, u.end])], 'a small range: one call');
  await blob.close();
});

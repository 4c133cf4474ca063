import { test } from 'node:test';
import assert from 'node:assert/strict';
import { nextWindow, regionAround, SequentialReads, windowsFor, type PrefetchUnit } from '../../src/store/fetch-windows.js';

/** Units of 100 bytes each, back to back: [0,100), [100,200), … */
const units: PrefetchUnit[] = Array.from({ length: 10 }, (_, i) => ({ start: i * 100, end: i * 100 + 100 }));
const spans = (w: { units: PrefetchUnit[] } | undefined) => w?.units.map((u) => [u.start, u.end]);
const none = () => false;

test('regionAround: the units a read needs, then neighbours up to the region size; taken units end it', () => {
  // A read inside unit 2 with no read-ahead: unit 2 alone.
  assert.deepEqual(spans(regionAround(units, 250, 260, 0, none)), [[200, 300]]);
  // With a region of 300 bytes: units 2, 3, 4.
  assert.deepEqual(spans(regionAround(units, 250, 260, 300, none)), [
    [200, 300],
    [300, 400],
    [400, 500],
  ]);
  // Unit 4 taken: the region stops before it; a read across taken units starts at the first one not taken.
  const taken = (u: PrefetchUnit) => u.start === 400 || u.start === 200;
  assert.deepEqual(spans(regionAround(units, 250, 260, 300, taken)), undefined, 'all it needs is taken');
  assert.deepEqual(spans(regionAround(units, 250, 350, 300, taken)), [[300, 400]]);
  // A read needing units 1–5 while 3 is taken (a request under way brings it): the stretch before it
  // alone, then, asked from there, the one after it; never unit 3 again.
  const middle = (u: PrefetchUnit) => u.start === 300;
  assert.deepEqual(spans(regionAround(units, 150, 550, 0, middle)), [
    [100, 200],
    [200, 300],
  ]);
  assert.deepEqual(spans(regionAround(units, 300, 550, 0, middle)), [
    [400, 500],
    [500, 600],
  ]);
});

test('regionAround: gzip spans, each sharing its first byte with the span before, join into one region', () => {
  // Span k starts at the byte holding its checkpoint's bits: one before where span k - 1 ends.
  const gzipSpans: PrefetchUnit[] = Array.from({ length: 6 }, (_, i) => ({ start: i === 0 ? 0 : i * 100 - 1, end: i * 100 + 100 }));
  const w = regionAround(gzipSpans, 150, 160, 400, none);
  assert.deepEqual(spans(w), [
    [99, 200],
    [199, 300],
    [299, 400],
  ]);
  assert.deepEqual([w!.start, w!.end], [99, 400]);
});

test('windowsFor: wanted units joined across small gaps, held ones left out, each request ranked by its soonest range', () => {
  const windows = windowsFor(
    units,
    [
      [0, 50],
      [120, 130],
      [700, 710],
      [900, 1000],
    ],
    100, // a gap of one unit is bridged
    250,
    [30, 10, 0, 20],
    (u) => u.start === 900,
  );
  assert.deepEqual(
    windows.map((w) => [w.start, w.end, w.rank]),
    [
      [0, 200, 10],
      [700, 800, 0],
    ],
  );
  // Without ranks: in blob order (each request ranked by its first range's index).
  assert.deepEqual(
    windowsFor(units, [[0, 50], [700, 710]], 0, 1000, undefined, none).map((w) => w.rank),
    [0, 1],
  );
});

test('nextWindow: the first unit not taken from a cursor, with adjacent missing ones up to the window', () => {
  const taken = (u: PrefetchUnit) => u.start < 300 || u.start === 600;
  assert.deepEqual(spans(nextWindow(units, 1000, 0, taken)), [
    [300, 400],
    [400, 500],
    [500, 600],
  ]);
  assert.deepEqual(spans(nextWindow(units, 150, 0, taken)), [[300, 400]]);
  assert.equal(nextWindow(units, 1000, 0, () => true), undefined);
});

test('SequentialReads: a read continuing where the last ended doubles its window, from 64 KiB up to the maximum; others get none', () => {
  const reads = new SequentialReads();
  const first = reads.next(0, 1 << 20);
  assert.equal(first.window, 0);
  first.fetched(4096);
  const second = reads.next(4096, 1 << 20);
  assert.equal(second.window, 64 << 10);
  second.fetched(200_000);
  assert.equal(reads.next(200_000, 1 << 20).window, 128 << 10);
  assert.equal(reads.next(5_000_000, 1 << 20).window, 0, 'elsewhere: a new stream');
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FetchQueue } from '../../src/store/fetch-queue.js';

const tick = () => new Promise((r) => setImmediate(r));

/** Enters `ranks` in order; returns the order they were let out and their tickets. */
function enterAll(queue: FetchQueue, ranks: number[], signal?: AbortSignal) {
  const out: number[] = [];
  const tickets = ranks.map((rank, i) => {
    const t = queue.enter(rank, signal);
    t.admitted.then(
      () => out.push(i),
      () => undefined,
    );
    return t;
  });
  return { out, tickets };
}

test('fetch queue: nothing goes out before start, then the lowest ranks first, at most `limit` at once', async () => {
  const queue = new FetchQueue(2);
  const { out, tickets } = enterAll(queue, [30, 10, 20, 0, 10]);
  await tick();
  assert.deepEqual(out, [], 'held until start()');
  queue.start();
  await tick();
  assert.deepEqual(out, [3, 1], 'rank 0, then the first of the two rank 10s');
  tickets[3]!.done();
  await tick();
  assert.deepEqual(out, [3, 1, 4], 'the other rank 10 (ties in the order entered)');
  tickets[1]!.done();
  tickets[4]!.done();
  await tick();
  assert.deepEqual(out, [3, 1, 4, 2, 0]);
  tickets[4]!.done(); // twice: no effect on the count
  tickets[2]!.done();
  tickets[0]!.done();
  const late = queue.enter(99);
  await late.admitted; // nothing under way: out at once
});

test('fetch queue: hurry puts a waiting request first; setLimit widens at once', async () => {
  const queue = new FetchQueue(1);
  const { out, tickets } = enterAll(queue, [1, 2, 3, 4]);
  queue.start();
  await tick();
  assert.deepEqual(out, [0]);
  tickets[3]!.hurry(); // a read waits for its bytes
  tickets[0]!.hurry(); // already out: nothing to do
  tickets[0]!.done();
  await tick();
  assert.deepEqual(out, [0, 3]);
  queue.setLimit(3);
  await tick();
  assert.deepEqual(out, [0, 3, 1, 2]);
});

test('fetch queue: an aborted request leaves the queue (admitted rejects with the reason); done before going out frees no place', async () => {
  const queue = new FetchQueue(1);
  const stop = new AbortController();
  const first = queue.enter(0);
  const aborted = enterAll(queue, [1, 2], stop.signal);
  const last = queue.enter(3);
  const lastOut: string[] = [];
  last.admitted.then(() => lastOut.push('out'));
  queue.start();
  await first.admitted;
  stop.abort(new Error('mount closing'));
  for (const t of aborted.tickets) await assert.rejects(t.admitted, /mount closing/);
  // A request dropped before it went out: the place under way stays the first one's.
  last.done();
  await tick();
  assert.deepEqual(lastOut, []);
  const next = queue.enter(5);
  let nextOut = false;
  next.admitted.then(() => (nextOut = true));
  await tick();
  assert.equal(nextOut, false, 'still one under way');
  first.done();
  await tick();
  assert.equal(nextOut, true);
  assert.deepEqual(aborted.out, []);
  // Entered with a signal already aborted: rejected at once.
  await assert.rejects(queue.enter(0, AbortSignal.abort(new Error('gone'))).admitted, /gone/);
});

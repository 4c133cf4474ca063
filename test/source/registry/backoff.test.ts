import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseRetryAfter, retryDelayMs, sleep } from '../../../src/source/registry/backoff.js';

const policy = { retries: 5, baseDelayMs: 100, maxDelayMs: 1000 };

test('backoff: exponential with jitter in the upper half, capped', () => {
  for (let i = 0; i < 200; i++) {
    const first = retryDelayMs(policy, 0);
    assert.ok(first >= 50 && first <= 100, String(first));
    const third = retryDelayMs(policy, 2);
    assert.ok(third >= 200 && third <= 400, String(third));
    const late = retryDelayMs(policy, 10);
    assert.ok(late >= 500 && late <= 1000, String(late));
  }
});

test('backoff: Retry-After raises the delay, up to the cap', () => {
  assert.ok(retryDelayMs(policy, 0, 700) >= 700);
  assert.equal(retryDelayMs(policy, 0, 60_000), 1000);
});

test('backoff: Retry-After in seconds or as a date', () => {
  assert.equal(parseRetryAfter('3'), 3000);
  assert.equal(parseRetryAfter(undefined), undefined);
  assert.equal(parseRetryAfter('soon'), undefined);
  const now = Date.parse('2024-01-01T00:00:00Z');
  assert.equal(parseRetryAfter('Mon, 01 Jan 2024 00:00:05 GMT', now), 5000);
  assert.equal(parseRetryAfter('Mon, 01 Jan 2023 00:00:05 GMT', now), 0);
});

test('backoff: sleep ends early when aborted', async () => {
  const controller = new AbortController();
  const started = Date.now();
  setTimeout(() => controller.abort(new Error('stop')), 10);
  await assert.rejects(sleep(5000, controller.signal), /stop/);
  assert.ok(Date.now() - started < 1000);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { acquireLock } from '../../src/store/lock.js';

const lockModule = resolve(dirname(fileURLToPath(import.meta.url)), '../../src/store/lock.js');

test('a lock is exclusive within a process and released for the next holder', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazyroot-lock-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'l');
  const order: string[] = [];
  const first = await acquireLock(path, 'test');
  const second = acquireLock(path, 'test').then((release) => {
    order.push('second acquired');
    return release;
  });
  await new Promise((r) => setTimeout(r, 100));
  order.push('first releasing');
  await first();
  await (await second)();
  assert.deepEqual(order, ['first releasing', 'second acquired']);
});

test('a lock held by a process killed with SIGKILL is free at once', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazyroot-lock-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'l');
  const holder = spawn(
    process.execPath,
    ['--input-type=module', '-e', `const { acquireLock } = await import(${JSON.stringify(lockModule)}); await acquireLock(${JSON.stringify(path)}, 'holder'); console.log('held'); setInterval(() => {}, 1000);`],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((r) => holder.stdout.once('data', () => r()));
  await assert.rejects(acquireLock(path, 'blob X', 200), /blob X: still locked by another process/);
  holder.kill('SIGKILL');
  await new Promise((r) => holder.once('close', r));
  const started = Date.now();
  const release = await acquireLock(path, 'test', 2000);
  assert.ok(Date.now() - started < 1000, 'no stale period to wait out');
  await release();
});

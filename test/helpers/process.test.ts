import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnProcess } from './process.js';

const node = process.execPath;

test('process: ready once the check holds; stop ends it by SIGTERM', async () => {
  const proc = spawnProcess(node, ['-e', 'console.log("up"); setInterval(() => {}, 1000)']);
  let output = '';
  proc.child.stdout?.on('data', (c: Buffer) => (output += c.toString()));
  await proc.waitReady(() => output.includes('up'));
  assert.equal(proc.exitStatus(), undefined);
  await proc.stop();
  assert.equal(proc.exitStatus(), 'SIGTERM');
  await proc.stop(); // a second stop does nothing
});

test('process: one that ignores SIGTERM is killed after the grace period', async () => {
  const proc = spawnProcess(node, ['-e', 'process.on("SIGTERM", () => {}); console.log("up"); setInterval(() => {}, 1000)'], { graceMs: 200 });
  let output = '';
  proc.child.stdout?.on('data', (c: Buffer) => (output += c.toString()));
  await proc.waitReady(() => output.includes('up'));
  const started = Date.now();
  await proc.stop();
  assert.equal(proc.exitStatus(), 'SIGKILL');
  assert.ok(Date.now() - started >= 150);
});

test('process: exiting before ready, never ready, or not found are errors naming it', async () => {
  const early = spawnProcess(node, ['-e', 'process.exit(3)'], { name: 'early' });
  await assert.rejects(early.waitReady(() => false, { describe: () => 'its log' }), /^Error: early exited \(3\) before it was ready:\nits log$/);

  const slow = spawnProcess(node, ['-e', 'setInterval(() => {}, 1000)'], { name: 'slow' });
  await assert.rejects(slow.waitReady(() => false, { timeoutMs: 100 }), /slow was not ready within 0.1 s/);
  assert.equal(slow.exitStatus(), 'SIGTERM', 'stopped when it never got ready');

  const missing = spawnProcess('/nonexistent/lazyroot-test-binary', []);
  await assert.rejects(missing.waitReady(() => false), /exited \(spawn \/nonexistent\/lazyroot-test-binary ENOENT\)/);
});

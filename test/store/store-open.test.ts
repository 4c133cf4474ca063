import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const storeModule = new URL('../../src/store/store.js', import.meta.url).href;

/** Opens (creating) the store at `root` in a new process; resolves with what went wrong, if anything. */
function openInChild(root: string): Promise<string> {
  const script = `const { Store } = await import(${JSON.stringify(storeModule)}); (await Store.open(${JSON.stringify(root)})).close();`;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('close', (code) => resolve(code === 0 ? '' : stderr.trim().split('\n').find((l) => /Error|SQLITE/.test(l)) ?? `exit ${code}`));
  });
}

test('regression: processes creating the same store at once all open it (no "database is locked")', async (t) => {
  const work = await mkdtemp(join(tmpdir(), 'lazyroot-open-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  const failures: string[] = [];
  for (let round = 0; round < 15; round++) {
    const root = join(work, `store-${round}`);
    const results = await Promise.all([0, 1, 2].map(() => openInChild(root)));
    failures.push(...results.filter((r) => r !== ''));
  }
  assert.deepEqual(failures, []);
});

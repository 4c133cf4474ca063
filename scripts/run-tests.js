#!/usr/bin/env node
// Runs every compiled test file with node's built-in test runner.
// Usage: npm test [-- filter...]  (filters match test file paths)
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';

const root = new URL('..', import.meta.url).pathname;
const testDir = join(root, 'dist', 'test');

function collect(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return collect(path);
    return name.endsWith('.test.js') ? [path] : [];
  });
}

const filters = process.argv.slice(2);
const files = collect(testDir)
  .filter((f) => filters.length === 0 || filters.some((x) => relative(root, f).includes(x)))
  .sort();
if (files.length === 0) {
  console.error('run-tests: no test files matched');
  process.exit(1);
}
const reporter = process.env.CI ? 'spec' : 'spec';
// Mount daemons leave no warm standby behind in tests (it would outlive them by
// minutes); test/mount/standby.test.ts turns it on for itself and stops it by PID.
const result = spawnSync(process.execPath, ['--test', `--test-reporter=${reporter}`, '--test-concurrency=2', ...files], {
  stdio: 'inherit',
  cwd: root,
  env: { ...process.env, LAZYROOT_STANDBY: '0' },
});
process.exit(result.status ?? 1);

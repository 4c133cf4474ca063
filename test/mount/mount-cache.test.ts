import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { flushCacheWrites, jsonPieces, readCached, writeCachedLater } from '../../src/mount/mount-cache.js';
import { Store } from '../../src/store/store.js';

test('jsonPieces: the text of JSON.stringify, in pieces', () => {
  const values: unknown[] = [
    { version: 1, key: 'k', value: [{ a: 1, b: undefined, c: 'x"y' }, null, undefined, [1, [2]], 'é\u2028'] },
    { entries: [], chunks: [['p', [{ offset: 0 }]]], prefetch: { landmark: 'none', paths: ['a'], compressedEnd: 0 }, gone: undefined, f: () => 1 },
    [],
    {},
    'plain',
    3,
    null,
    { date: new Date(0), nested: { deep: { deeper: [{ x: [undefined] }] } } },
  ];
  for (const value of values) assert.equal([...jsonPieces(value)].join(''), JSON.stringify(value));
  // A big array comes in many pieces, none of them the whole.
  const big = Array.from({ length: 100_000 }, (_, i) => ({ path: `d/f${i}`, type: 'file', mode: 0o644, size: i }));
  const pieces = [...jsonPieces({ version: 1, key: 'k', value: big })];
  assert.ok(pieces.length > 2, `${pieces.length} pieces`);
  assert.ok(Math.max(...pieces.map((p) => p.length)) < 2 << 20);
  assert.equal(pieces.join(''), JSON.stringify({ version: 1, key: 'k', value: big }));
});

test('a cache file is written in pieces and read back; a truncated, stale or garbled one is ignored', async () => {
  const root = await mkdtemp(join(tmpdir(), 'lazyroot-mount-cache-'));
  const store = await Store.open(join(root, 'store'));
  try {
    const path = join(root, 'cache', 'x.tree');
    const value = Array.from({ length: 60_000 }, (_, i) => ({ path: `d${i % 7}/f${i}`, type: 'file', mode: 0o644, uid: 0, gid: 0, size: i, mtime: 0, layer: 0, sourcePath: `d${i % 7}/f${i}` }));
    writeCachedLater(store, path, 'key-1', () => value);
    await flushCacheWrites();
    assert.deepEqual(await readCached(path, 'key-1'), value);
    assert.equal(await readCached(path, 'key-2'), undefined, 'another key: stale');
    assert.deepEqual(await readdir(store.paths.tmp), [], 'no temp file left');
    const size = (await readFile(path)).length;
    assert.ok(size > 4 << 20, `${size} bytes: written in several pieces`);
    await truncate(path, Math.floor(size / 2));
    assert.equal(await readCached(path, 'key-1'), undefined, 'truncated');
    await writeFile(path, '{"version":1,"key":"key-1","value":[{"pa');
    assert.equal(await readCached(path, 'key-1'), undefined, 'cut mid-entry');
    await writeFile(path, JSON.stringify({ version: 999, key: 'key-1', value }));
    assert.equal(await readCached(path, 'key-1'), undefined, 'another version');
    assert.equal(await readCached(join(root, 'missing'), 'key-1'), undefined, 'missing');
  } finally {
    store.close();
    await rm(root, { recursive: true, force: true });
  }
});

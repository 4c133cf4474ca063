import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseFilters } from '../../src/snapshotter/filters.js';

const snapshot: Record<string, string> = {
  name: 'sha256:abc',
  parent: '',
  kind: 'committed',
  'labels.containerd.io/snapshot.ref': 'sha256:abc',
  'labels.containerd.io/gc.root': '2024-01-01T00:00:00Z',
};
const lookup = (path: readonly string[]) => snapshot[path[0] === 'labels' ? `labels.${path.slice(1).join('.')}` : path.join('.')];

test('containerd filters as its metadata layer sends them to List', () => {
  const cases: Array<[string[], boolean]> = [
    [[], true],
    [['labels."containerd.io/snapshot.ref"==sha256:abc,parent==""'], true],
    [['labels."containerd.io/snapshot.ref"==sha256:abc,parent=="sha256:def"'], false],
    [['kind==active', 'name==sha256:abc'], true],
    [['kind==active'], false],
    [['labels."containerd.io/gc.root"'], true],
    [['labels."containerd.io/missing"'], false],
    [['labels."containerd.io/missing"!=x'], true],
    [['name~=^sha256:a'], true],
    [['name~="^sha256:b"'], false],
    [['labels.containerd.io/gc.root==2024-01-01T00:00:00Z'], true],
  ];
  for (const [filters, want] of cases) assert.equal(parseFilters(filters)(lookup), want, filters.join(' | '));
});

test('a malformed filter is INVALID_ARGUMENT', () => {
  assert.throws(() => parseFilters(['==x']), { code: 'INVALID_ARGUMENT' });
  assert.throws(() => parseFilters(['name~=(']), { code: 'INVALID_ARGUMENT' });
});

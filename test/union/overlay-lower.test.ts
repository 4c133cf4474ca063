import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { IndexEntry } from '../../src/index/types.js';
import { overlayLowerEntries } from '../../src/union/overlay-lower.js';

const e = (path: string, type: IndexEntry['type'] = 'file', extra: Partial<IndexEntry> = {}): IndexEntry => ({ path, type, mode: type === 'dir' ? 0o755 : 0o644, uid: 0, gid: 0, size: 0, mtime: 1_700_000_000, ...extra });
const opaqueY = Buffer.from('y').toString('base64');

/** path → what overlayfs would see: type, and the opaque xattr when set. */
function view(entries: ReturnType<typeof overlayLowerEntries>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const x of entries) {
    const dev = x.type === 'char' ? ` ${x.devmajor ?? 0}/${x.devminor ?? 0}` : '';
    out[x.path] = `${x.type}${dev}${x.xattrs?.['trusted.overlay.opaque'] === opaqueY ? ' opaque' : ''}`;
  }
  return out;
}

const cases: Array<{ name: string; layer: IndexEntry[]; want: Record<string, string> }> = [
  { name: 'a whiteout becomes a 0/0 character device of the name it hides', layer: [e('etc', 'dir'), e('etc/.wh.old')], want: { etc: 'dir', 'etc/old': 'char 0/0' } },
  { name: 'an opaque marker becomes the xattr on its directory, and is not shown', layer: [e('var', 'dir'), e('var/.wh..wh..opq'), e('var/new')], want: { var: 'dir opaque', 'var/new': 'file' } },
  { name: 'an opaque marker in a directory the layer does not list makes that directory', layer: [e('a/.wh..wh..opq')], want: { a: 'dir opaque' } },
  { name: 'a whiteout of a name the layer also puts is dropped (its own entry hides the lower one)', layer: [e('x/.wh.f'), e('x/f')], want: { x: 'dir', 'x/f': 'file' } },
  { name: 'a 0/0 device in the tar itself is left out (it would read as a whiteout)', layer: [e('dev', 'dir'), e('dev/null0', 'char')], want: { dev: 'dir' } },
  { name: 'a real device stays', layer: [e('dev', 'dir'), e('dev/null', 'char', { devmajor: 1, devminor: 3 })], want: { dev: 'dir', 'dev/null': 'char 1/3' } },
  { name: 'aufs metadata is left out', layer: [e('.wh..wh.plnk', 'dir'), e('.wh..wh.plnk/1.2')], want: {} },
  { name: 'a path listed twice keeps its last entry', layer: [e('f'), e('f', 'symlink', { linkname: 't' })], want: { f: 'symlink' } },
];

for (const c of cases) {
  test(`overlay lower format: ${c.name}`, () => {
    assert.deepEqual(view(overlayLowerEntries(c.layer)), c.want);
  });
}

test('overlay lower format: an implicit parent takes mode, owner and time from the directory below; 0755 root without one', () => {
  const lower = new Map([['secret', e('secret', 'dir', { mode: 0o700, uid: 1000, gid: 1000, mtime: 5 })]]);
  const got = overlayLowerEntries([e('secret/key'), e('open/file')], 0, (p) => lower.get(p));
  const secret = got.find((x) => x.path === 'secret')!;
  assert.deepEqual([secret.mode, secret.uid, secret.gid, secret.mtime], [0o700, 1000, 1000, 5]);
  const open = got.find((x) => x.path === 'open')!;
  assert.deepEqual([open.mode, open.uid, open.gid], [0o755, 0, 0]);
});

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, open, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { unpackLayer } from '../../src/unpack/unpack-layer.js';
import { native } from '../../src/native.js';
import type { LazyrootError } from '../../src/errors.js';
import { buildTar, dir, fifo, file, hardlink, opaque, symlink, whiteout, type TarEntry } from '../helpers/tar-builder.js';
import { missingRequirements } from '../helpers/requirements.js';

const needs = { root: true, tools: ['tar', 'mount'] };
const missing = missingRequirements(needs);
if (missing.length && process.env.CI) throw new Error(`CI: unpack tests need ${missing.join(', ')}`);

describe('unpackLayer on kernel overlayfs', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let n = 0;
  const mounted: string[] = [];
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-unpack-'));
  });
  after(async () => {
    for (const m of mounted) execFileSync('umount', [m]);
    await rm(work, { recursive: true, force: true });
  });

  /** Unpacks the layers bottom-up into diffs and mounts overlayfs over them; returns the merged dir. */
  async function merged(layers: Array<TarEntry[] | Buffer>): Promise<{ root: string; diffs: string[] }> {
    const base = join(work, `case-${n++}`);
    const diffs: string[] = [];
    for (const [i, layer] of layers.entries()) {
      const target = join(base, `diff${i}`);
      await mkdir(target, { recursive: true });
      const tar = Buffer.isBuffer(layer) ? layer : await buildTar(layer);
      const result = await unpackLayer(Readable.from([tar]), { target, lowers: [...diffs].reverse(), what: `layer ${i}` });
      assert.equal(result.diffId, `sha256:${createHash('sha256').update(tar).digest('hex')}`, 'diff ID covers every byte');
      diffs.push(target);
    }
    const root = join(base, 'merged');
    await mkdir(root);
    const lower = diffs.length === 1 ? [diffs[0]!, await mkdtemp(join(base, 'empty-'))] : [...diffs].reverse();
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower.join(':')}`, root]);
    mounted.push(root);
    return { root, diffs };
  }

  const visible = (root: string, p: string) => existsSync(join(root, p)) || lstat(join(root, p)).then(() => true, () => false);

  const table: Array<{ name: string; layers: TarEntry[][]; visible: string[]; hidden: string[] }> = [
    {
      name: 'a whiteout hides a lower file; an opaque dir hides lower children but keeps its own',
      layers: [
        [dir('etc'), file('etc/a', 'a'), file('etc/b', 'b'), dir('d'), file('d/old', 'o')],
        [whiteout('etc/b'), opaque('d'), file('d/new', 'n')],
      ],
      visible: ['etc/a', 'd/new'],
      hidden: ['etc/b', 'd/old', 'etc/.wh.b', 'd/.wh..wh..opq'],
    },
    {
      name: 'a whiteout of a whole directory',
      layers: [[dir('x'), dir('x/y'), file('x/y/z', 'z')], [whiteout('x')]],
      visible: [],
      hidden: ['x', 'x/y/z'],
    },
    {
      name: 'whiteout then re-creation in the same layer: the new directory hides the old one',
      layers: [[dir('w'), file('w/old', 'o')], [whiteout('w'), dir('w'), file('w/new', 'n')]],
      visible: ['w/new'],
      hidden: ['w/old'],
    },
    {
      name: 're-creation then whiteout in the same layer: the new entries stay, the old ones go',
      layers: [[dir('w'), file('w/old', 'o')], [dir('w'), file('w/new', 'n'), whiteout('w')]],
      visible: ['w/new'],
      hidden: ['w/old'],
    },
    {
      name: 'a path deleted in one layer and re-created in a later one',
      layers: [[file('p', '1')], [whiteout('p')], [file('p', '3')]],
      visible: ['p'],
      hidden: [],
    },
    {
      name: 'implicit parent directories are created',
      layers: [[file('deep/ly/nested/f', 'f')]],
      visible: ['deep/ly/nested/f'],
      hidden: [],
    },
  ];
  for (const c of table) {
    test(c.name, async () => {
      const { root } = await merged(c.layers);
      for (const p of c.visible) assert.ok(await visible(root, p), `${p} should be visible`);
      for (const p of c.hidden) assert.ok(!(await visible(root, p)), `${p} should be hidden`);
    });
  }

  test('a file replaced by a directory, and a directory by a file', async () => {
    const { root } = await merged([
      [file('f2d', 'file'), dir('d2f'), file('d2f/child', 'c')],
      [dir('f2d'), file('f2d/inside', 'i'), file('d2f', 'now a file')],
    ]);
    assert.ok((await stat(join(root, 'f2d'))).isDirectory());
    assert.equal(await readFile(join(root, 'f2d/inside'), 'utf8'), 'i');
    assert.equal(await readFile(join(root, 'd2f'), 'utf8'), 'now a file');
  });

  test('a hardlink in an upper layer to a lower file is copied up and shares the inode', async () => {
    const { root, diffs } = await merged([
      [dir('bin'), file('bin/tool', 'TOOL', { mode: 0o4755, uid: 1000, gid: 1000 })],
      [hardlink('bin/alias', 'bin/tool')],
    ]);
    const [a, b] = [await lstat(join(root, 'bin/tool')), await lstat(join(root, 'bin/alias'))];
    assert.equal(a.ino, b.ino);
    assert.equal(a.nlink, 2);
    assert.equal(a.mode & 0o7777, 0o4755);
    assert.equal(a.uid, 1000);
    assert.equal(await readFile(join(diffs[1]!, 'bin/tool'), 'utf8'), 'TOOL', 'the target was copied up into the upper diff');
  });

  test('metadata: owners, setuid/setgid/sticky, mtimes, symlinks, devices, fifos', async () => {
    const t = new Date('2001-02-03T04:05:06Z');
    const { root } = await merged([
      [
        dir('srv', { mode: 0o1777, mtime: t }),
        file('srv/s', 's', { mode: 0o2750, uid: 65534, gid: 65534, mtime: t }),
        symlink('srv/link', '/absolute/target', { mtime: t }),
        { kind: 'packed', header: { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 } },
        { kind: 'packed', header: { name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0, mode: 0o660 } },
        { kind: 'packed', header: { name: 'run/fifo', type: 'fifo', mode: 0o600 } },
      ],
    ]);
    const srv = await lstat(join(root, 'srv'));
    assert.equal(srv.mode & 0o7777, 0o1777);
    assert.equal(srv.mtime.getTime(), t.getTime(), 'directory mtime set after its children');
    const s = await lstat(join(root, 'srv/s'));
    assert.deepEqual([s.mode & 0o7777, s.uid, s.gid, s.mtime.getTime()], [0o2750, 65534, 65534, t.getTime()]);
    assert.equal(await readlink(join(root, 'srv/link')), '/absolute/target');
    const devnull = await lstat(join(root, 'dev/null'));
    assert.ok(devnull.isCharacterDevice());
    assert.equal(devnull.rdev, (1 << 8) | 3);
    assert.ok((await lstat(join(root, 'dev/sda'))).isBlockDevice());
    assert.ok((await lstat(join(root, 'run/fifo'))).isFIFO());
  });

  test('owners and modes are exact whatever the umask: setgid directories, special bits, members replaced in the same layer', async () => {
    // Root-made entries skip chown and chmod where they would change nothing; these are the cases where they must not.
    const before = process.umask(0o077);
    try {
      const base = join(work, `exact-${n++}`);
      const diffs = [join(base, 'diff0'), join(base, 'diff1')];
      const layers = [
        await buildTar([
          dir('sg', { mode: 0o2775, gid: 50 }),
          file('sg/root', 'r'),
          symlink('sg/link', 'root'),
          fifo('sg/fifo'),
          dir('sg/sub'),
          file('modes/wide', 'w', { mode: 0o666 }),
          file('modes/all', 'a', { mode: 0o777 }),
          file('modes/suid', 's', { mode: 0o4755 }),
          file('modes/sgid', 's', { mode: 0o2755, gid: 7 }),
          file('modes/sticky', 's', { mode: 0o1644 }),
          file('modes/owned', 'o', { mode: 0o640, uid: 1000, gid: 1000 }),
        ]),
        await buildTar([
          file('sg/upper', 'u'),
          file('sg/implicit/f', 'f'),
          file('dup', 'first', { mode: 0o600, uid: 5, gid: 5 }),
          file('dup', 'second', { mode: 0o644 }),
          dir('d2f', { mode: 0o2755, gid: 9 }),
          file('d2f/x', 'x'),
          file('d2f', 'a file at last'),
          dir('sgid-later'),
          file('sgid-later/before', 'b'),
          dir('sgid-later', { mode: 0o2755, gid: 11 }),
          file('sgid-later/after', 'a'),
        ]),
      ];
      for (const [i, tar] of layers.entries()) {
        await mkdir(diffs[i]!, { recursive: true });
        await unpackLayer(Readable.from([tar]), { target: diffs[i]!, lowers: diffs.slice(0, i).reverse(), what: `layer ${i}` });
      }
      const st = (i: number, p: string) => lstat(join(diffs[i]!, p));
      const owner = async (i: number, p: string) => {
        const s = await st(i, p);
        return [s.uid, s.gid, s.mode & 0o7777];
      };
      assert.deepEqual((await owner(0, 'sg')), [0, 50, 0o2775]);
      for (const p of ['sg/root', 'sg/link', 'sg/fifo', 'sg/sub']) assert.deepEqual((await owner(0, p)).slice(0, 2), [0, 0], `${p}: 0:0 in a setgid directory`);
      assert.equal((await st(0, 'sg/sub')).mode & 0o7777, 0o755, 'mkdir in a setgid directory sets setgid; the member says otherwise');
      assert.deepEqual(await owner(0, 'modes/wide'), [0, 0, 0o666]);
      assert.deepEqual(await owner(0, 'modes/all'), [0, 0, 0o777]);
      assert.deepEqual(await owner(0, 'modes/suid'), [0, 0, 0o4755]);
      assert.deepEqual(await owner(0, 'modes/sgid'), [0, 7, 0o2755]);
      assert.deepEqual(await owner(0, 'modes/sticky'), [0, 0, 0o1644]);
      assert.deepEqual(await owner(0, 'modes/owned'), [1000, 1000, 0o640]);
      assert.deepEqual(await owner(1, 'sg'), [0, 50, 0o2775], 'copied up with its setgid bit');
      assert.deepEqual(await owner(1, 'sg/upper'), [0, 0, 0o644]);
      assert.equal((await st(1, 'sg/implicit')).gid, 50, 'an implicit directory takes the setgid parent group, as mkdir gives it');
      assert.deepEqual(await owner(1, 'sg/implicit/f'), [0, 0, 0o644]);
      assert.deepEqual(await owner(1, 'dup'), [0, 0, 0o644]);
      assert.equal(await readFile(join(diffs[1]!, 'dup'), 'utf8'), 'second');
      assert.ok((await st(1, 'd2f')).isFile());
      assert.deepEqual(await owner(1, 'd2f'), [0, 0, 0o644]);
      assert.deepEqual(await owner(1, 'sgid-later/before'), [0, 0, 0o644]);
      assert.deepEqual(await owner(1, 'sgid-later/after'), [0, 0, 0o644], 'made after its directory became setgid');
    } finally {
      process.umask(before);
    }
  });

  test('GNU tar PAX sparse files (format 1.0) and binary xattrs survive byte for byte', async () => {
    const src = join(work, 'gnutar-src');
    await mkdir(src, { recursive: true });
    const sparse = join(src, 'sparse.img');
    const handle = await open(sparse, 'w');
    await handle.write(Buffer.from('head'), 0, 4, 0);
    await handle.write(Buffer.from('middle'), 0, 6, 5 << 20);
    await handle.truncate(12 << 20);
    await handle.close();
    // A capability blob (v2) with bytes over 0x7f: cap_setuid|cap_net_bind_service, permitted+effective.
    const cap = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x80, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    await writeFile(join(src, 'capable'), 'bin');
    native().lsetxattr(join(src, 'capable'), 'security.capability', cap);
    native().lsetxattr(join(src, 'capable'), 'user.note', Buffer.from([0xff, 0x00, 0x7f]));
    const tar = execFileSync('tar', ['--format=posix', '--sparse', '--sparse-version=1.0', '--xattrs', '--xattrs-include=*', '-C', src, '-cf', '-', 'sparse.img', 'capable'], {
      maxBuffer: 64 << 20,
    });
    const { root } = await merged([tar]);
    const got = await readFile(join(root, 'sparse.img'));
    assert.equal(got.length, 12 << 20);
    assert.ok(got.equals(await readFile(sparse)), 'same content');
    assert.ok((await stat(join(root, 'sparse.img'))).blocks * 512 < 1 << 20, 'holes stay holes');
    assert.ok(native().lgetxattr(join(root, 'capable'), 'security.capability')?.equals(cap));
    assert.ok(native().lgetxattr(join(root, 'capable'), 'user.note')?.equals(Buffer.from([0xff, 0x00, 0x7f])));
  });

  test('hostile names are refused naming the entry, and nothing is created outside the target', async () => {
    const outside = join(work, 'outside');
    await mkdir(outside, { recursive: true });
    const cases: Array<{ entries: TarEntry[]; message: RegExp }> = [
      { entries: [file('../escape', 'x')], message: /entry "\.\.\/escape" has a "\.\." component: it escapes the layer root; refused/ },
      { entries: [file('/abs', 'x')], message: /entry "\/abs" is absolute/ },
      { entries: [symlink('link', outside), file('link/evil', 'x')], message: /entry "link\/evil" would be written through the symlink "link"/ },
      { entries: [hardlink('h', '../../etc/passwd')], message: /escapes the layer root/ },
      { entries: [hardlink('h', 'does/not/exist')], message: /entry "h" is a hardlink to "does\/not\/exist", which is not a file in the image \(outside the tree\)/ },
    ];
    for (const c of cases) {
      const target = join(work, `hostile-${n++}`, 'diff');
      await mkdir(target, { recursive: true });
      await assert.rejects(unpackLayer(Readable.from([await buildTar(c.entries)]), { target, lowers: [], what: 'evil layer' }), (err: LazyrootError) => {
        assert.equal(err.code, 'HOSTILE_ARCHIVE');
        assert.match(err.message, /^evil layer: /);
        assert.match(err.message, c.message);
        return true;
      });
      assert.ok(!existsSync(join(outside, 'evil')));
    }
  });
});

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { link, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import tarStream from 'tar-stream';
import { allFeaturesLayout, binaryXattrValue, capNetBindService, edgeCaseImages, type EdgeCaseImage } from './edge-case-images.js';
import { checkOutsideUntouched, hostileLayers } from './hostile-layers.js';
import { buildImage } from './image-builder.js';
import { requireOrSkip } from './requirements.js';
import { diffTreesReport, snapshotTree, type TreeEntry } from './tree-snapshot.js';
import { umociUnpack, umociVersion } from './umoci.js';

const run = promisify(execFile);
let work: string;
before(async () => {
  work = await mkdtemp(join(tmpdir(), 'lazyroot-edge-cases-'));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

interface Member {
  name: string;
  type: string | null;
  linkname: string | null;
  pax: Record<string, string> | null;
}

/** The members tar-stream reads, and the error it stopped at, if any. */
async function read(tar: Buffer): Promise<{ members: Member[]; error?: Error }> {
  const extract = tarStream.extract();
  const out: Member[] = [];
  Readable.from([tar]).pipe(extract as unknown as NodeJS.WritableStream);
  try {
    for await (const entry of extract) {
      entry.resume();
      const h = entry.header;
      out.push({ name: h.name, type: h.type, linkname: h.linkname ?? null, pax: (h.pax as Record<string, string> | null) ?? null });
    }
  } catch (error) {
    return { members: out, error: error as Error };
  }
  return { members: out };
}

async function members(tar: Buffer): Promise<Member[]> {
  const { members: out, error } = await read(tar);
  if (error) throw error;
  return out;
}

/** What `expect` says, checked on a tree on disk and its snapshot (exact paths, no symlink followed). */
async function expectationFailures(image: EdgeCaseImage, root: string, snapshot: TreeEntry[]): Promise<string[]> {
  const byPath = new Map(snapshot.map((e) => [e.path, e]));
  const failures: string[] = [];
  for (const p of image.expect?.visible ?? []) if (!byPath.has(p)) failures.push(`${image.name}: ${p} should be visible`);
  for (const p of image.expect?.hidden ?? []) if (byPath.has(p)) failures.push(`${image.name}: ${p} should be hidden`);
  for (const [p, want] of Object.entries(image.expect?.content ?? {})) {
    const e = byPath.get(p);
    if (e?.type !== 'file') failures.push(`${image.name}: ${p} should be a file`);
    else if ((await readFile(join(root, p), 'utf8')) !== want) failures.push(`${image.name}: ${p} content differs`);
  }
  for (const [p, want] of Object.entries(image.expect?.sha256 ?? {})) {
    if (byPath.get(p)?.sha256 !== want) failures.push(`${image.name}: ${p} sha256 ${byPath.get(p)?.sha256} != ${want}`);
  }
  for (const e of snapshot) {
    const base = e.path.slice(e.path.lastIndexOf('/') + 1);
    if (base.startsWith('.wh.')) failures.push(`${image.name}: whiteout ${e.path} left in the tree`);
    if (/GNUSparseFile\./.test(e.path)) failures.push(`${image.name}: ${e.path}: a PAX sparse member's placeholder name`);
  }
  return failures;
}

test('edge-case images: same bytes every time, every layer readable by tar-stream', async (t) => {
  if (!requireOrSkip(t, { root: true, tools: ['tar', 'zstd'] })) return;
  const [first, second] = await Promise.all([edgeCaseImages(), edgeCaseImages()]);
  assert.deepEqual(
    first.map((i) => [i.name, buildImage(i.spec).manifestDigest]),
    second.map((i) => [i.name, buildImage(i.spec).manifestDigest]),
  );
  assert.equal(new Set(first.map((i) => i.name)).size, first.length);
  for (const image of first) {
    assert.ok(image.spec.layers.length >= 2 && image.spec.layers.length <= 4, `${image.name}: 2-4 layers`);
    for (const [i, layer] of image.spec.layers.entries()) {
      // GNU tar's own bytes for an old-GNU sparse file: pinned below.
      if (image.name === 'sparse-gnu' && i === 0) continue;
      const entries = await members(layer.tar);
      // Only basics' L3 is deliberately empty.
      assert.ok(entries.length > 0 || (image.name === 'basics' && i === 2), `${image.name} L${i + 1}: no members`);
    }
  }
  const all = new Set(first.flatMap((i) => i.spec.layers.map((l) => l.compression)));
  assert.deepEqual([...all].sort(), ['gzip', 'none', 'zstd']);

  // Limits of tar-stream an unpacker built on it must work around, pinned here.
  const byName = new Map(first.map((i) => [i.name, i]));
  const gnuSparse = await read(byName.get('sparse-gnu')!.spec.layers[0]!.tar);
  assert.deepEqual(
    gnuSparse.members.map((m) => `${m.type}:${m.name}`),
    ['directory:sparse-gnu/', 'null:sparse-gnu/all-hole.img', 'null:sparse-gnu/holes.img', 'null:sparse-gnu/many.img'],
    "GNU 'S' sparse members come out of tar-stream with type null",
  );
  assert.match(
    gnuSparse.error?.message ?? '',
    /Invalid tar header/,
    "tar-stream skips the GNU sparse extension block after many.img's header (6 runs > 4 in the header) and loses its place",
  );
  const xattrLayer = await members(byName.get('xattrs')!.spec.layers[1]!.tar);
  const binary = xattrLayer.find((m) => m.name === 'data/binary-attr')!.pax!['SCHILY.xattr.user.binary']!;
  assert.notDeepEqual(Buffer.from(binary, 'utf8'), binaryXattrValue, 'tar-stream decodes PAX values as UTF-8: binary xattrs are mangled');
  const pax00 = await members(byName.get('sparse-pax')!.spec.layers[2]!.tar);
  const holes = pax00.find((m) => m.pax?.['GNU.sparse.numblocks'] !== undefined && m.name.endsWith('holes.img'))!;
  assert.equal(holes.pax!['GNU.sparse.numblocks'], '3');
  assert.equal(typeof holes.pax!['GNU.sparse.offset'], 'string', 'PAX 0.0 repeats GNU.sparse.offset: tar-stream keeps only the last');
});

test('every edge-case image unpacks with umoci, and its expectations hold there', async (t) => {
  if (!requireOrSkip(t, { root: true, tools: ['umoci', 'tar', 'zstd'] })) return;
  assert.match(await umociVersion(), /^0\.4\.7/, 'the notes in umoci.ts are for umoci 0.4.7');
  const layoutDir = join(work, 'layout');
  const { images } = await allFeaturesLayout(layoutDir);
  const snapshots = new Map<string, TreeEntry[]>();
  const failures: string[] = [];
  const unpackAll = async (pass: string): Promise<Map<string, TreeEntry[]>> => {
    const out = new Map<string, TreeEntry[]>();
    await Promise.all(
      images.map(async (image) => {
        const bundle = join(work, pass, image.name);
        if (image.umociFails) {
          await assert.rejects(umociUnpack(layoutDir, image.name, bundle), image.umociFails.error, `${image.name}: ${image.umociFails.reason}`);
          return;
        }
        const rootfs = await umociUnpack(layoutDir, image.name, bundle);
        const snapshot = await snapshotTree(rootfs);
        out.set(image.name, snapshot);
        if (pass === 'first') failures.push(...(await expectationFailures(image, rootfs, snapshot)));
      }),
    );
    return out;
  };
  const started = Date.now();
  for (const [k, v] of await unpackAll('first')) snapshots.set(k, v);
  assert.deepEqual(failures, []);

  // The umoci behaviours umoci.ts describes, pinned.
  const at = (n: number): number => 1_650_000_000 + n * 3600;
  const get = (image: string, path: string): TreeEntry => {
    const e = snapshots.get(image)!.find((x) => x.path === path);
    assert.ok(e, `${image}: ${path} missing`);
    return e;
  };
  assert.equal(get('basics', '.').mtime, at(1), 'a ./ entry sets the root metadata');
  assert.equal(get('links', '.').mtime, 0, 'without one, umoci stamps the root with the epoch');
  assert.deepEqual([get('basics', 'pax-ids').uid, get('basics', 'pax-ids').gid], [3_000_000, 3_000_001]);
  assert.equal(get('basics', 'pax-mtime').mtime, at(32));
  assert.deepEqual([get('basics', 'etc').mode, get('basics', 'etc').gid, get('basics', 'etc').mtime], [0o750, 4, at(40)]);
  assert.deepEqual([get('devices', 'dev/wide').major, get('devices', 'dev/wide').minor], [510, 300_000]);
  assert.equal(get('hardlinks', 'bin/echo').hardlinkGroup, get('hardlinks', 'bin/busybox').hardlinkGroup, 'an upper hardlink shares the lower inode');
  assert.equal(get('hardlinks', 'bin/busybox').nlink, 4);
  assert.equal(get('hardlinks', 'bin/ls2').mode, 0o755, "a hardlink header's own mode is ignored");
  assert.equal(get('hardlinks', 'bin/sh-hardlink').type, 'symlink', 'a hardlink to a symlink links the symlink');
  assert.equal(get('hardlinks', 'lib/b').nlink, 2, 'lib/b lost lib/a, gained lib/b-again');
  assert.deepEqual(get('xattrs', 'usr/bin/ping6').xattrs, { 'security.capability': capNetBindService.toString('base64') });
  assert.deepEqual(get('xattrs', 'usr/bin/ping').xattrs, {});
  assert.deepEqual(get('xattrs', 'data/binary-attr').xattrs, { 'user.binary': binaryXattrValue.toString('base64') });
  assert.deepEqual(Object.keys(get('xattrs', 'data').xattrs), ['user.dir-attr2'], "an upper DIR/ entry's xattrs replace the lower ones");
  assert.deepEqual(Object.keys(get('xattrs', 'data/link-with-xattr').xattrs), ['trusted.link']);
  const smuggled = await snapshotTree(join(work, 'first', 'overlay-smuggling', 'rootfs'), { includeOverlayXattrs: true });
  assert.deepEqual(smuggled.find((e) => e.path === 'd')!.xattrs, {}, 'umoci drops trusted.overlay.* from tars');
  assert.deepEqual([get('overlay-smuggling', 'victim').type, get('overlay-smuggling', 'victim').major], ['char', 0]);
  const opt = get('implicit-parents', 'opt');
  assert.deepEqual([opt.mode, opt.uid, Object.keys(opt.xattrs)], [0o700, 1000, ['user.opt']], 'an existing dir keeps its metadata under implicit children');
  assert.ok(opt.mtime >= Math.floor(started / 1000) - 1, 'but MkdirAll of opt/sub bumps its mtime to the unpack time');
  assert.deepEqual([get('implicit-parents', 'usr').mode, get('implicit-parents', 'late-dir').mode], [0o755, 0o710]);
  assert.equal(get('whiteouts', 'opq').mtime, at(10), 'an opaque marker restores its dir');
  assert.ok(get('whiteouts', 'dirre2').mtime >= Math.floor(started / 1000) - 1, 'a same-layer dir whiteout leaves the unpack time');
  assert.equal(get('through-lower-symlink', 'bin').type, 'symlink');

  // sparse-gnu: umoci cannot be the reference; GNU tar, applying the layers in order, is (no whiteouts there).
  const sparseGnu = images.find((i) => i.name === 'sparse-gnu')!;
  const gnuRoot = join(work, 'gnu-tar-sparse');
  await mkdir(gnuRoot);
  for (const [i, layer] of sparseGnu.spec.layers.entries()) {
    await writeFile(join(work, `sparse-gnu-${i}.tar`), layer.tar);
    await run('tar', ['-x', '--numeric-owner', '-f', join(work, `sparse-gnu-${i}.tar`), '-C', gnuRoot]);
  }
  assert.deepEqual(await expectationFailures(sparseGnu, gnuRoot, await snapshotTree(gnuRoot)), []);

  // Unpacked again a second later, umoci differs from itself exactly where umociQuirks says.
  await new Promise((resolve) => setTimeout(resolve, 1100 - (Date.now() % 1000)));
  const again = await unpackAll('second');
  for (const image of images) {
    if (image.umociFails) continue;
    const allow = image.umociQuirks ?? [];
    const report = diffTreesReport(snapshots.get(image.name)!, again.get(image.name)!, { allow });
    assert.deepEqual(report.differences.map((d) => d.message), [], `${image.name}: umoci run-to-run differences not named`);
    assert.deepEqual(report.unusedAllows.map((a) => a.path.source), [], `${image.name}: umociQuirks names an mtime that did not move`);
  }
});

test('hostile layers: each parses with tar-stream to the hostile name, and the outside check works', async (t) => {
  if (!requireOrSkip(t, { root: true })) return;
  const outside = await mkdtemp(join(tmpdir(), 'lazyroot-hostile-'));
  try {
    const layers = await hostileLayers(outside);
    assert.equal(new Set(layers.map((l) => l.name)).size, layers.length);
    const effective = new Map<string, Member[]>();
    for (const layer of layers) effective.set(layer.name, await members(layer.tar));
    const names = (n: string): string[] => effective.get(n)!.map((m) => `${m.type}:${m.name}${m.linkname ? ` -> ${m.linkname}` : ''}`);
    const token = outside.slice(outside.lastIndexOf('/') + 1);
    assert.deepEqual(names('dotdot-file'), [`file:../${token}-dotdot`]);
    assert.deepEqual(names('dotdot-inside-path'), ['directory:a/', `file:a/../../${token}-inner`]);
    assert.match(names('dotdot-deep')[0]!, new RegExp(`^file:(\\.\\./){12,}${outside.slice(1)}/deep$`), 'ustar prefix joined');
    assert.deepEqual(names('absolute-path'), [`file:${outside}/absolute`]);
    assert.deepEqual(names('symlink-absolute-write-through'), [`symlink:link -> ${outside}`, 'file:link/through-absolute']);
    assert.deepEqual(names('hardlink-absolute'), [`link:passwd-absolute -> ${outside}/canary`]);
    assert.deepEqual(names('dot-as-file'), ['file:.']);
    assert.deepEqual(names('empty-name'), ['file:']);
    assert.deepEqual(names('root-as-symlink'), [`symlink:./ -> ${outside}`, 'file:through-root']);
    assert.deepEqual(names('pax-path-dotdot'), [`file:../${token}-pax`], 'PAX path= overrides the header name');
    assert.match(names('pax-linkpath-dotdot')[0]!, new RegExp(`^link:innocent-link -> (\\.\\./)+${outside.slice(1)}/canary$`));
    assert.deepEqual(names('gnu-longname-dotdot'), [`file:../${token}-gnu`], "GNU 'L' overrides the header name");
    assert.deepEqual(names('whiteout-of-dotdot'), ['file:.wh...']);
    assert.deepEqual(names('opaque-dotdot'), ['file:../.wh..wh..opq']);
    for (const layer of layers) {
      assert.ok(effective.get(layer.name)!.length > 0, layer.name);
      assert.ok(layer.expectError.test(`${layer.name}: invalid`) || layer.expectError.test('escapes the target'), `${layer.name}: expectError too narrow`);
      assert.ok(layer.escapesTo !== undefined || layer.canary !== undefined || /missing|dot|empty|whiteout-of/.test(layer.name), `${layer.name}: nothing to check outside`);
    }

    // Nothing was touched by building them…
    const target = join(work, 'hostile-target', 'diff');
    await mkdir(target, { recursive: true });
    for (const layer of layers) assert.deepEqual(await checkOutsideUntouched(layer, target), [], layer.name);
    // …and the check sees an escape and a hardlinked canary.
    const dotdot = layers.find((l) => l.name === 'dotdot-file')!;
    await writeFile(join(target, dotdot.escapesTo!), 'escaped');
    await link(join(outside, 'canary'), join(target, 'stolen'));
    const problems = await checkOutsideUntouched(dotdot, target);
    assert.equal(problems.length, 2, problems.join('\n'));
    assert.match(problems[0]!, /exists/);
    assert.match(problems[1]!, /nlink 2/);
  } finally {
    await rm(outside, { recursive: true, force: true });
  }
});

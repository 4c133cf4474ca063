/**
 * Single-layer tars that try to make an unpacker touch something outside its
 * target directory, or put the tree in a state a later entry could use to do
 * so. Every header is written with tar-builder's `raw()`, so names reach the
 * reader byte for byte (tar-stream's packer would normalise nothing, but raw
 * keeps `..`, `/`, '.', '' and the PAX/GNU override records exactly as given).
 *
 *   const layers = await hostileLayers(outsideDir);      // outsideDir: a fresh temp dir
 *   for (const h of layers) {
 *     const target = join(work, h.name, 'diff');        // < h.maxTargetDepth levels deep
 *     await assert.rejects(unpackLayer(h.tar, target), h.expectError);
 *     assert.deepEqual(await checkOutsideUntouched(h, target), []);
 *   }
 *
 * What "untouched" means (checkOutsideUntouched):
 * - `escapesTo`, resolved against the target dir (`path.resolve(target, escapesTo)`),
 *   does not exist afterwards, not even as a dangling symlink or a 0/0 char
 *   device. Relative ones land beside the target (`../<token>-…`), absolute
 *   ones in `outsideDir`. Every name carries a token unique to the run.
 * - `outsideDir` still holds exactly one file, `canary`, with its content,
 *   mode 0644 and nlink 1: a hardlink to it from the tree would raise nlink.
 * - The target's parent directory still exists and carries no
 *   `trusted.overlay.opaque` xattr.
 *
 * Deep relative escapes use enough `../` to reach `/` from any target less
 * than `maxTargetDepth` levels deep (they must fit a 100-byte ustar
 * field with the outside dir's path).
 */
import { lstat, mkdtemp, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { native } from '../../src/native.js';
import { buildTar, raw, type RawHeader } from './tar-builder.js';

export interface HostileLayer {
  name: string;
  /** What the layer tries, and what the unpacker must refuse it for. */
  description: string;
  /** The uncompressed layer tar. */
  tar: Buffer;
  /** Resolved against the target dir: must not exist after the attempt. */
  escapesTo?: string;
  /** An existing file outside the target that must keep its content and nlink 1. */
  canary?: string;
  /**
   * The unpacker's error must match. Loose on purpose: alternatives of the
   * words a good message uses for this case ("escapes", "outside", "symlink",
   * "hardlink", "invalid"…), so the unpacker's wording can settle.
   */
  expectError: RegExp;
  /** The run's outside directory (holds only `canary`); the caller removes it. */
  outsideDir: string;
  /** Deep escapes climb this many levels: the target must be fewer levels below `/`. */
  maxTargetDepth: number;
}

export const canaryContent = (outsideDir: string): string => `canary of ${basename(outsideDir)}: must never change\n`;

/** Splits a path over ustar's prefix (155) and name (100) fields at a '/', verbatim otherwise. */
function ustarPath(path: string): Pick<RawHeader, 'name' | 'prefix'> {
  if (Buffer.byteLength(path) <= 100) return { name: path };
  for (let i = path.lastIndexOf('/'); i > 0; i = path.lastIndexOf('/', i - 1)) {
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (Buffer.byteLength(name) <= 100 && Buffer.byteLength(prefix) <= 155) return { name, prefix };
  }
  throw new Error(`hostile-layers: ${path} does not fit a ustar header`);
}

const dirEntry = (name: string): RawHeader => ({ name, typeflag: '5', mode: 0o755 });

/**
 * Builds the hostile layers. `outsideDir` (created if omitted, under the OS
 * temp dir) receives the canary; everything else in it must stay absent.
 */
export async function hostileLayers(outsideDir?: string): Promise<HostileLayer[]> {
  const outside = resolve(outsideDir ?? (await mkdtemp(join(tmpdir(), 'lazyroot-hostile-'))));
  const token = basename(outside);
  const canary = join(outside, 'canary');
  await writeFile(canary, canaryContent(outside), { mode: 0o644 });

  const outsideRel = outside.slice(1);
  // As many ../ as fit in a 100-byte linkname with "<outside>/canary".
  const levels = Math.min(40, Math.floor((100 - Buffer.byteLength(`${outsideRel}/canary`)) / 3));
  if (levels < 12) throw new Error(`hostile-layers: outside dir path too long for deep escapes: ${outside}`);
  const up = '../'.repeat(levels);

  const layers: Array<Omit<HostileLayer, 'tar' | 'outsideDir' | 'maxTargetDepth'> & { entries: RawHeader[] }> = [
    {
      name: 'dotdot-file',
      description: 'A file named ../X: a path with a ".." component leaves the target. Refuse: path escapes the target.',
      entries: [{ name: `../${token}-dotdot`, data: 'escaped\n' }],
      escapesTo: `../${token}-dotdot`,
      expectError: /escapes|outside|invalid/i,
    },
    {
      name: 'dotdot-inside-path',
      description: 'a/ then a/../../X: ".." in the middle of a path, legal-looking prefix. Refuse: path escapes the target.',
      entries: [dirEntry('a/'), { name: `a/../../${token}-inner`, data: 'escaped\n' }],
      escapesTo: `../${token}-inner`,
      expectError: /escapes|outside|invalid/i,
    },
    {
      name: 'dotdot-deep',
      description: `${levels} levels of ../ then the outside dir, split over the ustar prefix and name fields. Refuse: path escapes the target.`,
      entries: [{ ...ustarPath(`${up}${outsideRel}/deep`), data: 'escaped\n' }],
      escapesTo: join(outside, 'deep'),
      expectError: /escapes|outside|invalid/i,
    },
    {
      name: 'absolute-path',
      description: 'A file named with an absolute path into the outside dir. Refuse (do not strip the "/" and extract): absolute path.',
      entries: [{ ...ustarPath(`${outside}/absolute`), data: 'escaped\n' }],
      escapesTo: join(outside, 'absolute'),
      expectError: /absolute|escapes|outside|invalid/i,
    },
    {
      name: 'symlink-absolute-write-through',
      description:
        'link -> <outside dir> (a legal symlink), then link/X: writing through a symlink planted in this layer. Refuse: ' +
        'the parent of link/X is a symlink.',
      entries: [
        { name: 'link', typeflag: '2', linkname: outside, mode: 0o777 },
        { name: 'link/through-absolute', data: 'escaped\n' },
      ],
      escapesTo: join(outside, 'through-absolute'),
      expectError: /symlink|escapes|outside/i,
    },
    {
      name: 'symlink-relative-write-through',
      description: 'a/ then a/up -> ../.. then a/up/X: a relative symlink leading above the target. Refuse: the parent is a symlink.',
      entries: [dirEntry('a/'), { name: 'a/up', typeflag: '2', linkname: '../..', mode: 0o777 }, { name: `a/up/${token}-relative`, data: 'escaped\n' }],
      escapesTo: `../${token}-relative`,
      expectError: /symlink|escapes|outside/i,
    },
    {
      name: 'symlink-deep-relative-write-through',
      description: `up -> ${levels}×"../" (to /), then up/<outside dir>/X. Refuse: the parent is a symlink.`,
      entries: [
        { name: 'up', typeflag: '2', linkname: up, mode: 0o777 },
        { ...ustarPath(`up/${outsideRel}/through-relative`), data: 'escaped\n' },
      ],
      escapesTo: join(outside, 'through-relative'),
      expectError: /symlink|escapes|outside/i,
    },
    {
      name: 'symlink-chain-write-through',
      description: 's1 -> s2, s2 -> <outside dir>, then s1/X: two hops. Refuse: the parent is a symlink.',
      entries: [
        { name: 's1', typeflag: '2', linkname: 's2', mode: 0o777 },
        { name: 's2', typeflag: '2', linkname: outside, mode: 0o777 },
        { name: 's1/through-chain', data: 'escaped\n' },
      ],
      escapesTo: join(outside, 'through-chain'),
      expectError: /symlink|escapes|outside/i,
    },
    {
      name: 'root-as-symlink',
      description: 'An entry "./" of type symlink -> <outside dir>, then a file: the target itself must never become a symlink. Refuse: invalid entry for the root.',
      entries: [
        { name: './', typeflag: '2', linkname: outside, mode: 0o777 },
        { name: 'through-root', data: 'escaped\n' },
      ],
      escapesTo: join(outside, 'through-root'),
      expectError: /root|symlink|invalid/i,
    },
    {
      name: 'hardlink-dotdot',
      description: `A hardlink to ${levels}×"../"<outside>/canary: a hardlink target outside the tree (the ../../etc/passwd attack). Refuse: hardlink target escapes.`,
      entries: [{ name: 'passwd', typeflag: '1', linkname: `${up}${outsideRel}/canary` }],
      canary,
      expectError: /hardlink|escapes|outside|invalid/i,
    },
    {
      name: 'hardlink-absolute',
      description: 'A hardlink to the absolute path of the canary (the /etc/passwd attack). Refuse: hardlink target is absolute / outside.',
      entries: [{ name: 'passwd-absolute', typeflag: '1', linkname: canary }],
      canary,
      expectError: /hardlink|absolute|escapes|outside|invalid/i,
    },
    {
      name: 'hardlink-missing-target',
      description: 'A hardlink to a path no earlier entry (nor a lower layer) created. Refuse: hardlink target not found.',
      entries: [{ name: 'orphan-link', typeflag: '1', linkname: 'does/not/exist' }],
      expectError: /hardlink|not found|missing|does not exist|no such|invalid/i,
    },
    {
      name: 'hardlink-through-symlink',
      description: 'sl -> <outside dir>, then a hardlink to sl/canary: the link target resolves through a symlink to the outside. Refuse.',
      entries: [
        { name: 'sl', typeflag: '2', linkname: outside, mode: 0o777 },
        { name: 'linked-canary', typeflag: '1', linkname: 'sl/canary' },
      ],
      canary,
      expectError: /symlink|hardlink|escapes|outside/i,
    },
    {
      name: 'dot-as-file',
      description: 'A regular file named ".": would replace the target directory itself. Refuse: invalid name.',
      entries: [{ name: '.', data: 'not a dir\n' }],
      expectError: /invalid|root|empty/i,
    },
    {
      name: 'empty-name',
      description: 'A regular file with an empty name. Refuse: invalid (empty) name.',
      entries: [{ name: '', data: 'nameless\n' }],
      expectError: /invalid|empty/i,
    },
    {
      name: 'pax-path-dotdot',
      description: 'Header name "innocent", PAX path=../X overriding it: the check must apply to the effective name. Refuse: path escapes.',
      entries: [{ name: 'innocent', pax: { path: `../${token}-pax` }, data: 'escaped\n' }],
      escapesTo: `../${token}-pax`,
      expectError: /escapes|outside|invalid/i,
    },
    {
      name: 'pax-linkpath-dotdot',
      description: 'A hardlink whose header linkname is harmless but whose PAX linkpath leads to the canary. Refuse: hardlink target escapes.',
      entries: [{ name: 'innocent-link', typeflag: '1', linkname: 'innocent', pax: { linkpath: `${up}${outsideRel}/canary` } }],
      canary,
      expectError: /hardlink|escapes|outside|invalid/i,
    },
    {
      name: 'gnu-longname-dotdot',
      description: "A GNU 'L' long-name record ../X before a header named \"innocent\". Refuse: path escapes.",
      entries: [{ name: 'innocent', gnuLongName: `../${token}-gnu`, data: 'escaped\n' }],
      escapesTo: `../${token}-gnu`,
      expectError: /escapes|outside|invalid/i,
    },
    {
      name: 'whiteout-dotdot',
      description: '../.wh.X: a whiteout outside the target (an overlay unpacker would mknod a 0/0 device there). Refuse: path escapes.',
      entries: [{ name: `../.wh.${token}-whiteout`, data: '' }],
      escapesTo: `../${token}-whiteout`,
      expectError: /whiteout|escapes|outside|invalid/i,
    },
    {
      name: 'whiteout-of-dotdot',
      description:
        '".wh..." is the whiteout of "..": joined naively it deletes (OCI style) or replaces (overlay style) the directory above the ' +
        'target. Refuse: invalid whiteout name.',
      entries: [{ name: '.wh...', data: '' }],
      expectError: /whiteout|invalid|escapes|outside/i,
    },
    {
      name: 'whiteout-of-dot',
      description: '".wh.." is the whiteout of ".": the target itself. Refuse: invalid whiteout name.',
      entries: [{ name: 'a/.wh..', data: '' }],
      expectError: /whiteout|invalid/i,
    },
    {
      name: 'opaque-dotdot',
      description: '../.wh..wh..opq: would set trusted.overlay.opaque on the directory above the target. Refuse: path escapes.',
      entries: [{ name: '../.wh..wh..opq', data: '' }],
      expectError: /whiteout|opaque|escapes|outside|invalid/i,
    },
  ];

  return Promise.all(
    layers.map(async ({ entries, ...rest }) => ({
      ...rest,
      tar: await buildTar(entries.map((e) => raw(e))),
      outsideDir: outside,
      maxTargetDepth: levels,
    })),
  );
}

/**
 * What a hostile layer changed outside `target` (the directory the unpacker
 * was given). Empty means nothing.
 */
export async function checkOutsideUntouched(layer: HostileLayer, target: string): Promise<string[]> {
  const problems: string[] = [];
  if (layer.escapesTo !== undefined) {
    const escaped = resolve(target, layer.escapesTo);
    const st = await lstat(escaped).catch(() => undefined);
    if (st) problems.push(`${layer.name}: ${escaped} exists (created outside the target)`);
  }
  const canary = join(layer.outsideDir, 'canary');
  const st = await stat(canary).catch(() => undefined);
  if (!st) problems.push(`${layer.name}: canary ${canary} is gone`);
  else {
    if (st.nlink !== 1) problems.push(`${layer.name}: canary ${canary} has nlink ${st.nlink} (hardlinked from somewhere)`);
    if ((st.mode & 0o7777) !== 0o644) problems.push(`${layer.name}: canary mode is ${(st.mode & 0o7777).toString(8)}`);
    if ((await readFile(canary, 'utf8')) !== canaryContent(layer.outsideDir)) problems.push(`${layer.name}: canary content changed`);
  }
  const extra = (await readdir(layer.outsideDir)).filter((n) => n !== 'canary');
  if (extra.length > 0) problems.push(`${layer.name}: outside dir gained ${extra.join(', ')}`);
  const parent = dirname(resolve(target));
  const pst = await lstat(parent).catch(() => undefined);
  if (!pst?.isDirectory()) problems.push(`${layer.name}: ${parent} (the target's parent) is no longer a directory`);
  else if (native().lgetxattr(parent, 'trusted.overlay.opaque') !== undefined) {
    problems.push(`${layer.name}: ${parent} got trusted.overlay.opaque`);
  }
  return problems;
}

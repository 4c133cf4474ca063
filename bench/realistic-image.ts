/**
 * The realistic benchmark image: Debian bookworm minbase, then python3.
 *
 *   layer 1  `debootstrap --variant=minbase bookworm` (apt caches and lists removed)
 *   layer 2  what `apt-get install --no-install-recommends python3` changed in a
 *            copy of it: new and changed files, whiteouts for removed ones
 *
 * Both layers are gzip tars written by the project's own test builders
 * (tar-builder.ts, image-builder.ts) into an OCI layout. Building needs
 * deb.debian.org and takes a minute or two; the root trees and the layout are
 * kept in the bench cache, so later runs reuse them.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { lstat, readFile, readdir, readlink, rename, rm, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Stats } from 'node:fs';
import { buildTar, blockdev, chardev, dir, fifo, file, hardlink, symlink, whiteout, type EntryOptions, type TarEntry } from '../test/helpers/tar-builder.js';
import { writeOciLayout } from '../test/helpers/image-builder.js';
import { devMajor, devMinor, native } from '../src/native.js';
import { ensureDebianPackages } from './debian-packages.js';

const run = promisify(execFile);

export const MIRROR = 'http://deb.debian.org/debian';
/** What the benchmark runs in the image; it must print exactly "1". */
export const PYTHON_COMMAND = ['python3', '-c', 'import json, sys; print(1)'];

export interface RealisticImage {
  /** OCI layout holding the image as ref `v1`. */
  layoutDir: string;
  /** Sum of the compressed layer sizes. */
  compressedBytes: number;
  uncompressedBytes: number;
  layers: Array<{ digest: string; compressedBytes: number; uncompressedBytes: number; entries: number; whiteouts: number }>;
  /** Paths visible in the merged rootfs (the python3 tree, less what is left out of the layers). */
  mergedEntries: number;
}

function log(message: string): void {
  process.stderr.write(`bench: realistic image: ${message}\n`);
}

async function sh(argv: string[], what: string, env?: NodeJS.ProcessEnv): Promise<string> {
  try {
    const { stdout } = await run(argv[0]!, argv.slice(1), { maxBuffer: 64 << 20, ...(env ? { env } : {}) });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string; stdout?: string };
    throw new Error(`realistic image: ${what}: ${argv.join(' ')}: ${(e.stderr || e.stdout || e.message).trim().slice(-3000)}`);
  }
}

/** apt's downloaded packages, package lists and binary caches: not part of an image people ship. */
async function removeAptCaches(root: string): Promise<void> {
  for (const d of ['var/cache/apt/archives', 'var/cache/apt/archives/partial', 'var/lib/apt/lists', 'var/lib/apt/lists/partial']) {
    const path = join(root, d);
    if (!existsSync(path)) continue;
    for (const name of await readdir(path)) {
      if (name === 'partial' || name === 'lock') continue;
      await rm(join(path, name), { recursive: true, force: true });
    }
  }
  for (const name of ['pkgcache.bin', 'srcpkgcache.bin']) await rm(join(root, 'var/cache/apt', name), { force: true });
}

/** The two root trees, made once: `minbase` and `python3` (= minbase + apt-get install python3). */
async function rootTrees(cacheDir: string): Promise<{ base: string; python: string }> {
  const trees = join(cacheDir, 'bookworm-trees');
  const base = join(trees, 'minbase');
  const python = join(trees, 'python3');
  await mkdir(trees, { recursive: true });
  if (!existsSync(join(trees, 'minbase.done'))) {
    await rm(base, { recursive: true, force: true });
    await ensureDebianPackages(['debootstrap'], 'the realistic image');
    log(`debootstrap --variant=minbase bookworm from ${MIRROR} (once; about a minute)`);
    const started = Date.now();
    await sh(['debootstrap', '--variant=minbase', 'bookworm', base, MIRROR], 'debootstrap');
    await removeAptCaches(base);
    await writeFile(join(trees, 'minbase.done'), `${new Date().toISOString()}\n`);
    log(`minbase done in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  }
  if (!existsSync(join(trees, 'python3.done'))) {
    await rm(python, { recursive: true, force: true });
    log('copying minbase and installing python3 in it with apt-get (once)');
    const started = Date.now();
    await sh(['cp', '-a', base, python], 'copy minbase');
    // No /proc in the chroot: nothing python3's maintainer scripts run needs it.
    const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C' };
    await sh(['chroot', python, 'apt-get', 'update', '-q'], 'apt-get update in the chroot', env);
    await sh(['chroot', python, 'apt-get', 'install', '-y', '-q', '--no-install-recommends', 'python3'], 'apt-get install python3 in the chroot', env);
    await removeAptCaches(python);
    await writeFile(join(trees, 'python3.done'), `${new Date().toISOString()}\n`);
    log(`python3 done in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  }
  return { base, python };
}

// ---- walking a tree

interface Node {
  /** Relative path, no leading slash ('' for the root itself, which is not listed). */
  path: string;
  stat: Stats;
}

/** Directory contents not shipped: the runtime mounts its own /dev, /proc and /sys. */
const emptied = new Set(['dev', 'proc', 'sys']);

/** Every path under `root`, parents before children, names sorted (so the layers are stable). */
async function walk(root: string): Promise<Map<string, Node>> {
  const out = new Map<string, Node>();
  const visit = async (relative: string): Promise<void> => {
    const names = (await readdir(join(root, relative))).sort();
    for (const name of names) {
      const path = relative ? `${relative}/${name}` : name;
      const stat = await lstat(join(root, path));
      out.set(path, { path, stat });
      if (stat.isDirectory() && !(relative === '' && emptied.has(name))) await visit(path);
    }
  };
  await visit('');
  return out;
}

let xattrWarned = false;

function optionsOf(root: string, node: Node): EntryOptions {
  const s = node.stat;
  const names = native().llistxattr(join(root, node.path));
  if (names.length > 0 && !xattrWarned) {
    // The test tar builder writes xattr values as strings; a binary one (security.capability) would be altered.
    xattrWarned = true;
    log(`note: ${node.path} has xattrs (${names.join(', ')}); they are left out of the layer`);
  }
  return { mode: s.mode & 0o7777, uid: s.uid, gid: s.gid, mtime: Math.floor(s.mtimeMs / 1000) };
}

/**
 * Tar entries for `nodes` of the tree at `root`, in order. A file whose inode
 * was already written in this layer becomes a hard link to it.
 */
async function entriesOf(root: string, nodes: Node[], whiteouts: string[] = []): Promise<TarEntry[]> {
  const entries: TarEntry[] = [];
  const firstByInode = new Map<string, string>();
  for (const node of nodes) {
    const s = node.stat;
    const opts = optionsOf(root, node);
    const full = join(root, node.path);
    if (s.isDirectory()) entries.push(dir(node.path, opts));
    else if (s.isSymbolicLink()) entries.push(symlink(node.path, await readlink(full), opts));
    else if (s.isFile()) {
      const key = `${s.dev}:${s.ino}`;
      const first = s.nlink > 1 ? firstByInode.get(key) : undefined;
      if (first !== undefined) entries.push(hardlink(node.path, first, opts));
      else {
        if (s.nlink > 1) firstByInode.set(key, node.path);
        entries.push(file(node.path, await readFile(full), opts));
      }
    } else if (s.isCharacterDevice()) entries.push(chardev(node.path, devMajor(s.rdev), devMinor(s.rdev), opts));
    else if (s.isBlockDevice()) entries.push(blockdev(node.path, devMajor(s.rdev), devMinor(s.rdev), opts));
    else if (s.isFIFO()) entries.push(fifo(node.path, opts));
    // sockets are not layer content
  }
  for (const path of whiteouts) entries.push(whiteout(path));
  return entries;
}

function kind(s: Stats): string {
  if (s.isDirectory()) return 'dir';
  if (s.isSymbolicLink()) return 'symlink';
  if (s.isFile()) return 'file';
  return `other:${s.mode & 0o170000}:${s.rdev}`;
}

/** Same entry for a layer diff: type, owner, mode; then content (files), target (links), mtime (directories). */
async function sameEntry(rootA: string, a: Node, rootB: string, b: Node): Promise<boolean> {
  const x = a.stat;
  const y = b.stat;
  if (kind(x) !== kind(y) || x.uid !== y.uid || x.gid !== y.gid || (x.mode & 0o7777) !== (y.mode & 0o7777)) return false;
  if (y.isDirectory()) return Math.floor(x.mtimeMs / 1000) === Math.floor(y.mtimeMs / 1000);
  if (y.isSymbolicLink()) return (await readlink(join(rootA, a.path))) === (await readlink(join(rootB, b.path)));
  if (y.isFile()) {
    if (x.size !== y.size) return false;
    const [p, q] = await Promise.all([readFile(join(rootA, a.path)), readFile(join(rootB, b.path))]);
    return p.equals(q);
  }
  return true;
}

/**
 * Layer 2: the entries of `upper` that are new or differ from `lower`, with
 * every parent directory of those, and whiteouts for the topmost paths
 * `lower` has and `upper` does not.
 */
async function diff(lowerRoot: string, lower: Map<string, Node>, upperRoot: string, upper: Map<string, Node>): Promise<{ nodes: Node[]; whiteouts: string[] }> {
  const changed = new Set<string>();
  for (const [path, node] of upper) {
    const before = lower.get(path);
    if (!before || !(await sameEntry(lowerRoot, before, upperRoot, node))) changed.add(path);
  }
  for (const path of [...changed]) {
    for (let slash = path.lastIndexOf('/'); slash > 0; slash = path.lastIndexOf('/', slash - 1)) changed.add(path.slice(0, slash));
  }
  const whiteouts: string[] = [];
  for (const path of lower.keys()) {
    if (upper.has(path)) continue;
    const slash = path.lastIndexOf('/');
    const parent = slash < 0 ? '' : path.slice(0, slash);
    if (parent === '' || upper.get(parent)?.stat.isDirectory()) whiteouts.push(path);
  }
  // Keep the walk's order (parents first).
  return { nodes: [...upper.values()].filter((n) => changed.has(n.path)), whiteouts };
}

/** Builds (once) and returns the realistic image's OCI layout in `cacheDir`. */
export async function realisticImageLayout(cacheDir: string): Promise<RealisticImage> {
  const layoutDir = join(cacheDir, 'bookworm-python3-v1');
  const summaryPath = `${layoutDir}.json`;
  if (existsSync(join(layoutDir, 'index.json')) && existsSync(summaryPath)) {
    return JSON.parse(await readFile(summaryPath, 'utf8')) as RealisticImage;
  }
  const { base, python } = await rootTrees(cacheDir);
  log('packaging the two layers (gzip) into an OCI layout');
  const started = Date.now();
  const lower = await walk(base);
  const upper = await walk(python);
  const layer1 = await entriesOf(base, [...lower.values()]);
  const d = await diff(base, lower, python, upper);
  const layer2 = await entriesOf(python, d.nodes, d.whiteouts);
  const tars = [await buildTar(layer1), await buildTar(layer2)];

  const tmp = `${layoutDir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  const built = await writeOciLayout(tmp, [
    {
      layers: tars.map((tar) => ({ tar, compression: 'gzip' as const })),
      refName: 'v1',
      config: {
        config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LANG=C.UTF-8'], Cmd: ['python3'], WorkingDir: '/' },
        history: [
          { created: '2024-01-01T00:00:00Z', created_by: 'debootstrap --variant=minbase bookworm' },
          { created: '2024-01-01T00:00:00Z', created_by: 'apt-get install --no-install-recommends python3' },
        ],
      },
    },
  ]);
  const image = built.images[0]!;
  const summary: RealisticImage = {
    layoutDir,
    compressedBytes: image.layers.reduce((n, l) => n + l.blob.length, 0),
    uncompressedBytes: tars.reduce((n, t) => n + t.length, 0),
    layers: image.layers.map((l, i) => ({
      digest: l.descriptor.digest,
      compressedBytes: l.blob.length,
      uncompressedBytes: tars[i]!.length,
      entries: i === 0 ? layer1.length : layer2.length,
      whiteouts: i === 0 ? 0 : d.whiteouts.length,
    })),
    mergedEntries: upper.size,
  };
  await rm(layoutDir, { recursive: true, force: true });
  await rename(tmp, layoutDir);
  await writeFile(summaryPath, `${JSON.stringify(summary, null, 2)}\n`);
  log(`${describeImage(summary)} (packaged in ${((Date.now() - started) / 1000).toFixed(0)} s)`);
  return summary;
}

export function describeImage(image: RealisticImage): string {
  const mib = (n: number) => `${(n / (1 << 20)).toFixed(1)} MiB`;
  return (
    `Debian bookworm minbase + python3: ${mib(image.compressedBytes)} compressed (${mib(image.uncompressedBytes)} of tar), ${image.mergedEntries} entries in the rootfs; ` +
    image.layers.map((l, i) => `layer ${i + 1} ${mib(l.compressedBytes)} gzip, ${l.entries} entries${l.whiteouts ? ` (${l.whiteouts} whiteouts)` : ''}`).join(', ')
  );
}

import { mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MNT_DETACH, native } from '../native.js';
import { processAlive } from '../process-alive.js';
import { unmount } from './mounts.js';
import type { FsTree } from '../fs/tree.js';

/**
 * A standby's warm-up (design.md, "Starting fast"): before it offers itself,
 * it mounts a made-up eStargz image (warm-image.ts) from a registry of its
 * own on 127.0.0.1, reads files through FUSE, unmounts, and mounts it again
 * from what the first mount kept (its recorded profile, the cached merged
 * tree), in a store of its own that it then removes.
 *
 * Loading modules is not enough: V8 compiles a function when it first runs
 * and optimizes it only after many runs, so the first mount of a process ran
 * the registry client, TOC parsing, the merge, the tree and the read path in
 * the interpreter. Measured on this machine (2 cores, page cache dropped
 * before each): the same image's first mount in a process took 400-430 ms,
 * the next ones 160-170 ms. A warm-up costs the standby about a second of
 * CPU at the lowest priority, before anyone waits on it.
 *
 * A warm-up that fails costs nothing but its warmth. A standby stopped
 * (SIGTERM) during one detaches its mounts and removes its directory before
 * it exits; one killed outright leaves them (a dead FUSE mount) behind, and
 * the next warm-up removes those of processes that are gone.
 */
export async function warmUp(under: string): Promise<void> {
  const saved = process.env.LAZYROOT_TRACE;
  delete process.env.LAZYROOT_TRACE; // the warm-up's phases are nobody's trace
  let dir: string | undefined;
  // Stopped while warming up: its mounts detached and its directory removed before it exits. Killed
  // as before, it left a FUSE mount in a directory whoever stopped it then failed to remove (EBUSY).
  // Then the signal is raised again, our listener (once) gone: the process ends as SIGTERM ends
  // it (killed by the signal, as its parent expects), not by an exit code chosen here.
  // The warm-up's own code goes on meanwhile (its reads failing, its unmount writing caches, which
  // makes its directories again: a directory was left so once in CI): it is let end, for a bounded
  // while, and what it left is removed too.
  let work: Promise<void> | undefined;
  const stop = () =>
    void removeWarmUp(dir)
      .then(() => Promise.race([work?.catch(() => undefined), new Promise((resolve) => setTimeout(resolve, stopGraceMs))]))
      .then(() => removeWarmUp(dir))
      .finally(() => process.kill(process.pid, 'SIGTERM'));
  process.once('SIGTERM', stop);
  try {
    await mkdir(under, { recursive: true, mode: 0o700 });
    await removeAbandoned(under);
    dir = await mkdtemp(join(under, `${prefix}${process.pid}-`));
    work = mountTwice(dir);
    await work;
  } catch {
    // warmth lost, nothing else
  } finally {
    process.off('SIGTERM', stop);
    if (dir) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    if (saved !== undefined) process.env.LAZYROOT_TRACE = saved;
  }
}

/** How long a stopped warm-up's own code is let run on before the directory is removed again and the process ends. */
const stopGraceMs = 2_000;

/** A warm-up's directory gone at once: its FUSE mounts detached first (never a walk into a mount this process serves). */
async function removeWarmUp(dir: string | undefined): Promise<void> {
  if (!dir) return;
  for (const entry of await readdir(dir).catch(() => [])) {
    if (entry.startsWith('mnt')) await native().umountAsync(join(dir, entry), MNT_DETACH).catch(() => undefined);
  }
  await rm(dir, { recursive: true, force: true }).catch(() => undefined);
}

const prefix = 'warm-';

async function mountTwice(dir: string): Promise<void> {
  const [{ Store }, { mountImageLazily }, { serveWarmImage }, { flushCacheWrites }] = await Promise.all([
    import('../store/store.js'),
    import('./lazy-mount.js'),
    import('./warm-image.js'),
    import('./mount-cache.js'),
  ]);
  const image = await serveWarmImage();
  const store = await Store.open(join(dir, 'store'));
  try {
    await exerciseFirstMountStages(image.layerBlobs);
    for (let round = 0; round < 2; round++) {
      const mountpoint = join(dir, `mnt${round}`);
      await mkdir(mountpoint);
      const mounted = await mountImageLazily(store, image.ref, mountpoint, {
        // insecure: HTTPS is tried first, as for a registry named --insecure, which warms the TLS client too.
        registry: { insecure: true },
        prefetch: round === 1,
        prefetchDelayMs: 0,
        readAtMount: ['etc/passwd', 'etc/group'],
      });
      try {
        await readTree(mountpoint, image.files);
      } finally {
        await mounted.unmount();
        // Written now, as serveMount does at unmount: a write still scheduled would make its directories again after the removal.
        await flushCacheWrites();
      }
    }
  } finally {
    store.close();
    await image.close();
  }
}

/**
 * How many times the CPU-bound stages of a first mount run before the
 * mounts: V8 optimizes a function fully only after many runs. Measured on
 * the bench image's 6,661-entry TOC after N parses of a 1,566-entry one:
 * its parse took 63-66 ms after 1-6, 53 ms after 10, 39 ms after 20 (39-44
 * ms is what it takes once hot); the merge and tree of the 8,228-entry image
 * 62-64 ms after one smaller merge, 9.5 ms after five; the fetch units of
 * its 5,217-member layer 28 ms cold, 4 ms after five. The warm-up's one
 * mount alone left a standby's first mount paying that: in traces through
 * containerd the tree took 49-65 ms before, 17-44 ms after. In `run --lazy`
 * the gain is smaller than warmth alone promises: there the scavenges of a
 * growing heap (4-11 ms each in a --trace-gc of the daemon) and two busy
 * cores weigh as much.
 */
const stageRounds = 20;

/**
 * Parses the warm image's TOCs, builds what each layer's first read needs
 * (its fetch units, its chunks in blob order), merges the layers and builds
 * the FUSE tree, in memory, `stageRounds` times: what a first mount does on
 * the main thread between its TOCs' arrival and its first read. Yields
 * between rounds; returns the last tree built.
 */
export async function exerciseFirstMountStages(blobs: readonly Buffer[], rounds = stageRounds): Promise<FsTree | undefined> {
  const [{ readEstargzIndex }, { mergeLayerTree }, { buildTree }, { memberUnits }, { EstargzChunkCache }, { EstargzHeaderCheck }] = await Promise.all([
    import('../index/estargz/toc.js'),
    import('../union/merge.js'),
    import('../fs/tree.js'),
    import('./layers/estargz.js'),
    import('../index/estargz/reader.js'),
    import('../index/estargz/header-check.js'),
  ]);
  const cache = new EstargzChunkCache(1 << 20);
  let tree: FsTree | undefined;
  for (let round = 0; round < rounds; round++) {
    const indexes = [];
    for (const blob of blobs) {
      const reader = { size: blob.length, read: async (start: number, end: number) => blob.subarray(start, end) };
      const index = await readEstargzIndex(reader);
      // What a layer's first read builds: its fetch units, and the blob order of its chunks (the tar header check).
      memberUnits(index, blob.length, 'warm-up', cache, () => undefined);
      new EstargzHeaderCheck(index, reader, 'warm-up').bytesFrom(index.chunks.keys().next().value ?? '');
      indexes.push(index);
    }
    tree = buildTree(mergeLayerTree(indexes.map((index) => index.entries)));
    await new Promise((resolve) => setImmediate(resolve));
  }
  return tree;
}

/** What a starting program does: stats, directory listings, whole small files. */
async function readTree(root: string, files: readonly string[]): Promise<void> {
  for (const name of (await readdir(join(root, 'usr/lib'))).slice(0, 8)) await readdir(join(root, 'usr/lib', name));
  for (const file of files) {
    await stat(join(root, file));
    await readFile(join(root, file));
  }
}

/** Warm-up directories of standbys that died in one: their dead FUSE mounts unmounted, then removed. */
async function removeAbandoned(under: string): Promise<void> {
  for (const name of await readdir(under)) {
    const pid = name.startsWith(prefix) ? Number(name.slice(prefix.length).split('-')[0]) : NaN;
    if (!Number.isInteger(pid) || pid === process.pid || processAlive(pid)) continue;
    const dir = join(under, name);
    for (const entry of await readdir(dir).catch(() => [])) {
      if (entry.startsWith('mnt')) await unmount(join(dir, entry)).catch(() => undefined);
    }
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

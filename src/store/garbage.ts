import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isDigest, type Digest } from '../oci/digest.js';
import { processAlive } from '../process-alive.js';
import type { BlobStore } from './blob-store.js';
import type { MetadataDb } from './metadata-db.js';
import type { StorePaths } from './paths.js';

/** What one garbage collection removed. */
export interface Garbage {
  /** Whole blobs removed from blobs/ (with their rows). */
  blobs: Digest[];
  /** Partly fetched blobs removed from partial/, with their range rows. */
  partialBlobs: Digest[];
  /** Layer blobs whose index files (span index, a zstd layer's decompressed tar) were removed from indexes/. */
  indexes: Digest[];
}

/** A file under `<dir>/<algorithm>/` named by a digest's hex, plus a suffix (`.local`, `.tar`, `.tar.PID.tmp`). */
interface DigestFile {
  path: string;
  digest: Digest;
  suffix: string;
  /** For a temp file: the process writing it. */
  writerPid?: number;
}

async function digestFiles(dir: string): Promise<DigestFile[]> {
  const out: DigestFile[] = [];
  for (const algorithm of ['sha256', 'sha512']) {
    for (const name of await readdir(join(dir, algorithm)).catch(() => [] as string[])) {
      const m = /^([0-9a-f]+)(.*)$/.exec(name);
      const digest = m && `${algorithm}:${m[1]}`;
      if (!m || !isDigest(digest)) continue; // not a name the store gives: leave it alone
      const tmp = /\.(\d+)\.tmp$/.exec(m[2]!);
      out.push({ path: join(dir, algorithm, name), digest: digest!, suffix: m[2]!, ...(tmp ? { writerPid: Number(tmp[1]) } : {}) });
    }
  }
  return out;
}

/**
 * Removes what no image and no live lease references any more: layer rows,
 * blobs (rows and files, files a killed process left without a row too),
 * partial blobs and their range rows, and per-layer index files. Partial
 * blobs and indexes are keyed by their layer blob's digest, so "referenced"
 * means the same for all of them: named by a layer of an image in the store,
 * or held by a lease. A mount daemon holds a lease on its image's blobs for as
 * long as it serves the mount, and images used by a rootfs or a live mount are
 * never removed, so nothing a live mount or rootfs reads goes. Caller holds
 * the store lock.
 */
export async function collectGarbage(paths: StorePaths, db: MetadataDb, blobStore: BlobStore): Promise<Garbage> {
  db.pruneLayers();
  const used = db.referencedBlobs();
  const garbage: Garbage = { blobs: [], partialBlobs: [], indexes: [] };

  const rows = new Set<Digest>();
  for (const { digest } of db.knownBlobs()) {
    rows.add(digest);
    if (used.has(digest)) continue;
    db.forgetBlob(digest);
    await blobStore.remove(digest);
    garbage.blobs.push(digest);
  }
  for (const file of await digestFiles(join(paths.root, 'blobs'))) {
    if (file.suffix !== '' || used.has(file.digest) || rows.has(file.digest)) continue;
    await rm(file.path, { force: true });
    garbage.blobs.push(file.digest);
  }

  const partial = new Set<Digest>();
  for (const file of await digestFiles(join(paths.root, 'partial'))) {
    if (file.suffix !== '' || used.has(file.digest)) continue;
    // Rows first: a range map without its file would claim bytes that are gone.
    db.setBlobRanges(file.digest, []);
    await rm(file.path, { force: true });
    partial.add(file.digest);
  }
  for (const digest of db.rangeDigests()) {
    if (used.has(digest) || partial.has(digest)) continue;
    db.setBlobRanges(digest, []);
    partial.add(digest);
  }
  garbage.partialBlobs = [...partial];

  const indexes = new Set<Digest>();
  for (const file of await digestFiles(join(paths.root, 'indexes'))) {
    if (used.has(file.digest)) continue;
    if (file.writerPid !== undefined && processAlive(file.writerPid)) continue;
    await rm(file.path, { force: true });
    // `.tree` and `.profile`: an image's merged tree and access profile (mount/), named by the image: not layer indexes.
    if (file.suffix !== '.tree' && file.suffix !== '.profile') indexes.add(file.digest);
  }
  garbage.indexes = [...indexes];
  await sweepTempFiles(paths.tmp);
  return garbage;
}

/**
 * Removes the temp files of whole-file writes (`writeFileAtomic`: `NAME.PID.RAND.tmp`) whose
 * writer is gone: a process killed between writing and renaming leaves one behind, and nothing
 * else would ever remove it. Downloads (`.download`) stay: the next pull resumes them.
 */
async function sweepTempFiles(tmpDir: string): Promise<void> {
  for (const name of await readdir(tmpDir).catch(() => [] as string[])) {
    const m = /\.(\d+)\.[0-9a-f]{8}\.tmp$/.exec(name);
    if (!m || processAlive(Number(m[1]))) continue;
    await rm(join(tmpDir, name), { force: true });
  }
}

import { createCipheriv, createHash } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pushToRegistry } from '../test/helpers/image-builder.js';
import { removeStore } from './lazy-bench.js';
import { capture, mountsUnder } from './system.js';
import { dropCaches, median, timeCommand } from './measure.js';
import type { BenchContext, BenchRow } from './types.js';

const GiB = 1 << 30;
const MiB = 1 << 20;
const fileSize = GiB;
const filePath = 'data/big';

/** ustar header for one regular file (the layer has just `data/` and this file). */
function ustarHeader(name: string, size: number, type: '0' | '5', mode: number): Buffer {
  const h = Buffer.alloc(512);
  const put = (text: string, at: number, len: number) => h.write(text, at, len, 'latin1');
  const octal = (n: number, len: number) => n.toString(8).padStart(len - 1, '0');
  put(name, 0, 100);
  put(octal(mode, 8), 100, 8);
  put(octal(0, 8), 108, 8);
  put(octal(0, 8), 116, 8);
  put(octal(size, 12), 124, 12);
  put(octal(1_700_000_000, 12), 136, 12);
  put('        ', 148, 8);
  put(type, 156, 1);
  put('ustar\u0000', 257, 6);
  put('00', 263, 2);
  let sum = 0;
  for (const b of h) sum += b;
  put(`${octal(sum, 7)}\u0000 `, 148, 8);
  return h;
}

/**
 * An image with one uncompressed layer holding a 1 GiB incompressible file
 * (AES-CTR keystream from a fixed key: deterministic, so the digests stay the
 * same across runs). Uncompressed, so the read path measures FUSE and the
 * store rather than inflate. Streamed to disk; kept in the cache.
 */
async function bigFileLayout(cacheDir: string): Promise<string> {
  const dir = join(cacheDir, 'big-file-v1');
  if (existsSync(join(dir, 'index.json'))) return dir;
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(join(tmp, 'blobs', 'sha256'), { recursive: true });
  const layerTmp = join(tmp, 'layer.tar');
  const out = createWriteStream(layerTmp);
  const hash = createHash('sha256');
  const write = async (b: Buffer) => {
    hash.update(b);
    if (!out.write(b)) await new Promise<void>((r) => out.once('drain', () => r()));
  };
  await write(ustarHeader('data/', 0, '5', 0o755));
  await write(ustarHeader(filePath, fileSize, '0', 0o644));
  const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16, 0));
  const zeros = Buffer.alloc(4 * MiB);
  for (let done = 0; done < fileSize; done += zeros.length) await write(cipher.update(zeros));
  await write(Buffer.alloc(1024)); // end of archive (the file is a multiple of 512)
  await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
  const layerDigest = `sha256:${hash.digest('hex')}`;
  const layerSize = (await stat(layerTmp)).size;
  await rename(layerTmp, join(tmp, 'blobs', 'sha256', layerDigest.slice(7)));

  const blob = async (bytes: Buffer) => {
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    await writeFile(join(tmp, 'blobs', 'sha256', digest.slice(7)), bytes);
    return { digest, size: bytes.length };
  };
  const config = await blob(
    Buffer.from(
      JSON.stringify({
        created: '2024-01-01T00:00:00Z',
        architecture: 'amd64',
        os: 'linux',
        config: { Cmd: ['/bin/sh'] },
        rootfs: { type: 'layers', diff_ids: [layerDigest] },
      }),
    ),
  );
  const manifest = await blob(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layerSize }],
      }),
    ),
  );
  await writeFile(join(tmp, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(
    join(tmp, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }],
    }),
  );
  await rename(tmp, dir);
  return dir;
}

/** `dd` the file with 1 MiB reads into /dev/null, cold page cache. */
async function timedRead(path: string): Promise<number> {
  await dropCaches();
  return (await timeCommand(['dd', `if=${path}`, 'of=/dev/null', 'bs=1M'])).seconds;
}

/**
 * Sequential read of a 1 GiB incompressible file: through the lazy FUSE
 * mount once its bytes are local (read once first, which fetches them from
 * the loopback registry), through `create --lazy` once every blob is local
 * (which then takes kernel overlayfs), and from a kernel overlayfs rootfs
 * (`lazyroot create`, layer unpacked to disk). Page cache
 * dropped before every timed read; median of the rounds.
 */
export async function readThroughputBench(ctx: BenchContext): Promise<BenchRow[]> {
  const layout = await bigFileLayout(ctx.cacheDir);
  await pushToRegistry(layout, 'bench/big:v1', ctx.registryHost, { layoutRef: 'v1' });
  const ref = `docker://${ctx.registryHost}/bench/big:v1`;
  const store = await mkdtemp(join(ctx.workDir, 'read-'));
  const lz = (...args: string[]) => [process.execPath, ctx.lazyrootBin, '--store', store, ...args];
  const mountpoint = join(store, 'mnt');
  const times: Record<'fuse' | 'fuseOverlay' | 'overlay', number[]> = { fuse: [], fuseOverlay: [], overlay: [] };
  let firstRead = 0;
  try {
    // The FUSE mount itself. Building the tar index streams the layer once (untimed).
    await mkdir(mountpoint);
    await capture(lz('mount', ref, mountpoint), 'lazyroot mount (read throughput)');
    try {
      firstRead = await timedRead(join(mountpoint, filePath));
      const stats = JSON.parse(await capture(lz('--json', 'mount', '--stats', mountpoint))) as { layers: Array<{ present: number; size: number }> };
      const layer = stats.layers[0]!;
      if (layer.present !== layer.size) throw new Error(`bench: after reading ${filePath} once, ${layer.present} of ${layer.size} bytes are local`);
      for (let round = 0; round < ctx.rounds; round++) times.fuse.push(await timedRead(join(mountpoint, filePath)));
    } finally {
      await capture(lz('umount', mountpoint), 'lazyroot umount');
    }

    // `create --lazy` (what `run --lazy` gives a container) now that every byte is in the store:
    // it takes kernel overlayfs (checked), reading at disk speed.
    const lazySpec = JSON.parse(await capture(lz('create', '--lazy', ref, 'lazy-read'), 'lazyroot create --lazy')) as { root: { path: string } };
    try {
      const listed = JSON.parse(await capture(lz('--json', 'list'))) as Array<{ id: string; driver: string }>;
      const driver = listed.find((r) => r.id === 'lazy-read')?.driver;
      if (driver !== 'overlay') throw new Error(`bench: create --lazy with every blob local made a ${driver} rootfs, expected kernel overlayfs`);
      for (let round = 0; round < ctx.rounds; round++) times.fuseOverlay.push(await timedRead(join(lazySpec.root.path, filePath)));
    } finally {
      await capture(lz('delete', 'lazy-read'), 'lazyroot delete');
    }

    // Kernel overlayfs over the unpacked layer.
    const spec = JSON.parse(await capture(lz('create', ref, 'overlay-read'), 'lazyroot create')) as { root: { path: string } };
    try {
      for (let round = 0; round < ctx.rounds; round++) times.overlay.push(await timedRead(join(spec.root.path, filePath)));
    } finally {
      await capture(lz('delete', 'overlay-read'), 'lazyroot delete');
    }
  } finally {
    if ((await mountsUnder(mountpoint)).length) await capture(lz('umount', mountpoint)).catch(() => undefined);
    await removeStore(ctx.lazyrootBin, store);
  }

  const scenario = 'sequential read, 1 GiB incompressible file, uncompressed layer (dd bs=1M, cold page cache)';
  const overlay = median(times.overlay);
  const rate = (s: number) => `${(fileSize / MiB / s).toFixed(0)} MiB/s`;
  return [
    { scenario, tool: 'lazyroot mount (FUSE), bytes local', seconds: median(times.fuse), ratio: median(times.fuse) / overlay, note: rate(median(times.fuse)) },
    { scenario, tool: 'lazyroot create --lazy, bytes local (takes kernel overlayfs)', seconds: median(times.fuseOverlay), ratio: median(times.fuseOverlay) / overlay, note: rate(median(times.fuseOverlay)) },
    { scenario, tool: 'lazyroot create (kernel overlayfs)', seconds: overlay, ratio: 1, note: `peer; ${rate(overlay)}` },
    { scenario, tool: 'lazyroot mount (FUSE), first read', seconds: firstRead, ratio: firstRead / overlay, note: `${rate(firstRead)}; fetches from the loopback registry; one sample` },
  ];
}

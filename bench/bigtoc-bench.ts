/**
 * `bigtoc`: mount time and mount-daemon memory for a one-layer eStargz image
 * whose TOC lists very many entries (200,000 and 1,000,000): tiny files
 * (every tenth holds one byte, the rest are empty) in directories of 1,000.
 *
 * The blob is built by the project's eStargz writer (test/helpers/estargz.ts
 * buildEstargz over tar-builder entries), laid out with the image builder
 * (test/helpers/image-builder.ts, the TOC digest annotation on the layer) and
 * kept in .bench-cache; each run pushes it to the loopback registry.
 *
 * Each size, each round: fresh store, page cache dropped, no standby daemon
 * (LAZYROOT_STANDBY=0), `lazyroot --json mount --no-prefetch`; measured: the
 * mount command's wall time, the daemon's mountMillis / mountCpuMillis
 * (`mount --stats --json`), the daemon's peak RSS (VmHWM of /proc/PID/status)
 * once mounted and again after listing the whole tree (`find MNT | wc -l`,
 * which checks the entry count).
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { buildEstargz } from '../test/helpers/estargz.js';
import { pushToRegistry, writeOciLayout } from '../test/helpers/image-builder.js';
import { dir, file, type TarEntry } from '../test/helpers/tar-builder.js';
import { removeStore } from './lazy-bench.js';
import { dropCaches, median } from './measure.js';
import { capture } from './system.js';
import type { BenchContext } from './types.js';

/** BENCH_BIGTOC_FILES=200000 picks sizes (comma-separated); default both. */
const SIZES = process.env.BENCH_BIGTOC_FILES ? process.env.BENCH_BIGTOC_FILES.split(',').map(Number) : [200_000, 1_000_000];
const PER_DIR = 1000;
const TOC_DIGEST = 'containerd.io/snapshot/stargz/toc.digest';

/** Entries in the merged tree: the directories and the files. */
const entriesOf = (files: number) => files + Math.ceil(files / PER_DIR);

/** The OCI layout (ref `v1`) of the image with `files` tiny files, built once into the cache. */
async function bigTocLayout(ctx: BenchContext, files: number): Promise<string> {
  const layoutDir = join(ctx.cacheDir, `bigtoc-${files}-v1`);
  if (existsSync(join(layoutDir, 'index.json'))) return layoutDir;
  process.stderr.write(`bench: bigtoc: building an eStargz layer of ${files} files with buildEstargz (once; cached in ${layoutDir})\n`);
  const started = Date.now();
  const entries: TarEntry[] = [];
  for (let d = 0; d * PER_DIR < files; d++) {
    const name = `d${String(d).padStart(4, '0')}`;
    entries.push(dir(name));
    for (let f = 0; f < PER_DIR && d * PER_DIR + f < files; f++) entries.push(file(`${name}/f${String(f).padStart(3, '0')}`, f % 10 === 0 ? String(f % 7) : ''));
  }
  const built = await buildEstargz(entries);
  entries.length = 0;
  const diffId = `sha256:${createHash('sha256').update(gunzipSync(built.blob)).digest('hex')}`;
  const buildSeconds = (Date.now() - started) / 1000;
  const tmp = `${layoutDir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await writeOciLayout(tmp, [
    {
      layers: [{ tar: Buffer.alloc(0), compression: 'gzip', blob: built.blob, annotations: { [TOC_DIGEST]: built.tocDigest } }],
      config: { rootfs: { type: 'layers', diff_ids: [diffId] } },
      refName: 'v1',
    },
  ]);
  await writeFile(join(tmp, 'bigtoc.json'), JSON.stringify({ files, entries: entriesOf(files), blobBytes: built.blob.length, tocJsonBytes: built.tocJson.length, tocRecords: built.toc.entries.length, buildSeconds }));
  await rename(tmp, layoutDir);
  process.stderr.write(`bench: bigtoc: ${files} files built in ${buildSeconds.toFixed(0)} s (blob ${(built.blob.length / 2 ** 20).toFixed(1)} MiB, TOC JSON ${(built.tocJson.length / 2 ** 20).toFixed(1)} MiB)\n`);
  return layoutDir;
}

interface BigTocSample {
  wallSeconds: number;
  mountMillis: number;
  mountCpuMillis: number;
  hwmMountedMiB: number;
  hwmListedMiB: number;
  listSeconds: number;
}

async function vmHwmMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = Number(/^VmHWM:\s+(\d+) kB/m.exec(status)?.[1]);
  if (!Number.isFinite(kib)) throw new Error(`bench: bigtoc: no VmHWM in /proc/${pid}/status`);
  return kib / 1024;
}

function markdown(header: string[], cells: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => `| ${c.map((x, i) => x.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...cells.map(line)].join('\n');
}

export async function bigTocBench(ctx: BenchContext): Promise<{ table: string; goals: string[] }> {
  const node = process.execPath;
  const lz = (store: string, ...args: string[]) => [node, ctx.lazyrootBin, '--store', store, ...args];
  const standbyDir = join(ctx.workDir, 'bigtoc-standby');
  await mkdir(standbyDir, { recursive: true, mode: 0o700 });
  const env: NodeJS.ProcessEnv = { ...process.env, LAZYROOT_STANDBY: '0', LAZYROOT_STANDBY_DIR: standbyDir };
  const cells: string[][] = [];
  const goals: string[] = [];
  for (const files of SIZES) {
    const layout = await bigTocLayout(ctx, files);
    const info = JSON.parse(await readFile(join(layout, 'bigtoc.json'), 'utf8')) as { blobBytes: number; tocJsonBytes: number; tocRecords: number };
    const repoTag = `bench/bigtoc-${files}:v1`;
    await pushToRegistry(layout, repoTag, ctx.registryHost, { layoutRef: 'v1' });
    const samples: BigTocSample[] = [];
    for (let round = 0; round < ctx.rounds; round++) {
      process.stderr.write(`bench: bigtoc ${files}: round ${round + 1} of ${ctx.rounds}\n`);
      const store = await mkdtemp(join(ctx.workDir, 'bigtoc-'));
      const mnt = join(store, 'mnt');
      await mkdir(mnt);
      try {
        await dropCaches();
        const started = process.hrtime.bigint();
        const out = await capture(lz(store, '--json', 'mount', '--no-prefetch', `docker://${ctx.registryHost}/${repoTag}`, mnt), `bigtoc: lazyroot mount, ${files} files`, env);
        const wallSeconds = Number(process.hrtime.bigint() - started) / 1e9;
        const { pid } = JSON.parse(out) as { pid: number };
        const hwmMountedMiB = await vmHwmMiB(pid);
        const stats = JSON.parse(await capture(lz(store, '--json', 'mount', '--stats', mnt))) as { mountMillis?: number; mountCpuMillis?: number };
        const listStarted = process.hrtime.bigint();
        const listed = Number((await capture(['bash', '-c', 'set -o pipefail; find "$1" -mindepth 1 | wc -l', 'list', mnt])).trim());
        const listSeconds = Number(process.hrtime.bigint() - listStarted) / 1e9;
        if (listed !== entriesOf(files)) throw new Error(`bench: bigtoc: the mount lists ${listed} entries, expected ${entriesOf(files)}`);
        const hwmListedMiB = await vmHwmMiB(pid);
        samples.push({ wallSeconds, mountMillis: stats.mountMillis ?? NaN, mountCpuMillis: stats.mountCpuMillis ?? NaN, hwmMountedMiB, hwmListedMiB, listSeconds });
      } finally {
        await removeStore(ctx.lazyrootBin, store);
      }
    }
    const med = (f: (s: BigTocSample) => number) => median(samples.map(f));
    const wall = med((s) => s.wallSeconds);
    const hwm = med((s) => s.hwmMountedMiB);
    cells.push([
      files.toLocaleString('en-US'),
      info.tocRecords.toLocaleString('en-US'),
      `${(info.blobBytes / 2 ** 20).toFixed(1)} / ${(info.tocJsonBytes / 2 ** 20).toFixed(1)}`,
      wall.toFixed(2),
      `${(med((s) => s.mountMillis) / 1000).toFixed(2)} / ${(med((s) => s.mountCpuMillis) / 1000).toFixed(2)}`,
      hwm.toFixed(0),
      med((s) => s.listSeconds).toFixed(2),
      med((s) => s.hwmListedMiB).toFixed(0),
    ]);
    if (files === 200_000) {
      goals.push(`bigtoc: 200,000 entries mounted in ${wall.toFixed(2)} s with ${hwm.toFixed(0)} MiB daemon peak RSS; ≤ 3 s with ≤ 200 MB daemon memory: ${wall <= 3 && hwm * 2 ** 20 <= 200e6 ? 'met' : 'MISSED'}`);
    } else {
      goals.push(`bigtoc: ${files.toLocaleString('en-US')} entries mounted in ${wall.toFixed(2)} s with ${hwm.toFixed(0)} MiB daemon peak RSS (reported, no goal)`);
    }
  }
  const title =
    `Big eStargz TOC: one-layer image of tiny files (every tenth 1 byte, the rest empty) in directories of ${PER_DIR}, built with buildEstargz; ` +
    `fresh store, dropped page cache, \`lazyroot mount --no-prefetch\`, no standby daemon (LAZYROOT_STANDBY=0); median of ${ctx.rounds}`;
  const header = ['files', 'TOC records', 'blob / TOC JSON MiB', 'mount wall s', 'daemon mount s / CPU s', 'daemon VmHWM MiB', '`find` s', 'VmHWM after find MiB'];
  return { table: `${title}\n\n${markdown(header, cells)}`, goals };
}

/**
 * `readers`: 16 concurrent readers hash every regular file of a cold lazy
 * mount of the realistic image while the background prefetch (on, the
 * default) runs too, for eStargz and for gzip + a prebuilt span index.
 *
 * Each round and variant: a fresh store (gzip: `indexes/` of a store where
 * `lazyroot index` ran copied in, as the lazy bench does), page cache dropped,
 * no standby mount daemon (LAZYROOT_STANDBY=0: the mount daemon starts cold).
 * Timed from the start of `lazyroot mount` until
 *   find MNT -type f -print0 | xargs -0 -P 16 -n 32 sha256sum
 * has hashed every file (checked: as many hashes as regular files); the
 * daemon's own counts of bytes fetched on demand and by prefetch are read then.
 */
import { cp, mkdir, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { removeStore, type LazyImages } from './lazy-bench.js';
import { dropCaches, median } from './measure.js';
import { capture } from './system.js';
import type { BenchContext } from './types.js';

interface ReaderVariant {
  name: string;
  repoTag: 'gzip' | 'estargz';
  prebuiltIndex: boolean;
}

const variants: ReaderVariant[] = [
  { name: 'eStargz (ctr-remote)', repoTag: 'estargz', prebuiltIndex: false },
  { name: 'gzip + prebuilt index', repoTag: 'gzip', prebuiltIndex: true },
];

interface ReaderSample {
  seconds: number;
  mountSeconds: number;
  files: number;
  bytesFetched: number;
  bytesPrefetched: number;
  complete: boolean;
}

const MiB = 1 << 20;
const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;

function markdown(header: string[], cells: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => `| ${c.map((x, i) => x.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...cells.map(line)].join('\n');
}

export const READERS = 16;

export async function readersBench(ctx: BenchContext, images: LazyImages): Promise<{ table: string; goals: string[] }> {
  const node = process.execPath;
  const lz = (store: string, ...args: string[]) => [node, ctx.lazyrootBin, '--store', store, ...args];
  const standbyDir = join(ctx.workDir, 'readers-standby');
  await mkdir(standbyDir, { recursive: true, mode: 0o700 });
  const env: NodeJS.ProcessEnv = { ...process.env, LAZYROOT_STANDBY: '0', LAZYROOT_STANDBY_DIR: standbyDir };
  const samples = new Map<string, ReaderSample[]>();
  for (let round = 0; round < ctx.rounds; round++) {
    process.stderr.write(`bench: readers: round ${round + 1} of ${ctx.rounds}\n`);
    for (const v of variants) {
      const store = await mkdtemp(join(ctx.workDir, 'readers-'));
      if (v.prebuiltIndex) await cp(images.indexesDir, join(store, 'indexes'), { recursive: true });
      const mnt = join(store, 'mnt');
      await mkdir(mnt);
      try {
        await dropCaches();
        const started = process.hrtime.bigint();
        await capture(lz(store, '--quiet', 'mount', `docker://${ctx.registryHost}/${images[v.repoTag]}`, mnt), `readers: lazyroot mount, ${v.name}`, env);
        const mountSeconds = Number(process.hrtime.bigint() - started) / 1e9;
        const hashed = await capture(
          ['bash', '-c', `set -o pipefail; find "$1" -type f -print0 | xargs -0 -P ${READERS} -n 32 sha256sum | wc -l`, 'readers', mnt],
          `readers: ${READERS} sha256sum readers, ${v.name}`,
        );
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        const stats = JSON.parse(await capture(lz(store, '--json', 'mount', '--stats', mnt))) as { bytesFetched: number; bytesPrefetched: number; complete: boolean };
        // Counted after the timing (warm): one character per regular file, whatever its name holds.
        const files = Number((await capture(['bash', '-c', 'find "$1" -type f -printf x | wc -c', 'count', mnt])).trim());
        const hashes = Number(hashed.trim());
        if (hashes !== files) throw new Error(`bench: readers, ${v.name}: ${hashes} hashes for ${files} regular files`);
        samples.set(v.name, [...(samples.get(v.name) ?? []), { seconds, mountSeconds, files, bytesFetched: stats.bytesFetched, bytesPrefetched: stats.bytesPrefetched, complete: stats.complete }]);
      } finally {
        await removeStore(ctx.lazyrootBin, store);
      }
    }
  }
  const med = (name: string, f: (s: ReaderSample) => number) => median(samples.get(name)!.map(f));
  const cells = variants.map((v) => {
    const s = samples.get(v.name)!;
    return [
      v.name,
      med(v.name, (x) => x.seconds).toFixed(2),
      med(v.name, (x) => x.mountSeconds).toFixed(2),
      String(s[0]!.files),
      mib(med(v.name, (x) => x.bytesFetched)),
      mib(med(v.name, (x) => x.bytesPrefetched)),
      `${s.filter((x) => x.complete).length}/${s.length}`,
    ];
  });
  const esgz = med(variants[0]!.name, (x) => x.seconds);
  const gz = med(variants[1]!.name, (x) => x.seconds);
  const ratio = esgz / gz;
  const title =
    `Cold lazy mount, ${READERS} concurrent readers hashing every regular file (find | xargs -P ${READERS} -n 32 sha256sum), prefetch on, ` +
    `no standby daemon (LAZYROOT_STANDBY=0), fresh store and dropped page cache per run; seconds from \`lazyroot mount\` start to all hashed; median of ${ctx.rounds}`;
  const table = `${title}\n\n${markdown(['variant', 'seconds', 'mount s', 'files', 'fetched on demand', 'prefetched', 'blob complete at end'], cells)}`;
  const goals = [`readers: eStargz / gzip + index = ${ratio.toFixed(2)}× (${esgz.toFixed(2)} s vs ${gz.toFixed(2)} s); eStargz within 1.5× of gzip + index: ${ratio <= 1.5 ? 'met' : 'MISSED'}`];
  return { table, goals };
}

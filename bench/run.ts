import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRegistry } from '../test/helpers/registry.js';
import { pullBench } from './pull-bench.js';
import { createRunBench } from './create-run-bench.js';
import { lazyBench, lazyBenchEmulated, prepareLazyImages, type LazyImages } from './lazy-bench.js';
import { readThroughputBench } from './read-throughput-bench.js';
import { readersBench } from './readers-bench.js';
import { bigTocBench } from './bigtoc-bench.js';
import { podmanBench } from './podman-bench.js';
import type { BenchContext, BenchRow } from './types.js';

const repoRoot = resolve(fileURLToPath(import.meta.url), '../../..');

function table(rows: BenchRow[]): string {
  const header = ['scenario', 'tool', 'seconds', 'vs peer', 'note'];
  const cells = rows.map((r) => [r.scenario, r.tool, r.seconds.toFixed(2), `${r.ratio.toFixed(2)}×`, r.note]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => `| ${c.map((x, i) => x.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...cells.map(line)].join('\n');
}

async function main(): Promise<void> {
  const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
  const workDir = await mkdtemp(join(tmpdir(), 'lazyroot-bench-'));
  const registry = await startRegistry();
  try {
    const ctx: BenchContext = {
      repoRoot,
      registryHost: registry.host,
      cacheDir: join(repoRoot, '.bench-cache'),
      workDir,
      // The CLI built with this file (same output dir), not whatever bin/lazyroot.js's dist holds now.
      lazyrootBin: join(dirname(fileURLToPath(import.meta.url)), 'cli.js'),
      lazyrootCommand: join(repoRoot, 'bin', 'lazyroot'),
      rounds,
    };
    // BENCH_ONLY=pull,create,lazy,read,netns,readers,bigtoc,podman picks scenarios (default: all).
    const only = process.env.BENCH_ONLY ? new Set(process.env.BENCH_ONLY.split(',').map((s) => s.trim())) : undefined;
    const wanted = (name: string) => !only || only.has(name);
    const rows: BenchRow[] = [];
    const goals: string[] = [];
    const tables: string[] = [];
    const step = async <T>(name: string, f: () => Promise<T>): Promise<T> => {
      const started = Date.now();
      try {
        return await f();
      } finally {
        process.stderr.write(`bench: ${name} took ${((Date.now() - started) / 1000).toFixed(0)} s\n`);
      }
    };
    if (wanted('pull')) rows.push(...(await step('pull', () => pullBench(ctx))));
    if (wanted('create')) rows.push(...(await step('create + run', () => createRunBench(ctx))));
    let images: LazyImages | undefined;
    if (wanted('lazy') || wanted('netns') || wanted('readers') || wanted('podman')) images = await step('lazy images', () => prepareLazyImages(ctx));
    if (wanted('lazy')) {
      const r = await step('lazy start, loopback', () => lazyBench(ctx, images!));
      tables.push(r.table);
      goals.push(...r.goals);
    }
    if (wanted('read')) rows.push(...(await step('read throughput', () => readThroughputBench(ctx))));
    if (wanted('netns')) {
      const r = await step('lazy start, emulated network', () => lazyBenchEmulated(ctx, images!, registry.storageDir));
      tables.push(r.table);
      goals.push(...r.goals);
    }
    if (wanted('readers')) {
      const r = await step('readers, cold lazy mount', () => readersBench(ctx, images!));
      tables.push(r.table);
      goals.push(...r.goals);
    }
    if (wanted('bigtoc')) {
      const r = await step('big eStargz TOC', () => bigTocBench(ctx));
      tables.push(r.table);
      goals.push(...r.goals);
    }
    if (wanted('podman')) {
      const r = await step('podman, additional layer store', () => podmanBench(ctx, images!));
      tables.push(r.table);
      goals.push(...r.goals);
    }
    if (rows.length) process.stdout.write(`lazyroot benchmarks (median of ${rounds} cold rounds; "vs peer" < 1 means lazyroot is faster)\n\n${table(rows)}\n`);
    for (const t of tables) process.stdout.write(`\n${t}\n`);
    if (goals.length) process.stdout.write(`\n${goals.join('\n')}\n`);
  } finally {
    await registry.stop();
    await rm(workDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`bench: ${(err as Error).stack ?? err}\n`);
  process.exitCode = 1;
});

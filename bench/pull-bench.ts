import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pushToRegistry } from '../test/helpers/image-builder.js';
import { dropCaches, median, timeCommand, type Measurement } from './measure.js';
import { largeImageLayout } from './sample-images.js';
import type { BenchContext, BenchRow } from './types.js';

/**
 * Pull of the large image from the loopback registry: `lazyroot pull` into an
 * empty store against `skopeo copy docker://… oci:…` into an empty layout,
 * alternating, cold page cache, median of the rounds.
 */
export async function pullBench(ctx: BenchContext): Promise<BenchRow[]> {
  const layout = await largeImageLayout(ctx.cacheDir);
  await pushToRegistry(layout, 'bench/large:v1', ctx.registryHost, { layoutRef: 'v1' });
  const ref = `docker://${ctx.registryHost}/bench/large:v1`;
  const runs: Record<string, Measurement[]> = { lazyroot: [], 'lazyroot --verify-diff-ids': [], skopeo: [] };
  for (let round = 0; round < ctx.rounds; round++) {
    for (const tool of Object.keys(runs)) {
      const target = await mkdtemp(join(ctx.workDir, 'pull-'));
      await dropCaches();
      const argv =
        tool === 'skopeo'
          ? ['skopeo', '--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', ref, `oci:${target}/layout:v1`]
          : [process.execPath, ctx.lazyrootBin, 'pull', '--quiet', '--store', target, ...(tool.includes('verify') ? ['--verify-diff-ids'] : []), ref];
      runs[tool]!.push(await timeCommand(argv));
      await rm(target, { recursive: true, force: true });
    }
  }
  const skopeo = median(runs.skopeo!.map((m) => m.seconds));
  return Object.entries(runs).map(([tool, ms]) => {
    const seconds = median(ms.map((m) => m.seconds));
    const rss = ms.map((m) => m.maxRssMiB).filter((x): x is number => x !== undefined);
    return {
      scenario: 'pull 231 MiB, 6 gzip layers, loopback registry',
      tool,
      seconds,
      ratio: tool === 'skopeo' ? 1 : seconds / skopeo,
      note: rss.length ? `peak RSS ${Math.max(...rss).toFixed(0)} MiB` : '',
    };
  });
}

import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { dropCaches, median, timeCommand, type Measurement } from './measure.js';
import { capture } from './system.js';
import { largeImageLayout } from './sample-images.js';
import type { BenchContext, BenchRow } from './types.js';

/**
 * Image already local, nothing unpacked: time until `/bin/true` has finished
 * in runc. lazyroot: `lazyroot run` (create on overlayfs + runc + delete)
 * against `umoci unpack` + `runc run` of the same image from an OCI layout.
 * Between rounds the unpacked layers are removed, so every round is cold.
 */
export async function createRunBench(ctx: BenchContext): Promise<BenchRow[]> {
  const layout = await largeImageLayout(ctx.cacheDir);
  const store = join(ctx.workDir, 'create-store');
  const ref = `oci:${layout}:v1`;
  await timeCommand([process.execPath, ctx.lazyrootBin, 'pull', '--quiet', '--store', store, ref]);
  const runs: Record<string, Measurement[]> = { lazyroot: [], 'umoci + runc': [] };
  for (let round = 0; round < ctx.rounds; round++) {
    await rm(join(store, 'layers'), { recursive: true, force: true });
    await rm(join(store, 'l'), { recursive: true, force: true });
    await dropCaches();
    runs.lazyroot!.push(await timeCommand([process.execPath, ctx.lazyrootBin, 'run', '--store', store, ref, '--', '/bin/true']));

    const bundle = join(ctx.workDir, `umoci-${round}`);
    const id = `bench-${process.pid}-${round}`;
    await mkdir(ctx.workDir, { recursive: true });
    await dropCaches();
    try {
      const unpack = await timeCommand(['umoci', 'unpack', '--image', `${layout}:v1`, bundle]);
      // umoci writes `terminal: true`; with no tty here runc would fail at once. Untimed edit.
      const configPath = join(bundle, 'config.json');
      const config = JSON.parse(await readFile(configPath, 'utf8')) as { process: { terminal?: boolean } };
      config.process.terminal = false;
      await writeFile(configPath, JSON.stringify(config));
      // `runc run` in the foreground deletes the container when it exits; any failure is fatal.
      const runc = await timeCommand(['runc', '--root', `${bundle}.runc`, 'run', '--bundle', bundle, id]);
      runs['umoci + runc']!.push({ seconds: unpack.seconds + runc.seconds, ...(unpack.maxRssMiB !== undefined ? { maxRssMiB: Math.max(unpack.maxRssMiB, runc.maxRssMiB ?? 0) } : {}) });
    } finally {
      await capture(['runc', '--root', `${bundle}.runc`, 'delete', '--force', id]).catch(() => undefined);
      await rm(bundle, { recursive: true, force: true });
      await rm(`${bundle}.runc`, { recursive: true, force: true });
    }
  }
  const peer = median(runs['umoci + runc']!.map((m) => m.seconds));
  return Object.entries(runs).map(([tool, ms]) => {
    const seconds = median(ms.map((m) => m.seconds));
    const rss = ms.map((m) => m.maxRssMiB).filter((x): x is number => x !== undefined);
    return {
      scenario: 'create + /bin/true in runc, 231 MiB image already local',
      tool,
      seconds,
      ratio: seconds / peer,
      note: rss.length ? `peak RSS ${Math.max(...rss).toFixed(0)} MiB` : '',
    };
  });
}

import type { Command } from 'commander';
import { forgetProfile, imageProfile } from '../../index.js';
import { formatBytes, formatTable } from '../format.js';
import { openStore, type GlobalOptions } from '../context.js';
import type { Output } from '../output.js';

export function registerProfile(program: Command, out: Output): void {
  program
    .command('profile')
    .description("show the access profile recorded for an image: the blob ranges its first lazy mount's workload read first, which later mounts fetch at once")
    .argument('<ref>', 'image name or ID in the store')
    .option('--forget', 'remove the profile (the next lazy mount records a new one)')
    .action(async (ref: string, opts: { forget?: boolean }, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      const store = await openStore(global);
      try {
        if (opts.forget) {
          const removed = await forgetProfile(store, ref);
          if (global.json) return out.json({ ref, removed });
          if (!global.quiet) out.text(removed ? `forgot the access profile of ${ref}` : `${ref} has no access profile`);
          return;
        }
        const profile = await imageProfile(store, ref);
        if (global.json) return out.json(profile ?? null);
        if (global.quiet) return;
        if (!profile) return out.text(`${ref} has no access profile yet: its first lazy mount (mount, create/run --lazy) records one`);
        const sum = (ranges: Array<[number, number]>) => ranges.reduce((n, [s, e]) => n + e - s, 0);
        const rows = profile.layers.map((l) => [l.digest.slice(0, 19), String(l.ranges.length), formatBytes(sum(l.ranges)), `${((100 * sum(l.ranges)) / Math.max(1, l.size)).toFixed(1)} %`]);
        out.text(
          [
            `access profile of ${ref} (image ${profile.image.slice(7, 19)}), recorded ${profile.recordedAt} over ${(profile.recordMillis / 1000).toFixed(1)} s`,
            formatTable(['LAYER', 'RANGES', 'BYTES', 'OF BLOB'], rows),
          ].join('\n'),
        );
      } finally {
        store.close();
      }
    });
}

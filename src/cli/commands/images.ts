import type { Command } from 'commander';
import { formatAge, formatBytes, formatTable } from '../format.js';
import { listImages } from '../../index.js';
import { openStore, type GlobalOptions } from '../context.js';
import type { Output } from '../output.js';

export function registerImages(program: Command, out: Output): void {
  program
    .command('images')
    .description('list the images in the store')
    .action(async (_opts, cmd: Command) => {
      const global = cmd.optsWithGlobals<GlobalOptions>();
      const store = await openStore(global);
      try {
        const images = await listImages(store);
        if (global.json) return out.json(images);
        const rows = images.flatMap((i) =>
          (i.names.length ? i.names : ['<none>']).map((name) => [name, i.id.slice(7, 19), i.platform, formatBytes(i.size), formatAge(Date.parse(i.created))]),
        );
        out.text(formatTable(['NAME', 'IMAGE ID', 'PLATFORM', 'SIZE', 'PULLED'], rows));
      } finally {
        store.close();
      }
    });
}

import type { Command } from 'commander';
import { removeImage, type RemovedImage } from '../../index.js';
import { openStore, type GlobalOptions } from '../context.js';
import type { Output } from '../output.js';

function freed(r: RemovedImage): string {
  const parts = [`${r.blobsRemoved.length} blobs freed`];
  if (r.partialBlobsRemoved.length) parts.push(`${r.partialBlobsRemoved.length} partly fetched blobs`);
  if (r.indexesRemoved.length) parts.push(`${r.indexesRemoved.length} layer indexes`);
  return parts.join(', ');
}

export function registerRmi(program: Command, out: Output): void {
  program
    .command('rmi')
    .description('remove an image name; the image and its unshared blobs go when no name is left')
    .argument('<ref...>', 'image names or IDs')
    .action(async (refs: string[], _opts, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      const store = await openStore(global);
      try {
        const results = [];
        for (const ref of refs) {
          const removed = await removeImage(store, ref);
          results.push({ ref, ...removed });
          if (!global.json && !global.quiet) {
            out.text(
              removed.imageRemoved
                ? `deleted ${removed.imageId} (${freed(removed)})`
                : `untagged ${ref} (image ${removed.imageId.slice(7, 19)} keeps other names)`,
            );
          }
        }
        if (global.json) out.json(results);
      } finally {
        store.close();
      }
    });
}

import type { Command } from 'commander';
import { pull } from '../../index.js';
import { formatBytes } from '../format.js';
import { openStore, registryOptionsFrom, type GlobalOptions, type RegistryFlags } from '../context.js';
import type { Output } from '../output.js';
import { addRegistryFlags } from './shared-flags.js';

export function registerPull(program: Command, out: Output): void {
  const cmd = program
    .command('pull')
    .description('bring an image into the store, every blob verified')
    .argument('<ref>', 'docker://[registry/]repo[:tag|@digest], oci:DIR[:ref], oci-archive:FILE[:ref], docker-archive:FILE[:ref], or a rootfs .tar/.tar.gz')
    .option('--platform <os/arch[/variant]>', 'platform to pick from a multi-platform image (default: this machine)')
    .option('--verify-diff-ids', "also decompress each layer and check it against the config's diff IDs")
    .option('--concurrency <n>', 'layers downloaded at once', (v) => Number.parseInt(v, 10), 3);
  addRegistryFlags(cmd);
  cmd.action(async (ref: string, opts: RegistryFlags & { platform?: string; verifyDiffIds?: boolean; concurrency: number }, command: Command) => {
    const global = command.optsWithGlobals<GlobalOptions>();
    const store = await openStore(global);
    const { createPullProgress } = await import('../progress.js');
    const progress = createPullProgress({ quiet: global.quiet === true, json: global.json === true });
    const started = Date.now();
    try {
      const result = await pull(store, ref, {
        ...(opts.platform ? { platform: opts.platform } : {}),
        registry: registryOptionsFrom(opts),
        verifyDiffIds: opts.verifyDiffIds === true,
        concurrency: opts.concurrency,
        onEvent: (e) => progress.onEvent(e),
      });
      progress.stop();
      const seconds = (Date.now() - started) / 1000;
      if (global.json) {
        out.json({
          name: result.image.names[0],
          id: result.image.id,
          manifestDigest: result.image.manifestDigest,
          platform: result.image.platform,
          layers: result.image.chainIds.length,
          layersDownloaded: result.layersDownloaded,
          layersReused: result.layersReused,
          bytesTransferred: result.bytesTransferred,
          seconds,
        });
      } else if (!global.quiet) {
        out.text(
          `pulled ${ref} → image ${result.image.id.slice(7, 19)} (${result.image.platform}, ${result.image.chainIds.length} layers; ` +
            `${formatBytes(result.bytesTransferred)} downloaded, ${result.layersReused} layers already stored) in ${seconds.toFixed(1)} s`,
        );
      } else {
        out.text(result.image.id);
      }
    } finally {
      progress.stop();
      store.close();
    }
  });
}

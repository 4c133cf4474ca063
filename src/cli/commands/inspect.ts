import type { Command } from 'commander';
import { inspectImage } from '../../index.js';
import { openStore, registryOptionsFrom, type GlobalOptions, type RegistryFlags } from '../context.js';
import type { Output } from '../output.js';
import { addRegistryFlags } from './shared-flags.js';

export function registerInspect(program: Command, out: Output): void {
  const cmd = program
    .command('inspect')
    .description("show an image's manifest, config and layers as JSON (from the store, or from its source when not pulled)")
    .argument('<ref>', 'image name, ID, or any reference pull accepts')
    .option('--platform <os/arch[/variant]>', 'platform to pick from a multi-platform image');
  addRegistryFlags(cmd);
  cmd.action(async (ref: string, opts: RegistryFlags & { platform?: string }, command: Command) => {
    const global = command.optsWithGlobals<GlobalOptions>();
    const store = await openStore(global);
    try {
      out.json(await inspectImage(store, ref, { ...(opts.platform ? { platform: opts.platform } : {}), registry: registryOptionsFrom(opts) }));
    } finally {
      store.close();
    }
  });
}

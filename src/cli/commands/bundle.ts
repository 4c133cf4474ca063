import type { Command } from 'commander';
import { makeBundle, runImage } from '../../index.js';
import { openStore, registryOptionsFrom, type GlobalOptions, type RegistryFlags } from '../context.js';
import type { Output } from '../output.js';
import { addRegistryFlags } from './shared-flags.js';
import { collect, mappingFrom } from './mapping-flags.js';

type BundleFlags = RegistryFlags & { id?: string; uidMapping?: string[]; gidMapping?: string[]; platform?: string; lazy?: boolean; deadlineMs?: number; remoteIndex?: boolean };

function addBundleFlags(cmd: Command): Command {
  addRegistryFlags(cmd);
  return cmd
    .option('--uid-mapping <container:host:size>', 'map file owners and run in a user namespace (repeatable)', collect)
    .option('--gid-mapping <container:host:size>', 'map file groups (repeatable)', collect)
    .option('--platform <os/arch[/variant]>', 'platform, when the image must be pulled')
    .option('--lazy', 'do not download layers first: the rootfs is a lazy FUSE mount (bytes fetched when read) under a writable overlay')
    .option('--deadline-ms <ms>', 'with --lazy: a read whose bytes have not arrived after this long fails with EIO', (v) => Number.parseInt(v, 10))
    .option('--no-remote-index', 'with --lazy: do not look in the registry for span indexes pushed by `index --push` (a gzip layer without a local index is streamed once)');
}

function createOptions(opts: BundleFlags) {
  const mapping = mappingFrom(opts);
  return {
    registry: registryOptionsFrom(opts),
    ...(opts.platform ? { platform: opts.platform } : {}),
    ...(mapping ? { mapping } : {}),
    ...(opts.lazy ? { lazy: { ...(opts.deadlineMs !== undefined ? { deadlineMs: opts.deadlineMs } : {}), ...(opts.remoteIndex === false ? { remoteIndex: false } : {}) } } : {}),
  };
}

export function registerBundle(program: Command, out: Output): void {
  const bundle = program
    .command('bundle')
    .description('write an OCI runtime bundle: DIR/config.json from the image config, the rootfs mounted at DIR/rootfs')
    .argument('<ref>', 'image (pulled first when not in the store)')
    .argument('<dir>', 'bundle directory')
    .option('--id <id>', 'rootfs ID (for `lazyroot delete`; default: generated)')
    .argument('[cmd...]', 'command replacing the image Cmd');
  addBundleFlags(bundle).action(async (ref: string, dir: string, cmd: string[], opts: BundleFlags, command: Command) => {
    const global = command.optsWithGlobals<GlobalOptions>();
    const store = await openStore(global);
    try {
      const { rootfsId, spec } = await makeBundle(store, ref, dir, { ...createOptions(opts), ...(opts.id ? { id: opts.id } : {}), args: cmd });
      if (global.json) out.json({ bundle: dir, rootfsId, process: spec.process });
      else if (!global.quiet) out.text(`bundle ${dir} ready (rootfs ${rootfsId}; remove with: lazyroot delete ${rootfsId})\nrun it: runc run --bundle ${dir} <container-id>`);
    } finally {
      store.close();
    }
  });

  const run = program
    .command('run')
    .description("run an image's command with runc in a fresh rootfs, relay its exit code, then clean up")
    .argument('<ref>', 'image (pulled first when not in the store)')
    .argument('[cmd...]', 'command replacing the image Cmd (put it after --)');
  addBundleFlags(run).action(async (ref: string, cmd: string[], opts: BundleFlags, command: Command) => {
    const global = command.optsWithGlobals<GlobalOptions>();
    const store = await openStore(global);
    try {
      process.exitCode = await runImage(store, ref, { ...createOptions(opts), args: cmd, stdio: 'inherit' });
    } finally {
      store.close();
    }
  });
}

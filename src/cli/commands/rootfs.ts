import type { Command } from 'commander';
import { resolve } from 'node:path';
import { LazyrootError, clean, createRootfs, deleteRootfs, listMounts, listRootfs, mountStats, rootfsStats, type CleanResult } from '../../index.js';
import { formatAge, formatBytes, formatTable } from '../format.js';
import { openStore, registryOptionsFrom, type GlobalOptions, type RegistryFlags } from '../context.js';
import type { Output } from '../output.js';
import { addRegistryFlags } from './shared-flags.js';
import { collect, mappingFrom } from './mapping-flags.js';


function parseBytes(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) throw new LazyrootError('INVALID_ARGUMENT', `--threshold-bytes ${JSON.stringify(text)}: expected a whole number of bytes`);
  return n;
}

function removedText(r: CleanResult): string {
  const parts = [`${r.removedLayers.length} layers`, `${r.removedImages.length} images`, `${r.removedBlobs} blobs`];
  if (r.removedPartialBlobs) parts.push(`${r.removedPartialBlobs} partly fetched blobs`);
  if (r.removedIndexes) parts.push(`${r.removedIndexes} layer indexes`);
  return parts.join(', ');
}

export function registerRootfs(program: Command, out: Output): void {
  const create = program
    .command('create')
    .description('make a writable root filesystem from an image on kernel overlayfs; prints an OCI runtime-spec fragment (GrootFS style)')
    .argument('<ref>', 'image (pulled first when not in the store)')
    .argument('<id>', 'a name for the rootfs')
    .option('--without-mount', 'do not mount; the overlay mount to make is listed in "mounts"')
    .option('--uid-mapping <container:host:size>', 'map file owners (repeatable)', collect)
    .option('--gid-mapping <container:host:size>', 'map file groups (repeatable)', collect)
    .option('--with-clean', 'run clean first (see --threshold-bytes)')
    .option('--threshold-bytes <n>', 'with --with-clean: clean only when the store uses more than this', parseBytes)
    .option('--platform <os/arch[/variant]>', 'platform, when the image must be pulled')
    .option('--lazy', 'do not download layers first: a lazy FUSE mount (bytes fetched when read) under a writable overlay')
    .option('--no-remote-index', 'with --lazy: do not look in the registry for span indexes pushed by `index --push` (a gzip layer without a local index is streamed once)');
  addRegistryFlags(create);
  create.action(
    async (
      ref: string,
      id: string,
      opts: RegistryFlags & { withoutMount?: boolean; uidMapping?: string[]; gidMapping?: string[]; withClean?: boolean; thresholdBytes?: number; platform?: string; lazy?: boolean; remoteIndex?: boolean },
      command: Command,
    ) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      const store = await openStore(global);
      try {
        if (opts.withClean) await clean(store, opts.thresholdBytes !== undefined ? { thresholdBytes: opts.thresholdBytes } : {});
        const mapping = mappingFrom(opts);
        const { spec } = await createRootfs(store, ref, id, {
          registry: registryOptionsFrom(opts),
          ...(opts.platform ? { platform: opts.platform } : {}),
          ...(opts.withoutMount ? { withoutMount: true } : {}),
          ...(mapping ? { mapping } : {}),
          ...(opts.lazy ? { lazy: opts.remoteIndex === false ? { remoteIndex: false } : {} } : {}),
        });
        out.json(spec);
      } finally {
        store.close();
      }
    },
  );

  program
    .command('delete')
    .description('unmount and remove a rootfs (its layers stay cached until clean)')
    .argument('<id>', 'rootfs ID')
    .option('--force', 'delete even while a process (a container) runs on the rootfs')
    .action(async (id: string, opts: { force?: boolean }, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      const store = await openStore(global);
      try {
        await deleteRootfs(store, id, { ...(opts.force ? { force: true } : {}) });
        if (global.json) out.json({ deleted: id });
        else if (!global.quiet) out.text(`deleted rootfs ${id}`);
      } finally {
        store.close();
      }
    });

  program
    .command('list')
    .description('list root filesystems')
    .action(async (_opts, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      const store = await openStore(global);
      try {
        const all = await listRootfs(store);
        if (global.json) return out.json(all);
        out.text(
          formatTable(
            ['ID', 'IMAGE', 'DRIVER', 'STATE', 'PATH', 'CREATED'],
            all.map((r) => [r.id, r.imageNames[0] ?? r.image.slice(7, 19), r.driver, r.mounted ? r.state : `${r.state} (not mounted)`, r.path, formatAge(Date.parse(r.created))]),
          ),
        );
      } finally {
        store.close();
      }
    });

  program
    .command('stats')
    .description("a rootfs's disk usage: total (with its layers) and exclusive (its own writes), as GrootFS reports; for a lazy mount's directory, its fetch statistics")
    .argument('<id>', 'rootfs ID, or the directory of a lazy mount')
    .action(async (id: string, _opts, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      const store = await openStore(global);
      try {
        if (id.includes('/') && (await listMounts(store)).some((m) => m.mountpoint === resolve(id))) {
          const stats = await mountStats(store, id);
          if (global.json) return out.json(stats);
          return out.text(`fetched ${formatBytes(stats.bytesFetched)} of ${formatBytes(stats.imageBytes)}; served ${formatBytes(stats.fs.bytesServed)} in ${stats.fs.reads} reads; ${stats.fs.errors} errors`);
        }
        const stats = await rootfsStats(store, id);
        if (global.json) return out.json(stats);
        out.text(`total: ${formatBytes(stats.disk_usage.total_bytes_used)}\nexclusive: ${formatBytes(stats.disk_usage.exclusive_bytes_used)}`);
      } finally {
        store.close();
      }
    });

  program
    .command('clean')
    .description('remove layers, images, blobs, partly fetched blobs and layer indexes that no rootfs and no live mount uses')
    .option('--threshold-bytes <n>', 'only when the store uses more than this many bytes', parseBytes)
    .action(async (opts: { thresholdBytes?: number }, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      const store = await openStore(global);
      try {
        const result = await clean(store, opts.thresholdBytes !== undefined ? { thresholdBytes: opts.thresholdBytes } : {});
        if (global.json) return out.json(result);
        if (global.quiet) return;
        out.text(
          result.cleaned
            ? `removed ${removedText(result)} (store was ${formatBytes(result.storeBytes)})`
            : `store uses ${formatBytes(result.storeBytes)}, not over the threshold of ${formatBytes(result.thresholdBytes ?? 0)}: nothing removed`,
        );
      } finally {
        store.close();
      }
    });
}

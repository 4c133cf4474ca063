import { Option, type Command } from 'commander';
import { resolve } from 'node:path';
import { startDaemon } from '../../mount/daemon.js';
import { indexImage } from '../../mount/index-image.js';
import { mountStats, serveMount, unmountLazy } from '../../mount/mount-service.js';
import { formatBytes } from '../format.js';
import { openStore, registryOptionsFrom, type GlobalOptions, type RegistryFlags } from '../context.js';
import type { Output } from '../output.js';
import { addRegistryFlags } from './shared-flags.js';

type MountFlags = RegistryFlags & { foreground?: boolean; stats?: boolean; deadlineMs?: number; cacheBytes?: number; readyFd?: number; platform?: string };
const int = (v: string) => Number.parseInt(v, 10);

export function registerMount(program: Command, out: Output): void {
  const mount = program
    .command('mount')
    .description("mount an image's merged rootfs read-only over FUSE before its layers are downloaded; bytes are fetched when read")
    .argument('<ref>', 'image (its manifest and config are fetched first if not in the store); with --stats: the mount directory')
    .argument('[dir]', 'mount point')
    .option('--foreground', 'stay attached (default: a background daemon serves the mount)')
    .option('--stats', 'print the statistics of the mount at <ref> (a directory)')
    .option('--deadline-ms <ms>', 'a read whose bytes have not arrived after this long fails with EIO', int, 30_000)
    .option('--cache-bytes <n>', 'decoded spans kept in memory', int, 64 << 20)
    .option('--platform <os/arch[/variant]>', 'platform to pick from a multi-platform image')
    .addOption(new Option('--ready-fd <fd>', 'internal: the daemon reports readiness on this fd').hideHelp().argParser(int));
  addRegistryFlags(mount);
  mount.action(async (ref: string, dir: string | undefined, opts: MountFlags, command: Command) => {
    const global = command.optsWithGlobals<GlobalOptions>();
    const store = await openStore(global);
    try {
      if (opts.stats) {
        const stats = await mountStats(store, ref);
        if (global.json) return out.json(stats);
        out.text(
          [
            `mount ${stats.mountpoint} (pid ${stats.pid})`,
            `fetched ${formatBytes(stats.bytesFetched)} of ${formatBytes(stats.imageBytes)} (${stats.layers.reduce((n, l) => n + l.requests, 0)} requests; registry Range support: ${stats.rangeSupport})`,
            `served ${formatBytes(stats.fs.bytesServed)} in ${stats.fs.reads} reads; ${stats.fs.errors} errors`,
            ...stats.layers.map(
              (l) =>
                `  ${l.digest.slice(0, 19)} ${l.format.padEnd(7)} present ${formatBytes(l.present)}/${formatBytes(l.size)}  hits ${l.hits}  misses ${l.misses}  ` +
                `avg fetch ${l.requests ? (l.fetchMillis / l.requests).toFixed(1) : '0'} ms`,
            ),
          ].join('\n'),
        );
        return;
      }
      if (!dir) throw Object.assign(new Error('mount: missing the mount point <dir>'), { code: 'INVALID_ARGUMENT' });
      const options = {
        registry: registryOptionsFrom(opts),
        ...(opts.platform ? { platform: opts.platform } : {}),
        deadlineMs: opts.deadlineMs ?? 30_000,
        cacheBytes: opts.cacheBytes ?? 64 << 20,
      };
      if (opts.foreground) {
        await serveMount(store, ref, dir, { ...options, ...(opts.readyFd !== undefined ? { readyFd: opts.readyFd } : {}) });
        return;
      }
      const argv = [process.execPath, process.argv[1]!, '--store', store.paths.root, 'mount', '--foreground', '--ready-fd', '3'];
      argv.push('--deadline-ms', String(options.deadlineMs), '--cache-bytes', String(options.cacheBytes));
      if (opts.platform) argv.push('--platform', opts.platform);
      if (opts.insecure) argv.push('--insecure');
      if (opts.creds) argv.push('--creds', opts.creds);
      if (opts.authfile) argv.push('--authfile', opts.authfile);
      argv.push(ref, resolve(dir));
      const pid = await startDaemon(argv, { logFile: `${store.paths.root}/mount-daemon.log` });
      if (global.json) out.json({ mountpoint: resolve(dir), pid });
      else if (!global.quiet) out.text(`mounted ${ref} at ${resolve(dir)} (daemon pid ${pid}; unmount with: lazyroot umount ${dir})`);
    } finally {
      store.close();
    }
  });

  program
    .command('umount')
    .description('unmount a lazy mount and stop its daemon (also cleans a mount left by a killed daemon)')
    .argument('<dir>', 'mount point')
    .action(async (dir: string, _opts, command: Command) => {
      const global = command.optsWithGlobals<GlobalOptions>();
      const store = await openStore(global);
      try {
        const { stale } = await unmountLazy(store, dir);
        if (global.json) out.json({ unmounted: resolve(dir), stale });
        else if (!global.quiet) out.text(stale ? `cleaned stale mount ${resolve(dir)}` : `unmounted ${resolve(dir)}`);
      } finally {
        store.close();
      }
    });

  const index = program
    .command('index')
    .description('build the span index of every gzip/uncompressed layer of an image, ahead of a lazy mount')
    .argument('<ref>', 'image')
    .option('--platform <os/arch[/variant]>', 'platform to pick from a multi-platform image');
  addRegistryFlags(index);
  index.action(async (ref: string, opts: RegistryFlags & { platform?: string }, command: Command) => {
    const global = command.optsWithGlobals<GlobalOptions>();
    const store = await openStore(global);
    try {
      const report = await indexImage(store, ref, { registry: registryOptionsFrom(opts), ...(opts.platform ? { platform: opts.platform } : {}) });
      if (global.json) return out.json(report);
      for (const l of report) {
        out.text(`${l.digest.slice(0, 19)}  ${l.format}${l.entries !== undefined ? `  ${l.entries} entries, ${l.checkpoints} checkpoints, ${l.seconds!.toFixed(2)} s` : ''}`);
      }
    } finally {
      store.close();
    }
  });
}

import type { Command } from 'commander';
import { LazyrootError, indexImage, mount, pushImageIndexes, mountStats, runMountDaemon, serveMount, unmount } from '../../index.js';
import { formatBytes } from '../format.js';
import { openStore, registryOptionsFrom, type GlobalOptions, type RegistryFlags } from '../context.js';
import type { Output } from '../output.js';
import { addRegistryFlags } from './shared-flags.js';

type MountFlags = RegistryFlags & {
  foreground?: boolean;
  stats?: boolean;
  deadlineMs?: number;
  cacheBytes?: number;
  platform?: string;
  prefetch?: boolean;
  prefetchDelayMs?: number;
  cacheMaxBytes?: number;
  readAheadBytes?: number;
  maxTocRecords?: number;
  profile?: boolean;
  record?: boolean;
  recordMs?: number;
  remoteIndex?: boolean;
};
const int = (v: string) => Number.parseInt(v, 10);

/** A whole number of bytes, or INVALID_ARGUMENT naming the flag. */
function bytesFlag(flag: string): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n)) throw new LazyrootError('INVALID_ARGUMENT', `${flag} ${JSON.stringify(v)}: expected a whole number of bytes`);
    return n;
  };
}

function mountOptions(opts: MountFlags) {
  return {
    registry: registryOptionsFrom(opts),
    ...(opts.platform ? { platform: opts.platform } : {}),
    deadlineMs: opts.deadlineMs ?? 30_000,
    cacheBytes: opts.cacheBytes ?? 64 << 20,
    prefetch: opts.prefetch !== false,
    prefetchDelayMs: opts.prefetchDelayMs ?? 1000,
    ...(opts.cacheMaxBytes !== undefined ? { cacheMaxBytes: opts.cacheMaxBytes } : {}),
    ...(opts.readAheadBytes !== undefined ? { readAheadBytes: opts.readAheadBytes } : {}),
    ...(opts.maxTocRecords !== undefined ? { maxTocRecords: opts.maxTocRecords } : {}),
    ...(opts.profile === false ? { profile: false } : {}),
    ...(opts.record !== undefined ? { record: opts.record } : {}),
    ...(opts.recordMs !== undefined ? { recordMillis: opts.recordMs } : {}),
    ...(opts.remoteIndex === false ? { remoteIndex: false } : {}),
  };
}

function missingDir(): LazyrootError {
  return new LazyrootError('INVALID_ARGUMENT', 'mount: missing the mount point <dir>');
}

/**
 * `lazyroot mount` without --foreground: the library's background mount. This
 * process opens nothing itself, not even the store (it hands the daemon the
 * store's directory): the sooner the daemon has the request, the sooner the
 * rootfs is visible.
 */
async function mountInBackground(ref: string, dir: string | undefined, opts: MountFlags, global: GlobalOptions, out: Output): Promise<void> {
  if (!dir) throw missingDir();
  const options = mountOptions(opts); // checks --creds/--authfile here, with a usage error
  // The daemon is this same CLI (bin/lazyroot.js, or the benchmarks' build of it).
  const { mountpoint, pid, driver } = await mount(global.store, ref, dir, { ...options, bin: process.argv[1]! });
  if (global.json) out.json({ mountpoint, pid, driver });
  else if (!global.quiet) {
    const how = driver === 'overlay' ? 'kernel overlayfs: every layer is in the store' : `lazy FUSE mount, daemon pid ${pid}`;
    out.text(`mounted ${ref} at ${mountpoint} (${how}; unmount with: lazyroot umount ${dir})`);
  }
}

/**
 * `lazyroot mount-daemon` (hidden): a mount daemon (the library's
 * runMountDaemon), ended once its mount is gone.
 */
function registerMountDaemon(program: Command): void {
  program
    .command('mount-daemon', { hidden: true })
    .option('--standby', 'load everything, then wait for a request on the standby socket')
    .action(async (opts: { standby?: boolean }) => {
      // A standby may be handed a whole `run --lazy` (cli/run-handoff-client.ts); the runner lives in bundle/.
      const runner = () => import('../../bundle/run-handoff.js');
      await runMountDaemon({
        ...(opts.standby ? { standby: true } : {}),
        bin: process.argv[1]!,
        runner: { preload: runner, serve: async (request, channel, done) => (await runner()).serveRun(request, channel, done) },
      });
      // Unmounted (or given up on): end now, whatever native threads libfuse may still hold.
      process.exit(0);
    });
}

export function registerMount(program: Command, out: Output): void {
  const mountCommand = program
    .command('mount')
    .description("mount an image's merged rootfs read-only over FUSE before its layers are downloaded; bytes are fetched when read")
    .argument('<ref>', 'image (its manifest and config are fetched first if not in the store); with --stats: the mount directory')
    .argument('[dir]', 'mount point')
    .option('--foreground', 'stay attached (default: a background daemon serves the mount)')
    .option('--stats', 'print the statistics of the mount at <ref> (a directory)')
    .option('--deadline-ms <ms>', 'a read whose bytes have not arrived after this long fails with EIO', int, 30_000)
    .option('--cache-bytes <n>', 'decoded spans kept in memory', int, 64 << 20)
    .option('--no-prefetch', 'fetch nothing before it is read: no background download of the rest of the layers (by default they are, verified, and then kept in the store), no access profile fetched ahead')
    .option('--prefetch-delay-ms <ms>', 'start the background download this long after the mount is ready', int, 1000)
    .option('--cache-max-bytes <n>', 'bound on bytes kept for partly fetched layers; least recently used ranges are dropped past it', bytesFlag('--cache-max-bytes'))
    .option('--read-ahead-bytes <n>', 'a read fetches up to this many blob bytes around what it needs (eStargz: neighbouring files too, each verified); 0: only what it needs (default 1048576)', bytesFlag('--read-ahead-bytes'))
    .option('--max-toc-records <n>', 'refuse an eStargz layer whose TOC lists more entries and chunks than this (default 2000000; each costs about 0.5 KiB of daemon memory while mounting, 0.3 KiB once mounted)', bytesFlag('--max-toc-records'))
    .option('--no-profile', "do not fetch the image's recorded access profile (nor eStargz prioritized files) ahead of reads")
    .option('--record', 'record which ranges reads need in the first seconds as the image\'s access profile, replacing the one it has (default: only when it has none)')
    .option('--no-record', 'never record an access profile')
    .option('--record-ms <ms>', 'how long a recording runs after the mount is ready', int, 10_000)
    .option('--no-remote-index', 'do not look in the registry for span indexes pushed by `index --push`: a gzip layer without a local index is streamed once to build one')
    .option('--platform <os/arch[/variant]>', 'platform to pick from a multi-platform image');
  addRegistryFlags(mountCommand);
  registerMountDaemon(program);
  mountCommand.action(async (ref: string, dir: string | undefined, opts: MountFlags, command: Command) => {
    const global = command.optsWithGlobals<GlobalOptions>();
    if (!opts.stats && !opts.foreground) return mountInBackground(ref, dir, opts, global, out);
    const store = await openStore(global);
    try {
      if (opts.stats) {
        const stats = await mountStats(store, ref);
        if (global.json) return out.json(stats);
        if (stats.driver === 'overlay') {
          return out.text(`mount ${stats.mountpoint}: kernel overlayfs, read-only (every layer was in the store); image ${formatBytes(stats.imageBytes)}, nothing fetched`);
        }
        const layerState = (l: (typeof stats.layers)[number]): string => {
          if (l.source === 'streamed') return 'kept whole (the registry answered a range with the whole blob)';
          if (l.complete) return 'complete';
          return `prefetch ${l.prefetch}${l.prefetchError ? ` (${l.prefetchError})` : ''}`;
        };
        out.text(
          [
            `mount ${stats.mountpoint} (pid ${stats.pid})`,
            `fetched ${formatBytes(stats.bytesFetched)} on demand (${stats.layers.reduce((n, l) => n + l.requests, 0)} requests), ` +
              `${formatBytes(stats.bytesPrefetched)} by prefetch (${stats.layers.reduce((n, l) => n + l.prefetchRequests, 0)} requests)` +
              `${stats.bytesStreamed ? `, ${formatBytes(stats.bytesStreamed)} streamed whole` : ''}` +
              `${stats.bytesIndexed ? `, ${formatBytes(stats.bytesIndexed)} downloaded whole before mounting (no index)` : ''}; image ${formatBytes(stats.imageBytes)}; registry Range support: ${stats.rangeSupport}`,
            `${stats.complete ? 'every layer is in the store' : `prefetch ${stats.prefetch ? 'on' : 'off'}`}` +
              `${stats.prefetchMillis !== undefined ? ` (completed ${(stats.prefetchMillis / 1000).toFixed(1)} s after mounting)` : ''}; ` +
              `partial bytes kept ${formatBytes(stats.partialBytes)}${stats.cacheMaxBytes !== undefined ? ` (bound ${formatBytes(stats.cacheMaxBytes)})` : ''}`,
            `served ${formatBytes(stats.fs.bytesServed)} in ${stats.fs.reads} reads; ${stats.fs.errors} errors`,
            ...(stats.mirrors ?? []).map(
              (m) => `  mirror ${m.mirror}: ${m.served} answers used, ${m.failures} failed, ${m.lies} with wrong bytes${m.lastError ? ` (last: ${m.lastError})` : ''}`,
            ),
            ...stats.layers.map(
              (l) =>
                `  ${l.digest.slice(0, 19)} ${l.format.padEnd(7)} present ${formatBytes(l.present)}/${formatBytes(l.size)}  hits ${l.hits}  misses ${l.misses}  ` +
                `avg fetch ${l.requests ? (l.fetchMillis / l.requests).toFixed(1) : '0'} ms` +
                `${l.evictedBytes ? `  evicted ${formatBytes(l.evictedBytes)}` : ''}  ${layerState(l)}`,
            ),
          ].join('\n'),
        );
        return;
      }
      if (!dir) throw missingDir();
      // The daemon's stderr is its log file (mount-daemon.log).
      const logger = (message: string, error: unknown) => process.stderr.write(`${new Date().toISOString()} ${message}${error === undefined ? '' : `: ${(error as Error)?.message ?? String(error)}`}\n`);
      await serveMount(store, ref, dir, { ...mountOptions(opts), logger });
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
        const { stale, mountpoint } = await unmount(store, dir);
        if (global.json) out.json({ unmounted: mountpoint, stale });
        else if (!global.quiet) out.text(stale ? `cleaned stale mount ${mountpoint}` : `unmounted ${mountpoint}`);
      } finally {
        store.close();
      }
    });

  const index = program
    .command('index')
    .description('build the span index of every gzip/uncompressed layer of an image, ahead of a lazy mount; with --push, share them through the registry')
    .argument('<ref>', 'image')
    .option('--platform <os/arch[/variant]>', 'platform to pick from a multi-platform image')
    .option('--span-bytes <n>', 'compressed bytes between checkpoints: the fetch granularity of a lazy read (default 65536)', bytesFlag('--span-bytes'))
    .option('--push', "push the indexes (and the image's access profile, when recorded) to the image's repository as an OCI artifact whose subject is the image manifest (referrers API, or the sha256-<hex> tag where the registry has none); other machines then mount the image lazily without streaming its layers")
    .option('--no-remote-index', 'do not take indexes pushed to the registry: build each missing one by streaming its layer');
  addRegistryFlags(index);
  index.action(async (ref: string, opts: RegistryFlags & { platform?: string; spanBytes?: number; push?: boolean; remoteIndex?: boolean }, command: Command) => {
    const global = command.optsWithGlobals<GlobalOptions>();
    const store = await openStore(global);
    try {
      const options = {
        registry: registryOptionsFrom(opts),
        ...(opts.platform ? { platform: opts.platform } : {}),
        ...(opts.spanBytes !== undefined ? { spanBytes: opts.spanBytes } : {}),
        ...(opts.remoteIndex === false ? { remoteIndex: false } : {}),
        warn: (message: string, error?: unknown) => process.stderr.write(`lazyroot: warning: ${message}${error === undefined ? '' : `: ${(error as Error)?.message ?? String(error)}`}\n`),
      };
      const layerLine = (l: Awaited<ReturnType<typeof indexImage>>[number]) =>
        `${l.digest.slice(0, 19)}  ${l.format}${l.entries !== undefined ? `  ${l.entries} entries, ${l.checkpoints} checkpoints, ${l.seconds!.toFixed(2)} s${l.from && l.from !== 'built' ? ` (from the ${l.from})` : ''}` : ''}`;
      if (opts.push) {
        const pushed = await pushImageIndexes(store, ref, options);
        if (global.json) return out.json(pushed);
        if (global.quiet) return;
        for (const l of pushed.layers) out.text(layerLine(l));
        const where = pushed.via === 'referrers-api' ? 'listed by its referrers API' : `listed under tag ${pushed.tag} (the registry has no referrers API)`;
        out.text(`pushed ${pushed.indexes} span index${pushed.indexes === 1 ? '' : 'es'}${pushed.profile ? ' and the access profile' : ''} (${formatBytes(pushed.bytes)}) to ${pushed.repository} as ${pushed.digest}, subject ${pushed.subject}, ${where}`);
        return;
      }
      const report = await indexImage(store, ref, options);
      if (global.json) return out.json(report);
      if (global.quiet) return;
      for (const l of report) out.text(layerLine(l));
    } finally {
      store.close();
    }
  });
}

import type { Command } from 'commander';
import { LazyrootError, serveLayerStore } from '../../index.js';
import { openStore, registryOptionsFrom, type GlobalOptions, type RegistryFlags } from '../context.js';
import type { Output } from '../output.js';
import { addRegistryFlags } from './shared-flags.js';

type LayerStoreFlags = RegistryFlags & {
  deadlineMs?: number;
  cacheBytes?: number;
  releaseAfterMs?: number;
  platform?: string;
  metricsAddress?: string;
  remoteIndex?: boolean;
};

function wholeNumber(flag: string): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n)) throw new LazyrootError('INVALID_ARGUMENT', `${flag} ${JSON.stringify(v)}: expected a whole number`);
    return n;
  };
}

/**
 * `lazyroot layer-store DIR`: serves a Podman/CRI-O additional layer store at
 * DIR in the foreground until SIGTERM or SIGINT, then unmounts it.
 */
export function registerLayerStore(program: Command, out: Output): void {
  const command = program
    .command('layer-store')
    .description('serve a Podman/CRI-O additional layer store at <dir> (storage.conf: additionallayerstores = ["<dir>:ref"]); layers are fetched lazily, by range, when read')
    .argument('<dir>', 'mount point (an empty directory)')
    .option('--deadline-ms <ms>', 'a read whose bytes have not arrived after this long fails with EIO', wholeNumber('--deadline-ms'), 30_000)
    .option('--cache-bytes <n>', 'decoded spans and chunks kept in memory, all layers together', wholeNumber('--cache-bytes'), 64 << 20)
    .option('--release-after-ms <ms>', 'close a layer Podman no longer uses after this long without access', wholeNumber('--release-after-ms'), 300_000)
    .option('--platform <os/arch[/variant]>', 'platform to pick from multi-platform images (default: this machine)')
    .option('--metrics-address <host:port>', 'serve Prometheus metrics at http://<host:port>/metrics (bytes fetched and served, per-layer fetched fraction); port 0 picks one')
    .option('--no-remote-index', 'do not look in the registry for span indexes pushed by `index --push`: a gzip layer without a local index is streamed once to build one');
  addRegistryFlags(command);
  command.action(async (dir: string, opts: LayerStoreFlags, cmd: Command) => {
    const global = cmd.optsWithGlobals<GlobalOptions>();
    const registry = registryOptionsFrom(opts);
    const store = await openStore(global);
    try {
      const logger = (message: string, error: unknown) => process.stderr.write(`${new Date().toISOString()} ${message}${error === undefined ? '' : `: ${(error as Error)?.message ?? String(error)}`}\n`);
      // A bug fails the operation it is in, never the store: dying would leave Podman's containers a dead mount.
      process.on('uncaughtException', (err) => logger('uncaught exception (the layer store goes on)', err));
      process.on('unhandledRejection', (err) => logger('unhandled rejection (the layer store goes on)', err));
      const server = await serveLayerStore(store, dir, {
        registry,
        deadlineMs: opts.deadlineMs ?? 30_000,
        cacheBytes: opts.cacheBytes ?? 64 << 20,
        releaseAfterMs: opts.releaseAfterMs ?? 300_000,
        ...(opts.platform ? { platform: opts.platform } : {}),
        ...(opts.metricsAddress !== undefined ? { metricsAddress: opts.metricsAddress } : {}),
        ...(opts.remoteIndex === false ? { remoteIndex: false } : {}),
        logger,
      });
      const metrics = server.metricsAddress ? { metrics: `http://${server.metricsAddress}/metrics` } : {};
      if (global.json) out.json({ mountpoint: server.mountpoint, pid: process.pid, ...metrics });
      else if (!global.quiet) {
        out.text(`layer store at ${server.mountpoint} (pid ${process.pid}); storage.conf: additionallayerstores = ["${server.mountpoint}:ref"]${metrics.metrics ? `; metrics at ${metrics.metrics}` : ''}`);
      }
      await new Promise<void>((resolve) => {
        process.once('SIGTERM', resolve);
        process.once('SIGINT', resolve);
      });
      await server.close();
    } finally {
      store.close();
    }
  });
}

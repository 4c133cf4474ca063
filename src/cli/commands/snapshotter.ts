import type { Command } from 'commander';
import { listSnapshots, startSnapshotter } from '../../index.js';
import { formatAge, formatTable } from '../format.js';
import { openStore, registryOptionsFrom, type GlobalOptions, type RegistryFlags } from '../context.js';
import type { Output } from '../output.js';

interface SnapshotterFlags extends RegistryFlags {
  address: string;
  prefetch?: boolean;
  remoteIndex?: boolean;
  metricsAddress?: string;
  trace?: boolean;
}

export function registerSnapshotter(program: Command, out: Output): void {
  program
    .command('snapshotter')
    .description("serve containerd's snapshots API (a proxy snapshotter) on a unix socket, until SIGTERM or SIGINT")
    .requiredOption('--address <socket>', 'unix socket containerd connects to ([proxy_plugins.lazyroot] address)')
    .option('--metrics-address <host:port>', 'serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port)')
    .option('--no-prefetch', 'do not download the rest of remote layers in the background')
    .option('--no-remote-index', 'do not look in the registry for span indexes pushed by `index --push`: a gzip layer without a local index is streamed once to build one')
    .option('--trace', 'log every gRPC call with its outcome and time (stderr, timestamped)')
    .option('--insecure', 'allow plain HTTP and unverified TLS to registries')
    .option('--creds <user:password>', 'registry credentials')
    .option('--authfile <file>', 'registry auth file (default: containers auth.json, then ~/.docker/config.json)')
    .option('--hosts-dir <dir>', 'registry mirrors: <dir>/<registry>/hosts.toml, as containerd (default: $LAZYROOT_HOSTS_DIR or /etc/lazyroot/certs.d)')
    .action(async (opts: SnapshotterFlags, cmd: Command) => {
      const global = cmd.optsWithGlobals<GlobalOptions>();
      const store = await openStore(global);
      const logger = (message: string, error?: unknown): void => {
        process.stderr.write(`lazyroot snapshotter: ${message}${error ? `: ${(error as Error).message ?? String(error)}` : ''}\n`);
      };
      const running = await startSnapshotter(store, {
        address: opts.address,
        registry: registryOptionsFrom(opts),
        ...(opts.prefetch === false ? { prefetch: false } : {}),
        ...(opts.remoteIndex === false ? { remoteIndex: false } : {}),
        ...(opts.metricsAddress ? { metricsAddress: opts.metricsAddress } : {}),
        ...(opts.trace ? { trace: (line: string) => process.stderr.write(`lazyroot snapshotter: ${new Date().toISOString()} ${line}\n`) } : {}),
        logger,
      });
      if (running.metricsPort !== undefined) logger(`metrics on port ${running.metricsPort}`);
      if (!global.quiet) logger(`listening on ${running.address} (store ${store.paths.root})`);
      await new Promise<void>((resolve) => {
        process.once('SIGTERM', resolve);
        process.once('SIGINT', resolve);
      });
      await running.stop();
      store.close();
    });

  program
    .command('snapshots')
    .description("list the snapshots lazyroot snapshotter holds for containerd")
    .action(async (_opts, cmd: Command) => {
      const global = cmd.optsWithGlobals<GlobalOptions>();
      const store = await openStore(global);
      try {
        const snapshots = await listSnapshots(store);
        if (global.json) return out.json(snapshots);
        out.text(
          formatTable(
            ['KEY', 'PARENT', 'KIND', 'SERVED', 'CREATED'],
            snapshots.map((s) => [s.key, s.parent ?? '', s.kind, s.remote ? `lazily: ${s.remote.ref}` : 'dir', formatAge(s.createdAt)]),
          ),
        );
      } finally {
        store.close();
      }
    });
}

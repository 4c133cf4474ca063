import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { LazyrootError } from '../errors.js';
import type { FsStats } from '../fs/lazy-fs.js';
import type { LayerStoreStats } from './registry-layer-store.js';

/**
 * The layer store's statistics in Prometheus's text format (version 0.0.4):
 * totals since start (layers closed since included), and per open layer its
 * size, verified bytes present and their fraction — "is it actually lazy?".
 */
export function formatMetrics(stats: LayerStoreStats & { fs: FsStats }): string {
  const lines: string[] = [];
  const metric = (name: string, type: 'counter' | 'gauge', help: string, samples: Array<[labels: string, value: number]>) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) lines.push(`${name}${labels} ${value}`);
  };
  const t = stats.totals;
  metric('lazyroot_layer_store_fetched_bytes_total', 'counter', 'Blob bytes fetched from registries: demand reads, and whole blobs streamed (no Range, or to build a missing index).', [['', t.bytesFetched]]);
  metric('lazyroot_layer_store_fetch_requests_total', 'counter', 'Range requests of demand reads.', [['', t.requests]]);
  metric('lazyroot_layer_store_fetch_seconds_sum', 'counter', 'Time demand reads waited for fetched bytes.', [['', t.fetchMillis / 1000]]);
  metric('lazyroot_layer_store_cache_hits_total', 'counter', 'Blob reads answered from verified bytes in the store.', [['', t.hits]]);
  metric('lazyroot_layer_store_served_bytes_total', 'counter', 'Bytes served to readers of diff/ and blob files.', [['', stats.fs.bytesServed]]);
  metric('lazyroot_layer_store_reads_total', 'counter', 'FUSE reads of diff/ and blob files.', [['', stats.fs.reads]]);
  metric('lazyroot_layer_store_read_errors_total', 'counter', 'FUSE reads answered with an error (timeouts included).', [['', stats.fs.errors]]);
  metric('lazyroot_layer_store_open_layers', 'gauge', 'Layers open now.', [['', stats.layers.length]]);
  const per = (f: (l: LayerStoreStats['layers'][number]) => number): Array<[string, number]> => stats.layers.map((l) => [`{digest="${l.digest}",format="${l.format}"}`, f(l)]);
  metric('lazyroot_layer_size_bytes', 'gauge', 'Compressed size of an open layer.', per((l) => l.size));
  metric('lazyroot_layer_present_bytes', 'gauge', 'Verified bytes of the layer in the store.', per((l) => l.present));
  metric('lazyroot_layer_fetched_ratio', 'gauge', 'Fraction of the layer blob in the store (1 once whole).', per((l) => (l.size > 0 ? l.present / l.size : 1)));
  metric('lazyroot_layer_uses', 'gauge', 'Uses containers/storage has signalled and not released.', per((l) => l.uses));
  return `${lines.join('\n')}\n`;
}

export interface MetricsServer {
  /** `host:port` it listens on. */
  address: string;
  close(): Promise<void>;
}

/** Serves `GET /metrics` on `address` (`host:port`; port 0 picks one). */
export async function serveMetrics(address: string, stats: () => LayerStoreStats & { fs: FsStats }): Promise<MetricsServer> {
  const colon = address.lastIndexOf(':');
  const host = address.slice(0, colon).replace(/^\[|\]$/g, '');
  const port = Number(address.slice(colon + 1));
  if (colon < 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new LazyrootError('INVALID_ARGUMENT', `--metrics-address ${JSON.stringify(address)}: expected HOST:PORT`);
  const server: Server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404).end('only GET /metrics here\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(formatMetrics(stats()));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new LazyrootError('FAILED_PRECONDITION', `metrics endpoint on ${address}: ${err.message}`, { cause: err })));
    server.listen(port, host || '127.0.0.1', resolve);
  });
  const bound = server.address() as AddressInfo;
  return {
    address: `${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

import { createServer, type Server } from 'node:http';
import { LazyrootError } from '../errors.js';
import { mountStats, type MountStats } from '../mount/mount-service.js';
import type { Store } from '../store/store.js';
import type { RemoteLayers } from './remote-layers.js';

/** Upper bounds (seconds) of the call latency histogram's buckets. */
const latencyBuckets = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** gRPC calls answered, by method and status code name, and how long each method took: the snapshotter's own counters. */
export class CallCounter {
  private readonly counts = new Map<string, number>();
  private readonly latency = new Map<string, { buckets: number[]; sum: number; count: number }>();

  add(method: string, code: string, seconds = 0): void {
    const key = `${method}\u0000${code}`;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
    let h = this.latency.get(method);
    if (!h) this.latency.set(method, (h = { buckets: latencyBuckets.map(() => 0), sum: 0, count: 0 }));
    latencyBuckets.forEach((le, i) => {
      if (seconds <= le) h.buckets[i]!++;
    });
    h.sum += seconds;
    h.count++;
  }

  entries(): Array<{ method: string; code: string; count: number }> {
    return [...this.counts].map(([key, count]) => {
      const [method, code] = key.split('\u0000') as [string, string];
      return { method, code, count };
    });
  }

  /** Per method: cumulative bucket counts (Prometheus `le` semantics), total seconds and calls. */
  latencies(): Array<{ method: string; buckets: Array<{ le: number; count: number }>; sum: number; count: number }> {
    return [...this.latency].map(([method, h]) => ({ method, buckets: latencyBuckets.map((le, i) => ({ le, count: h.buckets[i]! })), sum: h.sum, count: h.count }));
  }
}

const esc = (v: string): string => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');

/**
 * The Prometheus text exposition of the snapshotter and of the lazy mounts it
 * made. The mounts' numbers live in their own daemons (separate processes):
 * each is asked for fresh stats (`mount --stats`'s SIGUSR1) at scrape time.
 * Per layer: bytes fetched on demand and in the background, requests, cache
 * hits and misses, failures, fetch time, and the fraction of the blob fetched
 * — the "is it actually lazy?" number. Per registry mirror: answers used,
 * failures and lies.
 */
export async function metricsText(store: Store, remote: RemoteLayers, calls: CallCounter): Promise<string> {
  const out: string[] = [];
  const family = (name: string, type: 'counter' | 'gauge' | 'histogram', help: string): void => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  };
  const line = (name: string, labels: Record<string, string>, value: number): void => {
    const l = Object.entries(labels).map(([k, v]) => `${k}="${esc(v)}"`).join(',');
    out.push(`${name}${l ? `{${l}}` : ''} ${Number.isFinite(value) ? value : 0}`);
  };

  family('lazyroot_snapshotter_calls_total', 'counter', 'gRPC calls answered, by method and status code');
  for (const c of calls.entries()) line('lazyroot_snapshotter_calls_total', { method: c.method, code: c.code }, c.count);
  family('lazyroot_snapshotter_call_seconds', 'histogram', 'time to answer a gRPC call, by method');
  for (const h of calls.latencies()) {
    for (const b of h.buckets) line('lazyroot_snapshotter_call_seconds_bucket', { method: h.method, le: String(b.le) }, b.count);
    line('lazyroot_snapshotter_call_seconds_bucket', { method: h.method, le: '+Inf' }, h.count);
    line('lazyroot_snapshotter_call_seconds_sum', { method: h.method }, h.sum);
    line('lazyroot_snapshotter_call_seconds_count', { method: h.method }, h.count);
  }
  family('lazyroot_snapshots', 'gauge', 'snapshots held for containerd, by kind and whether served lazily');
  const counts = new Map<string, number>();
  for (const s of store.db.snapshots.list()) {
    const key = `${s.kind}\u0000${s.remote ? 'remote' : 'dir'}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  for (const [key, n] of counts) {
    const [kind, served] = key.split('\u0000') as [string, string];
    line('lazyroot_snapshots', { kind, served }, n);
  }

  const mounts: MountStats[] = [];
  let scrapeErrors = 0;
  for (const record of store.db.listMounts()) {
    if (!record.alive || !record.mountpoint.startsWith(`${remote.mountsDir}/`)) continue;
    try {
      mounts.push(await mountStats(store, record.mountpoint));
    } catch (err) {
      if (!(err instanceof LazyrootError)) throw err;
      scrapeErrors++;
    }
  }
  family('lazyroot_mounts', 'gauge', 'lazy mounts serving remote snapshots');
  line('lazyroot_mounts', {}, mounts.length);
  family('lazyroot_metrics_mount_errors', 'gauge', 'lazy mounts whose daemon gave no stats at this scrape');
  line('lazyroot_metrics_mount_errors', {}, scrapeErrors);
  const perMount: Array<[string, string, (m: MountStats) => number]> = [
    ['lazyroot_mount_bytes_served_total', 'bytes read by containers through the mount', (m) => m.fs.bytesServed],
    ['lazyroot_mount_reads_total', 'FUSE reads', (m) => m.fs.reads],
    ['lazyroot_mount_read_errors_total', 'FUSE reads answered with an error (timeouts included)', (m) => m.fs.errors],
  ];
  for (const [name, help, value] of perMount) {
    family(name, 'counter', help);
    for (const m of mounts) line(name, { mountpoint: m.mountpoint }, value(m));
  }
  const perLayer: Array<[string, 'counter' | 'gauge', string, (l: MountStats['layers'][number]) => number]> = [
    ['lazyroot_layer_bytes_fetched_total', 'counter', 'bytes fetched from the registry for reads', (l) => l.bytesFetched],
    ['lazyroot_layer_bytes_prefetched_total', 'counter', 'bytes fetched in the background', (l) => l.bytesPrefetched],
    ['lazyroot_layer_fetch_requests_total', 'counter', 'range requests for reads', (l) => l.requests],
    ['lazyroot_layer_fetch_seconds_total', 'counter', 'time spent fetching for reads (with requests_total: the mean latency)', (l) => l.fetchMillis / 1000],
    ['lazyroot_layer_cache_hits_total', 'counter', 'reads served from bytes already in the store', (l) => l.hits],
    ['lazyroot_layer_cache_misses_total', 'counter', 'reads that had to fetch', (l) => l.misses],
    ['lazyroot_layer_fetch_failures_total', 'counter', 'failed fetches', (l) => l.failures],
    ['lazyroot_layer_fetched_ratio', 'gauge', 'fraction of the layer blob present in the store', (l) => (l.size > 0 ? l.present / l.size : 1)],
  ];
  for (const [name, type, help, value] of perLayer) {
    family(name, type, help);
    for (const m of mounts) for (const l of m.layers) line(name, { mountpoint: m.mountpoint, layer: l.digest, format: l.format }, value(l));
  }
  // Registry mirrors (hosts.toml), as each mount's daemon used them: the upstream is not among them.
  const perMirror: Array<[string, string, (m: NonNullable<MountStats['mirrors']>[number]) => number]> = [
    ['lazyroot_mirror_answers_total', 'answers taken from a registry mirror', (m) => m.served],
    ['lazyroot_mirror_failures_total', 'requests a mirror failed (connection, 5xx, 404), after which the next host was asked', (m) => m.failures],
    ['lazyroot_mirror_lies_total', 'bytes from a mirror that failed verification; it is passed over for that blob', (m) => m.lies],
  ];
  for (const [name, help, value] of perMirror) {
    family(name, 'counter', help);
    for (const m of mounts) for (const mirror of m.mirrors ?? []) line(name, { mountpoint: m.mountpoint, mirror: mirror.mirror }, value(mirror));
  }
  return `${out.join('\n')}\n`;
}

/** Serves GET /metrics on `address` (`HOST:PORT`, or `:PORT` for loopback). */
export async function startMetricsServer(address: string, text: () => Promise<string>, log: (m: string, e?: unknown) => void): Promise<{ server: Server; port: number }> {
  const colon = address.lastIndexOf(':');
  const host = colon > 0 ? address.slice(0, colon) : '127.0.0.1';
  const port = Number(address.slice(colon + 1));
  if (colon < 0 || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new LazyrootError('INVALID_ARGUMENT', `--metrics-address ${address}: expected HOST:PORT`);
  }
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '/').split('?')[0] !== '/metrics') {
      res.writeHead(404).end('not found: GET /metrics\n');
      return;
    }
    text().then(
      (body) => res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(body),
      (err: unknown) => {
        log('metrics', err);
        res.writeHead(500).end(`${(err as Error).message}\n`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new LazyrootError('UNAVAILABLE', `--metrics-address ${address}: ${err.message}`, { cause: err })));
    server.listen(port, host, resolve);
  });
  const bound = server.address();
  return { server, port: typeof bound === 'object' && bound ? bound.port : port };
}

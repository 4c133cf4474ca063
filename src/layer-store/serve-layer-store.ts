import { mountLayerStore } from '../fs/layer-store-fs.js';
import type { FsStats } from '../fs/lazy-fs.js';
import type { Store } from '../store/store.js';
import { serveMetrics, type MetricsServer } from './metrics.js';
import { RegistryLayerStore, type LayerStoreStats, type RegistryLayerStoreOptions } from './registry-layer-store.js';

export interface ServeLayerStoreOptions extends RegistryLayerStoreOptions {
  allowOther?: boolean;
  /** `host:port` of a Prometheus text endpoint (`GET /metrics`); port 0 picks one. */
  metricsAddress?: string;
}

export interface LayerStoreServer {
  readonly mountpoint: string;
  /** Where `GET /metrics` answers, when asked for. */
  readonly metricsAddress?: string;
  stats(): LayerStoreStats & { fs: FsStats };
  /** Unmounts the store, then closes every layer. */
  close(): Promise<void>;
}

/**
 * `lazyroot layer-store DIR`: a Podman/CRI-O additional layer store mounted
 * at `dir` (storage.conf: `additionallayerstores = ["DIR:ref"]`), layers
 * served lazily from their registries through the store.
 */
export async function serveLayerStore(store: Store, dir: string, options: ServeLayerStoreOptions = {}): Promise<LayerStoreServer> {
  const backend = new RegistryLayerStore(store, options);
  let mounted;
  try {
    mounted = await mountLayerStore(dir, backend, {
      ...(options.allowOther !== undefined ? { allowOther: options.allowOther } : {}),
      readTimeoutMs: (options.deadlineMs ?? 30_000) + 5_000,
      ...(options.logger ? { logger: options.logger } : {}),
    });
  } catch (err) {
    await backend.close();
    throw err;
  }
  const stats = () => ({ ...backend.stats(), fs: mounted.stats() });
  let metrics: MetricsServer | undefined;
  try {
    if (options.metricsAddress !== undefined) metrics = await serveMetrics(options.metricsAddress, stats);
  } catch (err) {
    await mounted.unmount().catch(() => undefined);
    await backend.close();
    throw err;
  }
  return {
    mountpoint: mounted.mountpoint,
    ...(metrics ? { metricsAddress: metrics.address } : {}),
    stats,
    close: async () => {
      await metrics?.close();
      await mounted.unmount();
      await backend.close();
    },
  };
}

import { LazyrootError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { shortDigest } from '../oci/digest.js';
import { compressionOf } from '../oci/media-types.js';
import { parseReference } from '../reference/reference.js';
import type { ImageSource } from '../source/image-source.js';
import { openSource } from '../source/open-source.js';
import { LazyBlobGroup, type LazyBlob } from '../store/lazy-blob.js';
import type { ImageRecord } from '../store/metadata-db.js';
import type { IndexEntry } from '../index/types.js';
import { pullReference, type ReferenceOptions } from '../store/operations.js';
import type { Store } from '../store/store.js';
import { overlayLowerEntries } from '../union/overlay-lower.js';
import { buildTree } from '../fs/tree.js';
import type { LayerStoreBackend, ServedLayer } from '../fs/layer-store-fs.js';
import type { LazyLayer, LazyLayerStats } from '../mount/layers/lazy-layer.js';
import { prepareLayer, type MountLayerContext } from '../mount/lazy-mount.js';
import { RemoteIndexes } from '../mount/remote-index.js';
import { layerInfoJson } from './layer-info.js';
import type { LRUCache } from 'lru-cache';
import { decodedBytesCache } from '../index/gzip-reader.js';

const defaultCacheBytes = 64 << 20;

export interface RegistryLayerStoreOptions extends ReferenceOptions {
  /** A read whose bytes have not arrived after this long fails (EIO). Default 30 s. */
  deadlineMs?: number;
  /** Decoded spans and chunks kept in memory, all layers together (one bound for the daemon). Default 64 MiB. */
  cacheBytes?: number;
  /** eStargz demand reads fetch up to this many neighbouring bytes. Default 1 MiB. */
  readAheadBytes?: number;
  /** A layer no one uses (no `use` outstanding) is closed after this long without access. Default 5 min. */
  releaseAfterMs?: number;
  logger?: (message: string, error: unknown) => void;
  /** Look in the registry for span indexes pushed by `index --push` before streaming a gzip layer (default true). */
  remoteIndex?: boolean;
}

/** An image the store was asked about, resolved once per reference. */
interface ResolvedRef {
  image: ImageRecord;
  source: ImageSource;
  /** The registry's span indexes for the image, looked up once (when a layer has none locally). */
  remote?: RemoteIndexes;
}

/** A layer the store serves: opened once per compressed digest, whichever image asked. */
interface LayerSlot {
  digest: Digest;
  opening: Promise<ServedLayer>;
  served?: ServedLayer;
  lazy?: LazyLayer;
  /** `use` notifications not yet released. */
  uses: number;
  /** Files of the layer open through FUSE: a container may read an open file long after its lookup. */
  holds: number;
  /** The sweep tick of the last access. */
  touched: number;
}

export interface LayerStoreStats {
  /** Open layers. */
  layers: Array<LazyLayerStats & { uses: number; images: string[] }>;
  /** Since start, layers closed since included. */
  totals: { bytesFetched: number; requests: number; fetchMillis: number; hits: number };
}

type Totals = LayerStoreStats['totals'];

/** What a layer's blob has cost: demand fetches, prefetch, whole-blob streams and index passes. */
function totalsOf(l: LazyLayerStats): Totals {
  return { bytesFetched: l.bytesFetched + l.bytesPrefetched + l.bytesStreamed + l.bytesIndexed, requests: l.requests, fetchMillis: l.fetchMillis, hits: l.hits };
}

function addTotals(to: Totals, from: Totals): void {
  to.bytesFetched += from.bytesFetched;
  to.requests += from.requests;
  to.fetchMillis += from.fetchMillis;
  to.hits += from.hits;
}

/**
 * The additional layer store's backend: a reference names an image in a
 * registry (resolved with the store's pull path: manifest and config only,
 * recorded in the store), a compressed digest names one of its layers, opened
 * through the same lazy layers as `lazyroot mount` (eStargz, zstd:chunked,
 * gzip or tar with a span index, plain gzip streamed once and indexed, plain
 * zstd fetched whole) and
 * the same partial blobs, so bytes fetched by either are kept once and
 * verified. Layers are keyed by digest: two images sharing a layer share it
 * here. A layer with no outstanding `use` is closed after `releaseAfterMs`
 * without access, and opened again when next looked up.
 */
export class RegistryLayerStore implements LayerStoreBackend {
  private readonly refs = new Map<string, Promise<ResolvedRef>>();
  private readonly slots = new Map<string, LayerSlot>();
  private readonly imagesOf = new Map<Digest, Set<string>>();
  private readonly group = new LazyBlobGroup({});
  private readonly opened = new Map<Digest, Promise<LazyBlob>>();
  /** Every layer's decoded spans and chunks: one memory bound for the daemon (cacheBytes). */
  private readonly decodedCache: LRUCache<string, Buffer>;
  private tick = 0;
  /** Totals of layers closed since start. */
  private readonly closedTotals: Totals = { bytesFetched: 0, requests: 0, fetchMillis: 0, hits: 0 };
  private readonly sweeper: NodeJS.Timeout;
  private readonly idleTicks: number;
  /** While the store serves, garbage collection leaves the blobs of every image it resolved alone (as a mount daemon's lease). */
  private readonly lease: string;

  constructor(
    private readonly store: Store,
    private readonly options: RegistryLayerStoreOptions = {},
  ) {
    this.lease = store.db.createLease();
    this.decodedCache = decodedBytesCache(options.cacheBytes ?? defaultCacheBytes);
    const releaseAfterMs = options.releaseAfterMs ?? 5 * 60_000;
    const sweepMs = Math.max(100, Math.min(30_000, Math.floor(releaseAfterMs / 2)));
    this.idleTicks = Math.max(1, Math.ceil(releaseAfterMs / sweepMs));
    this.sweeper = setInterval(() => {
      this.tick++;
      void this.releaseIdle();
    }, sweepMs);
    this.sweeper.unref();
  }

  peek(_imageRef: string, digest: string): ServedLayer | undefined {
    const slot = this.slots.get(digest);
    if (!slot?.served) return undefined;
    slot.touched = this.tick;
    return slot.served;
  }

  open(imageRef: string, digest: string): Promise<ServedLayer> {
    let slot = this.slots.get(digest);
    if (!slot) {
      const created: LayerSlot = { digest: digest as Digest, opening: undefined as unknown as Promise<ServedLayer>, uses: 0, holds: 0, touched: this.tick };
      created.opening = this.openLayer(imageRef, created).then(
        (served) => (created.served = served),
        (err: unknown) => {
          if (this.slots.get(digest) === created) this.slots.delete(digest); // a later lookup tries again
          throw err;
        },
      );
      this.slots.set(digest, (slot = created));
    }
    slot.touched = this.tick;
    return slot.opening;
  }

  use(_imageRef: string, digest: string): void {
    const slot = this.slots.get(digest);
    if (slot) {
      slot.uses++;
      slot.touched = this.tick;
    }
  }

  release(_imageRef: string, digest: string): void {
    const slot = this.slots.get(digest);
    if (slot && slot.uses > 0) slot.uses--;
  }

  stats(): LayerStoreStats {
    const layers: LayerStoreStats['layers'] = [];
    const totals = { ...this.closedTotals };
    for (const slot of this.slots.values()) {
      if (!slot.lazy) continue;
      const stats = slot.lazy.stats();
      addTotals(totals, totalsOf(stats));
      layers.push({ ...stats, uses: slot.uses, images: [...(this.imagesOf.get(slot.digest) ?? [])] });
    }
    return { layers, totals };
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    for (const slot of [...this.slots.values()]) await this.closeSlot(slot);
    for (const resolved of this.refs.values()) await resolved.then((r) => r.source.close()).catch(() => undefined);
    this.refs.clear();
    this.store.db.dropLease(this.lease);
  }

  /** Closes layers nobody uses and nobody touched for a while: their blob files, caches and trees go. */
  private async releaseIdle(): Promise<void> {
    for (const slot of [...this.slots.values()]) {
      if (slot.uses > 0 || slot.holds > 0 || !slot.served || this.tick - slot.touched < this.idleTicks) continue;
      await this.closeSlot(slot);
    }
  }

  private async closeSlot(slot: LayerSlot): Promise<void> {
    if (this.slots.get(slot.digest) === slot) this.slots.delete(slot.digest);
    await slot.opening.catch(() => undefined);
    this.opened.delete(slot.digest);
    if (slot.lazy) addTotals(this.closedTotals, totalsOf(slot.lazy.stats()));
    await slot.lazy?.close().catch((err: unknown) => this.options.logger?.(`close layer ${slot.digest}`, err));
  }

  /** The image a reference names: manifest and config from its registry, recorded in the store. */
  private resolve(imageRef: string, refresh = false): Promise<ResolvedRef> {
    const known = this.refs.get(imageRef);
    if (known && !refresh) return known;
    const resolving = (async (): Promise<ResolvedRef> => {
      const text = `docker://${imageRef}`;
      const { platform, registry } = this.options;
      const { image } = await pullReference(this.store, text, { ...(platform ? { platform } : {}), ...(registry ? { registry } : {}), fetchLayers: false, lease: this.lease });
      this.store.db.addToLease(this.lease, this.store.blobsOf(image));
      const logger = this.options.logger;
      const registryOptions = { ...this.options.registry, ...(logger ? { onMirrorSkipped: (message: string) => logger(message, undefined) } : {}) };
      const source = await openSource(parseReference(text), { tmpDir: this.store.paths.tmp, registry: registryOptions });
      return { image, source, ...(this.options.remoteIndex !== false ? { remote: new RemoteIndexes(this.store, source, image, this.options.logger) } : {}) };
    })();
    resolving.catch(() => {
      if (this.refs.get(imageRef) === resolving) this.refs.delete(imageRef);
    });
    if (known) void known.then((r) => r.source.close()).catch(() => undefined);
    this.refs.set(imageRef, resolving);
    return resolving;
  }

  /** Index of the layer with compressed digest `digest` in the image, or -1. */
  private layerIndex(image: ImageRecord, digest: string): number {
    return image.chainIds.findIndex((chainId) => this.store.db.layer(chainId)?.blobs[0]?.digest === digest);
  }

  private async openLayer(imageRef: string, slot: LayerSlot): Promise<ServedLayer> {
    let resolved = await this.resolve(imageRef);
    let i = this.layerIndex(resolved.image, slot.digest);
    // A tag may have moved since it was resolved: ask the registry once more.
    if (i < 0) {
      resolved = await this.resolve(imageRef, true);
      i = this.layerIndex(resolved.image, slot.digest);
    }
    if (i < 0) throw new LazyrootError('NOT_FOUND', `layer store: image ${imageRef} (${shortDigest(resolved.image.id)}) has no layer ${slot.digest}`);
    const { image, source } = resolved;
    const context: MountLayerContext = {
      group: this.group,
      opened: this.opened,
      decodedCache: this.decodedCache,
      ...(resolved.remote ? { remoteIndexes: resolved.remote } : {}),
    };
    const lazy = await prepareLayer(this.store, source, image, i, image.chainIds[i]!, {
      cacheBytes: this.options.cacheBytes ?? defaultCacheBytes,
      ...(this.options.deadlineMs !== undefined ? { deadlineMs: this.options.deadlineMs } : {}),
      ...(this.options.readAheadBytes !== undefined ? { readAheadBytes: this.options.readAheadBytes } : {}),
      ...(this.options.logger ? { logger: this.options.logger } : {}),
    }, context);
    slot.lazy = lazy;
    let images = this.imagesOf.get(slot.digest);
    if (!images) this.imagesOf.set(slot.digest, (images = new Set()));
    images.add(imageRef);
    const record = this.store.db.layer(image.chainIds[i]!)!;
    const blobRecord = record.blobs[0]!;
    const compression = compressionOf(blobRecord.mediaType) ?? 'gzip';
    const diff = buildTree(overlayLowerEntries(lazy.entries, 0, await this.lowerDirs(imageRef, image, i)));
    const info = layerInfoJson({ digest: blobRecord.digest, size: blobRecord.size, diffId: record.diffId, compression, ...(lazy.uncompressedSize !== undefined ? { uncompressedSize: lazy.uncompressedSize } : {}) });
    return {
      diff,
      info,
      blobSize: blobRecord.size,
      readFile: (node, position, length) => lazy.read(node.entry!, position, length),
      readBlob: (start, end) => readBlobVerified(lazy, start, end),
      hold: () => {
        slot.holds++;
        slot.touched = this.tick;
      },
      unhold: () => {
        slot.holds--;
        slot.touched = this.tick;
      },
    };
  }

  /**
   * The directories of the layers below layer i, topmost first: where an
   * implicit parent of layer i takes its mode, owner and times from. Opens
   * those layers (Podman asks for every layer of the image anyway); one that
   * cannot be opened is passed over.
   */
  private async lowerDirs(imageRef: string, image: ImageRecord, i: number): Promise<(path: string) => IndexEntry | undefined> {
    const lowers: Array<Map<string, IndexEntry>> = [];
    for (let j = i - 1; j >= 0; j--) {
      const digest = this.store.db.layer(image.chainIds[j]!)?.blobs[0]?.digest;
      if (!digest) continue;
      await this.open(imageRef, digest).catch(() => undefined);
      const entries = this.slots.get(digest)?.lazy?.entries ?? [];
      lowers.push(new Map(entries.filter((e) => e.type === 'dir').map((e) => [e.path, e])));
    }
    return (path) => {
      for (const dirs of lowers) {
        const hit = dirs.get(path);
        if (hit) return hit;
      }
      return undefined;
    };
  }
}

/**
 * Bytes [start, end) of the layer's blob as stored, never unverified: from
 * the store when present; else the units around them (gzip spans, eStargz
 * members) are fetched and checked against the index's digests; bytes no unit
 * vouches for (a gzip header or trailer, an eStargz TOC) come once the whole
 * blob has been fetched and checked against its digest.
 */
async function readBlobVerified(layer: LazyLayer, start: number, end: number): Promise<Buffer> {
  const { blob } = layer;
  if (blob.isComplete) return blob.read(start, end);
  const kept = await blob.readVerified(start, end);
  if (kept) return kept;
  const units = layer.prefetchUnits();
  await blob.fetchRegion(units, start, end, 0);
  const fetched = await blob.readVerified(start, end);
  if (fetched) return fetched;
  await blob.prefetch(units, { signal: new AbortController().signal });
  const whole = await blob.readVerified(start, end);
  if (!whole) throw new LazyrootError('UNAVAILABLE', `layer ${blob.digest}: bytes ${start}-${end} of the blob could not be verified`);
  return whole;
}

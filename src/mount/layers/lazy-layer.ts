import type { LRUCache } from 'lru-cache';
import type { Digest } from '../../oci/digest.js';
import type { IndexEntry } from '../../index/types.js';
import type { LayerIndex } from '../../index/layer-index.js';
import type { ImageSource } from '../../source/image-source.js';
import type { FetchAheadOptions, LazyBlob, LazyBlobGroup, PrefetchState, PrefetchUnit } from '../../store/lazy-blob.js';
import type { Store } from '../../store/store.js';

/**
 * One layer of a lazy mount, whatever backs it (stargz-snapshotter's
 * `fs/layer.Layer`): an eStargz blob read by chunks, a gzip or plain tar blob
 * read through its span index, or a local tar (zstd, fetched whole). The
 * mount composes layers through this interface and never asks which kind it
 * holds.
 */
export interface LazyLayer {
  readonly digest: Digest;
  readonly kind: LazyLayerKind;
  /** Bytes of the uncompressed tar, when the index knows it (gzip and tar: yes; eStargz: no). */
  readonly uncompressedSize?: number;
  /** The layer's tar members, whiteouts included, as its index lists them. */
  readonly entries: readonly IndexEntry[];
  /**
   * Bytes [position, position + length) of a file of this layer, verified:
   * `entry` is its entry as the merged tree has it (`sourcePath`, when set,
   * is its path in this layer).
   */
  read(entry: LayerFile, position: number, length: number): Promise<Buffer>;
  /** The pieces prefetch fetches, in order, each with how it is verified; they cover the blob. */
  prefetchUnits(): PrefetchUnit[];
  /**
   * Fetches the blob's bytes in `ranges` (sorted; an access profile's) before
   * any read asks, verified and kept as reads keep them: LazyBlob.fetchAhead.
   */
  fetchAhead(ranges: ReadonlyArray<readonly [number, number]>, options: FetchAheadOptions): Promise<void>;
  /** Blob ranges the layer's producer marked to fetch first (eStargz: the entries before `.prefetch.landmark`). */
  readonly priorityRanges: ReadonlyArray<readonly [number, number]>;
  /** The blob behind the layer: bytes present, fetch statistics, prefetch. */
  readonly blob: LazyBlob;
  /**
   * Its index came from the registry and has not been checked against the
   * whole layer yet: what is derived from its entries (the merged tree) must
   * not be kept for later mounts.
   */
  readonly uncheckedIndex?: boolean;
  stats(): LazyLayerStats;
  close(): Promise<void>;
}

/** A file entry of a layer, possibly renamed by the union (`sourcePath` is then its path in the layer). */
export type LayerFile = IndexEntry & { sourcePath?: string };

export type LazyLayerKind = 'estargz' | 'zstd-chunked' | 'gzip' | 'tar' | 'zstd';

export interface LazyLayerStats {
  digest: Digest;
  format: LazyLayerKind;
  size: number;
  /** Verified bytes on disk (the whole size once complete). */
  present: number;
  /** In blobs/, verified whole. */
  complete: boolean;
  /** 'streamed' when it was downloaded whole because the registry ignores Range. */
  source: 'ranges' | 'streamed';
  prefetch: PrefetchState;
  prefetchError?: string;
  /** Demand reads' bytes and requests. */
  bytesFetched: number;
  requests: number;
  hits: number;
  misses: number;
  failures: number;
  fetchMillis: number;
  bytesPrefetched: number;
  prefetchRequests: number;
  prefetchFailures: number;
  bytesStreamed: number;
  evictedBytes: number;
  /** Downloaded whole before the mount: to build a missing index, or to read an unseekable (zstd) layer. */
  bytesIndexed: number;
}

/** What opening a layer needs: the store, the image's source, and what the mount's layers share. */
export interface LayerContext {
  store: Store;
  source: ImageSource;
  /** The mount's blobs: demand reads before prefetch, one bound on partial bytes. */
  group: LazyBlobGroup;
  /** Opens the blob (once per mount: an image may use one blob twice). */
  openBlob(): Promise<LazyBlob>;
  /** Names the layer in errors: `image …: layer i/n sha256:…`. */
  what: string;
  descriptor: { digest: Digest; size: number; mediaType: string; annotations?: Record<string, string> };
  diffId: Digest;
  /** Bound on the decoded bytes (spans, chunks) the mount keeps in memory, all layers together. */
  cacheBytes: number;
  /** Where they are kept: one LRU for the mount's layers, bounded at cacheBytes. */
  decodedCache: LRUCache<string, Buffer>;
  /** A demand read fetches up to this many blob bytes around what it needs (0: only what it needs). */
  readAheadBytes: number;
  /** Bound on an eStargz TOC's records (entries and chunks). */
  maxTocRecords?: number;
  /** Where what goes wrong in the background is logged. */
  log?: (message: string, error: unknown) => void;
  /** Span indexes pushed to the registry (remote-index.ts), tried before a layer without an index is streamed. */
  remoteIndex?: RemoteIndexLookup;
}

/** Where a layer's index may come from when the store has none: the registry's index artifact. */
export interface RemoteIndexLookup {
  /** With `whole`, every window is fetched now (an index to keep); else the index may fetch its windows as spans are decoded. */
  indexFor(layer: { digest: Digest; size: number }, diffId: Digest, compression: 'gzip' | 'none', what: string, options?: { whole?: boolean }): Promise<LayerIndex | undefined>;
}

/** The statistics every kind reports the same way, from its blob. */
export function blobLayerStats(kind: LazyLayerKind, digest: Digest, blob: LazyBlob, bytesIndexed: number): LazyLayerStats {
  return {
    digest,
    format: kind,
    size: blob.size,
    present: blob.bytesPresent,
    complete: blob.isComplete,
    source: blob.completedBy === 'streamed' ? 'streamed' : 'ranges',
    prefetch: blob.prefetchState,
    ...(blob.prefetchError ? { prefetchError: blob.prefetchError } : {}),
    ...blob.stats,
    bytesIndexed,
  };
}

import { LazyrootError, withContext } from '../errors.js';
import { chainIds } from '../oci/chain-id.js';
import { sha256, shortDigest, type Digest } from '../oci/digest.js';
import { compressionOf } from '../oci/media-types.js';
import { formatPlatform, hostPlatform } from '../oci/platform.js';
import type { Descriptor, Platform } from '../oci/types.js';
import type { ImageSource, ResolvedImage } from '../source/image-source.js';
import { DiffIdHasher } from './diff-id.js';
import type { ImageRecord } from './metadata-db.js';
import type { Store } from './store.js';

export type PullEvent =
  | { type: 'resolved'; name: string; manifestDigest: Digest; layers: Descriptor[] }
  | { type: 'blob-start'; digest: Digest; size: number }
  | { type: 'blob-progress'; digest: Digest; bytes: number }
  | { type: 'blob-done'; digest: Digest; downloaded: boolean };

export interface PullOptions {
  platform?: Platform;
  /** Layers downloaded at once. */
  concurrency?: number;
  /**
   * Check each layer's uncompressed bytes against the config's diff IDs while
   * downloading (always on for schema1 images, whose diff IDs are computed).
   */
  verifyDiffIds?: boolean;
  /**
   * False: record the image (manifest, config, layer descriptors) without
   * downloading layers — a lazy mount fetches what it reads. Default true.
   */
  fetchLayers?: boolean;
  /**
   * A lease the caller holds (MetadataDb.createLease): the pulled blobs are
   * added to it and stay safe from garbage collection until the caller drops
   * it, past the end of the pull (a mount daemon, for the life of its mount).
   * Default: a lease of the pull's own, dropped when the image is recorded.
   */
  lease?: string;
  onEvent?: (event: PullEvent) => void;
}

export interface PullResult {
  image: ImageRecord;
  /** Bytes fetched from the source by this pull (0 when everything was stored already). */
  bytesTransferred: number;
  layersDownloaded: number;
  layersReused: number;
}

interface LayerOutcome {
  downloaded: boolean;
  transferred: number;
  /** Diff ID computed from the bytes, when they were decompressed. */
  diffId?: Digest;
}

/**
 * Brings an image from a source into the store: resolve, download every blob
 * verified (each once, even across processes), then record the image in one
 * transaction. Until that transaction the image does not exist in the store;
 * a lease keeps the blobs already fetched safe from a concurrent GC.
 */
export async function pull(store: Store, source: ImageSource, options: PullOptions = {}): Promise<PullResult> {
  const platform = options.platform ?? hostPlatform();
  const resolved = await source.resolve(platform);
  const what = resolved.name;
  const emit = options.onEvent ?? (() => undefined);
  emit({ type: 'resolved', name: resolved.name, manifestDigest: resolved.manifestDigest, layers: resolved.manifest.layers });

  const lease = options.lease ?? store.db.createLease();
  try {
    const layers = resolved.manifest.layers;
    store.db.addToLease(lease, [resolved.manifestDigest, resolved.manifest.config.digest, ...layers.map((l) => l.digest)]);
    const computeDiffIds = resolved.schema1 !== undefined || options.verifyDiffIds === true;
    const fetchLayers = options.fetchLayers !== false || resolved.schema1 !== undefined; // schema1 needs its diff IDs computed
    const outcomes: LayerOutcome[] = fetchLayers
      ? await mapLimit(layers, options.concurrency ?? 3, (layer, i) =>
          ingestLayer(store, source, layer, `${what}: layer ${i + 1}/${layers.length} ${shortDigest(layer.digest)}`, computeDiffIds, emit),
        )
      : layers.map(() => ({ downloaded: false, transferred: 0 }));

    let image = resolved;
    if (resolved.schema1) {
      const built = resolved.schema1.build(outcomes.map((o) => o.diffId!));
      image = { ...resolved, ...built };
      store.db.addToLease(lease, [built.manifestDigest, sha256(built.configBytes)]);
    }
    const diffIds = image.config.rootfs.diff_ids;
    outcomes.forEach((o, i) => {
      if (o.diffId !== undefined && o.diffId !== diffIds[i]) {
        throw new LazyrootError(
          'DIGEST_MISMATCH',
          `${what}: layer ${i + 1}/${layers.length} ${layers[i]!.digest}: uncompressed content does not match the config's diff ID (want ${diffIds[i]}, got ${o.diffId})`,
        );
      }
    });

    const configDigest = sha256(image.configBytes);
    if (configDigest !== image.manifest.config.digest) {
      throw new LazyrootError('DIGEST_MISMATCH', `${what}: config: digest mismatch (want ${image.manifest.config.digest}, got ${configDigest})`);
    }
    await store.blobs.put(image.manifestDigest, image.manifestBytes, `${what}: manifest`);
    await store.blobs.put(configDigest, image.configBytes, `${what}: config`);

    const chain = chainIds(diffIds);
    store.db.recordImage({
      id: configDigest,
      name: resolved.name,
      manifestDigest: image.manifestDigest,
      manifestMediaType: image.manifestMediaType,
      platform: formatPlatform(image.platform),
      size: image.manifest.config.size + layers.reduce((n, l) => n + l.size, 0),
      layers: layers.map((layer, i) => ({
        chainId: chain[i]!,
        parentChainId: i === 0 ? null : chain[i - 1]!,
        diffId: diffIds[i]!,
        // An uncompressed layer's digest is its diff ID: verified as it was stored.
        diffIdVerified: outcomes[i]!.diffId !== undefined || (compressionOf(layer.mediaType) === 'none' && layer.digest === diffIds[i]),
        blob: { digest: layer.digest, mediaType: layer.mediaType, size: layer.size, ...(layer.annotations ? { annotations: layer.annotations } : {}) },
      })),
      blobs: [
        { digest: image.manifestDigest, size: image.manifestBytes.length, mediaType: image.manifestMediaType },
        { digest: configDigest, size: image.configBytes.length, mediaType: image.manifest.config.mediaType },
        ...(fetchLayers ? layers.map((l) => ({ digest: l.digest, size: l.size, mediaType: l.mediaType })) : []),
      ],
    });
    return {
      image: store.getImage(resolved.name),
      bytesTransferred: outcomes.reduce((n, o) => n + o.transferred, 0),
      layersDownloaded: outcomes.filter((o) => o.downloaded).length,
      layersReused: outcomes.filter((o) => !o.downloaded).length,
    };
  } finally {
    if (options.lease === undefined) store.db.dropLease(lease);
  }
}

async function ingestLayer(
  store: Store,
  source: ImageSource,
  layer: Descriptor,
  what: string,
  computeDiffId: boolean,
  emit: (event: PullEvent) => void,
): Promise<LayerOutcome> {
  const compression = compressionOf(layer.mediaType);
  if (compression === undefined) throw new LazyrootError('UNSUPPORTED', `${what}: unsupported media type ${layer.mediaType}`);
  let hasher = computeDiffId ? new DiffIdHasher(compression) : undefined;
  emit({ type: 'blob-start', digest: layer.digest, size: layer.size });
  try {
    const ingest = () =>
      store.blobs.ingest(layer.digest, layer.size, (offset) => source.openBlob(layer, offset), {
        what,
        onProgress: (bytes) => emit({ type: 'blob-progress', digest: layer.digest, bytes }),
        ...(hasher ? { tap: hasher.write } : {}),
      });
    let result: Awaited<ReturnType<typeof ingest>>;
    for (;;) {
      try {
        result = await ingest();
        break;
      } catch (err) {
        // A registry mirror sent the wrong bytes: the source passes it over for this blob; fetch it again
        // (the next host, the upstream last), with a fresh diff ID hasher (the old one saw the wrong bytes).
        const distrust = (source as { distrust?: (digest: string, err: unknown) => boolean }).distrust;
        const zlibCode = (err as NodeJS.ErrnoException | null)?.code;
        const wrongBytes = (err instanceof LazyrootError && err.code === 'DIGEST_MISMATCH') || (typeof zlibCode === 'string' && zlibCode.startsWith('Z_'));
        if (!wrongBytes || distrust?.call(source, layer.digest, err) !== true) throw err;
        if (hasher) {
          hasher.destroy();
          hasher = new DiffIdHasher(compression);
        }
      }
    }
    emit({ type: 'blob-done', digest: layer.digest, downloaded: result.downloaded });
    const outcome: LayerOutcome = { downloaded: result.downloaded, transferred: result.transferred };
    if (hasher) {
      try {
        outcome.diffId = (await hasher.finish()).diffId;
      } catch (err) {
        throw new LazyrootError('INVALID_DATA', `${what}: cannot decompress (${compression}): ${(err as Error).message}`, { cause: err });
      }
    }
    return outcome;
  } catch (err) {
    hasher?.destroy();
    // The decompressor may fail while the blob streams in (the diff ID is hashed on the way): bad data too.
    const zlibCode = (err as NodeJS.ErrnoException | null)?.code;
    if (!(err instanceof LazyrootError) && typeof zlibCode === 'string' && zlibCode.startsWith('Z_')) {
      throw new LazyrootError('INVALID_DATA', `${what}: cannot decompress (${compression}): ${(err as Error).message}`, { cause: err });
    }
    throw err instanceof LazyrootError && err.message.startsWith(what) ? err : withContext(err, what);
  }
}

/** Runs `fn` over `items` with at most `limit` running at once; keeps order; fails fast. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        results[i] = await fn(items[i]!, i);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

export type { ResolvedImage };

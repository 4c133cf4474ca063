import { LazyrootError, isDamagedBytes, isLazyrootError } from '../errors.js';
import { isTimedOut } from '../store/unanswered-ranges.js';
import { threadCpuMillis, tracePhase } from '../trace.js';
import { shortDigest, type Digest } from '../oci/digest.js';
import { parseReference } from '../reference/reference.js';
import type { ImageSource } from '../source/image-source.js';
import type { MirrorStats } from '../source/registry/mirror-host.js';
import { openSource } from '../source/open-source.js';
import type { LRUCache } from 'lru-cache';
import { decodedBytesCache } from '../index/gzip-reader.js';
import { LazyBlob, LazyBlobGroup } from '../store/lazy-blob.js';
import { FetchQueue } from '../store/fetch-queue.js';
import type { ImageRecord } from '../store/metadata-db.js';
import { pullReference, type ReferenceOptions } from '../store/operations.js';
import type { Store } from '../store/store.js';
import { mergeLayerTree, type MergedTree } from '../union/merge.js';
import type { IndexEntry } from '../index/types.js';
import { readCached, treeCachePath, writeCachedLater } from './mount-cache.js';
import { collectFromEntries, collectGarbage } from './daemon-memory.js';
import { buildTree, type FsNode } from '../fs/tree.js';
import { openMount, type FsStats, type MountedTree, type OpenMount } from '../fs/lazy-fs.js';
import type { LazyLayer, LazyLayerStats, RemoteIndexLookup } from './layers/lazy-layer.js';
import { RemoteIndexes } from './remote-index.js';
import { aheadRequests, fetchProfileAhead, ProfileRecorder, readProfile, writeProfile } from './access-profile.js';
import { openLazyLayer } from './layers/open-layer.js';
import { imagePrefix, isPrefix } from './image-prefix.js';
import { StartupFiles, startupProgram } from './startup-files.js';

export type { LazyLayerStats } from './layers/lazy-layer.js';

export interface LazyMountOptions extends ReferenceOptions {
  /** A read whose bytes have not arrived after this long fails with EIO. Default 30 s. */
  deadlineMs?: number;
  /** Decoded spans and chunks kept in memory, bytes, all layers together (one bound for the mount). Default 64 MiB. */
  cacheBytes?: number;
  allowOther?: boolean;
  /** Where mount failures are logged. */
  logger?: (message: string, error: unknown) => void;
  /**
   * Once mounted, download the rest of every layer in the background (one
   * request per layer at a time, paused while reads wait), verify it, and
   * promote each finished blob to blobs/ so the next create/run uses kernel
   * overlayfs. Default true.
   */
  prefetch?: boolean;
  /** Prefetch starts this long after the mount is ready. Default 1000 ms. */
  prefetchDelayMs?: number;
  /**
   * Bound on the bytes kept in partial blobs of this mount's incomplete
   * layers; past it the least recently used verified ranges are dropped
   * (and fetched again when read). Prefetch stays under it. Default: no bound.
   */
  cacheMaxBytes?: number;
  /**
   * A demand read fetches up to this many blob bytes around what it needs
   * (eStargz: the neighbouring gzip members, verified and kept), so reading
   * many small files costs a request per region. 0: only what it needs.
   * Default 1 MiB.
   */
  readAheadBytes?: number;
  /** Bound on an eStargz layer's TOC records (entries and chunks); past it the mount is refused. Default 2,000,000. */
  maxTocRecords?: number;
  /**
   * Fetch the image's recorded access profile (access-profile.ts) and each
   * eStargz layer's prioritized region at once, in parallel, while the mount
   * is being made. Default true; never with `prefetch: false` (nothing is
   * fetched before it is read then).
   */
  profile?: boolean;
  /**
   * Record which blob ranges reads need during the first `recordMillis` and
   * keep that as the image's access profile: true always, false never,
   * default when the image has none yet.
   */
  record?: boolean;
  /** How long a recording runs once the mount is ready (or until unmounted). Default 10 s. */
  recordMillis?: number;
  /**
   * Before streaming a gzip or tar layer that has no index in the store, look
   * for span indexes pushed to the registry (`lazyroot index --push`) and use
   * them (remote-index.ts). Default true.
   */
  remoteIndex?: boolean;
  /**
   * Serve only the image's first N layers (image-prefix.ts): the containerd
   * snapshotter's mount of a lazily served chain that no image ends with.
   * No access profile is read or recorded and no merged tree cached for such
   * a mount: both belong to the whole image. Default: every layer.
   */
  layerCount?: number;
  /**
   * Files (entry paths) read whole as soon as the merged tree is known, while
   * the FUSE and overlay mounts are being made: what a caller will read
   * before anything else (`run` reads /etc/passwd and /etc/group to build the
   * container's user). Missing paths, and anything but a regular file, are
   * passed over.
   */
  readAtMount?: string[];
  /**
   * The command a container of this mount will run instead of the image's
   * Cmd (its Entrypoint stays; [] runs the Cmd). With no access profile
   * recorded, that program's start is read once the mount serves: the file,
   * its ELF interpreter and libraries (startup-files.ts). Without a command
   * nothing is guessed; either way, an ELF file read from its start has its
   * interpreter and libraries read at once. Not with `profile: false` or
   * `prefetch: false`.
   */
  command?: string[];
}

/** The most of a readAtMount file read ahead: past it, the file is read when asked for. */
const readAtMountMaxBytes = 1 << 20;

export interface LazyMountStats {
  fs: FsStats;
  layers: LazyLayerStats[];
  /** Bytes demand reads fetched. */
  bytesFetched: number;
  /** Bytes background prefetch fetched. */
  bytesPrefetched: number;
  /** Bytes downloaded by streaming whole blobs (registry ignores Range). */
  bytesStreamed: number;
  /** Bytes downloaded whole before the mount, to build missing indexes (or to read zstd layers). */
  bytesIndexed: number;
  imageBytes: number;
  rangeSupport: string;
  /** The registry's mirrors (hosts.toml), in the order tried: answers used, failures, lies. */
  mirrors?: MirrorStats[];
  /** Every layer is in blobs/. */
  complete: boolean;
  prefetch: boolean;
  /** Milliseconds from the mount being ready until every layer was complete (when prefetch got it there). */
  prefetchMillis?: number;
  /** Bytes kept in partial blobs of incomplete layers, and the bound on them. */
  partialBytes: number;
  /** From the request to the mount being ready: wall time, and this process's CPU (TOCs or indexes, merge, tree). */
  mountMillis?: number;
  mountCpuMillis?: number;
  /**
   * The main thread's CPU in its parts (trace.ts threadCpuMillis; V8's and
   * libuv's threads not counted): up to every layer's index ready (TOCs or
   * span indexes fetched, checked, mapped), then the merged tree (merge and
   * FUSE tree, or both read back from the store).
   */
  indexCpuMillis?: number;
  treeCpuMillis?: number;
  cacheMaxBytes?: number;
  /** Blob bytes the recorded access profile (and eStargz prioritized regions) asked for at mount time. */
  profileBytes: number;
  /** Without a profile: the files of programs' starts read ahead (startup-files.ts), their bytes, and whether reads of them are under way. */
  startupFiles: number;
  startupBytes: number;
  startupReading: boolean;
  /** An access profile is being recorded now; 'written' once kept in the store. */
  recording: 'no' | 'yes' | 'written';
}

export interface LazyMount {
  image: ImageRecord;
  mountpoint: string;
  stats(): LazyMountStats;
  unmount(): Promise<void>;
}

/**
 * `lazyroot mount`: the image's merged root filesystem, read-only, over FUSE,
 * before its layers are downloaded. Only the manifest and config are fetched
 * up front; each layer is indexed (eStargz: its TOC by two range reads;
 * gzip/tar: a stored index, or one built by streaming the layer once), the
 * indexes are merged with the same union rules as the overlay path, and file
 * bytes are fetched by range when read, verified, and kept in the store.
 *
 * Then, unless `prefetch: false`, the rest of every layer is fetched in the
 * background (LazyBlob.prefetch: the eStargz prioritized region first, one
 * request per layer at a time, paused while reads wait), verified span by
 * span or chunk by chunk, and each finished blob is checked whole and moved to
 * blobs/ with its `blobs` row: the next create/run uses kernel overlayfs and
 * downloads nothing. A registry that answers Range with the whole blob gets
 * each blob streamed into the store once instead. `cacheMaxBytes` bounds the
 * bytes kept for layers not yet complete.
 */
export async function mountImageLazily(store: Store, ref: string, mountpoint: string, options: LazyMountOptions = {}): Promise<LazyMount> {
  const startedAt = performance.now();
  const startCpu = process.cpuUsage();
  const startThreadCpu = threadCpuMillis();
  tracePhase('lazy: start');
  const whole = store.findImage(ref) ?? (await pullReference(store, ref, { ...options, fetchLayers: false })).image;
  const image = imagePrefix(whole, options.layerCount);
  const wholeImage = !isPrefix(image, whole);
  const name = image.names[0];
  if (!name) throw new LazyrootError('FAILED_PRECONDITION', `image ${shortDigest(image.id)} has no name to fetch its layers by`);
  const source = await openSource(parseReference(name.startsWith('tarball:') ? name.slice(8) : name), {
    tmpDir: store.paths.tmp,
    registry: { ...options.registry, ...(options.logger ? { onMirrorSkipped: (message: string) => options.logger!(message, undefined) } : {}) },
  });
  tracePhase('lazy: image resolved');
  const layers: LazyLayer[] = [];
  const group = new LazyBlobGroup(options.cacheMaxBytes !== undefined ? { cacheMaxBytes: options.cacheMaxBytes } : {});
  const rangeSupport = (): string => (source as { rangeSupport?: string }).rangeSupport ?? 'local';
  const opened = new Map<Digest, Promise<LazyBlob>>();
  // One memory bound for the daemon: every layer's decoded spans and chunks share this LRU.
  const decodedCache = decodedBytesCache(options.cacheBytes ?? defaultCacheBytes);
  const blobs = async () => [...new Set(await Promise.allSettled(opened.values()))].flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  // Ends background fetching: the profile's requests and prefetch.
  const stopPrefetch = new AbortController();
  const closeAll = async () => {
    stopPrefetch.abort();
    for (const layer of layers) await layer.close().catch(() => undefined);
    for (const b of await blobs()) await b.close().catch(() => undefined);
    await source.close().catch(() => undefined);
  };
  // The FUSE mount is made while the layers' indexes are fetched and merged, and serves the tree once it is built.
  const fuseMount = openMount(mountpoint, {
    ...(options.allowOther !== undefined ? { allowOther: options.allowOther } : {}),
    timeoutMs: (options.deadlineMs ?? 30_000) + 5_000,
    fsName: `lazyroot:${name}`,
    ...(options.logger ? { logger: options.logger } : {}),
  });
  fuseMount.then(
    () => tracePhase('lazy: fuse mount made'),
    () => undefined, // met where the tree is served
  );
  try {
    // Layers are prepared at once (each is a TOC fetch or an index read, mostly waiting on I/O).
    // A registry that ignores Range costs nothing extra: each layer's first ranged request is
    // answered with the whole blob, which is kept (LazyBlob's onWholeBlob), one request per blob.
    const remoteIndexes = options.remoteIndex !== false ? new RemoteIndexes(store, source, whole, options.logger, options.deadlineMs) : undefined;
    const context: MountLayerContext = {
      group,
      opened,
      decodedCache,
      // Looked up once for the image (the whole one: the artifact's subject), when the first layer without an index
      // asks, or for its access profile (below).
      ...(remoteIndexes ? { remoteIndexes } : {}),
    };
    // A profile another machine pushed with the image's indexes (`index --push`) is looked for beside the
    // layers, when there is none here; the mount never waits for it: one found later serves the next mount.
    const fetchesAhead = options.profile !== false && options.prefetch !== false;
    const profileLookup = wholeImage && fetchesAhead && remoteIndexes ? lookupWithin(remoteIndexes.lookForProfile(), profileLookupMs, stopPrefetch.signal) : undefined;
    layers.push(...(await Promise.all(image.chainIds.map((chainId, i) => prepareLayer(store, source, image, i, chainId, options, context)))));
    tracePhase('lazy: layer indexes ready');
    const indexThreadCpu = threadCpuMillis();
    // A lower bound than a previous run's: trim what that run kept.
    group.enforceBound();
    // What the workload will read first goes out now, while the tree is being built and mounted.
    let profile = wholeImage ? await readProfile(store, image.id, options.logger) : undefined;
    // No profile here and the registry's lookup still under way (its answer waits while TOCs are read):
    // its profile is fetched ahead as soon as it is found, the mount not waiting for it.
    const profileFound = profile || !profileLookup ? Promise.resolve(profile) : profileLookup.then(() => readProfile(store, image.id, options.logger)).then((p) => (profile = p));
    let profileBytes = 0;
    // One request at a time until the FUSE mount is made: checking fetched bytes takes the threads
    // of libuv's pool, which the mount's own file operations need too (measured: the mount 200 ms late).
    const aheadQueue = new FetchQueue(1);
    const ahead = fetchesAhead
      ? profileFound.then((found) => fetchProfileAhead(layers, found, stopPrefetch.signal, aheadBudget(group), aheadQueue)).then((n) => void (profileBytes = n))
      : Promise.resolve();
    // The merged tree of an image is derived once and read back by later mounts.
    const treeKey = `rows:${layers.map((l) => `${l.digest}/${l.entries.length}`).join(',')}`;
    const treePath = treeCachePath(store, image.id);
    // Not from, nor into, the cache while an index from the registry is unchecked: a lying one must not outlive its removal.
    const cacheable = wholeImage && layers.every((l) => !l.uncheckedIndex);
    // Many entries: each stage (layer indexes, merge, tree) starts without the last one's garbage (daemon-memory.ts).
    const many = layers.reduce((n, l) => n + l.entries.length, 0) >= collectFromEntries;
    if (many) collectGarbage();
    const treeStartThreadCpu = threadCpuMillis();
    const tree = (cacheable ? treeFromCache(await readCached<CachedTree>(treePath, treeKey), layers) : undefined) ?? buildTree(mergeAndCache());
    const treeThreadCpu = threadCpuMillis();
    if (many) collectGarbage();
    function mergeAndCache(): MergedTree {
      const merged = mergeLayerTree(
        layers.map((l) => l.entries),
        (i) => `layer ${i + 1}/${layers.length} ${shortDigest(layers[i]!.digest)}`,
      );
      if (cacheable) writeCachedLater(store, treePath, treeKey, () => cachedTree(merged), options.logger);
      if (many) collectGarbage();
      return merged;
    }
    tracePhase('lazy: merged tree built');
    const reader = {
      read(node: FsNode, position: number, length: number): Promise<Buffer> {
        return layers[node.layer]!.read(node.entry, position, length);
      },
    };
    // Their bytes come in while the mounts are made; the reads that ask for them find them there
    // (or join the same fetch). A failure here is left for those reads to meet.
    const readsAtMount: Array<Promise<unknown>> = [];
    for (const path of options.readAtMount ?? []) {
      const node = tree.lookup(path);
      if (node?.entry.type === 'file' && node.entry.size > 0 && node.entry.size <= readAtMountMaxBytes) readsAtMount.push(reader.read(node, 0, node.entry.size).catch(() => undefined));
    }
    // No profile here: what programs load is read ahead (startup-files.ts): the container's program,
    // when the caller named it, once the mount has answered and the readAtMount files
    // (which the caller waits on first) are in (measured: begun with them, runc started 50 ms later);
    // and the interpreter and libraries of every ELF file read from its start, as soon as it is.
    const startup = fetchesAhead && wholeImage && !profile ? new StartupFiles(tree, reader, stopPrefetch.signal) : undefined;
    const served = startup
      ? {
          read(node: FsNode, position: number, length: number): Promise<Buffer> {
            const bytes = reader.read(node, position, length);
            if (position !== 0 || startup.full) return bytes;
            return bytes.then((b) => (startup.firstRead(node, b), b));
          },
        }
      : reader;
    const mounted: MountedTree = (await fuseMount).serve(tree, served);
    const guessing = startup
      ? Promise.all([...readsAtMount, new Promise((r) => setImmediate(r))])
          .then(async () => {
            const start = options.command && startupProgram(await store.configOf(whole), options.command);
            if (start) startup.program(start.program, start.path);
            const guess = await startup.settled();
            tracePhase(`lazy: startup files read (${guess.files.length}, ${guess.bytes} bytes)`);
          })
          .catch((err: unknown) => options.logger?.('reading what the container starts with', err))
      : Promise.resolve();
    tracePhase('lazy: fuse mounted');
    aheadQueue.setLimit(aheadRequests);
    const readyAt = Date.now();
    const cpu = process.cpuUsage(startCpu);
    const mountTime: Pick<LazyMountStats, 'mountMillis' | 'mountCpuMillis' | 'indexCpuMillis' | 'treeCpuMillis'> = {
      mountMillis: Math.round(performance.now() - startedAt),
      mountCpuMillis: Math.round((cpu.user + cpu.system) / 1000),
    };
    // Where the main thread's CPU cannot be read (no /proc), the parts are left out.
    if (startThreadCpu !== undefined && indexThreadCpu !== undefined) mountTime.indexCpuMillis = Math.round(indexThreadCpu - startThreadCpu);
    if (treeStartThreadCpu !== undefined && treeThreadCpu !== undefined) mountTime.treeCpuMillis = Math.round(treeThreadCpu - treeStartThreadCpu);
    let prefetchMillis: number | undefined;
    const prefetching = options.prefetch === false ? Promise.resolve() : prefetchAll();
    const recording = recordProfile(store, image.id, layers, wholeImage && (options.record ?? !profile) ? (options.recordMillis ?? 10_000) : undefined, options.logger);

    /**
     * Every layer's blob in the background. While the registry's Range
     * support is unknown only the first layer starts: if its first answer
     * shows Range is ignored, the others stream their blob whole at once
     * instead of each learning it from a wasted whole-blob answer.
     */
    async function prefetchAll(): Promise<void> {
      group.holdPrefetch(options.prefetchDelayMs ?? 1000);
      const { signal } = stopPrefetch;
      // Incomplete blobs first, smallest first: the first one is the probe of the registry's Range support.
      const unique = layers
        .filter((l, i) => layers.findIndex((o) => o.blob === l.blob) === i)
        .sort((a, b) => Number(a.blob.isComplete) - Number(b.blob.isComplete) || a.blob.size - b.blob.size);
      let first: Promise<void> | undefined;
      const one = async (layer: LazyLayer, i: number): Promise<void> => {
        if (i > 0 && first) await untilSettledOr(first, () => rangeSupport() !== 'unknown' || signal.aborted);
        try {
          // The plan (a walk over every entry) is made once the mount's first reads have had their turn.
          await group.untilUnheld(signal);
          await layer.blob.prefetch(layer.prefetchUnits(), { signal });
        } catch (err) {
          if (!signal.aborted) options.logger?.(`prefetch of ${layer.blob.digest} stopped`, err);
        }
      };
      if (unique.length === 0) return;
      // Under --cache-max-bytes, a blob that fits in the room left is prefetched before the next
      // starts: it completes and leaves the bound, instead of a bigger one taking the room first.
      const room = () => (options.cacheMaxBytes === undefined ? Infinity : options.cacheMaxBytes - group.partialBytes);
      const started: Array<Promise<void>> = [];
      for (const [i, layer] of unique.entries()) {
        const prefetching = one(layer, i);
        if (i === 0) first = prefetching;
        if (options.cacheMaxBytes !== undefined && !layer.blob.isComplete && layer.blob.size <= room()) await prefetching;
        else started.push(prefetching);
      }
      await Promise.all(started);
      if (unique.every((l) => l.blob.isComplete)) prefetchMillis = Date.now() - readyAt;
    }

    return {
      image,
      mountpoint,
      stats: () => {
        const per: LazyLayerStats[] = layers.map((l) => l.stats());
        const sum = (f: (l: LazyLayerStats) => number) => per.reduce((n, l) => n + f(l), 0);
        return {
          fs: mounted.stats(),
          layers: per,
          bytesFetched: sum((l) => l.bytesFetched),
          bytesPrefetched: sum((l) => l.bytesPrefetched),
          bytesStreamed: sum((l) => l.bytesStreamed),
          bytesIndexed: sum((l) => l.bytesIndexed),
          imageBytes: sum((l) => l.size),
          rangeSupport: rangeSupport(),
          ...((source as MirroredSource).mirrorStats?.().length ? { mirrors: (source as MirroredSource).mirrorStats!() } : {}),
          complete: per.every((l) => l.complete),
          prefetch: options.prefetch !== false,
          ...(prefetchMillis !== undefined ? { prefetchMillis } : {}),
          partialBytes: group.partialBytes,
          ...mountTime,
          ...(group.cacheMaxBytes !== undefined ? { cacheMaxBytes: group.cacheMaxBytes } : {}),
          profileBytes,
          startupFiles: startup?.guess.files.length ?? 0,
          startupBytes: startup?.guess.bytes ?? 0,
          startupReading: startup?.reading ?? false,
          recording: recording.state(),
        };
      },
      unmount: async () => {
        await recording.finish();
        tracePhase('lazy: profile written');
        stopPrefetch.abort();
        await Promise.all([prefetching.catch(() => undefined), ahead, guessing]);
        tracePhase('lazy: prefetch stopped');
        await mounted.unmount();
        tracePhase('lazy: fuse unmounted');
        await closeAll();
      },
    };
  } catch (err) {
    await fuseMount.then(
      (open: OpenMount) => open.abandon().catch((e: unknown) => options.logger?.(`unmount ${mountpoint}`, e)),
      () => undefined,
    );
    await closeAll();
    throw err;
  }
}

/**
 * An image's merged tree as its cache file (mount-cache.ts) keeps it: by
 * reference to the layers' entries, not a copy of them. Row i is the entry
 * `indexes[i]` of layer `layers[i]`, at that entry's own path unless
 * `paths[i]` says otherwise; `made` holds the entries the merge made
 * (implicit directories, the root, further names of hardlinked files) by row.
 */
interface CachedTree {
  layers: number[];
  indexes: number[];
  paths: Array<string | null>;
  made: Array<[number, string, IndexEntry]>;
}

function cachedTree(merged: MergedTree): CachedTree {
  const { paths, entries, layers, indexes } = merged;
  const out: CachedTree = { layers: Array.from(layers), indexes: Array.from(indexes), paths: new Array<string | null>(paths.length).fill(null), made: [] };
  for (let i = 0; i < paths.length; i++) {
    if (indexes[i]! < 0) out.made.push([i, paths[i]!, entries[i]!]);
    else if (paths[i] !== entries[i]!.path) out.paths[i] = paths[i]!;
  }
  return out;
}

/** The tree a cache file describes, over the layers' entries; undefined when it does not fit them (derive it again). */
function treeFromCache(cached: CachedTree | undefined, layers: readonly LazyLayer[]): ReturnType<typeof buildTree> | undefined {
  if (!cached) return undefined;
  try {
    const n = cached.layers.length;
    if (cached.indexes.length !== n || cached.paths.length !== n) return undefined;
    const paths: string[] = new Array(n);
    const entries: IndexEntry[] = new Array(n);
    const made = new Map(cached.made.map(([row, path, entry]) => [row, [path, entry] as const]));
    for (let i = 0; i < n; i++) {
      const own = made.get(i);
      if (own) {
        [paths[i], entries[i]] = own;
        continue;
      }
      const entry = layers[cached.layers[i]!]?.entries[cached.indexes[i]!];
      if (!entry) return undefined;
      entries[i] = entry;
      paths[i] = cached.paths[i] ?? entry.path;
    }
    return buildTree({ paths, entries, layers: Int32Array.from(cached.layers), indexes: Int32Array.from(cached.indexes) });
  } catch {
    return undefined;
  }
}

/** Under a cache bound, fetching ahead takes at most half the room left: the rest stays for reads and prefetch. */
function aheadBudget(group: LazyBlobGroup): number {
  return group.cacheMaxBytes === undefined ? Infinity : Math.max(0, Math.floor((group.cacheMaxBytes - group.partialBytes) / 2));
}

/**
 * Records the image's access profile for `millis` after the mount is ready
 * (undefined: no recording), then writes it to the store; `finish()` ends it
 * sooner (the mount is going away).
 */
function recordProfile(
  store: Store,
  image: Digest,
  layers: readonly LazyLayer[],
  millis: number | undefined,
  log: ((message: string, error: unknown) => void) | undefined,
): { state(): 'no' | 'yes' | 'written'; finish(): Promise<void> } {
  if (millis === undefined) return { state: () => 'no', finish: async () => undefined };
  const recorder = new ProfileRecorder(image, layers);
  let written = false;
  let finishing: Promise<void> | undefined;
  const finish = () =>
    (finishing ??= (async () => {
      clearTimeout(timer);
      const profile = recorder.stop();
      if (!profile) return;
      try {
        await writeProfile(store, profile);
        written = true;
      } catch (err) {
        log?.(`keeping the access profile of ${image}`, err);
      }
    })());
  const timer = setTimeout(() => void finish(), millis).unref();
  return { state: () => (written ? 'written' : recorder.recording ? 'yes' : 'no'), finish };
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Resolves when `work` settles or `done()` turns true, whichever is first (checked every 5 ms). */
async function untilSettledOr(work: Promise<unknown>, done: () => boolean): Promise<void> {
  let settled = false;
  void work.then(
    () => (settled = true),
    () => (settled = true),
  );
  while (!settled && !done()) await delay(5);
}

const defaultReadAheadBytes = 1 << 20;
const defaultCacheBytes = 64 << 20;

export interface MountLayerContext {
  group: LazyBlobGroup;
  /** Blobs already opened for this mount: an image may use one blob twice. */
  opened: Map<Digest, Promise<LazyBlob>>;
  decodedCache: LRUCache<string, Buffer>;
  /** The registry's span indexes for the image (none: layers without an index are streamed). */
  remoteIndexes?: RemoteIndexLookup;
}

/** Layer i of the image as a LazyLayer of whatever kind its descriptor says (also the layer store's way in). */
export async function prepareLayer(
  store: Store,
  source: ImageSource,
  image: ImageRecord,
  i: number,
  chainId: Digest,
  options: LazyMountOptions,
  context: MountLayerContext,
): Promise<LazyLayer> {
  const record = store.db.layer(chainId);
  const blobRecord = record?.blobs[0];
  if (!record || !blobRecord) throw new LazyrootError('NOT_FOUND', `image ${shortDigest(image.id)}: layer ${i + 1} not in the store`);
  const what = `image ${shortDigest(image.id)}: layer ${i + 1}/${image.chainIds.length} ${shortDigest(blobRecord.digest)}`;
  const descriptor = { digest: blobRecord.digest, size: blobRecord.size, mediaType: blobRecord.mediaType, ...(blobRecord.annotations ? { annotations: blobRecord.annotations } : {}) };
  if (!source.readRange) throw new LazyrootError('UNSUPPORTED', `${what}: the source cannot read byte ranges`);
  const readRange = source.readRange.bind(source);
  const openBlob = async (): Promise<LazyBlob> => {
    const known = context.opened.get(descriptor.digest);
    if (known) return known;
    const blob = LazyBlob.open(store, descriptor.digest, descriptor.size, (start, end, signal, onWholeBlob) => readRange(descriptor, start, end, { signal, onWholeBlob }), {
      what,
      mediaType: descriptor.mediaType,
      group: context.group,
      openStream: (offset, signal) => source.openBlob(descriptor, offset, { signal }),
      ...(options.deadlineMs !== undefined ? { deadlineMs: options.deadlineMs } : {}),
    });
    context.opened.set(descriptor.digest, blob);
    return blob;
  };
  const open = () =>
    openLazyLayer({
      store,
      source,
      group: context.group,
      openBlob,
      what,
      descriptor,
      diffId: record.diffId,
      cacheBytes: options.cacheBytes ?? defaultCacheBytes,
      decodedCache: context.decodedCache,
      readAheadBytes: options.readAheadBytes ?? defaultReadAheadBytes,
      ...(options.logger ? { log: options.logger } : {}),
      ...(options.maxTocRecords !== undefined ? { maxTocRecords: options.maxTocRecords } : {}),
      ...(context.remoteIndexes ? { remoteIndex: context.remoteIndexes } : {}),
    });
  // Bytes that fail verification (or do not even decode) and came from a registry mirror: the source passes
  // that mirror over for this blob, and the read is tried again (from the next host; the upstream last, and
  // what fails from the upstream fails as it always did).
  const passedOver = (err: unknown): boolean =>
    (isLazyrootError(err, 'DIGEST_MISMATCH') || isLazyrootError(err, 'INVALID_DATA') || isDamagedBytes(err)) &&
    (source as MirroredSource).distrust?.(descriptor.digest, err) === true;
  let layer: LazyLayer;
  for (let timeouts = 0, refused = 0; ; ) {
    try {
      layer = await open();
      break;
    } catch (err) {
      if (passedOver(err)) continue;
      // A request the source left unanswered (a stall) is asked again, afresh and with a whole
      // deadline, twice before the mount fails: a flaky link's resets and their back-off eat into
      // one deadline, and a mount that fails costs its user more than a retry does.
      if (isTimedOut(err) && timeouts++ < 2) {
        (await context.opened.get(descriptor.digest)?.catch(() => undefined))?.forgetUnanswered();
        continue;
      }
      // The footer and TOC as they arrived do not parse, or miss their digest: bytes damaged on the
      // way are likelier than a damaged blob, so they are fetched again (nothing of them was kept
      // as verified), twice; the third answer's fault is the blob's.
      if ((isLazyrootError(err, 'INVALID_DATA') || isLazyrootError(err, 'DIGEST_MISMATCH')) && refused++ < 2) continue;
      throw err;
    }
  }
  const read = layer.read;
  layer.read = async (entry, position, length) => {
    for (;;) {
      try {
        return await read(entry, position, length);
      } catch (err) {
        if (!passedOver(err)) throw err;
      }
    }
  };
  return layer;
}

/** A registry source with mirrors (RegistrySource): told when a blob's bytes were wrong. */
interface MirroredSource {
  distrust?(digest: Digest, err: unknown): boolean;
  mirrorStats?(): MirrorStats[];
}

/** How long a mount goes on looking for the registry's profile of an image (it never waits for it). */
const profileLookupMs = 5_000;

/** The lookup, given up on (resolved) after `ms` or when `signal` aborts. */
function lookupWithin(lookup: Promise<void>, ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    timer.unref();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    signal.addEventListener('abort', done, { once: true });
    lookup.then(done, done);
  });
}

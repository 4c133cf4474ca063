import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DigestMismatchError, LazyrootError } from '../errors.js';
import { createDecompressor } from '../oci/compression.js';
import { shortDigest, type Digest } from '../oci/digest.js';
import { compressionOf, type Compression } from '../oci/media-types.js';
import { tocDigestAnnotation } from '../index/estargz/toc.js';
import { syncDir } from '../store/atomic-file.js';
import { withLock } from '../store/lock.js';
import type { ImageRecord, LayerBlobRecord, LayerRecord } from '../store/metadata-db.js';
import type { Store } from '../store/store.js';
import type { IdMapping } from './id-mapping.js';
import { layerDirName } from './layer-dir-name.js';
import { LayerTarReader, type LayerTar } from './layer-tar-reader.js';
import { unpackLayer, unpackLayerTar } from './unpack-layer.js';
import { pathExists } from '../store/path-exists.js';

export interface UnpackedLayer {
  chainId: Digest;
  /** Directory name under layers/. */
  name: string;
  /** Absolute path of the overlay-format diff. */
  diff: string;
  /** `l/<id>`: short, store-relative path of a symlink to the diff. */
  link: string;
}

export { layerDirName };

const readyMarker = 'ready';


/**
 * Makes sure every layer of an image is unpacked, bottom-up, once per chain ID
 * (and ID mapping), shared by every image and rootfs that uses it. Each layer
 * is unpacked into a temp dir, its bytes checked against the diff ID, then
 * renamed into place: a `layers/<name>` directory is always complete.
 */
export async function ensureLayersUnpacked(
  store: Store,
  image: ImageRecord,
  options: { mapping?: IdMapping; onLayer?: (index: number, reused: boolean) => void } = {},
): Promise<UnpackedLayer[]> {
  const out: UnpackedLayer[] = [];
  const lowers: string[] = [];
  const dirs = image.chainIds.map((chainId) => store.paths.layerDir(layerDirName(chainId, options.mapping)));
  const isReady = (i: number) => pathExists(join(dirs[i]!, readyMarker));
  const tars = new TarSource(store);
  try {
    for (const [i, chainId] of image.chainIds.entries()) {
      const name = layerDirName(chainId, options.mapping);
      const dir = dirs[i]!;
      const what = `image ${shortDigest(image.id)}: layer ${i + 1}/${image.chainIds.length} (chain ${shortDigest(chainId)})`;
      let reused = true;
      if (!(await isReady(i))) {
        await tars.readAhead(chainId); // the worker starts while the lock is taken
        await withLock(join(store.paths.locks, `layer-${name}`), what, async () => {
          if (await isReady(i)) return;
          reused = false;
          let next = i + 1;
          while (next < dirs.length && (await isReady(next))) next++;
          await unpackInto(store, chainId, dir, [...lowers].reverse(), what, tars, image.chainIds[next], options.mapping);
        });
      }
      options.onLayer?.(i, reused);
      const diff = join(dir, 'diff');
      out.push({ chainId, name, diff, link: await ensureShortLink(store, name) });
      lowers.push(diff);
    }
  } finally {
    await tars.close();
  }
  return out;
}

/** The blob of a layer that is in the store, the last one found of those it may have. */
async function storedBlob(store: Store, chainId: Digest, what: string): Promise<{ layer: LayerRecord; blob: LayerBlobRecord; compression: Compression }> {
  const layer = store.db.layer(chainId);
  if (!layer) throw new LazyrootError('NOT_FOUND', `${what}: not in the store`);
  let blob;
  for (const b of layer.blobs) if (await store.blobs.has(b.digest, b.size)) blob = b;
  if (!blob) throw new LazyrootError('NOT_FOUND', `${what}: no blob of this layer is in the store (pull the image again)`);
  const compression = compressionOf(blob.mediaType);
  if (!compression) throw new LazyrootError('UNSUPPORTED', `${what}: unsupported media type ${blob.mediaType}`);
  return { layer, blob, compression };
}

/**
 * Below this many compressed bytes a layer is decompressed on the main
 * thread: starting the worker (some 40 ms before its first bytes) costs about
 * what it saves there (Debian layers: even at 10 MB; 13% faster at 16 MB,
 * 20% at 49 MB). Once started, the worker serves every later layer of the
 * image; it starts while the layer before is being unpacked when that one is
 * small, as the next layer's blob is read ahead.
 */
const workerMinBlobSize = 10 << 20;

/**
 * Where the layers' tars come from during one ensureLayersUnpacked call: a
 * LayerTarReader worker, started on the first big blob, or the main thread.
 * The next layer's blob is read ahead on the worker while this one is being
 * unpacked, so that its first bytes are waiting when its turn comes.
 */
class TarSource {
  private reader: LayerTarReader | undefined;
  private ahead: { chainId: Digest; tar: LayerTar } | undefined;

  constructor(private readonly store: Store) {}

  /** Starts reading the layer's blob on the worker, if that is where it will be read. */
  async readAhead(chainId: Digest): Promise<void> {
    if (this.ahead?.chainId === chainId) return;
    this.dropAhead();
    const found = await storedBlob(this.store, chainId, '').catch(() => undefined);
    const tar = found && this.onWorker(found.blob, found.compression);
    if (tar) this.ahead = { chainId, tar };
  }

  /** The layer's uncompressed tar: the one read ahead, or from the worker, or undefined to read it on the main thread. */
  take(chainId: Digest, blob: LayerBlobRecord, compression: Compression): LayerTar | undefined {
    if (this.ahead?.chainId === chainId) {
      const { tar } = this.ahead;
      this.ahead = undefined;
      return tar;
    }
    // The worker reads blobs in turn: one read ahead for another layer would hold this one up.
    this.dropAhead();
    return this.onWorker(blob, compression);
  }

  async close(): Promise<void> {
    this.dropAhead();
    await this.reader?.close();
  }

  private onWorker(blob: LayerBlobRecord, compression: Compression): LayerTar | undefined {
    if (!this.reader && blob.size < workerMinBlobSize) return undefined;
    this.reader ??= new LayerTarReader();
    return this.reader.read(this.store.blobs.path(blob.digest), compression);
  }

  private dropAhead(): void {
    this.ahead?.tar.stream.destroy();
    this.ahead = undefined;
  }
}

async function unpackInto(
  store: Store,
  chainId: Digest,
  dir: string,
  lowersTopFirst: string[],
  what: string,
  tars: TarSource,
  nextChainId: Digest | undefined,
  mapping?: IdMapping,
): Promise<void> {
  const { layer, blob, compression } = await storedBlob(store, chainId, what);
  await mkdir(store.paths.layers, { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  await rm(dir, { recursive: true, force: true }); // a crashed unpack left no ready marker
  await mkdir(join(tmp, 'diff'), { recursive: true, mode: 0o755 });
  try {
    const applier = {
      target: join(tmp, 'diff'),
      lowers: lowersTopFirst,
      what,
      ...(mapping ? { idMapping: mapping } : {}),
      // As the lazy mount decides (src/mount/lazy-mount.ts): the TOC digest annotation makes a layer eStargz.
      ...(blob.annotations?.[tocDigestAnnotation] ? { estargz: true } : {}),
    };
    const tar = tars.take(chainId, blob, compression);
    if (nextChainId) await tars.readAhead(nextChainId);
    const result = tar
      ? await unpackLayerTar(tar, applier)
      : await unpackLayer(store.blobs.openRead(blob.digest).pipe(createDecompressor(compression)), applier);
    if (result.diffId !== layer.diffId) throw new DigestMismatchError(`${what}: uncompressed content vs the config's diff ID`, layer.diffId, result.diffId);
    store.db.markDiffIdVerified(chainId, result.size);
    await writeFile(join(tmp, readyMarker), `${result.diffId}\n`);
    await rename(tmp, dir);
    await syncDir(store.paths.layers);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

/** `l/<12 hex>` → `../layers/<name>/diff`, as containers/storage keeps lowerdir= short. */
async function ensureShortLink(store: Store, name: string): Promise<string> {
  const id = createHash('sha256').update(name).digest('hex').slice(0, 12);
  const link = join(store.paths.links, id);
  const target = join('..', 'layers', name, 'diff');
  const current = await readlink(link).catch(() => undefined);
  if (current !== target) {
    await mkdir(store.paths.links, { recursive: true });
    await rm(link, { force: true });
    await symlink(target, link).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err; // another process made the same link
    });
  }
  return join('l', id);
}

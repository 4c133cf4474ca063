import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readlink, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DigestMismatchError, LazyrootError } from '../errors.js';
import { createDecompressor } from '../oci/compression.js';
import { digestHex, shortDigest, type Digest } from '../oci/digest.js';
import { compressionOf } from '../oci/media-types.js';
import { syncDir } from '../store/atomic-file.js';
import { withLock } from '../store/lock.js';
import type { ImageRecord } from '../store/metadata-db.js';
import type { Store } from '../store/store.js';
import { isIdentity, mappingKey, type IdMapping } from './id-mapping.js';
import { unpackLayer } from './unpack-layer.js';

export interface UnpackedLayer {
  chainId: Digest;
  /** Directory name under layers/. */
  name: string;
  /** Absolute path of the overlay-format diff. */
  diff: string;
  /** `l/<id>`: short, store-relative path of a symlink to the diff. */
  link: string;
}

/** A layer's directory name: its chain ID, plus the ID mapping its owners were mapped with. */
export function layerDirName(chainId: Digest, mapping?: IdMapping): string {
  const hex = digestHex(chainId);
  if (isIdentity(mapping)) return hex;
  return `${hex}-map-${createHash('sha256').update(mappingKey(mapping!)).digest('hex').slice(0, 12)}`;
}

const readyMarker = 'ready';

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

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
  for (const [i, chainId] of image.chainIds.entries()) {
    const name = layerDirName(chainId, options.mapping);
    const dir = store.paths.layerDir(name);
    const what = `image ${shortDigest(image.id)}: layer ${i + 1}/${image.chainIds.length} (chain ${shortDigest(chainId)})`;
    let reused = true;
    if (!(await exists(join(dir, readyMarker)))) {
      await withLock(join(store.paths.locks, `layer-${name}`), what, async () => {
        if (await exists(join(dir, readyMarker))) return;
        reused = false;
        await unpackInto(store, chainId, dir, [...lowers].reverse(), what, options.mapping);
      });
    }
    options.onLayer?.(i, reused);
    const diff = join(dir, 'diff');
    out.push({ chainId, name, diff, link: await ensureShortLink(store, name) });
    lowers.push(diff);
  }
  return out;
}

async function unpackInto(store: Store, chainId: Digest, dir: string, lowersTopFirst: string[], what: string, mapping?: IdMapping): Promise<void> {
  const layer = store.db.layer(chainId);
  if (!layer) throw new LazyrootError('NOT_FOUND', `${what}: not in the store`);
  let blob;
  for (const b of layer.blobs) if (await store.blobs.has(b.digest, b.size)) blob = b;
  if (!blob) throw new LazyrootError('NOT_FOUND', `${what}: no blob of this layer is in the store (pull the image again)`);
  const compression = compressionOf(blob.mediaType);
  if (!compression) throw new LazyrootError('UNSUPPORTED', `${what}: unsupported media type ${blob.mediaType}`);

  await mkdir(store.paths.layers, { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  await rm(dir, { recursive: true, force: true }); // a crashed unpack left no ready marker
  await mkdir(join(tmp, 'diff'), { recursive: true, mode: 0o755 });
  try {
    const tar = store.blobs.openRead(blob.digest).pipe(createDecompressor(compression));
    const result = await unpackLayer(tar, { target: join(tmp, 'diff'), lowers: lowersTopFirst, what, ...(mapping ? { idMapping: mapping } : {}) });
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

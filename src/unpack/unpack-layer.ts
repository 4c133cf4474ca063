import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tarStream from 'tar-stream';
import { LazyrootError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { DigestStream } from '../oci/digest-stream.js';
import { LayerApplier, type ApplierOptions } from './layer-applier.js';
import type { LayerTar } from './layer-tar-reader.js';
import { installTarPatches } from '../index/tar-stream-patches.js';

export interface UnpackResult {
  /** sha256 of the uncompressed tar: the layer's diff ID, as read. */
  diffId: Digest;
  size: number;
  entries: number;
}

/**
 * Unpacks an uncompressed layer tar stream into an overlay-format diff
 * directory, hashing every byte on the way so the caller can check the diff
 * ID. Members are applied strictly one at a time, in archive order.
 */
export async function unpackLayer(tar: Readable, options: ApplierOptions): Promise<UnpackResult> {
  const hashing = new DigestStream();
  const entries = await applyTar([tar, hashing], options);
  return { diffId: hashing.digest(), size: hashing.bytes, entries };
}

/** The same, for a tar a LayerTarReader decompresses and hashes on its worker thread. */
export async function unpackLayerTar(tar: LayerTar, options: ApplierOptions): Promise<UnpackResult> {
  const entries = await applyTar([tar.stream], options);
  const { diffId, size } = await tar.hashed;
  return { diffId, size, entries };
}

/** Pipes `streams` (the tar, then any pass-through) into tar-stream and applies each member; returns how many there were. */
async function applyTar(streams: Readable[], options: ApplierOptions): Promise<number> {
  installTarPatches();
  const applier = new LayerApplier(options);
  await applier.start();
  const extract = tarStream.extract();
  extract.on('entry', (header, body, next) => {
    applier.apply(header, body as unknown as Readable).then(
      () => next(),
      (err: unknown) => {
        body.resume();
        next(err as Error);
      },
    );
  });
  try {
    await pipeline([...streams, extract as unknown as Writable]);
  } catch (err) {
    if (err instanceof LazyrootError) throw err;
    throw new LazyrootError('HOSTILE_ARCHIVE', `${options.what}: not a valid tar stream: ${(err as Error).message}`, { cause: err });
  }
  // tar-stream stops at the end-of-archive blocks; the diff ID covers what follows too.
  await applier.finish();
  return applier.entries;
}

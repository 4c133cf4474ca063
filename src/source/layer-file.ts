import { createHash } from 'node:crypto';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { LazyrootError } from '../errors.js';
import { createDecompressor, sniffCompression } from '../oci/compression.js';
import type { Digest } from '../oci/digest.js';
import { DigestStream } from '../oci/digest-stream.js';
import { MediaType, type Compression } from '../oci/media-types.js';
import type { FileReader } from './file-reader.js';

/**
 * What a local layer file is, learnt in one pass over it: the digest and size
 * of its bytes, its compression from the magic number, and (when asked) its
 * diff ID, the digest of the uncompressed tar. Used where a layer comes with
 * no descriptor: a docker-archive's layer.tar, a plain rootfs tarball.
 */
export interface LayerFileFacts {
  digest: Digest;
  size: number;
  compression: Compression;
  mediaType: string;
  /** Set when computed: always for uncompressed layers, on request for others. */
  diffId?: Digest;
}

export function layerMediaTypeFor(compression: Compression): string {
  switch (compression) {
    case 'none':
      return MediaType.ociLayer;
    case 'gzip':
      return MediaType.ociLayerGzip;
    case 'zstd':
      return MediaType.ociLayerZstd;
  }
}

/** `what` names the layer in messages, e.g. `docker-archive:/a.tar: layer abc/layer.tar`. */
export async function examineLayerFile(
  files: FileReader,
  path: string,
  size: number,
  options: { diffId: boolean; what: string },
): Promise<LayerFileFacts> {
  const head: Buffer[] = [];
  for await (const chunk of files.open(path, 0, Math.min(4, size))) head.push(chunk as Buffer);
  const compression = sniffCompression(Buffer.concat(head));

  const hashBlob = new DigestStream();
  const tarHash = createHash('sha256');
  const tarHead = new TarHeadCheck();
  const hashTar = new Writable({
    write(chunk: Buffer, _enc, done) {
      tarHash.update(chunk);
      tarHead.push(chunk);
      done();
    },
  });
  const wantDiffId = options.diffId || compression === 'none';
  try {
    if (!wantDiffId) {
      await pipeline(files.open(path, 0, size), hashBlob, new Writable({ write: (_c, _e, done) => done() }));
    } else if (compression === 'none') {
      await pipeline(files.open(path, 0, size), hashBlob, hashTar);
    } else {
      await pipeline(files.open(path, 0, size), hashBlob, createDecompressor(compression), hashTar);
    }
  } catch (err) {
    throw new LazyrootError('INVALID_DATA', `${options.what}: cannot read ${compression === 'none' ? '' : `${compression} `}layer: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (hashBlob.bytes !== size) {
    throw new LazyrootError('SIZE_MISMATCH', `${options.what}: read ${hashBlob.bytes} bytes, expected ${size}`);
  }
  const facts: LayerFileFacts = { digest: hashBlob.digest(), size, compression, mediaType: layerMediaTypeFor(compression) };
  if (wantDiffId) {
    const problem = tarHead.problem();
    if (problem) throw new LazyrootError('INVALID_DATA', `${options.what}: not a tar archive (${problem})`);
    facts.diffId = `sha256:${tarHash.digest('hex')}`;
  }
  return facts;
}

/**
 * Checks that a stream starts like a tar: the first 512-byte header's checksum
 * holds, or the block is all zeros (an empty archive). Catches a file that is
 * not a tar at all before it becomes an image.
 */
class TarHeadCheck {
  private readonly block = Buffer.alloc(512);
  private filled = 0;

  push(chunk: Buffer): void {
    if (this.filled >= 512) return;
    const n = Math.min(512 - this.filled, chunk.length);
    chunk.copy(this.block, this.filled, 0, n);
    this.filled += n;
  }

  problem(): string | undefined {
    if (this.filled === 0) return 'empty';
    if (this.filled < 512) return 'shorter than one tar header';
    if (this.block.every((b) => b === 0)) return undefined;
    // The checksum counts the header's bytes with its own field (148..156) as spaces.
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : this.block[i]!;
    const stored = parseInt(this.block.subarray(148, 156).toString('latin1').replace(/[\0 ]+/g, ' ').trim(), 8);
    return stored === sum ? undefined : 'bad header checksum';
  }
}

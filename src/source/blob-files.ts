import { Readable } from 'node:stream';
import { DigestMismatchError, LazyrootError } from '../errors.js';
import { hasherFor, shortDigest } from '../oci/digest.js';
import type { Descriptor } from '../oci/types.js';
import { throwIfAborted, withFetchOptions } from './fetch-options.js';
import { missingFile, type FileReader } from './file-reader.js';
import type { FetchOptions } from './image-source.js';

/**
 * Blobs kept as files of a FileReader (a layout's blobs/sha256/…, an archive's
 * members): size checks against descriptors, verified whole reads of small
 * documents, streamed and ranged reads of layers. Shared by every local source.
 */

/** Manifests and indexes larger than this are refused (containerd's limit too). */
export const maxManifestBytes = 4 << 20;
/** Image configs larger than this are refused. */
export const maxConfigBytes = 32 << 20;

/** `manifest sha256:0123456789ab (blobs/sha256/0123…)`: how messages name a blob. */
function blobName(what: string, descriptor: Descriptor, path: string): string {
  return `${what} ${shortDigest(descriptor.digest)} (${path})`;
}

/** The blob's size after checking it is there and matches its descriptor. */
export async function checkedBlobSize(files: FileReader, path: string, descriptor: Descriptor, what: string): Promise<number> {
  const size = await files.size(path);
  if (size === undefined) throw missingFile(files, blobName(what, descriptor, path));
  if (size !== descriptor.size) {
    throw new LazyrootError(
      'SIZE_MISMATCH',
      `${files.description}: ${blobName(what, descriptor, path)}: descriptor says ${descriptor.size} bytes, the blob has ${size}`,
    );
  }
  return size;
}

/** Reads a whole small blob and checks its size and digest against the descriptor. */
export async function readVerifiedBlob(
  files: FileReader,
  path: string,
  descriptor: Descriptor,
  what: string,
  maxBytes: number,
): Promise<Buffer> {
  if (descriptor.size > maxBytes) {
    throw new LazyrootError(
      'INVALID_DATA',
      `${files.description}: ${blobName(what, descriptor, path)}: ${descriptor.size} bytes, more than the ${maxBytes} allowed`,
    );
  }
  const size = await checkedBlobSize(files, path, descriptor, what);
  const hash = hasherFor(descriptor.digest);
  const chunks: Buffer[] = [];
  for await (const chunk of files.open(path, 0, size)) {
    hash.update(chunk as Buffer);
    chunks.push(chunk as Buffer);
  }
  const got = `${descriptor.digest.slice(0, descriptor.digest.indexOf(':'))}:${hash.digest('hex')}`;
  if (got !== descriptor.digest) throw new DigestMismatchError(`${files.description}: ${what} ${descriptor.digest}`, descriptor.digest, got);
  return Buffer.concat(chunks);
}

/** Streams a blob from `offset` on. The caller verifies the digest (as with any source). */
export async function openBlobFile(
  files: FileReader,
  path: string,
  descriptor: Descriptor,
  offset: number,
  options: FetchOptions | undefined,
  what = 'blob',
): Promise<Readable> {
  throwIfAborted(options, `${files.description}: ${what} ${descriptor.digest}`);
  const size = await checkedBlobSize(files, path, descriptor, what);
  if (!Number.isSafeInteger(offset) || offset < 0 || offset > size) {
    throw new LazyrootError('INVALID_DATA', `${files.description}: ${blobName(what, descriptor, path)}: offset ${offset} outside its ${size} bytes`);
  }
  return withFetchOptions(files.open(path, offset, size), options);
}

/** Bytes [start, end) of a blob. */
export async function readBlobFileRange(
  files: FileReader,
  path: string,
  descriptor: Descriptor,
  start: number,
  end: number,
  options: FetchOptions | undefined,
  what = 'blob',
): Promise<Buffer> {
  throwIfAborted(options, `${files.description}: ${what} ${descriptor.digest}`);
  const size = await checkedBlobSize(files, path, descriptor, what);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end > size || start > end) {
    throw new LazyrootError('INVALID_DATA', `${files.description}: ${blobName(what, descriptor, path)}: range ${start}-${end} outside its ${size} bytes`);
  }
  const chunks: Buffer[] = [];
  for await (const chunk of withFetchOptions(files.open(path, start, end), options)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Streams a blob the source generated itself (a manifest, a config) from `offset` on. */
export function openMemoryBlob(bytes: Buffer, descriptor: Descriptor, offset: number, options: FetchOptions | undefined, description: string): Readable {
  throwIfAborted(options, `${description}: blob ${descriptor.digest}`);
  if (!Number.isSafeInteger(offset) || offset < 0 || offset > bytes.length) {
    throw new LazyrootError('INVALID_DATA', `${description}: blob ${descriptor.digest}: offset ${offset} outside its ${bytes.length} bytes`);
  }
  return withFetchOptions(Readable.from([bytes.subarray(offset)]), options);
}

/** Bytes [start, end) of a generated blob. */
export function readMemoryRange(bytes: Buffer, descriptor: Descriptor, start: number, end: number, description: string): Buffer {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end > bytes.length || start > end) {
    throw new LazyrootError('INVALID_DATA', `${description}: blob ${descriptor.digest}: range ${start}-${end} outside its ${bytes.length} bytes`);
  }
  return Buffer.from(bytes.subarray(start, end));
}

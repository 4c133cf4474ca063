import { createReadStream } from 'node:fs';
import { constants } from 'node:fs';
import { mkdir, open, readFile, rm, stat, truncate } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { DigestMismatchError, LazyrootError } from '../errors.js';
import { hasherFor, shortDigest, type Digest } from '../oci/digest.js';
import { commitFile, writeFileAtomic } from './atomic-file.js';
import { withLock } from './lock.js';
import type { StorePaths } from './paths.js';
import { VerifyingWriter } from './verifying-writer.js';

export interface IngestOptions {
  /** Names the blob in errors, e.g. `docker.io/library/alpine:3.20: layer sha256:ab12…`. */
  what: string;
  onProgress?: (bytes: number) => void;
  /** How many times a dropped transfer is resumed from where it stopped. */
  resumeAttempts?: number;
  /**
   * Sees every byte of the blob in order, resumed prefixes and blobs already
   * stored included (diff ID computation). A returned promise applies backpressure.
   */
  tap?: (chunk: Buffer) => Promise<void> | void;
}

export interface IngestResult {
  /** False when the blob was already in the store (nothing downloaded). */
  downloaded: boolean;
  /** Bytes that came from the source in this call. */
  transferred: number;
}

/**
 * Content-addressed blob files. A blob is written under `tmp/`, verified
 * against its digest and size, then renamed into `blobs/`: a file in `blobs/`
 * is always whole and correct. A download stopped by a crash is resumed.
 */
export class BlobStore {
  constructor(private readonly paths: StorePaths) {}

  path(digest: Digest): string {
    return this.paths.blob(digest);
  }

  async has(digest: Digest, size?: number): Promise<boolean> {
    try {
      const s = await stat(this.paths.blob(digest));
      return size === undefined || s.size === size;
    } catch {
      return false;
    }
  }

  async read(digest: Digest): Promise<Buffer> {
    try {
      return await readFile(this.paths.blob(digest));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new LazyrootError('NOT_FOUND', `blob ${digest} is not in the store`);
      }
      throw err;
    }
  }

  openRead(digest: Digest, start?: number, end?: number): Readable {
    return createReadStream(this.paths.blob(digest), { start, end });
  }

  /** Stores small bytes already in memory (manifests, configs), verified. */
  async put(digest: Digest, bytes: Buffer, what: string): Promise<void> {
    const got = `${digest.slice(0, digest.indexOf(':'))}:${hasherFor(digest).update(bytes).digest('hex')}`;
    if (got !== digest) throw new DigestMismatchError(what, digest, got);
    if (await this.has(digest, bytes.length)) return;
    const final = this.paths.blob(digest);
    await mkdir(dirname(final), { recursive: true });
    await mkdir(this.paths.tmp, { recursive: true });
    await writeFileAtomic(final, bytes, this.paths.tmp);
  }

  /**
   * Downloads a blob into the store unless it is there already. One process
   * at a time downloads a given blob (the others wait, then find it present).
   * `fetchFrom(offset)` must return the blob's bytes from `offset` on.
   */
  async ingest(
    digest: Digest,
    size: number,
    fetchFrom: (offset: number) => Promise<Readable>,
    options: IngestOptions,
  ): Promise<IngestResult> {
    if (!options.tap && (await this.has(digest, size))) return { downloaded: false, transferred: 0 };
    return withLock(this.paths.blobLock(digest), options.what, async () => {
      if (await this.has(digest, size)) {
        if (options.tap) await this.replay(this.paths.blob(digest), options.tap);
        return { downloaded: false, transferred: 0 };
      }
      return this.download(digest, size, fetchFrom, options);
    });
  }

  private async replay(path: string, tap: (chunk: Buffer) => Promise<void> | void): Promise<void> {
    for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) await tap(chunk as Buffer);
  }

  private async download(
    digest: Digest,
    size: number,
    fetchFrom: (offset: number) => Promise<Readable>,
    options: IngestOptions,
  ): Promise<IngestResult> {
    const tmpPath = this.paths.blobDownload(digest);
    await mkdir(this.paths.tmp, { recursive: true });
    await mkdir(dirname(this.paths.blob(digest)), { recursive: true });
    const hash = hasherFor(digest);
    let offset = 0;
    // Resume what an earlier, interrupted download left: hash its bytes first.
    const existing = await stat(tmpPath).catch(() => undefined);
    if (existing && existing.size <= size) {
      offset = existing.size;
      for await (const chunk of createReadStream(tmpPath, { highWaterMark: 1 << 20 })) {
        hash.update(chunk as Buffer);
        await options.tap?.(chunk as Buffer);
      }
      options.onProgress?.(offset);
    } else if (existing) {
      await truncate(tmpPath, 0);
    }
    const file = await open(tmpPath, constants.O_RDWR | constants.O_CREAT, 0o644);
    let transferred = 0;
    const attempts = options.resumeAttempts ?? 5;
    try {
      for (let attempt = 0; offset < size || attempt === 0; attempt++) {
        const writer = new VerifyingWriter(file, hash, offset, size, options.what, (n) => {
          transferred += n;
          options.onProgress?.(n);
        }, options.tap);
        let failure: unknown;
        try {
          for await (const chunk of await fetchFrom(offset)) await writer.write(chunk as Buffer);
        } catch (err) {
          failure = err;
        }
        // Also after a failure: what arrived is kept, and the retry asks for the rest.
        await writer.finish();
        offset = writer.written;
        if (failure !== undefined && !isResumable(failure)) throw failure;
        if (offset >= size) break;
        if (attempt >= attempts) {
          throw failure ?? new LazyrootError('SIZE_MISMATCH', `${options.what}: truncated: the source sent ${offset} of ${size} bytes`);
        }
        // Bytes so far are on disk and hashed: ask only for the rest.
      }
    } catch (err) {
      await file.close();
      // Wrong or excess bytes poison the download file; a dropped connection
      // keeps it, so the next pull resumes instead of starting again.
      if (!isResumable(err)) await rm(tmpPath, { force: true });
      throw diskFull(err, options.what, tmpPath) ?? err;
    }
    await file.close();
    const got = `${digest.slice(0, digest.indexOf(':'))}:${hash.digest('hex')}`;
    if (got !== digest) {
      await rm(tmpPath, { force: true });
      throw new DigestMismatchError(options.what, digest, got);
    }
    await commitFile(tmpPath, this.paths.blob(digest));
    return { downloaded: true, transferred };
  }

  async remove(digest: Digest): Promise<void> {
    await rm(this.paths.blob(digest), { force: true });
  }

  describe(digest: Digest): string {
    return shortDigest(digest);
  }
}

/** A full disk while downloading, said as such and with the blob it happened to (other failures pass as they are). */
function diskFull(err: unknown, what: string, path: string): LazyrootError | undefined {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code !== 'ENOSPC' && code !== 'EDQUOT') return undefined;
  return new LazyrootError('RESOURCE_EXHAUSTED', `${what}: the store's disk is full (${code} writing ${path})`, { cause: err });
}

/** A failure after which asking again from the same offset may succeed. */
function isResumable(err: unknown): boolean {
  if (err instanceof LazyrootError) return err.temporary;
  return isConnectionError(err);
}

function isConnectionError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return (
    code === 'ECONNRESET' ||
    code === 'EPIPE' ||
    code === 'ETIMEDOUT' ||
    code === 'UND_ERR_SOCKET' ||
    code === 'UND_ERR_BODY_TIMEOUT' ||
    code === 'UND_ERR_CONNECT_TIMEOUT' ||
    code === 'ECONNREFUSED'
  );
}

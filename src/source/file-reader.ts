import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { LazyrootError } from '../errors.js';

/**
 * Read access to the files of an image kept on disk: a directory, or the
 * members of a tar archive. The OCI layout logic runs over this, so a layout
 * directory and an oci-archive share it. Paths are relative and slash-separated.
 */
export interface FileReader {
  /** Names the container in messages: `oci:/srv/img`, `oci-archive:/tmp/a.tar`. */
  readonly description: string;
  /** 'archive' or 'directory', for "missing from archive" style messages. */
  readonly kind: 'archive' | 'directory';
  /** Size of a regular file, or undefined when there is none at that path. */
  size(path: string): Promise<number | undefined>;
  /** Bytes [start, end) of a file; the caller has checked the range against size(). */
  open(path: string, start: number, end: number): Readable;
  /** Releases what the reader holds (temp files). */
  close(): Promise<void>;
}

/** Refuses `..`, empty and absolute paths: every path a reader sees stays inside its root. */
export function normalizeRelativePath(path: string, what: string): string {
  const parts: string[] = [];
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (parts.length === 0) throw new LazyrootError('HOSTILE_ARCHIVE', `${what}: path ${JSON.stringify(path)} escapes the image root`);
      parts.pop();
      continue;
    }
    parts.push(part);
  }
  if (parts.length === 0) throw new LazyrootError('INVALID_DATA', `${what}: empty path ${JSON.stringify(path)}`);
  return parts.join('/');
}

/** Reads a whole file, refusing one larger than `maxBytes` (manifests and configs are small). */
export async function readWholeFile(reader: FileReader, path: string, maxBytes: number, what: string): Promise<Buffer> {
  const size = await reader.size(path);
  if (size === undefined) throw missingFile(reader, what);
  if (size > maxBytes) {
    throw new LazyrootError('INVALID_DATA', `${reader.description}: ${what}: ${size} bytes, more than the ${maxBytes} allowed`);
  }
  const chunks: Buffer[] = [];
  for await (const chunk of reader.open(path, 0, size)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

export function missingFile(reader: FileReader, what: string): LazyrootError {
  return new LazyrootError('NOT_FOUND', `${reader.description}: ${what}: missing from ${reader.kind}`);
}

/** A directory on disk, e.g. an OCI image layout. */
export class DirectoryReader implements FileReader {
  readonly kind = 'directory';

  constructor(
    private readonly root: string,
    readonly description: string,
  ) {}

  async size(path: string): Promise<number | undefined> {
    const full = join(this.root, normalizeRelativePath(path, this.description));
    try {
      const info = await stat(full);
      return info.isFile() ? info.size : undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
      throw new LazyrootError('UNAVAILABLE', `${this.description}: ${path}: ${(err as Error).message}`, { cause: err, temporary: false });
    }
  }

  open(path: string, start: number, end: number): Readable {
    const full = join(this.root, normalizeRelativePath(path, this.description));
    return readFileRange(full, start, end);
  }

  async close(): Promise<void> {}

  /** Fails clearly when the directory itself is missing, before any member lookups. */
  async checkExists(): Promise<void> {
    try {
      const info = await stat(this.root);
      if (!info.isDirectory()) throw new LazyrootError('INVALID_ARGUMENT', `${this.description}: not a directory`);
    } catch (err) {
      if (err instanceof LazyrootError) throw err;
      throw new LazyrootError('NOT_FOUND', `${this.description}: ${(err as Error).message}`, { cause: err });
    }
  }
}

/** Bytes [start, end) of a file on disk. */
export function readFileRange(path: string, start: number, end: number): Readable {
  // createReadStream's `end` is inclusive, and an empty range must read nothing.
  if (end <= start) return Readable.from([]);
  return createReadStream(path, { start, end: end - 1, highWaterMark: 256 * 1024 });
}

/** Opens a file just to probe that it is readable; used before any long pass over it. */
export async function checkReadableFile(path: string, description: string): Promise<number> {
  try {
    const handle = await open(path, 'r');
    try {
      const info = await handle.stat();
      if (!info.isFile()) throw new LazyrootError('INVALID_ARGUMENT', `${description}: not a regular file`);
      return info.size;
    } finally {
      await handle.close();
    }
  } catch (err) {
    if (err instanceof LazyrootError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new LazyrootError(code === 'ENOENT' ? 'NOT_FOUND' : 'INVALID_ARGUMENT', `${description}: ${(err as Error).message}`, { cause: err });
  }
}

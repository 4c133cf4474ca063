import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tarStream from 'tar-stream';
import { LazyrootError } from '../errors.js';
import { createDecompressor, sniffCompression } from '../oci/compression.js';
import { checkReadableFile, normalizeRelativePath, readFileRange, type FileReader } from './file-reader.js';

/** Where a member's bytes sit in the (uncompressed) tar file. */
interface Member {
  type: 'file' | 'symlink' | 'link' | 'directory' | 'other';
  /** Position of the member's data: just after its header(s), PAX and GNU long-name headers included. */
  offset: number;
  size: number;
  linkname?: string;
}

export interface TarArchiveOptions {
  /** A compressed archive is decompressed once into a new directory under here, removed by close(). */
  tmpDir: string;
  /** Names the archive in messages, e.g. `docker-archive:/srv/a.tar`. */
  description: string;
}

/** Links followed when resolving a member, as the kernel's limit on symlink hops. */
const maxLinkHops = 40;

/**
 * Random access to the members of a tar file without extracting it: one pass
 * records where each member's data starts, then reads are plain ranged reads of
 * the file. Symlinks and hard links between members are followed (docker 25+
 * `docker save` links `<id>/layer.tar` to `blobs/sha256/<hex>`), never outside it.
 */
export class TarArchive implements FileReader {
  readonly kind = 'archive';

  private constructor(
    readonly description: string,
    /** The uncompressed tar: the archive itself, or its decompressed copy. */
    private readonly tarPath: string,
    private readonly members: ReadonlyMap<string, Member>,
    private readonly tempDir: string | undefined,
  ) {}

  static async open(path: string, options: TarArchiveOptions): Promise<TarArchive> {
    const { description } = options;
    await checkReadableFile(path, description);
    const compression = sniffCompression(await readHead(path, 4));
    let tempDir: string | undefined;
    let tarPath = path;
    try {
      if (compression !== 'none') {
        tempDir = await mkdtemp(join(options.tmpDir, 'archive-'));
        tarPath = join(tempDir, 'archive.tar');
        try {
          await pipeline(createReadStream(path), createDecompressor(compression), createWriteStream(tarPath));
        } catch (err) {
          throw new LazyrootError('INVALID_DATA', `${description}: cannot decompress (${compression}): ${(err as Error).message}`, { cause: err });
        }
      }
      const members = await indexMembers(tarPath, description);
      return new TarArchive(description, tarPath, members, tempDir);
    } catch (err) {
      if (tempDir !== undefined) await rm(tempDir, { recursive: true, force: true });
      throw err;
    }
  }

  /** Normalised names of all members, in archive order (last copy of a duplicate). */
  names(): string[] {
    return [...this.members.keys()];
  }

  async size(path: string): Promise<number | undefined> {
    return this.resolve(path)?.size;
  }

  open(path: string, start: number, end: number): Readable {
    const member = this.resolve(path);
    if (member === undefined) throw new LazyrootError('NOT_FOUND', `${this.description}: ${path}: missing from archive`);
    if (start < 0 || end > member.size || start > end) {
      throw new LazyrootError('INVALID_DATA', `${this.description}: ${path}: range ${start}-${end} outside its ${member.size} bytes`);
    }
    return readFileRange(this.tarPath, member.offset + start, member.offset + end);
  }

  async close(): Promise<void> {
    if (this.tempDir !== undefined) await rm(this.tempDir, { recursive: true, force: true });
  }

  /** The regular-file member a path names, following links; undefined when there is none. */
  private resolve(path: string): Member | undefined {
    let name = normalizeRelativePath(path, this.description);
    for (let hop = 0; hop <= maxLinkHops; hop++) {
      const member = this.members.get(name);
      if (member === undefined) return undefined;
      switch (member.type) {
        case 'file':
          return member;
        case 'link':
          // Hard link names are archive paths, relative to the archive's root.
          name = normalizeRelativePath(member.linkname ?? '', `${this.description}: ${name}`);
          break;
        case 'symlink': {
          // Symlink targets are relative to the link's directory; absolute ones to the archive's root.
          const target = member.linkname ?? '';
          const joined = target.startsWith('/') ? target : posix.join(posix.dirname(name), target);
          name = normalizeRelativePath(joined, `${this.description}: ${name}`);
          break;
        }
        default:
          return undefined;
      }
    }
    throw new LazyrootError('INVALID_DATA', `${this.description}: ${path}: more than ${maxLinkHops} links`);
  }
}

async function readHead(path: string, length: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buffer, 0, length, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

function memberType(type: string): Member['type'] {
  switch (type) {
    case 'file':
    case 'contiguous-file':
      return 'file';
    case 'symlink':
    case 'link':
    case 'directory':
      return type;
    default:
      return 'other';
  }
}

/** One pass over the tar: name → where its data is. */
async function indexMembers(tarPath: string, description: string): Promise<Map<string, Member>> {
  const members = new Map<string, Member>();
  // allowUnknownFormat: pre-POSIX (v7) tars have no ustar magic; header checksums still guard garbage.
  const extract = tarStream.extract({ allowUnknownFormat: true } as Parameters<typeof tarStream.extract>[0]);
  const walk = async (): Promise<void> => {
    for await (const entry of extract) {
      const header = entry.header as tarStream.Header & { byteOffset: number };
      const name = memberName(header.name);
      if (name !== undefined) {
        const member: Member = { type: memberType(header.type), offset: header.byteOffset, size: header.size };
        if (header.linkname) member.linkname = header.linkname;
        members.set(name, member);
      }
      entry.resume();
    }
  };
  try {
    await Promise.all([pipeline(createReadStream(tarPath, { highWaterMark: 1 << 20 }), extract), walk()]);
  } catch (err) {
    const message = (err as Error).message;
    const why = /unexpected end/i.test(message) ? 'truncated' : message;
    throw new LazyrootError('INVALID_DATA', `${description}: not a valid tar archive (${why})`, { cause: err });
  }
  return members;
}

/** The lookup name of a member (`./a//b/` → `a/b`), or undefined for names that could only escape. */
function memberName(raw: string): string | undefined {
  try {
    return normalizeRelativePath(raw.replace(/^\/+/, ''), 'member');
  } catch {
    return undefined;
  }
}

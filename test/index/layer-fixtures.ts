/**
 * Real layers for the index tests, made by GNU tar and gzip from a directory
 * of generated files: compressible text, incompressible random bytes, runs of
 * zeros, many small files, empty files, a PAX sparse file.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { BlobRangeReader } from '../../src/index/types.js';

export interface FixtureLayer {
  dir: string;
  /** Path inside the layer → the file's bytes. */
  files: Map<string, Buffer>;
  tar: Buffer;
}

const words = 'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua layer index gzip checkpoint window span digest'.split(' ');

/** Text that compresses about 3:1, like source code and configs. */
export function compressibleText(bytes: number): Buffer {
  const random = randomBytes(Math.ceil(bytes / 3));
  const parts: string[] = [];
  let length = 0;
  for (let i = 0; length < bytes; i++) {
    const r = random[i % random.length]! ^ (i >> 8);
    const word = r % 17 === 0 ? `${r}\n` : `${words[r % words.length]} `;
    parts.push(word);
    length += word.length;
  }
  return Buffer.from(parts.join('')).subarray(0, bytes);
}

/** Writes the files and tars them with GNU tar (PAX format, sparse files kept sparse). */
export async function makeLayer(spec: { incompressible: number; compressible: number; small: number; zeros: number; sparse?: boolean }): Promise<FixtureLayer> {
  const dir = await mkdtemp(join(tmpdir(), 'lazyroot-index-'));
  const root = join(dir, 'root');
  const files = new Map<string, Buffer>();
  const put = async (path: string, data: Buffer): Promise<void> => {
    await mkdir(join(root, path, '..'), { recursive: true });
    await writeFile(join(root, path), data);
    files.set(path, data);
  };
  for (let i = 0; i < spec.incompressible; i++) await put(`bin/random-${i}.bin`, randomBytes(1_500_000 + i * 333_333));
  for (let i = 0; i < spec.compressible; i++) await put(`usr/share/doc/text-${i}.txt`, compressibleText(700_000 + i * 111_111));
  for (let i = 0; i < spec.small; i++) {
    const size = (i * 7919) % 20_000;
    await put(`etc/conf.d/small-${i}.conf`, i % 3 ? compressibleText(size) : randomBytes(size));
  }
  for (let i = 0; i < spec.zeros; i++) await put(`var/lib/zeros-${i}.img`, Buffer.alloc(2_000_000 + i));
  await put('empty/empty-file', Buffer.alloc(0));
  if (spec.sparse) {
    const path = 'var/lib/sparse.img';
    const size = 6_000_000;
    const content = Buffer.alloc(size);
    const handle = await open(join(root, path), 'w');
    for (const [at, data] of [[4096 * 3, randomBytes(10_000)], [1_000_000, compressibleText(300_000)], [5_000_000, randomBytes(4096)]] as const) {
      await handle.write(data, 0, data.length, at);
      data.copy(content, at);
    }
    await handle.truncate(size);
    await handle.close();
    files.set(path, content);
  }
  const tar = execFileSync('tar', ['--format=posix', '--sparse', '--sort=name', '--mtime=2024-01-01', '-C', root, '-cf', '-', '.'], { maxBuffer: 1 << 30 });
  return { dir, files, tar };
}

/** `gzip -c` of the bytes (the real tool, with its own header flags). */
export function gzipCli(data: Buffer, level = 6): Buffer {
  const result = spawnSync('gzip', [`-${level}`, '-c'], { input: data, maxBuffer: 1 << 30 });
  if (result.status !== 0) throw new Error(`gzip failed: ${result.stderr.toString()}`);
  return result.stdout;
}

/** Several gzip members back to back, split at the given offsets of `data`. */
export function multiMemberGzip(data: Buffer, cuts: number[]): Buffer {
  const bounds = [0, ...cuts, data.length];
  const members = [];
  for (let i = 0; i + 1 < bounds.length; i++) members.push(gzipCli(data.subarray(bounds[i], bounds[i + 1])));
  return Buffer.concat(members);
}

/** A BlobRangeReader over memory that counts what it is asked for, optionally corrupting one byte. */
export class MemoryBlob implements BlobRangeReader {
  calls: Array<[number, number]> = [];
  bytes = 0;
  constructor(
    private readonly data: Buffer,
    private readonly corruptAt?: number,
  ) {}
  get size(): number {
    return this.data.length;
  }
  async read(start: number, end: number): Promise<Buffer> {
    this.calls.push([start, end]);
    this.bytes += end - start;
    const out = Buffer.from(this.data.subarray(start, end));
    if (this.corruptAt !== undefined && this.corruptAt >= start && this.corruptAt < end) out[this.corruptAt - start]! ^= 0x40;
    return out;
  }
}

/** A stream of the buffer in `chunk`-byte pieces, as a file or socket would deliver it. */
export function chunked(data: Buffer, chunk = 65536): Readable {
  function* pieces(): Generator<Buffer> {
    for (let i = 0; i < data.length; i += chunk) yield data.subarray(i, i + chunk);
  }
  return Readable.from(pieces());
}

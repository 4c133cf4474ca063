/**
 * Builds layer tars in memory, one readable line per edge case
 * (the idea of stargz-snapshotter's util/testutil/tar.go):
 *
 *   const layer = await buildTar([
 *     dir('etc'),
 *     file('etc/hosts', '127.0.0.1 localhost\n', { mode: 0o644 }),
 *     symlink('bin', 'usr/bin'),
 *     hardlink('usr/bin/sh2', 'usr/bin/sh'),
 *     whiteout('etc/old.conf'),          // etc/.wh.old.conf
 *     opaque('var/cache'),               // var/cache/.wh..wh..opq
 *     file('x', 'v', { xattrs: { 'user.k': 'v' } }),   // PAX SCHILY.xattr.user.k
 *     raw({ name: '../escape', data: 'boom' }),         // hostile, written verbatim
 *   ]);
 *   const blob = gzip(layer);  // or zstd(layer)
 *
 * Ordinary entries are encoded by tar-stream (ustar, PAX for long names and
 * xattrs). `raw()` entries are encoded here byte by byte so that hostile names,
 * lying sizes and bad checksums reach the reader exactly as written.
 *
 * Output is deterministic: the default mtime is fixed, so the same entries
 * always give the same bytes (and digests).
 */
import { spawnSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import tarStream from 'tar-stream';

/** Metadata any entry may carry. */
export interface EntryOptions {
  mode?: number;
  uid?: number;
  gid?: number;
  /** A Date, or seconds since the epoch. Default: {@link defaultMtime}. */
  mtime?: Date | number;
  /** Extended attributes, written as PAX `SCHILY.xattr.<name>` records. */
  xattrs?: Record<string, string>;
  uname?: string;
  gname?: string;
}

/** 2023-11-14T22:13:20Z: fixed so that built tars are byte-for-byte stable. */
export const defaultMtime = new Date(1_700_000_000 * 1000);

type PackHeader = Partial<tarStream.Header> & { name: string; pax?: Record<string, string> };

/** One member of a tar being built. Make these with the functions below. */
export type TarEntry =
  | { kind: 'packed'; header: PackHeader; data?: Buffer }
  | { kind: 'raw'; bytes: Buffer };

function packed(
  name: string,
  type: tarStream.Header['type'],
  opts: EntryOptions,
  extra: Partial<PackHeader> = {},
  data?: Buffer,
): TarEntry {
  const header: PackHeader = {
    name,
    type,
    mtime: toDate(opts.mtime),
    uid: opts.uid ?? 0,
    gid: opts.gid ?? 0,
    ...extra,
  };
  if (opts.mode !== undefined) header.mode = opts.mode;
  if (opts.uname !== undefined) header.uname = opts.uname;
  if (opts.gname !== undefined) header.gname = opts.gname;
  if (opts.xattrs) {
    header.pax = Object.fromEntries(Object.entries(opts.xattrs).map(([k, v]) => [`SCHILY.xattr.${k}`, v]));
  }
  return data === undefined ? { kind: 'packed', header } : { kind: 'packed', header, data };
}

function toDate(mtime: Date | number | undefined): Date {
  if (mtime === undefined) return defaultMtime;
  return typeof mtime === 'number' ? new Date(mtime * 1000) : mtime;
}

/** A regular file. Default mode 0644. */
export function file(path: string, content: string | Buffer, opts: EntryOptions = {}): TarEntry {
  const data = typeof content === 'string' ? Buffer.from(content) : content;
  return packed(path, 'file', { mode: 0o644, ...opts }, { size: data.length }, data);
}

/** A directory; the name gets a trailing slash as GNU tar writes it. Default mode 0755. */
export function dir(path: string, opts: EntryOptions = {}): TarEntry {
  return packed(path.endsWith('/') ? path : `${path}/`, 'directory', { mode: 0o755, ...opts });
}

/** A symbolic link at `path` pointing to `target` (written as given). */
export function symlink(path: string, target: string, opts: EntryOptions = {}): TarEntry {
  return packed(path, 'symlink', { mode: 0o777, ...opts }, { linkname: target });
}

/** A hard link at `path` to the earlier member named `target`. */
export function hardlink(path: string, target: string, opts: EntryOptions = {}): TarEntry {
  return packed(path, 'link', { mode: 0o644, ...opts }, { linkname: target });
}

/** An AUFS-style whiteout: `a/b/name` is written as `a/b/.wh.name`. */
export function whiteout(path: string, opts: EntryOptions = {}): TarEntry {
  const slash = path.lastIndexOf('/');
  const name = `${path.slice(0, slash + 1)}.wh.${path.slice(slash + 1)}`;
  return file(name, '', opts);
}

/** An opaque-directory marker: `DIR/.wh..wh..opq`. */
export function opaque(dirPath: string, opts: EntryOptions = {}): TarEntry {
  return file(`${dirPath.replace(/\/+$/, '')}/.wh..wh..opq`, '', opts);
}

export function fifo(path: string, opts: EntryOptions = {}): TarEntry {
  return packed(path, 'fifo', { mode: 0o644, ...opts });
}

export function chardev(path: string, major: number, minor: number, opts: EntryOptions = {}): TarEntry {
  return packed(path, 'character-device', { mode: 0o666, ...opts }, { devmajor: major, devminor: minor });
}

export function blockdev(path: string, major: number, minor: number, opts: EntryOptions = {}): TarEntry {
  return packed(path, 'block-device', { mode: 0o660, ...opts }, { devmajor: major, devminor: minor });
}

/** Fields of a hand-written ustar header. Anything unset gets a sane default. */
export interface RawHeader {
  /** Written verbatim into the 100-byte name field (no normalisation, no splitting). */
  name: string | Buffer;
  /** Type flag character: '0' file, '1' hardlink, '2' symlink, '3' char, '4' block, '5' dir, '6' fifo. Default '0'. */
  typeflag?: string;
  linkname?: string | Buffer;
  /** Written verbatim into the 155-byte ustar prefix field. */
  prefix?: string | Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: Date | number;
  devmajor?: number;
  devminor?: number;
  /** Member data; padded to 512 bytes. */
  data?: string | Buffer;
  /** The header's size field; defaults to the data length. Set it to lie. */
  size?: number;
  /** PAX records written verbatim in an 'x' header just before this one (e.g. `{ path: '../../etc/passwd' }`). */
  pax?: Record<string, string>;
  /** A GNU 'L' long-name member written just before this one. */
  gnuLongName?: string;
  /** 'invalid' writes a wrong header checksum. */
  checksum?: 'valid' | 'invalid';
}

/** A member whose header bytes are written exactly as given: for hostile-archive tests. */
export function raw(fields: RawHeader): TarEntry {
  const parts: Buffer[] = [];
  if (fields.pax) {
    parts.push(...rawMember({ name: 'PaxHeader', typeflag: 'x', data: encodePaxRecords(fields.pax) }));
  }
  if (fields.gnuLongName !== undefined) {
    parts.push(...rawMember({ name: '././@LongLink', typeflag: 'L', data: Buffer.from(`${fields.gnuLongName}\0`) }));
  }
  parts.push(...rawMember(fields));
  return { kind: 'raw', bytes: Buffer.concat(parts) };
}

// ustar header layout (POSIX.1-1988), offsets in bytes.
const field = {
  name: [0, 100],
  mode: [100, 8],
  uid: [108, 8],
  gid: [116, 8],
  size: [124, 12],
  mtime: [136, 12],
  checksum: [148, 8],
  typeflag: [156, 1],
  linkname: [157, 100],
  magic: [257, 6],
  version: [263, 2],
  uname: [265, 32],
  gname: [297, 32],
  devmajor: [329, 8],
  devminor: [337, 8],
  prefix: [345, 155],
} as const;

function rawMember(fields: RawHeader): Buffer[] {
  const data = fields.data === undefined ? Buffer.alloc(0) : Buffer.from(fields.data);
  const header = Buffer.alloc(512);
  const put = (f: keyof typeof field, value: string | Buffer): void => {
    const bytes = Buffer.from(value);
    const [offset, length] = field[f];
    if (bytes.length > length) throw new Error(`raw tar header: ${f} is ${bytes.length} bytes, the field holds ${length}`);
    bytes.copy(header, offset);
  };
  const octal = (f: keyof typeof field, n: number): void => {
    put(f, `${n.toString(8).padStart(field[f][1] - 1, '0')}\0`);
  };
  put('name', fields.name);
  octal('mode', fields.mode ?? 0o644);
  octal('uid', fields.uid ?? 0);
  octal('gid', fields.gid ?? 0);
  octal('size', fields.size ?? data.length);
  octal('mtime', Math.floor(toDate(fields.mtime).getTime() / 1000));
  put('typeflag', fields.typeflag ?? '0');
  if (fields.linkname !== undefined) put('linkname', fields.linkname);
  put('magic', 'ustar\0');
  put('version', '00');
  octal('devmajor', fields.devmajor ?? 0);
  octal('devminor', fields.devminor ?? 0);
  if (fields.prefix !== undefined) put('prefix', fields.prefix);
  // The checksum is computed with its own field taken as eight spaces.
  header.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of header) sum += byte;
  if (fields.checksum === 'invalid') sum += 1;
  put('checksum', `${sum.toString(8).padStart(6, '0')}\0 `);
  return [header, data, Buffer.alloc(padding(data.length))];
}

function padding(length: number): number {
  return (512 - (length % 512)) % 512;
}

/** PAX records: `<len> key=value\n`, where len counts the whole record including itself. */
function encodePaxRecords(records: Record<string, string>): Buffer {
  const out: Buffer[] = [];
  for (const [key, value] of Object.entries(records)) {
    const body = ` ${key}=${value}\n`;
    const bodyLength = Buffer.byteLength(body);
    let length = bodyLength + 1;
    while (String(length).length + bodyLength !== length) length = String(length).length + bodyLength;
    out.push(Buffer.from(`${length}${body}`));
  }
  return Buffer.concat(out);
}

/** An uncompressed tar of the entries, in order, ended by the two zero blocks. */
export async function buildTar(entries: readonly TarEntry[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (chunk: unknown) => chunks.push(chunk as Buffer));
  const ended = new Promise<void>((resolve, reject) => {
    pack.on('end', () => resolve());
    pack.on('error', reject);
  });
  for (const entry of entries) {
    if (entry.kind === 'raw') {
      // Between entries tar-stream has nothing in flight, so pushing here keeps the order.
      pack.push(entry.bytes);
      continue;
    }
    // tar-stream mutates the header it is given; give it a copy so entries can be reused.
    const header = { ...entry.header, ...(entry.header.pax ? { pax: { ...entry.header.pax } } : {}) };
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error | null): void => (err ? reject(err) : resolve());
      if (entry.data === undefined) pack.entry(header, done);
      else pack.entry(header, entry.data, done);
    });
  }
  pack.finalize();
  await ended;
  return Buffer.concat(chunks);
}

/** gzip with fixed settings (node writes mtime 0), so the output is stable. */
export function gzip(tar: Buffer): Buffer {
  return gzipSync(tar, { level: 6 });
}

/** zstd through the `zstd` CLI: Node 20 has no zstd compressor. */
export function zstd(tar: Buffer): Buffer {
  const result = spawnSync('zstd', ['-q', '-c', '-3'], { input: tar, maxBuffer: 1 << 30 });
  if (result.error) throw new Error(`zstd: ${result.error.message}`);
  if (result.status !== 0) throw new Error(`zstd exited ${result.status}: ${result.stderr.toString()}`);
  return result.stdout;
}

/** Compresses a tar as an image layer blob would be. */
export function compress(tar: Buffer, compression: 'none' | 'gzip' | 'zstd'): Buffer {
  return compression === 'gzip' ? gzip(tar) : compression === 'zstd' ? zstd(tar) : tar;
}

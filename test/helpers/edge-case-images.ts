/**
 * Small multi-layer images that, together, carry every case an unpacker of
 * OCI layers meets: each file type, ownership and mode bits, mtimes, xattrs,
 * the long-name and sparse encodings of PAX and GNU tar, whiteouts and opaque
 * directories in every order, type changes across layers, hardlinks across
 * layers, implicit parents. The comparison test unpacks each with lazyroot
 * (overlayfs over `layers/<chain-id>/diff`) and with `umoci unpack`
 * (umoci.ts) and compares the two trees (tree-snapshot.ts).
 *
 *   for (const image of await edgeCaseImages()) { … image.spec … image.expect … }
 *   const { images } = await allFeaturesLayout(dir);   // one layout, ref name = image name
 *
 * `expect` holds what must be true of the MERGED tree, checked on the exact
 * paths (no symlink in a path is followed): `visible` paths exist, `hidden`
 * paths do not, `content`/`sha256` give files' exact content. They are
 * umoci's results too (edge-case-images.test.ts checks them against umoci,
 * and against GNU tar for `sparse-gnu`, which umoci 0.4.7 cannot unpack).
 * `umociQuirks` and `overlayDifferences` are named `allow` entries for the
 * comparison test.
 *
 * Layers are built with tar-builder.ts. tar-stream writes long names and
 * link targets as PAX records (or the ustar prefix), never GNU 'L'/'K', and
 * clamps uid/gid/devmajor/devminor past 6 octal digits; so the GNU-format, sparse and
 * base-256 layers are made by the real GNU tar from files in a temp dir
 * (real bytes are what an unpacker meets), and 'L'/'K', wide device numbers
 * and binary PAX values are also hand-written with `raw()`. Everything is
 * deterministic: GNU tar is run with fixed mtimes, `--sort=name`,
 * `--hole-detection=raw`, and the pid it writes into PAX sparse names
 * (`GNUSparseFile.<pid>`) is rewritten to 0.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, chown, link, lutimes, mkdir, mkdtemp, open, rm, symlink as fsSymlink, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import { buildEstargz } from './estargz.js';
import { type BuiltLayout, type ImageSpec, type LayerCompression, writeOciLayout } from './image-builder.js';
import type { AllowedDifference } from './tree-snapshot.js';
import {
  blockdev,
  buildTar,
  chardev,
  dir,
  fifo,
  file,
  hardlink,
  opaque,
  raw,
  symlink,
  type TarEntry,
  whiteout,
} from './tar-builder.js';

const run = promisify(execFile);

const sha256Hex = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex');

export interface EdgeCaseExpect {
  /** Paths that must exist in the merged tree (exact entries, symlinks in the path not followed). */
  visible?: string[];
  /** Paths that must not exist in the merged tree. */
  hidden?: string[];
  /** Regular files whose content must be exactly this. */
  content?: Record<string, string>;
  /** Regular files whose content has this hex sha256 (big or binary content). */
  sha256?: Record<string, string>;
}

export interface EdgeCaseImage {
  /** Also the ref name in {@link allFeaturesLayout}. */
  name: string;
  spec: ImageSpec;
  /** What the image carries, layer by layer, and what the merged tree must show. */
  description: string;
  expect?: EdgeCaseExpect;
  /**
   * Set when umoci 0.4.7 cannot unpack the image at all: the test checks that
   * it still fails this way (so a fixed umoci shows up) and compares nothing.
   */
  umociFails?: { error: RegExp; reason: string };
  /**
   * Where umoci's tree depends on WHEN it ran (mtimes it leaves at the unpack
   * time, see umoci.ts "parent directories"): never comparable, so the
   * comparison test passes these as `allow`. The edge-case test checks that
   * two umoci runs differ exactly here.
   */
  umociQuirks?: AllowedDifference[];
  /**
   * Where umoci's one-directory result and ANY overlayfs merge must differ
   * (formats that cannot express the same thing), for `allow` too.
   */
  overlayDifferences?: AllowedDifference[];
  /**
   * Paths umoci unpacks that lazyroot must not show (where the two disagree
   * on purpose: README.md, "Where unpackers disagree"). The comparison tests
   * check they are absent and allow that difference.
   */
  unlikeUmoci?: { hidden: string[]; reason: string };
  /**
   * When umoci refuses the image, the reference tree is GNU tar's: every
   * layer extracted in order with `tar -x --numeric-owner` (only for images
   * without whiteouts). `quirks` names where GNU tar's tree depends on when it
   * ran.
   */
  gnuTarReference?: { quirks: AllowedDifference[] };
}

/** Distinct mtimes, one hour apart from 2022-04-15T05:20:00Z: `at(3)`. */
const at = (n: number): number => 1_650_000_000 + n * 3600;

function layer(tar: Buffer, compression: LayerCompression): { tar: Buffer; compression: LayerCompression } {
  return { tar, compression };
}

/**
 * `security.capability` as `setcap cap_net_bind_service=+ep` writes it:
 * struct vfs_cap_data, little-endian: magic_etc = VFS_CAP_REVISION_2 (0x02000000)
 * | VFS_CAP_FLAGS_EFFECTIVE (1); data[0] = { permitted: 1 << CAP_NET_BIND_SERVICE (10),
 * inheritable: 0 }; data[1] = { 0, 0 }. 20 bytes, hex 0100000200040000 0000…
 */
export const capNetBindService: Buffer = (() => {
  const blob = Buffer.alloc(20);
  blob.writeUInt32LE(0x02000001, 0);
  blob.writeUInt32LE(1 << 10, 4);
  return blob;
})();

/** A PAX string value carrying exactly these bytes (only possible for bytes < 0x80, as tar-stream writes UTF-8). */
function asciiBytes(bytes: Buffer): string {
  if (bytes.some((b) => b >= 0x80)) throw new Error('asciiBytes: value has bytes >= 0x80; use paxBinary');
  return bytes.toString('latin1');
}

/**
 * A PAX 'x' header whose records are raw bytes, applying to the NEXT member
 * (which must not need a PAX header of its own). tar-stream can only write
 * string values, encoded as UTF-8, so this is the way to a binary xattr.
 */
function paxBinary(records: Array<[string, Buffer]>): TarEntry {
  const parts = records.map(([key, value]) => {
    const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
    let length = body.length + 1;
    while (String(length).length + body.length !== length) length = String(length).length + body.length;
    return Buffer.concat([Buffer.from(String(length)), body]);
  });
  return raw({ name: 'PaxHeader', typeflag: 'x', data: Buffer.concat(parts) });
}

/** Bytes that are not UTF-8 (0x80, 0xff, 0xc3 0x28), with a NUL and a newline. */
export const binaryXattrValue = Buffer.from([0x00, 0x01, 0x80, 0xff, 0xfe, 0x0a, 0xc3, 0x28]);

/** A deterministic, incompressible-looking body of n bytes. */
function pattern(n: number, seed: number): Buffer {
  const out = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

// --- GNU tar -----------------------------------------------------------------

interface GnuTarOptions {
  format: 'gnu' | 'posix';
  /** For --format=posix: '0.0', '0.1' or '1.0'. */
  sparseVersion?: string;
  /** Top-level names (relative to the temp dir) to archive. */
  members: string[];
}

/** Runs GNU tar over files `populate` makes in a temp dir; returns the tar bytes. */
async function gnuTar(opts: GnuTarOptions, populate: (root: string) => Promise<void>): Promise<Buffer> {
  const root = await mkdtemp(join(tmpdir(), 'lazyroot-gnutar-'));
  try {
    await populate(root);
    const args = [
      '--create',
      '--file=-',
      `--format=${opts.format}`,
      '--sort=name',
      '--numeric-owner',
      '--sparse',
      '--hole-detection=raw',
      ...(opts.sparseVersion ? [`--sparse-version=${opts.sparseVersion}`] : []),
      // No pid in extended header names, no atime/ctime records: stable bytes.
      ...(opts.format === 'posix' ? ['--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime'] : []),
      '-C',
      root,
      ...opts.members,
    ];
    const { stdout } = await run('tar', args, { encoding: 'buffer', maxBuffer: 1 << 28 });
    return opts.format === 'posix' ? fixSparseNames(stdout) : stdout;
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

/**
 * GNU tar names PAX sparse members `DIR/GNUSparseFile.<pid>/NAME` (0.1, 1.0):
 * rewrite the pid to 0 and fix the header checksum, so layers are stable.
 * Walks ustar/PAX members only (no GNU 'S' extension blocks in posix output).
 */
function fixSparseNames(tar: Buffer): Buffer {
  const out = Buffer.from(tar);
  for (let offset = 0; offset + 512 <= out.length; ) {
    const header = out.subarray(offset, offset + 512);
    if (header.every((b) => b === 0)) break;
    const nameEnd = header.indexOf(0);
    const name = header.subarray(0, nameEnd === -1 || nameEnd > 100 ? 100 : nameEnd).toString('latin1');
    const fixed = name.replace(/GNUSparseFile\.\d+/, 'GNUSparseFile.0');
    if (fixed !== name) {
      header.fill(0, 0, 100);
      header.write(fixed, 0, 'latin1');
      header.fill(0x20, 148, 156);
      let sum = 0;
      for (const b of header) sum += b;
      header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    }
    const size = parseInt(header.subarray(124, 136).toString('latin1').replace(/\0.*$/s, '').trim() || '0', 8);
    offset += 512 + Math.ceil(size / 512) * 512;
  }
  if (/GNUSparseFile\.[1-9]/.test(out.toString('latin1'))) throw new Error('fixSparseNames: a GNUSparseFile.<pid> name was left');
  return out;
}

async function writeAt(path: string, offset: number, data: string): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(Buffer.from(data), 0, Buffer.byteLength(data), offset);
  } finally {
    await fh.close();
  }
}

/** In `top`: holes.img (data, holes, ends in a hole), many.img (6 data runs: GNU extension headers), all-hole.img, plain.txt. */
async function makeSparseFiles(root: string, top: string, uid: number): Promise<void> {
  const d = join(root, top);
  await mkdir(d);
  const holes = join(d, 'holes.img');
  await writeFile(holes, '');
  await truncate(holes, 1 << 20);
  await writeAt(holes, 0, 'HEAD');
  await writeAt(holes, 300_000, 'middle');
  const many = join(d, 'many.img');
  await writeFile(many, '');
  await truncate(many, 512 * 1024 + 100);
  for (let i = 0; i < 6; i++) await writeAt(many, i * 65_536 + i * 7, `chunk-${i}`);
  await writeAt(many, 512 * 1024 + 97, 'END');
  const allHole = join(d, 'all-hole.img');
  await writeFile(allHole, '');
  await truncate(allHole, 200_000);
  await writeFile(join(d, 'plain.txt'), 'not sparse\n');
  for (const [name, mode] of [['holes.img', 0o644], ['many.img', 0o600], ['all-hole.img', 0o640], ['plain.txt', 0o644]] as const) {
    await chmod(join(d, name), mode);
    await chown(join(d, name), uid, uid);
    await utimes(join(d, name), at(50), at(50));
  }
  await utimes(d, at(51), at(51));
}

/** What makeSparseFiles writes, as the merged tree must show it. */
function sparseContent(top: string): Record<string, string> {
  return { [`${top}/plain.txt`]: 'not sparse\n' };
}

// --- the images --------------------------------------------------------------

async function basics(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    dir('.', { mode: 0o755, mtime: at(1) }),
    dir('etc', { mtime: at(2) }),
    file('etc/hosts', '127.0.0.1 localhost\n', { mode: 0o644, mtime: at(3) }),
    file('etc/shadow', 'root:*:19000:0:99999:7:::\n', { mode: 0o600, gid: 42, mtime: at(4) }),
    dir('root', { mode: 0o700, mtime: at(5) }),
    file('root/.secret', 'only root\n', { mode: 0o600, mtime: at(6) }),
    dir('home', { mtime: at(7) }),
    dir('home/user', { mode: 0o750, uid: 1000, gid: 1000, mtime: at(8) }),
    file('home/user/.profile', 'export PS1="$ "\n', { uid: 1000, gid: 1000, mtime: at(9) }),
    dir('tmp', { mode: 0o1777, mtime: at(10) }),
    dir('usr', { mtime: at(11) }),
    dir('usr/bin', { mtime: at(12) }),
    file('usr/bin/su', 'setuid\n', { mode: 0o4755, mtime: at(13) }),
    file('usr/bin/wall', 'setgid\n', { mode: 0o2755, gid: 5, mtime: at(14) }),
    file('usr/bin/both', 'setuid+setgid\n', { mode: 0o6755, mtime: at(15) }),
    file('usr/bin/tool', '#!/bin/sh\necho tool\n', { mode: 0o755, mtime: at(16) }),
    file('usr/bin/private-tool', '#!/bin/sh\n', { mode: 0o700, mtime: at(17) }),
    dir('usr/lib', { mtime: at(18) }),
    file('usr/lib/big.bin', pattern(300_000, 7), { mtime: at(19) }),
    dir('srv', { mode: 0o2775, gid: 50, mtime: at(20) }),
    file('nobody-owned', 'nobody\n', { uid: 65534, gid: 65534, mode: 0o640, mtime: at(21) }),
    file('empty', '', { mtime: at(22) }),
    // tar-stream writes uname/gname; the numbers must win (GNU tar would prefer the names).
    file('owned-by-number', 'uid 1000 named root\n', { uid: 1000, gid: 1000, uname: 'root', gname: 'root', mtime: at(23) }),
  ]);
  const l2 = await buildTar([
    file('etc/motd', 'welcome\n', { mtime: at(30) }),
    file('etc/hosts', '10.0.0.1 changed\n', { mode: 0o600, mtime: at(31) }),
    // PAX records overriding header fields: fractional mtime, uid/gid past ustar's 7 octal digits.
    raw({ name: 'pax-mtime', data: 'fractional mtime\n', mtime: at(0), pax: { mtime: `${at(32)}.75` } }),
    raw({ name: 'pax-ids', data: 'big ids\n', pax: { uid: '3000000', gid: '3000001' } }),
  ]);
  const empty = await buildTar([]);
  const l4 = await buildTar([dir('etc', { mode: 0o750, gid: 4, mtime: at(40) }), dir('tmp', { mode: 0o1777, mtime: at(41) })]);
  return {
    name: 'basics',
    description:
      'L1 gzip: `./` root entry (mtime), dirs and files with modes 0755/0644/0600/0700/0750, setuid 4755, setgid 2755, both 6755, ' +
      'sticky /tmp 1777, setgid dir 2775, uid/gid 1000:1000, 0:42, 65534:65534, a 300 kB file, an empty file, uname "root" on uid 1000, ' +
      'distinct mtimes on everything. L2 none: a new file, a file replaced with new content and mode, PAX mtime with a fraction, ' +
      'PAX uid/gid 3000000/3000001. L3 zstd: an empty layer (two zero blocks). L4 gzip: etc/ metadata changed (0750, gid 4, mtime) with no child entries.',
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'none'), layer(empty, 'zstd'), layer(l4, 'gzip')] },
    expect: {
      visible: ['etc/hosts', 'etc/motd', 'etc/shadow', 'root/.secret', 'home/user/.profile', 'usr/bin/su', 'usr/lib/big.bin', 'empty', 'pax-ids', 'pax-mtime'],
      content: { 'etc/hosts': '10.0.0.1 changed\n', 'etc/motd': 'welcome\n', empty: '' },
      sha256: { 'usr/lib/big.bin': sha256Hex(pattern(300_000, 7)) },
    },
  };
}

async function links(): Promise<EdgeCaseImage> {
  const longTarget = `${'very-long-directory-name/'.repeat(6)}target`;
  const l1 = await buildTar([
    dir('usr', { mtime: at(1) }),
    dir('usr/bin', { mtime: at(2) }),
    file('usr/bin/busybox', 'busybox\n', { mode: 0o755, mtime: at(3) }),
    file('real-file', 'the real file\n', { mtime: at(4) }),
    symlink('bin', 'usr/bin', { mtime: at(5) }),
    symlink('usr/bin/sh', '/usr/bin/busybox', { mtime: at(6) }),
    symlink('usr/bin/sh-relative', 'busybox', { mtime: at(7) }),
    symlink('dangling-relative', 'does/not/exist', { mtime: at(8) }),
    symlink('dangling-absolute', '/nonexistent/at/all', { mtime: at(9) }),
    // Legal in an image: resolved inside the container, never by the unpacker.
    symlink('up-and-out', '../../../../../../etc/passwd', { mtime: at(10) }),
    symlink('self-loop', 'self-loop', { mtime: at(11) }),
    symlink('long-target', longTarget, { mtime: at(12) }),
    symlink('user-owned-link', 'real-file', { uid: 1000, gid: 1000, mtime: at(13) }),
    symlink('victim-link', 'real-file', { mtime: at(14) }),
  ]);
  const l2 = await buildTar([
    symlink('usr/bin/sh', 'busybox', { mtime: at(20) }),
    file('dangling-relative', 'now a file\n', { mtime: at(21) }),
    // A file over a symlink must replace the link, never write through it.
    file('victim-link', 'replaced the link\n', { mtime: at(22) }),
  ]);
  return {
    name: 'links',
    description:
      'L1 none: symlinks relative (bin -> usr/bin), absolute (usr/bin/sh -> /usr/bin/busybox), dangling relative and absolute, ' +
      '"../../../../../../etc/passwd" (legal, never followed), a self loop, a 156-char target (PAX linkpath), one owned 1000:1000, ' +
      'distinct symlink mtimes. L2 gzip: a symlink retargeted, a symlink replaced by a file, and victim-link (-> real-file) ' +
      'replaced by a file: real-file must keep its content.',
    spec: { layers: [layer(l1, 'none'), layer(l2, 'gzip')] },
    expect: {
      visible: ['bin', 'usr/bin/sh', 'dangling-absolute', 'up-and-out', 'self-loop', 'long-target', 'user-owned-link'],
      content: { 'real-file': 'the real file\n', 'victim-link': 'replaced the link\n', 'dangling-relative': 'now a file\n' },
    },
  };
}

async function hardlinks(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    dir('bin', { mtime: at(1) }),
    file('bin/busybox', 'busybox\n', { mode: 0o755, mtime: at(2) }),
    hardlink('bin/ls', 'bin/busybox'),
    hardlink('bin/cat', 'bin/busybox'),
    // A hardlink header's own metadata is ignored (by umoci and GNU tar): the inode's wins.
    hardlink('bin/ls2', 'bin/busybox', { mode: 0o600, uid: 5, mtime: at(3) }),
    dir('lib', { mtime: at(4) }),
    file('lib/a', 'original a\n', { mtime: at(5) }),
    hardlink('lib/b', 'lib/a'),
    file('lib/cap', 'with xattr\n', { xattrs: { 'user.k': 'shared by the links' }, mtime: at(6) }),
    hardlink('lib/cap-link', 'lib/cap'),
  ]);
  const l2 = await buildTar([
    // Upper layer hardlink to a lower file.
    hardlink('bin/echo', 'bin/busybox'),
    // Overwrite one member of a lower hardlink group: lib/b keeps the old content.
    file('lib/a', 'new a\n', { mtime: at(10) }),
  ]);
  const l3 = await buildTar([
    symlink('bin/sh', 'busybox', { mtime: at(20) }),
    // link(2) on a symlink links the symlink itself.
    hardlink('bin/sh-hardlink', 'bin/sh'),
    whiteout('bin/cat'),
    hardlink('lib/b-again', 'lib/b'),
  ]);
  return {
    name: 'hardlinks',
    description:
      'L1 gzip: busybox with 3 hardlinks in the same layer (one whose header says mode 0600 uid 5: ignored), lib/a + lib/b, ' +
      'a file with a user xattr and its hardlink. L2 none: bin/echo hardlinked to the LOWER bin/busybox; lib/a overwritten ' +
      '(lib/b keeps "original a"). L3 zstd: symlink bin/sh and a hardlink to that symlink; whiteout of bin/cat (one member of a ' +
      'lower group); lib/b-again hardlinked to lower lib/b. umoci shares lower inodes across layers; see umoci.ts for the nlink/group ' +
      'differences overlayfs shows.',
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'none'), layer(l3, 'zstd')] },
    expect: {
      visible: ['bin/busybox', 'bin/ls', 'bin/ls2', 'bin/echo', 'bin/sh', 'bin/sh-hardlink', 'lib/b-again', 'lib/cap-link'],
      hidden: ['bin/cat', 'bin/.wh.cat'],
      content: { 'bin/echo': 'busybox\n', 'lib/a': 'new a\n', 'lib/b': 'original a\n', 'lib/b-again': 'original a\n', 'lib/cap-link': 'with xattr\n' },
    },
  };
}

async function devices(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    dir('dev', { mtime: at(1) }),
    chardev('dev/null', 1, 3, { mode: 0o666, mtime: at(2) }),
    chardev('dev/tty', 5, 0, { mode: 0o666, gid: 5, mtime: at(3) }),
    blockdev('dev/sda', 8, 0, { mode: 0o660, gid: 6, mtime: at(4) }),
    blockdev('dev/loop0', 7, 0, { mode: 0o660, gid: 6, mtime: at(5) }),
    // Past 8 bits of major and minor: checks the dev_t split, not just the low bytes. raw(),
    // because tar-stream writes devmajor/devminor (and uid/gid) with at most 6 octal digits
    // and silently clamps bigger numbers to 0o777777 = 262143.
    raw({ name: 'dev/wide', typeflag: '3', devmajor: 510, devminor: 300_000, mode: 0o600, mtime: at(6) }),
    dir('run', { mtime: at(7) }),
    fifo('run/initctl', { mode: 0o600, mtime: at(8) }),
    fifo('run/user-fifo', { mode: 0o620, uid: 1000, gid: 1000, mtime: at(9) }),
  ]);
  const l2 = await buildTar([
    chardev('dev/console', 5, 1, { mode: 0o600, mtime: at(20) }),
    whiteout('dev/loop0'),
    // A fifo replaced by a character device.
    chardev('run/initctl', 1, 5, { mode: 0o666, mtime: at(21) }),
  ]);
  return {
    name: 'devices',
    description:
      'L1 none: char devices 1:3, 5:0 (gid 5), 510:300000 (wide dev_t, 7 octal digits, raw header), block devices 8:0 and 7:0 (gid 6), fifos 0600 and 0620 ' +
      'owned 1000:1000. L2 gzip: a new char device, a whiteout of a block device, a fifo replaced by a char device.',
    spec: { layers: [layer(l1, 'none'), layer(l2, 'gzip')] },
    expect: {
      visible: ['dev/null', 'dev/tty', 'dev/sda', 'dev/wide', 'dev/console', 'run/initctl', 'run/user-fifo'],
      hidden: ['dev/loop0', 'dev/.wh.loop0'],
    },
  };
}

async function xattrs(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    dir('usr', { mtime: at(1) }),
    dir('usr/bin', { mtime: at(2) }),
    file('usr/bin/ping', 'ping\n', { mode: 0o755, mtime: at(3), xattrs: { 'security.capability': asciiBytes(capNetBindService) } }),
    dir('data', { mtime: at(4), xattrs: { 'user.dir-attr': 'lower' } }),
    file('data/user-attr', 'x\n', { mtime: at(5), xattrs: { 'user.foo': 'bar' } }),
    file('data/trusted-attr', 'y\n', { mtime: at(6), xattrs: { 'trusted.lazyroot.test': 'secret' } }),
    file('data/many', 'z\n', { mtime: at(7), xattrs: { 'user.a': '1', 'user.b': 'two', 'trusted.c': 'three' } }),
    file('data/to-strip', 'has xattrs\n', { mtime: at(8), xattrs: { 'user.gone': 'soon' } }),
    // trusted.* is allowed on a symlink (user.* is not: EPERM).
    symlink('data/link-with-xattr', 'many', { mtime: at(9), xattrs: { 'trusted.link': 'yes' } }),
  ]);
  const l2 = await buildTar([
    // Directory metadata replaced: user.dir-attr must be gone, user.dir-attr2 set, mode 0750.
    dir('data', { mode: 0o750, mtime: at(20), xattrs: { 'user.dir-attr2': 'upper' } }),
    file('data/to-strip', 'no xattrs now\n', { mtime: at(21) }),
    paxBinary([['SCHILY.xattr.user.binary', binaryXattrValue]]),
    file('data/binary-attr', 'binary xattr value\n', { mtime: at(22) }),
  ]);
  const l3 = await buildTar([
    file('usr/bin/ping', 'ping v2, no capability\n', { mode: 0o755, mtime: at(30) }),
    file('usr/bin/ping6', 'ping6\n', { mode: 0o755, mtime: at(31), xattrs: { 'security.capability': asciiBytes(capNetBindService) } }),
  ]);
  return {
    name: 'xattrs',
    description:
      'L1 gzip: security.capability (cap_net_bind_service=ep, v2 blob) on usr/bin/ping, user.* on files and a dir, trusted.* on a ' +
      'file and on a symlink, three xattrs on one file. L2 zstd: data/ re-entered with only user.dir-attr2 (the lower user.dir-attr ' +
      'must be gone), data/to-strip replaced without xattrs, user.binary = 00 01 80 ff fe 0a c3 28 (not UTF-8: tar-stream decodes ' +
      'PAX values as UTF-8 and would mangle it). L3 none: ping replaced without its capability, ping6 with one.',
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'zstd'), layer(l3, 'none')] },
    expect: {
      visible: ['usr/bin/ping', 'usr/bin/ping6', 'data/user-attr', 'data/trusted-attr', 'data/many', 'data/to-strip', 'data/binary-attr', 'data/link-with-xattr'],
      content: { 'data/to-strip': 'no xattrs now\n' },
    },
  };
}

async function overlaySmuggling(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    dir('d', { mtime: at(1) }),
    file('d/lower-child', 'must stay visible\n', { mtime: at(2) }),
    file('victim', 'a real file\n', { mtime: at(3) }),
  ]);
  const l2 = await buildTar([
    // overlayfs control xattrs must not reach a layer dir from a tar: d stays merged, not opaque.
    dir('d', { mtime: at(10), xattrs: { 'trusted.overlay.opaque': 'y', 'trusted.overlay.redirect': '/elsewhere' } }),
    file('d/upper-child', 'new\n', { mtime: at(11) }),
    // A real 0/0 character device in a tar: umoci makes one; in overlay format it IS a whiteout.
    chardev('victim', 0, 0, { mode: 0o600, mtime: at(12) }),
  ]);
  return {
    name: 'overlay-smuggling',
    description:
      'L1 gzip: d/ with d/lower-child, a file "victim". L2 none: d/ carrying SCHILY.xattr.trusted.overlay.opaque=y and ' +
      'trusted.overlay.redirect (umoci ignores both as forbidden; an overlay unpacker must not set them, or d/lower-child would ' +
      'vanish), and "victim" replaced by a 0/0 char device: umoci shows the device, overlayfs cannot (a 0/0 device is its whiteout ' +
      'format), so no expectation is set on "victim": the comparison names that difference.',
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'none')] },
    expect: { visible: ['d/lower-child', 'd/upper-child'] },
    overlayDifferences: [
      { path: /^victim$/, reason: 'a 0/0 char device is the overlay whiteout format: umoci makes the device, overlayfs hides the path' },
    ],
  };
}

async function longNames(): Promise<EdgeCaseImage> {
  // 146 ASCII chars: fits ustar's prefix (155) + name (100) split, no PAX.
  const ustarSplit = `long/${'p'.repeat(60)}/${'f'.repeat(80)}`;
  // 351 chars: only PAX can carry it.
  const paxDirA = `long/${'a'.repeat(120)}`;
  const paxDirB = `${paxDirA}/${'b'.repeat(120)}`;
  const paxPath = `${paxDirB}/${'c'.repeat(100)}.txt`;
  const longDir = `long/${'d'.repeat(150)}`;
  const unicode = 'long/unicodé-ñame-日本語 with space.txt';
  const l1 = await buildTar([
    dir('long', { mtime: at(1) }),
    dir(`long/${'p'.repeat(60)}`, { mtime: at(2) }),
    file(ustarSplit, 'ustar prefix\n', { mtime: at(3) }),
    dir(paxDirA, { mtime: at(4) }),
    dir(paxDirB, { mtime: at(5) }),
    file(paxPath, 'pax path\n', { mtime: at(6) }),
    dir(longDir, { mode: 0o700, mtime: at(7) }),
    file(`${longDir}/child`, 'in a long dir\n', { mtime: at(8) }),
    file(unicode, 'utf-8 name\n', { mtime: at(9) }),
    symlink('long/symlink-long-target', `../${'t'.repeat(150)}/target`, { mtime: at(10) }),
    hardlink('long/hardlink-to-long', paxPath),
    file(`long/${'w'.repeat(120)}`, 'to be whited out\n', { mtime: at(11) }),
  ]);

  // GNU tar, --format=gnu: 'L' long names, 'K' long link names, base-256 uid/gid.
  const gnuName = `gnu/${'g'.repeat(150)}`;
  const gnuLayer = await gnuTar({ format: 'gnu', members: ['gnu'] }, async (root) => {
    await mkdir(join(root, 'gnu'));
    await writeFile(join(root, gnuName), 'gnu long name\n');
    await fsSymlink('y'.repeat(150), join(root, 'gnu/symlink-long-target'));
    await link(join(root, gnuName), join(root, 'gnu/hardlink-to-long'));
    await writeFile(join(root, 'gnu/base256-ids'), 'uid 3000000\n');
    await chown(join(root, 'gnu/base256-ids'), 3_000_000, 3_000_000);
    for (const p of [gnuName, 'gnu/base256-ids']) await utimes(join(root, p), at(20), at(20));
    await utimes(join(root, 'gnu'), at(21), at(21));
    await lutimes(join(root, 'gnu/symlink-long-target'), at(22), at(22));
  });

  // The same encodings hand-written, ustar magic (as tar-builder's raw() writes it).
  const rawName = `rawgnu/${'r'.repeat(130)}`;
  const rawTarget = 'z'.repeat(130);
  const l3 = await buildTar([
    dir('rawgnu', { mtime: at(30) }),
    raw({ name: rawName.slice(0, 100), gnuLongName: rawName, data: 'raw L\n', mtime: at(31) }),
    raw({ name: '././@LongLink', typeflag: 'K', data: `${rawTarget}\0` }),
    raw({ name: 'rawgnu/symlink-K', typeflag: '2', linkname: rawTarget.slice(0, 100), mode: 0o777, mtime: at(32) }),
    raw({ name: '././@LongLink', typeflag: 'K', data: `${rawName}\0` }),
    raw({ name: 'rawgnu/hardlink-K', typeflag: '1', linkname: rawName.slice(0, 100) }),
  ]);
  const l4 = await buildTar([whiteout(`long/${'w'.repeat(120)}`), opaque(longDir)]);
  return {
    name: 'long-names',
    description:
      'L1 gzip (tar-stream): a 146-char path split over ustar prefix+name, a 351-char PAX path under 120-char PAX dirs, a ' +
      '150-char dir name, a UTF-8 name with spaces, a 160-char symlink target and a hardlink to the 351-char path (PAX linkpath). ' +
      'L2 none (GNU tar --format=gnu): 154-char name (\'L\'), 150-char symlink target and hardlink to the long name (\'K\'), ' +
      'uid/gid 3000000 in base-256. L3 zstd: the same \'L\'/\'K\' records hand-written with raw() (ustar magic). L4 none: a ' +
      'whiteout of a 125-char name (PAX) and an opaque marker in the 150-char dir.',
    spec: { layers: [layer(l1, 'gzip'), layer(gnuLayer, 'none'), layer(l3, 'zstd'), layer(l4, 'none')] },
    expect: {
      visible: [ustarSplit, paxPath, longDir, unicode, 'long/symlink-long-target', 'long/hardlink-to-long', gnuName, 'gnu/symlink-long-target', 'gnu/hardlink-to-long', 'gnu/base256-ids', rawName, 'rawgnu/symlink-K', 'rawgnu/hardlink-K'],
      hidden: [`long/${'w'.repeat(120)}`, `${longDir}/child`, `${longDir}/.wh..wh..opq`],
      content: { [paxPath]: 'pax path\n', 'long/hardlink-to-long': 'pax path\n', [gnuName]: 'gnu long name\n', 'gnu/hardlink-to-long': 'gnu long name\n', [rawName]: 'raw L\n', 'rawgnu/hardlink-K': 'raw L\n' },
    },
  };
}

const sparseNames = ['holes.img', 'many.img', 'all-hole.img'] as const;

function sparseExpect(tops: string[]): EdgeCaseExpect {
  return {
    visible: tops.flatMap((t) => [...sparseNames.map((n) => `${t}/${n}`), `${t}/plain.txt`]),
    content: Object.assign({}, ...tops.map(sparseContent)),
    sha256: Object.fromEntries(tops.flatMap((t) => sparseNames.map((n) => [`${t}/${n}`, sha256Hex(sparseFileContent(n))]))),
  };
}

const sparseFiles =
  'holes.img 1 MiB: "HEAD" at 0, "middle" at 300000, ends in a hole; many.img 512 KiB+100 with 6 data runs and "END" in ' +
  'the last partial block; all-hole.img 200000 bytes of hole; plain.txt, not sparse';

async function sparsePax(): Promise<EdgeCaseImage> {
  const pax10 = await gnuTar({ format: 'posix', sparseVersion: '1.0', members: ['sparse-pax10'] }, (root) => makeSparseFiles(root, 'sparse-pax10', 1000));
  const pax01 = await gnuTar({ format: 'posix', sparseVersion: '0.1', members: ['sparse-pax01'] }, (root) => makeSparseFiles(root, 'sparse-pax01', 3_000_000));
  const pax00 = await gnuTar({ format: 'posix', sparseVersion: '0.0', members: ['sparse-pax00'] }, (root) => makeSparseFiles(root, 'sparse-pax00', 0));
  const tops = ['sparse-pax10', 'sparse-pax01', 'sparse-pax00'];
  const expect = sparseExpect(tops);
  expect.hidden = tops.map((t) => `${t}/GNUSparseFile.0`);
  return {
    name: 'sparse-pax',
    description:
      `Three layers made by GNU tar --format=posix --sparse --hole-detection=raw from the same files (${sparseFiles}): ` +
      'L1 none PAX sparse 1.0 (header name DIR/GNUSparseFile.0/NAME, real name in GNU.sparse.name, map at the start of the ' +
      'data) owned 1000; L2 zstd PAX 0.1 (GNU.sparse.map) owned 3000000 (PAX uid/gid records); L3 gzip PAX 0.0 (repeated ' +
      'GNU.sparse.offset/numbytes records: a PAX decoder keeping one value per key, as tar-stream does, loses the map). ' +
      'No GNUSparseFile.* path may appear in the tree.',
    spec: { layers: [layer(pax10, 'none'), layer(pax01, 'zstd'), layer(pax00, 'gzip')] },
    expect,
  };
}

async function sparseGnu(): Promise<EdgeCaseImage> {
  const gnu = await gnuTar({ format: 'gnu', members: ['sparse-gnu'] }, (root) => makeSparseFiles(root, 'sparse-gnu', 0));
  const l2 = await buildTar([file('sparse-gnu/after', 'a plain file in a later layer\n', { mtime: at(60) })]);
  return {
    name: 'sparse-gnu',
    description:
      `L1 gzip: GNU tar --format=gnu --sparse --hole-detection=raw (${sparseFiles}): typeflag 'S' with the map in the header, ` +
      'the 6-run file needs a GNU sparse extension block after the header; tar-stream reports these members with type null. ' +
      'L2 none: one plain file.',
    spec: { layers: [layer(gnu, 'gzip'), layer(l2, 'none')] },
    expect: { ...sparseExpect(['sparse-gnu']), content: { ...sparseContent('sparse-gnu'), 'sparse-gnu/after': 'a plain file in a later layer\n' } },
    umociFails: {
      error: /unknown typeflag '\\x53'/,
      reason: "umoci 0.4.7 gets typeflag 'S' from Go's archive/tar and has no case for it (its switch knows reg, dir, links, devices, fifo)",
    },
    gnuTarReference: {
      quirks: [
        { path: /^(\.|sparse-gnu)$/, field: 'mtime', reason: "GNU tar: L2's sparse-gnu/after (no entry for its dir) bumps the dir's mtime to the extraction time; the target dir's too" },
      ],
    },
  };
}

/** Expected content of the sparse files (for tests that read them back). */
export function sparseFileContent(name: 'holes.img' | 'many.img' | 'all-hole.img'): Buffer {
  if (name === 'all-hole.img') return Buffer.alloc(200_000);
  if (name === 'holes.img') {
    const b = Buffer.alloc(1 << 20);
    b.write('HEAD', 0);
    b.write('middle', 300_000);
    return b;
  }
  const b = Buffer.alloc(512 * 1024 + 100);
  for (let i = 0; i < 6; i++) b.write(`chunk-${i}`, i * 65_536 + i * 7);
  b.write('END', 512 * 1024 + 97);
  return b;
}

async function replaceTypes(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    file('f2d', 'a file, later a dir\n', { mtime: at(1) }),
    dir('d2f', { mtime: at(2) }),
    file('d2f/a', 'lower child\n', { mtime: at(3) }),
    dir('d2f/sub', { mtime: at(4) }),
    file('d2f/sub/b', 'lower grandchild\n', { mtime: at(5) }),
    symlink('s2d', 'f2d', { mtime: at(6) }),
    dir('d2s', { mtime: at(7) }),
    file('d2s/child', 'hidden by a symlink\n', { mtime: at(8) }),
    fifo('p2f', { mtime: at(9) }),
    file('f2s', 'a file, later a symlink\n', { mtime: at(10) }),
    dir('d2d', { mode: 0o755, mtime: at(11) }),
    file('d2d/lower', 'merged\n', { mtime: at(12) }),
  ]);
  const l2 = await buildTar([
    dir('f2d', { mtime: at(20) }),
    file('f2d/child', 'in the dir that replaced a file\n', { mtime: at(21) }),
    file('d2f', 'a file replacing a dir\n', { mtime: at(22) }),
    dir('s2d', { mtime: at(23) }),
    file('s2d/child', 'in the dir that replaced a symlink\n', { mtime: at(24) }),
    symlink('d2s', 'd2d', { mtime: at(25) }),
    file('p2f', 'was a fifo\n', { mtime: at(26) }),
    symlink('f2s', 'd2d', { mtime: at(27) }),
    dir('d2d', { mode: 0o700, mtime: at(28) }),
    file('d2d/upper', 'merged too\n', { mtime: at(29) }),
    // The same path twice in one layer: the last member wins.
    file('dup', 'first\n', { mtime: at(30) }),
    file('dup', 'second\n', { mtime: at(31) }),
  ]);
  const l3 = await buildTar([
    // A dir again over the file over the dir: the L1 children must stay hidden.
    dir('d2f', { mtime: at(40) }),
    file('d2f/new', 'only child\n', { mtime: at(41) }),
  ]);
  return {
    name: 'replace-types',
    description:
      'L1 gzip: file f2d, dir d2f/ with a child and a grandchild, symlink s2d, dir d2s/ with a child, fifo p2f, file f2s, dir d2d/. ' +
      'L2 none: f2d becomes a dir with a child, d2f a file, s2d a dir, d2s a symlink, p2f a file, f2s a symlink, d2d re-entered ' +
      '(0700) with a new child (merges), "dup" written twice (second wins). L3 zstd: d2f a dir again with one new child: the L1 ' +
      'children must not come back.',
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'none'), layer(l3, 'zstd')] },
    expect: {
      visible: ['f2d/child', 'd2f/new', 's2d/child', 'd2s', 'p2f', 'f2s', 'd2d/lower', 'd2d/upper', 'dup'],
      hidden: ['d2f/a', 'd2f/sub', 'd2f/sub/b', 'd2s/child'],
      content: { 'd2f/new': 'only child\n', p2f: 'was a fifo\n', dup: 'second\n', 'f2d/child': 'in the dir that replaced a file\n' },
    },
  };
}

async function whiteouts(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    dir('a', { mtime: at(1) }),
    file('a/keep', 'kept\n', { mtime: at(2) }),
    file('a/gone', 'deleted in L2\n', { mtime: at(3) }),
    file('a/.white', 'starts with .wh but is not a whiteout\n', { mtime: at(4) }),
    dir('tree', { mtime: at(5) }),
    dir('tree/x', { mtime: at(6) }),
    dir('tree/x/y', { mtime: at(7) }),
    file('tree/x/y/z', 'deep\n', { mtime: at(8) }),
    file('tree/f', 'f\n', { mtime: at(9) }),
    dir('opq', { mtime: at(10) }),
    file('opq/old1', 'old\n', { mtime: at(11) }),
    dir('opq/olddir', { mtime: at(12) }),
    file('opq/olddir/old2', 'old\n', { mtime: at(13) }),
    dir('opq2', { mtime: at(14) }),
    file('opq2/old', 'old\n', { mtime: at(15) }),
    file('same1', 'lower\n', { mtime: at(16) }),
    file('same2', 'lower\n', { mtime: at(17) }),
    file('later', 'v1\n', { mtime: at(18) }),
    dir('dirre', { mtime: at(19) }),
    file('dirre/oldchild', 'old\n', { mtime: at(20) }),
    dir('dirre2', { mtime: at(21) }),
    file('dirre2/oldchild', 'old\n', { mtime: at(22) }),
  ]);
  const l2 = await buildTar([
    whiteout('a/gone'),
    whiteout('tree'),
    // Opaque marker first, then new children.
    opaque('opq'),
    file('opq/new1', 'new\n', { mtime: at(30) }),
    dir('opq/newdir', { mtime: at(31) }),
    file('opq/newdir/f', 'new\n', { mtime: at(32) }),
    // New child first, then the opaque marker: the child stays.
    file('opq2/new', 'new\n', { mtime: at(33) }),
    opaque('opq2'),
    // Whiteout then re-creation in the same layer…
    whiteout('same1'),
    file('same1', 'upper\n', { mtime: at(34) }),
    // …and re-creation then whiteout: a whiteout only hides LOWER layers.
    file('same2', 'upper\n', { mtime: at(35) }),
    whiteout('same2'),
    whiteout('later'),
    whiteout('never-existed'),
    // The same two orders for directories: the lower children go, the new ones stay.
    whiteout('dirre'),
    dir('dirre', { mtime: at(36) }),
    file('dirre/new', 'new\n', { mtime: at(37) }),
    dir('dirre2', { mtime: at(38) }),
    file('dirre2/new', 'new\n', { mtime: at(39) }),
    whiteout('dirre2'),
  ]);
  const l3 = await buildTar([
    file('later', 'v3\n', { mtime: at(40) }),
    dir('tree', { mtime: at(41) }),
    file('tree/new', 'new\n', { mtime: at(42) }),
  ]);
  return {
    name: 'whiteouts',
    description:
      'L1 gzip: files and dirs to delete. L2 none: whiteout of a file (a/gone) and of a whole tree; opaque opq/ with the marker ' +
      'BEFORE its new children and opq2/ with it AFTER; whiteout then re-creation of same1 and re-creation then whiteout of same2 ' +
      '(both visible with "upper"); the same two orders for directories dirre/ and dirre2/ (lower children hidden, new ones ' +
      'visible: in overlay format both need an opaque dir; umoci leaves dirre2\'s mtime at the unpack time, because deleting ' +
      'its lower children inside the walk is not undone); whiteout of "later"; whiteout of a path that never existed; ' +
      'a/.white is an ordinary file. L3 zstd: "later" re-created, tree/ re-created with one child.',
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'none'), layer(l3, 'zstd')] },
    expect: {
      visible: ['a/keep', 'a/.white', 'opq', 'opq/new1', 'opq/newdir/f', 'opq2/new', 'same1', 'same2', 'later', 'tree/new', 'dirre/new', 'dirre2', 'dirre2/new'],
      hidden: [
        'a/gone',
        'a/.wh.gone',
        'tree/x',
        'tree/x/y/z',
        'tree/f',
        'opq/old1',
        'opq/olddir',
        'opq/.wh..wh..opq',
        'opq2/old',
        'opq2/.wh..wh..opq',
        'never-existed',
        '.wh.never-existed',
        '.wh.same2',
        'dirre/oldchild',
        'dirre2/oldchild',
      ],
      content: { same1: 'upper\n', same2: 'upper\n', later: 'v3\n', 'a/keep': 'kept\n' },
    },
    umociQuirks: [
      {
        path: /^dirre2$/,
        field: 'mtime',
        reason: 'umoci: a whiteout of a dir re-created in the same layer deletes the lower children and leaves the unpack time',
      },
    ],
  };
}

async function implicitParents(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    // No entries for usr/, usr/local/, usr/local/bin/.
    file('usr/local/bin/tool', '#!/bin/sh\n', { mode: 0o755, mtime: at(1) }),
    dir('opt', { mode: 0o700, uid: 1000, gid: 1000, mtime: at(2), xattrs: { 'user.opt': 'lower' } }),
    file('opt/a', 'a\n', { mtime: at(3) }),
    // A directory entry AFTER its children: its metadata still applies.
    file('late-dir/child', 'child first\n', { mtime: at(4) }),
    dir('late-dir', { mode: 0o710, gid: 10, mtime: at(5) }),
  ]);
  const l2 = await buildTar([
    // No entries for opt/ or opt/sub/: opt keeps its L1 mode, owner and xattr.
    file('opt/sub/file', 'implicit parents in an upper layer\n', { mtime: at(10) }),
  ]);
  const l3 = await buildTar([file('var/lib/deep/x/y/file', 'deep\n', { mtime: at(20) }), file('usr/local/bin/tool2', 'more\n', { mode: 0o755, mtime: at(21) })]);
  return {
    name: 'implicit-parents',
    description:
      'L1 gzip: usr/local/bin/tool with no entries for its three parents; opt/ 0700 1000:1000 with a user xattr; late-dir/child ' +
      'before late-dir/ (0710, gid 10). L2 none: opt/sub/file with no entry for opt/ or opt/sub/: the merged opt keeps its L1 ' +
      'mode, owner and xattr (with overlayfs the upper diff\'s implicit opt/ must copy them). L3 zstd: a 5-deep implicit chain ' +
      'and a file under the implicit L1 chain. Implicit dirs get mode 0755 root:root. mtimes of implicit dirs, of opt and of the ' +
      'root are the unpack time in umoci (creating a missing parent bumps the nearest existing ancestor, which umoci does not ' +
      'restore): not comparable.',
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'none'), layer(l3, 'zstd')] },
    expect: {
      visible: ['usr', 'usr/local/bin/tool', 'usr/local/bin/tool2', 'opt/a', 'opt/sub/file', 'late-dir/child', 'var/lib/deep/x/y/file'],
    },
    umociQuirks: [
      {
        path: /^(usr|usr\/local|usr\/local\/bin|opt\/sub|var|var\/lib|var\/lib\/deep|var\/lib\/deep\/x|var\/lib\/deep\/x\/y)$/,
        field: 'mtime',
        reason: 'umoci: an implicit directory (no entry in any layer) gets the unpack time',
      },
      {
        path: /^(\.|opt)$/,
        field: 'mtime',
        reason: 'umoci: MkdirAll of a missing parent bumps the nearest existing ancestor, which it does not restore',
      },
    ],
  };
}

async function throughLowerSymlink(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    dir('usr', { mtime: at(1) }),
    dir('usr/bin', { mtime: at(2) }),
    dir('usr/lib', { mtime: at(3) }),
    file('usr/bin/a', 'a\n', { mtime: at(4) }),
    symlink('bin', 'usr/bin', { mtime: at(5) }),
    symlink('lib', '/usr/lib', { mtime: at(6) }),
  ]);
  const l2 = await buildTar([
    file('bin/new-tool', 'written through bin -> usr/bin\n', { mode: 0o755, mtime: at(10) }),
    file('lib/libnew.so', 'written through lib -> /usr/lib (resolved in the rootfs)\n', { mtime: at(11) }),
  ]);
  return {
    name: 'through-lower-symlink',
    description:
      'L1 gzip: merged-/usr style symlinks bin -> usr/bin (relative) and lib -> /usr/lib (absolute). L2 none: bin/new-tool and ' +
      'lib/libnew.so with no entries for bin/ or lib/. umoci and containerd resolve the parent inside the rootfs (SecureJoin / ' +
      'fs.RootPath: absolute targets re-rooted), so the files land in usr/bin and usr/lib and the symlinks stay. Docker\'s ' +
      'overlay2 instead makes bin/ a directory in the upper diff, hiding the symlink. Symlinks in THIS layer must never be ' +
      'followed (hostile-layers.ts); these come from a lower layer and point inside.',
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'none')] },
    expect: {
      visible: ['bin', 'lib', 'usr/bin/new-tool', 'usr/lib/libnew.so', 'usr/bin/a'],
      hidden: ['bin/new-tool', 'lib/libnew.so'],
    },
  };
}


// --- images that pin where tar readers part ways ---------------------------

/** A raw() member (no PAX or long-name prefix) with its header mtime in GNU base-256: big-endian two's complement, 0xff first for negatives. */
function withBase256Mtime(entry: TarEntry, seconds: number): TarEntry {
  if (entry.kind !== 'raw') throw new Error('withBase256Mtime: raw() entries only');
  const bytes = Buffer.from(entry.bytes);
  let v = BigInt.asUintN(96, BigInt(seconds));
  for (let i = 147; i >= 136; i--) {
    bytes[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  bytes[136] = seconds < 0 ? 0xff : 0x80;
  bytes.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += bytes[i]!;
  bytes.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return { kind: 'raw', bytes };
}

async function times(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    raw({ name: 'ns', data: 'nanoseconds\n', mtime: at(0), pax: { mtime: '1234567890.123456789' } }),
    raw({ name: 'pre-epoch', data: 'a day and a half second before 1970\n', pax: { mtime: '-86400.5' } }),
    raw({ name: 'epoch', data: 'mtime 0\n', mtime: 0 }),
    raw({ name: 'more-digits', data: 'ten fraction digits: the tenth is cut\n', pax: { mtime: '1.1234567891' } }),
    raw({ name: 'far-future', data: '2^33 - 1 seconds: the largest 11-digit octal mtime\n', pax: { mtime: '8589934591.999999999' } }),
    withBase256Mtime(raw({ name: 'base256-negative', data: 'header mtime -1000 in base-256\n' }), -1000),
    raw({ name: 'nsdir/', typeflag: '5', mode: 0o755, pax: { mtime: '1600000000.000000001' } }),
    raw({ name: 'nsdir/child', data: 'created after its dir entry\n', mtime: at(1) }),
    raw({ name: 'nslink', typeflag: '2', linkname: 'ns', mode: 0o777, pax: { mtime: '1500000000.5' } }),
  ]);
  const l2 = await buildTar([
    raw({ name: 'ns', data: 'replaced, other nanoseconds\n', pax: { mtime: '1234567890.987654321' } }),
    // A hardlink to a lower file: the copy an overlay diff holds keeps the nanoseconds.
    hardlink('far-future-link', 'far-future'),
    raw({ name: 'nsdir/', typeflag: '5', mode: 0o750, pax: { mtime: '-1.000000001' } }),
  ]);
  return {
    name: 'times',
    description:
      'L1 none: PAX mtimes 1234567890.123456789, -86400.5 (before 1970), 1.1234567891 (ten fraction digits: Go keeps nine), ' +
      '8589934591.999999999; a header mtime of 0; a header mtime of -1000 in GNU base-256; a dir and a symlink with PAX ' +
      'nanoseconds. L2 gzip: ns replaced with other nanoseconds, a hardlink to the lower far-future (the overlay copy-up must ' +
      'keep its nanoseconds), nsdir re-entered with mtime -1.000000001. Every mtime is compared to the nanosecond.',
    spec: { layers: [layer(l1, 'none'), layer(l2, 'gzip')] },
    expect: { visible: ['ns', 'pre-epoch', 'epoch', 'far-future', 'far-future-link', 'base256-negative', 'nsdir/child', 'nslink'], content: { 'far-future-link': '2^33 - 1 seconds: the largest 11-digit octal mtime\n' } },
  };
}

async function hardlinkWhiteouts(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    dir('d', { mtime: at(1) }),
    file('d/t', 'T\n', { mtime: at(2) }),
    file('d/u', 'U\n', { mtime: at(3) }),
    dir('o', { mtime: at(4) }),
    file('o/x', 'X\n', { mtime: at(5) }),
    file('a', 'A\n', { mtime: at(6) }),
  ]);
  const l2 = await buildTar([
    // The bug report: a link to the lower d/t, then d/t whited out: d/new-link keeps t's content.
    hardlink('d/new-link', 'd/t'),
    whiteout('d/t'),
    // A link to a lower file, then an opaque marker over that file's dir.
    hardlink('o-link', 'o/x'),
    opaque('o'),
    file('o/new', 'new in the opaque dir\n', { mtime: at(10) }),
    hardlink('b', 'a'),
  ]);
  const l3 = await buildTar([
    // A chain across layers: c -> b (L2) -> a (L1); then b whited out.
    hardlink('c', 'b'),
    whiteout('b'),
  ]);
  return {
    name: 'hardlink-whiteouts',
    description:
      'L1 gzip: d/t, d/u, o/x, a. L2 none: hardlink d/new-link -> d/t then d/.wh.t (d/t gone, d/new-link has its content); ' +
      'hardlink o-link -> o/x then o/.wh..wh..opq and o/new (o/x gone, o-link stays); b -> a. L3 zstd: c -> b (b is a link ' +
      'to the L1 a) then .wh.b: c and a stay with "A", b goes. In overlay diffs each link is a copy-up; a whiteout or opaque ' +
      'dir of the same layer must still hide the copy at the target path.',
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'none'), layer(l3, 'zstd')] },
    expect: {
      visible: ['d/new-link', 'd/u', 'o-link', 'o/new', 'a', 'c'],
      hidden: ['d/t', 'o/x', 'b'],
      content: { 'd/new-link': 'T\n', 'o-link': 'X\n', a: 'A\n', c: 'A\n' },
    },
  };
}

async function hardlinkAfterWhiteout(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([dir('d', { mtime: at(1) }), file('d/t', 'T\n', { mtime: at(2) })]);
  const l2 = await buildTar([whiteout('d/t'), hardlink('d/new-link', 'd/t')]);
  return {
    name: 'hardlink-after-whiteout',
    description:
      'L1 gzip: d/t. L2 none: d/.wh.t, THEN hardlink d/new-link -> d/t. The OCI spec: a whiteout hides lower entries from ' +
      'the layers above, whatever its place in its own tar, so the link names the lower d/t as in the other order. umoci ' +
      '(and containerd) apply the tar in order and fail ("link: no such file or directory"); lazyroot follows the spec.',
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'none')] },
    expect: { visible: ['d/new-link'], hidden: ['d/t'], content: { 'd/new-link': 'T\n' } },
    umociFails: { error: /d\/new-link: link: no such file or directory/, reason: 'umoci applies entries in tar order: the whiteout has removed d/t before the link to it' },
  };
}

async function oldStyleDirs(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    raw({ name: 'olddir/', typeflag: '\0', mode: 0o750, mtime: at(1) }),
    raw({ name: 'olddir/child', data: 'child\n', mtime: at(2) }),
    // Typeflag '0' is a regular file in POSIX and for Go (umoci, containerd); GNU tar alone makes it a directory.
    raw({ name: 'zerodir/', typeflag: '0', mode: 0o640, mtime: at(4), data: 'a file, named with a slash\n' }),
    // The name that counts is the PAX path.
    raw({ name: 'paxname', typeflag: '\0', mode: 0o711, mtime: at(5), pax: { path: 'paxdir/' } }),
  ]);
  const l2 = await buildTar([
    raw({ name: 'olddir/', typeflag: '\0', mode: 0o700, mtime: at(10) }),
    raw({ name: 'olddir/child2', data: 'child 2\n', mtime: at(11) }),
  ]);
  return {
    name: 'old-style-dirs',
    description:
      'L1 none: typeflag NUL on "olddir/" (a directory, with a child) and on "paxname" whose PAX path is "paxdir/" (a ' +
      'directory); typeflag \'0\' on "zerodir/" (a regular file ' +
      'zerodir, as POSIX and Go read it). L2 gzip: olddir/ again as NUL + slash, mode 0700, and a second child.',
    spec: { layers: [layer(l1, 'none'), layer(l2, 'gzip')] },
    expect: {
      visible: ['olddir/child', 'olddir/child2', 'paxdir', 'zerodir'],
      content: { zerodir: 'a file, named with a slash\n' },
    },
  };
}

async function headerOnlySizes(): Promise<EdgeCaseImage> {
  // A whole member (header + one data block) hidden as "data" of members that carry none.
  const smuggled = (name: string, text: string): Promise<Buffer> => buildTar([file(name, text, { mtime: at(9) })]).then((t) => t.subarray(0, 1024));
  const l1 = await buildTar([
    raw({ name: 'sl', typeflag: '2', linkname: 'target', mode: 0o777, mtime: at(1), data: await smuggled('after-symlink', 'a symlink has no data\n') }),
    raw({ name: 'fifo', typeflag: '6', mode: 0o600, mtime: at(2), data: await smuggled('after-fifo', 'a fifo has no data\n') }),
    file('target', 'target\n', { mtime: at(3) }),
    raw({ name: 'hl', typeflag: '1', linkname: 'target', data: await smuggled('after-hardlink', 'a hardlink has no data\n') }),
  ]);
  const l2 = await buildTar([raw({ name: 'dev', typeflag: '3', devmajor: 1, devminor: 3, mode: 0o666, mtime: at(4), data: await smuggled('after-device', 'a device has no data\n') })]);
  return {
    name: 'header-only-sizes',
    description:
      'L1 none: a symlink, a fifo and a hardlink whose size fields (1024) cover a whole tar member; L2 gzip: a char device ' +
      'likewise. POSIX: these types store no data; Go (umoci, containerd) reads the hidden members as members. A reader that ' +
      'skips `size` bytes (tar-stream did) sees a different image than the engines do.',
    spec: { layers: [layer(l1, 'none'), layer(l2, 'gzip')] },
    expect: {
      visible: ['sl', 'fifo', 'hl', 'dev', 'after-symlink', 'after-fifo', 'after-hardlink', 'after-device'],
      content: { 'after-symlink': 'a symlink has no data\n', 'after-device': 'a device has no data\n', hl: 'target\n' },
    },
  };
}

async function paxOverrides(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    dir('pax', { mtime: at(1) }),
    raw({ name: 'ignored-name', data: 'path from PAX\n', mtime: at(2), pax: { path: 'pax/real-name' } }),
    raw({ name: 'pax/sl', typeflag: '2', linkname: 'ignored-target', mode: 0o777, mtime: at(3), pax: { linkpath: 'real-name' } }),
    raw({ name: 'pax/owned', data: 'ids and names from PAX\n', uid: 1, gid: 2, mtime: at(4), pax: { uid: '4000000', gid: '4000001', uname: 'root', gname: 'root' } }),
    // The header says 0 bytes; PAX size says 12, and 12 bytes follow.
    raw({ name: 'pax/size', data: 'twelve bytes', size: 0, mtime: at(5), pax: { size: '12' } }),
    raw({ name: 'pax/hl', typeflag: '1', linkname: 'ignored', pax: { linkpath: 'pax/real-name' } }),
  ]);
  const l2 = await buildTar([raw({ name: 'ignored-2', data: 'upper\n', mtime: at(10), pax: { path: 'pax/real-name', mtime: `${at(11)}.25` } })]);
  return {
    name: 'pax-overrides',
    description:
      'L1 gzip: PAX records that override ustar fields: path, linkpath (symlink and hardlink), uid/gid 4000000/4000001 ' +
      '(names "root" ignored), size 12 over a header size of 0. L2 none: PAX path and mtime replace the file again.',
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'none')] },
    expect: {
      visible: ['pax/real-name', 'pax/sl', 'pax/owned', 'pax/size', 'pax/hl'],
      hidden: ['ignored-name', 'ignored-2', 'pax/ignored-target'],
      content: { 'pax/real-name': 'upper\n', 'pax/size': 'twelve bytes', 'pax/hl': 'path from PAX\n' },
    },
  };
}

async function xattrsOdd(): Promise<EdgeCaseImage> {
  const many = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`user.many-${String(i).padStart(2, '0')}`, `value ${i}`]));
  const l1 = await buildTar([
    file('empty-value', 'an xattr with an empty value\n', { mtime: at(1), xattrs: { 'user.empty': '', 'user.set': 'x' } }),
    file('many', '40 xattrs\n', { mtime: at(2), xattrs: many }),
    file('big-value', '3000-byte value\n', { mtime: at(3), xattrs: { 'user.big': 'v'.repeat(3000) } }),
    dir('xdir', { mtime: at(4), xattrs: { 'trusted.dir': 'lower' } }),
  ]);
  const l2 = await buildTar([
    paxBinary([['SCHILY.xattr.user.nul-only', Buffer.from([0])], ['SCHILY.xattr.trusted.binary', Buffer.from([0xff, 0x00, 0xfe])]]),
    file('binary', 'binary values\n', { mtime: at(10) }),
    // Re-entered with none: the lower trusted.dir must go.
    dir('xdir', { mtime: at(11) }),
  ]);
  return {
    name: 'xattrs-odd',
    description:
      'L1 gzip: an xattr with an empty value next to a set one, 40 xattrs on one file, a 3000-byte value, trusted.* on a dir. ' +
      'L2 zstd: a value that is one NUL and a binary trusted.* value (raw PAX), the dir re-entered without xattrs.',
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'zstd')] },
    expect: { visible: ['empty-value', 'many', 'big-value', 'binary', 'xdir'] },
  };
}

async function repeats(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([file('lower', 'lower\n', { mtime: at(1) }), dir('ldir', { mtime: at(2) }), file('ldir/a', 'a\n', { mtime: at(3) })]);
  const l2 = await buildTar([
    // The same path more than once in one layer: the last member wins, whatever the types.
    file('f2d', 'file first\n', { mtime: at(10) }),
    dir('f2d', { mode: 0o700, mtime: at(11) }),
    dir('d2f', { mtime: at(12) }),
    file('d2f/child', 'gone with its dir\n', { mtime: at(13) }),
    file('d2f', 'then a file\n', { mtime: at(14) }),
    dir('dd', { mode: 0o700, mtime: at(15) }),
    dir('dd', { mode: 0o755, gid: 7, mtime: at(16) }),
    symlink('s2f', 'lower', { mtime: at(17) }),
    file('s2f', 'a file over a symlink of the same layer\n', { mtime: at(18) }),
    hardlink('h2f', 'lower'),
    file('h2f', 'the link replaced; lower untouched\n', { mtime: at(19) }),
    file('f2h', 'replaced by a link\n', { mtime: at(20) }),
    hardlink('f2h', 'lower'),
    file('ldir', 'a file over a lower dir, then…\n', { mtime: at(21) }),
    dir('ldir', { mtime: at(22) }),
  ]);
  return {
    name: 'repeats',
    description:
      'L1 gzip: lower, ldir/a. L2 none, paths written twice: file then dir, dir (with a child) then file, dir then dir (last ' +
      'metadata wins), symlink then file, hardlink then file, file then hardlink, and over the lower dir ldir a file then a ' +
      'dir again (ldir/a must stay hidden).',
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'none')] },
    expect: {
      visible: ['f2d', 'd2f', 'dd', 's2f', 'h2f', 'f2h', 'lower', 'ldir'],
      hidden: ['d2f/child', 'ldir/a'],
      content: { d2f: 'then a file\n', s2f: 'a file over a symlink of the same layer\n', h2f: 'the link replaced; lower untouched\n', f2h: 'lower\n', lower: 'lower\n' },
    },
  };
}

async function typeflags(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([
    raw({ name: 'contiguous', typeflag: '7', data: "typeflag '7'\n", mtime: at(1) }),
    raw({ name: 'regular-nul', typeflag: '\0', data: 'typeflag NUL\n', mtime: at(2) }),
  ]);
  const l2 = await buildTar([
    // A PAX global header: not an entry; its records are ignored, as containerd and Docker ignore them.
    raw({ name: 'pax_global_header', typeflag: 'g', data: '18 comment=global\n' }),
    raw({ name: 'after-global', data: 'after a global header\n', mtime: at(3), pax: { 'SCHILY.xattr.user.own': 'pax' } }),
  ]);
  return {
    name: 'typeflags',
    description:
      "L1 none: typeflag '7' (contiguous file: a regular file, as GNU tar reads it), typeflag NUL (a regular file). " +
      "L2 gzip: a PAX global header ('g') before a member with its own PAX header: not an entry. " +
      "umoci 0.4.7 refuses both '7' and 'g' (unknown typeflag).",
    spec: { layers: [layer(l1, 'none'), layer(l2, 'gzip')] },
    expect: { visible: ['contiguous', 'regular-nul', 'after-global'], hidden: ['pax_global_header'], content: { contiguous: "typeflag '7'\n" } },
    umociFails: { error: /unknown typeflag '\\x37'/, reason: "umoci 0.4.7's switch has no case for TypeCont ('7') nor for global headers ('g')" },
    gnuTarReference: { quirks: [{ path: /^\.$/, field: 'mtime', reason: 'GNU tar: the extraction target keeps the time it was made' }] },
  };
}

async function estargzLayers(): Promise<EdgeCaseImage> {
  const built = await buildEstargz([
    file('.no.prefetch.landmark', Buffer.from([0x0f]), { mtime: 0 }),
    dir('etc', { mtime: at(1) }),
    file('etc/app.conf', 'from an eStargz layer\n', { mtime: at(2) }),
    symlink('etc/link', 'app.conf', { mtime: at(3) }),
  ]);
  const estargz = { tar: gunzipSync(built.blob), compression: 'gzip' as const, blob: built.blob, annotations: { 'containerd.io/snapshot/stargz/toc.digest': built.tocDigest } };
  const l2 = await buildTar([file('etc/plain', 'from a plain gzip layer\n', { mtime: at(10) })]);
  return {
    name: 'estargz',
    description:
      'L1: an eStargz blob (gzip members, TOC stargz.index.json, footer; TOC digest annotation) with a .no.prefetch.landmark. ' +
      'L2 gzip: a plain layer. The TOC and the landmark are eStargz metadata: stargz-snapshotter never shows them, umoci (and ' +
      'containerd without it) unpack them as files; lazyroot shows neither, on both paths.',
    spec: { layers: [estargz, layer(l2, 'gzip')] },
    expect: { visible: ['etc/app.conf', 'etc/link', 'etc/plain'], content: { 'etc/app.conf': 'from an eStargz layer\n' } },
    unlikeUmoci: { hidden: ['stargz.index.json', '.no.prefetch.landmark'], reason: 'eStargz metadata, not content (umoci unpacks it as files)' },
  };
}

async function vendorTypeflag(): Promise<EdgeCaseImage> {
  const l1 = await buildTar([file('before', 'before\n', { mtime: at(1) })]);
  const l2 = await buildTar([raw({ name: 'volume-label', typeflag: 'V', mtime: at(2) }), file('after', 'after\n', { mtime: at(3) })]);
  return {
    name: 'vendor-typeflag',
    description: "L1 gzip: a file. L2 none: a GNU volume header ('V'), then a file. Typeflags with no meaning for a rootfs are refused, by umoci and by lazyroot.",
    spec: { layers: [layer(l1, 'gzip'), layer(l2, 'none')] },
    umociFails: { error: /unknown typeflag '\\x56'/, reason: "umoci 0.4.7 refuses typeflags it does not know" },
  };
}

/** Every edge-case image, built afresh (deterministic bytes; GNU tar, zstd needed). */
export async function edgeCaseImages(): Promise<EdgeCaseImage[]> {
  return Promise.all([
    basics(),
    links(),
    hardlinks(),
    devices(),
    xattrs(),
    overlaySmuggling(),
    longNames(),
    sparsePax(),
    sparseGnu(),
    replaceTypes(),
    whiteouts(),
    implicitParents(),
    throughLowerSymlink(),
    times(),
    hardlinkWhiteouts(),
    hardlinkAfterWhiteout(),
    oldStyleDirs(),
    headerOnlySizes(),
    paxOverrides(),
    xattrsOdd(),
    repeats(),
    typeflags(),
    estargzLayers(),
    vendorTypeflag(),
  ]);
}

/** Writes every edge-case image into ONE OCI layout at `dir`, ref name = image name. */
export async function allFeaturesLayout(dir: string): Promise<{ images: EdgeCaseImage[]; layout: BuiltLayout }> {
  const images = await edgeCaseImages();
  const layout = await writeOciLayout(
    dir,
    images.map((i) => ({ ...i.spec, refName: i.name })),
  );
  return { images, layout };
}

/**
 * GNU tar's tree of an image (for `gnuTarReference` images, which umoci
 * refuses): each layer's uncompressed tar extracted in order into `dir` as
 * root, owners by number. Returns `dir`.
 */
export async function gnuTarUnpack(image: EdgeCaseImage, dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  for (const [i, layer] of image.spec.layers.entries()) {
    const path = `${dir}.layer-${i}.tar`;
    await writeFile(path, layer.tar);
    try {
      await run('tar', ['-x', '--numeric-owner', '--xattrs', '--xattrs-include=*', '-f', path, '-C', dir]);
    } finally {
      await rm(path, { force: true });
    }
  }
  return dir;
}

/** The `allow` list comparing lazyroot's tree of `image` with umoci's: the image's own named differences. */
export function umociAllows(image: EdgeCaseImage): AllowedDifference[] {
  const hidden = image.unlikeUmoci?.hidden ?? [];
  return [
    ...(image.umociQuirks ?? []),
    ...(image.overlayDifferences ?? []),
    ...hidden.map((p) => ({ path: new RegExp(`^${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`), field: 'exists', reason: image.unlikeUmoci!.reason })),
  ];
}

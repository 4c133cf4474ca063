/**
 * The reference unpacker: the real `umoci unpack` (0.4.7 here, Debian build
 * with Go 1.19), run as root without `--rootless`, so that lazyroot's overlay
 * diffs can be compared with what an independent implementation makes of the
 * same image (tree-snapshot.ts).
 *
 *   const rootfs = await umociUnpack(layoutDir, 'whiteouts', join(work, 'bundle'));
 *   const want = await snapshotTree(rootfs);
 *
 * # What umoci 0.4.7 does, and where overlayfs semantics differ
 *
 * Read from umoci v0.4.7 `oci/layer/tar_extract.go` (UnpackEntry,
 * ociWhiteout, restoreMetadata) and `oci/layer/unpack.go` (UnpackRootfs),
 * and checked by running it on the edge-case images (edge-case-images.test.ts
 * pins the points a test can observe). umoci extracts every layer, in order,
 * into ONE directory; lazyroot unpacks each layer into its own
 * `layers/<chain-id>/diff` and lets overlayfs merge them. Where the two
 * models give different trees, the comparison test names the difference in
 * its `allow` list, with one of the reasons below.
 *
 * - **zstd layers: refused.** 0.4.7 knows only `tar` and `tar+gzip` media
 *   types ("blob is not correct mediatype: …tar+zstd"; unpacking by media
 *   type, zstd included, came in 0.5.0, umoci commit 6355ec27).
 *   {@link umociUnpack} therefore hands umoci a private copy of the layout
 *   with zstd layers decompressed to plain `tar` blobs. The diff IDs do
 *   not change (a diff ID is the digest of the uncompressed tar), so the tree
 *   is the one the original image describes.
 * - **Whiteouts** (`.wh.NAME`, any typeflag): `RemoveAll` of the lower path,
 *   except paths this same layer already wrote (umoci tracks them in
 *   `upperPaths`, with all their ancestors). So "file, then its whiteout" in
 *   one layer keeps the file, as the OCI spec says (a whiteout only hides
 *   lower layers), and "whiteout, then the file" gives the new file. For a
 *   directory, "dir/ + dir/new, then .wh.dir" keeps dir and dir/new but still
 *   deletes the lower children; "whiteout, then dir/ + dir/new" likewise. In
 *   overlay format both must become an OPAQUE dir in the diff, not a 0/0 char
 *   device. A whiteout of a path that does not exist is silently ignored.
 * - **Opaque dirs** (`DIR/.wh..wh..opq`): removes every lower child of DIR
 *   not written by this layer, whatever the order of the marker and the new
 *   children. DIR keeps its metadata (from this layer's `DIR/` entry if any,
 *   otherwise from the lower layer, see "parent directories").
 * - **Parent directories**: before each entry umoci records the metadata
 *   (mode, owner, xattrs, times) of the entry's DIRECT parent, if that
 *   existed, and restores it afterwards. So adding a child (or a whiteout)
 *   to an existing directory never changes its mtime, and a directory that
 *   exists in a lower layer keeps its lower mode, owner and xattrs when an
 *   upper layer adds a child without a `DIR/` entry of its own. But:
 *   (a) when parents are missing, `MkdirAll` creates them and that bumps the
 *   mtime of the nearest EXISTING ancestor, which is not the direct parent
 *   and is not restored: in `implicit-parents`, `opt` (from L1) and the root
 *   show the unpack time after L2 adds `opt/sub/file`; (b) a whiteout of a
 *   directory this same layer re-created (`dirre2/`, `dirre2/new`, then
 *   `.wh.dirre2`) deletes the lower children inside the walk, leaving
 *   `dirre2`'s mtime at the unpack time. With overlayfs the merged directory
 *   shows the metadata of the TOPMOST layer holding it, so an unpacker that
 *   creates an implicit parent in an upper diff must copy
 *   mode/uid/gid/xattrs (and mtime) from the directory below to match.
 * - **Implicit parents** (no entry anywhere in the stack): `MkdirAll(dir,
 *   0777)` under the process umask (0755 here), uid/gid 0, no xattrs, mtime =
 *   the moment of unpacking. Such mtimes are never comparable.
 * - **The root directory**: umoci creates rootfs/ 0755 root:root and sets its
 *   mtime to the epoch (0) before the first layer; a `./` entry applies its
 *   metadata to it; direct children never change its mtime (but see (a)). An
 *   overlay mount's root shows the topmost diff root.
 * - **Directory replaced by a directory** (`DIR/` in an upper layer): not
 *   removed; chown, chmod, then ALL xattrs cleared and the entry's set, then
 *   times: the upper entry's metadata wins entirely, as with overlayfs.
 * - **Type changes**: anything but dir-over-dir is `RemoveAll`ed and recreated,
 *   so a file replaced by a directory, and a directory replaced by a file (with
 *   all its lower children), behave as overlayfs's non-merging lookups.
 * - **Hardlinks**: `link(2)` to the target resolved inside the rootfs
 *   (`SecureJoin` of its parent, final component not followed: a hardlink to
 *   a symlink links the symlink). No metadata is applied from a hardlink's
 *   own header (mode, uid, mtime of the link entry are ignored). A hardlink
 *   in an upper layer to a lower file shares the lower INODE: both paths
 *   report nlink 2 and one hardlink group. With per-layer diff dirs, the
 *   upper diff must hold a copy: unless the unpacker also copies the target
 *   up into the same diff and links the two there, the merged view shows two
 *   inodes (nlink 1 and the lower's count). Overwriting one member of a
 *   lower hardlink group in an upper layer: umoci unlinks it, so the survivor's
 *   nlink drops; overlayfs reports the lower inode's unchanged nlink. A
 *   hardlink whose target does not exist fails the unpack ("unpack entry: h:
 *   link: no such file or directory").
 * - **Devices and fifos**: `mknod` with the header's major/minor (as root;
 *   only `--rootless` fakes them); 510:300000 comes out exact. A tar entry
 *   that IS a 0/0 character device becomes a real 0/0 device with umoci; in overlay format that is a
 *   whiteout, so overlayfs hides the path instead (cannot be represented).
 * - **xattrs** (PAX `SCHILY.xattr.*`, binary values intact): `security.capability`,
 *   `user.*` and `trusted.*` are set as root. Names in umoci's `ignoreXattrs`
 *   (`security.selinux`, `system.nfs4_acl`, `trusted.overlay.opaque`,
 *   `…redirect`, `…origin`, `…impure`, `…nlink`, `…upper`, `…metacopy`) are
 *   NOT set ("ignoring forbidden xattr" warning): a layer cannot smuggle
 *   overlayfs control xattrs in. Binary values (non-UTF-8 bytes) are set
 *   exactly. `user.*` on a symlink fails the whole unpack ("restore xattr
 *   metadata: …: operation not permitted", the kernel allows user.* only on
 *   files and dirs), so no test image carries one; `trusted.*` on a symlink
 *   works.
 * - **Ownership**: numeric uid/gid from the header or PAX `uid`/`gid`
 *   records, never uname/gname. Lchown first, then chmod (so setuid/setgid
 *   survive), symlinks never chmodded (always 0777).
 * - **mtimes**: `Lutimes` with nanoseconds for every non-hardlink entry,
 *   symlinks included. A header mtime of 0 stays 0 (the epoch); umoci's
 *   "zero means now" fallback is for Go's zero time (year 1), which a tar
 *   header cannot express.
 * - **Sparse files**: PAX sparse 0.0, 0.1 and 1.0 are expanded by Go's
 *   archive/tar; umoci `io.Copy`s the result, so content, size and name are
 *   right but the holes are written as zeros (`du` shows the files fully
 *   allocated). tree-snapshot compares content, not allocation, so this is
 *   not a difference. Old GNU sparse members (typeflag 'S', `tar
 *   --format=gnu --sparse`) are REFUSED: "unknown typeflag '\x53'" (Go hands
 *   the typeflag through and umoci's switch has no case for it). The
 *   `sparse-gnu` edge-case image pins this.
 * - **Paths**: `CleanPath` (lexically, as if rooted at /) then `SecureJoin`
 *   for the parent, so `../../x` becomes `x` (tried), `/tmp/x` becomes
 *   `tmp/x`, and a symlinked parent is resolved INSIDE the rootfs: umoci never refuses these,
 *   it confines them. lazyroot refuses them (hostile-layers.ts), so hostile
 *   layers are not compared with umoci.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

const refAnnotation = 'org.opencontainers.image.ref.name';
const zstdType = 'application/vnd.oci.image.layer.v1.tar+zstd';
const tarType = 'application/vnd.oci.image.layer.v1.tar';

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  [key: string]: unknown;
}

/** `umoci --version`, e.g. "0.4.7+ds-3+b7". */
export async function umociVersion(): Promise<string> {
  const { stdout } = await run('umoci', ['--version']);
  const match = /umoci version (\S+)/.exec(stdout);
  if (!match) throw new Error(`umoci --version: unexpected output ${JSON.stringify(stdout)}`);
  return match[1]!;
}

export interface UmociResult {
  /** `<bundle>/rootfs`. */
  rootfs: string;
  /** umoci's log lines (warnings such as "ignoring forbidden xattr"). */
  log: string[];
  /** True when zstd layers had to be decompressed for umoci (see the file comment). */
  convertedZstd: boolean;
}

/**
 * Runs `umoci unpack --image LAYOUT:REF BUNDLE` and returns the rootfs path.
 * BUNDLE must not exist yet (umoci refuses an existing rootfs). Must run as
 * root: without `--rootless`, umoci chowns and mknods for real.
 */
export async function umociUnpack(layoutDir: string, ref: string, bundleDir: string): Promise<string> {
  return (await umociUnpackWithLog(layoutDir, ref, bundleDir)).rootfs;
}

/** {@link umociUnpack}, also returning umoci's log (warnings are part of its behaviour). */
export async function umociUnpackWithLog(layoutDir: string, ref: string, bundleDir: string): Promise<UmociResult> {
  const converted = await withoutZstd(layoutDir, ref);
  try {
    const image = `${converted?.dir ?? layoutDir}:${ref}`;
    let stderr: string;
    try {
      ({ stderr } = await run('umoci', ['unpack', '--image', image, bundleDir], { maxBuffer: 1 << 26 }));
    } catch (err) {
      const e = err as Error & { stderr?: string; code?: number };
      throw new Error(`umoci unpack --image ${layoutDir}:${ref} ${bundleDir}: exit ${e.code}: ${(e.stderr ?? e.message).trim()}`, {
        cause: err,
      });
    }
    return {
      rootfs: join(bundleDir, 'rootfs'),
      log: stderr.split('\n').filter((l) => l.trim() !== ''),
      convertedZstd: converted !== undefined,
    };
  } finally {
    if (converted) await rm(converted.dir, { recursive: true, force: true });
  }
}

const sha256 = (bytes: Buffer): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
const blobPath = (layout: string, digest: string): string => join(layout, 'blobs', digest.replace(':', '/'));

/**
 * When the image REF has zstd layers, a temporary layout holding only that
 * image with those layers decompressed (media type `tar`, digest = diff ID);
 * otherwise undefined.
 */
async function withoutZstd(layoutDir: string, ref: string): Promise<{ dir: string } | undefined> {
  const index = JSON.parse(await readFile(join(layoutDir, 'index.json'), 'utf8')) as { manifests: Descriptor[] };
  const entry = index.manifests.find((m) => m.annotations?.[refAnnotation] === ref);
  // Not found or not a manifest: let umoci report it in its own words.
  if (!entry || !entry.mediaType.endsWith('manifest.v1+json')) return undefined;
  const manifest = JSON.parse(await readFile(blobPath(layoutDir, entry.digest), 'utf8')) as {
    config: Descriptor;
    layers: Descriptor[];
  };
  if (!manifest.layers.some((l) => l.mediaType === zstdType)) return undefined;

  const dir = await mkdtemp(join(tmpdir(), 'lazyroot-umoci-layout-'));
  try {
    const put = async (bytes: Buffer): Promise<string> => {
      const digest = sha256(bytes);
      await mkdir(dirname(blobPath(dir, digest)), { recursive: true });
      await writeFile(blobPath(dir, digest), bytes);
      return digest;
    };
    const copyBlob = async (digest: string): Promise<void> => {
      await mkdir(dirname(blobPath(dir, digest)), { recursive: true });
      await copyFile(blobPath(layoutDir, digest), blobPath(dir, digest));
    };
    await copyBlob(manifest.config.digest);
    const layers: Descriptor[] = [];
    for (const layer of manifest.layers) {
      if (layer.mediaType !== zstdType) {
        await copyBlob(layer.digest);
        layers.push(layer);
        continue;
      }
      const { stdout } = await run('zstd', ['-d', '-q', '-c', blobPath(layoutDir, layer.digest)], {
        encoding: 'buffer',
        maxBuffer: 1 << 30,
      });
      layers.push({ ...layer, mediaType: tarType, digest: await put(stdout), size: stdout.length });
    }
    const manifestBytes = Buffer.from(JSON.stringify({ ...manifest, layers }));
    const manifestDigest = await put(manifestBytes);
    const newEntry = { ...entry, digest: manifestDigest, size: manifestBytes.length };
    await writeFile(join(dir, 'index.json'), JSON.stringify({ ...index, manifests: [newEntry] }));
    await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    return { dir };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

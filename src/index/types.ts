import type { Digest } from '../oci/digest.js';

/**
 * One tar member of a layer, as an index records it: everything needed to
 * show it in a mount without reading the layer, and where its bytes are.
 * Whiteouts and opaque markers are kept as the plain entries they are in the
 * tar (`.wh.NAME`, `.wh..wh..opq`): the union resolver gives them meaning.
 */
export interface IndexEntry {
  /** Normalized path (src/union/entry-path.ts `normalizeEntryPath`); '' is the root. */
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';
  /** Permission bits with setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Regular files: the file's size (for sparse files, the real size). */
  size: number;
  /** Whole seconds since the epoch (negative before 1970). */
  mtime: number;
  /** Nanoseconds past `mtime` (PAX times carry them), 0..999 999 999; absent means 0. */
  mtimeNsec?: number;
  /** Symlinks: the target as written. Hardlinks: the normalized path of the target entry. */
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** xattr name → value, base64 (values are binary). */
  xattrs?: Record<string, string>;
  /**
   * Regular files: where the file's data starts in the layer's *uncompressed*
   * tar stream (tar and gzip layers). Absent for eStargz, whose files are read
   * by chunk (see EstargzChunk).
   */
  dataOffset?: number;
  /** Sparse files: data regions of the real file; their bytes lie back to back from dataOffset. */
  sparse?: Array<{ offset: number; size: number }>;
}

/** A gzip checkpoint (zran): inflation can restart here with the window. */
export interface GzipCheckpoint {
  /** Byte offset in the compressed blob of the first byte inflation reads. */
  compressedOffset: number;
  /** Bits (0–7) of the byte before compressedOffset that belong to this point. */
  bits: number;
  /** Offset in the uncompressed stream this checkpoint restarts at. */
  uncompressedOffset: number;
  /** The 32 KiB of uncompressed data before this point (empty at offset 0). With `lazyWindow`, there only once it is loaded. */
  window: Buffer;
  /** Set when the window is fetched on first use (an index read by its head alone): load it before `window` is read. */
  lazyWindow?: LazyWindow;
  /** sha256 of the compressed bytes from this checkpoint's byte (the one holding `bits`, if any) to the next checkpoint's. */
  spanDigest: Digest;
}

/** A checkpoint's window not yet in memory: fetched and checked by its digest on `load()`. */
export interface LazyWindow {
  /** Its length once inflated (at most 32768). */
  readonly length: number;
  /** The window when it has been loaded. */
  readonly loaded: Buffer | undefined;
  load(): Promise<Buffer>;
}

/** An eStargz chunk: a separately compressed piece of one file, with its own digest. */
export interface EstargzChunk {
  /** Offset of the chunk in the file. */
  offset: number;
  /** Uncompressed size of the chunk. */
  size: number;
  /** Byte range of the chunk's gzip member in the compressed blob: [start, end). */
  compressedStart: number;
  compressedEnd: number;
  chunkDigest: Digest;
}

/**
 * Reads bytes [start, end) of a layer blob as stored (compressed). Bytes it
 * returns are not trusted yet: the index reader verifies them (span or chunk
 * digest) and then calls `confirm`, and only confirmed ranges are kept in the
 * store's partial blob and served again without a fetch.
 */
export interface BlobRangeReader {
  readonly size: number;
  read(start: number, end: number): Promise<Buffer>;
  /** The bytes of [start, end) just returned by `read` passed verification. */
  confirm?(start: number, end: number): void;
  /**
   * True once every byte has been checked against the blob's own digest (a
   * blob in the store's blobs/): reads need no per-span check then.
   */
  readonly verifiedWhole?: boolean;
  /**
   * Bytes [start, end) when they were verified as they entered the store (a
   * span or chunk digest, or the whole blob's), else undefined: such bytes
   * are trusted like a blob under blobs/ and never hashed again.
   */
  readVerified?(start: number, end: number): Promise<Buffer | undefined>;
  /**
   * Bytes [start, end) when the store keeps them, verified or not (bytes no
   * digest covers, such as tar headers between eStargz members, are kept
   * unverified): for checks that inflate them, never for serving. Undefined
   * when not kept: `read` fetches them, no more trusted than these.
   */
  readKept?(start: number, end: number): Promise<Buffer | undefined>;
  /** Kept unverified bytes of [start, end) turned out damaged: forget them, so the next read fetches them again. */
  dropKept?(start: number, end: number): void;
}

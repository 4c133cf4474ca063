import { readFile } from 'node:fs/promises';
import { DigestMismatchError, LazyrootError } from '../errors.js';
import { sha256, shortDigest, type Digest } from '../oci/digest.js';
import {
  accessProfileMediaType,
  layerDigestAnnotation,
  lazyrootIndexArtifactType,
  newestFirst,
  spanIndexHeadDigestAnnotation,
  spanIndexHeadSizeAnnotation,
  spanIndexMediaType,
} from '../oci/referrers.js';
import type { Descriptor, ImageManifest } from '../oci/types.js';
import type { ImageSource } from '../source/image-source.js';
import type { ImageRecord } from '../store/metadata-db.js';
import type { Store } from '../store/store.js';
import { spanStart } from '../index/gzip-native.js';
import { checkWindows, decodeIndex, decodeIndexHead } from '../index/index-file.js';
import type { LayerIndex } from '../index/layer-index.js';
import { parseProfile, profilePath, writeProfile } from './access-profile.js';
import { pathExists } from '../store/path-exists.js';

/**
 * Span indexes another machine built and pushed to the registry
 * (`lazyroot index --push`, index-artifact.ts): an OCI artifact whose
 * `subject` is the image manifest, found through the referrers API or the
 * fallback tag. Looked up once per image, and only when a layer has no index
 * in the store; each layer's index is then downloaded (verified by its
 * descriptor's digest), checked against the layer, and kept in the store
 * like one built here.
 *
 * Trust: the artifact is found by the image manifest's digest, but anyone
 * with push rights to the repository can write it. What it says is checked
 * where it can be: an index that names another blob, size, diff ID or
 * compression than the layer's is ignored with a warning, one whose spans or
 * files lie outside the layer is refused, and every span it describes is
 * verified against the layer's bytes when read (LayerRangeReader, prefetch
 * units): a wrong span digest is an EIO, never wrong bytes. Anything that
 * fails means the layer is indexed the ordinary way, by streaming it once.
 */
export class RemoteIndexes {
  private found: Promise<FoundArtifact | undefined> | undefined;

  constructor(
    private readonly store: Store,
    private readonly source: ImageSource,
    private readonly image: ImageRecord,
    private readonly log: (message: string, error?: unknown) => void = () => undefined,
    /** Bound on each request for an index's head or a window. */
    private readonly deadlineMs = 30_000,
  ) {}

  /**
   * The index of a layer from the registry's artifact, checked and ready to
   * keep, or undefined (no artifact, none for this layer, or one that failed
   * a check: the reason is logged).
   */
  async indexFor(layer: { digest: Digest; size: number }, diffId: Digest, compression: 'gzip' | 'none', what: string, options: { whole?: boolean } = {}): Promise<LayerIndex | undefined> {
    const artifact = await this.artifact();
    if (!artifact) return undefined;
    const descriptor = artifact.indexes.get(layer.digest);
    if (!descriptor) {
      this.log(`${what}: the registry's index artifact ${shortDigest(artifact.digest)} has no index for this layer; streaming it to build one`);
      return undefined;
    }
    const named = `${what}: remote index ${shortDigest(descriptor.digest)} (artifact ${shortDigest(artifact.digest)})`;
    try {
      const index = (!options.whole && (await this.headOnly(descriptor, named))) || (await this.wholeIndex(descriptor, named));
      checkRemoteIndex(index, { ...layer, diffId, compression }, named);
      return index;
    } catch (err) {
      this.log(`${named}: ignored, streaming the layer to build an index instead`, err);
      return undefined;
    }
  }

  /** The whole index file, every window checked now (decodeIndex would leave each to its first use). */
  private async wholeIndex(descriptor: Descriptor, named: string): Promise<LayerIndex> {
    const index = decodeIndex(await this.source.fetchVerified!('blob', descriptor, maxIndexBytes), named);
    checkWindows(index, named);
    return index;
  }

  /**
   * The index read by its head alone, when the artifact gives the head's
   * size and digest and the registry serves ranges: one request for the
   * head (checked against that digest), then one per window a read needs
   * (checked against the head's window digests), each bounded by the
   * mount's deadline. Undefined when the artifact gives no head.
   */
  private async headOnly(descriptor: Descriptor, named: string): Promise<LayerIndex | undefined> {
    const size = Number(descriptor.annotations?.[spanIndexHeadSizeAnnotation]);
    const digest = descriptor.annotations?.[spanIndexHeadDigestAnnotation];
    const { source } = this;
    if (!source.readRange || digest === undefined || !Number.isSafeInteger(size)) return undefined;
    if (size < 128 || size > descriptor.size || size > maxIndexBytes) throw new LazyrootError('INVALID_DATA', `${named}: its head of ${size} bytes does not fit its ${descriptor.size}`);
    const head = await source.readRange(descriptor, 0, size, { signal: AbortSignal.timeout(this.deadlineMs) });
    const got = sha256(head);
    if (got !== digest) throw new DigestMismatchError(`${named}: its head (bytes 0-${size})`, digest, got);
    // (A window the table places past the blob is refused by readRange, naming the blob and the range.)
    return decodeIndexHead(head, named, (start, end) => source.readRange!(descriptor, size + start, size + end, { signal: AbortSignal.timeout(this.deadlineMs) }));
  }

  /**
   * Looks the artifact up for its access profile alone, when this machine
   * has none for the image (layers that carry their own TOC, eStargz or
   * zstd:chunked, never ask for an index): kept in the store like one
   * recorded here. Resolves when the lookup is over, found or not.
   */
  async lookForProfile(): Promise<void> {
    if (await pathExists(profilePath(this.store, this.image.id))) return;
    await this.artifact();
  }

  private artifact(): Promise<FoundArtifact | undefined> {
    this.found ??= this.lookUp().catch((err: unknown) => {
      this.log(`image ${shortDigest(this.image.id)}: looking up span indexes in the registry failed; layers without an index are streamed`, err);
      return undefined;
    });
    return this.found;
  }

  private async lookUp(): Promise<FoundArtifact | undefined> {
    const { source, image } = this;
    if (!source.referrers || !source.fetchVerified) return undefined;
    const subject = image.manifestDigest;
    const candidates = newestFirst(await source.referrers(subject, { artifactType: lazyrootIndexArtifactType }));
    const layerDigests = new Set(image.chainIds.flatMap((c) => this.store.db.layer(c)?.blobs.map((b) => b.digest) ?? []));
    for (const candidate of candidates.slice(0, maxCandidates)) {
      const what = `image ${shortDigest(image.id)}: index artifact ${shortDigest(candidate.digest)}`;
      try {
        const manifest = parseArtifact(await source.fetchVerified('manifest', candidate, maxManifestBytes), subject, what);
        const indexes = new Map<Digest, Descriptor>();
        for (const d of manifest.layers) {
          if (d.mediaType !== spanIndexMediaType) continue;
          const named = d.annotations?.[layerDigestAnnotation];
          if (!named || !layerDigests.has(named)) {
            this.log(`${what}: index ${shortDigest(d.digest)} ignored: it names blob ${named ?? '(none)'}, not a layer of the image`);
            continue;
          }
          if (!indexes.has(named)) indexes.set(named, d);
        }
        const profile = manifest.layers.find((d) => d.mediaType === accessProfileMediaType);
        if (profile) await this.keepProfile(profile, what);
        return { digest: candidate.digest, indexes };
      } catch (err) {
        this.log(`${what}: ignored`, err);
      }
    }
    return undefined;
  }

  /** The artifact's access profile, kept when the image has none recorded here (checked like a local one). */
  private async keepProfile(descriptor: Descriptor, what: string): Promise<void> {
    const path = profilePath(this.store, this.image.id);
    if (await readFile(path).then(() => true, () => false)) return;
    try {
      const bytes = await this.source.fetchVerified!('blob', descriptor, maxProfileBytes);
      await writeProfile(this.store, parseProfile(JSON.parse(bytes.toString('utf8')), this.image.id));
    } catch (err) {
      this.log(`${what}: access profile ${shortDigest(descriptor.digest)} ignored`, err);
    }
  }
}

interface FoundArtifact {
  digest: Digest;
  /** Layer blob digest → the descriptor of its index. */
  indexes: Map<Digest, Descriptor>;
}

/** Index files of even very large layers are tens of MiB (a 32 KiB window per checkpoint, deflated). */
const maxIndexBytes = 512 << 20;
const maxManifestBytes = 4 << 20;
const maxProfileBytes = 64 << 20;
/** Artifacts tried, newest first, before giving up. */
const maxCandidates = 3;

function parseArtifact(bytes: Buffer, subject: Digest, what: string): ImageManifest & { artifactType?: string } {
  let m: (ImageManifest & { artifactType?: string }) | null;
  try {
    m = JSON.parse(bytes.toString('utf8')) as ImageManifest & { artifactType?: string };
  } catch (err) {
    throw new LazyrootError('INVALID_MANIFEST', `${what}: not JSON: ${(err as Error).message}`);
  }
  if (!m || m.schemaVersion !== 2 || !Array.isArray(m.layers)) throw new LazyrootError('INVALID_MANIFEST', `${what}: not an image manifest`);
  if (m.artifactType !== lazyrootIndexArtifactType) throw new LazyrootError('INVALID_MANIFEST', `${what}: artifact type ${String(m.artifactType)}, not ${lazyrootIndexArtifactType}`);
  if (m.subject?.digest !== subject) throw new LazyrootError('INVALID_MANIFEST', `${what}: its subject is ${String(m.subject?.digest)}, not the image manifest ${subject}`);
  return m;
}

/**
 * Checks a downloaded index against the layer it is to serve. What it cannot
 * check here (span digests, the window of each checkpoint, file offsets
 * inside the tar) is checked when the bytes are read, or cannot make a read
 * serve bytes that are not the layer's.
 */
export function checkRemoteIndex(index: LayerIndex, layer: { digest: Digest; size: number; diffId: Digest; compression: 'gzip' | 'none' }, what: string): void {
  const bad = (why: string) => new LazyrootError('INVALID_DATA', `${what}: ${why}`);
  if (index.blobDigest !== layer.digest) throw bad(`it is the index of blob ${index.blobDigest}, not of this layer`);
  if (index.compressedSize !== layer.size) throw bad(`it says the blob has ${index.compressedSize} bytes; the layer has ${layer.size}`);
  if (index.diffId !== layer.diffId) throw bad(`it is for diff ID ${index.diffId}; the layer's is ${layer.diffId}`);
  if (index.compression !== layer.compression) throw bad(`it indexes a ${index.compression === 'none' ? 'plain tar' : 'gzip'} layer; this one is ${layer.compression === 'none' ? 'plain tar' : 'gzip'}`);
  const cps = index.checkpoints;
  if (cps.length === 0 && index.uncompressedSize > 0) throw bad('refused: it has no checkpoints');
  let lastCompressed = -1;
  let lastUncompressed = 0;
  cps.forEach((cp, i) => {
    const start = index.compression === 'gzip' ? spanStart(cp) : cp.compressedOffset;
    if (!(cp.bits >= 0 && cp.bits <= 7) || start < 0 || cp.compressedOffset <= lastCompressed || cp.compressedOffset >= layer.size) {
      throw bad(`refused: span ${i} starts at byte ${cp.compressedOffset}, outside the blob's ${layer.size} bytes or out of order`);
    }
    if (cp.uncompressedOffset < lastUncompressed || cp.uncompressedOffset > index.uncompressedSize) {
      throw bad(`refused: span ${i} starts at uncompressed byte ${cp.uncompressedOffset}, outside the tar's ${index.uncompressedSize} bytes or out of order`);
    }
    lastCompressed = cp.compressedOffset;
    lastUncompressed = cp.uncompressedOffset;
  });
  if (cps.length > 0 && cps[0]!.uncompressedOffset !== 0) throw bad('refused: the first span does not start the tar');
  for (const e of index.entries) {
    if (e.type !== 'file' || e.dataOffset === undefined) continue;
    const stored = e.sparse ? e.sparse.reduce((n, r) => n + r.size, 0) : e.size;
    if (!(e.dataOffset >= 0) || !(stored >= 0) || e.dataOffset + stored > index.uncompressedSize) {
      throw bad(`refused: file ${JSON.stringify(e.path)} lies at bytes ${e.dataOffset}-${e.dataOffset + stored}, past the tar's ${index.uncompressedSize} bytes`);
    }
  }
}

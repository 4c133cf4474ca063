import type { Readable } from 'node:stream';
import { DigestMismatchError, LazyrootError, isLazyrootError } from '../errors.js';
import { sha256, type Digest } from '../oci/digest.js';
import { parseImageConfig } from '../oci/manifest.js';
import { MediaType } from '../oci/media-types.js';
import type { Descriptor, ImageManifest, Platform } from '../oci/types.js';
import { formatReference, parseDockerReference, type DockerReference, type PathReference } from '../reference/reference.js';
import { maxConfigBytes, openBlobFile, openMemoryBlob, readBlobFileRange, readMemoryRange } from './blob-files.js';
import { canonicalJson } from './canonical-json.js';
import { throwIfAborted } from './fetch-options.js';
import { missingFile, readWholeFile } from './file-reader.js';
import type { FetchOptions, ImageSource, ResolvedImage } from './image-source.js';
import { examineLayerFile } from './layer-file.js';
import { TarArchive } from './tar-archive.js';

/** One entry of a `docker save` manifest.json. */
interface SavedImage {
  Config: string;
  RepoTags: string[];
  Layers: string[];
}

/** Where each blob of the image comes from: an archive member, or bytes generated here. */
type BlobLocation = { member: string } | { bytes: Buffer };

/**
 * `docker-archive:FILE[:ref]`, the `docker save` format: manifest.json lists,
 * per image, its config file, its RepoTags and its layer files (legacy
 * `<id>/layer.tar`, or docker 25+'s `blobs/sha256/<hex>`). There is no
 * manifest in the archive, so one is generated: an OCI manifest whose config
 * and layer descriptors describe the archive's files byte for byte.
 */
export class DockerArchiveSource implements ImageSource {
  readonly description: string;
  private image: Promise<ResolvedImage> | undefined;
  private readonly blobs = new Map<Digest, BlobLocation>();

  private constructor(
    private readonly archive: TarArchive,
    private readonly ref: PathReference,
  ) {
    this.description = archive.description;
  }

  static async open(ref: PathReference, options: { tmpDir: string }): Promise<DockerArchiveSource> {
    const archive = await TarArchive.open(ref.path, { tmpDir: options.tmpDir, description: `docker-archive:${ref.path}` });
    return new DockerArchiveSource(archive, ref);
  }

  /** The archive holds one build of the image, so the platform asked for does not choose anything. */
  async resolve(_platform: Platform, options?: FetchOptions): Promise<ResolvedImage> {
    throwIfAborted(options, this.description);
    if (this.image === undefined) {
      this.image = this.load();
      // A failed load may succeed later (e.g. the file was being written); do not cache the failure.
      this.image.catch(() => (this.image = undefined));
    }
    return this.image;
  }

  async openBlob(descriptor: Descriptor, offset = 0, options?: FetchOptions): Promise<Readable> {
    const location = this.locate(descriptor);
    if ('member' in location) return openBlobFile(this.archive, location.member, descriptor, offset, options);
    return openMemoryBlob(location.bytes, descriptor, offset, options, this.description);
  }

  async readRange(descriptor: Descriptor, start: number, end: number, options?: FetchOptions): Promise<Buffer> {
    const location = this.locate(descriptor);
    if ('member' in location) return readBlobFileRange(this.archive, location.member, descriptor, start, end, options);
    return readMemoryRange(location.bytes, descriptor, start, end, this.description);
  }

  close(): Promise<void> {
    return this.archive.close();
  }

  private locate(descriptor: Descriptor): BlobLocation {
    const location = this.blobs.get(descriptor.digest);
    if (location === undefined) {
      throw new LazyrootError('NOT_FOUND', `${this.description}: blob ${descriptor.digest} is not part of the image (resolve it first)`);
    }
    return location;
  }

  private async load(): Promise<ResolvedImage> {
    const saved = this.chooseImage(await this.readManifestJson());

    const configBytes = await readWholeFile(this.archive, saved.Config, maxConfigBytes, `config ${saved.Config}`);
    const configDigest = sha256(configBytes);
    const named = digestInName(saved.Config);
    if (named !== undefined && named !== configDigest) {
      throw new DigestMismatchError(`${this.description}: config ${saved.Config}`, named, configDigest);
    }
    const config = parseImageConfig(configBytes, saved.Layers.length, `${this.description}: config ${saved.Config}`);

    const layers: Descriptor[] = [];
    for (const [i, member] of saved.Layers.entries()) {
      const what = `${this.description}: layer ${member}`;
      const size = await this.archive.size(member);
      if (size === undefined) throw missingFile(this.archive, `layer ${member}`);
      const facts = await examineLayerFile(this.archive, member, size, { diffId: false, what });
      const diffId = config.rootfs.diff_ids[i]!;
      // An uncompressed layer's digest is its diff ID: the config must agree.
      if (facts.compression === 'none' && facts.digest !== diffId) {
        throw new DigestMismatchError(`${what}: against the config's diff ID ${i}`, diffId, facts.digest);
      }
      layers.push({ mediaType: facts.mediaType, digest: facts.digest, size: facts.size });
      this.blobs.set(facts.digest, { member });
    }

    const manifest: ImageManifest = {
      schemaVersion: 2,
      mediaType: MediaType.ociManifest,
      config: { mediaType: MediaType.ociConfig, digest: configDigest, size: configBytes.length },
      layers,
    };
    const manifestBytes = canonicalJson(manifest);
    const manifestDigest = sha256(manifestBytes);
    this.blobs.set(configDigest, { member: saved.Config });
    this.blobs.set(manifestDigest, { bytes: manifestBytes });

    const platform: Platform = { os: config.os, architecture: config.architecture };
    if (config.variant) platform.variant = config.variant;
    return {
      name: formatReference(this.ref),
      manifestDigest,
      manifestMediaType: MediaType.ociManifest,
      manifestBytes,
      manifest,
      configBytes,
      config,
      platform,
    };
  }

  private async readManifestJson(): Promise<SavedImage[]> {
    const what = `${this.description}: manifest.json`;
    const bytes = await readWholeFile(this.archive, 'manifest.json', 16 << 20, 'manifest.json');
    let doc: unknown;
    try {
      doc = JSON.parse(bytes.toString('utf8'));
    } catch (err) {
      throw new LazyrootError('INVALID_MANIFEST', `${what}: not valid JSON (${(err as Error).message})`);
    }
    if (!Array.isArray(doc)) throw new LazyrootError('INVALID_MANIFEST', `${what}: not a JSON array`);
    return doc.map((entry: unknown, i) => {
      const e = entry as Record<string, unknown> | null;
      const bad = (why: string): LazyrootError => new LazyrootError('INVALID_MANIFEST', `${what}: image ${i}: ${why}`);
      if (e === null || typeof e !== 'object') throw bad('not an object');
      if (typeof e.Config !== 'string' || e.Config === '') throw bad('no Config');
      if (!Array.isArray(e.Layers) || !e.Layers.every((l) => typeof l === 'string' && l !== '')) throw bad('Layers is not a list of paths');
      const tags = e.RepoTags ?? [];
      if (!Array.isArray(tags) || !tags.every((t) => typeof t === 'string')) throw bad('RepoTags is not a list of strings');
      return { Config: e.Config, RepoTags: tags as string[], Layers: e.Layers as string[] };
    });
  }

  /** By `@N` (position in manifest.json), by `repo:tag`, or the only image. */
  private chooseImage(images: SavedImage[]): SavedImage {
    const ref = this.ref.ref;
    if (images.length === 0) throw new LazyrootError('NOT_FOUND', `${this.description}: manifest.json lists no images`);
    if (ref === undefined) {
      if (images.length === 1) return images[0]!;
      throw new LazyrootError(
        'INVALID_ARGUMENT',
        `${this.description}: holds ${images.length} images; name one with docker-archive:FILE:REPO:TAG or :@N (choices: ${describeChoices(images)})`,
      );
    }
    if (/^@\d+$/.test(ref)) {
      const image = images[Number(ref.slice(1))];
      if (image === undefined) {
        throw new LazyrootError('NOT_FOUND', `${this.description}: no image ${ref}: the archive has ${images.length} (@0..@${images.length - 1})`);
      }
      return image;
    }
    const want = parseTag(ref);
    if (want === undefined) throw new LazyrootError('INVALID_REFERENCE', `${this.description}: ${JSON.stringify(ref)} is neither repo:tag nor @N`);
    const found = images.find((image) => image.RepoTags.some((tag) => sameTag(parseTag(tag), want)));
    if (found === undefined) {
      throw new LazyrootError('NOT_FOUND', `${this.description}: no image tagged ${JSON.stringify(ref)} (it has: ${describeChoices(images)})`);
    }
    return found;
  }
}

/** `<hex>.json` (legacy) or `blobs/sha256/<hex>` (docker 25+): the digest a config's name claims. */
function digestInName(path: string): Digest | undefined {
  const match = /(?:^|\/)(?:sha256\/)?([a-f0-9]{64})(?:\.json)?$/.exec(path);
  return match ? `sha256:${match[1]}` : undefined;
}

/** A RepoTag, normalised as Docker Hub names are (`alpine:3` = `docker.io/library/alpine:3`). */
function parseTag(text: string): DockerReference | undefined {
  try {
    return parseDockerReference(text);
  } catch (err) {
    if (isLazyrootError(err, 'INVALID_REFERENCE')) return undefined;
    throw err;
  }
}

function sameTag(a: DockerReference | undefined, b: DockerReference): boolean {
  return a !== undefined && a.registry === b.registry && a.repository === b.repository && a.tag === b.tag && a.digest === b.digest;
}

function describeChoices(images: SavedImage[]): string {
  return images.map((image, i) => (image.RepoTags.length > 0 ? `${image.RepoTags.join(' ')} (@${i})` : `@${i}`)).join(', ');
}

import type { Readable } from 'node:stream';
import { LazyrootError } from '../errors.js';
import { digestAlgorithm, digestHex, isDigest, parseDigest, shortDigest } from '../oci/digest.js';
import { parseImageConfig, parseJsonObject, parseManifest, type ParsedManifest } from '../oci/manifest.js';
import { MediaType } from '../oci/media-types.js';
import { formatPlatform, platformMatches, selectPlatform } from '../oci/platform.js';
import type { Descriptor, ImageIndex, Platform } from '../oci/types.js';
import { formatReference, type PathReference } from '../reference/reference.js';
import { maxConfigBytes, maxManifestBytes, openBlobFile, readBlobFileRange, readVerifiedBlob } from './blob-files.js';
import { throwIfAborted } from './fetch-options.js';
import { DirectoryReader, readWholeFile, type FileReader } from './file-reader.js';
import type { FetchOptions, ImageSource, ResolvedImage } from './image-source.js';

export const refNameAnnotation = 'org.opencontainers.image.ref.name';

/** Indexes nested deeper than this are refused: a loop or a hostile layout. */
const maxIndexDepth = 4;
const maxIndexJsonBytes = 16 << 20;

export interface OciLayoutOptions {
  /** The image's canonical name, e.g. `oci:/srv/img:v1`. */
  name: string;
  /** A `org.opencontainers.image.ref.name` or a manifest/index digest; omitted: the only image. */
  ref?: string;
}

/**
 * An OCI image layout (oci-layout, index.json, blobs/<alg>/<hex>), read through a
 * FileReader so that a directory (`oci:`) and a tar (`oci-archive:`) share it.
 * Every manifest, index and config read is checked against its descriptor.
 */
export class OciLayoutSource implements ImageSource {
  readonly description: string;

  constructor(
    private readonly files: FileReader,
    private readonly options: OciLayoutOptions,
  ) {
    this.description = files.description;
  }

  async resolve(platform: Platform, options?: FetchOptions): Promise<ResolvedImage> {
    throwIfAborted(options, this.description);
    await this.checkLayoutVersion();
    const top = await this.readIndexJson();
    let descriptor = this.chooseTopLevel(top.manifests, platform);
    let indexDigest: string | undefined;
    for (let depth = 0; ; depth++) {
      throwIfAborted(options, this.description);
      const what = descriptorKind(descriptor);
      const bytes = await readVerifiedBlob(this.files, blobPath(descriptor.digest), descriptor, what, maxManifestBytes);
      const parsed = parseManifest(bytes, descriptor.mediaType, `${this.description}: ${what} ${descriptor.digest}`);
      if (parsed.kind === 'index') {
        if (depth >= maxIndexDepth) {
          throw new LazyrootError('INVALID_MANIFEST', `${this.description}: index ${descriptor.digest}: indexes nested more than ${maxIndexDepth} deep`);
        }
        indexDigest = descriptor.digest;
        descriptor = this.selectFromIndex(parsed.index, descriptor, platform);
        continue;
      }
      if (parsed.kind === 'schema1') {
        throw new LazyrootError('UNSUPPORTED', `${this.description}: manifest ${descriptor.digest}: Docker schema1 manifests are not supported in an image layout`);
      }
      return this.withConfig(parsed, bytes, descriptor, indexDigest);
    }
  }

  async openBlob(descriptor: Descriptor, offset = 0, options?: FetchOptions): Promise<Readable> {
    return openBlobFile(this.files, blobPath(descriptor.digest), descriptor, offset, options);
  }

  async readRange(descriptor: Descriptor, start: number, end: number, options?: FetchOptions): Promise<Buffer> {
    return readBlobFileRange(this.files, blobPath(descriptor.digest), descriptor, start, end, options);
  }

  close(): Promise<void> {
    return this.files.close();
  }

  private async checkLayoutVersion(): Promise<void> {
    const bytes = await readWholeFile(this.files, 'oci-layout', 64 << 10, 'oci-layout');
    const doc = parseJsonObject(bytes, `${this.description}: oci-layout`);
    const version = doc.imageLayoutVersion;
    if (typeof version !== 'string') {
      throw new LazyrootError('INVALID_MANIFEST', `${this.description}: oci-layout: no imageLayoutVersion`);
    }
    if (!/^1(\.|$)/.test(version)) {
      throw new LazyrootError('UNSUPPORTED', `${this.description}: oci-layout: unsupported imageLayoutVersion ${JSON.stringify(version)} (want 1.x)`);
    }
  }

  private async readIndexJson(): Promise<ImageIndex> {
    const bytes = await readWholeFile(this.files, 'index.json', maxIndexJsonBytes, 'index.json');
    const parsed = parseManifest(bytes, MediaType.ociIndex, `${this.description}: index.json`);
    if (parsed.kind !== 'index') throw new LazyrootError('INVALID_MANIFEST', `${this.description}: index.json: not an image index`);
    return parsed.index;
  }

  /** Picks index.json's entry for the ref (name or digest), or the only entry, or by platform. */
  private chooseTopLevel(entries: Descriptor[], platform: Platform): Descriptor {
    const ref = this.options.ref;
    const candidates =
      ref === undefined
        ? entries
        : entries.filter((d) => (isDigest(ref) ? d.digest === ref : d.annotations?.[refNameAnnotation] === ref));
    if (candidates.length === 1) return candidates[0]!;
    if (candidates.length === 0) {
      if (entries.length === 0) throw new LazyrootError('NOT_FOUND', `${this.description}: index.json lists no images`);
      throw new LazyrootError('NOT_FOUND', `${this.description}: no image ${JSON.stringify(ref)} in index.json (it has: ${describeChoices(entries)})`);
    }
    // Several entries under one name (or none): they may be one image's platforms.
    // Two of them for the same platform are two images, though: refuse to guess.
    const names = new Set(candidates.map((d) => d.annotations?.[refNameAnnotation]));
    if (names.size === 1 && candidates.every((d) => d.platform !== undefined)) {
      const matching = candidates.filter((d) => platformMatches(platform, d.platform!));
      const platforms = matching.map((d) => formatPlatform(d.platform!));
      if (matching.length > 0 && new Set(platforms).size === platforms.length) return selectPlatform(matching, platform)!;
      if (matching.length === 0) {
        throw new LazyrootError(
          'NOT_FOUND',
          `${this.description}: index.json: no image for platform ${formatPlatform(platform)} (available: ${describePlatforms(candidates)})`,
        );
      }
    }
    throw new LazyrootError(
      'INVALID_ARGUMENT',
      `${this.description}: index.json holds ${candidates.length} images${ref === undefined ? '' : ` named ${JSON.stringify(ref)}`}; name one by its ref (choices: ${describeChoices(candidates)})`,
    );
  }

  private selectFromIndex(index: ImageIndex, descriptor: Descriptor, platform: Platform): Descriptor {
    const chosen = selectPlatform(index.manifests, platform);
    if (chosen) return chosen;
    throw new LazyrootError(
      'NOT_FOUND',
      `${this.description}: index ${descriptor.digest}: no manifest for platform ${formatPlatform(platform)} (available: ${describePlatforms(index.manifests)})`,
    );
  }

  private async withConfig(
    parsed: Extract<ParsedManifest, { kind: 'manifest' }>,
    manifestBytes: Buffer,
    descriptor: Descriptor,
    indexDigest: string | undefined,
  ): Promise<ResolvedImage> {
    const { manifest } = parsed;
    const configBytes = await readVerifiedBlob(this.files, blobPath(manifest.config.digest), manifest.config, 'config', maxConfigBytes);
    const config = parseImageConfig(configBytes, manifest.layers.length, `${this.description}: config ${manifest.config.digest}`);
    const imagePlatform: Platform = { os: config.os, architecture: config.architecture };
    if (config.variant) imagePlatform.variant = config.variant;
    const resolved: ResolvedImage = {
      name: this.options.name,
      manifestDigest: descriptor.digest,
      manifestMediaType: parsed.mediaType,
      manifestBytes,
      manifest,
      configBytes,
      config,
      platform: imagePlatform,
    };
    if (indexDigest !== undefined) resolved.indexDigest = indexDigest;
    return resolved;
  }
}

/** Where a blob lives in an image layout. A valid digest is all hex, so the path stays inside. */
export function blobPath(digest: string): string {
  parseDigest(digest, 'blob digest');
  return `blobs/${digestAlgorithm(digest)}/${digestHex(digest)}`;
}

function descriptorKind(descriptor: Descriptor): string {
  return descriptor.mediaType === MediaType.ociIndex || descriptor.mediaType === MediaType.dockerManifestList ? 'index' : 'manifest';
}

function describeChoices(entries: Descriptor[]): string {
  return entries
    .map((d) => {
      const name = d.annotations?.[refNameAnnotation];
      const platform = d.platform ? ` [${formatPlatform(d.platform)}]` : '';
      return `${name ?? shortDigest(d.digest)}${platform}`;
    })
    .join(', ');
}

function describePlatforms(entries: Descriptor[]): string {
  const platforms = entries.filter((d) => d.platform).map((d) => formatPlatform(d.platform!));
  return platforms.length > 0 ? [...new Set(platforms)].join(', ') : 'none';
}

/** `oci:DIR[:ref]`: an image layout directory. */
export async function openOciLayoutSource(ref: PathReference): Promise<OciLayoutSource> {
  const reader = new DirectoryReader(ref.path, `oci:${ref.path}`);
  await reader.checkExists();
  return new OciLayoutSource(reader, { name: formatReference(ref), ...(ref.ref !== undefined ? { ref: ref.ref } : {}) });
}

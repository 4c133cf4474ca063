import { basename, dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { LazyrootError } from '../errors.js';
import { sha256 } from '../oci/digest.js';
import { MediaType } from '../oci/media-types.js';
import type { Descriptor, ImageManifest, Platform } from '../oci/types.js';
import { formatReference, type TarballReference } from '../reference/reference.js';
import { openBlobFile, openMemoryBlob, readBlobFileRange, readMemoryRange } from './blob-files.js';
import { canonicalJson } from './canonical-json.js';
import { throwIfAborted } from './fetch-options.js';
import { DirectoryReader, checkReadableFile } from './file-reader.js';
import { emptyConfigFor, type FetchOptions, type ImageSource, type ResolvedImage } from './image-source.js';
import { examineLayerFile, type LayerFileFacts } from './layer-file.js';

/**
 * A plain rootfs tarball (`.tar`, `.tar.gz`, `.tgz`, `.tar.zst`) as an image of
 * one layer: the file itself is the layer blob, the config is the minimal one
 * for the platform asked for. Manifest and config are canonical JSON, so the
 * same tarball always gives the same image ID on the same platform.
 */
export class TarballSource implements ImageSource {
  readonly description: string;
  private readonly files: DirectoryReader;
  private readonly member: string;
  private layer: Promise<LayerFileFacts> | undefined;
  /** Generated manifests and configs, by digest, for openBlob. */
  private readonly generated = new Map<string, Buffer>();

  constructor(private readonly ref: TarballReference) {
    this.description = formatReference(ref);
    // The tarball is the one file of interest in its directory; reading it through
    // a DirectoryReader shares the size checks and ranged reads of the other sources.
    this.files = new DirectoryReader(dirname(ref.path), this.description);
    this.member = basename(ref.path);
  }

  async resolve(platform: Platform, options?: FetchOptions): Promise<ResolvedImage> {
    throwIfAborted(options, this.description);
    const layer = await this.examine();
    const config = emptyConfigFor([layer.diffId!], platform);
    const configBytes = canonicalJson(config);
    const manifest: ImageManifest = {
      schemaVersion: 2,
      mediaType: MediaType.ociManifest,
      config: { mediaType: MediaType.ociConfig, digest: sha256(configBytes), size: configBytes.length },
      layers: [{ mediaType: layer.mediaType, digest: layer.digest, size: layer.size }],
    };
    const manifestBytes = canonicalJson(manifest);
    const manifestDigest = sha256(manifestBytes);
    this.generated.set(manifest.config.digest, configBytes);
    this.generated.set(manifestDigest, manifestBytes);
    return {
      name: this.description,
      manifestDigest,
      manifestMediaType: MediaType.ociManifest,
      manifestBytes,
      manifest,
      configBytes,
      config,
      platform: { ...platform },
    };
  }

  async openBlob(descriptor: Descriptor, offset = 0, options?: FetchOptions): Promise<Readable> {
    const bytes = this.generated.get(descriptor.digest);
    if (bytes !== undefined) return openMemoryBlob(bytes, descriptor, offset, options, this.description);
    await this.checkIsLayer(descriptor);
    return openBlobFile(this.files, this.member, descriptor, offset, options, 'layer');
  }

  async readRange(descriptor: Descriptor, start: number, end: number, options?: FetchOptions): Promise<Buffer> {
    const bytes = this.generated.get(descriptor.digest);
    if (bytes !== undefined) return readMemoryRange(bytes, descriptor, start, end, this.description);
    await this.checkIsLayer(descriptor);
    return readBlobFileRange(this.files, this.member, descriptor, start, end, options, 'layer');
  }

  async close(): Promise<void> {}

  /** One pass over the file: its digest, size, compression and diff ID. Done once. */
  private examine(): Promise<LayerFileFacts> {
    if (this.layer === undefined) {
      this.layer = (async () => {
        const size = await checkReadableFile(this.ref.path, this.description);
        return examineLayerFile(this.files, this.member, size, { diffId: true, what: this.description });
      })();
      this.layer.catch(() => (this.layer = undefined));
    }
    return this.layer;
  }

  private async checkIsLayer(descriptor: Descriptor): Promise<void> {
    const layer = await this.examine();
    if (descriptor.digest !== layer.digest) {
      throw new LazyrootError('NOT_FOUND', `${this.description}: blob ${descriptor.digest} is not part of this image (its layer is ${layer.digest})`);
    }
  }
}

/**
 * Builds test images from layer tars (see tar-builder.ts) and writes them in the
 * formats lazyroot reads: an OCI image layout directory, an OCI archive, a
 * `docker save` archive, or a real registry (through skopeo).
 *
 *   const tar = await buildTar([file('hello', 'world')]);
 *   const layout = await writeOciLayout(dir, [
 *     { layers: [{ tar, compression: 'gzip' }], refName: 'v1' },
 *   ]);
 *   layout.images[0].manifestDigest   // sha256:…
 *
 * Everything is deterministic: the same specs always give the same digests.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import type { Descriptor, ImageConfig, ImageIndex, ImageManifest, Platform } from '../../src/oci/types.js';
import { buildTar, compress, dir, file, type TarEntry } from './tar-builder.js';

const run = promisify(execFile);

export type LayerCompression = 'none' | 'gzip' | 'zstd';

export interface LayerSpec {
  /** The uncompressed layer tar (from buildTar): its digest is the diff ID. */
  tar: Buffer;
  compression: LayerCompression;
  /** The blob as stored, when it is not `compress(tar)` (an eStargz blob: gzip members and a footer). */
  blob?: Buffer;
  /** Annotations on the layer's descriptor (eStargz: the TOC digest). */
  annotations?: Record<string, string>;
}

export interface ImageSpec {
  layers: LayerSpec[];
  /** Merged over a default config; `rootfs` here replaces the computed one (to test lies). */
  config?: Partial<ImageConfig>;
  /** Default linux/amd64. Written on the config and on the index descriptor. */
  platform?: Platform;
  /** `org.opencontainers.image.ref.name` of the manifest's entry in index.json. */
  refName?: string;
  /** Annotations on the manifest itself. */
  annotations?: Record<string, string>;
}

export interface BuiltLayer {
  descriptor: Descriptor;
  /** The blob as stored: compressed as asked. */
  blob: Buffer;
  diffId: string;
}

export interface BuiltImage {
  manifestDescriptor: Descriptor;
  manifestDigest: string;
  manifestBytes: Buffer;
  manifest: ImageManifest;
  configDigest: string;
  configBytes: Buffer;
  config: ImageConfig;
  layers: BuiltLayer[];
  layerDigests: string[];
  diffIds: string[];
  platform: Platform;
  refName?: string;
}

export interface BuiltLayout {
  images: BuiltImage[];
  /** The nested index blob, when written with `{ index: true }`. */
  index?: { descriptor: Descriptor; digest: string; bytes: Buffer };
  /** Every file of the layout, by path relative to its root. */
  files: Map<string, Buffer>;
}

export interface LayoutOptions {
  /**
   * Put all images in one nested image index blob (a multi-platform image),
   * with index.json pointing at it, as `skopeo copy --all` writes it.
   */
  index?: boolean;
  /** ref.name annotation of the nested index's entry in index.json. */
  indexRefName?: string;
}

export const defaultPlatform: Platform = { os: 'linux', architecture: 'amd64' };

function digestOf(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

function hexOf(digest: string): string {
  return digest.slice(digest.indexOf(':') + 1);
}

const layerMediaTypes: Record<LayerCompression, string> = {
  none: 'application/vnd.oci.image.layer.v1.tar',
  gzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  zstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
};

/** Builds an image's blobs in memory: layers (compressed), config, manifest. */
export function buildImage(spec: ImageSpec): BuiltImage {
  const platform = spec.platform ?? defaultPlatform;
  const layers: BuiltLayer[] = spec.layers.map((layer) => {
    const blob = layer.blob ?? compress(layer.tar, layer.compression);
    return {
      blob,
      diffId: digestOf(layer.tar),
      descriptor: {
        mediaType: layerMediaTypes[layer.compression],
        digest: digestOf(blob),
        size: blob.length,
        ...(layer.annotations ? { annotations: layer.annotations } : {}),
      },
    };
  });
  const diffIds = layers.map((l) => l.diffId);
  const config: ImageConfig = {
    created: '2024-01-01T00:00:00Z',
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: layers.map((_, i) => ({ created: '2024-01-01T00:00:00Z', created_by: `test layer ${i}` })),
    ...spec.config,
  };
  const configBytes = Buffer.from(JSON.stringify(config));
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digestOf(configBytes), size: configBytes.length },
    layers: layers.map((l) => l.descriptor),
    ...(spec.annotations ? { annotations: spec.annotations } : {}),
  };
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  const manifestDigest = digestOf(manifestBytes);
  const manifestDescriptor: Descriptor = {
    mediaType: manifest.mediaType,
    digest: manifestDigest,
    size: manifestBytes.length,
    ...(spec.refName !== undefined ? { annotations: { 'org.opencontainers.image.ref.name': spec.refName } } : {}),
    platform,
  };
  return {
    manifestDescriptor,
    manifestDigest,
    manifestBytes,
    manifest,
    configDigest: manifest.config.digest,
    configBytes,
    config,
    layers,
    layerDigests: layers.map((l) => l.descriptor.digest),
    diffIds,
    platform,
    ...(spec.refName !== undefined ? { refName: spec.refName } : {}),
  };
}

/** The files of an OCI image layout holding the images, without writing them. */
export function buildOciLayout(specs: ImageSpec[], opts: LayoutOptions = {}): BuiltLayout {
  const images = specs.map(buildImage);
  const files = new Map<string, Buffer>();
  const addBlob = (bytes: Buffer): void => {
    files.set(`blobs/sha256/${hexOf(digestOf(bytes))}`, bytes);
  };
  for (const image of images) {
    addBlob(image.manifestBytes);
    addBlob(image.configBytes);
    for (const layer of image.layers) addBlob(layer.blob);
  }
  files.set('oci-layout', Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })));
  let index: BuiltLayout['index'];
  let topLevel: Descriptor[];
  if (opts.index) {
    const nested: ImageIndex = {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: images.map((i) => i.manifestDescriptor),
    };
    const bytes = Buffer.from(JSON.stringify(nested));
    addBlob(bytes);
    const descriptor: Descriptor = {
      mediaType: nested.mediaType,
      digest: digestOf(bytes),
      size: bytes.length,
      ...(opts.indexRefName !== undefined ? { annotations: { 'org.opencontainers.image.ref.name': opts.indexRefName } } : {}),
    };
    index = { descriptor, digest: descriptor.digest, bytes };
    topLevel = [descriptor];
  } else {
    topLevel = images.map((i) => i.manifestDescriptor);
  }
  const indexJson: ImageIndex = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: topLevel };
  files.set('index.json', Buffer.from(JSON.stringify(indexJson)));
  return index ? { images, index, files } : { images, files };
}

/** Writes an OCI image layout directory (oci-layout, index.json, blobs/sha256/…). */
export async function writeOciLayout(dir: string, specs: ImageSpec[], opts: LayoutOptions = {}): Promise<BuiltLayout> {
  const layout = buildOciLayout(specs, opts);
  await writeTree(dir, layout.files);
  return layout;
}

/** Writes an OCI archive: a tar of the layout (oci-layout first, as skopeo writes it). */
export async function writeOciArchive(path: string, specs: ImageSpec[], opts: LayoutOptions = {}): Promise<BuiltLayout> {
  const layout = buildOciLayout(specs, opts);
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, await tarOfFiles(layout.files));
  return layout;
}

export interface DockerImageSpec extends ImageSpec {
  /** `RepoTags` of the image's manifest.json entry, e.g. `['alpine:3.20']`. */
  repoTags?: string[];
}

export interface DockerArchiveOptions {
  /**
   * 'legacy' (default): `<config-hex>.json` and `<layer-id>/layer.tar`, as docker
   * save wrote before 25. 'blobs': docker 25+, where config and layers live under
   * blobs/sha256/ (with index.json and oci-layout beside manifest.json).
   */
  format?: 'legacy' | 'blobs';
}

export interface BuiltDockerArchive {
  images: BuiltImage[];
  /** manifest.json as written. */
  manifest: Array<{ Config: string; RepoTags: string[] | null; Layers: string[] }>;
  files: Map<string, Buffer>;
}

/** Writes a `docker save` archive. Layers are stored as their blobs (usually: compression 'none'). */
export async function writeDockerArchive(
  path: string,
  specs: DockerImageSpec[],
  opts: DockerArchiveOptions = {},
): Promise<BuiltDockerArchive> {
  const format = opts.format ?? 'legacy';
  const images = specs.map(buildImage);
  const files = new Map<string, Buffer>();
  const manifest: BuiltDockerArchive['manifest'] = [];
  const repositories: Record<string, Record<string, string>> = {};
  images.forEach((image, i) => {
    const spec = specs[i]!;
    let configPath: string;
    let layerPaths: string[];
    if (format === 'blobs') {
      configPath = `blobs/sha256/${hexOf(image.configDigest)}`;
      files.set(configPath, image.configBytes);
      files.set(`blobs/sha256/${hexOf(image.manifestDigest)}`, image.manifestBytes);
      layerPaths = image.layers.map((layer) => {
        const p = `blobs/sha256/${hexOf(layer.descriptor.digest)}`;
        files.set(p, layer.blob);
        return p;
      });
    } else {
      configPath = `${hexOf(image.configDigest)}.json`;
      files.set(configPath, image.configBytes);
      // Legacy v1 layer IDs: any stable hex unique to the layer's position in its stack.
      let parent = '';
      layerPaths = image.layers.map((layer) => {
        const id = hexOf(digestOf(Buffer.from(`${parent} ${layer.diffId}`)));
        files.set(`${id}/VERSION`, Buffer.from('1.0'));
        files.set(`${id}/json`, Buffer.from(JSON.stringify({ id, ...(parent ? { parent } : {}) })));
        files.set(`${id}/layer.tar`, layer.blob);
        parent = id;
        return `${id}/layer.tar`;
      });
    }
    const repoTags = spec.repoTags ?? [];
    manifest.push({ Config: configPath, RepoTags: repoTags.length > 0 ? repoTags : null, Layers: layerPaths });
    for (const repoTag of repoTags) {
      const colon = repoTag.lastIndexOf(':');
      const repo = repoTag.slice(0, colon);
      repositories[repo] = { ...repositories[repo], [repoTag.slice(colon + 1)]: hexOf(layerPaths.at(-1) ?? '') };
    }
  });
  if (format === 'blobs') {
    files.set('oci-layout', Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })));
    const indexJson: ImageIndex = {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: images.map((image, i) => ({
        mediaType: image.manifestDescriptor.mediaType,
        digest: image.manifestDigest,
        size: image.manifestBytes.length,
        ...(specs[i]!.repoTags?.[0] ? { annotations: { 'io.containerd.image.name': specs[i]!.repoTags![0]! } } : {}),
      })),
    };
    files.set('index.json', Buffer.from(JSON.stringify(indexJson)));
  }
  files.set('manifest.json', Buffer.from(JSON.stringify(manifest)));
  if (Object.keys(repositories).length > 0) files.set('repositories', Buffer.from(JSON.stringify(repositories)));
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, await tarOfFiles(files));
  return { images, manifest, files };
}

export interface PushOptions {
  /** Which image of the layout (its ref.name); omit when the layout holds one. */
  layoutRef?: string;
  /** Push every platform of a multi-platform index (`skopeo copy --all`). */
  all?: boolean;
}

/**
 * Pushes an image of an OCI layout to a registry with the real skopeo:
 * `skopeo copy oci:DIR[:layoutRef] docker://HOST/REPO:TAG`. `ref` is `REPO:TAG`.
 * Returns the digest of the manifest as pushed.
 */
export async function pushToRegistry(layoutDir: string, ref: string, registryHost: string, opts: PushOptions = {}): Promise<string> {
  const work = await mkdtemp(join(tmpdir(), 'lazyroot-push-'));
  try {
    const digestFile = join(work, 'digest');
    const source = opts.layoutRef === undefined ? `oci:${layoutDir}` : `oci:${layoutDir}:${opts.layoutRef}`;
    await run('skopeo', [
      '--insecure-policy',
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      ...(opts.all ? ['--all'] : []),
      '--digestfile',
      digestFile,
      source,
      `docker://${registryHost}/${ref}`,
    ]);
    return (await readFile(digestFile, 'utf8')).trim();
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function writeTree(root: string, files: Map<string, Buffer>): Promise<void> {
  for (const [relative, bytes] of files) {
    const target = join(root, relative);
    await mkdir(dirname(target), { recursive: true });
    await writeFile(target, bytes);
  }
}

/** A tar of the files, with their parent directories, in a stable order: to hand-craft archives. */
export async function tarOfFiles(files: Map<string, Buffer>): Promise<Buffer> {
  const entries: TarEntry[] = [];
  const dirs = new Set<string>();
  for (const [relative, bytes] of files) {
    const parts = relative.split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (!dirs.has(d)) {
        dirs.add(d);
        entries.push(dir(d, { mtime: 0 }));
      }
    }
    entries.push(file(relative, bytes, { mtime: 0 }));
  }
  return buildTar(entries);
}

import { hostPlatform, parsePlatform } from '../oci/platform.js';
import type { Platform } from '../oci/types.js';
import { formatReference, parseReference } from '../reference/reference.js';
import type { ImageSource, ResolvedImage } from '../source/image-source.js';
import { openSource, type SourceOptions } from '../source/open-source.js';
import { pull, type PullOptions, type PullResult } from './pull.js';
import type { ImageRecord, LayerRecord } from './metadata-db.js';
import type { Store } from './store.js';

/** How to reach sources: registry auth and TLS choices. */
export type RegistryOptions = NonNullable<SourceOptions['registry']>;

export interface ReferenceOptions {
  platform?: Platform | string;
  registry?: RegistryOptions;
  /** A lease the caller holds on what gets fetched (see PullOptions.lease). */
  lease?: string;
}

/** What `pullReference` takes. */
export type PullReferenceOptions = ReferenceOptions & Omit<PullOptions, 'platform'>;

function platformOf(options: ReferenceOptions): Platform {
  if (typeof options.platform === 'string') return parsePlatform(options.platform);
  return options.platform ?? hostPlatform();
}

async function withSource<T>(store: Store, text: string, options: ReferenceOptions, fn: (source: ImageSource) => Promise<T>): Promise<T> {
  const ref = parseReference(text);
  const source = await openSource(ref, { tmpDir: store.paths.tmp, ...(options.registry ? { registry: options.registry } : {}) });
  try {
    return await fn(source);
  } finally {
    await source.close();
  }
}

/** `lazyroot pull`: parse, open the source, pull into the store. */
export async function pullReference(
  store: Store,
  text: string,
  options: PullReferenceOptions = {},
): Promise<PullResult> {
  return withSource(store, text, options, (source) => pull(store, source, { ...options, platform: platformOf(options) }));
}

/** An image as `lazyroot images` lists it. */
export interface ImageSummary {
  id: string;
  names: string[];
  manifestDigest: string;
  platform: string;
  /** Compressed bytes of config and layers. */
  size: number;
  layers: number;
  /** When the image was first stored (ISO 8601). */
  created: string;
}

/** `lazyroot images`: every image in the store, oldest first. */
export function listImages(store: Store): ImageSummary[] {
  return store.db.listImages().map((i) => ({
    id: i.id,
    names: i.names,
    manifestDigest: i.manifestDigest,
    platform: i.platform,
    size: i.size,
    layers: i.chainIds.length,
    created: new Date(i.createdAt).toISOString(),
  }));
}

export interface ImageInspection {
  name: string;
  id: string;
  manifestDigest: string;
  platform: string;
  manifest: unknown;
  config: unknown;
  layers: Array<{ digest: string; mediaType: string; size: number; diffId: string; chainId?: string; annotations?: Record<string, string> }>;
  stored: boolean;
}

/** `lazyroot inspect`: from the store when the image is there, else from its source. */
export async function inspectReference(store: Store, text: string, options: ReferenceOptions = {}): Promise<ImageInspection> {
  const image = store.findImage(text);
  if (image) return inspectStored(store, image);
  return withSource(store, text, options, async (source) => inspectResolved(await source.resolve(platformOf(options))));
}

async function inspectStored(store: Store, image: ImageRecord): Promise<ImageInspection> {
  const manifest = await store.manifestOf(image);
  const config = await store.configOf(image);
  const layers: LayerRecord[] = store.layersOf(image);
  return {
    name: image.names[0] ?? image.id,
    id: image.id,
    manifestDigest: image.manifestDigest,
    platform: image.platform,
    manifest,
    config,
    layers: manifest.layers.map((l, i) => ({
      digest: l.digest,
      mediaType: l.mediaType,
      size: l.size,
      diffId: layers[i]!.diffId,
      chainId: layers[i]!.chainId,
      ...(l.annotations ? { annotations: l.annotations } : {}),
    })),
    stored: true,
  };
}

function inspectResolved(resolved: ResolvedImage): ImageInspection {
  return {
    name: resolved.name,
    id: resolved.manifest.config.digest,
    manifestDigest: resolved.manifestDigest,
    platform: [resolved.platform.os, resolved.platform.architecture, resolved.platform.variant].filter(Boolean).join('/'),
    manifest: resolved.manifest,
    config: resolved.config,
    layers: resolved.manifest.layers.map((l, i) => ({
      digest: l.digest,
      mediaType: l.mediaType,
      size: l.size,
      diffId: resolved.config.rootfs.diff_ids[i] ?? '',
      ...(l.annotations ? { annotations: l.annotations } : {}),
    })),
    stored: false,
  };
}

export { formatReference };

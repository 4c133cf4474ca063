import { LazyrootError } from '../errors.js';
import { createHash } from 'node:crypto';
import { isDigest, sha256, type Digest } from './digest.js';
import { MediaType } from './media-types.js';
import type { ContainerConfig, Descriptor, HistoryEntry, ImageConfig, ImageManifest, Platform } from './types.js';

/**
 * Docker image manifest schema1 (`application/vnd.docker.distribution.manifest.v1+json`
 * and its signed `+prettyjws` form) turned into a schema2-equivalent image.
 *
 * A schema1 manifest lists `fsLayers` and `history` top-down (the newest layer
 * first); each history entry carries a `v1Compatibility` JSON string, and the top
 * one doubles as the image config. Schema1 has no layer sizes and no diff IDs, so
 * the conversion happens in two steps: `planSchema1` says which blobs make up the
 * image, then `build` is called with their descriptors and the diff IDs computed
 * while they were ingested. Entries marked `throwaway` (Dockerfile steps that
 * made no filesystem change) are kept in the history as `empty_layer` but their
 * blobs are not layers, as containers/image's `ToSchema2Config` does.
 */

/** One history entry of a schema1 manifest, bottom-up. */
export interface Schema1Entry {
  /** The entry's `fsLayers[].blobSum`. */
  digest: Digest;
  /** True for entries that made no filesystem change: not a layer of the image. */
  throwaway: boolean;
}

/** The schema2-equivalent image built from a schema1 manifest. */
export interface Schema1Conversion {
  manifest: ImageManifest;
  manifestBytes: Buffer;
  config: ImageConfig;
  configBytes: Buffer;
}

export interface Schema1Plan {
  /** Every history entry, bottom-up (the base first), throwaway ones included. */
  entries: Schema1Entry[];
  /** The blobs that are layers of the image, bottom-up: the non-throwaway entries. */
  layers: Digest[];
  platform: Platform;
  /**
   * The config as it will be, but with empty `rootfs.diff_ids`: what can be said
   * of the image before its layers are read.
   */
  pendingConfig: { config: ImageConfig; configBytes: Buffer };
  /**
   * The converted manifest and config. `layerDescriptors` and `diffIds` are in
   * the order of `layers`; the descriptors carry the sizes schema1 lacks.
   */
  build(layerDescriptors: Descriptor[], diffIds: Digest[]): Schema1Conversion;
}

// v1Compatibility fields that belong to the v1 image chain, not to an image config.
const v1OnlyFields = ['id', 'parent', 'parent_id', 'layer_id', 'throwaway', 'Size'];

function invalid(what: string, why: string): LazyrootError {
  return new LazyrootError('INVALID_MANIFEST', `${what}: schema1: ${why}`);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

interface ParsedEntry extends Schema1Entry {
  v1: Record<string, unknown>;
}

/** Reads fsLayers/history into entries, bottom-up, validating as it goes. */
function parsedEntries(document: Record<string, unknown>, what: string): ParsedEntry[] {
  const { fsLayers, history } = document;
  if (!Array.isArray(fsLayers) || !Array.isArray(history)) throw invalid(what, 'no fsLayers or history array');
  if (fsLayers.length === 0) throw invalid(what, 'no layers');
  if (fsLayers.length !== history.length) {
    throw invalid(what, `${fsLayers.length} fsLayers but ${history.length} history entries`);
  }
  const topDown = fsLayers.map((layer, i): ParsedEntry => {
    const digest = isObject(layer) ? layer.blobSum : undefined;
    if (!isDigest(digest)) throw invalid(what, `fsLayers[${i}].blobSum ${JSON.stringify(digest)} is not a valid digest`);
    const entry = history[i] as unknown;
    const text = isObject(entry) ? entry.v1Compatibility : undefined;
    if (typeof text !== 'string') throw invalid(what, `history[${i}] has no v1Compatibility string`);
    let v1: unknown;
    try {
      v1 = JSON.parse(text);
    } catch (err) {
      throw invalid(what, `history[${i}].v1Compatibility is not valid JSON (${(err as Error).message})`);
    }
    if (!isObject(v1)) throw invalid(what, `history[${i}].v1Compatibility is not a JSON object`);
    return { digest, throwaway: v1.throwaway === true, v1 };
  });
  // Old Docker pushes could repeat an entry (same v1 id twice in a row); Docker's
  // own puller drops the repeats, and so do we.
  const deduplicated = topDown.filter(
    (entry, i) => i === 0 || typeof entry.v1.id !== 'string' || entry.v1.id !== topDown[i - 1]!.v1.id,
  );
  return deduplicated.reverse();
}

function platformOf(document: Record<string, unknown>, top: Record<string, unknown>): Platform {
  const architecture =
    typeof top.architecture === 'string' && top.architecture !== ''
      ? top.architecture
      : typeof document.architecture === 'string' && document.architecture !== ''
        ? document.architecture
        : 'amd64';
  const os = typeof top.os === 'string' && top.os !== '' ? top.os : 'linux';
  const platform: Platform = { os, architecture };
  if (typeof top.variant === 'string' && top.variant !== '') platform.variant = top.variant;
  return platform;
}

function historyEntryOf(entry: ParsedEntry): HistoryEntry {
  const out: HistoryEntry = {};
  const { v1 } = entry;
  if (typeof v1.created === 'string') out.created = v1.created;
  const containerConfig = isObject(v1.container_config) ? (v1.container_config as ContainerConfig) : undefined;
  if (Array.isArray(containerConfig?.Cmd)) out.created_by = containerConfig.Cmd.join(' ');
  if (typeof v1.author === 'string' && v1.author !== '') out.author = v1.author;
  if (typeof v1.comment === 'string' && v1.comment !== '') out.comment = v1.comment;
  if (entry.throwaway) out.empty_layer = true;
  return out;
}

/** Object with its keys sorted, so the config bytes do not depend on the input's key order. */
function sortedKeys(value: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.keys(value).sort().map((k) => [k, value[k]]));
}

/**
 * Plans the conversion of a parsed schema1 document (as `parseManifest` returns
 * it). `what` names the manifest in errors.
 */
export function planSchema1(document: Record<string, unknown>, what: string): Schema1Plan {
  if (document.schemaVersion !== 1) throw invalid(what, 'schemaVersion is not 1');
  const entries = parsedEntries(document, what);
  const top = entries[entries.length - 1]!.v1;
  const platform = platformOf(document, top);
  const kept = entries.filter((e) => !e.throwaway);
  const layers = kept.map((e) => e.digest);

  function configFor(diffIds: Digest[]): { config: ImageConfig; configBytes: Buffer } {
    const raw: Record<string, unknown> = { ...top };
    for (const field of v1OnlyFields) delete raw[field];
    raw.architecture = platform.architecture;
    raw.os = platform.os;
    raw.rootfs = { type: 'layers', diff_ids: [...diffIds] };
    raw.history = entries.map(historyEntryOf);
    const configBytes = Buffer.from(JSON.stringify(sortedKeys(raw)));
    return { config: JSON.parse(configBytes.toString('utf8')) as ImageConfig, configBytes };
  }

  function build(layerDescriptors: Descriptor[], diffIds: Digest[]): Schema1Conversion {
    if (layerDescriptors.length !== layers.length || diffIds.length !== layers.length) {
      throw new LazyrootError(
        'INVALID_MANIFEST',
        `${what}: schema1 conversion needs ${layers.length} layers and diff IDs, got ${layerDescriptors.length} and ${diffIds.length}`,
      );
    }
    layerDescriptors.forEach((d, i) => {
      if (d.digest !== layers[i]) {
        throw new LazyrootError('INVALID_MANIFEST', `${what}: schema1 layer ${i} is ${layers[i]}, got descriptor for ${d.digest}`);
      }
    });
    const { config, configBytes } = configFor(diffIds);
    const manifest: ImageManifest = {
      schemaVersion: 2,
      mediaType: MediaType.dockerManifest,
      config: { mediaType: MediaType.dockerConfig, size: configBytes.length, digest: sha256(configBytes) },
      layers: layerDescriptors.map((d) => ({ mediaType: MediaType.dockerLayerGzip, size: d.size, digest: d.digest })),
    };
    const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 3));
    return { manifest, manifestBytes, config, configBytes };
  }

  return {
    entries: entries.map(({ digest, throwaway }) => ({ digest, throwaway })),
    layers,
    platform,
    pendingConfig: configFor([]),
    build,
  };
}

function base64UrlDecode(text: string): Buffer {
  return Buffer.from(text.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
}

/**
 * The bytes a schema1 manifest is identified by: for a signed (JWS) manifest,
 * the document as it was before the signatures were spliced in. libtrust signs
 * the JSON with its last `\n}` cut off; each signature's protected header keeps
 * that cut as `formatLength` (bytes kept) and `formatTail` (the bytes cut,
 * base64url). An unsigned manifest is its own payload.
 */
export function schema1Payload(bytes: Uint8Array, what: string): Buffer {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let doc: unknown;
  try {
    doc = JSON.parse(buffer.toString('utf8'));
  } catch (err) {
    throw invalid(what, `not valid JSON (${(err as Error).message})`);
  }
  if (!isObject(doc) || !Array.isArray(doc.signatures) || doc.signatures.length === 0) return buffer;
  let cut: { length: number; tail: string } | undefined;
  doc.signatures.forEach((signature: unknown, i) => {
    const encoded = isObject(signature) ? signature.protected : undefined;
    if (typeof encoded !== 'string') throw invalid(what, `signatures[${i}] has no protected header`);
    let header: unknown;
    try {
      header = JSON.parse(base64UrlDecode(encoded).toString('utf8'));
    } catch {
      throw invalid(what, `signatures[${i}] protected header is not base64url JSON`);
    }
    const length = isObject(header) ? header.formatLength : undefined;
    const tail = isObject(header) ? header.formatTail : undefined;
    if (typeof length !== 'number' || !Number.isSafeInteger(length) || length < 0 || typeof tail !== 'string') {
      throw invalid(what, `signatures[${i}] protected header lacks formatLength/formatTail`);
    }
    if (cut !== undefined && (cut.length !== length || cut.tail !== tail)) {
      throw invalid(what, 'signatures disagree on the signed payload');
    }
    cut = { length, tail };
  });
  if (cut === undefined || cut.length > buffer.length) throw invalid(what, 'signature formatLength is past the end of the manifest');
  return Buffer.concat([buffer.subarray(0, cut.length), base64UrlDecode(cut.tail)]);
}

/** The digest a registry gives a schema1 manifest (of its payload without signatures). */
export function schema1ManifestDigest(bytes: Uint8Array, what: string, algorithm: 'sha256' | 'sha512' = 'sha256'): Digest {
  const payload = schema1Payload(bytes, what);
  return `${algorithm}:${createHash(algorithm).update(payload).digest('hex')}`;
}

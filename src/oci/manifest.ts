import { LazyrootError } from '../errors.js';
import { isDigest } from './digest.js';
import { MediaType, compressionOf, isIndexType, isManifestType, isSchema1Type } from './media-types.js';
import type { Descriptor, ImageConfig, ImageIndex, ImageManifest } from './types.js';

/** A manifest document after parsing and validation, by kind. */
export type ParsedManifest =
  | { kind: 'index'; mediaType: string; index: ImageIndex }
  | { kind: 'manifest'; mediaType: string; manifest: ImageManifest }
  | { kind: 'schema1'; mediaType: string; document: Record<string, unknown> };

function invalid(what: string, why: string): LazyrootError {
  return new LazyrootError('INVALID_MANIFEST', `${what}: ${why}`);
}

export function parseJsonObject(bytes: Uint8Array, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    throw invalid(what, `not valid JSON (${(err as Error).message})`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw invalid(what, 'not a JSON object');
  return value as Record<string, unknown>;
}

export function validateDescriptor(value: unknown, what: string): Descriptor {
  if (value === null || typeof value !== 'object') throw invalid(what, 'descriptor is not an object');
  const d = value as Record<string, unknown>;
  if (typeof d.mediaType !== 'string' || d.mediaType === '') throw invalid(what, 'descriptor has no mediaType');
  if (!isDigest(d.digest)) throw invalid(what, `descriptor digest ${JSON.stringify(d.digest)} is not a valid digest`);
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) {
    throw invalid(what, `descriptor ${d.digest} has invalid size ${JSON.stringify(d.size)}`);
  }
  if (d.annotations !== undefined && (typeof d.annotations !== 'object' || d.annotations === null)) {
    throw invalid(what, `descriptor ${d.digest} has invalid annotations`);
  }
  return d as unknown as Descriptor;
}

/**
 * The media type a document says it is: its own `mediaType` field, else the
 * transport's Content-Type, else a guess from its shape (OCI allows omitting it).
 */
function effectiveMediaType(doc: Record<string, unknown>, transportType: string | undefined, what: string): string {
  const own = typeof doc.mediaType === 'string' ? doc.mediaType : undefined;
  const transport = transportType?.split(';')[0]?.trim();
  if (doc.schemaVersion === 1) return transport && isSchema1Type(transport) ? transport : MediaType.dockerSchema1;
  if (own) return own;
  if (transport && (isIndexType(transport) || isManifestType(transport))) return transport;
  if (Array.isArray(doc.manifests)) return MediaType.ociIndex;
  if (doc.config !== undefined && Array.isArray(doc.layers)) return MediaType.ociManifest;
  throw invalid(what, 'unknown document: no mediaType, and neither a manifest nor an index');
}

/** Parses and validates manifest bytes. `what` names the document in errors. */
export function parseManifest(bytes: Uint8Array, transportType: string | undefined, what: string): ParsedManifest {
  const doc = parseJsonObject(bytes, what);
  const mediaType = effectiveMediaType(doc, transportType, what);
  if (isSchema1Type(mediaType)) {
    if (doc.schemaVersion !== 1) throw invalid(what, 'schema1 manifest without schemaVersion 1');
    return { kind: 'schema1', mediaType, document: doc };
  }
  if (doc.schemaVersion !== 2) throw invalid(what, `unsupported schemaVersion ${JSON.stringify(doc.schemaVersion)}`);
  if (isIndexType(mediaType)) {
    if (!Array.isArray(doc.manifests)) throw invalid(what, 'index has no manifests array');
    doc.manifests.forEach((m, i) => validateDescriptor(m, `${what}: manifests[${i}]`));
    return { kind: 'index', mediaType, index: { ...(doc as unknown as ImageIndex), mediaType } };
  }
  if (isManifestType(mediaType)) {
    validateDescriptor(doc.config, `${what}: config`);
    if (!Array.isArray(doc.layers)) throw invalid(what, 'manifest has no layers array');
    doc.layers.forEach((l, i) => {
      const layer = validateDescriptor(l, `${what}: layers[${i}]`);
      if (compressionOf(layer.mediaType) === undefined) {
        throw new LazyrootError('UNSUPPORTED', `${what}: layers[${i}] ${layer.digest}: unsupported layer media type ${layer.mediaType}`);
      }
    });
    return { kind: 'manifest', mediaType, manifest: { ...(doc as unknown as ImageManifest), mediaType } };
  }
  throw invalid(what, `unknown manifest media type ${mediaType}`);
}

/** Parses and validates an image config blob against the manifest that names it. */
export function parseImageConfig(bytes: Uint8Array, layerCount: number, what: string): ImageConfig {
  const doc = parseJsonObject(bytes, what);
  const rootfs = doc.rootfs as Record<string, unknown> | undefined;
  if (!rootfs || !Array.isArray(rootfs.diff_ids)) throw invalid(what, 'config has no rootfs.diff_ids');
  rootfs.diff_ids.forEach((d, i) => {
    if (!isDigest(d)) throw invalid(what, `rootfs.diff_ids[${i}] ${JSON.stringify(d)} is not a valid digest`);
  });
  if (rootfs.diff_ids.length !== layerCount) {
    throw invalid(what, `config lists ${rootfs.diff_ids.length} diff IDs but the manifest has ${layerCount} layers`);
  }
  if (typeof doc.os !== 'string' || typeof doc.architecture !== 'string') {
    throw invalid(what, 'config has no os/architecture');
  }
  return doc as unknown as ImageConfig;
}

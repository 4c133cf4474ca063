import { readFile } from 'node:fs/promises';
import { LazyrootError } from '../errors.js';
import { sha256, shortDigest, type Digest } from '../oci/digest.js';
import { MediaType } from '../oci/media-types.js';
import {
  accessProfileMediaType,
  createdAnnotation,
  emptyConfigBytes,
  emptyConfigDescriptor,
  layerDigestAnnotation,
  layerSizeAnnotation,
  lazyrootIndexArtifactType,
  spanIndexHeadDigestAnnotation,
  spanIndexHeadSizeAnnotation,
  spanIndexMediaType,
} from '../oci/referrers.js';
import { indexHeadLength } from '../index/index-file.js';
import type { Descriptor } from '../oci/types.js';
import { parseReference, type DockerReference } from '../reference/reference.js';
import { RegistryPusher } from '../source/registry/push.js';
import type { Store } from '../store/store.js';
import { profilePath } from './access-profile.js';
import { indexImage, type IndexedLayerReport, type IndexImageOptions } from './index-image.js';

export interface PushedIndexes {
  /** The layers, as `lazyroot index` reports them. */
  layers: IndexedLayerReport[];
  /** `registry/repository` pushed to. */
  repository: string;
  /** The image manifest the artifact refers to. */
  subject: Digest;
  /** The artifact manifest. */
  digest: Digest;
  artifactType: string;
  /** How the registry lists it: its referrers API, or the fallback tag (`sha256-<hex>`) updated. */
  via: 'referrers-api' | 'tag-fallback';
  tag?: string;
  /** Span indexes in it, whether an access profile is, and the bytes of its blobs. */
  indexes: number;
  profile: boolean;
  bytes: number;
  /** Blobs uploaded (the others were in the repository already). */
  uploaded: number;
}

/**
 * `lazyroot index --push REF`: the span index of every gzip and tar layer
 * (built first where the store has none) and the recorded access profile,
 * pushed to the image's repository as one OCI artifact whose subject is the
 * image manifest (src/oci/referrers.ts has its layout). Another machine's
 * `mount`, `run --lazy`, `create --lazy`, `index` and snapshotter find it
 * there (remote-index.ts) and mount the image lazily without streaming it.
 */
export async function pushImageIndexes(store: Store, ref: string, options: IndexImageOptions = {}): Promise<PushedIndexes> {
  const layers = await indexImage(store, ref, options);
  const image = store.findImage(ref);
  if (!image) throw new LazyrootError('NOT_FOUND', `index --push ${ref}: image not in the store`);
  const target = registryReferenceOf(ref, image.names);
  if (!target) {
    throw new LazyrootError('FAILED_PRECONDITION', `index --push ${ref}: image ${shortDigest(image.id)} did not come from a registry (names: ${image.names.join(', ') || 'none'}): there is nowhere to push its indexes`);
  }
  const repository = `${target.registry}/${target.repository}`;
  const what = `index --push ${ref}: ${repository}`;
  const manifestBytes = await store.blobs.read(image.manifestDigest).catch((err: unknown) => {
    throw new LazyrootError('NOT_FOUND', `${what}: the image manifest ${image.manifestDigest} is not in the store`, { cause: err });
  });
  const subject: Descriptor = { mediaType: image.manifestMediaType, digest: image.manifestDigest, size: manifestBytes.length };

  const sizes = new Map(image.chainIds.flatMap((c) => store.db.layer(c)?.blobs.map((b) => [b.digest, b.size] as const) ?? []));
  const blobs: Array<{ descriptor: Descriptor; bytes: Buffer; what: string }> = [];
  for (const layer of layers) {
    if (layer.format !== 'gzip' && layer.format !== 'tar') continue;
    const bytes = await readFile(store.paths.index(layer.digest));
    const size = sizes.get(layer.digest);
    blobs.push({ descriptor: spanIndexDescriptor(bytes, layer.digest, size), bytes, what: `span index of layer ${shortDigest(layer.digest)}` });
  }
  const profile = await readFile(profilePath(store, image.id)).catch(() => undefined);
  if (profile) blobs.push({ descriptor: { mediaType: accessProfileMediaType, digest: sha256(profile), size: profile.length }, bytes: profile, what: 'access profile' });
  if (blobs.length === 0) {
    throw new LazyrootError('FAILED_PRECONDITION', `${what}: nothing to push: image ${shortDigest(image.id)} has no gzip or tar layer (eStargz layers carry their own TOC) and no access profile`);
  }

  const created = new Date().toISOString();
  const manifest = {
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    artifactType: lazyrootIndexArtifactType,
    config: emptyConfigDescriptor,
    layers: blobs.map((b) => b.descriptor),
    subject,
    annotations: { [createdAnnotation]: created },
  };
  const manifestJson = Buffer.from(JSON.stringify(manifest));
  const descriptor: Descriptor = {
    mediaType: MediaType.ociManifest,
    digest: sha256(manifestJson),
    size: manifestJson.length,
    artifactType: lazyrootIndexArtifactType,
    annotations: { [createdAnnotation]: created },
  };
  const pusher = new RegistryPusher(target, options.registry);
  try {
    let uploaded = 0;
    if (await pusher.pushBlob(emptyConfigBytes, 'empty config')) uploaded++;
    for (const b of blobs) if (await pusher.pushBlob(b.bytes, b.what)) uploaded++;
    const pushed = await pusher.pushReferrer(manifestJson, descriptor, image.manifestDigest, { replaceSameType: true, uploaded });
    return {
      layers,
      repository,
      subject: image.manifestDigest,
      digest: pushed.digest,
      artifactType: lazyrootIndexArtifactType,
      via: pushed.via,
      ...(pushed.tag ? { tag: pushed.tag } : {}),
      indexes: blobs.length - (profile ? 1 : 0),
      profile: profile !== undefined,
      bytes: blobs.reduce((n, b) => n + b.bytes.length, 0),
      uploaded: pushed.uploaded,
    };
  } catch (err) {
    throw err instanceof LazyrootError ? err.withContext(`index --push ${ref}`) : err;
  } finally {
    await pusher.close();
  }
}

/**
 * The descriptor of a span index in the artifact: the layer it indexes, and
 * its head's size and digest, so that a mount can take the head alone and
 * fetch windows as it needs them (remote-index.ts).
 */
export function spanIndexDescriptor(bytes: Buffer, layerDigest: Digest, layerSize: number | undefined): Descriptor {
  const head = indexHeadLength(bytes, `span index of layer ${shortDigest(layerDigest)}`);
  return {
    mediaType: spanIndexMediaType,
    digest: sha256(bytes),
    size: bytes.length,
    annotations: {
      [layerDigestAnnotation]: layerDigest,
      ...(layerSize !== undefined ? { [layerSizeAnnotation]: String(layerSize) } : {}),
      ...(head !== undefined ? { [spanIndexHeadSizeAnnotation]: String(head), [spanIndexHeadDigestAnnotation]: sha256(bytes.subarray(0, head)) } : {}),
    },
  };
}

/** The registry reference to push to: `ref` when it names one, else the first registry name of the image. */
function registryReferenceOf(ref: string, names: readonly string[]): DockerReference | undefined {
  for (const candidate of [ref, ...names]) {
    try {
      const parsed = parseReference(candidate);
      if (parsed.transport === 'docker') return parsed;
    } catch {
      // not a reference (an image ID): try the next
    }
  }
  return undefined;
}

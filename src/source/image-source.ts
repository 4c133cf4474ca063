import type { Readable } from 'node:stream';
import type { Digest } from '../oci/digest.js';
import type { Descriptor, ImageConfig, ImageManifest, Platform } from '../oci/types.js';

/** An image resolved for one platform: everything needed to fetch its blobs. */
export interface ResolvedImage {
  /** Canonical name of what was asked for, e.g. `docker.io/library/alpine:3.20`. */
  name: string;
  /** Digest of the manifest bytes below (for schema1: of the converted manifest). */
  manifestDigest: Digest;
  manifestMediaType: string;
  /** The manifest exactly as the source served it (converted for schema1). */
  manifestBytes: Buffer;
  manifest: ImageManifest;
  configBytes: Buffer;
  config: ImageConfig;
  platform: Platform;
  /** Digest of the index the manifest was chosen from, if any. */
  indexDigest?: Digest;
  /**
   * Set when the source had to transform layers to give a schema2-equivalent image
   * (schema1): the config's diff IDs were computed, not read.
   */
  converted?: 'schema1';
  /**
   * Present when the source served a Docker schema1 manifest. Schema1 has no diff
   * IDs and no config blob, so until `build` is called the image is a plan:
   * `manifest.layers` are the converted layer descriptors (bottom-up, sizes from
   * the source; throwaway entries skipped) and final, but `manifestBytes`,
   * `manifestDigest` and `manifestMediaType` are the schema1 document as served,
   * and `config`/`configBytes` are a placeholder with empty `rootfs.diff_ids`.
   * The puller computes each layer's diff ID while ingesting it, then calls
   * `build(diffIds)` (in `manifest.layers` order) for the schema2 manifest and
   * config to store.
   */
  schema1?: {
    build(diffIds: Digest[]): {
      manifest: ImageManifest;
      manifestBytes: Buffer;
      manifestDigest: Digest;
      config: ImageConfig;
      configBytes: Buffer;
    };
  };
}

export interface FetchOptions {
  signal?: AbortSignal;
  /** Called with the count of bytes as they arrive (for progress). */
  onProgress?: (bytes: number) => void;
  /**
   * readRange: when the source answers with the whole blob instead of the
   * range (a pull-through cache on a miss, a registry without Range), it is
   * handed over here, from byte 0, to be kept (verified by its digest), and
   * the range is still returned, taken from it as it passes. The receiver
   * must read the stream (or destroy it): the range waits on it. Without
   * this the rest of the blob is dropped.
   */
  onWholeBlob?: (blob: Readable) => void;
}

/**
 * Where images come from. Every method may be lazy and may fail; a registry,
 * a layout directory and an archive all answer the same interface
 * (go-containerregistry's `v1.Image`/`v1.Layer` idea).
 */
export interface ImageSource {
  /** Human-readable name of the source, for messages. */
  readonly description: string;
  resolve(platform: Platform, options?: FetchOptions): Promise<ResolvedImage>;
  /** Streams a blob's bytes from `offset` on. Callers verify the digest. */
  openBlob(descriptor: Descriptor, offset?: number, options?: FetchOptions): Promise<Readable>;
  /** Optional capability: bytes [start, end) of a blob. Probed, not assumed. */
  readRange?(descriptor: Descriptor, start: number, end: number, options?: FetchOptions): Promise<Buffer>;
  /** Optional capability: the artifacts whose `subject` is manifest `subject` (OCI referrers). Probed, not assumed. */
  referrers?(subject: Digest, options?: FetchOptions & { artifactType?: string }): Promise<Descriptor[]>;
  /** Optional capability: a small manifest or blob (at most `limit` bytes), verified against its descriptor. */
  fetchVerified?(kind: 'manifest' | 'blob', descriptor: Descriptor, limit: number, options?: FetchOptions): Promise<Buffer>;
  close(): Promise<void>;
}

/** Minimal image config for a plain rootfs tarball: one layer, no process settings. */
export function emptyConfigFor(diffIds: Digest[], platform: Platform): ImageConfig {
  return {
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    config: {},
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: diffIds.map(() => ({ created_by: 'lazyroot: imported rootfs tarball' })),
  };
}

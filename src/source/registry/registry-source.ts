import { createHash } from 'node:crypto';
import { Readable, Transform } from 'node:stream';
import { readFileSync } from 'node:fs';
import { DigestMismatchError, LazyrootError, isLazyrootError } from '../../errors.js';
import { digestAlgorithm, hasherFor, sha256, type Digest } from '../../oci/digest.js';
import { parseImageConfig, parseManifest, type ParsedManifest } from '../../oci/manifest.js';
import { MediaType, manifestAcceptTypes } from '../../oci/media-types.js';
import { formatPlatform, selectPlatform } from '../../oci/platform.js';
import { planSchema1, schema1ManifestDigest } from '../../oci/schema1.js';
import type { Descriptor, ImageConfig, ImageManifest, Platform } from '../../oci/types.js';
import { formatReference, type DockerReference } from '../../reference/reference.js';
import type { FetchOptions, ImageSource, ResolvedImage } from '../image-source.js';
import { Authenticator } from './auth.js';
import { blobStream, discard, readLimited, sliceOf } from './body.js';
import { findCredentials, type Credentials } from './credentials.js';
import { apiHostFor, schemesFor, type Scheme } from './endpoint.js';
import { hostsDirFrom, loadRegistryHosts, type HostCapability } from './hosts.js';
import { MirrorHost, type MirrorStats } from './mirror-host.js';
import { fetchVerified, listReferrers, type RegistryGet } from './referrers.js';
import { answerError, probeScheme } from './answers.js';
import { RegistryError, redactUrl } from './registry-error.js';
import { Transport, describeNetworkError, headerValue, type TransportResponse } from './transport.js';

export interface RegistrySourceOptions {
  /** Allow plain HTTP (after HTTPS fails) and accept any TLS certificate. */
  insecure?: boolean;
  /** Credentials to use; when absent they are looked up in the auth files. */
  credentials?: Credentials;
  /** Read credentials from this file only (containers auth.json or Docker config.json format). */
  authFile?: string;
  /** Environment for finding auth files; `process.env` by default. */
  env?: Record<string, string | undefined>;
  /** Retries after a temporary failure (default 4). */
  retries?: number;
  /** First retry delay, doubled each time (default 250 ms). */
  retryBaseDelayMs?: number;
  /** Cap on any retry delay (default 8 s). */
  retryMaxDelayMs?: number;
  /** Bound on waiting for headers and on silence mid-body (default 30 s). */
  requestTimeoutMs?: number;
  userAgent?: string;
  /**
   * Where `<registry>/hosts.toml` files name mirrors (containerd's format):
   * default LAZYROOT_HOSTS_DIR, else /etc/lazyroot/certs.d.
   */
  hostsDir?: string;
  /** Told once per mirror when it is first passed over (failed, or sent bytes that failed verification). */
  onMirrorSkipped?: (message: string) => void;
}

/** Whether the registry honours Range requests, as far as we have seen. */
export type RangeSupport = 'unknown' | 'supported' | 'ignored';

// Manifests are small; containerd refuses more than 4 MiB too.
const manifestLimit = 4 << 20;
const configLimit = 16 << 20;

interface FetchedManifest {
  bytes: Buffer;
  digest: Digest;
  parsed: ParsedManifest;
}

/**
 * An image in a registry speaking the OCI distribution API (Docker Hub, a
 * `docker-registry`, …): resolves a tag or digest to a manifest and config for
 * one platform, streams blobs, and reads byte ranges of blobs.
 */
export class RegistrySource implements ImageSource {
  readonly description: string;
  private readonly name: string;
  private readonly host: string;
  private readonly scope: string;
  private readonly transport: Transport;
  private readonly auth: Authenticator;
  private base: Promise<URL> | undefined;
  private range: RangeSupport = 'unknown';
  /** The upstream's scheme(s) to try and API root: the registry itself, or a hosts.toml's `server`. */
  private readonly schemes: Scheme[];
  private readonly apiPath: string;
  /** A hosts.toml `server`'s `header` table, sent with every request to the upstream. */
  private readonly upstreamHeaders: Record<string, string> = {};
  /** Mirrors from the registry's hosts.toml, in the order written (the upstream is asked after them). */
  private readonly mirrors: MirrorHost[] = [];
  /** Which mirror gave the last answer for a request path (absent: the upstream did). */
  private readonly servedBy = new Map<string, MirrorHost>();

  constructor(
    private readonly reference: DockerReference,
    private readonly options: RegistrySourceOptions = {},
  ) {
    this.name = formatReference(reference);
    this.description = `registry ${this.name}`;
    this.host = apiHostFor(reference.registry);
    this.scope = `repository:${reference.repository}:pull`;
    this.schemes = schemesFor(this.host, options.insecure ?? false);
    this.apiPath = '/v2';
    const env = options.env ?? process.env;
    const hosts = loadRegistryHosts(reference.registry, hostsDirFrom(this.options.hostsDir, env));
    const upstream = hosts?.at(-1);
    if (upstream && !upstream.discoverScheme) {
      this.host = upstream.host;
      this.schemes = [upstream.scheme];
      this.apiPath = upstream.apiPath;
      this.upstreamHeaders = upstream.headers;
    }
    this.transport = new Transport({
      retry: {
        retries: options.retries ?? 4,
        baseDelayMs: options.retryBaseDelayMs ?? 250,
        maxDelayMs: options.retryMaxDelayMs ?? 8000,
      },
      requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
      userAgent: options.userAgent ?? 'lazyroot',
      insecure: options.insecure ?? false,
      ...(upstream && !upstream.discoverScheme
        ? { skipVerify: upstream.skipVerify, ...(upstream.scheme === 'http' ? { httpHost: upstream.host } : {}), ...(upstream.ca.length ? { ca: upstream.ca.map((p) => readCa(p, reference.registry)) } : {}) }
        : {}),
    });
    for (const host of hosts?.slice(0, -1) ?? []) {
      this.mirrors.push(
        new MirrorHost(host, {
          registry: reference.registry,
          repository: reference.repository,
          insecure: options.insecure ?? false,
          ...(options.authFile ? { authFile: options.authFile } : {}),
          env,
          requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
          userAgent: options.userAgent ?? 'lazyroot',
          ...(options.onMirrorSkipped ? { onSkip: options.onMirrorSkipped } : {}),
        }),
      );
    }
    this.auth = new Authenticator(this.transport, {
      registry: reference.registry,
      credentials: async () => {
        if (options.credentials) return options.credentials;
        const lookup = { authFile: options.authFile, env: options.env };
        return (await findCredentials(reference.registry, reference.repository, lookup))?.credentials;
      },
    });
  }

  /** How the last ranged request was answered: 'supported' (206) or 'ignored' (200, the whole blob: a registry without Range, or a pull-through cache on a miss). */
  get rangeSupport(): RangeSupport {
    return this.range;
  }

  /** What each mirror of the registry's hosts.toml did, in the order they are tried. */
  mirrorStats(): MirrorStats[] {
    return this.mirrors.map((m) => ({ ...m.stats }));
  }

  /**
   * The caller found bytes of `digest` wrong (a digest mismatch). When a
   * mirror served them, that mirror is skipped for this blob from now on
   * and true is returned: asking again reaches the next host. False when the
   * upstream served them (asking again would not help).
   */
  distrust(digest: Digest, err?: unknown): boolean {
    const path = `blobs/${digest}`;
    const mirror = this.servedBy.get(path);
    if (!mirror) return false;
    this.servedBy.delete(path);
    mirror.lied(path, err ?? new DigestMismatchError(`${this.name}: blob ${digest}`, digest, 'other bytes'));
    return true;
  }

  /**
   * The image for `platform`: from an index, the matching entry (NOT_FOUND
   * listing the platforms there when none matches); a single-platform image is
   * returned as it is, and its `platform` says what it is.
   */
  async resolve(platform: Platform, options: FetchOptions = {}): Promise<ResolvedImage> {
    const { signal } = options;
    const wanted = this.reference.digest ?? this.reference.tag ?? 'latest';
    const top = await this.fetchManifest(wanted, this.reference.digest, `${this.name}: manifest`, signal);
    if (top.parsed.kind === 'schema1') return this.resolveSchema1(top, top.parsed.document, signal);
    if (top.parsed.kind === 'manifest') return this.resolveManifest(top, top.parsed.manifest, undefined, signal);

    const { manifests } = top.parsed.index;
    const chosen = selectPlatform(manifests, platform);
    if (chosen === undefined) {
      const available = manifests.flatMap((m) => (m.platform ? [formatPlatform(m.platform)] : []));
      throw new LazyrootError(
        'NOT_FOUND',
        `${this.name}: no manifest for platform ${formatPlatform(platform)} in index ${top.digest}; available: ${available.join(', ') || 'none'}`,
      );
    }
    const what = `${this.name}: manifest ${chosen.digest} (${formatPlatform(platform)})`;
    const child = await this.fetchManifest(chosen.digest, chosen.digest, what, signal);
    if (child.bytes.length !== chosen.size) {
      throw new LazyrootError('SIZE_MISMATCH', `${what}: index says ${chosen.size} bytes, registry sent ${child.bytes.length}`);
    }
    if (child.parsed.kind !== 'manifest') {
      throw new LazyrootError('INVALID_MANIFEST', `${what}: index entry is a ${child.parsed.mediaType}, not an image manifest`);
    }
    return this.resolveManifest(child, child.parsed.manifest, top.digest, signal);
  }

  async openBlob(descriptor: Descriptor, offset = 0, options: FetchOptions = {}): Promise<Readable> {
    const what = `${this.name}: blob ${descriptor.digest}`;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > descriptor.size) {
      throw new LazyrootError('INVALID_DATA', `${what}: offset ${offset} is outside the blob's ${descriptor.size} bytes`);
    }
    if (offset === descriptor.size && offset > 0) return Readable.from([]);
    const headers: Record<string, string> = offset > 0 ? { range: `bytes=${offset}-` } : {};
    return this.request('GET', `blobs/${descriptor.digest}`, what, headers, options.signal, async (response) => {
      let skip = 0;
      if (response.status === 206) {
        const start = contentRangeStart(headerValue(response.headers, 'content-range'));
        if (start !== offset) {
          response.body.destroy();
          throw new LazyrootError('UNAVAILABLE', `${what}: asked for bytes from ${offset}, registry sent a range starting at ${start ?? '?'}`);
        }
        this.range = 'supported';
      } else if (response.status === 200) {
        // A registry or a blob store that ignores Range sends the whole blob: drop what we did not ask for.
        skip = offset;
        if (offset > 0) this.range = 'ignored';
      } else {
        throw await this.failure(response, what, 'GET');
      }
      const url = redactUrl(response.url);
      const lost = (err: unknown, delivered: number): Error => {
        // The caller's own abort is not a lost connection.
        if (options.signal?.aborted) return asError(options.signal.reason);
        const where = `connection lost after byte ${offset + delivered} of ${descriptor.size} (GET ${url})`;
        return new RegistryError('UNAVAILABLE', `${what}: ${where}: ${describeNetworkError(err)}`, { method: 'GET', url, cause: err });
      };
      return blobStream(response.body, {
        skip,
        expected: descriptor.size - offset,
        describeError: lost,
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      });
    });
  }

  async readRange(descriptor: Descriptor, start: number, end: number, options: FetchOptions = {}): Promise<Buffer> {
    const what = `${this.name}: blob ${descriptor.digest} bytes ${start}-${end}`;
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end <= start || end > descriptor.size) {
      throw new LazyrootError('INVALID_DATA', `${what}: not a range inside the blob's ${descriptor.size} bytes`);
    }
    const headers = { range: `bytes=${start}-${end - 1}` };
    const bytes = await this.request('GET', `blobs/${descriptor.digest}`, what, headers, options.signal, async (response) => {
      if (response.status === 206) {
        const got = contentRangeStart(headerValue(response.headers, 'content-range'));
        if (got !== start) {
          response.body.destroy();
          throw new LazyrootError('UNAVAILABLE', `${what}: registry sent a range starting at ${got ?? '?'}`);
        }
        this.range = 'supported';
        const body = await readLimited(response.body, end - start, what);
        if (body.length !== end - start) {
          throw new LazyrootError('UNAVAILABLE', `${what}: registry sent ${body.length} bytes instead of ${end - start}`);
        }
        return body;
      }
      if (response.status === 200) {
        // The whole blob instead of the range: a registry without Range, or a pull-through cache
        // that does not have the blob yet. The caller may keep all of it rather than ask again.
        this.range = 'ignored';
        if (!options.onWholeBlob) return sliceOf(response.body, start, end, what);
        const url = redactUrl(response.url);
        const whole = blobStream(response.body, {
          expected: descriptor.size,
          describeError: (err, delivered) =>
            options.signal?.aborted
              ? asError(options.signal.reason)
              : new RegistryError('UNAVAILABLE', `${this.name}: blob ${descriptor.digest}: connection lost after byte ${delivered} of ${descriptor.size} (GET ${url}): ${describeNetworkError(err)}`, { method: 'GET', url, cause: err }),
        });
        const slice = sliceAsItPasses(whole, start, end, what);
        options.onWholeBlob(slice.stream);
        return slice.bytes;
      }
      throw await this.failure(response, what, 'GET');
    });
    options.onProgress?.(bytes.length);
    return bytes;
  }

  /** OCI referrers of a manifest: the referrers API, or the `sha256-<hex>` tag where there is none (referrers.ts). */
  async referrers(subject: Digest, options: FetchOptions & { artifactType?: string } = {}): Promise<Descriptor[]> {
    return (await listReferrers(this.getter(options.signal), this.name, subject, options)).descriptors;
  }

  /** A small manifest or blob, verified against its descriptor (referrers.ts). */
  fetchVerified(kind: 'manifest' | 'blob', descriptor: Descriptor, limit: number, options: FetchOptions = {}): Promise<Buffer> {
    return fetchVerified(this.getter(options.signal), this.name, kind, descriptor, limit);
  }

  private getter(signal: AbortSignal | undefined): RegistryGet {
    return (path, what, headers, consume) => this.request('GET', path, what, headers, signal, consume);
  }

  async close(): Promise<void> {
    await this.transport.close();
    for (const mirror of this.mirrors) await mirror.close();
  }

  // ---- resolving

  private async resolveManifest(
    fetched: FetchedManifest,
    manifest: ImageManifest,
    indexDigest: Digest | undefined,
    signal: AbortSignal | undefined,
  ): Promise<ResolvedImage> {
    const configBytes = await this.fetchConfig(manifest.config, signal);
    const config = parseImageConfig(configBytes, manifest.layers.length, `${this.name}: config ${manifest.config.digest}`);
    const resolved: ResolvedImage = {
      name: this.name,
      manifestDigest: fetched.digest,
      manifestMediaType: fetched.parsed.mediaType,
      manifestBytes: fetched.bytes,
      manifest,
      configBytes,
      config,
      platform: platformOfConfig(config),
    };
    if (indexDigest !== undefined) resolved.indexDigest = indexDigest;
    return resolved;
  }

  private async resolveSchema1(
    fetched: FetchedManifest,
    document: Record<string, unknown>,
    signal: AbortSignal | undefined,
  ): Promise<ResolvedImage> {
    const plan = planSchema1(document, `${this.name}: manifest`);
    // Schema1 has no layer sizes; the registry knows them.
    const sizes = new Map<Digest, number>();
    await Promise.all([...new Set(plan.layers)].map(async (digest) => sizes.set(digest, await this.blobSize(digest, signal))));
    const layers: Descriptor[] = plan.layers.map((digest) => ({ mediaType: MediaType.dockerLayerGzip, digest, size: sizes.get(digest)! }));
    const placeholder = plan.pendingConfig;
    const manifest: ImageManifest = {
      schemaVersion: 2,
      mediaType: MediaType.dockerManifest,
      config: { mediaType: MediaType.dockerConfig, digest: sha256(placeholder.configBytes), size: placeholder.configBytes.length },
      layers,
    };
    return {
      name: this.name,
      manifestDigest: fetched.digest,
      manifestMediaType: fetched.parsed.mediaType,
      manifestBytes: fetched.bytes,
      manifest,
      configBytes: placeholder.configBytes,
      config: placeholder.config,
      platform: plan.platform,
      converted: 'schema1',
      schema1: {
        build: (diffIds: Digest[]) => {
          const converted = plan.build(layers, diffIds);
          return { ...converted, manifestDigest: sha256(converted.manifestBytes) };
        },
      },
    };
  }

  /** GETs a manifest by tag or digest; verifies its digest when `expected` is given. */
  private async fetchManifest(reference: string, expected: Digest | undefined, what: string, signal: AbortSignal | undefined): Promise<FetchedManifest> {
    const headers = { accept: manifestAcceptTypes.join(', ') };
    // Checked inside the answer's handling: a mirror whose manifest has the wrong digest is passed over.
    return this.request('GET', `manifests/${reference}`, what, headers, signal, async (response) => {
      if (response.status !== 200) throw await this.failure(response, what, 'GET');
      const bytes = await readLimited(response.body, manifestLimit, what);
      const digest = manifestDigestOf(bytes, expected, what);
      return { bytes, digest, parsed: parseManifest(bytes, headerValue(response.headers, 'content-type'), what) };
    });
  }

  private async fetchConfig(descriptor: Descriptor, signal: AbortSignal | undefined): Promise<Buffer> {
    const what = `${this.name}: config ${descriptor.digest}`;
    if (descriptor.size > configLimit) {
      throw new LazyrootError('INVALID_MANIFEST', `${what}: ${descriptor.size} bytes is too large for an image config`);
    }
    return this.request('GET', `blobs/${descriptor.digest}`, what, {}, signal, async (response) => {
      if (response.status !== 200) throw await this.failure(response, what, 'GET');
      const bytes = await readLimited(response.body, descriptor.size, what);
      if (bytes.length !== descriptor.size) {
        throw new LazyrootError('SIZE_MISMATCH', `${what}: manifest says ${descriptor.size} bytes, registry sent ${bytes.length}`);
      }
      const got = `${digestAlgorithm(descriptor.digest)}:${hasherFor(descriptor.digest).update(bytes).digest('hex')}`;
      if (got !== descriptor.digest) throw new DigestMismatchError(what, descriptor.digest, got);
      return bytes;
    });
  }

  private async blobSize(digest: Digest, signal: AbortSignal | undefined): Promise<number> {
    const what = `${this.name}: blob ${digest}`;
    return this.request('HEAD', `blobs/${digest}`, what, {}, signal, async (response) => {
      await discard(response.body);
      if (response.status !== 200) throw await this.failure(response, what, 'HEAD');
      const size = Number(headerValue(response.headers, 'content-length'));
      if (!Number.isSafeInteger(size) || size < 0) {
        throw new LazyrootError('UNAVAILABLE', `${what}: registry gave no Content-Length for the blob`, { temporary: false });
      }
      return size;
    });
  }

  // ---- plumbing

  /** Sends an authenticated request to `/v2/<repository>/<path>`. */
  private async request<T>(
    method: 'GET' | 'HEAD',
    path: string,
    what: string,
    headers: Record<string, string>,
    signal: AbortSignal | undefined,
    consume: (response: TransportResponse) => Promise<T>,
  ): Promise<T> {
    // Mirrors first, in the order written, each for what it may do; the upstream last.
    const capability = capabilityOf(method, path);
    if (capability) {
      for (const mirror of this.mirrors) {
        if (!mirror.usable(capability, path)) continue;
        try {
          const result = await mirror.request(method as 'GET' | 'HEAD', path, what, headers, signal, consume);
          this.servedBy.set(path, mirror);
          return result;
        } catch (err) {
          if (signal?.aborted) throw err;
          if (isLazyrootError(err) && err.code === 'DIGEST_MISMATCH') mirror.lied(path, err);
          else mirror.failed(path, err);
        }
      }
      this.servedBy.delete(path);
    }
    const base = await this.baseUrl(signal);
    const url = new URL(`${this.apiPath}/${this.reference.repository}/${path}`, base);
    return this.auth.request({ method, url, headers: { ...this.upstreamHeaders, ...headers }, what, signal }, this.scope, consume);
  }

  /** The registry's base URL, HTTPS or (for loopback and insecure registries) HTTP, found once. */
  private baseUrl(signal: AbortSignal | undefined): Promise<URL> {
    this.base ??= this.probe(signal).catch((err: unknown) => {
      this.base = undefined;
      throw err;
    });
    return this.base;
  }

  /** The scheme the registry speaks (answers.ts probeScheme). */
  private probe(signal: AbortSignal | undefined): Promise<URL> {
    return probeScheme(this.transport, this.auth, { host: this.host, schemes: this.schemes, apiPath: this.apiPath, what: `${this.name}: ping ${this.host}`, ...(signal ? { signal } : {}) });
  }

  /** The error for an unexpected answer, with the registry's own words. */
  private failure(response: TransportResponse, what: string, method: string): Promise<RegistryError> {
    return answerError(response, what, method, () => this.auth.refusalHint());
  }
}

/** The digest of manifest bytes, checked against the digest they were asked for. */
function manifestDigestOf(bytes: Buffer, expected: Digest | undefined, what: string): Digest {
  const algorithm = expected === undefined ? 'sha256' : digestAlgorithm(expected);
  const plain: Digest = `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
  if (expected === undefined || plain === expected) return looksLikeSignedSchema1(bytes) ? schema1ManifestDigest(bytes, what) : plain;
  // A signed schema1 manifest is known by the digest of its unsigned payload.
  if (looksLikeSignedSchema1(bytes)) {
    const unsigned = schema1ManifestDigest(bytes, what, algorithm);
    if (unsigned === expected) return unsigned;
  }
  throw new DigestMismatchError(what, expected, plain);
}

function looksLikeSignedSchema1(bytes: Buffer): boolean {
  try {
    const doc = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
    return doc?.schemaVersion === 1 && Array.isArray(doc.signatures) && doc.signatures.length > 0;
  } catch {
    return false;
  }
}

/** The first byte of `Content-Range: bytes START-END/TOTAL`. */
function contentRangeStart(value: string | undefined): number | undefined {
  const match = /^bytes\s+(\d+)-\d+\/(?:\d+|\*)$/i.exec(value?.trim() ?? '');
  return match ? Number(match[1]) : undefined;
}

/** What a request needs of a mirror: `resolve` for manifests, `pull` for blobs; undefined: only the upstream (pushes, other APIs). */
function capabilityOf(method: string, path: string): HostCapability | undefined {
  if (method !== 'GET' && method !== 'HEAD') return undefined;
  if (path.startsWith('manifests/')) return 'resolve';
  if (path.startsWith('blobs/') && !path.startsWith('blobs/uploads')) return 'pull';
  return undefined;
}

function readCa(path: string, registry: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new LazyrootError('INVALID_DATA', `registry hosts for ${registry}: server ca ${path}: ${(err as Error).message}`, { temporary: false });
  }
}

/**
 * Collects bytes [start, end) of `body` (which starts at byte 0) as they pass
 * on to whoever reads `stream`: the range is served from a whole-blob answer
 * without reading the blob twice. The bytes settle once the range has
 * passed; `stream` failing or closing before then fails them.
 */
function sliceAsItPasses(body: Readable, start: number, end: number, what: string): { stream: Readable; bytes: Promise<Buffer> } {
  const chunks: Buffer[] = [];
  let position = 0;
  let settle: { resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  const bytes = new Promise<Buffer>((resolve, reject) => (settle = { resolve, reject }));
  const done = (err?: Error) => {
    if (!settle) return;
    const s = settle;
    settle = undefined;
    if (err) s.reject(err);
    else s.resolve(Buffer.concat(chunks));
  };
  const stream = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      if (settle) {
        const from = Math.max(start - position, 0);
        const to = Math.min(end - position, chunk.length);
        if (to > from) chunks.push(Buffer.from(chunk.subarray(from, to)));
        if (position + chunk.length >= end) done();
      }
      position += chunk.length;
      callback(null, chunk);
    },
  });
  body.on('error', (err) => stream.destroy(err));
  stream.on('close', () => {
    done(new LazyrootError('UNAVAILABLE', `${what}: the whole-blob answer ended at byte ${position}, before byte ${end}`));
    if (!body.destroyed) body.destroy();
  });
  stream.on('error', (err) => done(err));
  body.pipe(stream);
  return { stream, bytes };
}

function platformOfConfig(config: ImageConfig): Platform {
  const platform: Platform = { os: config.os, architecture: config.architecture };
  if (config.variant) platform.variant = config.variant;
  return platform;
}

function asError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}

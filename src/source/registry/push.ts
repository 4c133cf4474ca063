import { LazyrootError } from '../../errors.js';
import { sha256, type Digest } from '../../oci/digest.js';
import { MediaType } from '../../oci/media-types.js';
import { emptyReferrersIndex, parseReferrersIndex, referrersTagFor, withReferrer } from '../../oci/referrers.js';
import type { Descriptor } from '../../oci/types.js';
import type { DockerReference } from '../../reference/reference.js';
import { Authenticator } from './auth.js';
import { discard, readLimited } from './body.js';
import { findCredentials } from './credentials.js';
import { answerError, probeScheme } from './answers.js';
import { apiHostFor, schemesFor } from './endpoint.js';
import { listReferrers, type Referrers } from './referrers.js';
import { RegistryError } from './registry-error.js';
import type { RegistrySourceOptions } from './registry-source.js';
import { headerValue, Transport, type TransportResponse } from './transport.js';

/** What pushing a referrer did. */
export interface PushedReferrer {
  /** The artifact manifest's digest. */
  digest: Digest;
  /** Where the registry lists it: its referrers API (it answered OCI-Subject), or the fallback tag we updated. */
  via: 'referrers-api' | 'tag-fallback';
  /** The fallback tag, when that is how. */
  tag?: string;
  /** Blobs uploaded (the rest were there already). */
  uploaded: number;
}

const manifestLimit = 4 << 20;

/**
 * Writes to one repository of a registry: blob uploads (POST, then a
 * monolithic PUT with `?digest=`), manifest PUTs, and OCI 1.1 referrers —
 * through the referrers API when the registry takes a manifest's `subject`
 * (it answers `OCI-Subject`), else through the fallback tag's index, updated
 * read-modify-write. Same transport and auth as pulls (RegistrySource), with
 * the token scope `pull,push`. Pushes go to the registry named, never to a
 * mirror.
 */
export class RegistryPusher {
  private readonly name: string;
  private readonly host: string;
  private readonly scope: string;
  private readonly transport: Transport;
  private readonly auth: Authenticator;
  private base: Promise<URL> | undefined;

  constructor(
    private readonly reference: DockerReference,
    private readonly options: RegistrySourceOptions = {},
  ) {
    this.name = `${reference.registry}/${reference.repository}`;
    this.host = apiHostFor(reference.registry);
    this.scope = `repository:${reference.repository}:pull,push`;
    this.transport = new Transport({
      retry: { retries: options.retries ?? 4, baseDelayMs: options.retryBaseDelayMs ?? 250, maxDelayMs: options.retryMaxDelayMs ?? 8000 },
      requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
      userAgent: options.userAgent ?? 'lazyroot',
      insecure: options.insecure ?? false,
    });
    this.auth = new Authenticator(this.transport, {
      registry: reference.registry,
      credentials: async () => {
        if (options.credentials) return options.credentials;
        return (await findCredentials(reference.registry, reference.repository, { authFile: options.authFile, env: options.env }))?.credentials;
      },
    });
  }

  /** Whether the repository has the blob. */
  async hasBlob(digest: Digest): Promise<boolean> {
    const what = `${this.name}: blob ${digest}`;
    return this.request('HEAD', `blobs/${digest}`, what, {}, undefined, async (response) => {
      await discard(response.body);
      if (response.status === 200) return true;
      if (response.status === 404) return false;
      throw await this.failure(response, what, 'HEAD');
    });
  }

  /** Uploads a blob unless the repository has it; true when it was uploaded. */
  async pushBlob(bytes: Buffer, what = 'blob'): Promise<boolean> {
    const digest = sha256(bytes);
    const named = `${this.name}: ${what} ${digest}`;
    if (await this.hasBlob(digest)) return false;
    const location = await this.request('POST', 'blobs/uploads/', `${named}: starting the upload`, {}, undefined, async (response) => {
      if (response.status !== 202) throw await this.failure(response, `${named}: starting the upload`, 'POST');
      await discard(response.body);
      const value = headerValue(response.headers, 'location');
      if (!value) throw new LazyrootError('UNAVAILABLE', `${named}: the registry started an upload but gave no Location`, { temporary: false });
      return new URL(value, response.url);
    });
    location.searchParams.set('digest', digest);
    const finish = async (response: TransportResponse) => {
      if (response.status !== 201) throw await this.failure(response, `${named}: upload`, 'PUT');
      await discard(response.body);
    };
    const headers = { 'content-type': 'application/octet-stream', 'content-length': String(bytes.length) };
    // An upload URL on another host (a storage service) gets no credentials of ours.
    if (location.origin !== (await this.baseUrl()).origin) await this.transport.request({ method: 'PUT', url: location, headers, what: `${named}: upload`, body: bytes }, finish);
    else await this.requestUrl('PUT', location, `${named}: upload`, headers, bytes, finish);
    return true;
  }

  /** PUTs a manifest by tag or digest; returns the registry's headers of interest. */
  async putManifest(reference: string, bytes: Buffer, mediaType: string): Promise<{ digest: Digest; subject: string | undefined }> {
    const what = `${this.name}: manifest ${reference}`;
    return this.request('PUT', `manifests/${reference}`, what, { 'content-type': mediaType }, bytes, async (response) => {
      if (response.status !== 201 && response.status !== 200) throw await this.failure(response, what, 'PUT');
      await discard(response.body);
      return { digest: headerValue(response.headers, 'docker-content-digest') ?? sha256(bytes), subject: headerValue(response.headers, 'oci-subject') };
    });
  }

  /** The referrers of `subject` as pulls see them (referrers API, else the fallback tag). */
  referrers(subject: Digest, artifactType?: string): Promise<Referrers> {
    return listReferrers((path, what, headers, consume) => this.request('GET', path, what, headers, undefined, consume), this.name, subject, artifactType ? { artifactType } : {});
  }

  /**
   * Pushes an artifact manifest whose `subject` is set (its blobs must be
   * pushed already) and makes it findable: a registry that answers the PUT
   * with `OCI-Subject` lists it through its referrers API; for one that does
   * not, the fallback tag `sha256-<hex>` of the subject gets an index with
   * the artifact in it (read, modified, written; older artifacts of the same
   * type are dropped from it when `replaceSameType`).
   */
  async pushReferrer(manifestBytes: Buffer, descriptor: Descriptor, subject: Digest, options: { replaceSameType?: boolean; uploaded?: number } = {}): Promise<PushedReferrer> {
    const put = await this.putManifest(descriptor.digest, manifestBytes, descriptor.mediaType);
    const uploaded = options.uploaded ?? 0;
    if (put.subject !== undefined) return { digest: descriptor.digest, via: 'referrers-api', uploaded };
    const tag = referrersTagFor(subject);
    const what = `${this.name}: referrers index ${tag}`;
    const current = await this.request('GET', `manifests/${tag}`, what, { accept: `${MediaType.ociIndex}, ${MediaType.dockerManifestList}` }, undefined, async (response) => {
      if (response.status === 404) {
        await discard(response.body);
        return emptyReferrersIndex();
      }
      if (response.status !== 200) throw await this.failure(response, what, 'GET');
      return parseReferrersIndex(await readLimited(response.body, manifestLimit, what), what);
    });
    const updated = withReferrer(current, descriptor, options.replaceSameType ? { replaceSameType: true } : {});
    await this.putManifest(tag, Buffer.from(JSON.stringify(updated)), MediaType.ociIndex);
    return { digest: descriptor.digest, via: 'tag-fallback', tag, uploaded };
  }

  async close(): Promise<void> {
    await this.transport.close();
  }

  // ---- plumbing (as RegistrySource's, with bodies)

  private async request<T>(
    method: 'GET' | 'HEAD' | 'POST' | 'PUT',
    path: string,
    what: string,
    headers: Record<string, string>,
    body: Buffer | undefined,
    consume: (response: TransportResponse) => Promise<T>,
  ): Promise<T> {
    const base = await this.baseUrl();
    return this.requestUrl(method, new URL(`/v2/${this.reference.repository}/${path}`, base), what, headers, body, consume);
  }

  private requestUrl<T>(
    method: 'GET' | 'HEAD' | 'POST' | 'PUT',
    url: URL,
    what: string,
    headers: Record<string, string>,
    body: Buffer | undefined,
    consume: (response: TransportResponse) => Promise<T>,
  ): Promise<T> {
    const withLength = body !== undefined ? { ...headers, 'content-length': String(body.length) } : method === 'POST' ? { ...headers, 'content-length': '0' } : headers;
    return this.auth.request({ method, url, headers: withLength, what, ...(body !== undefined ? { body } : {}) }, this.scope, consume);
  }

  private baseUrl(): Promise<URL> {
    this.base ??= this.probe().catch((err: unknown) => {
      this.base = undefined;
      throw err;
    });
    return this.base;
  }

  private probe(): Promise<URL> {
    return probeScheme(this.transport, this.auth, { host: this.host, schemes: schemesFor(this.host, this.options.insecure ?? false), what: `${this.name}: ping ${this.host}` });
  }

  private failure(response: TransportResponse, what: string, method: string): Promise<RegistryError> {
    return answerError(response, what, method, async () => `pushing needs push rights to ${this.reference.repository}: ${await this.auth.refusalHint()}`);
  }
}

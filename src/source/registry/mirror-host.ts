import { readFileSync } from 'node:fs';
import { LazyrootError, isLazyrootError } from '../../errors.js';
import { Authenticator } from './auth.js';
import { findCredentials } from './credentials.js';
import { hostUrl, type HostCapability, type RegistryHost } from './hosts.js';
import { Transport, type TransportResponse } from './transport.js';

/** What one mirror did for a source: answers used, and times it was passed over. */
export interface MirrorStats {
  /** `http://mirror:5000` */
  mirror: string;
  /** Answers taken from it. */
  served: number;
  /** Requests it failed (connection, 5xx, 404, …), after which the next host was asked. */
  failures: number;
  /** Bytes from it that failed verification (a digest mismatch), after which it was skipped for that blob. */
  lies: number;
  /** The last failure or lie, for messages. */
  lastError?: string;
}

export interface MirrorHostOptions {
  registry: string;
  repository: string;
  insecure: boolean;
  authFile?: string;
  env?: Record<string, string | undefined>;
  requestTimeoutMs: number;
  userAgent: string;
  /** Told once per mirror, the first time it is passed over. */
  onSkip?: (message: string) => void;
}

/** Bound on a mirror's silence (waiting for headers, or mid-body): two tries stay under a read's 30 s deadline. */
const mirrorTimeoutMs = 10_000;
/** How long a mirror that could not be reached at all is left alone before it is tried again. */
const downForMs = 30_000;

/**
 * A mirror of a registry (a `[host."…"]` entry of a hosts.toml): its own
 * connection pool, TLS settings and authentication; requests carry the
 * distribution spec's `ns=<registry>`. It keeps which blobs and manifests it
 * must not be asked for again (it failed them or lied about them) and,
 * after a connection failure, stays out of the way for a while.
 */
export class MirrorHost {
  readonly stats: MirrorStats;
  private readonly transport: Transport;
  private readonly auth: Authenticator;
  private readonly scope: string;
  /** Request paths (`blobs/sha256:…`, `manifests/v1`) this mirror is not asked for again. */
  private readonly skipped = new Set<string>();
  private downUntil = 0;
  private told = false;

  constructor(
    readonly host: RegistryHost,
    private readonly options: MirrorHostOptions,
  ) {
    this.stats = { mirror: host.origin + (host.apiPath === '/v2' ? '' : host.apiPath), served: 0, failures: 0, lies: 0 };
    this.scope = `repository:${options.repository}:pull`;
    const ca = host.ca.map((path) => {
      try {
        return readFileSync(path, 'utf8');
      } catch (err) {
        throw new LazyrootError('INVALID_DATA', `registry hosts for ${options.registry}: mirror ${host.origin}: ca ${path}: ${(err as Error).message}`, { temporary: false });
      }
    });
    this.transport = new Transport({
      // A mirror is one of several hosts: one quick retry, then the next host.
      retry: { retries: 1, baseDelayMs: 100, maxDelayMs: 500 },
      // A mirror that stalls must be passed over well within a lazy read's deadline (30 s by default).
      requestTimeoutMs: Math.min(options.requestTimeoutMs, mirrorTimeoutMs),
      userAgent: options.userAgent,
      insecure: options.insecure,
      skipVerify: host.skipVerify,
      ...(host.scheme === 'http' ? { httpHost: host.host } : {}),
      ...(ca.length ? { ca } : {}),
    });
    this.auth = new Authenticator(this.transport, {
      registry: host.host,
      credentials: async () => (await findCredentials(host.host, options.repository, { authFile: options.authFile, env: options.env }))?.credentials,
    });
  }

  /** Whether to ask this mirror for `path` now. */
  usable(capability: HostCapability, path: string): boolean {
    return this.host.capabilities.has(capability) && !this.skipped.has(path) && Date.now() >= this.downUntil;
  }

  request<T>(
    method: 'GET' | 'HEAD',
    path: string,
    what: string,
    headers: Record<string, string>,
    signal: AbortSignal | undefined,
    consume: (response: TransportResponse) => Promise<T>,
  ): Promise<T> {
    const url = hostUrl(this.host, this.options.registry, this.options.repository, path);
    const req = { method, url, headers: { ...this.host.headers, ...headers }, what: `${what} (mirror ${this.stats.mirror})`, signal };
    return this.auth.request(req, this.scope, async (response) => {
      const result = await consume(response);
      this.stats.served++;
      return result;
    });
  }

  /** It failed `path`: pass it over for that (and for everything a while, if it could not be reached). */
  failed(path: string, err: unknown): void {
    this.stats.failures++;
    this.skipped.add(path);
    const unreachable = isLazyrootError(err) && (err as { status?: number }).status === undefined && err.code === 'UNAVAILABLE';
    if (unreachable) this.downUntil = Date.now() + downForMs;
    this.tell(err, unreachable ? `unreachable, left alone for ${downForMs / 1000} s` : `skipped for ${path}`);
  }

  /** Bytes it sent for `path` failed verification: never ask it for that again. */
  lied(path: string, err: unknown): void {
    this.stats.lies++;
    this.skipped.add(path);
    this.tell(err, `sent bytes that failed verification; skipped for ${path}`);
  }

  async close(): Promise<void> {
    await this.transport.close();
  }

  private tell(err: unknown, what: string): void {
    const message = err instanceof Error ? err.message : String(err);
    this.stats.lastError = message;
    if (this.told) return;
    this.told = true;
    this.options.onSkip?.(`registry mirror ${this.stats.mirror} for ${this.options.registry}: ${what} (the next host is asked; counted in mount --stats): ${message}`);
  }
}

import type { Readable } from 'node:stream';
import { tracePhase, tracing } from '../../trace.js';
import tls from 'node:tls';
import { Agent, request } from 'undici';
import { isLazyrootError } from '../../errors.js';
import { discard, readLimited } from './body.js';
import { defaultRetryPolicy, parseRetryAfter, retryDelayMs, sleep, type RetryPolicy } from './backoff.js';
import { schemesFor } from './endpoint.js';
import { RegistryError, isTemporaryStatus, redactUrl } from './registry-error.js';

export interface TransportOptions {
  retry?: RetryPolicy;
  /** Bound on waiting for response headers, and on any silence while a body streams. */
  requestTimeoutMs?: number;
  userAgent?: string;
  /** Allow plain HTTP to any host and accept any TLS certificate. */
  insecure?: boolean;
  /** Accept any TLS certificate (a hosts.toml `skip_verify`), without allowing plain HTTP. */
  skipVerify?: boolean;
  /** Plain HTTP is allowed to this host (`host[:port]`): a hosts.toml entry that says `http://`. */
  httpHost?: string;
  /** PEM CA certificates to trust besides the system's (a hosts.toml `ca`). */
  ca?: string[];
}

export interface TransportRequest {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT';
  url: URL;
  headers?: Record<string, string>;
  /** Names what is being fetched, for errors: `127.0.0.1:5000/app:v1: manifest`. */
  what: string;
  signal?: AbortSignal | undefined;
  /** Overrides the policy's retry count (0 for a probe that has a fallback). */
  retries?: number;
  /** A request body (uploads, manifest PUTs): a buffer, so that a retry can send it again. */
  body?: Buffer;
}

export type ResponseHeaders = Record<string, string | string[] | undefined>;

export interface TransportResponse {
  status: number;
  headers: ResponseHeaders;
  /** The body, unread: the caller reads or discards it. */
  body: Readable;
  /** The URL that answered, after redirects. */
  url: URL;
  /** How many attempts it took. */
  attempts: number;
}

export interface BufferedResponse extends Omit<TransportResponse, 'body'> {
  body: Buffer;
}

const redirectStatuses = new Set([301, 302, 303, 307, 308]);
const maxRedirects = 10;

// Failures of the connection itself, where a new attempt may well succeed.
const temporaryNetworkCodes = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_RES_CONTENT_LENGTH_MISMATCH',
]);

/** The error code of a network failure, looking through undici's wrappers. */
export function networkErrorCode(err: unknown): string | undefined {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 4; e = e.cause as typeof e, depth++) {
    if (typeof e.code === 'string' && e.code !== 'UND_ERR') return e.code;
  }
  return undefined;
}

export function isTemporaryNetworkError(err: unknown): boolean {
  if (isLazyrootError(err)) return err.temporary;
  const code = networkErrorCode(err);
  return code !== undefined && temporaryNetworkCodes.has(code);
}

/** True for failures to set up TLS: what a plain-HTTP server looks like to an HTTPS client. */
export function isTlsOrConnectError(err: unknown): boolean {
  const code = networkErrorCode(err) ?? '';
  return (
    code === 'EPROTO' ||
    code.startsWith('ERR_SSL') ||
    code.startsWith('ERR_TLS') ||
    code === 'ECONNRESET' ||
    code === 'ECONNREFUSED' ||
    code === 'UND_ERR_SOCKET' ||
    code === 'UND_ERR_CONNECT_TIMEOUT'
  );
}

/** `CODE message` for a network failure. */
export function describeNetworkError(err: unknown): string {
  const code = networkErrorCode(err);
  const message = err instanceof Error ? err.message : String(err);
  return code && !message.includes(code) ? `${code} ${message}` : message;
}

/** The first value of a header. */
export function headerValue(headers: ResponseHeaders, name: string): string | undefined {
  const value = headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * HTTP for registry clients: one keep-alive agent, redirects followed by hand
 * (credentials never follow a redirect to another origin), temporary failures
 * retried with backoff, and every failure turned into a `RegistryError` that
 * names what was being fetched. It knows nothing of auth or of the registry API.
 */
export class Transport {
  private readonly agent: Agent;
  private readonly retry: RetryPolicy;
  private readonly timeoutMs: number;
  private readonly userAgent: string;
  private readonly insecure: boolean;
  private readonly httpHost: string | undefined;

  constructor(options: TransportOptions = {}) {
    this.retry = options.retry ?? defaultRetryPolicy;
    this.timeoutMs = options.requestTimeoutMs ?? 30_000;
    this.userAgent = options.userAgent ?? 'lazyroot';
    this.insecure = options.insecure ?? false;
    this.httpHost = options.httpHost;
    const ca = options.ca?.length ? { ca: [...tls.rootCertificates, ...options.ca] } : {};
    this.agent = new Agent({
      keepAliveTimeout: 30_000,
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
      connect: { timeout: this.timeoutMs, rejectUnauthorized: !(this.insecure || options.skipVerify), ...ca },
    });
  }

  /**
   * Sends a request and returns the final response, whatever its status, with
   * its body read into memory (at most `limit` bytes). Temporary statuses (5xx,
   * 429) and connection failures are retried; when retries run out the last
   * temporary response is returned. A body cut short is retried too.
   */
  sendBuffered(req: TransportRequest, limit: number): Promise<BufferedResponse> {
    return this.request(req, async (response) => ({ ...response, body: await readLimited(response.body, limit, req.what) }));
  }

  /**
   * The general form: `consume` gets the final response (not a temporary one,
   * unless retries ran out), body unread, and reads what it needs or hands the
   * body on. A temporary failure thrown by `consume` (a body cut short) is
   * retried like a failed connection; a stream handed on is not retried.
   */
  async request<T>(req: TransportRequest, consume: (response: TransportResponse) => Promise<T>): Promise<T> {
    const retries = req.retries ?? this.retry.retries;
    // Where the last attempt got to, so a failure after a redirect names the host that failed.
    const at = { url: req.url };
    for (let attempt = 1; ; attempt++) {
      let retryAfterMs: number | undefined;
      at.url = req.url;
      try {
        const response = await this.followRedirects(req, attempt, at);
        if (!isTemporaryStatus(response.status) || attempt > retries) return await consume(response);
        retryAfterMs = parseRetryAfter(headerValue(response.headers, 'retry-after'));
        await discard(response.body);
      } catch (err) {
        if (req.signal?.aborted) throw req.signal.reason ?? err;
        if (!isTemporaryNetworkError(err) || attempt > retries) throw this.failure(req, at.url, err, attempt);
      }
      await sleep(retryDelayMs(this.retry, attempt - 1, retryAfterMs), req.signal);
    }
  }

  private async followRedirects(req: TransportRequest, attempt: number, at: { url: URL }): Promise<TransportResponse> {
    let url = req.url;
    let method = req.method;
    let body = req.body;
    const headers: Record<string, string> = { 'user-agent': this.userAgent, ...req.headers };
    for (let hops = 0; ; hops++) {
      this.checkScheme(req, url);
      const traced = tracing();
      if (traced) tracePhase(`registry: ${method} ${redactUrl(url)}${headers.range ? ` ${headers.range}` : ''}`);
      const response = await request(url, {
        method,
        headers,
        ...(body !== undefined ? { body } : {}),
        dispatcher: this.agent,
        signal: req.signal ?? null,
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs,
      });
      if (traced) tracePhase(`registry: ${response.statusCode} for ${method} ${redactUrl(url)}`);
      const location = headerValue(response.headers, 'location');
      if (!redirectStatuses.has(response.statusCode) || location === undefined) {
        return { status: response.statusCode, headers: response.headers, body: response.body, url, attempts: attempt };
      }
      await discard(response.body);
      if (hops >= maxRedirects) {
        throw new RegistryError('UNAVAILABLE', `${req.what}: more than ${maxRedirects} redirects (${req.method} ${redactUrl(req.url)})`, {
          method: req.method,
          url: redactUrl(req.url),
          temporary: false,
        });
      }
      const next = new URL(location, url);
      // Blob storage redirects carry their own credentials in the URL; ours must
      // not leak to another host.
      if (next.origin !== url.origin) {
        delete headers.authorization;
        delete headers.Authorization;
      }
      if (response.statusCode === 303 && method !== 'HEAD') {
        method = 'GET';
        body = undefined;
      }
      url = next;
      at.url = next;
    }
  }

  private checkScheme(req: TransportRequest, url: URL): void {
    if (url.protocol === 'https:') return;
    if (url.protocol === 'http:' && (url.host === this.httpHost || schemesFor(url.host, this.insecure).includes('http'))) return;
    throw new RegistryError(
      'FAILED_PRECONDITION',
      `${req.what}: refusing ${url.protocol.replace(':', '')} to ${url.host}: plain HTTP is only used for loopback or insecure registries`,
      { method: req.method, url: redactUrl(url), temporary: false },
    );
  }

  async close(): Promise<void> {
    await this.agent.close();
  }

  private failure(req: TransportRequest, at: URL, err: unknown, attempts: number): Error {
    if (isLazyrootError(err)) return err;
    const tries = attempts > 1 ? ` after ${attempts} attempts` : '';
    const url = redactUrl(at);
    return new RegistryError('UNAVAILABLE', `${req.what}: ${req.method} ${url}: ${describeNetworkError(err)}${tries}`, {
      method: req.method,
      url,
      temporary: isTemporaryNetworkError(err),
      cause: err,
    });
  }
}

import { LazyrootError } from '../../errors.js';
import { discard } from './body.js';
import { parseChallenges, type Challenge } from './challenge.js';
import type { Credentials } from './credentials.js';
import { errorForStatus, RegistryError } from './registry-error.js';
import { TokenCache, parseTokenResponse } from './token-cache.js';
import type { ResponseHeaders, Transport, TransportRequest, TransportResponse } from './transport.js';

export interface AuthenticatorOptions {
  /** The registry as the user named it, for messages. */
  registry: string;
  /** Looked up on first need, at most once. */
  credentials: () => Promise<Credentials | undefined>;
  now?: () => number;
}

const tokenResponseLimit = 1 << 20;
const retryWithFreshAuth = Symbol('retry with fresh auth');

/** The challenge we answer: Bearer when offered (it scopes access), else Basic. */
function preferredChallenge(challenges: Challenge[]): Challenge | undefined {
  return (
    challenges.find((c) => c.scheme === 'bearer' && c.params.realm !== undefined) ??
    challenges.find((c) => c.scheme === 'basic')
  );
}

/**
 * Authenticates requests to one registry, the way the distribution auth spec
 * describes: start anonymous; a 401 names the scheme in WWW-Authenticate; for
 * Bearer, fetch a token for the scope from the realm (with basic credentials
 * when we have them) and cache it until it expires; for Basic, send the
 * credentials. A 401 on a request we authenticated means the token died early:
 * fetch a new one and try once more before giving up.
 */
export class Authenticator {
  private challenge: Challenge | undefined;
  private readonly tokens: TokenCache;
  private readonly pendingTokens = new Map<string, Promise<string>>();
  private credentialsLookup: Promise<Credentials | undefined> | undefined;

  constructor(
    private readonly transport: Transport,
    private readonly options: AuthenticatorOptions,
  ) {
    this.tokens = new TokenCache(options.now);
  }

  /** Records what a 401 answer asks for. True when it is a scheme we can answer. */
  learn(headers: ResponseHeaders): boolean {
    const challenge = preferredChallenge(parseChallenges(headers['www-authenticate']));
    if (challenge === undefined) return false;
    this.challenge = challenge;
    return true;
  }

  /**
   * Sends `req` with whatever authorization `scope` needs (e.g.
   * `repository:library/alpine:pull`), answering one 401 by authenticating
   * afresh. `consume` gets the final response, as with `Transport.request`.
   */
  async request<T>(req: TransportRequest, scope: string, consume: (response: TransportResponse) => Promise<T>): Promise<T> {
    for (let fresh = false; ; fresh = true) {
      const authorization = await this.authorization(scope, req);
      const headers = authorization === undefined ? req.headers : { ...req.headers, authorization };
      const result = await this.transport.request({ ...req, headers }, async (response) => {
        if (response.status === 401 && !fresh && this.learn(response.headers)) {
          await discard(response.body);
          return retryWithFreshAuth;
        }
        return consume(response);
      });
      if (result !== retryWithFreshAuth) return result as T;
      this.forgetToken(scope);
    }
  }

  /** Words to add to an UNAUTHORIZED error: were credentials sent at all? */
  async refusalHint(): Promise<string> {
    const credentials = await this.credentials();
    return credentials === undefined
      ? `no credentials found for ${this.options.registry}`
      : `credentials for ${this.options.registry} (user ${JSON.stringify(credentials.username)}) were refused`;
  }

  private credentials(): Promise<Credentials | undefined> {
    this.credentialsLookup ??= this.options.credentials();
    return this.credentialsLookup;
  }

  private tokenKey(challenge: Challenge, scope: string): string {
    return `${challenge.params.realm ?? ''}|${challenge.params.service ?? ''}|${scope}`;
  }

  private forgetToken(scope: string): void {
    if (this.challenge?.scheme === 'bearer') this.tokens.delete(this.tokenKey(this.challenge, scope));
  }

  private async authorization(scope: string, req: TransportRequest): Promise<string | undefined> {
    const challenge = this.challenge;
    if (challenge === undefined) return undefined;
    if (challenge.scheme === 'basic') {
      const credentials = await this.credentials();
      return credentials === undefined ? undefined : basicAuthorization(credentials);
    }
    const key = this.tokenKey(challenge, scope);
    const cached = this.tokens.get(key);
    if (cached !== undefined) return `Bearer ${cached}`;
    // Concurrent requests for one scope share one token fetch.
    let pending = this.pendingTokens.get(key);
    if (pending === undefined) {
      pending = this.fetchToken(challenge, scope, req).finally(() => this.pendingTokens.delete(key));
      this.pendingTokens.set(key, pending);
    }
    return `Bearer ${await pending}`;
  }

  private async fetchToken(challenge: Challenge, scope: string, req: TransportRequest): Promise<string> {
    let url: URL;
    try {
      url = new URL(challenge.params.realm ?? '');
    } catch {
      throw new LazyrootError('UNAVAILABLE', `${req.what}: registry sent an unusable token realm ${JSON.stringify(challenge.params.realm)}`, {
        temporary: false,
      });
    }
    if (challenge.params.service) url.searchParams.set('service', challenge.params.service);
    // The registry may say which scope it wants; ask for ours as well.
    const scopes = new Set([scope, ...(challenge.params.scope ?? '').split(' ').filter(Boolean)]);
    for (const s of scopes) url.searchParams.append('scope', s);
    const headers: Record<string, string> = {};
    const credentials = await this.credentials();
    if (credentials !== undefined) {
      url.searchParams.set('account', credentials.username);
      headers.authorization = basicAuthorization(credentials);
    }
    const what = `${req.what}: token from ${url.host}`;
    const tokenRequest: TransportRequest = { method: 'GET', url, headers, what, signal: req.signal };
    const response = await this.transport.sendBuffered(tokenRequest, tokenResponseLimit);
    if (response.status !== 200) {
      const error = errorForStatus(what, 'GET', response.url, response.status, response.body, response.attempts);
      if (error.code !== 'UNAUTHORIZED') throw error;
      throw new RegistryError('UNAUTHORIZED', `${error.message}; ${await this.refusalHint()}`, {
        status: error.status ?? 401,
        method: error.method,
        url: error.url,
        registryCodes: error.registryCodes,
        temporary: false,
      });
    }
    const issued = parseTokenResponse(response.body, what);
    this.tokens.set(this.tokenKey(challenge, scope), issued);
    return issued.token;
  }
}

export function basicAuthorization(credentials: Credentials): string {
  return `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
}

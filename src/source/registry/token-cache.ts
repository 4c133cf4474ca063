import { LazyrootError } from '../../errors.js';

/** Lifetime assumed when a token service does not say (the distribution token spec's default). */
export const defaultTokenLifetimeSeconds = 60;

export interface IssuedToken {
  token: string;
  /** Seconds the token is valid for, from when we received it. */
  expiresInSeconds: number;
}

/**
 * Reads a token service's answer: `token` or its OAuth2 name `access_token`,
 * and `expires_in` (60 s when absent or nonsense).
 */
export function parseTokenResponse(body: Buffer, what: string): IssuedToken {
  let doc: unknown;
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch {
    throw new LazyrootError('UNAVAILABLE', `${what}: token service answered with something that is not JSON`, { temporary: false });
  }
  const d = (doc ?? {}) as Record<string, unknown>;
  const token = typeof d.token === 'string' && d.token !== '' ? d.token : d.access_token;
  if (typeof token !== 'string' || token === '') {
    throw new LazyrootError('UNAVAILABLE', `${what}: token service answer has no token`, { temporary: false });
  }
  const expiresIn = typeof d.expires_in === 'number' && d.expires_in > 0 ? d.expires_in : defaultTokenLifetimeSeconds;
  return { token, expiresInSeconds: expiresIn };
}

/**
 * Bearer tokens by key (realm, service and scope), each dropped a little before
 * it expires so that a request never leaves with a token about to die.
 */
export class TokenCache {
  private readonly entries = new Map<string, { token: string; freshUntil: number }>();

  constructor(private readonly now: () => number = Date.now) {}

  get(key: string): string | undefined {
    const entry = this.entries.get(key);
    if (entry === undefined) return undefined;
    if (this.now() >= entry.freshUntil) {
      this.entries.delete(key);
      return undefined;
    }
    return entry.token;
  }

  set(key: string, issued: IssuedToken): void {
    const lifetimeMs = issued.expiresInSeconds * 1000;
    // Renew early: a tenth of the lifetime, at most 10 s.
    const marginMs = Math.min(10_000, lifetimeMs / 10);
    this.entries.set(key, { token: issued.token, freshUntil: this.now() + lifetimeMs - marginMs });
  }

  delete(key: string): void {
    this.entries.delete(key);
  }
}

import type { Authenticator } from './auth.js';
import { discard, readLimited } from './body.js';
import { errorForStatus, RegistryError } from './registry-error.js';
import { settledSchemes } from './settled-schemes.js';
import { isTlsOrConnectError, type Transport, type TransportResponse } from './transport.js';

/**
 * What the registry clients (pull: registry-source.ts, push: push.ts,
 * referrers.ts) do alike with a registry's answers: find the scheme it
 * speaks, and turn an unexpected answer into an error in the registry's own
 * words.
 */

/** The most of an error body kept for the message. */
const errorBodyLimit = 64 << 10;

/** The error for an unexpected answer, with the registry's own words; `refusal` adds why a 401/403 may have come. */
export async function answerError(response: TransportResponse, what: string, method: string, refusal?: () => Promise<string>): Promise<RegistryError> {
  let body: Buffer = Buffer.alloc(0);
  try {
    body = await readLimited(response.body, errorBodyLimit, what);
  } catch {
    response.body.destroy();
  }
  const error = errorForStatus(what, method, response.url, response.status, body, response.attempts);
  if (error.code !== 'UNAUTHORIZED' || !refusal) return error;
  return new RegistryError('UNAUTHORIZED', `${error.message}; ${await refusal()}`, {
    status: response.status,
    method,
    url: error.url,
    registryCodes: error.registryCodes,
    temporary: false,
  });
}

/**
 * Pings `<scheme>://host<apiPath>/` with each allowed scheme, in order: any
 * HTTP answer settles the scheme, and a 401 tells the authenticator what the
 * registry wants before the first real request. A scheme that fails to
 * connect (or TLS that fails) gives way to the next, where allowed.
 */
export async function probeScheme(
  transport: Transport,
  auth: Authenticator,
  target: { host: string; schemes: readonly string[]; apiPath?: string; what: string; signal?: AbortSignal },
): Promise<URL> {
  const { host, schemes, what, signal } = target;
  const key = `${schemes.join(',')} ${host}${target.apiPath ?? '/v2'}`;
  const settled = settledSchemes.get(key);
  if (settled && schemes.includes(settled.scheme)) {
    // What the ping's 401 taught the first authenticator, this one learns too: concurrent first
    // requests then share one token fetch instead of each meeting the 401.
    if (settled.challenge) auth.learn(settled.challenge);
    return new URL(`${settled.scheme}://${host}/`);
  }
  let challenge: TransportResponse['headers'] | undefined;
  for (const [i, scheme] of schemes.entries()) {
    const last = i === schemes.length - 1;
    try {
      await transport.request(
        { method: 'GET', url: new URL(`${scheme}://${host}${target.apiPath ?? '/v2'}/`), what, ...(signal ? { signal } : {}), ...(last ? {} : { retries: 0 }) },
        async (response) => {
          if (response.status === 401) {
            auth.learn(response.headers);
            challenge = response.headers;
          }
          await discard(response.body);
        },
      );
      settledSchemes.set(key, { scheme, ...(challenge ? { challenge } : {}) });
      return new URL(`${scheme}://${host}/`);
    } catch (err) {
      if (last || !isTlsOrConnectError((err as Error).cause)) throw err;
    }
  }
  throw new Error('unreachable: no scheme to try');
}

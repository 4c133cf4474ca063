import { LazyrootError, type ErrorCode } from '../../errors.js';

/**
 * A failed registry request, as data (go-containerregistry's transport.Error):
 * what was asked, where, what the registry said, and whether asking again may help.
 */
export class RegistryError extends LazyrootError {
  /** HTTP status, when the registry answered at all. */
  readonly status: number | undefined;
  readonly method: string;
  /** The URL with credentials and query values removed. */
  readonly url: string;
  /** The registry's own `errors[].code` list, e.g. `['MANIFEST_UNKNOWN']`. */
  readonly registryCodes: string[];

  constructor(
    code: ErrorCode,
    message: string,
    fields: { status?: number; method: string; url: string; registryCodes?: string[]; temporary?: boolean; cause?: unknown },
  ) {
    super(code, message, { cause: fields.cause, temporary: fields.temporary ?? code === 'UNAVAILABLE' });
    this.name = 'RegistryError';
    this.status = fields.status;
    this.method = fields.method;
    this.url = fields.url;
    this.registryCodes = fields.registryCodes ?? [];
  }
}

// Query parameters of the registry and token APIs that carry no secrets.
const harmlessQueryKeys = new Set(['service', 'scope', 'account', 'digest', 'n', 'last', 'mount', 'from']);

/**
 * A URL fit for messages: no user info, and query values other than the
 * registry API's own replaced (blob storage redirects carry signatures there).
 */
export function redactUrl(url: URL | string): string {
  const copy = new URL(url.toString());
  copy.username = '';
  copy.password = '';
  for (const key of new Set(copy.searchParams.keys())) {
    if (!harmlessQueryKeys.has(key)) copy.searchParams.set(key, 'REDACTED');
  }
  // `scope=repository:team/app:pull` reads better than its percent-encoded form.
  return copy.toString().replace(/%3A/gi, ':').replace(/%2F/gi, '/');
}

/** Statuses where the same request may succeed later. */
export function isTemporaryStatus(status: number): boolean {
  return status === 408 || status === 429 || (status >= 500 && status <= 599 && status !== 501 && status !== 505);
}

export function errorCodeForStatus(status: number): ErrorCode {
  if (status === 401 || status === 403) return 'UNAUTHORIZED';
  if (status === 404) return 'NOT_FOUND';
  if (status === 416) return 'INVALID_DATA'; // the blob is shorter than its descriptor or index says
  if (isTemporaryStatus(status)) return 'UNAVAILABLE';
  return 'FAILED_PRECONDITION';
}

export interface RegistryErrorDetail {
  code: string;
  message?: string;
}

/** The registry's `{"errors":[{code, message, detail}]}` body, if that is what it sent. */
export function parseErrorBody(body: Buffer): RegistryErrorDetail[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return [];
  }
  const errors = (parsed as { errors?: unknown } | null)?.errors;
  if (!Array.isArray(errors)) return [];
  return errors
    .filter((e): e is { code: string; message?: unknown } => typeof e?.code === 'string')
    .map((e) => (typeof e.message === 'string' ? { code: e.code, message: e.message } : { code: e.code }));
}

/** The error for a response with an unexpected status. `what` names the request's subject. */
export function errorForStatus(what: string, method: string, url: URL, status: number, body: Buffer, attempts = 1): RegistryError {
  const details = parseErrorBody(body);
  const said = details.length > 0
    ? details.map((d) => (d.message ? `${d.code} ${d.message}` : d.code)).join('; ')
    : body.toString('utf8', 0, Math.min(body.length, 200)).replace(/\s+/g, ' ').trim();
  const tries = attempts > 1 ? ` after ${attempts} attempts` : '';
  const redacted = redactUrl(url);
  return new RegistryError(errorCodeForStatus(status), `${what}: ${status}${said ? ` ${said}` : ''} (${method} ${redacted}${tries})`, {
    status,
    method,
    url: redacted,
    registryCodes: details.map((d) => d.code),
    temporary: isTemporaryStatus(status),
  });
}

/**
 * One error type for the whole library, with a stable `code` callers can
 * switch on (modelled on containerd's errdefs and pnpm's PnpmError).
 * Messages say what was being done and to what; `cause` keeps the detail.
 */
export type ErrorCode =
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'INVALID_ARGUMENT'
  | 'INVALID_REFERENCE'
  | 'INVALID_MANIFEST'
  /** Bytes that are not what they must be: bad compression, a tar, TOC or index that contradicts itself, a range outside a blob. Not the caller's mistake (that is INVALID_ARGUMENT). */
  | 'INVALID_DATA'
  | 'UNSUPPORTED'
  | 'FAILED_PRECONDITION'
  | 'UNAVAILABLE'
  | 'UNAUTHORIZED'
  | 'DIGEST_MISMATCH'
  | 'SIZE_MISMATCH'
  | 'HOSTILE_ARCHIVE'
  | 'IN_USE'
  /** A documented limit (TOC records, sizes) was passed. */
  | 'RESOURCE_EXHAUSTED';

/** Every code, as a record so that a code added to ErrorCode and not here fails to compile. */
const errorCodes: Readonly<Record<ErrorCode, true>> = {
  NOT_FOUND: true,
  ALREADY_EXISTS: true,
  INVALID_ARGUMENT: true,
  INVALID_REFERENCE: true,
  INVALID_MANIFEST: true,
  INVALID_DATA: true,
  UNSUPPORTED: true,
  FAILED_PRECONDITION: true,
  UNAVAILABLE: true,
  UNAUTHORIZED: true,
  DIGEST_MISMATCH: true,
  SIZE_MISMATCH: true,
  HOSTILE_ARCHIVE: true,
  IN_USE: true,
  RESOURCE_EXHAUSTED: true,
};

/** Whether `value` is one of lazyroot's error codes (not, say, a system error's `ENOENT` carried across a thread). */
export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(errorCodes, value);
}

export class LazyrootError extends Error {
  readonly code: ErrorCode;
  /** True when trying the same thing again later may succeed. */
  readonly temporary: boolean;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; temporary?: boolean } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'LazyrootError';
    this.code = code;
    this.temporary = options.temporary ?? code === 'UNAVAILABLE';
  }

  /** The same error with more context in front of its message. */
  withContext(context: string): LazyrootError {
    const wrapped = new LazyrootError(this.code, `${context}: ${this.message}`, {
      cause: this.cause,
      temporary: this.temporary,
    });
    Object.assign(wrapped, extraFields(this));
    return wrapped;
  }
}

export class DigestMismatchError extends LazyrootError {
  readonly want: string;
  readonly got: string;
  constructor(what: string, want: string, got: string) {
    super('DIGEST_MISMATCH', `${what}: digest mismatch (want ${want}, got ${got})`);
    this.want = want;
    this.got = got;
  }
}

function extraFields(err: LazyrootError): Record<string, unknown> {
  const base = new Set(['code', 'temporary', 'message', 'name', 'stack', 'cause']);
  return Object.fromEntries(Object.entries(err).filter(([k]) => !base.has(k)));
}

export function isLazyrootError(err: unknown, code?: ErrorCode): err is LazyrootError {
  return err instanceof LazyrootError && (code === undefined || err.code === code);
}

/**
 * Fetched bytes, not verified yet, that do not decode (a tar header's gzip
 * member, zstd frames): likelier damaged on the way than lied about, so
 * UNAVAILABLE, and the next read asks again. Marked so that a registry
 * mirror that served them is passed over for that blob (isDamagedBytes).
 */
export function damagedBytes(message: string, cause: unknown): LazyrootError {
  return Object.assign(new LazyrootError('UNAVAILABLE', message, { cause }), { damaged: true as const });
}

export function isDamagedBytes(err: unknown): boolean {
  return isLazyrootError(err, 'UNAVAILABLE') && (err as { damaged?: unknown }).damaged === true;
}

/** Prefixes context to a LazyrootError; wraps anything else as UNAVAILABLE-free plain error. */
export function withContext(err: unknown, context: string): Error {
  if (err instanceof LazyrootError) return err.withContext(context);
  const e = err instanceof Error ? err : new Error(String(err));
  const wrapped = new Error(`${context}: ${e.message}`, { cause: e });
  Object.assign(wrapped, { code: (e as NodeJS.ErrnoException).code });
  return wrapped;
}

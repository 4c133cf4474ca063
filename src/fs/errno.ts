import { constants } from 'node:os';
import type { ErrorCode } from '../errors.js';
import { isLazyrootError } from '../errors.js';

const { errno } = constants;

/** What the filesystem tells its owner about a failure it turned into an errno. */
export type FsLogger = (message: string, error: unknown) => void;

// Each kind of failure as the process reading the file should see it.
// Anything that means "the bytes cannot be had right now or are wrong" is EIO:
// it is what a disk says, and what programs are written to expect.
const byCode: Readonly<Record<ErrorCode, number>> = {
  NOT_FOUND: errno.ENOENT,
  ALREADY_EXISTS: errno.EEXIST,
  INVALID_ARGUMENT: errno.EINVAL,
  INVALID_REFERENCE: errno.EINVAL,
  INVALID_MANIFEST: errno.EIO,
  INVALID_DATA: errno.EIO,
  UNSUPPORTED: errno.EOPNOTSUPP,
  FAILED_PRECONDITION: errno.EIO,
  UNAVAILABLE: errno.EIO,
  UNAUTHORIZED: errno.EACCES,
  DIGEST_MISMATCH: errno.EIO,
  SIZE_MISMATCH: errno.EIO,
  HOSTILE_ARCHIVE: errno.EIO,
  IN_USE: errno.EBUSY,
  RESOURCE_EXHAUSTED: errno.ENOSPC,
};

/**
 * The errno a failure means, negated as FUSE wants it (-ENOENT…). Node
 * system errors keep their own errno (an EROFS stays EROFS); anything
 * unknown is EIO. Never -1: fuse-native would pass it on as EPERM.
 */
export function errnoOf(err: unknown): number {
  // A code outside the table (never meant to be) is still an error: EIO, never NaN, which the kernel
  // took for a read of 0 bytes, an end of file (a binary read as empty: "exec format error").
  if (isLazyrootError(err)) return -(byCode[err.code] ?? errno.EIO);
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && code.startsWith('E')) {
    const n = (errno as Record<string, number | undefined>)[code];
    if (n !== undefined) return -n;
  }
  return -errno.EIO;
}

/**
 * The one `toErrno` of a mount: maps like {@link errnoOf} and logs the
 * failure's detail, once per error object, so that one failed fetch shared
 * by many waiting reads is reported once rather than once per read.
 */
export function createToErrno(log: FsLogger = () => {}): (err: unknown, context: string) => number {
  const logged = new WeakSet<object>();
  return (err, context) => {
    const n = errnoOf(err);
    if (typeof err !== 'object' || err === null || !logged.has(err)) {
      if (typeof err === 'object' && err !== null) logged.add(err);
      log(`${context}: ${errnoName(n)}: ${err instanceof Error ? err.message : String(err)}`, err);
    }
    return n;
  };
}

/** `-2` → `ENOENT`, for messages. */
export function errnoName(negated: number): string {
  for (const [name, n] of Object.entries(errno)) if (n === -negated) return name;
  return `errno ${-negated}`;
}

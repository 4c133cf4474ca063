import { createHash, type Hash } from 'node:crypto';
import { LazyrootError } from '../errors.js';

/** A content digest, `algorithm:hex`. Only sha256 and sha512 are accepted. */
export type Digest = string;

const digestPattern = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;

export function isDigest(value: unknown): value is Digest {
  return typeof value === 'string' && digestPattern.test(value);
}

export function parseDigest(value: unknown, what = 'digest'): Digest {
  if (!isDigest(value)) {
    throw new LazyrootError('INVALID_DATA', `${what}: ${JSON.stringify(value)} is not a valid sha256/sha512 digest`);
  }
  return value;
}

export function digestAlgorithm(digest: Digest): 'sha256' | 'sha512' {
  return digest.startsWith('sha512:') ? 'sha512' : 'sha256';
}

export function digestHex(digest: Digest): string {
  return digest.slice(digest.indexOf(':') + 1);
}

export function sha256(data: Uint8Array | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export function hasherFor(digest: Digest): Hash {
  return createHash(digestAlgorithm(digest));
}

/** A short form for messages: `sha256:0123456789ab`. */
export function shortDigest(digest: string): string {
  const i = digest.indexOf(':');
  return i < 0 ? digest.slice(0, 12) : digest.slice(0, i + 13);
}

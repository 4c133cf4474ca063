import type { ResponseHeaders } from './transport.js';

/**
 * Schemes already settled in this process, by host and API path: a mount
 * opens a second source for the registry its image was resolved from, and a
 * snapshotter or standby many over its life; each would otherwise pay one
 * ping (two where https is tried first and refused).
 */
export const settledSchemes = new Map<string, SettledScheme>();

export interface SettledScheme {
  scheme: string;
  challenge?: ResponseHeaders;
}

/** What this process's pings settled, by host and API path: handed to a mount daemon with its request. */
export type SettledSchemes = Array<[string, SettledScheme]>;

export function settledSchemesNow(): SettledSchemes {
  return [...settledSchemes];
}

/**
 * Takes what another process's pings settled (a snapshotter that resolved
 * the image before asking for its mount), so that this one's first request
 * to those registries is a real one, not a ping (13-20 ms measured on
 * loopback, where https is tried first). Entries of another shape are passed
 * over; a scheme settled here already stays.
 */
export function adoptSettledSchemes(list: unknown): void {
  if (!Array.isArray(list)) return;
  for (const item of list) {
    if (!Array.isArray(item) || typeof item[0] !== 'string' || settledSchemes.has(item[0])) continue;
    const settled = item[1] as Partial<SettledScheme> | undefined;
    // The key starts with the schemes allowed for the host: a scheme outside them is no downgrade to take.
    const allowed = item[0].slice(0, item[0].indexOf(' ')).split(',');
    if ((settled?.scheme !== 'https' && settled?.scheme !== 'http') || !allowed.includes(settled.scheme)) continue;
    const challenge = settled.challenge !== null && typeof settled.challenge === 'object' ? settled.challenge : undefined;
    settledSchemes.set(item[0], { scheme: settled.scheme, ...(challenge ? { challenge } : {}) });
  }
}

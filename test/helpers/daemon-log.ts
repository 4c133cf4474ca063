import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

/** The mount daemon's log in `store`, or '' before it exists. */
export function daemonLog(store: string): Promise<string> {
  return readFile(join(store, 'mount-daemon.log'), 'utf8').catch(() => '');
}

/**
 * Asserts the daemon's log in `store` says `expected`, waiting up to `timeoutMs` for it, and returns
 * the log. The daemon writes its log through a stream, so a line can land a moment after the reply of
 * the read that caused it: reading the log once, right after that reply, fails now and then.
 */
export async function assertLogged(store: string, expected: RegExp, timeoutMs = 10_000): Promise<string> {
  const began = Date.now();
  let log = await daemonLog(store);
  while (!expected.test(log) && Date.now() - began < timeoutMs) {
    await new Promise((r) => setTimeout(r, 100));
    log = await daemonLog(store);
  }
  assert.match(log, expected);
  return log;
}

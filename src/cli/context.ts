import { readFileSync } from 'node:fs';
import { LazyrootError } from '../errors.js';
import type { RegistryOptions } from '../store/operations.js';
import type { Store } from '../store/store.js';

/** Options every command accepts (set on the root program). */
export interface GlobalOptions {
  store?: string;
  json?: boolean;
  quiet?: boolean;
}

export interface RegistryFlags {
  insecure?: boolean;
  creds?: string;
  authfile?: string;
}

export async function openStore(options: GlobalOptions): Promise<Store> {
  // Loaded when a command runs, not at start: `--help` and the mount front end stay quick.
  const { Store } = await import('../store/store.js');
  return Store.open(options.store ?? process.env.LAZYROOT_STORE);
}

/** `--creds user:pass` (or `user` with the password from LAZYROOT_PASSWORD) and `--authfile`. */
export function registryOptionsFrom(flags: RegistryFlags): RegistryOptions {
  const options: RegistryOptions = {};
  if (flags.insecure) options.insecure = true;
  if (flags.authfile) {
    readFileSync(flags.authfile); // fail early, naming the file, if it cannot be read
    options.authFile = flags.authfile;
  }
  if (flags.creds) {
    const colon = flags.creds.indexOf(':');
    const username = colon < 0 ? flags.creds : flags.creds.slice(0, colon);
    const password = colon < 0 ? process.env.LAZYROOT_PASSWORD : flags.creds.slice(colon + 1);
    if (!username || password === undefined) {
      throw new LazyrootError('INVALID_ARGUMENT', '--creds: expected USER:PASSWORD (or USER with LAZYROOT_PASSWORD set)');
    }
    options.credentials = { username, password };
  }
  return options;
}

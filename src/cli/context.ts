import { readFileSync } from 'node:fs';
import { LazyrootError, openStore as openStoreAt, type RegistryOptions, type Store } from '../index.js';

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
  hostsDir?: string;
}

export function openStore(options: GlobalOptions): Promise<Store> {
  return openStoreAt(options.store);
}

/** `--creds user:pass` (or `user` with the password from LAZYROOT_PASSWORD) and `--authfile`. */
export function registryOptionsFrom(flags: RegistryFlags): RegistryOptions {
  const options: RegistryOptions = {};
  if (flags.insecure) options.insecure = true;
  if (flags.hostsDir) options.hostsDir = flags.hostsDir;
  // Once per mirror passed over (a daemon gets the options without it and logs to its own log).
  options.onMirrorSkipped = (message) => process.stderr.write(`lazyroot: ${message}\n`);
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

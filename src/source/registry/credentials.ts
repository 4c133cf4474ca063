import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { LazyrootError } from '../../errors.js';
import { dockerHubRegistry } from '../../reference/reference.js';

export interface Credentials {
  username: string;
  password: string;
}

export interface CredentialLookupOptions {
  /** Use only this file (like `--authfile`). */
  authFile?: string;
  /** Environment to read `REGISTRY_AUTH_FILE`, `XDG_RUNTIME_DIR`, `DOCKER_CONFIG`, `HOME` from. */
  env?: Record<string, string | undefined>;
}

export interface FoundCredentials {
  credentials: Credentials;
  /** The file they came from, for messages. */
  file: string;
}

/**
 * Auth files in the order containers/image reads them: the file named by
 * `$REGISTRY_AUTH_FILE` (else `$XDG_RUNTIME_DIR/containers/auth.json`), then
 * `~/.config/containers/auth.json`, then Docker's `config.json` (in
 * `$DOCKER_CONFIG`, else `~/.docker`). An explicit `authFile` replaces them all.
 */
export function authFilePaths(options: CredentialLookupOptions = {}): string[] {
  if (options.authFile !== undefined) return [options.authFile];
  const env = options.env ?? process.env;
  const home = env.HOME || homedir();
  const paths: string[] = [];
  if (env.REGISTRY_AUTH_FILE) paths.push(env.REGISTRY_AUTH_FILE);
  else if (env.XDG_RUNTIME_DIR) paths.push(join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json'));
  paths.push(join(home, '.config', 'containers', 'auth.json'));
  paths.push(join(env.DOCKER_CONFIG || join(home, '.docker'), 'config.json'));
  return paths;
}

// Names Docker Hub goes by in auth files (`docker login` writes https://index.docker.io/v1/).
const dockerHubAliases = new Set(['index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com', dockerHubRegistry]);

/**
 * The registry (and optional repository namespace) an auth file key stands for:
 * `https://index.docker.io/v1/` → `docker.io`, `http://host:5000` → `host:5000`,
 * `quay.io/team` stays `quay.io/team`.
 */
export function normalizeAuthKey(key: string): string {
  let rest = key.trim();
  const scheme = /^https?:\/\//i.exec(rest);
  if (scheme) {
    // With a scheme the path is an API path (`/v1/`), not a namespace.
    rest = rest.slice(scheme[0].length).split('/')[0] ?? '';
  }
  rest = rest.replace(/\/+$/, '');
  const slash = rest.indexOf('/');
  const host = (slash < 0 ? rest : rest.slice(0, slash)).toLowerCase();
  const path = slash < 0 ? '' : rest.slice(slash);
  return `${dockerHubAliases.has(host) ? dockerHubRegistry : host}${path}`;
}

/** Keys that apply to a repository, most specific first: `host/a/b`, `host/a`, `host`. */
function candidateKeys(registry: string, repository: string): string[] {
  const host = normalizeAuthKey(registry);
  const parts = repository.split('/');
  const keys: string[] = [];
  for (let n = parts.length; n > 0; n--) keys.push(`${host}/${parts.slice(0, n).join('/')}`);
  keys.push(host);
  return keys;
}

function decodeEntry(entry: unknown): Credentials | undefined {
  if (entry === null || typeof entry !== 'object') return undefined;
  const e = entry as Record<string, unknown>;
  if (typeof e.auth === 'string' && e.auth !== '') {
    const decoded = Buffer.from(e.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon > 0) return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
  }
  if (typeof e.username === 'string' && e.username !== '' && typeof e.password === 'string') {
    return { username: e.username, password: e.password };
  }
  // `{}` entries (credsStore) and identity tokens carry nothing we can send.
  return undefined;
}

/** Credentials for `registry`/`repository` from one parsed auth file (`{"auths": {...}}`). */
export function credentialsFromAuthDocument(document: unknown, registry: string, repository: string): Credentials | undefined {
  const auths = (document as { auths?: unknown } | null)?.auths;
  if (auths === null || typeof auths !== 'object') return undefined;
  const byKey = new Map<string, unknown>();
  for (const [key, entry] of Object.entries(auths as Record<string, unknown>)) {
    const normalized = normalizeAuthKey(key);
    // An exact key wins over an alias that normalizes to the same name.
    if (!byKey.has(normalized) || key === normalized) byKey.set(normalized, entry);
  }
  for (const key of candidateKeys(registry, repository)) {
    const credentials = decodeEntry(byKey.get(key));
    if (credentials) return credentials;
  }
  return undefined;
}

async function readAuthFile(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
    throw new LazyrootError('FAILED_PRECONDITION', `auth file ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new LazyrootError('INVALID_ARGUMENT', `auth file ${path}: not valid JSON (${(err as Error).message})`);
  }
}

/** Finds credentials for a repository in the first auth file that has any. */
export async function findCredentials(
  registry: string,
  repository: string,
  options: CredentialLookupOptions = {},
): Promise<FoundCredentials | undefined> {
  for (const file of authFilePaths(options)) {
    const credentials = credentialsFromAuthDocument(await readAuthFile(file), registry, repository);
    if (credentials) return { credentials, file };
  }
  return undefined;
}

import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { LazyrootError } from '../../errors.js';
import { apiHostFor } from './endpoint.js';

/**
 * Registry hosts configured the way containerd does it
 * (`/etc/containerd/certs.d/<registry>/hosts.toml`): for each registry, a
 * file naming its mirrors in the order they are tried, what each may do,
 * and the upstream (`server`), which is tried last.
 *
 *   server = "https://registry.example.com"
 *
 *   [host."http://mirror.local:5000"]
 *     capabilities = ["pull", "resolve"]
 *
 *   [host."https://cache.local"]
 *     capabilities = ["pull"]
 *     skip_verify = true            # or: ca = "cache-ca.pem" (relative to this file)
 *
 * `resolve` is fetching manifests (tags and digests), `pull` is fetching
 * blobs; `push` is accepted and kept for pushing. A host URL with a path
 * keeps it and gets `/v2` appended (`override_path = true` takes it as the
 * API root itself), as containerd does.
 */

export type HostCapability = 'pull' | 'resolve' | 'push';

export interface RegistryHost {
  /** `https://mirror:5000`: scheme and host, for messages and credentials. */
  origin: string;
  scheme: 'https' | 'http';
  /** `host[:port]` */
  host: string;
  /** The API root, `/v2` unless the URL or override_path says otherwise; no trailing slash. */
  apiPath: string;
  capabilities: ReadonlySet<HostCapability>;
  /** Accept any TLS certificate. */
  skipVerify: boolean;
  /** CA certificate files (absolute paths) to trust besides the system's. */
  ca: string[];
  /** Extra request headers. */
  headers: Record<string, string>;
  /** False for the upstream (the `server`, or the registry itself). */
  mirror: boolean;
  /** The upstream with no `server` given: its scheme is found as for a registry with no hosts.toml. */
  discoverScheme?: boolean;
}

export const defaultHostsDir = '/etc/lazyroot/certs.d';
const allCapabilities: HostCapability[] = ['pull', 'resolve', 'push'];

/** The hosts directory: the option, else LAZYROOT_HOSTS_DIR, else /etc/lazyroot/certs.d. */
export function hostsDirFrom(option: string | undefined, env: Record<string, string | undefined>): string {
  return option ?? (env.LAZYROOT_HOSTS_DIR || defaultHostsDir);
}

/**
 * The hosts to try for `registry` (as the reference names it, `docker.io`,
 * `127.0.0.1:5000`), in order: the mirrors of `<dir>/<registry>/hosts.toml`
 * (else `<dir>/_default/hosts.toml`), then the upstream. Undefined when
 * neither file exists: the registry is reached directly. The directory is
 * named by the registry with a port, if any, as containerd's are
 * (`certs.d/127.0.0.1:5000/hosts.toml`).
 */
export function loadRegistryHosts(registry: string, dir: string): RegistryHost[] | undefined {
  for (const name of [registry, '_default']) {
    const path = join(dir, name, 'hosts.toml');
    let text: string;
    try {
      // Read when a source is opened (a few hundred bytes), not on any read path.
      text = readFileSync(path, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') continue;
      throw new LazyrootError('INVALID_DATA', `registry hosts file ${path}: ${(err as Error).message}`, { cause: err, temporary: false });
    }
    return parseHostsToml(text, path, registry);
  }
  return undefined;
}

/** Parses a hosts.toml (`path` names it in errors and anchors relative `ca` paths). */
export function parseHostsToml(text: string, path: string, registry: string): RegistryHost[] {
  const fail = (problem: string, cause?: unknown): never => {
    throw new LazyrootError('INVALID_DATA', `registry hosts file ${path}: ${problem}`, { ...(cause !== undefined ? { cause } : {}), temporary: false });
  };
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    // smol-toml's message carries the line and column, and a snippet of the file.
    return fail(`not valid TOML: ${(err as Error).message.split('\n')[0]}`, err);
  }
  const base = dirname(resolve(path));
  const known = new Set(['server', 'host', 'capabilities', 'skip_verify', 'ca', 'client', 'header', 'override_path']);
  for (const key of Object.keys(doc)) if (!known.has(key)) fail(`unknown key ${JSON.stringify(key)}`);

  const hosts: RegistryHost[] = [];
  const table = doc.host ?? {};
  if (!isTable(table)) fail('"host" must be a table of [host."URL"] sections');
  for (const [url, section] of Object.entries(table as Record<string, unknown>)) {
    if (!isTable(section)) fail(`host ${JSON.stringify(url)}: expected a table`);
    hosts.push(hostFrom(url, section as Record<string, unknown>, true, `host ${JSON.stringify(url)}`, base, fail));
  }
  const serverUrl = doc.server ?? `https://${apiHostFor(registry)}`;
  if (typeof serverUrl !== 'string') fail('"server" must be a string (a URL such as "https://registry.example.com")');
  const upstream = hostFrom(serverUrl as string, doc, false, 'server', base, fail);
  // Without a `server` the registry itself is the upstream, reached as without a hosts.toml (HTTPS, or HTTP after it for loopback).
  if (doc.server === undefined) upstream.discoverScheme = true;
  // The upstream goes last; a mirror entry naming the upstream itself only reorders nothing.
  return [...hosts.filter((h) => h.origin !== upstream.origin || h.apiPath !== upstream.apiPath), upstream];
}

function hostFrom(
  url: string,
  section: Record<string, unknown>,
  mirror: boolean,
  where: string,
  base: string,
  fail: (problem: string) => never,
): RegistryHost {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return fail(`${where}: ${JSON.stringify(url)} is not a URL (expected e.g. "https://mirror.example.com:5000")`);
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') fail(`${where}: ${JSON.stringify(url)}: only http and https hosts are supported`);
  if (parsed.username || parsed.password || parsed.search || parsed.hash) fail(`${where}: ${JSON.stringify(url)}: no credentials, query or fragment in a host URL`);

  let capabilities: HostCapability[] = allCapabilities;
  if (section.capabilities !== undefined) {
    const list = section.capabilities;
    if (!Array.isArray(list) || !list.every((c) => typeof c === 'string')) fail(`${where}: "capabilities" must be a list of strings`);
    for (const c of list as string[]) if (!allCapabilities.includes(c as HostCapability)) fail(`${where}: unknown capability ${JSON.stringify(c)} (expected pull, resolve or push)`);
    capabilities = list as HostCapability[];
  }
  const skipVerify = section.skip_verify ?? false;
  if (typeof skipVerify !== 'boolean') fail(`${where}: "skip_verify" must be true or false`);
  const caValue = section.ca ?? [];
  const caList = typeof caValue === 'string' ? [caValue] : caValue;
  if (!Array.isArray(caList) || !caList.every((c) => typeof c === 'string')) fail(`${where}: "ca" must be a path or a list of paths`);
  const overridePath = section.override_path ?? false;
  if (typeof overridePath !== 'boolean') fail(`${where}: "override_path" must be true or false`);
  const headers: Record<string, string> = {};
  if (section.header !== undefined) {
    if (!isTable(section.header)) fail(`${where}: "header" must be a table of names to values`);
    for (const [name, value] of Object.entries(section.header as Record<string, unknown>)) {
      const values = Array.isArray(value) ? value : [value];
      if (!values.every((v) => typeof v === 'string')) fail(`${where}: header ${JSON.stringify(name)} must be a string or a list of strings`);
      headers[name.toLowerCase()] = (values as string[]).join(', ');
    }
  }
  let apiPath = parsed.pathname.replace(/\/+$/, '');
  if (!overridePath && !apiPath.endsWith('/v2')) apiPath = `${apiPath}/v2`;
  return {
    origin: parsed.origin,
    scheme: parsed.protocol === 'http:' ? 'http' : 'https',
    host: parsed.host,
    apiPath,
    capabilities: new Set(capabilities),
    skipVerify: skipVerify as boolean,
    ca: (caList as string[]).map((p) => (isAbsolute(p) ? p : join(base, p))),
    headers,
    mirror,
  };
}

function isTable(value: unknown): boolean {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/**
 * The URL of `/v2/<repository>/<rest>` on `host`; a mirror's also carries
 * `ns=<registry>` (the distribution spec's way of telling a mirror which
 * upstream a request is for).
 */
export function hostUrl(host: RegistryHost, registry: string, repository: string, rest: string): URL {
  const url = new URL(`${host.origin}${host.apiPath}/${repository}/${rest}`);
  if (host.mirror) url.searchParams.set('ns', registry);
  return url;
}

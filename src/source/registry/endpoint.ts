import { dockerHubApiHost, dockerHubRegistry } from '../../reference/reference.js';

/** Where a registry's API lives: Docker Hub's name is not the host that serves it. */
export function apiHostFor(registry: string): string {
  return registry === dockerHubRegistry ? dockerHubApiHost : registry;
}

/** The host name of `host[:port]`, without brackets for IPv6. */
export function hostnameOf(host: string): string {
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    return end < 0 ? host : host.slice(1, end);
  }
  const colon = host.indexOf(':');
  return colon < 0 ? host : host.slice(0, colon);
}

/** localhost, 127.0.0.0/8 and ::1: hosts whose traffic never leaves the machine. */
export function isLoopbackHost(host: string): boolean {
  const name = hostnameOf(host).toLowerCase();
  if (name === 'localhost' || name.endsWith('.localhost')) return true;
  if (name === '::1' || name === '0:0:0:0:0:0:0:1') return true;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(name);
}

export type Scheme = 'https' | 'http';

/**
 * Schemes to try, in order. Plain HTTP only for loopback hosts or registries
 * the user marked insecure, and then only after HTTPS failed to connect, as
 * Docker and containerd do; everything else is HTTPS only.
 */
export function schemesFor(host: string, insecure: boolean): Scheme[] {
  return insecure || isLoopbackHost(host) ? ['https', 'http'] : ['https'];
}

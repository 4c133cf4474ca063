import type { Command } from 'commander';

/** Flags for commands that may reach a registry. */
export function addRegistryFlags(cmd: Command): Command {
  return cmd
    .option('--insecure', 'allow plain HTTP and unverified TLS for this registry (loopback registries need no flag)')
    .option('--creds <user:password>', 'registry credentials (default: docker/containers auth files)')
    .option('--authfile <path>', 'credentials file in docker config.json or containers auth.json form')
    .option('--hosts-dir <dir>', 'registry mirrors: <dir>/<registry>/hosts.toml, as containerd (default: $LAZYROOT_HOSTS_DIR or /etc/lazyroot/certs.d)');
}

import { Command, CommanderError } from 'commander';
import { LazyrootError } from '../errors.js';
import { registerImages } from './commands/images.js';
import { registerInspect } from './commands/inspect.js';
import { registerPull } from './commands/pull.js';
import { registerRmi } from './commands/rmi.js';
import { registerRootfs } from './commands/rootfs.js';
import { registerBundle } from './commands/bundle.js';
import { registerMount } from './commands/mount.js';
import { registerProfile } from './commands/profile.js';
import { registerLayerStore } from './commands/layer-store.js';
import { registerSnapshotter } from './commands/snapshotter.js';
import { stdoutOutput, type Output } from './output.js';

/** Exit codes: 0 success, 1 failure, 2 bad usage or bad reference. */
const usageCodes = new Set(['INVALID_ARGUMENT', 'INVALID_REFERENCE']);

export function buildProgram(out: Output = stdoutOutput): Command {
  const program = new Command()
    .name('lazyroot')
    .description('turn OCI and Docker images into root filesystems, fast')
    .version('0.1.0')
    .option('--store <dir>', 'store directory (default: $LAZYROOT_STORE or /var/lib/lazyroot)')
    .option('--json', 'machine-readable output on stdout; no progress')
    .option('-q, --quiet', 'no progress, minimal output')
    .option('--hosts-dir <dir>', 'registry mirrors: <dir>/<registry>/hosts.toml, as containerd (default: $LAZYROOT_HOSTS_DIR or /etc/lazyroot/certs.d)')
    .showHelpAfterError()
    .exitOverride();
  // The global --hosts-dir reaches every command that reaches a registry (its own --hosts-dir wins).
  program.hook('preAction', (_program, action) => {
    const hostsDir = program.opts<{ hostsDir?: string }>().hostsDir;
    if (hostsDir !== undefined && action.opts<{ hostsDir?: string }>().hostsDir === undefined) action.setOptionValue('hostsDir', hostsDir);
  });
  registerPull(program, out);
  registerImages(program, out);
  registerInspect(program, out);
  registerRmi(program, out);
  registerRootfs(program, out);
  registerBundle(program, out);
  registerMount(program, out);
  registerProfile(program, out);
  registerLayerStore(program, out);
  registerSnapshotter(program, out);
  return program;
}

function describe(err: unknown): { code: string; message: string } {
  if (err instanceof LazyrootError) return { code: err.code, message: err.message };
  const e = err as NodeJS.ErrnoException;
  return { code: e?.code ?? 'INTERNAL', message: e?.message ?? String(err) };
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version exit 0; commander has already printed the usage error.
      process.exitCode = err.exitCode === 0 ? 0 : 2;
      return;
    }
    const { code, message } = describe(err);
    const json = program.opts<{ json?: boolean }>().json === true;
    if (json) process.stdout.write(`${JSON.stringify({ error: { code, message } })}\n`);
    process.stderr.write(`lazyroot: ${message}\n`);
    if (process.env.LAZYROOT_DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    process.exitCode = usageCodes.has(code) ? 2 : 1;
  }
}

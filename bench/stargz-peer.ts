/**
 * containerd's stargz-snapshotter as a benchmark peer, run the way containerd
 * runs it: its daemon `containerd-stargz-grpc` (its own root dir and socket)
 * as a proxy snapshotter of a private containerd (own root, state, socket,
 * CRI off; test/helpers/estargz.ts), images pulled lazily by `ctr-remote
 * image rpull` and run by `ctr run --snapshotter=stargz`.
 *
 * Debian packages the snapshotter's library and ctr-remote, not the daemon.
 * `shared/peers/stargz/build.sh`, which sits beside the repository clone
 * (`<repo>/../shared/`), builds it offline from Debian's Go packages; the
 * binary is kept in the bench cache, keyed by what went into it.
 *
 *   const binary = await stargzDaemonBinary(ctx);
 *   const config = await writeStargzConfig(dir, registryHost);
 *   const peer = await startStargzPeer(binary, config, dir);   // both daemons, fresh roots
 *   … ctr-remote -a peer.address image rpull --plain-http …
 *   await peer.stop();   // both stopped by PID, FUSE mounts unmounted, roots removed
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { startContainerd, type Containerd } from '../test/helpers/estargz.js';
import { spawnProcess, type ManagedProcess } from '../test/helpers/process.js';
import { ensureDebianPackages } from './debian-packages.js';
import { capture, unmountAllUnder } from './system.js';
import type { BenchContext } from './types.js';

/** What build.sh needs (its header says so), and containerd + ctr-remote to run it. */
const PACKAGES = ['golang-go', 'golang-github-containerd-stargz-snapshotter-dev', 'containerd', 'stargz-snapshotter'];

/** `<repo>/../shared/peers/stargz`: beside the repository clone, never copied into it. */
export function stargzPeerDir(repoRoot: string): string {
  return resolve(repoRoot, '..', 'shared', 'peers', 'stargz');
}

/** Every file under `dir`, relative paths sorted. */
async function filesUnder(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const entry of (await readdir(join(dir, prefix), { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
    const path = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...(await filesUnder(dir, path)));
    else if (entry.isFile()) out.push(path);
  }
  return out;
}

/**
 * The daemon binary, built once into `.bench-cache/` by the shared build.sh
 * (after installing its Debian packages when missing) and reused while its
 * sources and the Go packages it was built from stay the same.
 */
export async function stargzDaemonBinary(ctx: BenchContext): Promise<string> {
  const peerDir = stargzPeerDir(ctx.repoRoot);
  const buildScript = join(peerDir, 'build.sh');
  if (!existsSync(buildScript)) {
    throw new Error(
      `bench: stargz-snapshotter peer: ${buildScript} is missing. The bench builds containerd-stargz-grpc with the shared peer files, ` +
        `which must sit beside the repository clone (<repo>/../shared/peers/stargz/: README.md, build.sh, main.go, …). ` +
        `Get them there, or set BENCH_STARGZ=0 to run the lazy scenario without this peer`,
    );
  }
  await ensureDebianPackages(PACKAGES, 'the stargz-snapshotter peer');
  const hash = createHash('sha256');
  for (const path of await filesUnder(peerDir)) hash.update(`${path}\0`).update(await readFile(join(peerDir, path))).update('\0');
  hash.update(await capture(['dpkg-query', '-W', '-f=${Package} ${Version}\n', ...PACKAGES], 'dpkg-query'));
  const dir = join(ctx.cacheDir, `stargz-grpc-${hash.digest('hex').slice(0, 12)}`);
  const binary = join(dir, 'containerd-stargz-grpc');
  if (existsSync(binary)) return binary;

  process.stderr.write(`bench: building containerd-stargz-grpc with ${buildScript} (once; about 30 s; kept in ${dir})\n`);
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  try {
    await capture([buildScript, join(tmp, 'containerd-stargz-grpc')], `bench: ${buildScript}`);
    await rename(tmp, dir);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return binary;
}

/**
 * The daemon's config (shared/peers/stargz/stargz.toml, for the registry the
 * bench actually runs): the library's defaults (prefetch and background fetch
 * on), the registry marked plain HTTP. Written to `dir/stargz.toml`.
 */
export async function writeStargzConfig(dir: string, registryHost: string): Promise<string> {
  const path = join(dir, 'stargz.toml');
  await mkdir(dir, { recursive: true });
  await writeFile(
    path,
    [
      '# containerd-stargz-grpc config written by bench/stargz-peer.ts (as shared/peers/stargz/stargz.toml, for this run\'s registry).',
      `[[resolver.host.${JSON.stringify(registryHost)}.mirrors]]`,
      `  host = ${JSON.stringify(registryHost)}`,
      '  insecure = true',
      '',
    ].join('\n'),
  );
  return path;
}

export interface StargzPeer {
  /** containerd's socket: `ctr-remote -a ADDRESS …`, `ctr -a ADDRESS …`. */
  address: string;
  /** The stargz daemon's log so far (for error messages). */
  log(): Promise<string>;
  /** Stops containerd, then the stargz daemon (by their PIDs), unmounts what is left under the stargz root, removes both roots. */
  stop(): Promise<void>;
}

/**
 * Starts a stargz daemon (fresh root and socket in a new dir under
 * `parentDir`) and a private containerd using it as snapshotter `stargz`.
 */
export async function startStargzPeer(binary: string, configPath: string, parentDir: string): Promise<StargzPeer> {
  const dir = await mkdtemp(join(parentDir, 'stargz-'));
  const socket = join(dir, 'stargz.sock');
  const root = join(dir, 'root');
  const logPath = join(dir, 'stargz.log');
  const log = () => readFile(logPath, 'utf8').catch(() => '');
  const logFd = openSync(logPath, 'a');
  let daemon: ManagedProcess;
  try {
    daemon = spawnProcess(binary, ['-address', socket, '-root', root, '-config', configPath, '-log-level', 'info'], {
      stdio: ['ignore', logFd, logFd],
      name: `containerd-stargz-grpc on ${socket}`,
    });
  } finally {
    closeSync(logFd);
  }
  let containerd: Containerd | undefined;
  const stop = async (): Promise<void> => {
    const errors: unknown[] = [];
    if (containerd) {
      // stop() removes containerd's dir: nothing may stay mounted under it by then.
      await unmountAllUnder(containerd.dir).catch((err) => errors.push(err));
      await containerd.stop().catch((err) => errors.push(err));
    }
    // SIGTERM: the daemon closes the snapshotter, which unmounts its FUSE layer mounts.
    await daemon.stop();
    // Whatever it left (or all of them, had it been killed) is unmounted before the root is removed.
    try {
      await unmountAllUnder(dir);
      await rm(dir, { recursive: true, force: true });
    } catch (err) {
      errors.push(err);
    }
    if (errors.length) throw errors[0];
  };
  try {
    await daemon.waitReady(async () => existsSync(socket) && (await log()).includes('serving on'), {
      timeoutMs: 20_000,
      intervalMs: 20,
      describe: async () => (await log()).split('\n').slice(-20).join('\n'),
    });
    containerd = await startContainerd({ proxySnapshotters: { stargz: socket } });
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  return { address: containerd.address, log, stop };
}

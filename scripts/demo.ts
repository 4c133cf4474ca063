/**
 * `npm run demo`: the main job on a built-in sample. Starts Debian's
 * docker-registry on a loopback port, builds a small busybox image with the
 * project's own image writer, pushes it with skopeo, then pulls it with the
 * lazyroot CLI into a fresh store, shows what landed, makes a root filesystem
 * on kernel overlayfs and runs the image's command in it with runc.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRegistry } from '../test/helpers/registry.js';
import { pushToRegistry, writeOciLayout } from '../test/helpers/image-builder.js';
import { busyboxImageSpec } from '../test/helpers/sample-images.js';
import { buildTar, dir, file } from '../test/helpers/tar-builder.js';

/** 32 MiB of incompressible "assets" the demo's commands never read. */
async function assetsLayer(): Promise<Buffer> {
  const files = [];
  for (let f = 0; f < 8; f++) {
    const blocks: Buffer[] = [];
    for (let i = 0; i * 64 < 4 << 20; i++) blocks.push(createHash('sha512').update(`asset${f}/${i}`).digest());
    files.push(file(`assets/blob${f}.bin`, Buffer.concat(blocks)));
  }
  return buildTar([dir('assets'), ...files]);
}

const repoRoot = resolve(fileURLToPath(import.meta.url), '../../..');
const lazyroot = join(repoRoot, 'bin', 'lazyroot.js');

function step(text: string): void {
  process.stdout.write(`\n\x1b[1m==> ${text}\x1b[0m\n`);
}

function runLazyroot(args: string[]): Promise<void> {
  process.stdout.write(`$ lazyroot ${args.join(' ')}\n`);
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [lazyroot, ...args], { stdio: 'inherit' });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolvePromise() : reject(new Error(`lazyroot ${args[0]} exited ${code}`))));
  });
}

/** Pids of the live standbys whose pid files are in `dir`. */
async function standbyPids(dir: string): Promise<number[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const pids = await Promise.all(names.filter((n) => n.endsWith('.pid')).map(async (n) => Number(await readFile(join(dir, n), 'utf8').catch(() => ''))));
  return pids.filter((pid) => {
    try {
      return pid > 0 && process.kill(pid, 0);
    } catch {
      return false;
    }
  });
}

async function waitForStandby(dir: string): Promise<void> {
  for (let i = 0; i < 200 && (await standbyPids(dir)).length === 0; i++) await new Promise((r) => setTimeout(r, 50));
}

async function stopStandbys(dir: string): Promise<void> {
  for (const pid of await standbyPids(dir)) process.kill(pid, 'SIGTERM');
}

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'lazyroot-demo-'));
  const store = join(work, 'store');
  // Mount daemons leave their warm standby here; the demo stops it when done.
  const standbyDir = join(work, 'standby');
  process.env.LAZYROOT_STANDBY_DIR = standbyDir;
  step('starting docker-registry on loopback');
  const registry = await startRegistry();
  try {
    process.stdout.write(`registry at http://${registry.host}\n`);
    step('building the sample image (busybox, config files, 32 MiB of assets) and pushing it with skopeo');
    const sample = await busyboxImageSpec('v1');
    sample.layers.push({ tar: await assetsLayer(), compression: 'gzip' });
    await writeOciLayout(join(work, 'layout'), [sample]);
    const digest = await pushToRegistry(join(work, 'layout'), 'demo/busybox:v1', registry.host, { layoutRef: 'v1' });
    process.stdout.write(`pushed ${registry.host}/demo/busybox:v1 (${digest})\n`);
    const ref = `docker://${registry.host}/demo/busybox:v1`;
    step('pulling it with lazyroot');
    await runLazyroot(['pull', '--store', store, ref]);
    step('pulling again: every blob is already in the store');
    await runLazyroot(['pull', '--store', store, ref]);
    step('what the store holds');
    await runLazyroot(['images', '--store', store]);
    step('a writable root filesystem on kernel overlayfs (GrootFS-style create)');
    await runLazyroot(['create', '--store', store, ref, 'demo-rootfs']);
    await runLazyroot(['list', '--store', store]);
    await runLazyroot(['stats', '--store', store, 'demo-rootfs']);
    await runLazyroot(['delete', '--store', store, 'demo-rootfs']);
    step("running the image's command with runc");
    await runLazyroot(['run', '--store', store, ref]);
    await runLazyroot(['run', '--store', store, ref, '--', 'sh', '-c', 'echo "running as $(id -un) in $(pwd); $(ls /bin | wc -l) entries in /bin"']);

    step('the point: mount the image lazily, in a fresh store, before its layers are downloaded');
    const lazyStore = join(work, 'lazy-store');
    const mnt = join(work, 'mnt');
    await mkdir(mnt);
    // Build the gzip layers' span indexes once (streamed, not kept: the registry's images have none yet).
    await runLazyroot(['index', '--store', lazyStore, ref]);
    const started = Date.now();
    await runLazyroot(['mount', '--no-prefetch', '--store', lazyStore, ref, mnt]);
    process.stdout.write(`visible after ${Date.now() - started} ms: ${(await readdir(mnt)).join(' ')}\n`);
    process.stdout.write(`$ cat ${mnt}/etc/motd\n${await readFile(join(mnt, 'etc/motd'), 'utf8')}`);
    await runLazyroot(['mount', '--stats', '--store', lazyStore, mnt]);
    await runLazyroot(['umount', '--store', lazyStore, mnt]);
    step('mounting again: the first mount left a warm standby daemon (modules loaded), which takes this one');
    await waitForStandby(standbyDir);
    const again = Date.now();
    await runLazyroot(['mount', '--no-prefetch', '--store', lazyStore, ref, mnt]);
    process.stdout.write(`visible after ${Date.now() - again} ms\n`);
    await runLazyroot(['umount', '--store', lazyStore, mnt]);
    step('and run a command with runc over a lazy rootfs (writable overlay on the FUSE mount)');
    await runLazyroot(['run', '--lazy', '--store', lazyStore, ref, '--', 'sh', '-c', 'echo "hello from $(cat /etc/motd | wc -c) bytes of motd; /assets is $(du -sh /assets | cut -f1) but was not read"']);
  } finally {
    // The last mount's daemon has just left a standby, still loading: wait for it, then stop it.
    await waitForStandby(standbyDir);
    await stopStandbys(standbyDir);
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`demo: ${(err as Error).message}\n`);
  process.exitCode = 1;
});

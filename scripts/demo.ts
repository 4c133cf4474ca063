/**
 * `npm run demo`: the main job on a built-in sample. Starts Debian's
 * docker-registry on a loopback port, builds a small busybox image with the
 * project's own image writer, pushes it with skopeo, then pulls it with the
 * lazyroot CLI into a fresh store, shows what landed, makes a root filesystem
 * on kernel overlayfs and runs the image's command in it with runc.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRegistry } from '../test/helpers/registry.js';
import { pushToRegistry, writeOciLayout } from '../test/helpers/image-builder.js';
import { busyboxImageSpec } from '../test/helpers/sample-images.js';

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

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'lazyroot-demo-'));
  const store = join(work, 'store');
  step('starting docker-registry on loopback');
  const registry = await startRegistry();
  try {
    process.stdout.write(`registry at http://${registry.host}\n`);
    step('building the sample image (busybox + 2 layers) and pushing it with skopeo');
    await writeOciLayout(join(work, 'layout'), [await busyboxImageSpec('v1')]);
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
  } finally {
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`demo: ${(err as Error).message}\n`);
  process.exitCode = 1;
});

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { startRegistry, type TestRegistry } from './helpers/registry.js';
import { buildImage } from './helpers/image-builder.js';
import { busyboxImageSpec } from './helpers/sample-images.js';
import { missingRequirements } from './helpers/requirements.js';
import { processAlive } from '../src/process-alive.js';

/**
 * lazyroot as a dependency of another Node program: a project of its own in
 * a temp directory, with this package in its node_modules (a symlink, as
 * `npm install /path/to/lazyroot` makes one: offline, instant, and it leaves
 * this repository's node_modules alone), imports `lazyroot` by name — through
 * package.json's `exports` — and mounts an image from a loopback registry
 * through the library API alone.
 */

const run = promisify(execFile);
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry'] });
if (missing.length && process.env.CI) throw new Error(`CI: the library test needs ${missing.join(', ')}`);

/** Runs `node script args…` in `cwd`, asynchronously (the registry this test started must stay responsive). */
function node(cwd: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, args, { cwd, env: { ...process.env, LAZYROOT_STANDBY: '0' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolvePromise, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code, stdout, stderr }));
  });
}

const consumerScript = `
import { openStore, mount, unmount, listMounts, LazyrootError } from 'lazyroot';
import { readFile } from 'node:fs/promises';

const [storeDir, ref, dir] = process.argv.slice(2);
const store = await openStore(storeDir);
try {
  const mounted = await mount(store, ref, dir, { prefetch: false });
  const motd = await readFile(dir + '/etc/motd');
  const busybox = await readFile(dir + '/bin/busybox');
  const during = (await listMounts(store)).map((m) => m.mountpoint);
  const { stale } = await unmount(store, dir);
  const afterwards = (await listMounts(store)).map((m) => m.mountpoint);
  let again;
  try {
    await unmount(store, dir);
  } catch (err) {
    again = err instanceof LazyrootError ? err.code : String(err);
  }
  process.stdout.write(JSON.stringify({
    resolved: import.meta.resolve('lazyroot'),
    driver: mounted.driver,
    pid: mounted.pid,
    mountpoint: mounted.mountpoint,
    motd: motd.toString('base64'),
    busyboxBytes: busybox.length,
    during,
    stale,
    afterwards,
    again,
  }));
} finally {
  store.close();
}
`;

// Type-checked against the package's declarations, as a TypeScript user of the package would be.
const typedConsumer = `
import { openStore, mount, unmount, clean, LazyrootError, type BackgroundMount, type CleanResult, type Store } from 'lazyroot';

export async function use(root: string, ref: string, dir: string): Promise<[BackgroundMount, CleanResult]> {
  const store: Store = await openStore(root);
  try {
    const m: BackgroundMount = await mount(store, ref, dir, { prefetch: false, deadlineMs: 5000 });
    const driver: 'fuse' | 'overlay' = m.driver;
    void driver;
    await unmount(store, dir);
    return [m, await clean(store, { thresholdBytes: 0 })];
  } catch (err) {
    if (err instanceof LazyrootError && err.code === 'NOT_FOUND') throw new Error('gone');
    throw err;
  } finally {
    store.close();
  }
}
`;

function mounted(mountinfo: string, point: string): boolean {
  return mountinfo.split('\n').some((line) => line.split(' ')[4] === point);
}


describe("the library, imported by name from another project ('lazyroot')", { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let app: string;
  let registry: TestRegistry;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-library-'));
    registry = await startRegistry();
    await registry.pushImage('lib/app', 'v1', buildImage(await busyboxImageSpec('v1')));
    // A project of its own, with lazyroot as its dependency.
    app = join(work, 'app');
    await mkdir(join(app, 'node_modules'), { recursive: true });
    await writeFile(
      join(app, 'package.json'),
      JSON.stringify({ name: 'lazyroot-consumer', version: '1.0.0', private: true, type: 'module', dependencies: { lazyroot: `file:${repoRoot}` } }, null, 2),
    );
    await symlink(repoRoot, join(app, 'node_modules', 'lazyroot'), 'dir');
    await writeFile(join(app, 'consumer.mjs'), consumerScript);
  });

  after(async () => {
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  test('mounts an image from a registry lazily, reads a file, unmounts: the bytes are the image’s and the mount is gone', async () => {
    const store = join(work, 'store');
    const dir = join(work, 'mnt');
    await mkdir(dir);
    const r = await node(app, ['consumer.mjs', store, `docker://${registry.host}/lib/app:v1`, dir]);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      resolved: string;
      driver: string;
      pid: number;
      mountpoint: string;
      motd: string;
      busyboxBytes: number;
      during: string[];
      stale: boolean;
      afterwards: string[];
      again: string;
    };
    // `lazyroot` resolved through package.json's exports to this build.
    assert.equal(out.resolved, pathToFileURL(join(repoRoot, 'dist/src/index.js')).href);
    assert.equal(Buffer.from(out.motd, 'base64').toString(), 'hello from a lazyroot sample image\n');
    assert.equal(out.busyboxBytes, (await readFile('/bin/busybox')).length);
    assert.equal(out.driver, 'fuse');
    assert.ok(Number.isInteger(out.pid) && out.pid > 0, `a daemon served the mount (pid ${out.pid})`);
    assert.equal(out.mountpoint, dir);
    assert.deepEqual(out.during, [dir]);
    assert.equal(out.stale, false);
    assert.deepEqual(out.afterwards, []);
    assert.equal(out.again, 'NOT_FOUND', 'a second unmount finds nothing there');
    // The mount is gone from the kernel's table, and its daemon has ended.
    assert.equal(mounted(await readFile('/proc/self/mountinfo', 'utf8'), dir), false);
    for (let i = 0; i < 100 && processAlive(out.pid); i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(processAlive(out.pid), false, `daemon ${out.pid} has exited`);
  });

  test("the package's type declarations serve a TypeScript consumer", async () => {
    await writeFile(join(app, 'typed.ts'), typedConsumer);
    await writeFile(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          strict: true,
          noEmit: true,
          skipLibCheck: true,
          types: ['node'],
          typeRoots: [join(repoRoot, 'node_modules/@types')],
        },
        files: ['typed.ts'],
      }),
    );
    const tsc = join(repoRoot, 'node_modules/typescript/bin/tsc');
    const result = await run(process.execPath, [tsc, '-p', app], { cwd: app }).then(
      () => ({ ok: true, out: '' }),
      (err: { stdout?: string; stderr?: string }) => ({ ok: false, out: `${err.stdout ?? ''}${err.stderr ?? ''}` }),
    );
    assert.ok(result.ok, result.out);
  });
});

import { after, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { runBundle, writeBundle } from '../../src/bundle/bundle.js';
import { buildRuntimeSpec, type RuntimeSpec, type RuntimeSpecOptions } from '../../src/bundle/runtime-spec.js';
import { resolveUser } from '../../src/bundle/user.js';
import { LazyrootError } from '../../src/errors.js';
import type { ImageConfig } from '../../src/oci/types.js';
import { writeOciLayout } from '../helpers/image-builder.js';
import { requireOrSkip } from '../helpers/requirements.js';
import { busyboxImageSpec } from '../helpers/sample-images.js';

const run = promisify(execFile);

const work = await mkdtemp(join(tmpdir(), 'lazyroot-bundle-'));
after(() => rm(work, { recursive: true, force: true }));

test('writeBundle writes config.json atomically, replacing an existing one', async () => {
  const dir = join(work, 'write');
  const spec = buildRuntimeSpec(
    { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, config: { Cmd: ['/bin/true'] } },
    { rootfsPath: 'rootfs', user: { uid: 0, gid: 0, additionalGids: [] } },
  );
  await writeBundle(dir, spec);
  await writeFile(join(dir, 'config.json'), '{"someone else":"was here"}');
  await writeBundle(dir, spec);
  assert.deepEqual(JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')), spec);
  assert.deepEqual(await readdir(dir), ['config.json']); // no temp files left
});

test('runBundle refuses an id runc would refuse', async () => {
  await assert.rejects(runBundle(work, '../escape'), (err: unknown) => err instanceof LazyrootError && err.code === 'INVALID_ARGUMENT');
});

test('runBundle without runc says so', async () => {
  const dir = join(work, 'no-runc');
  await assert.rejects(
    runBundle(dir, 'x', { runc: join(work, 'no-such-runc'), stdio: 'ignore' }),
    (err: unknown) => err instanceof LazyrootError && err.code === 'FAILED_PRECONDITION' && /no-such-runc not found/.test(err.message),
  );
});

test('runBundle does not start when already aborted', async () => {
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(runBundle(join(work, 'never'), 'x', { signal: controller.signal }), { name: 'AbortError' });
  assert.equal(existsSync(join(work, 'never')), false);
});

/** A rootfs unpacked by umoci from the sample busybox image, shared by the runc tests. */
interface Unpacked {
  bundle: string;
  rootfs: string;
  image: ImageConfig;
}

let unpacked: Promise<Unpacked> | undefined;
function unpackBusybox(): Promise<Unpacked> {
  unpacked ??= (async () => {
    const layoutDir = join(work, 'layout');
    const layout = await writeOciLayout(layoutDir, [await busyboxImageSpec('v1')]);
    const bundle = join(work, 'umoci-bundle');
    await run('umoci', ['unpack', '--image', `${layoutDir}:v1`, bundle]);
    return { bundle, rootfs: join(bundle, 'rootfs'), image: layout.images[0]!.config };
  })();
  return unpacked;
}

let runs = 0;
const nextId = () => `lazyroot-test-${process.pid}-${++runs}`;

/** Collects what the container writes. */
function collector(): Writable & { text: () => string } {
  const chunks: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      chunks.push(chunk);
      done();
    },
  });
  return Object.assign(sink, { text: () => Buffer.concat(chunks).toString('utf8') });
}

/** Builds the spec the way `lazyroot run` will: resolve the image's User in the rootfs, then build. */
async function specFor(box: Unpacked, image: ImageConfig, options: Partial<RuntimeSpecOptions> = {}): Promise<RuntimeSpec> {
  const user = await resolveUser(image.config?.User, box.rootfs, { image: 'busybox:v1' });
  // Read-only: the tests share one rootfs and must not change it.
  return buildRuntimeSpec(image, { rootfsPath: box.rootfs, readonlyRootfs: true, user, imageName: 'busybox:v1', ...options });
}

async function runSpec(spec: RuntimeSpec, options: { bundle?: string; runcRoot?: string; signal?: AbortSignal; id?: string } = {}) {
  const bundle = options.bundle ?? (await mkdtemp(join(work, 'bundle-')));
  await writeBundle(bundle, spec);
  const stdout = collector();
  const stderr = collector();
  const id = options.id ?? nextId();
  const code = await runBundle(bundle, id, { stdio: { stdout, stderr }, signal: options.signal, runcRoot: options.runcRoot });
  return { code, stdout: stdout.text(), stderr: stderr.text(), bundle, id };
}

/** Containers runc knows in a state dir (none if the dir does not exist yet). */
async function runcList(runcRoot: string): Promise<{ id: string; status: string }[]> {
  if (!existsSync(runcRoot)) return [];
  const { stdout } = await run('runc', ['--root', runcRoot, 'list', '--format', 'json']);
  return (JSON.parse(stdout) as { id: string; status: string }[] | null) ?? [];
}

const isRunning = (runcRoot: string, id: string) => async () =>
  (await runcList(runcRoot)).some((c) => c.id === id && c.status === 'running');

describe('runc runs bundles of the sample busybox image', () => {
  const needs = { root: true, tools: ['runc', 'umoci'] };

  test('the image\'s Cmd (/bin/cat /etc/motd) runs in umoci\'s bundle with our config.json', async (t: TestContext) => {
    if (!requireOrSkip(t, needs)) return;
    const box = await unpackBusybox();
    assert.deepEqual(box.image.config?.Cmd, ['/bin/cat', '/etc/motd']);
    // Replace umoci's own config.json; root.path relative to the bundle dir.
    const spec = await specFor(box, box.image, { rootfsPath: 'rootfs' });
    const runcRoot = join(work, 'state-cat');
    const result = await runSpec(spec, { bundle: box.bundle, runcRoot });
    assert.deepEqual(JSON.parse(await readFile(join(box.bundle, 'config.json'), 'utf8')), spec, 'umoci\'s config.json was replaced');
    assert.equal(result.stdout, 'hello from a lazyroot sample image\n');
    assert.equal(result.code, 0);
    assert.equal(result.stderr, '');
    assert.deepEqual(await runcList(runcRoot), [], 'the container is deleted');
    assert.equal(existsSync(join(box.bundle, `runc-${result.id}.log`)), false);
  });

  test('the container\'s exit code is relayed: sh -c "exit 7" gives 7', async (t: TestContext) => {
    if (!requireOrSkip(t, needs)) return;
    const box = await unpackBusybox();
    const result = await runSpec(await specFor(box, box.image, { args: ['sh', '-c', 'exit 7'] }));
    assert.equal(result.code, 7);
    assert.deepEqual(await readdir(result.bundle), ['config.json'], 'state dir and log are cleaned up');
  });

  test('User "app" runs as uid 1000 with its passwd home', async (t: TestContext) => {
    if (!requireOrSkip(t, needs)) return;
    const box = await unpackBusybox();
    const image = { ...box.image, config: { ...box.image.config, User: 'app' } };
    const result = await runSpec(await specFor(box, image, { args: ['sh', '-c', 'id -u; id -g; echo "$HOME"'] }));
    assert.equal(result.stderr, '');
    assert.equal(result.stdout, '1000\n1000\n/home/app\n');
    assert.equal(result.code, 0);
  });

  test('env and cwd are as the image says', async (t: TestContext) => {
    if (!requireOrSkip(t, needs)) return;
    const box = await unpackBusybox();
    const image = {
      ...box.image,
      config: { ...box.image.config, Env: ['GREETING=hello there'], WorkingDir: '/home/app', Cmd: ['sh', '-c', 'echo "$GREETING"; pwd; echo "$PATH"; echo "$HOME"'] },
    };
    const result = await runSpec(await specFor(box, image));
    assert.equal(result.stdout, 'hello there\n/home/app\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/root\n');
    assert.equal(result.code, 0);
  });

  test('confinement: own pid namespace, loopback only, hostname, read-only /sys', async (t: TestContext) => {
    if (!requireOrSkip(t, needs)) return;
    const box = await unpackBusybox();
    const script = 'echo $$; ls /sys/class/net; uname -n; touch /sys/x 2>/dev/null || echo ro';
    const result = await runSpec(await specFor(box, box.image, { args: ['sh', '-c', script], hostname: 'lazybox' }));
    assert.equal(result.stdout, '1\nlo\nlazybox\nro\n');
  });

  test('a container killed by a signal exits 128+signal', async (t: TestContext) => {
    if (!requireOrSkip(t, needs)) return;
    const box = await unpackBusybox();
    const runcRoot = join(work, 'state-kill');
    const id = nextId();
    const running = runSpec(await specFor(box, box.image, { args: ['sleep', '30'] }), { runcRoot, id });
    await waitFor(isRunning(runcRoot, id));
    await run('runc', ['--root', runcRoot, 'kill', id, 'KILL']);
    assert.equal((await running).code, 128 + 9);
    assert.deepEqual(await runcList(runcRoot), []);
  });

  test('aborting kills and deletes the container', async (t: TestContext) => {
    if (!requireOrSkip(t, needs)) return;
    const box = await unpackBusybox();
    const runcRoot = join(work, 'state-abort');
    const id = nextId();
    const controller = new AbortController();
    const started = Date.now();
    const running = runSpec(await specFor(box, box.image, { args: ['sleep', '30'] }), { runcRoot, id, signal: controller.signal });
    await waitFor(isRunning(runcRoot, id));
    controller.abort();
    await assert.rejects(running, { name: 'AbortError' });
    assert.ok(Date.now() - started < 10_000);
    assert.deepEqual(await runcList(runcRoot), []);
  });

  test('runc\'s own failure (no such executable) is an error, not an exit code', async (t: TestContext) => {
    if (!requireOrSkip(t, needs)) return;
    const box = await unpackBusybox();
    const runcRoot = join(work, 'state-fail');
    await assert.rejects(
      runSpec(await specFor(box, box.image, { args: ['/bin/no-such-program'] }), { runcRoot }),
      (err: unknown) => err instanceof LazyrootError && err.code === 'FAILED_PRECONDITION' && /no-such-program/.test(err.message),
    );
    assert.deepEqual(await runcList(runcRoot), []);
  });
});

async function waitFor(check: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeOciLayout } from '../helpers/image-builder.js';
import { busyboxImageSpec } from '../helpers/sample-images.js';
import { missingRequirements, requireOrSkip } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';

const missing = missingRequirements({ root: true, tools: ['runc', 'mount'] });
if (missing.length && process.env.CI) throw new Error(`CI: run tests need ${missing.join(', ')}`);

describe('lazyroot run and bundle with runc', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let ref: string;
  let store: string[];
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-run-'));
    await chmod(work, 0o711); // the mapped root must be able to reach the store
    await writeOciLayout(join(work, 'layout'), [await busyboxImageSpec('v1')]);
    ref = `oci:${join(work, 'layout')}:v1`;
    store = ['--store', join(work, 'store')];
  });
  after(() => rm(work, { recursive: true, force: true }));

  test("run executes the image's Cmd and relays the exit code; nothing is left behind", async () => {
    const plain = await lazyroot([...store, 'run', ref]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(plain.stdout, 'hello from a lazyroot sample image\n');
    const seven = await lazyroot([...store, 'run', ref, '--', 'sh', '-c', 'echo "$HOME $(pwd)"; exit 7']);
    assert.equal(seven.code, 7);
    assert.equal(seven.stdout, '/root /\n');
    const list = JSON.parse((await lazyroot([...store, 'list', '--json'])).stdout) as unknown[];
    assert.deepEqual(list, []);
    assert.deepEqual(await readdir(join(work, 'store', 'tmp')), []);
  });

  test('a failing command inside the container is reported, not hidden', async () => {
    const missingCmd = await lazyroot([...store, 'run', ref, '--', '/bin/nope']);
    assert.notEqual(missingCmd.code, 0);
    assert.match(missingCmd.stderr, /nope/);
  });

  test('with --uid-mapping the container runs in a user namespace and sees the image owners', async () => {
    const run = await lazyroot([
      ...store,
      'run',
      '--uid-mapping',
      '0:100000:65536',
      '--gid-mapping',
      '0:200000:65536',
      ref,
      '--',
      'sh',
      '-c',
      'stat -c "%u:%g %n" /etc/motd /home/app; cat /proc/self/uid_map /proc/self/gid_map',
    ]);
    assert.equal(run.code, 0, run.stderr);
    const lines = run.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).join(' '));
    assert.deepEqual(lines, ['0:0 /etc/motd', '1000:1000 /home/app', '0 100000 65536', '0 200000 65536']);
  });

  test('a store the mapped root cannot reach is refused with a clear error', async () => {
    const closed = await mkdtemp(join(tmpdir(), 'lazyroot-closed-'));
    try {
      const run = await lazyroot(['--store', join(closed, 'store'), 'run', '--uid-mapping', '0:100000:65536', ref, '--', 'true']);
      assert.equal(run.code, 1);
      assert.match(run.stderr, new RegExp(`${closed} \\(mode 700\\) cannot be traversed by the mapped root user`));
    } finally {
      await rm(closed, { recursive: true, force: true });
    }
  });

  // Regression: a relative --store reached the kernel as relative overlay lowerdir= paths (and, with --lazy,
  // a relative FUSE lower), which the mount resolves against another directory: the run failed.
  for (const lazy of [false, true]) {
    test(`relative --store: run${lazy ? ' --lazy' : ''} works from the directory it is relative to`, async (t) => {
      if (lazy && !requireOrSkip(t, { fuse: true })) return;
      const cwd = await mkdtemp(join(work, 'cwd-'));
      await chmod(cwd, 0o711);
      const relative = ['--store', './relstore'];
      const run = await lazyroot([...relative, 'run', ...(lazy ? ['--lazy'] : []), ref, '--', 'cat', '/etc/motd'], { cwd });
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stdout, 'hello from a lazyroot sample image\n');
      assert.ok(existsSync(join(cwd, 'relstore', 'meta.db')), 'the store is where --store says, relative to the working directory');
      assert.deepEqual(JSON.parse((await lazyroot([...relative, 'list', '--json'], { cwd })).stdout), []);
      const left = (await readFile('/proc/self/mounts', 'utf8')).split('\n').filter((line) => line.split(' ')[1]?.startsWith(cwd));
      assert.deepEqual(left, [], 'nothing left mounted');
    });
  }

  test('bundle writes config.json and mounts the rootfs; plain runc runs it; delete unmounts', async () => {
    const dir = join(work, 'bundle');
    const made = await lazyroot([...store, 'bundle', '--json', '--id', 'b1', ref, dir]);
    assert.equal(made.code, 0, made.stderr);
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as { root: { path: string }; process: { args: string[]; cwd: string } };
    assert.equal(config.root.path, 'rootfs');
    assert.deepEqual(config.process.args, ['/bin/cat', '/etc/motd']);
    const out = execFileSync('runc', ['--root', join(work, 'runc'), 'run', '--bundle', dir, 'lazyroot-test-b1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    assert.equal(out.toString(), 'hello from a lazyroot sample image\n');
    execFileSync('runc', ['--root', join(work, 'runc'), 'delete', '--force', 'lazyroot-test-b1']);
    assert.equal((await lazyroot([...store, 'delete', 'b1'])).code, 0);
    assert.ok(!existsSync(join(dir, 'rootfs', 'bin')), 'rootfs unmounted');
  });

  test('regression: delete of a rootfs a running container uses is refused (--force deletes it); clean leaves its layers; once the container is gone, delete works', async () => {
    const bundle = join(work, 'busy-bundle');
    const made = await lazyroot([...store, '--json', 'bundle', '--id', 'busy', ref, bundle, '--', 'sleep', '60']);
    assert.equal(made.code, 0, made.stderr);
    const runcRoot = join(work, 'runc-busy');
    execFileSync('runc', ['--root', runcRoot, 'run', '-d', '--bundle', bundle, 'busy-ctr'], { stdio: 'ignore' });
    try {
      const refused = await lazyroot([...store, 'delete', 'busy']);
      assert.equal(refused.code, 1, refused.stderr);
      assert.match(refused.stderr, /rootfs busy: in use by process \d+ \(sleep\), whose root is .*busy-bundle\/rootfs: stop it first, or delete --force/);
      const cleaned = await lazyroot([...store, '--json', 'clean', '--threshold-bytes', '0']);
      assert.equal(cleaned.code, 0, cleaned.stderr);
      // The container still sees its whole tree.
      assert.match(execFileSync('runc', ['--root', runcRoot, 'exec', 'busy-ctr', 'ls', '/bin']).toString(), /busybox/);
    } finally {
      execFileSync('runc', ['--root', runcRoot, 'delete', '--force', 'busy-ctr'], { stdio: 'ignore' });
    }
    const deleted = await lazyroot([...store, 'delete', 'busy']);
    assert.equal(deleted.code, 0, deleted.stderr);
    // --force deletes one in use.
    const again = await lazyroot([...store, 'bundle', '--id', 'busy2', ref, join(work, 'busy2'), '--', 'sleep', '60']);
    assert.equal(again.code, 0, again.stderr);
    execFileSync('runc', ['--root', runcRoot, 'run', '-d', '--bundle', join(work, 'busy2'), 'busy-ctr2'], { stdio: 'ignore' });
    try {
      assert.equal((await lazyroot([...store, 'delete', 'busy2'])).code, 1);
      const forced = await lazyroot([...store, 'delete', '--force', 'busy2']);
      assert.equal(forced.code, 0, forced.stderr);
    } finally {
      execFileSync('runc', ['--root', runcRoot, 'delete', '--force', 'busy-ctr2'], { stdio: 'ignore' });
    }
  });
});

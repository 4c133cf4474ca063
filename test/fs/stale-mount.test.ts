import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmod, mkdir, mkdtemp, readdir, rm, stat, statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mountTree } from '../../src/fs/lazy-fs.js';
import { cleanStaleMount, fuseMountsAt, mountpointState } from '../../src/fs/stale-mount.js';
import { buildTree } from '../../src/fs/tree.js';
import { fixtureTree } from './helpers/fixture-tree.js';
import { runCommand } from './helpers/processes.js';
import { requireOrSkip } from '../helpers/requirements.js';

const needs = { root: true, fuse: true };
const childScript = fileURLToPath(new URL('./helpers/mount-child.js', import.meta.url));

/** A fresh mountpoint; after the test, whatever is still mounted there is lazily unmounted and the child killed. */
async function workspace(t: TestContext): Promise<{ mnt: string; children: ChildProcess[]; unmountFirst: Array<() => Promise<void>> }> {
  const work = await mkdtemp(join(tmpdir(), 'lazyroot-stale-'));
  await chmod(work, 0o755);
  const mnt = join(work, 'mnt');
  await mkdir(mnt);
  const children: ChildProcess[] = [];
  const unmountFirst: Array<() => Promise<void>> = [];
  t.after(async () => {
    for (const unmount of unmountFirst) await unmount();
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (let i = 0; i < 4 && (await fuseMountsAt(mnt)).length > 0; i++) await runCommand('umount', ['-l', mnt]);
    if ((await fuseMountsAt(mnt)).length === 0) await rm(work, { recursive: true, force: true });
  });
  return { mnt, children, unmountFirst };
}

/** Starts a node process that mounts the fixture at `mnt`; resolves once it says ready. */
async function mountInChild(mnt: string, children: ChildProcess[]): Promise<ChildProcess> {
  const child = spawn(process.execPath, [childScript, mnt], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const deadline = Date.now() + 10_000;
  while (!out.includes('ready')) {
    if (child.exitCode !== null) throw new Error(`mount child exited ${child.exitCode}`);
    if (Date.now() > deadline) throw new Error('mount child not ready after 10 s');
    await new Promise((r) => setTimeout(r, 20));
  }
  return child;
}

async function killHard(child: ChildProcess): Promise<void> {
  const exited = once(child, 'exit');
  process.kill(child.pid!, 'SIGKILL');
  await exited;
}

test('a FUSE process killed with SIGKILL leaves a stale mount, which is detected and cleaned', async (t) => {
  if (!requireOrSkip(t, needs)) return;
  const { mnt, children } = await workspace(t);
  assert.equal(await mountpointState(mnt), 'none');

  const child = await mountInChild(mnt, children);
  assert.equal(await mountpointState(mnt), 'live');

  await killHard(child);
  // Not stat: the kernel may answer that from its attribute cache even now.
  await assert.rejects(statfs(mnt), { code: 'ENOTCONN' });
  await assert.rejects(readdir(mnt), { code: 'ENOTCONN' });
  assert.equal(await mountpointState(mnt), 'stale');
  assert.deepEqual(await fuseMountsAt(mnt), [{ mountpoint: mnt, fstype: 'fuse.lazyroot', source: 'lazyroot' }]);

  assert.equal(await cleanStaleMount(mnt), 1);
  assert.equal(await mountpointState(mnt), 'none');
  assert.deepEqual(await fuseMountsAt(mnt), []);
  assert.ok((await stat(mnt)).isDirectory(), 'the mountpoint is a plain directory again');
  assert.equal(await cleanStaleMount(mnt), 0, 'nothing left to clean');
});

test('cleanStaleMount leaves a live mount alone', async (t) => {
  if (!requireOrSkip(t, needs)) return;
  const { mnt, children } = await workspace(t);
  await mountInChild(mnt, children);
  assert.equal(await cleanStaleMount(mnt), 0);
  assert.equal(await mountpointState(mnt), 'live');
});

test('the next mount over a stale one cleans it first', async (t) => {
  if (!requireOrSkip(t, needs)) return;
  const { mnt, children, unmountFirst } = await workspace(t);
  await killHard(await mountInChild(mnt, children));
  assert.equal(await mountpointState(mnt), 'stale');

  const { entries, reader } = fixtureTree();
  const mounted = await mountTree(buildTree(entries), mnt, reader, { timeoutMs: 2000 });
  unmountFirst.push(() => mounted.unmount());
  assert.equal((await fuseMountsAt(mnt)).length, 1, 'the stale mount is gone, ours is the only one');
  assert.ok((await stat(join(mnt, 'etc/hosts'))).isFile());
});

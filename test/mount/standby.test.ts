import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { pushToRegistry, writeOciLayout } from '../helpers/image-builder.js';
import { busyboxImageSpec } from '../helpers/sample-images.js';
import { snapshotTree } from '../helpers/tree-snapshot.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot, lazyrootBin, nativeFrontEnd } from '../helpers/cli.js';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { processAlive } from '../../src/process-alive.js';
import { fuseDescriptors } from '../../src/fs/fuse-descriptors.js';

/** `stat` in a child, bounded: a hung FUSE mount would block this process's own fs calls. */
function statInChild(path: string, timeoutMs: number): Promise<{ ok: boolean; timedOut: boolean; stderr: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve) => {
    execFile('stat', [path], { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, _stdout, stderr) =>
      resolve({ ok: !err, timedOut: Boolean(err && (err as { killed?: boolean }).killed), stderr, ms: Date.now() - started }),
    );
  });
}

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry', 'skopeo'] });
if (missing.length && process.env.CI) throw new Error(`CI: standby tests need ${missing.join(', ')}`);


/** Pids of processes whose environment holds `entry` (NAME=value). */
async function processesWithEnv(entry: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    const env = await readFile(`/proc/${name}/environ`).catch(() => undefined);
    if (env?.toString('utf8').split('\0').includes(entry)) pids.push(Number(name));
  }
  return pids;
}

async function until<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('warm standby mount daemon', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let registry: TestRegistry;
  let ref: string;
  const standbyDir = () => join(work, 'standby');
  const store = () => join(work, 'store');
  const started = new Set<number>();

  /** The pid the live standby wrote, once its socket is there. */
  const standbyPid = (timeoutMs?: number) =>
    until('a standby', async () => {
      const names = await readdir(standbyDir()).catch(() => [] as string[]);
      const pidFile = names.find((n) => n.endsWith('.pid'));
      if (!pidFile || !names.includes(pidFile.replace(/\.pid$/, '.sock'))) return undefined;
      const pid = Number(await readFile(join(standbyDir(), pidFile), 'utf8').catch(() => ''));
      if (!pid || !processAlive(pid)) return undefined;
      started.add(pid);
      return pid;
    }, timeoutMs);

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-standby-'));
    // The children inherit these: standbys on (run-tests turns them off), in a directory of this test's own.
    process.env.LAZYROOT_STANDBY = '1';
    process.env.LAZYROOT_STANDBY_DIR = standbyDir();
    registry = await startRegistry();
    const layout = join(work, 'layout');
    await writeOciLayout(layout, [await busyboxImageSpec('latest')]);
    await pushToRegistry(layout, 'standby/busybox:latest', registry.host);
    ref = `docker://${registry.host}/standby/busybox:latest`;
  });

  after(async () => {
    for (const dir of ['a', 'b', 'c', 'd']) {
      for (const where of [store(), join(work, 'store-2')]) await lazyroot(['--store', where, 'umount', join(work, dir)]);
    }
    // The last mounts left standbys, perhaps still loading: find every process this test's
    // runs started with its standby directory in their environment.
    await new Promise((r) => setTimeout(r, 1_000));
    for (const pid of await processesWithEnv(`LAZYROOT_STANDBY_DIR=${standbyDir()}`)) started.add(pid);
    for (const pid of started) if (pid > 0 && processAlive(pid)) process.kill(pid, 'SIGTERM');
    await until('standbys to stop', async () => ([...started].some(processAlive) ? undefined : true)).catch(() => {
      for (const pid of started) if (pid > 0 && processAlive(pid)) process.kill(pid, 'SIGKILL');
    });
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  test('a daemon leaves a standby; the next mount is served by it, the same tree; a standby stops cleanly on SIGTERM', async () => {
    for (const dir of ['a', 'b', 'c']) await mkdir(join(work, dir));
    // Indexed ahead (streamed, not kept), so with --no-prefetch the layers stay remote and
    // every mount is a lazy one (a mount of an image whose layers are all local is overlayfs).
    assert.equal((await lazyroot(['--store', store(), 'index', ref])).code, 0);
    const first = await lazyroot(['--store', store(), '--json', 'mount', '--no-prefetch', ref, join(work, 'a')]);
    assert.equal(first.code, 0, first.stderr);
    const firstPid = (JSON.parse(first.stdout) as { pid: number }).pid;
    assert.ok(firstPid > 0, 'a lazy mount, served by a daemon');
    started.add(firstPid);

    const standby = await standbyPid();
    assert.notEqual(standby, firstPid);
    const second = await lazyroot(['--store', store(), '--json', 'mount', '--no-prefetch', ref, join(work, 'b')]);
    assert.equal(second.code, 0, second.stderr);
    // The standby became the second mount's daemon.
    assert.equal((JSON.parse(second.stdout) as { pid: number }).pid, standby);
    // It runs at normal priority now, every thread of it (zlib, hashing and V8's threads were started niced).
    const nices = await Promise.all((await readdir(`/proc/${standby}/task`)).map(async (tid) => (await readFile(`/proc/${standby}/task/${tid}/stat`, 'utf8')).replace(/^.*\) /, '').split(' ')[16]));
    assert.ok(nices.length > 1 && nices.every((n) => n === '0'), `thread nice values: ${nices.join(' ')}`);
    assert.deepEqual(await snapshotTree(join(work, 'b')), await snapshotTree(join(work, 'a')));
    const stats = await lazyroot(['--store', store(), '--json', 'mount', '--stats', join(work, 'b')]);
    assert.equal(stats.code, 0, stats.stderr);
    assert.equal((JSON.parse(stats.stdout) as { pid: number }).pid, standby);

    // It left a new standby in turn; SIGTERM makes that one remove its socket and exit.
    const next = await standbyPid();
    assert.notEqual(next, standby);
    process.kill(next, 'SIGTERM');
    await until('the standby to exit', async () => (processAlive(next) ? undefined : true));
    assert.deepEqual(await readdir(standbyDir()), []);

    // umount of a standby-served mount stops that daemon only.
    const u = await lazyroot(['--store', store(), 'umount', join(work, 'b')]);
    assert.equal(u.code, 0, u.stderr);
    // umount returns once the mount is gone; the daemon ends (and its parent reaps it) right after.
    await until('the umounted daemon to exit', async () => (processAlive(standby) ? undefined : true), 5000);
    assert.ok(processAlive(firstPid));
  });

  test("a standby's warm-up leaves nothing behind, and removes what a standby killed during one left (its dead mount unmounted)", async () => {
    // What a standby killed mid warm-up leaves: its directory, a mount still in it.
    const dead = spawn('true');
    await new Promise((r) => dead.once('exit', r));
    const abandoned = join(standbyDir(), `warm-${dead.pid}-test`);
    await mkdir(join(abandoned, 'mnt0'), { recursive: true });
    await new Promise<void>((resolve, reject) => execFile('mount', ['-t', 'tmpfs', 'tmpfs', join(abandoned, 'mnt0')], (err) => (err ? reject(err) : resolve())));
    const mountsUnder = async (dir: string) => (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.split(' ')[4]?.startsWith(dir));
    try {
      assert.equal((await mountsUnder(abandoned)).length, 1);
      // The next standby (the mount's daemon leaves one) warms up and cleans up before it waits.
      const dir = join(work, 'warm-check');
      await mkdir(dir);
      const mounted = await lazyroot(['--store', join(work, 'store-warm'), '--json', 'mount', '--no-prefetch', ref, dir]);
      assert.equal(mounted.code, 0, mounted.stderr);
      try {
        const next = await standbyPid();
        assert.notEqual(next, (JSON.parse(mounted.stdout) as { pid: number }).pid);
        assert.deepEqual((await readdir(standbyDir())).filter((n) => n.startsWith('warm-')), [], 'no warm-up directory left, the abandoned one removed');
        assert.deepEqual(await mountsUnder(standbyDir()), [], 'no mount left under the standby directory');
      } finally {
        assert.equal((await lazyroot(['--store', join(work, 'store-warm'), 'umount', dir])).code, 0);
      }
    } finally {
      await new Promise<void>((resolve) => execFile('umount', [join(abandoned, 'mnt0')], () => resolve()));
      await rm(abandoned, { recursive: true, force: true });
    }
  });

  test('a standby stopped (SIGTERM) while its warm-up has a FUSE mount up detaches it and removes its directory before it exits', async () => {
    const dir = join(work, 'standby-stopped');
    await mkdir(dir);
    const child = spawn(process.execPath, [lazyrootBin, 'mount-daemon', '--standby'], { stdio: 'ignore', env: { ...process.env, LAZYROOT_STANDBY_DIR: dir } });
    started.add(child.pid!);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
    const mountsUnder = async () => (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(`${dir}/`));
    // Caught in the middle of its warm-up: one of its mounts (the made-up image's) is up.
    const caught = await until('a warm-up mount', async () => ((await mountsUnder()).length > 0 ? true : undefined), 30_000);
    assert.ok(caught);
    child.kill('SIGTERM');
    // Ended by the signal (stopped in its warm-up), or with 0 when the warm-up was just over and
    // the signal found it waiting as a standby; never an exit code of its own choosing.
    const end = await exited;
    assert.ok(end.signal === 'SIGTERM' || end.code === 0, `it ends as SIGTERM ends a process, or cleanly: ${JSON.stringify(end)}`);
    assert.deepEqual(await mountsUnder(), [], 'no mount left under the standby directory');
    assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith('warm-')), [], 'no warm-up directory left');
    await rm(dir, { recursive: true }); // nothing busy in it
  });

  test('a standby killed with SIGKILL leaves a dead socket: the next mount starts its own daemon', async () => {
    // The first test read every file, so its store holds the whole image now (a mount there
    // would be overlayfs): a fresh store, indexed ahead, keeps these mounts lazy.
    const fresh = join(work, 'store-2');
    assert.equal((await lazyroot(['--store', fresh, 'index', ref])).code, 0);
    await lazyroot(['--store', store(), 'umount', join(work, 'a')]);
    const again = await lazyroot(['--store', fresh, '--json', 'mount', '--no-prefetch', ref, join(work, 'a')]);
    assert.equal(again.code, 0, again.stderr);
    const againPid = (JSON.parse(again.stdout) as { pid: number }).pid;
    assert.ok(againPid > 0);
    started.add(againPid);
    const victim = await standbyPid();
    process.kill(victim, 'SIGKILL');
    await until('the standby to die', async () => (processAlive(victim) ? undefined : true));
    assert.ok((await readdir(standbyDir())).some((n) => n.endsWith('.sock')), 'the dead standby left its socket');
    // The native front end, finding nobody at that socket, runs the Node CLI in its place: the same run, its output and exit code.
    const viaCli = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolvePromise) => {
      const child = spawn(nativeFrontEnd, ['--store', join(work, 'store-fallback'), 'run', '--lazy', ref, '--', 'sh', '-c', 'echo via-cli; exit 4'], { env: { ...process.env, LAZYROOT_DEBUG: '1' }, stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      child.stdin.end();
      child.on('close', (code) => resolvePromise({ code, stdout, stderr }));
    });
    assert.equal(viaCli.code, 4, viaCli.stderr);
    assert.equal(viaCli.stdout, 'via-cli\n');
    assert.doesNotMatch(viaCli.stderr, /handed to the warm standby/);
    const mounted = await lazyroot(['--store', fresh, '--json', 'mount', '--no-prefetch', ref, join(work, 'c')]);
    assert.equal(mounted.code, 0, mounted.stderr);
    const pid = (JSON.parse(mounted.stdout) as { pid: number }).pid;
    assert.ok(pid > 0);
    started.add(pid);
    assert.notEqual(pid, victim);
    assert.equal((await readFile(join(work, 'c', 'etc', 'passwd'), 'utf8')).split('\n')[0], (await readFile(join(work, 'a', 'etc', 'passwd'), 'utf8')).split('\n')[0]);
  });

  test('only a mount\'s own daemon holds its /dev/fuse; SIGKILL of that daemon fails readers at once, with a standby alive, and mount recovers', async () => {
    const fresh = join(work, 'store-3');
    const dir = join(work, 'd');
    await mkdir(dir, { recursive: true });
    assert.equal((await lazyroot(['--store', fresh, 'index', ref])).code, 0);
    const holdersNow = async (pids: number[]) => {
      const holders = new Map<number, number[]>();
      for (const pid of pids) {
        const fds = fuseDescriptors(pid);
        if (fds.length) holders.set(pid, fds);
      }
      return holders;
    };
    // A standby warming up holds /dev/fuse for its own warm-up mount (under the standby dir) for a
    // moment: the counts are taken when none is.
    const noWarmUp = () =>
      until('no standby warming up', async () => ((await readFile('/proc/self/mountinfo', 'utf8')).split('\n').some((l) => (l.split(' ')[4] ?? '').startsWith(`${standbyDir()}/`)) ? undefined : true));
    // The earlier tests' mounts are still served, each by its own daemon.
    await noWarmUp();
    const before = await holdersNow(await processesWithEnv(`LAZYROOT_STANDBY_DIR=${standbyDir()}`));
    // The standby waiting now takes the mount over: what it held (a warm-up mount opening as the
    // mountinfo check passed) is not an earlier mount's.
    before.delete(await standbyPid());
    const mounted = await lazyroot(['--store', fresh, '--json', 'mount', '--no-prefetch', ref, dir]);
    assert.equal(mounted.code, 0, mounted.stderr);
    const daemon = (JSON.parse(mounted.stdout) as { pid: number }).pid;
    started.add(daemon);
    const standby = await standbyPid();

    // Every process lazyroot left running: /dev/fuse is open in the daemon only.
    await noWarmUp();
    const ours = await processesWithEnv(`LAZYROOT_STANDBY_DIR=${standbyDir()}`);
    assert.ok(ours.includes(daemon) && ours.includes(standby), `daemon ${daemon} and standby ${standby} among ${ours.join(', ')}`);
    for (const pid of ours) started.add(pid);
    // A new standby's warm-up mount holds /dev/fuse for a moment (its descriptor can be open before
    // the mount shows in mountinfo): the holders must come down to the mounts' daemons, and stay so.
    const expected = JSON.stringify([...before.keys(), daemon].sort());
    let holders = await holdersNow(ours);
    const settleBy = Date.now() + 10_000;
    while (JSON.stringify([...holders.keys()].sort()) !== expected && Date.now() < settleBy) {
      await new Promise((r) => setTimeout(r, 100));
      holders = await holdersNow(ours);
    }
    assert.deepEqual([...holders.keys()].sort(), [...before.keys(), daemon].sort(), `processes holding /dev/fuse: ${JSON.stringify([...holders])}`);
    assert.equal(holders.has(standby), false, 'the standby holds no /dev/fuse');
    for (const [pid, fds] of holders) assert.equal(fds.length, 1, `pid ${pid} holds one /dev/fuse: its own mount's`);

    assert.equal((await statInChild(join(dir, 'etc/passwd'), 5_000)).ok, true);
    process.kill(daemon, 'SIGKILL');
    await until('the daemon to die', async () => (processAlive(daemon) ? undefined : true));
    assert.ok(processAlive(standby), 'the standby is still alive');
    const dead = await statInChild(join(dir, 'bin'), 5_000);
    assert.equal(dead.timedOut, false, 'a reader of a dead mount must not hang');
    assert.equal(dead.ok, false);
    assert.match(dead.stderr, /Transport endpoint is not connected/);

    // The next mount of the same directory recovers it (served by the standby).
    const again = await lazyroot(['--store', fresh, '--json', 'mount', '--no-prefetch', ref, dir]);
    assert.equal(again.code, 0, again.stderr);
    const pid = (JSON.parse(again.stdout) as { pid: number }).pid;
    started.add(pid);
    assert.equal(pid, standby);
    assert.equal((await statInChild(join(dir, 'etc/passwd'), 5_000)).ok, true);
    const u = await lazyroot(['--store', fresh, 'umount', dir]);
    assert.equal(u.code, 0, u.stderr);
  });

  for (const frontEnd of ['native', 'node'] as const) {
    test(`run --lazy is handed whole to the warm standby (${frontEnd === 'native' ? 'bin/lazyroot, the native front end' : 'node bin/lazyroot.js'}): stdio relayed both ways, the exit code, a signal stops it (130), nothing left; without a standby the CLI runs it`, async () => {
      const runStore = join(work, `store-run-${frontEnd}`);
      const env = { ...process.env, LAZYROOT_DEBUG: '1' };
      const command = frontEnd === 'native' ? [nativeFrontEnd] : [process.execPath, lazyrootBin];
      /** The CLI with `input` on its stdin (a pipe, as under a shell's `|` or the bench). */
      const runWith = (args: string[], input: string, onStdout?: (text: string, child: ChildProcess) => void, extraEnv: Record<string, string> = {}) => {
        const child = spawn(command[0]!, [...command.slice(1), '--store', runStore, ...args], { env: { ...env, ...extraEnv }, stdio: ['pipe', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (c: Buffer) => {
          stdout += c.toString();
          onStdout?.(stdout, child);
        });
        child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
        child.stdin.end(input);
        return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolvePromise) => child.on('close', (code) => resolvePromise({ code, stdout, stderr })));
      };
      const leftovers = async () => ({
        rootfses: JSON.parse((await lazyroot(['--store', runStore, '--json', 'list'])).stdout) as unknown[],
        mounts: (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.includes(runStore)),
      });

      const standby = await standbyPid();
      const began = Date.now();
      const first = await runWith(['run', '--lazy', ref, '--', 'sh', '-c', 'read x; echo "got $x"; echo oops >&2; exit 7'], 'hello\n');
      // Not a speed check: a bound on a stall. The standby serves the run's mount itself; unmounting
      // it once waited for the mount daemon — itself — to end, until umount's 15 s wait ran out.
      assert.ok(Date.now() - began < 10_000, `the handed-off run returned ${Date.now() - began} ms after it began: it waited on something that never came`);
      assert.equal(first.code, 7, first.stderr);
      assert.equal(first.stdout, 'got hello\n');
      assert.match(first.stderr, new RegExp(`run handed to the warm standby \\(pid ${standby}\\)`));
      assert.match(first.stderr, /oops/);
      assert.deepEqual(await leftovers(), { rootfses: [], mounts: [] });

      // The runner left a standby for the next command: it takes the next run, which a SIGINT stops.
      const next = await standbyPid();
      assert.notEqual(next, standby);
      const stopped = await runWith(['run', '--lazy', ref, '--', 'sh', '-c', 'echo started; sleep 60'], '', (out, child) => {
        if (out.includes('started')) child.kill('SIGINT');
      });
      assert.equal(stopped.code, 130, stopped.stderr);
      assert.match(stopped.stderr, new RegExp(`run handed to the warm standby \\(pid ${next}\\)`));
      assert.deepEqual(await leftovers(), { rootfses: [], mounts: [] });

      // A run that fails in the standby fails as the CLI's would: its message, exit 1, nothing left.
      const failing = await standbyPid();
      const unknown = await runWith(['run', '--lazy', ref.replace(/:latest$/, ':no-such-tag'), '--', 'true'], '');
      assert.equal(unknown.code, 1, unknown.stderr);
      assert.match(unknown.stderr, new RegExp(`run handed to the warm standby \\(pid ${failing}\\)`));
      assert.match(unknown.stderr, /^lazyroot: .*no-such-tag/m);
      assert.deepEqual(await leftovers(), { rootfses: [], mounts: [] });

      // A plain `mount` goes straight to the standby too, with the CLI's output.
      const mountStandby = await standbyPid();
      const dir = join(work, `handed-${frontEnd}`);
      await mkdir(dir);
      // (a store of its own: the runs above brought every layer into theirs, which would make it overlayfs)
      const mountStore = join(work, `store-handed-${frontEnd}`);
      const mounted = await runWith(['--json', '--store', mountStore, 'mount', '--no-prefetch', ref, dir], '');
      try {
        assert.equal(mounted.code, 0, mounted.stderr);
        assert.match(mounted.stderr, new RegExp(`mount handed to the warm standby \\(pid ${mountStandby}\\)`));
        assert.deepEqual(JSON.parse(mounted.stdout), { mountpoint: dir, pid: mountStandby, driver: 'fuse' });
        assert.ok((await readFile(join(dir, 'etc/motd'), 'utf8')).length > 0);
      } finally {
        assert.equal((await lazyroot(['--store', mountStore, 'umount', dir])).code, 0);
      }
      // Its failure is the CLI's: the error as JSON on stdout, the message on stderr, exit 1; the
      // standby it used leaves the next one all the same.
      const failingMount = await standbyPid();
      const notFound = await runWith(['--json', '--store', mountStore, 'mount', ref.replace(/:latest$/, ':no-such-tag'), dir], '');
      assert.equal(notFound.code, 1, notFound.stderr);
      assert.notEqual(await standbyPid(), failingMount);
      assert.equal((JSON.parse(notFound.stdout) as { error: { code: string } }).error.code, 'NOT_FOUND');
      assert.match(notFound.stderr, /^lazyroot: .*no-such-tag/m);

      // Handing over turned off: the CLI itself runs it, the same way.
      const plain = await runWith(['run', '--lazy', ref, '--', 'sh', '-c', 'cat; exit 3'], 'piped\n', undefined, { LAZYROOT_HANDOFF: '0' });
      assert.equal(plain.code, 3);
      assert.equal(plain.stdout, 'piped\n');
      assert.doesNotMatch(plain.stderr, /handed/);

      // Anything but a plain run is the Node CLI, whichever front end was typed: its output, its exit codes.
      const images = await runWith(['--json', 'images'], '');
      assert.equal(images.code, 0, images.stderr);
      assert.ok(Array.isArray(JSON.parse(images.stdout)));
      const usage = await runWith(['run', '--lazy', '--no-such-flag', ref], '');
      assert.equal(usage.code, 2, usage.stderr);
      assert.match(usage.stderr, /no-such-flag/);
    });
  }
});

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startFaultProxy, type FaultProxy, type FaultRule } from '../helpers/fault-proxy.js';
import { pushToRegistry, writeOciLayout } from '../helpers/image-builder.js';
import { buildTar, dir, file, hardlink, symlink, whiteout, type TarEntry } from '../helpers/tar-builder.js';
import { buildEstargzImage, incompressible, type EstargzImage } from '../helpers/estargz.js';
import { diffTreesReport, snapshotTree } from '../helpers/tree-snapshot.js';
import { umociUnpack } from '../helpers/umoci.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';
import { hashInChild } from '../helpers/hash-in-child.js';

/**
 * Issue 12's fault-injection run: a whole-tree sha256sum of a lazy mount
 * while the registry's answers are cut (connection resets), corrupted and
 * stalled, the store's disk is full, and the mount daemon is killed -9 half
 * way; compared file by file with `umoci unpack` of the same image. Every
 * read gives the right bytes or fails (EIO, or ENOTCONN for the killed
 * daemon's readers): never wrong bytes. Then, faults gone and space freed,
 * every file reads right and the tree equals umoci's. The counts of each
 * run (faults injected, failed reads, repeated requests) are printed as test
 * diagnostics.
 */

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry', 'umoci', 'skopeo'] });
if (missing.length && process.env.CI) throw new Error(`CI: fault-injection tests need ${missing.join(', ')}`);

const MiB = 1 << 20;
const run = promisify(execFile);

/** Writes `path` until its filesystem is full, then gives `room` bytes back. */
async function fillAllBut(path: string, room: number): Promise<void> {
  const handle = await open(path, 'w');
  const block = Buffer.alloc(MiB);
  let written = 0;
  try {
    for (;;) written += (await handle.write(block)).bytesWritten;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  }
  await handle.truncate(Math.max(0, written - room));
  await handle.close();
}

/** Runs `work` over `items`, `width` at a time. */
async function inParallel<T>(items: readonly T[], width: number, work: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) {
        const i = next++;
        await work(items[i]!, i);
      }
    }),
  );
}

/** Three layers: busybox, many small files and a few big ones, then whiteouts, a replaced file and a hardlink. */
async function imageLayers(): Promise<TarEntry[][]> {
  const busybox = await readFile('/bin/busybox');
  const small: TarEntry[] = [dir('many')];
  for (let d = 0; d < 8; d++) {
    small.push(dir(`many/d${d}`));
    for (let f = 0; f < 24; f++) small.push(file(`many/d${d}/f${f}.txt`, incompressible(300 + ((d * 24 + f) * 811) % 12_000, `small-${d}-${f}`)));
  }
  return [
    [dir('bin'), file('bin/busybox', busybox, { mode: 0o755 }), symlink('bin/sh', 'busybox'), dir('etc'), file('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n')],
    [...small, dir('big'), ...[0, 1, 2].map((i) => file(`big/b${i}.bin`, incompressible(2 * MiB + i * 4099, `big-${i}`))), file('etc/gone', 'whited out above\n')],
    [dir('etc'), whiteout('etc/gone'), file('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n'), hardlink('many/d0/again.txt', 'many/d0/f0.txt')],
  ];
}

/** Faults on the registry's blob answers, interleaved: resets, corrupted bytes, and a few stalls (EIO at the deadline). */
const faults: FaultRule[] = [
  { method: 'GET', path: /\/blobs\//, every: 5, times: 24, fault: { kind: 'reset-after', bytes: 200 } },
  { method: 'GET', path: /\/blobs\//, every: 7, times: 12, fault: { kind: 'corrupt', atByte: 40 } },
  { method: 'GET', path: /\/blobs\//, every: 19, times: 3, fault: { kind: 'stall', afterBytes: 100 } },
];

describe('fault injection: a whole-tree sha256sum of a lazy mount against umoci unpack', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let registry: TestRegistry;
  let proxy: FaultProxy;
  /** Regular files of umoci's tree: path → sha256. */
  let expected: Map<string, string>;
  let umociRoot: string;
  let esgz: EstargzImage;
  const disks: string[] = [];
  const mounts: Array<{ store: string; target: string }> = [];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-faults-'));
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.host);
    const layers = await imageLayers();
    // The same layers twice: gzip (with a span index) and eStargz (the project's own builder).
    await writeOciLayout(join(work, 'layout'), [{ layers: await Promise.all(layers.map(async (l) => ({ tar: await buildTar(l), compression: 'gzip' as const }))), config: { config: { Cmd: ['/bin/sh'] } }, refName: 'v1' }]);
    await pushToRegistry(join(work, 'layout'), 'faults/app:gzip', registry.host, { layoutRef: 'v1' });
    esgz = await buildEstargzImage(layers, { config: { Cmd: ['/bin/sh'] } });
    await registry.pushImage('faults/app', 'estargz', esgz);
    umociRoot = await umociUnpack(join(work, 'layout'), 'v1', join(work, 'umoci'));
    expected = new Map((await snapshotTree(umociRoot)).filter((e) => e.type === 'file').map((e) => [e.path, e.sha256!]));
    assert.ok(expected.size > 190, `the image has ${expected.size} files`);
  });

  after(async () => {
    proxy?.setRules([]);
    for (const m of mounts) await lazyroot(['--store', m.store, 'umount', m.target]);
    for (const d of disks) await run('umount', [d]).catch(() => undefined);
    await proxy?.close();
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  test('a layer whose footer arrives damaged, or not at all, is asked for once more: the mount comes up and reads right', async () => {
    for (const fault of [{ kind: 'corrupt', atByte: 10 }, { kind: 'stall' }] as const) {
      const store = join(work, `store-once-${fault.kind}`);
      const target = join(work, `mnt-once-${fault.kind}`);
      await mkdir(target);
      // The first request for the first layer: its footer.
      proxy.setRules([{ method: 'GET', path: new RegExp(`/blobs/${esgz.layerDigests[0]}`), times: 1, fault }]);
      try {
        const r = await lazyroot(['--store', store, 'mount', '--no-prefetch', '--deadline-ms', '1500', `docker://${proxy.host}/faults/app:estargz`, target]);
        assert.equal(r.code, 0, `${fault.kind}: ${r.stderr}`);
        mounts.push({ store, target });
      } finally {
        proxy.setRules([]);
      }
      assert.equal(proxy.injected[fault.kind] !== undefined, true);
      const got = await hashInChild(join(target, 'etc/passwd'));
      assert.equal(got.hash, expected.get('etc/passwd'), got.error);
      assert.equal((await lazyroot(['--store', store, 'umount', target])).code, 0);
      mounts.splice(mounts.findIndex((m) => m.target === target), 1);
    }
  });

  test('a mount on a store whose disk is full from the start fails at once, saying so (exit 1), and works once there is room', async () => {
    const disk = join(work, 'disk-full-at-open');
    await mkdir(disk);
    await run('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'lazyroot-test-full-open', disk]);
    disks.push(disk);
    await fillAllBut(join(disk, 'filler'), 0);
    const store = join(disk, 'store');
    const target = join(work, 'mnt-full-at-open');
    await mkdir(target);
    const ref = `docker://${proxy.host}/faults/app:estargz`;
    const started = Date.now();
    const refused = await lazyroot(['--store', store, 'mount', '--no-prefetch', ref, target]);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, /the store's disk is full/);
    assert.ok(Date.now() - started < 30_000, `answered in ${Date.now() - started} ms`);
    await rm(join(disk, 'filler'));
    const mounted = await lazyroot(['--store', store, 'mount', '--no-prefetch', ref, target]);
    assert.equal(mounted.code, 0, mounted.stderr);
    mounts.push({ store, target });
    assert.equal((await hashInChild(join(target, 'etc/passwd'))).hash, expected.get('etc/passwd'));
    assert.equal((await lazyroot(['--store', store, 'umount', target])).code, 0);
    mounts.splice(mounts.findIndex((m) => m.target === target), 1);
  });

  for (const variant of ['estargz', 'gzip'] as const) {
    test(`${variant}: resets, corrupt ranges, stalls, a full disk and kill -9 give right bytes or EIO, never wrong bytes; then every file is right`, async (t) => {
      // The store on a small filesystem of its own, nearly filled: prefetch and the range map run out of space.
      const disk = join(work, `disk-${variant}`);
      await mkdir(disk);
      await run('mount', ['-t', 'tmpfs', '-o', 'size=48m', `lazyroot-test-faults-${variant}`, disk]);
      disks.push(disk);
      const store = join(disk, 'store');
      const ref = `docker://${proxy.host}/faults/app:${variant}`;
      if (variant === 'gzip') {
        // The span index, built in a scratch store straight from the registry, as a machine that indexed the image earlier has it.
        const scratch = join(work, 'scratch');
        const indexed = await lazyroot(['--store', scratch, 'index', '-q', `docker://${registry.host}/faults/app:${variant}`]);
        assert.equal(indexed.code, 0, indexed.stderr);
        await cp(join(scratch, 'indexes'), join(store, 'indexes'), { recursive: true });
        await rm(scratch, { recursive: true, force: true });
      }
      const target = join(work, `mnt-${variant}`);
      await mkdir(target);
      const mount = async () => {
        const r = await lazyroot(['--store', store, '--json', 'mount', '--deadline-ms', '1500', '--prefetch-delay-ms', '200', ref, target]);
        const log = r.code === 0 ? '' : await readFile(join(store, 'mount-daemon.log'), 'utf8').catch(() => '(no daemon log)');
        assert.equal(r.code, 0, `${r.stderr}\nthe daemon's log, last lines:\n${log.split('\n').slice(-30).join('\n')}`);
        return (JSON.parse(r.stdout) as { pid: number }).pid;
      };
      let pid = await mount();
      mounts.push({ store, target });
      // What is left of the disk, but about 1 MiB: far less than the image. (Filled until full, then
      // 1 MiB given back: prefetch is writing to the same disk meanwhile.)
      await fillAllBut(join(disk, 'filler'), MiB);

      const requestsBefore = proxy.log.length;
      proxy.setRules(faults);
      t.after(() => proxy.setRules([]));
      const files = [...expected.keys()];
      const outcome = { right: 0, failed: 0, wrong: [] as string[], errors: new Map<string, number>() };
      let fullDiskMount = '';
      /** Held while the daemon is killed and mounted again: the other readers wait rather than race through the list. */
      let gate: Promise<void> | undefined;
      await inParallel(files, 4, async (path, i) => {
        await gate;
        // Half way: the daemon killed -9. A mount on the full disk answers at once: mounted, or
        // refused saying the disk is full (SQLite needs a little room to open). Space freed, the
        // next mount of the directory recovers it, and the walk goes on.
        if (i === Math.floor(files.length / 2)) {
          let open = () => undefined as void;
          gate = new Promise<void>((r) => (open = r));
          process.kill(pid, 'SIGKILL');
          await new Promise((r) => setTimeout(r, 200));
          const started = Date.now();
          const onFullDisk = await lazyroot(['--store', store, '--json', 'mount', '--deadline-ms', '1500', ref, target]);
          fullDiskMount = onFullDisk.code === 0 ? 'mounted' : onFullDisk.stderr.trim();
          assert.ok(Date.now() - started < 30_000, `a mount on the full disk answered in ${Date.now() - started} ms`);
          if (onFullDisk.code === 0) {
            pid = (JSON.parse(onFullDisk.stdout) as { pid: number }).pid;
          } else {
            assert.equal(onFullDisk.code, 1);
            assert.match(onFullDisk.stderr, /the store's disk is full/);
            await rm(join(disk, 'filler'));
            pid = await mount();
          }
          open();
        }
        const got = await hashInChild(join(target, path));
        if (got.hash === expected.get(path)) outcome.right++;
        else if (got.hash !== undefined) outcome.wrong.push(path);
        else {
          outcome.failed++;
          const why = /Input\/output error/.test(got.error!)
            ? 'EIO'
            : /Transport endpoint/.test(got.error!)
              ? 'ENOTCONN'
              : /connection abort/.test(got.error!)
                ? 'ECONNABORTED'
                : got.error!;
          outcome.errors.set(why, (outcome.errors.get(why) ?? 0) + 1);
        }
      });
      proxy.setRules([]);
      const blobRequests = proxy.log.slice(requestsBefore).filter((l) => l.includes('/blobs/'));
      const repeated = blobRequests.length - new Set(blobRequests).size;
      const stats = JSON.parse((await lazyroot(['--store', store, '--json', 'mount', '--stats', target])).stdout) as { layers: Array<{ failures: number; prefetchFailures: number }> };
      t.diagnostic(
        `${variant}, pass 1 (faults, full disk, kill -9 at file ${Math.floor(files.length / 2)}; the mount on the full disk: ${fullDiskMount}): ${files.length} files, ${outcome.right} right, ${outcome.failed} failed ` +
          `(${[...outcome.errors].map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}), ${outcome.wrong.length} wrong; faults injected ${JSON.stringify(proxy.injected)}; ` +
          `${blobRequests.length} blob requests, ${repeated} of them repeats (retries); the second daemon's failed reads ${stats.layers.reduce((n, l) => n + l.failures, 0)}, prefetch retries ${stats.layers.reduce((n, l) => n + l.prefetchFailures, 0)}`,
      );
      assert.deepEqual(outcome.wrong, [], 'no file read wrong bytes');
      // EIO from a live daemon; ENOTCONN and ECONNABORTED are the killed daemon's readers (in flight, or just after).
      for (const why of outcome.errors.keys()) assert.ok(['EIO', 'ENOTCONN', 'ECONNABORTED'].includes(why), `a failed read says EIO (or ENOTCONN for the killed daemon), not: ${why}`);
      assert.ok(outcome.right > files.length / 2, `most reads succeed despite the faults (${outcome.right} of ${files.length})`);
      for (const kind of ['reset-after', 'corrupt', 'stall']) assert.ok((proxy.injected[kind] ?? 0) > 0, `some ${kind} faults were injected: ${JSON.stringify(proxy.injected)}`);

      // Pass 2: faults gone, space freed. Every file right, and the whole tree equals umoci's.
      await rm(join(disk, 'filler'), { force: true });
      const second = { right: 0, other: [] as string[] };
      await inParallel(files, 4, async (path) => {
        const got = await hashInChild(join(target, path));
        if (got.hash === expected.get(path)) second.right++;
        else second.other.push(`${path}: ${got.hash ?? got.error}`);
      });
      t.diagnostic(`${variant}, pass 2 (no faults, space freed): ${second.right} of ${files.length} right`);
      // A read that still met a deadline (EIO) is read once more, alone: on a loaded machine the second
      // daemon's first reads after the faults can time out for a while (seen under load: 1 to 53 files,
      // each right when read again). What must not happen is lasting damage: a file still wrong or
      // failing when read again fails the test, with the daemon's log.
      const retried = second.other.splice(0);
      for (const line of retried) {
        const path = line.slice(0, line.indexOf(': '));
        const got = await hashInChild(join(target, path));
        if (got.hash === expected.get(path)) second.right++;
        else second.other.push(`${path}: ${got.hash ?? got.error} (read again after: ${line})`);
      }
      if (retried.length > 0) t.diagnostic(`${variant}, pass 2: ${retried.length} reads failed (deadline) and were read again: ${retried.length - second.other.length} right then`);
      if (second.other.length > 0) {
        // What the daemon said about them (seen once in a full run and not again in eight alone: keep the evidence).
        const log = await readFile(join(store, 'mount-daemon.log'), 'utf8').catch(() => '(no daemon log)');
        const said = log.split('\n').filter((line) => !/no bytes after|ECONNRESET|socket hang up|other side closed/.test(line));
        assert.deepEqual(second.other, [], `the daemon's log, last lines but timeouts and resets:\n${said.slice(-40).join('\n')}`);
      }
      const report = diffTreesReport(await snapshotTree(target), await snapshotTree(umociRoot));
      assert.deepEqual(report.differences.map((d) => d.message), []);

      const u = await lazyroot(['--store', store, 'umount', target]);
      assert.equal(u.code, 0, u.stderr);
      mounts.splice(mounts.findIndex((m) => m.target === target), 1);
    });
  }
});

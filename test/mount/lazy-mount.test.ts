import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile as readFileFs, rm, symlink as symlinkFs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { pushToRegistry, writeOciLayout, type ImageSpec } from '../helpers/image-builder.js';
import { buildTar, dir, file, hardlink, symlink, whiteout } from '../helpers/tar-builder.js';
import { busyboxImageSpec } from '../helpers/sample-images.js';
import { diffTreesReport, snapshotTree } from '../helpers/tree-snapshot.js';
import { umociUnpack } from '../helpers/umoci.js';
import { startContainerd, convertToEstargz, type Containerd } from '../helpers/estargz.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry', 'skopeo', 'umoci', 'containerd', 'ctr-remote'] });
if (missing.length && process.env.CI) throw new Error(`CI: lazy mount tests need ${missing.join(', ')}`);

function noise(seed: string, size: number): Buffer {
  const blocks: Buffer[] = [];
  for (let i = 0; i * 64 < size; i++) blocks.push(createHash('sha512').update(`${seed}/${i}`).digest());
  return Buffer.concat(blocks).subarray(0, size);
}

/**
 * Reads a file of the mount from another process, asynchronously: this test
 * process runs the fault proxy the mount fetches through, so it must keep its
 * event loop free while the read waits (spawnSync here would deadlock).
 */
function readInChild(path: string, how: 'sha256sum' | 'cat' = 'sha256sum'): Promise<{ ok: boolean; sha256?: string; error?: string; ms: number }> {
  const started = Date.now();
  const child =
    how === 'cat'
      ? spawn('sh', ['-c', 'cat "$1" > /dev/null', 'sh', path], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn('sha256sum', [path], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolvePromise) =>
    child.on('close', (code) =>
      resolvePromise(code === 0 ? { ok: true, sha256: stdout.split(' ')[0]!, ms: Date.now() - started } : { ok: false, error: stderr, ms: Date.now() - started }),
    ),
  );
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('lazy FUSE mounts from a real registry', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let registry: TestRegistry;
  let proxy: FaultProxy;
  let containerd: Containerd;
  let spec: ImageSpec;
  let big: Buffer;
  let manyFiles: Map<string, Buffer>;
  const mounted: Array<{ target: string; store: string }> = [];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-lazy-'));
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.host);
    containerd = await startContainerd();
    big = noise('big', 24 << 20);
    const base = await busyboxImageSpec('x');
    spec = {
      layers: [
        base.layers[0]!,
        {
          tar: await buildTar([
            dir('data'),
            file('data/big.bin', big),
            file('data/small.txt', 'small file\n'),
            file('data/gone.txt', 'to be whited out'),
            symlink('data/link', 'small.txt'),
            hardlink('data/hard.bin', 'data/small.txt'),
            dir('secret', { mode: 0o700, uid: 1000, gid: 1000 }),
            file('secret/key', 'k', { mode: 0o600, uid: 1000, gid: 1000 }),
          ]),
          compression: 'gzip',
        },
        { tar: await buildTar([whiteout('data/gone.txt'), file('etc/motd', 'lazily mounted\n')]), compression: 'gzip' },
      ],
      config: { config: { Cmd: ['/bin/cat', '/etc/motd'], Env: ['PATH=/bin'] } },
      refName: 'v1',
    };
    await writeOciLayout(join(work, 'layout'), [spec]);
    await pushToRegistry(join(work, 'layout'), 'lazy/app:gzip', registry.host, { layoutRef: 'v1' });
    const plain: ImageSpec = { ...spec, layers: spec.layers.map((l) => ({ ...l, compression: 'none' as const })), refName: 'plain' };
    await writeOciLayout(join(work, 'layout-plain'), [plain]);
    await pushToRegistry(join(work, 'layout-plain'), 'lazy/app:plain', registry.host, { layoutRef: 'plain' });
    await convertToEstargz(`${registry.host}/lazy/app:gzip`, `${registry.host}/lazy/app:estargz`, containerd);
    // Many small files between directories, symlinks and empty files (entries whose tar headers
    // have no data of their own), as a real root filesystem has, for reads in any order at once.
    const entries = [];
    manyFiles = new Map();
    for (let d = 0; d < 12; d++) {
      entries.push(dir(`many/d${d}`));
      for (let f = 0; f < 16; f++) {
        const content = noise(`many/${d}/${f}`, 200 + (((d * 16 + f) * 997) % 9000));
        manyFiles.set(`many/d${d}/f${f}.txt`, content);
        entries.push(file(`many/d${d}/f${f}.txt`, content));
        if (f % 3 === 0) entries.push(symlink(`many/d${d}/l${f}`, `f${f}.txt`));
        if (f % 5 === 0) entries.push(file(`many/d${d}/empty${f}`, ''));
        if (f % 7 === 0) entries.push(dir(`many/d${d}/sub${f}`));
      }
    }
    const many: ImageSpec = { layers: [base.layers[0]!, { tar: await buildTar(entries), compression: 'gzip' }], config: { config: {} }, refName: 'many' };
    await writeOciLayout(join(work, 'layout-many'), [many]);
    await pushToRegistry(join(work, 'layout-many'), 'lazy/many:gzip', registry.host, { layoutRef: 'many' });
    await convertToEstargz(`${registry.host}/lazy/many:gzip`, `${registry.host}/lazy/many:estargz`, containerd);
  });

  after(async () => {
    for (const m of mounted) await lazyroot(['--store', m.store, 'umount', m.target]);
    await containerd?.stop();
    await proxy?.close();
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  async function mount(tag: string, store: string, extra: string[] = [], repository = 'lazy/app'): Promise<string> {
    const target = join(work, `mnt-${tag}-${mounted.length}`);
    await mkdir(target, { recursive: true });
    const r = await lazyroot(['--store', store, 'mount', ...extra, `docker://${proxy.host}/${repository}:${tag}`, target]);
    assert.equal(r.code, 0, r.stderr);
    mounted.push({ target, store });
    return target;
  }

  async function stats(store: string, target: string): Promise<{ bytesFetched: number; imageBytes: number }> {
    const r = await lazyroot(['--store', store, 'mount', '--stats', '--json', target]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as { bytesFetched: number; imageBytes: number };
  }

  for (const tag of ['gzip', 'plain', 'estargz']) {
    test(`${tag}: the mounted tree equals umoci unpack of the same image, content included`, async () => {
      const store = join(work, `store-${tag}`);
      const target = await mount(tag, store);
      const theirs = await umociUnpack(join(work, 'layout'), 'v1', join(work, `umoci-${tag}`));
      const report = diffTreesReport(await snapshotTree(target), await snapshotTree(theirs));
      assert.deepEqual(report.differences.map((d) => d.message), []);
      assert.equal((await readInChild(join(target, 'data/big.bin'))).sha256, sha(big));
      assert.equal((await lazyroot(['--store', store, 'umount', target])).code, 0);
      mounted.splice(mounted.findIndex((m) => m.target === target), 1);
    });
  }

  test('eStargz from ctr-remote: every small file read by 16 readers at once, in no set order, has its bytes (no header check refuses one)', async () => {
    const store = join(work, 'store-many');
    const target = join(work, 'mnt-many');
    await mkdir(target, { recursive: true });
    const r = await lazyroot(['--store', store, 'mount', '--no-prefetch', `docker://${proxy.host}/lazy/many:estargz`, target]);
    assert.equal(r.code, 0, r.stderr);
    mounted.push({ target, store });
    const names = [...manyFiles.keys()];
    // Shuffled, so members are read whole before, after and beside their neighbours.
    for (let i = names.length - 1; i > 0; i--) {
      const j = (i * 7919) % (i + 1);
      [names[i], names[j]] = [names[j]!, names[i]!];
    }
    const sums = await new Promise<string>((resolvePromise, reject) => {
      const child = spawn('xargs', ['-0', '-P', '16', '-n', '4', 'sha256sum'], { cwd: target, stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      child.stderr.on('data', (c: Buffer) => (err += c.toString()));
      child.on('close', (code) => (code === 0 ? resolvePromise(out) : reject(new Error(`xargs sha256sum exited ${code}: ${err}`))));
      child.stdin.end(names.map((n) => `./${n}`).join('\0'));
    });
    const got = new Map(sums.trim().split('\n').map((l) => [l.slice(66).replace(/^\.\//, ''), l.slice(0, 64)]));
    assert.equal(got.size, names.length);
    for (const [name, content] of manyFiles) assert.equal(got.get(name), sha(content), name);
    assert.equal((await lazyroot(['--store', store, 'umount', target])).code, 0);
    mounted.splice(mounted.findIndex((m) => m.target === target), 1);
  });

  test('reading one small file fetches a small part of the image (gzip with an index; eStargz with none)', async () => {
    const store = join(work, 'store-small');
    const indexed = await lazyroot(['--store', store, 'index', '-q', `docker://${proxy.host}/lazy/app:gzip`]);
    assert.equal(indexed.code, 0, indexed.stderr);
    assert.equal(indexed.stdout, '', 'index -q prints nothing');
    for (const tag of ['gzip', 'estargz']) {
      const target = await mount(tag, store);
      assert.equal((await readInChild(join(target, 'data/small.txt'))).sha256, sha(Buffer.from('small file\n')));
      const s = await stats(store, target);
      assert.ok(s.bytesFetched < s.imageBytes / 4, `${tag}: fetched ${s.bytesFetched} of ${s.imageBytes}`);
    }
  });

  test('a registry that stops answering makes a read fail with EIO within the deadline; later the same read succeeds', async () => {
    const store = join(work, 'store-stall');
    // 3 s: the read after the stall fetches 8 MiB in two 4 MiB members through the test's relay, which
    // a loaded 2-core machine has been seen to take longer than 1.5 s for.
    const target = await mount('estargz', store, ['--deadline-ms', '3000']);
    proxy.setRules([{ path: /\/blobs\//, fault: { kind: 'stall' } }]);
    const failed = await readInChild(join(target, 'data/big.bin'));
    assert.equal(failed.ok, false);
    assert.match(failed.error ?? '', /Input\/output error/);
    assert.ok(failed.ms < 15_000, `failed after ${failed.ms} ms`);
    proxy.setRules([]);
    const again = await readInChild(join(target, 'data/big.bin'));
    assert.equal(again.sha256, sha(big), `${again.error}\n${await readFileFs(join(store, 'mount-daemon.log'), 'utf8').catch(() => '')}`);
  });

  test('a stalled read fails within its deadline, the kernel\'s retry of it included; again at once while the stall lasts; after it the same read succeeds', async (t) => {
    // Regression (issue 12, item 5): the read and the kernel's retry of it each waited a whole deadline.
    const deadlineMs = 2000;
    const store = join(work, 'store-stall-once');
    const target = await mount('estargz', store, ['--deadline-ms', String(deadlineMs), '--no-prefetch']);
    proxy.setRules([{ path: /\/blobs\//, fault: { kind: 'stall' } }]);
    const failed = await readInChild(join(target, 'data/big.bin'), 'cat');
    assert.equal(failed.ok, false);
    assert.match(failed.error ?? '', /Input\/output error/);
    assert.ok(failed.ms < 1.5 * deadlineMs, `cat failed after ${failed.ms} ms, deadline ${deadlineMs} ms`);
    const again = await readInChild(join(target, 'data/big.bin'), 'cat');
    assert.equal(again.ok, false);
    assert.ok(again.ms < deadlineMs, `during the stall, cat failed again after ${again.ms} ms: not at once`);
    t.diagnostic(`deadline ${deadlineMs} ms: cat failed after ${failed.ms} ms, again after ${again.ms} ms`);
    proxy.setRules([]);
    const after = await readInChild(join(target, 'data/big.bin'));
    assert.equal(after.sha256, sha(big), `${after.error}\n${await readFileFs(join(store, 'mount-daemon.log'), 'utf8').catch(() => '')}`);
  });

  test('bytes corrupted by the source are refused: EIO, never wrong data', async () => {
    const store = join(work, 'store-corrupt');
    const target = await mount('estargz', store);
    proxy.setRules([{ path: /\/blobs\//, fault: { kind: 'corrupt', atByte: 1000 } }]);
    const r = await readInChild(join(target, 'data/big.bin'));
    proxy.setRules([]);
    assert.equal(r.ok, false);
    assert.match(r.error ?? '', /Input\/output error/);
  });

  test('run --lazy: runc runs the image over the lazy mount with a writable overlay, for gzip and eStargz', async () => {
    for (const tag of ['gzip', 'estargz']) {
      const store = join(work, `store-run-${tag}`);
      const ref = `docker://${proxy.host}/lazy/app:${tag}`;
      const plain = await lazyroot(['--store', store, 'run', '--lazy', ref]);
      assert.equal(plain.code, 0, plain.stderr);
      assert.equal(plain.stdout, 'lazily mounted\n');
      const wrote = await lazyroot(['--store', store, 'run', '--lazy', ref, '--', 'sh', '-c', 'echo new > /data/new.txt && cat /data/new.txt /data/small.txt && exit 5']);
      assert.equal(wrote.code, 5, wrote.stderr);
      assert.equal(wrote.stdout, 'new\nsmall file\n');
      assert.deepEqual(JSON.parse((await lazyroot(['--store', store, 'list', '--json'])).stdout), []);
    }
  });

  test('create --lazy reads /etc/passwd and /etc/group while the mounts are made (what the bundle reads first); a plain mount reads nothing', async () => {
    const sample = await busyboxImageSpec('users');
    await writeOciLayout(join(work, 'layout-users'), [sample]);
    await pushToRegistry(join(work, 'layout-users'), 'lazy/users:gzip', registry.host, { layoutRef: 'users' });
    const ref = `docker://${proxy.host}/lazy/users:gzip`;
    const fetched = async (store: string, dir: string) => ((await stats(store, dir)) as { bytesFetched: number }).bytesFetched;
    // gzip with its span index in the store: the mount itself fetches nothing.
    const plainStore = join(work, 'store-plain-users');
    assert.equal((await lazyroot(['--store', plainStore, 'index', '-q', ref])).code, 0);
    const target = await mount('gzip', plainStore, ['--no-prefetch'], 'lazy/users');
    assert.equal(await fetched(plainStore, target), 0, 'a plain mount fetches nothing before it is read');
    const store = join(work, 'store-users');
    assert.equal((await lazyroot(['--store', store, 'index', '-q', ref])).code, 0);
    const created = await lazyroot(['--store', store, 'create', '--lazy', ref, 'users']);
    assert.equal(created.code, 0, created.stderr);
    try {
      const lower = join(store, 'rootfs', 'users', 'lower');
      assert.ok((await fetched(store, lower)) > 0, 'the spans holding /etc/passwd and /etc/group came in with the mount');
      const root = (JSON.parse(created.stdout) as { root: { path: string } }).root.path;
      assert.match(await readFileFs(join(root, 'etc/passwd'), 'utf8'), /^root:x:0:0:/);
    } finally {
      assert.equal((await lazyroot(['--store', store, 'delete', 'users'])).code, 0);
    }
  });

  test('a mount whose daemon was killed is recovered by the next mount of the directory', async () => {
    const store = join(work, 'store-killed');
    const target = await mount('estargz', store);
    const s = await lazyroot(['--store', store, 'mount', '--stats', '--json', target]);
    const { pid } = JSON.parse(s.stdout) as { pid: number };
    process.kill(pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    assert.equal((await readInChild(join(target, 'etc/motd'))).ok, false, 'the killed mount is stale');
    const again = await lazyroot(['--store', store, 'mount', `docker://${proxy.host}/lazy/app:estargz`, target]);
    assert.equal(again.code, 0, again.stderr);
    assert.equal((await readInChild(join(target, 'etc/motd'))).sha256, sha(Buffer.from('lazily mounted\n')));
  });

  test('a daemon whose mount someone else detached (umount -l) still ends on SIGTERM, and forgets the mount', async () => {
    const store = join(work, 'store-detached');
    const target = await mount('estargz', store, ['--no-prefetch']);
    const { pid } = JSON.parse((await lazyroot(['--store', store, 'mount', '--stats', '--json', target])).stdout) as { pid: number };
    assert.ok(pid > 0);
    await new Promise<void>((resolve, reject) => spawn('umount', ['-l', target]).on('close', (code) => (code === 0 ? resolve() : reject(new Error(`umount -l exited ${code}`)))));
    process.kill(pid, 'SIGTERM');
    const alive = () => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    const until = Date.now() + 20_000;
    while (alive() && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    assert.equal(alive(), false, 'the daemon ended');
    const left = await lazyroot(['--store', store, 'mount', '--stats', target]);
    assert.notEqual(left.code, 0);
    assert.match(left.stderr, /no lazyroot mount there/);
  });

  test('a mountpoint that is not empty is refused with that reason, exit 1', async () => {
    const target = join(work, 'not-empty');
    await mkdir(join(target, 'something'), { recursive: true });
    const r = await lazyroot(['--store', join(work, 'store-nonempty'), 'mount', `docker://${proxy.host}/lazy/app:estargz`, target]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /not-empty: the mountpoint is not empty \(1 entries, e\.g\. "something"\)/);
  });

  test('a second mount of the same image (another process, another mountpoint) reads no TOC: it reuses the parsed TOCs and merged tree in the store', async () => {
    const store = join(work, 'store-second');
    const first = await mount('estargz', store, ['--no-prefetch']);
    // Metadata only (find stats entries; it reads no file's bytes).
    const listing = (dir: string) =>
      new Promise<string>((resolve, reject) =>
        execFile('find', [dir, '-printf', '%P %y %m %U %G %s %T@ %l\\n'], { maxBuffer: 64 << 20 }, (err, out) => (err ? reject(err) : resolve(out.split('\n').sort().join('\n')))),
      );
    const tree = await listing(first);
    // What the mount cost: wall time, the process's CPU, and the main thread's in its two parts.
    const cost = async (target: string) => {
      const r = await lazyroot(['--store', store, 'mount', '--stats', '--json', target]);
      assert.equal(r.code, 0, r.stderr);
      const s = JSON.parse(r.stdout) as Record<string, unknown>;
      for (const k of ['mountMillis', 'mountCpuMillis', 'indexCpuMillis', 'treeCpuMillis']) assert.ok(Number.isInteger(s[k]) && (s[k] as number) >= 0, `${k}: ${r.stdout}`);
      const [index, tree, all] = [s.indexCpuMillis, s.treeCpuMillis, s.mountCpuMillis] as number[];
      // The main thread's parts are parts of the process's whole (each rounded: a millisecond each).
      assert.ok(index! + tree! <= all! + 2, `main thread ${index} + ${tree} ms within the process's ${all} ms`);
    };
    await cost(first);
    const cached = async () => (await readdir(join(store, 'indexes', 'sha256')).catch(() => [] as string[])).filter((n) => /\.(toc|tree)$/.test(n));
    for (let i = 0; i < 100 && (await cached()).length < 4; i++) await new Promise((r) => setTimeout(r, 50));
    // The image has three layers: a parsed TOC for each, and the image's merged tree.
    assert.deepEqual((await cached()).map((n) => n.slice(n.lastIndexOf('.'))).sort(), ['.toc', '.toc', '.toc', '.tree']);
    assert.equal((await lazyroot(['--store', store, 'umount', first])).code, 0);
    mounted.splice(mounted.findIndex((m) => m.target === first), 1);
    // Every blob request fails now: a mount that fetched a footer or a TOC would fail.
    proxy.setRules([{ path: /\/blobs\//, fault: { kind: 'status', status: 500 } }]);
    try {
      const second = await mount('estargz', store, ['--no-prefetch']);
      assert.equal(await listing(second), tree);
      await cost(second);
    } finally {
      proxy.setRules([]);
    }
  });

  test('regression: a mountpoint given as a symlink is mounted at its target, and umount of the link removes that mount', async () => {
    const store = join(work, 'store-link');
    const target = join(work, 'link-target');
    const link = join(work, 'link-to-target');
    await mkdir(target, { recursive: true });
    await symlinkFs(target, link);
    const mounted = await lazyroot(['--store', store, '--json', 'mount', '--no-prefetch', `docker://${proxy.host}/lazy/app:estargz`, link]);
    assert.equal(mounted.code, 0, mounted.stderr);
    assert.equal((JSON.parse(mounted.stdout) as { mountpoint: string }).mountpoint, target);
    const mountinfo = async () => (await readFileFs('/proc/self/mountinfo', 'utf8')).split('\n').map((l) => l.split(' ')[4]);
    assert.ok((await mountinfo()).includes(target), 'mounted at the target');
    assert.equal((await readInChild(join(link, 'etc/motd'))).sha256, sha(Buffer.from('lazily mounted\n')));
    const u = await lazyroot(['--store', store, 'umount', link]);
    assert.equal(u.code, 0, u.stderr);
    assert.equal(u.stdout.trim(), `unmounted ${target}`);
    assert.equal((await mountinfo()).includes(target), false, 'no mount left at the target');
  });
});

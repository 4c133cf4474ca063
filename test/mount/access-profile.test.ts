import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { access, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { dir, file, symlink, type TarEntry } from '../helpers/tar-builder.js';
import { buildEstargzImage, incompressible, type EstargzImage } from '../helpers/estargz.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry'] });
if (missing.length && process.env.CI) throw new Error(`CI: access profile tests need ${missing.join(', ')}`);

const KiB = 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function sha256sumInChild(path: string): Promise<string> {
  const child = spawn('sha256sum', [path], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) => child.on('close', (code) => (code === 0 ? resolve(stdout.split(' ')[0]!) : reject(new Error(`sha256sum ${path}: ${stderr}`)))));
}

interface Stats {
  bytesFetched: number;
  bytesPrefetched: number;
  profileBytes: number;
  recording: 'no' | 'yes' | 'written';
  layers: Array<{ digest: string; requests: number; prefetchRequests: number; bytesPrefetched: number }>;
}
interface Profile {
  image: string;
  recordMillis: number;
  layers: Array<{ digest: string; size: number; ranges: Array<[number, number]>; firstRead?: number[] }>;
}

// 48 files of 64 KiB that do not compress, so that files 16 apart lie a MiB apart in the blob.
const files = Array.from({ length: 48 }, (_, i) => ({ path: `data/f${String(i).padStart(2, '0')}.bin`, bytes: incompressible(64 * KiB, `profile-${i}`) }));
const busybox = readFileSync('/bin/busybox');
const layers: TarEntry[][] = [
  [dir('bin'), file('bin/busybox', busybox, { mode: 0o755 }), symlink('bin/sh', 'busybox')],
  [dir('data'), ...files.map((f) => file(f.path, f.bytes))],
];
/** What "the workload" reads, in this order: three files far apart in the data layer, the last in the blob first. */
const workload = [files[40]!, files[3]!, files[20]!];

describe('recorded access profiles: the first mount records what was read, later mounts fetch it ahead', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let registry: TestRegistry;
  let proxy: FaultProxy;
  let image: EstargzImage;
  let imageHex: string;
  const mounted: Array<{ target: string; store: string }> = [];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-profile-'));
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.host);
    image = await buildEstargzImage(layers, { config: { Cmd: ['/bin/sh'], Env: ['PATH=/bin'] } });
    imageHex = sha(image.configBytes); // the image ID: its config digest
    await registry.pushImage('profile/app', 'v1', image);
  });

  after(async () => {
    for (const m of mounted) await lazyroot(['--store', m.store, 'umount', m.target]);
    await proxy?.close();
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  const imageRef = () => `docker://${proxy.host}/profile/app:v1`;
  const profileFile = (store: string) => join(store, 'indexes', 'sha256', `${imageHex}.profile`);

  async function mount(store: string, extra: string[]): Promise<string> {
    const target = join(work, `mnt-${mounted.length}`);
    await mkdir(target, { recursive: true });
    const r = await lazyroot(['--store', store, 'mount', ...extra, imageRef(), target]);
    assert.equal(r.code, 0, r.stderr);
    mounted.push({ target, store });
    return target;
  }
  async function umount(store: string, target: string): Promise<void> {
    const r = await lazyroot(['--store', store, 'umount', target]);
    assert.equal(r.code, 0, r.stderr);
    mounted.splice(mounted.findIndex((m) => m.target === target), 1);
  }
  async function stats(store: string, target: string): Promise<Stats> {
    const r = await lazyroot(['--store', store, 'mount', '--stats', '--json', target]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as Stats;
  }
  /** Polls the mount's stats until its recording is written (or 15 s passed); the last stats. */
  async function recordingWritten(store: string, target: string): Promise<Stats> {
    let s: Stats;
    const began = Date.now();
    do {
      await sleep(200);
      s = await stats(store, target);
    } while (s.recording !== 'written' && Date.now() - began < 15_000);
    return s;
  }
  /** Blob requests the proxy saw from `from` on. */
  function blobRequests(from: number): string[] {
    return proxy.log.slice(from).filter((line) => /^GET \/v2\/profile\/app\/blobs\//.test(line));
  }

  test('recorded on the first mount, shown by `profile`, fetched ahead by the next mount in another store: the workload then fetches nothing', async () => {
    const storeA = join(work, 'store-a');
    // Prefetch held back, so what is fetched is what reads and the profile ask for.
    const a = await mount(storeA, ['--prefetch-delay-ms', '600000', '--record-ms', '2000']);
    for (const f of workload) {
      assert.equal(await sha256sumInChild(join(a, f.path)), sha(f.bytes));
      await sleep(20); // first-read times a few milliseconds apart at least
    }
    // The recording ends after --record-ms and is written while the mount goes on.
    assert.equal((await recordingWritten(storeA, a)).recording, 'written');
    await umount(storeA, a);

    const shown = await lazyroot(['--store', storeA, '--json', 'profile', imageRef()]);
    assert.equal(shown.code, 0, shown.stderr);
    const profile = JSON.parse(shown.stdout) as Profile;
    assert.equal(profile.image, `sha256:${imageHex}`);
    const data = profile.layers.find((l) => l.digest === image.layerDigests[1]);
    assert.ok(data, `the data layer is in the profile: ${shown.stdout}`);
    assert.ok(data.ranges.length >= 1 && data.ranges.every(([s0, e]) => e > s0 && e <= data.size));
    // When each range was first read, kept so that the next mount fetches the soonest first: the
    // files far apart are three ranges in blob order (f03, f20, f40), read f40 first, then f03, then f20.
    assert.equal(data.ranges.length, 3, JSON.stringify(data.ranges));
    assert.equal(data.firstRead?.length, 3, `one first-read time per range: ${shown.stdout}`);
    const [t03, t20, t40] = data.firstRead;
    assert.ok(t40! < t03! && t03! < t20!, `first reads f03 ${t03} ms, f20 ${t20} ms, f40 ${t40} ms`);
    const text = await lazyroot(['--store', storeA, 'profile', imageRef()]);
    assert.match(text.stdout, /access profile of .* recorded/);
    assert.match(text.stdout, new RegExp(image.layerDigests[1]!.slice(0, 19)));

    // Another store (another machine) with only the profile: the mount fetches those ranges at once…
    const storeB = join(work, 'store-b');
    await mkdir(dirname(profileFile(storeB)), { recursive: true });
    await copyFile(profileFile(storeA), profileFile(storeB));
    const beforeB = proxy.log.length;
    const b = await mount(storeB, ['--prefetch-delay-ms', '600000']);
    let sb: Stats;
    const waited = Date.now();
    do {
      sb = await stats(storeB, b);
      if (sb.bytesPrefetched >= sb.profileBytes && sb.profileBytes > 0) break;
      await sleep(100);
    } while (Date.now() - waited < 15_000);
    assert.ok(sb.profileBytes > 0 && sb.bytesPrefetched >= sb.profileBytes, JSON.stringify(sb));
    assert.equal(sb.recording, 'no', 'a profile existed: nothing recorded');
    // …in few requests (the three files lie far apart: at most one request each)…
    const dataLayer = sb.layers.find((l) => l.digest === image.layerDigests[1])!;
    assert.ok(dataLayer.prefetchRequests >= 1 && dataLayer.prefetchRequests <= workload.length, `requests ${dataLayer.prefetchRequests}`);
    // …the range read first going out first, though it is the last in the blob.
    const rangeRequests = blobRequests(beforeB)
      .filter((line) => line.includes(image.layerDigests[1]!))
      .map((line) => /range=bytes=(\d+)-(\d+)/.exec(line))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => [Number(m[1]), Number(m[2]) + 1] as const);
    const firstBringing = (range: [number, number]) => rangeRequests.findIndex(([s0, e]) => s0 <= range[0] && range[1] <= e);
    const [r03, , r40] = data.ranges.map(firstBringing);
    assert.ok(r40! >= 0 && r03! >= 0 && r40! < r03!, `requests in order sent: ${JSON.stringify(rangeRequests)}; profile ranges ${JSON.stringify(data.ranges)}`);
    // …and the workload's reads then fetch nothing.
    const mark = proxy.log.length;
    for (const f of workload) assert.equal(await sha256sumInChild(join(b, f.path)), sha(f.bytes));
    assert.deepEqual(blobRequests(mark), [], 'the profile brought every byte the workload read');
    const after = await stats(storeB, b);
    assert.equal(after.bytesFetched, sb.bytesFetched, 'no demand fetch');
    await umount(storeB, b);

    // `profile --forget` removes it; the image going removes it too.
    const forgot = await lazyroot(['--store', storeB, 'profile', '--forget', imageRef()]);
    assert.equal(forgot.code, 0, forgot.stderr);
    await assert.rejects(access(profileFile(storeB)));
    assert.equal((await lazyroot(['--store', storeA, 'rmi', imageRef()])).code, 0);
    await assert.rejects(access(profileFile(storeA)), 'rmi removed the profile with its image');
  });

  test('--no-prefetch fetches no profile ahead; a profile that does not parse or lies about ranges is ignored, reads stay right', async () => {
    const store = join(work, 'store-c');
    await mkdir(dirname(profileFile(store)), { recursive: true });
    // Ranges past the blob's end: the whole profile is refused (named in the daemon's log), the mount works.
    const lying = { version: 1, image: `sha256:${imageHex}`, recordedAt: 'x', recordMillis: 1, layers: [{ digest: image.layerDigests[1], size: 10, ranges: [[0, 1 << 30]] }] };
    await writeFile(profileFile(store), JSON.stringify(lying));
    const c = await mount(store, ['--prefetch-delay-ms', '600000', '--no-record']);
    assert.equal(await sha256sumInChild(join(c, files[7]!.path)), sha(files[7]!.bytes));
    const sc = await stats(store, c);
    assert.equal(sc.profileBytes, 0);
    assert.equal(sc.bytesPrefetched, 0);
    await umount(store, c);
    const log = await readFile(join(store, 'mount-daemon.log'), 'utf8').catch(() => '');
    assert.match(log, /access profile .* ignored: layer sha256:[0-9a-f]+: range \[0,1073741824\] out of order or outside the blob's 10 bytes/);

    // First-read times that are not one per range: refused the same way, and named.
    const size = image.layers[1]!.blob.length;
    await writeFile(profileFile(store), JSON.stringify({ ...lying, layers: [{ digest: image.layerDigests[1], size, ranges: [[0, 1000]], firstRead: [1, 2] }] }));
    const shownTimes = await lazyroot(['--store', store, 'profile', imageRef()]);
    assert.equal(shownTimes.code, 1);
    assert.match(shownTimes.stderr, /access profile .* ignored: layer sha256:[0-9a-f]+: "firstRead" is not one time per range/);

    await writeFile(profileFile(store), '{not json');
    const shown = await lazyroot(['--store', store, 'profile', imageRef()]);
    assert.equal(shown.code, 1);
    assert.match(shown.stderr, /access profile .*\.profile ignored/);

    // A valid profile is not fetched with --no-prefetch.
    await writeFile(profileFile(store), JSON.stringify({ ...lying, layers: [{ digest: image.layerDigests[1], size: image.layers[1]!.blob.length, ranges: [[0, 200 * KiB]] }] }));
    const d = await mount(store, ['--no-prefetch']);
    await sleep(300);
    const sd = await stats(store, d);
    assert.equal(sd.profileBytes, 0);
    assert.equal(sd.bytesPrefetched, 0);
    await umount(store, d);
  });

  // Last: the artifact it pushes stays in the registry for any later mount of the image.
  test('a profile pushed with `index --push` reaches another machine though the eStargz layers need no index: its first mount fetches it ahead', async () => {
    const storeP = join(work, 'store-p');
    const p = await mount(storeP, ['--prefetch-delay-ms', '600000', '--record-ms', '1000']);
    for (const f of workload) assert.equal(await sha256sumInChild(join(p, f.path)), sha(f.bytes));
    await recordingWritten(storeP, p);
    await umount(storeP, p);
    const pushed = await lazyroot(['--store', storeP, '--json', 'index', '--push', imageRef()]);
    assert.equal(pushed.code, 0, pushed.stderr);
    assert.deepEqual(((r: { indexes: number; profile: boolean }) => [r.indexes, r.profile])(JSON.parse(pushed.stdout)), [0, true], 'no span index (eStargz), the profile');

    // Without looking in the registry: no profile, nothing fetched ahead.
    const storeR = join(work, 'store-r');
    const r = await mount(storeR, ['--prefetch-delay-ms', '600000', '--no-remote-index', '--no-record']);
    await sleep(500);
    assert.equal((await stats(storeR, r)).profileBytes, 0);
    await umount(storeR, r);

    // Another machine, nothing local: the mount finds the profile beside the image, keeps it, fetches it ahead…
    const storeQ = join(work, 'store-q');
    const q = await mount(storeQ, ['--prefetch-delay-ms', '600000']);
    let sq: Stats;
    const waited = Date.now();
    do {
      sq = await stats(storeQ, q);
      if (sq.profileBytes > 0 && sq.bytesPrefetched >= sq.profileBytes) break;
      await sleep(100);
    } while (Date.now() - waited < 15_000);
    assert.ok(sq.profileBytes > 0 && sq.bytesPrefetched >= sq.profileBytes, JSON.stringify(sq));
    assert.deepEqual(await readFile(profileFile(storeQ)), await readFile(profileFile(storeP)), 'kept as it was pushed');
    // …and the workload's reads then fetch nothing.
    const mark = proxy.log.length;
    for (const f of workload) assert.equal(await sha256sumInChild(join(q, f.path)), sha(f.bytes));
    assert.deepEqual(blobRequests(mark), [], 'the registry profile brought every byte the workload read');
    await umount(storeQ, q);
  });
});

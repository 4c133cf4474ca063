import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { buildImage, type ImageSpec } from '../helpers/image-builder.js';
import { buildTar, dir, file, symlink, type TarEntry } from '../helpers/tar-builder.js';
import { buildEstargzImage, incompressible, type EstargzImage } from '../helpers/estargz.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';
import { Store } from '../../src/store/store.js';

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry', 'runc'] });
if (missing.length && process.env.CI) throw new Error(`CI: prefetch tests need ${missing.join(', ')}`);

const MiB = 1 << 20;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Reads a file of the mount from another process (this one runs the proxy: no spawnSync). */
function readInChild(path: string): Promise<string> {
  const child = spawn('sha256sum', [path], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolvePromise, reject) =>
    child.on('close', (code) => (code === 0 ? resolvePromise(stdout.split(' ')[0]!) : reject(new Error(`sha256sum ${path}: ${stderr}`)))),
  );
}

function shInChild(command: string): Promise<string> {
  const child = spawn('sh', ['-c', command], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolvePromise, reject) => child.on('close', (code) => (code === 0 ? resolvePromise(stdout) : reject(new Error(`${command}: ${stderr}`)))));
}

interface LayerStats {
  digest: string;
  size: number;
  present: number;
  complete: boolean;
  source: string;
  prefetch: string;
  bytesFetched: number;
  bytesPrefetched: number;
  evictedBytes: number;
  hits: number;
}
interface Stats {
  layers: LayerStats[];
  complete: boolean;
  bytesFetched: number;
  bytesPrefetched: number;
  bytesStreamed: number;
  bytesIndexed: number;
  imageBytes: number;
  partialBytes: number;
  rangeSupport: string;
  prefetch: boolean;
  prefetchMillis?: number;
}

const busybox = readFileSync('/bin/busybox');
const baseEntries: TarEntry[] = [
  dir('bin'),
  file('bin/busybox', busybox, { mode: 0o755 }),
  ...['sh', 'cat', 'ls'].map((a) => symlink(`bin/${a}`, 'busybox')),
  dir('etc'),
  dir('tmp', { mode: 0o1777 }),
];
const hot = incompressible(3 * MiB, 'hot');
const big = incompressible(24 * MiB, 'big');
const dataEntries: TarEntry[] = [
  dir('data'),
  // Prioritized: before the landmark, at the start of the eStargz blob.
  file('data/hot.bin', hot),
  file('.prefetch.landmark', Buffer.from([0xf])),
  file('data/big.bin', big),
  file('data/small.txt', 'small file\n'),
];
const topEntries: TarEntry[] = [dir('etc'), file('etc/motd', 'prefetched\n')];

describe('background prefetch, Range-ignoring registries and the bounded cache', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let registry: TestRegistry;
  let proxy: FaultProxy;
  let stargz: EstargzImage;
  let gzipDigests: string[];
  const mounted: Array<{ target: string; store: string }> = [];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-prefetch-'));
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.host);
    stargz = await buildEstargzImage([baseEntries, dataEntries, topEntries], {
      chunkSize: 512 * 1024,
      config: { Cmd: ['/bin/cat', '/etc/motd'], Env: ['PATH=/bin'] },
    });
    await registry.pushImage('prefetch/app', 'estargz', stargz);
    const spec: ImageSpec = {
      layers: [
        { tar: await buildTar(baseEntries), compression: 'gzip' },
        { tar: await buildTar(dataEntries), compression: 'gzip' },
        { tar: await buildTar(topEntries), compression: 'gzip' },
      ],
      config: { config: { Cmd: ['/bin/cat', '/etc/motd'], Env: ['PATH=/bin'] } },
    };
    const gz = buildImage(spec);
    gzipDigests = gz.layers.map((l) => l.descriptor.digest);
    await registry.pushImage('prefetch/app', 'gzip', gz);
  });

  after(async () => {
    for (const m of mounted) await lazyroot(['--store', m.store, 'umount', m.target]);
    await proxy?.close();
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  const ref = (tag: string) => `docker://${proxy.host}/prefetch/app:${tag}`;

  async function mount(tag: string, store: string, extra: string[] = []): Promise<string> {
    const target = join(work, `mnt-${tag}-${mounted.length}`);
    await mkdir(target, { recursive: true });
    const r = await lazyroot(['--store', store, 'mount', ...extra, ref(tag), target]);
    assert.equal(r.code, 0, r.stderr);
    mounted.push({ target, store });
    return target;
  }

  async function umount(store: string, target: string): Promise<void> {
    assert.equal((await lazyroot(['--store', store, 'umount', target])).code, 0);
    mounted.splice(mounted.findIndex((m) => m.target === target), 1);
  }

  async function stats(store: string, target: string): Promise<Stats> {
    const r = await lazyroot(['--store', store, 'mount', '--stats', '--json', target]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as Stats;
  }

  async function untilComplete(store: string, target: string, timeoutMs = 30_000): Promise<{ stats: Stats; ms: number }> {
    const began = Date.now();
    for (;;) {
      const s = await stats(store, target);
      if (s.complete) return { stats: s, ms: Date.now() - began };
      if (Date.now() - began > timeoutMs) assert.fail(`prefetch did not complete in ${timeoutMs} ms: ${JSON.stringify(s.layers)}`);
      await sleep(100);
    }
  }

  /** Every layer blob is in blobs/, hashes to its digest, and has its row in meta.db. */
  async function assertLayersStored(storeDir: string, digests: string[]): Promise<void> {
    const store = await Store.open(storeDir);
    try {
      const rows = new Set(store.db.knownBlobs().map((b) => b.digest));
      for (const d of digests) {
        assert.equal(`sha256:${sha(await readFile(store.blobs.path(d)))}`, d, `${d} in blobs/ and verified`);
        assert.ok(rows.has(d), `${d} has its blobs row`);
      }
    } finally {
      store.close();
    }
  }

  /**
   * Every blob local: `run` (kernel overlayfs) downloads no layer, and `create --lazy` takes
   * kernel overlayfs all the same. Returns where the proxy log stood before.
   */
  async function assertLocalPathsFetchNothing(store: string, imageRef: string): Promise<number> {
    const before = proxy.log.length;
    const run = await lazyroot(['--store', store, 'run', imageRef]);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, 'prefetched\n');
    assert.deepEqual(blobRequests(before), [], 'run (kernel overlayfs) downloaded no layer');
    const created = await lazyroot(['--store', store, 'create', '--lazy', imageRef, 'after-prefetch']);
    assert.equal(created.code, 0, created.stderr);
    const listed = JSON.parse((await lazyroot(['--store', store, 'list', '--json'])).stdout) as Array<{ id: string; driver: string }>;
    assert.equal(listed.find((r) => r.id === 'after-prefetch')?.driver, 'overlay', 'every blob local: --lazy takes kernel overlayfs');
    assert.equal((await lazyroot(['--store', store, 'delete', 'after-prefetch'])).code, 0);
    assert.deepEqual(blobRequests(before), []);
    return before;
  }

  /** Blob requests the proxy saw from `from` on: [digest, range start | undefined]. */
  function blobRequests(from: number): Array<{ digest: string; start: number | undefined }> {
    return proxy.log.slice(from).flatMap((line) => {
      const m = /^GET \/v2\/prefetch\/app\/blobs\/(sha256:[a-f0-9]{64})(?: range=bytes=(\d+)-)?/.exec(line);
      return m ? [{ digest: m[1]!, start: m[2] === undefined ? undefined : Number(m[2]) }] : [];
    });
  }

  test('eStargz: prefetch fetches the prioritized region first, completes every layer, and `run` afterwards downloads no layer', async () => {
    const store = join(work, 'store-estargz');
    const mark = proxy.log.length;
    const target = await mount('estargz', store, ['--prefetch-delay-ms', '200']);
    const mountedAt = proxy.log.length;
    const { stats: done, ms } = await untilComplete(store, target);
    console.log(`# eStargz: prefetch completed ${(done.imageBytes / MiB).toFixed(1)} MiB ${ms} ms after mount (daemon: ${done.prefetchMillis} ms)`);
    assert.ok(done.layers.every((l) => l.complete && l.source === 'ranges' && l.present === l.size));
    // Each layer's footer and TOC come in one request for the blob's last 1 % (at least 64 KiB).
    const tails = done.layers.reduce((n, l) => n + Math.min(l.size, Math.max(64 * 1024, Math.ceil(l.size / 100))), 0);
    assert.ok(done.bytesFetched <= tails, `no file was read: only footers and TOCs were fetched on demand (${done.bytesFetched} bytes, the layers' tails ${tails})`);
    assert.ok(done.bytesPrefetched > 0 && done.bytesPrefetched <= done.imageBytes, `prefetched ${done.bytesPrefetched} of ${done.imageBytes}`);
    await assertLayersStored(store, stargz.layerDigests);

    // The data layer: its footer and TOC (at the end), then the prioritized region, fetched ahead while the
    // mount is made, then the rest: every request inside the prioritized region before any after it.
    const data = stargz.layerDigests[1]!;
    const landmark = stargz.prioritizedEnd[1]!;
    assert.ok(landmark > 2 * MiB, 'the prioritized region is bigger than a prefetch request');
    const all = blobRequests(mark)
      .filter((r) => r.digest === data)
      .map((r) => r.start!);
    const starts = all.slice(all.findIndex((s) => s < landmark));
    assert.equal(starts[0], 0, 'the prioritized region comes first');
    assert.ok(mountedAt > mark);
    const lastPrioritized = starts.reduce((last, s, i) => (s < landmark ? i : last), -1);
    const firstOther = starts.findIndex((s) => s >= landmark);
    assert.ok(lastPrioritized < firstOther, `prioritized first: ${starts.join(' ')}`);
    assert.ok(
      blobRequests(mark)
        .filter((r) => stargz.layerDigests.includes(r.digest))
        .every((r) => r.start !== undefined),
      'only ranged requests for layers',
    );

    assert.equal(await readInChild(join(target, 'data/big.bin')), sha(big), 'reads are served from the promoted blobs');
    await umount(store, target);

    const before = await assertLocalPathsFetchNothing(store, ref('estargz'));

    // And `mount` again: kernel overlayfs over the unpacked layers, no daemon, nothing fetched;
    // `clean` leaves what it uses alone; `umount` takes it down.
    const again = join(work, 'mnt-estargz-overlay');
    await mkdir(again, { recursive: true });
    const m = await lazyroot(['--store', store, '--json', 'mount', ref('estargz'), again]);
    assert.equal(m.code, 0, m.stderr);
    assert.deepEqual(JSON.parse(m.stdout), { mountpoint: again, driver: 'overlay' });
    const fstype = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.split(' ')[4] === again)?.split(' - ')[1]?.split(' ')[0];
    assert.equal(fstype, 'overlay');
    assert.equal((await lazyroot(['--store', store, 'clean'])).code, 0);
    assert.equal(await readFile(join(again, 'etc/motd'), 'utf8'), 'prefetched\n');
    const st = JSON.parse((await lazyroot(['--store', store, '--json', 'mount', '--stats', again])).stdout) as { driver: string; bytesFetched: number; complete: boolean };
    assert.deepEqual([st.driver, st.bytesFetched, st.complete], ['overlay', 0, true]);
    assert.equal((await lazyroot(['--store', store, 'umount', again])).code, 0);
    assert.equal((await readFile('/proc/self/mountinfo', 'utf8')).split('\n').some((l) => l.split(' ')[4] === again), false);
    assert.deepEqual(blobRequests(before), []);
  });

  test('gzip: a layer streamed to build its index is kept; with a stored index the spans are prefetched; then `run` downloads no layer', async () => {
    // No index yet: the mount streams each layer once to index it, and keeps it.
    const kept = join(work, 'store-gzip-kept');
    const t1 = await mount('gzip', kept);
    const s1 = await stats(kept, t1);
    assert.ok(s1.complete, 'every layer complete at once');
    assert.equal(s1.bytesPrefetched, 0);
    assert.equal(s1.bytesIndexed, s1.imageBytes, 'what the index pass downloaded is counted');
    await assertLayersStored(kept, gzipDigests);
    await umount(kept, t1);

    // The same with --no-prefetch: the streamed layers are kept all the same, and reads fetch nothing.
    const noPrefetch = join(work, 'store-gzip-kept-noprefetch');
    const t0 = await mount('gzip', noPrefetch, ['--no-prefetch']);
    const mark = proxy.log.length;
    assert.equal(await readInChild(join(t0, 'etc/motd')), sha(Buffer.from('prefetched\n')));
    const s0 = await stats(noPrefetch, t0);
    assert.ok(s0.complete);
    assert.equal(s0.bytesIndexed, s0.imageBytes);
    assert.equal(s0.bytesFetched, 0, 'the read was served from the kept blob');
    assert.deepEqual(blobRequests(mark), []);
    await assertLayersStored(noPrefetch, gzipDigests);
    await umount(noPrefetch, t0);

    // An index built beforehand (`lazyroot index`): nothing downloaded at mount, spans prefetched after.
    const store = join(work, 'store-gzip');
    assert.equal((await lazyroot(['--store', store, 'index', ref('gzip')])).code, 0);
    const target = await mount('gzip', store, ['--prefetch-delay-ms', '200']);
    const { stats: done, ms } = await untilComplete(store, target);
    console.log(`# gzip: prefetch completed ${(done.imageBytes / MiB).toFixed(1)} MiB ${ms} ms after mount (daemon: ${done.prefetchMillis} ms)`);
    assert.equal(done.bytesPrefetched, done.imageBytes, 'every span prefetched once');
    await assertLayersStored(store, gzipDigests);
    await umount(store, target);

    await assertLocalPathsFetchNothing(store, ref('gzip'));
  });

  test('--no-prefetch fetches nothing beyond what is read', async () => {
    const store = join(work, 'store-noprefetch');
    const mark = proxy.log.length;
    const target = await mount('estargz', store, ['--no-prefetch', '--prefetch-delay-ms', '0']);
    const atMount = blobRequests(mark).length; // footer and TOC of each layer
    assert.equal(await readInChild(join(target, 'data/small.txt')), sha(Buffer.from('small file\n')));
    const afterRead = blobRequests(mark).length;
    assert.ok(afterRead - atMount <= 1, `one request for the small file (${afterRead - atMount})`);
    await sleep(1500);
    const s = await stats(store, target);
    assert.equal(s.prefetch, false);
    assert.equal(s.bytesPrefetched, 0);
    assert.ok(s.layers.every((l) => l.prefetch === 'off' && !l.complete));
    assert.equal(blobRequests(mark).length, afterRead, 'no request after the read');
    assert.ok(s.bytesFetched < s.imageBytes / 20, `fetched ${s.bytesFetched} of ${s.imageBytes}`);
    await umount(store, target);
  });

  test('a registry that ignores Range: each blob is streamed into the store once and every read is served from it', async () => {
    const store = join(work, 'store-ignore-range');
    proxy.setRules([{ method: 'GET', path: /\/blobs\//, fault: { kind: 'ignore-range' } }]);
    try {
      const mark = proxy.log.length;
      const target = await mount('estargz', store, ['--no-prefetch']);
      for (let i = 0; i < 3; i++) {
        assert.equal(await readInChild(join(target, 'data/big.bin')), sha(big));
        assert.equal(await readInChild(join(target, 'data/hot.bin')), sha(hot));
        assert.equal(await readInChild(join(target, 'etc/motd')), sha(Buffer.from('prefetched\n')));
        assert.equal(await readInChild(join(target, 'bin/busybox')), sha(busybox));
      }
      const requests = blobRequests(mark).filter((r) => stargz.layerDigests.includes(r.digest));
      for (const [i, d] of stargz.layerDigests.entries()) {
        const mine = requests.filter((r) => r.digest === d);
        // Each blob's first ranged request is answered with the whole blob, which is kept: one request per blob.
        assert.equal(mine.length, 1, `layer ${i + 1}: one request, its whole-blob answer kept`);
      }
      const s = await stats(store, target);
      assert.equal(s.rangeSupport, 'ignored');
      assert.ok(s.layers.every((l) => l.complete && l.source === 'streamed'));
      assert.equal(s.bytesStreamed, s.imageBytes);
      const text = await lazyroot(['--store', store, 'mount', '--stats', target]);
      assert.equal(text.stdout.match(/kept whole \(the registry answered a range with the whole blob\)/g)?.length, 3, text.stdout);
      await assertLayersStored(store, stargz.layerDigests);
      await umount(store, target);
    } finally {
      proxy.setRules([]);
    }
  });

  test('--cache-max-bytes: partial bytes stay under the bound, evicted ranges are fetched again, data stays right', async () => {
    const bound = 4 * MiB;
    const store = join(work, 'store-bounded');
    const target = await mount('estargz', store, ['--no-prefetch', '--cache-max-bytes', String(bound)]);
    assert.equal(await readInChild(join(target, 'data/big.bin')), sha(big));
    const first = await stats(store, target);
    assert.ok(first.partialBytes <= bound, `kept ${first.partialBytes} > ${bound}`);
    const data = first.layers[1]!;
    assert.ok(data.evictedBytes >= big.length - bound - MiB, `evicted ${data.evictedBytes}`);
    await umount(store, target);
    // Mounted again (no page cache): the most recently read part, kept under the bound, is served from disk…
    const again = await mount('estargz', store, ['--no-prefetch', '--cache-max-bytes', String(bound)]);
    const toc = (await stats(store, again)).layers[1]!.bytesFetched; // footer and TOC, read at mount
    const tail = await shInChild(`dd if=${join(again, 'data/big.bin')} bs=512K skip=47 count=1 status=none | sha256sum`);
    assert.equal(tail.split(' ')[0], sha(big.subarray(big.length - 512 * 1024)));
    const kept = await stats(store, again);
    // The one thing fetched: the gzip member before big.bin's data, which ends with its tar header, checked
    // against the TOC once per file per mount (here hot.bin's last 512 KiB chunk, evicted since).
    assert.ok(kept.layers[1]!.bytesFetched - toc <= 600 * 1024, `the kept tail came from disk: fetched ${kept.layers[1]!.bytesFetched - toc} bytes`);
    assert.ok(kept.layers[1]!.hits > 0);
    // …and the evicted rest is fetched again, verified, right.
    assert.equal(await readInChild(join(again, 'data/big.bin')), sha(big));
    const second = await stats(store, again);
    assert.ok(second.layers[1]!.bytesFetched >= big.length - bound - MiB, `fetched again ${second.layers[1]!.bytesFetched}`);
    assert.ok(second.partialBytes <= bound);
    await umount(store, again);

    // With prefetch on, the bound holds too: small layers complete (and leave the bound), the big one waits.
    const store2 = join(work, 'store-bounded-prefetch');
    const t2 = await mount('estargz', store2, ['--cache-max-bytes', String(bound), '--prefetch-delay-ms', '0']);
    let s: Stats;
    const began = Date.now();
    // Until the small layers are complete and the big one has filled the room it has and waits
    // (it may still be fetching its last window under the bound when the small ones are done);
    // the bound holds at every look.
    do {
      await sleep(200);
      s = await stats(store2, t2);
      assert.ok(s.partialBytes <= bound, `kept ${s.partialBytes} > ${bound}`);
    } while (!(s.layers[0]!.complete && s.layers[2]!.complete && s.layers[1]!.prefetch === 'waiting') && Date.now() - began < 10_000);
    assert.ok(s.layers[0]!.complete && s.layers[2]!.complete, JSON.stringify(s.layers));
    assert.equal(s.layers[1]!.complete, false);
    assert.equal(s.layers[1]!.prefetch, 'waiting');
    assert.equal(s.layers[1]!.evictedBytes, 0, 'prefetch never evicts');
    assert.equal(await readInChild(join(t2, 'data/small.txt')), sha(Buffer.from('small file\n')));
    await umount(store2, t2);
  });
});

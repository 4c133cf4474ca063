/**
 * Lazy mounts through a registry mirror configured in a hosts.toml: a real
 * docker-registry in proxy mode (a pull-through cache) in front of another
 * docker-registry (the upstream), both on loopback. A cold cache answers a
 * Range request with 200 and the whole blob; a warm one with 206. Then a
 * mirror that is down, and one that serves corrupt bytes (the fault relay in
 * front of the cache), are passed over and the bytes still come right from
 * the upstream.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { freePort } from '../helpers/free-port.js';
import { buildImage } from '../helpers/image-builder.js';
import { buildTar, dir, file, symlink, type TarEntry } from '../helpers/tar-builder.js';
import { buildEstargzImage, incompressible, type EstargzImage } from '../helpers/estargz.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry'] });
if (missing.length && process.env.CI) throw new Error(`CI: mirror mount tests need ${missing.join(', ')}`);

const MiB = 1 << 20;
const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

/** sha256 of a file of the mount, read by another process (this one runs the fault relay). */
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

interface MirrorStats {
  mirror: string;
  served: number;
  failures: number;
  lies: number;
}
interface Stats {
  bytesFetched: number;
  bytesStreamed: number;
  imageBytes: number;
  rangeSupport: string;
  mirrors?: MirrorStats[];
  layers: Array<{ digest: string; source: string; requests: number; size: number; bytesFetched: number; bytesStreamed: number }>;
}

const busybox = readFileSync('/bin/busybox');
const notes = incompressible(3 * MiB, 'notes');
const big = incompressible(6 * MiB, 'big');
const layerEntries: TarEntry[][] = [
  [dir('bin'), file('bin/busybox', busybox, { mode: 0o755 }), symlink('bin/sh', 'busybox'), dir('etc')],
  [dir('data'), file('data/notes.bin', notes), file('data/big.bin', big), file('data/small.txt', 'small file\n')],
  [dir('etc'), file('etc/motd', 'through a mirror\n')],
];
/** What each mount reads, with the bytes it must see. */
const expected: Array<[string, string]> = [
  ['etc/motd', sha('through a mirror\n')],
  ['data/small.txt', sha('small file\n')],
  ['data/notes.bin', sha(notes)],
  ['bin/busybox', sha(busybox)],
];

describe('lazy mounts through a pull-through cache configured as a mirror', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let upstream: TestRegistry;
  let cache: TestRegistry;
  let stargz: EstargzImage;
  let gzipDigests: string[];
  let relay: FaultProxy;
  const mounted: Array<{ target: string; store: string }> = [];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-mirror-mount-'));
    upstream = await startRegistry();
    stargz = await buildEstargzImage(layerEntries, { chunkSize: 256 * 1024, config: { Cmd: ['/bin/sh'], Env: ['PATH=/bin'] } });
    await upstream.pushImage('mirror/app', 'estargz', stargz);
    const gz = buildImage({ layers: await Promise.all(layerEntries.map(async (entries) => ({ tar: await buildTar(entries), compression: 'gzip' as const }))) });
    gzipDigests = gz.layers.map((l) => l.descriptor.digest);
    await upstream.pushImage('mirror/app', 'gzip', gz);
    cache = await startRegistry({ proxyRemoteUrl: upstream.url });
    relay = await startFaultProxy(cache.host);
  });

  after(async () => {
    for (const m of mounted) await lazyroot(['--store', m.store, 'umount', m.target]);
    await relay?.close();
    await cache?.stop();
    await upstream?.stop();
    await rm(work, { recursive: true, force: true });
  });

  const ref = (tag: string) => `docker://${upstream.host}/mirror/app:${tag}`;

  /** A hosts dir whose hosts.toml sends the upstream's traffic to `mirror` first. */
  async function hostsDir(name: string, mirror: string): Promise<string> {
    const d = join(work, `hosts-${name}`);
    await mkdir(join(d, upstream.host), { recursive: true });
    await writeFile(join(d, upstream.host, 'hosts.toml'), `server = "${upstream.url}"\n\n[host."http://${mirror}"]\n  capabilities = ["pull", "resolve"]\n`);
    return d;
  }

  async function mount(tag: string, store: string, hosts: string, extra: string[] = []): Promise<string> {
    const target = join(work, `mnt-${tag}-${mounted.length}`);
    await mkdir(target, { recursive: true });
    // The global --hosts-dir, before the command.
    const r = await lazyroot(['--store', store, '--hosts-dir', hosts, 'mount', '--no-prefetch', ...extra, ref(tag), target]);
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

  async function readAllExpected(target: string): Promise<void> {
    for (const [path, digest] of expected) assert.equal(await readInChild(join(target, path)), digest, path);
  }

  /** GETs of each blob that the upstream answered. */
  async function upstreamBlobGets(digests: readonly string[]): Promise<Map<string, number>> {
    const counts = new Map(digests.map((d) => [d, 0]));
    for (const line of await upstream.accessLog()) {
      const m = /^GET \/v2\/mirror\/app\/blobs\/(sha256:[a-f0-9]{64}) 20[06]$/.exec(line);
      if (m && counts.has(m[1]!)) counts.set(m[1]!, counts.get(m[1]!)! + 1);
    }
    return counts;
  }

  test('cold cache, then warm: lazy reads through the mirror are right; five stores make the upstream send each blob at most twice in all (the proxy\'s own miss)', async () => {
    const hosts = await hostsDir('cache', cache.host);
    // Store 1: the cache has nothing; each blob's first Range request is answered with 200 and the whole blob, kept once.
    const cold = join(work, 'store-1');
    const target = await mount('estargz', cold, hosts);
    await readAllExpected(target);
    const first = await stats(cold, target);
    assert.equal(first.mirrors?.length, 1);
    assert.equal(first.mirrors![0]!.failures, 0);
    assert.ok(first.mirrors![0]!.served > 0);
    assert.equal(first.rangeSupport, 'ignored', 'the cold cache answered a Range with the whole blob');
    assert.ok(first.layers.every((l) => l.source === 'streamed'), JSON.stringify(first.layers));
    assert.equal(first.bytesStreamed, first.imageBytes, 'each blob read once');
    await umount(cold, target);
    const cacheLog = await cache.accessLog();
    assert.ok(cacheLog.every((l) => !l.includes('/blobs/') || l.includes('ns=')), 'every request to the mirror carries ns=');
    const afterCold = await upstreamBlobGets(stargz.layerDigests);

    // Stores 2–5: the cache has every blob now and answers Range with 206.
    for (let i = 2; i <= 5; i++) {
      const store = join(work, `store-${i}`);
      const t = await mount('estargz', store, hosts);
      await readAllExpected(t);
      const s = await stats(store, t);
      assert.equal(s.rangeSupport, 'supported', `store ${i}: the warm cache honours Range`);
      assert.ok(s.layers.every((l) => l.source !== 'streamed'), `store ${i}: ranges, not whole blobs`);
      assert.equal(s.bytesStreamed, 0, `store ${i}: no whole blob`);
      assert.ok(s.bytesFetched < s.imageBytes, `store ${i}: fetched ${s.bytesFetched} of ${s.imageBytes} (data/big.bin is never read, but for read-ahead)`);
      // No byte of a layer asked for twice: reads across requests under way wait for them, the bytes the
      // footer's request brought along are checked and kept (one member the footer's request cut is fetched whole).
      for (const l of s.layers) assert.ok(l.bytesFetched <= l.size + 32 * 1024, `store ${i}: layer ${l.digest}: fetched ${l.bytesFetched} of its ${l.size} bytes`);
      await umount(store, t);
    }
    const afterAll = await upstreamBlobGets(stargz.layerDigests);
    const sent = [...afterAll.values()];
    console.log(`# upstream blob GETs per layer after store 1 (cold): ${[...afterCold.values()].join(' ')}; after five stores: ${sent.join(' ')}`);
    assert.deepEqual([...afterAll.values()], [...afterCold.values()], 'the warm cache sent nothing more upstream');
    // distribution 2.8's proxy fetches a blob twice on a miss (proxyblobstore.go: one copy to store, one to the
    // client); what lazyroot controls is that it asks once per blob, so the cache misses once per blob.
    for (const [d, n] of afterAll) assert.ok(n >= 1 && n <= 2, `${d}: upstream sent it ${n} times`);
  });

  test('two stores mounting at once through a cold cache: both read the right bytes, each keeps each blob once, the upstream sends each at most a few times', async (t) => {
    // A cache of its own, cold: neither store finds anything in it yet.
    const coldCache = await startRegistry({ proxyRemoteUrl: upstream.url });
    try {
      const hosts = await hostsDir('cold-concurrent', coldCache.host);
      const before = await upstreamBlobGets(stargz.layerDigests);
      const stores = [join(work, 'store-concurrent-a'), join(work, 'store-concurrent-b')];
      const targets = stores.map((_, i) => join(work, `mnt-concurrent-${i}`));
      await Promise.all(
        stores.map(async (store, i) => {
          await mkdir(targets[i]!, { recursive: true });
          const r = await lazyroot(['--store', store, '--hosts-dir', hosts, 'mount', '--no-prefetch', ref('estargz'), targets[i]!]);
          assert.equal(r.code, 0, r.stderr);
          mounted.push({ target: targets[i]!, store });
        }),
      );
      await Promise.all(targets.map((t) => readAllExpected(t)));
      for (const [i, store] of stores.entries()) {
        const s = await stats(store, targets[i]!);
        t.diagnostic(`store ${i}: ${s.bytesStreamed} streamed + ${s.bytesFetched} fetched of ${s.imageBytes}; layers: ${s.layers.map((l) => `${l.size} ${l.source} ${l.bytesStreamed}+${l.bytesFetched}`).join(', ')}`);
        assert.ok(s.bytesStreamed + s.bytesFetched <= s.imageBytes * 1.05, `store ${i}: ${s.bytesStreamed} streamed + ${s.bytesFetched} fetched of ${s.imageBytes}: each blob kept once`);
        assert.equal(s.mirrors?.[0]?.failures, 0, JSON.stringify(s.mirrors));
        await umount(store, targets[i]!);
      }
      const after = await upstreamBlobGets(stargz.layerDigests);
      // Each store's miss may reach the upstream (twice each: distribution's proxy stores one copy and streams another).
      for (const [d, n] of after) assert.ok(n - before.get(d)! <= 4, `${d}: the upstream sent it ${n - before.get(d)!} more times`);
    } finally {
      await coldCache.stop();
    }
  });

  test('a mirror that is down is passed over (counted in mount --stats) and the upstream serves the right bytes', async () => {
    const hosts = await hostsDir('down', `127.0.0.1:${await freePort()}`);
    const store = join(work, 'store-down');
    const target = await mount('estargz', store, hosts);
    await readAllExpected(target);
    const s = await stats(store, target);
    assert.ok(s.mirrors![0]!.failures >= 1, JSON.stringify(s.mirrors));
    assert.equal(s.mirrors![0]!.served, 0);
    const text = await lazyroot(['--store', store, 'mount', '--stats', target]);
    assert.match(text.stdout, /mirror http:\/\/127\.0\.0\.1:\d+: 0 answers used, \d+ failed, 0 with wrong bytes/);
    await umount(store, target);
  });

  test('a mirror that serves corrupt bytes is passed over for those blobs and the bytes come right from the upstream (eStargz by ranges, gzip streamed whole)', async () => {
    const hosts = await hostsDir('corrupt', relay.host);
    relay.setRules([{ method: 'GET', path: /\/blobs\//, fault: { kind: 'corrupt', atByte: 100 } }]);
    try {
      for (const [tag, digests] of [['estargz', stargz.layerDigests], ['gzip', gzipDigests]] as const) {
        const store = join(work, `store-corrupt-${tag}`);
        const target = await mount(tag, store, hosts);
        await readAllExpected(target);
        const s = await stats(store, target);
        assert.ok(s.mirrors![0]!.lies >= 1, `${tag}: ${JSON.stringify(s.mirrors)}`);
        assert.equal(s.layers.length, digests.length);
        await umount(store, target);
      }
    } finally {
      relay.setRules([]);
    }
  });

  test('pull through a mirror that serves corrupt bytes: each layer is fetched again from the upstream and verified', async () => {
    const hosts = await hostsDir('corrupt-pull', relay.host);
    relay.setRules([{ method: 'GET', path: /\/blobs\//, fault: { kind: 'corrupt', atByte: 100 } }]);
    const mark = relay.log.length;
    try {
      const store = join(work, 'store-corrupt-pull');
      // The command's own --hosts-dir (after the command's name).
      const r = await lazyroot(['--store', store, 'pull', '--hosts-dir', hosts, ref('gzip')]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr.match(/registry mirror http:\/\/127\.0\.0\.1:\d+ for 127\.0\.0\.1:\d+: sent bytes that failed verification/g)?.length, 1, `told once: ${r.stderr}`);
      assert.ok(gzipDigests.every((d) => relay.log.slice(mark).some((l) => l.includes(`/blobs/${d}`))), 'each layer was first asked of the mirror');
      const run = await lazyroot(['--store', store, 'images', '--json']);
      assert.equal(run.code, 0, run.stderr);
    } finally {
      relay.setRules([]);
    }
  });

  test('a malformed hosts.toml: the command fails (exit 1) naming the file and the problem', async () => {
    const d = join(work, 'hosts-bad');
    await mkdir(join(d, upstream.host), { recursive: true });
    const path = join(d, upstream.host, 'hosts.toml');
    await writeFile(path, '[host."http://mirror.local"]\ncapabilities = ["pull", "teleport"]\n');
    const r = await lazyroot(['--store', join(work, 'store-bad'), 'pull', '--hosts-dir', d, ref('gzip')]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`registry hosts file ${path.replace(/[.]/g, '\\.')}: host "http://mirror\\.local": unknown capability "teleport"`));
  });
});

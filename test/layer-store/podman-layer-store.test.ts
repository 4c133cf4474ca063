import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { buildImage, pushToRegistry, writeOciLayout, type ImageSpec } from '../helpers/image-builder.js';
import { buildTar, dir, file, opaque, symlink, whiteout } from '../helpers/tar-builder.js';
import { busyboxImageSpec } from '../helpers/sample-images.js';
import { diffTreesReport, snapshotTree } from '../helpers/tree-snapshot.js';
import { missingRequirements } from '../helpers/requirements.js';
import { spawnProcess, type ManagedProcess } from '../helpers/process.js';
import { lazyroot, lazyrootBin } from '../helpers/cli.js';
import { buildEstargzImage } from '../helpers/estargz.js';
import { zstdChunked } from '../helpers/zstd-chunked.js';

/**
 * `lazyroot layer-store` under the real engine: Debian's podman 4.3.1
 * (containers/storage 1.43) with its own graphroot/runroot and a storage.conf
 * naming the layer store (`additionallayerstores = ["MNT:ref"]`), pulling from
 * a docker-registry on loopback. What the registry's access log says was
 * fetched is the measure of laziness. Everything started here is stopped by
 * PID; every mount under the test's directories is unmounted.
 */
const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry', 'skopeo', 'podman', 'runc'] });
if (missing.length && process.env.CI) throw new Error(`CI: layer store tests need ${missing.join(', ')}`);

/** Incompressible bytes: a layer whose size gzip cannot hide. */
function noise(seed: string, size: number): Buffer {
  const blocks: Buffer[] = [];
  for (let i = 0; i * 64 < size; i++) blocks.push(createHash('sha512').update(`${seed}/${i}`).digest());
  return Buffer.concat(blocks).subarray(0, size);
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Mount points under `root` in this mount namespace, deepest first. */
async function mountsUnder(root: string): Promise<string[]> {
  const table = await readFile('/proc/self/mountinfo', 'utf8');
  const points = table
    .split('\n')
    .map((line) => line.split(' ')[4] ?? '')
    .filter((p) => p === root || p.startsWith(`${root}/`));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

// The flags podman needs on these machines (shared/peers/podman.md).
const podmanGlobal = ['--runtime', 'runc', '--cgroup-manager', 'cgroupfs'];
const podmanRun = ['run', '--rm', '--net=none', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024', '--tls-verify=false'];

describe('lazyroot layer-store under Debian podman 4.3', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let registry: TestRegistry;
  let daemon: ManagedProcess | undefined;
  let daemonOut = '';
  let mnt: string;
  let store: string;
  let podmanEnv: NodeJS.ProcessEnv;
  let podmanRoot: string;
  const repo = 'lazy/busybox';
  let layerDigests: string[] = [];
  let layerSizes: number[] = [];
  let metricsUrl = '';

  /** `lazyroot layer-store` on `mnt`, in the foreground, stopped by its PID in after(). */
  async function startDaemon(): Promise<void> {
    daemonOut = '';
    daemon = spawnProcess(process.execPath, [lazyrootBin, '--store', store, 'layer-store', '--release-after-ms', '2000', '--metrics-address', '127.0.0.1:0', mnt], { name: 'lazyroot layer-store' });
    daemon.child.stdout!.on('data', (c: Buffer) => (daemonOut += c.toString()));
    daemon.child.stderr!.on('data', (c: Buffer) => (daemonOut += c.toString()));
    await daemon.waitReady(() => daemonOut.includes('layer store at'), { timeoutMs: 20_000, describe: () => daemonOut });
    metricsUrl = /metrics at (\S+)/.exec(daemonOut)?.[1] ?? '';
  }

  /** The layer store's Prometheus samples: `name{labels}` → value. */
  async function metrics(): Promise<Map<string, number>> {
    const text = await (await fetch(metricsUrl)).text();
    return new Map(text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => [l.slice(0, l.lastIndexOf(' ')), Number(l.slice(l.lastIndexOf(' ') + 1))]));
  }

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-layer-store-'));
    registry = await startRegistry();
    const base = await busyboxImageSpec('v1');
    const spec: ImageSpec = {
      layers: [
        base.layers[0]!,
        {
          tar: await buildTar([
            dir('data'),
            file('data/big.bin', noise('big', 6 << 20)),
            file('data/small.txt', 'small file\n'),
            file('data/gone.txt', 'to be whited out'),
            dir('data/old'),
            file('data/old/a', 'a'),
            symlink('data/link', 'small.txt'),
          ]),
          compression: 'gzip',
        },
        { tar: await buildTar([whiteout('data/gone.txt'), opaque('data/old'), file('data/old/b', 'b'), file('etc/motd', 'served by the layer store\n')]), compression: 'gzip' },
      ],
      config: { config: { Cmd: ['/bin/cat', '/etc/motd'], Env: ['PATH=/bin'] } },
      refName: 'v1',
    };
    await writeOciLayout(join(work, 'layout'), [spec]);
    await pushToRegistry(join(work, 'layout'), `${repo}:latest`, registry.host, { layoutRef: 'v1' });
    const manifest = (await (
      await fetch(`${registry.url}/v2/${repo}/manifests/latest`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' } })
    ).json()) as { layers: Array<{ digest: string; size: number }> };
    layerDigests = manifest.layers.map((l) => l.digest);
    layerSizes = manifest.layers.map((l) => l.size);

    // gzip layers read by range need a span index: built once here (this pass reads every blob whole).
    store = join(work, 'store');
    const indexed = await lazyroot(['--store', store, 'index', '-q', '--span-bytes', '65536', `docker://${registry.host}/${repo}:latest`]);
    assert.equal(indexed.code, 0, indexed.stderr);

    mnt = join(work, 'als');
    await mkdir(mnt);
    await startDaemon();

    podmanRoot = join(work, 'podman');
    await mkdir(podmanRoot);
    const conf = join(podmanRoot, 'storage.conf');
    await writeFile(
      conf,
      `[storage]\ndriver = "overlay"\nrunroot = "${podmanRoot}/run"\ngraphroot = "${podmanRoot}/root"\n[storage.options]\nadditionallayerstores = ["${mnt}:ref"]\n`,
    );
    podmanEnv = { ...process.env, CONTAINERS_STORAGE_CONF: conf };
  });

  after(async () => {
    if (podmanRoot) {
      // Podman's own state first (its layers release ours), then every mount it left under its root.
      await run('podman', [...podmanGlobal, '--tmpdir', join(podmanRoot, 'tmp'), 'rmi', '--all', '--force'], podmanEnv);
      for (const point of await mountsUnder(podmanRoot)) await run('umount', [point]);
    }
    await daemon?.stop();
    if (mnt) for (const point of await mountsUnder(mnt)) await run('umount', ['-l', point]);
    await registry?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  const podman = (args: string[]) => run('podman', [...podmanGlobal, '--tmpdir', join(podmanRoot, 'tmp'), ...args], podmanEnv);

  test('podman runs a plain-gzip image through the layer store: output and exit code, a small part of the blobs fetched', async () => {
    const before = (await registry.accessBytes()).length;
    const r = await podman([...podmanRun, `${registry.host}/${repo}:latest`, '/bin/sh', '-c', 'cat /etc/motd /data/small.txt; test -e /data/gone.txt || echo gone; ls /data/old; /bin/true; exit 3']);
    assert.equal(r.stdout, 'served by the layer store\nsmall file\ngone\nb\n', `${r.stderr}\n--- layer store log:\n${daemonOut}`);
    assert.equal(r.code, 3, r.stderr);

    const blobGets = (await registry.accessBytes()).slice(before).filter((a) => a.method === 'GET' && /\/blobs\/sha256:/.test(a.path));
    const layerBytes = blobGets.filter((a) => layerDigests.some((d) => a.path.endsWith(d))).reduce((n, a) => n + a.bytes, 0);
    const total = layerSizes.reduce((n, s) => n + s, 0);
    const perLayer = layerDigests.map((d, i) => `${d.slice(7, 19)} ${blobGets.filter((a) => a.path.endsWith(d)).reduce((n, a) => n + a.bytes, 0)}/${layerSizes[i]}`);
    console.log(`layer store: podman fetched ${layerBytes} of ${total} layer blob bytes (${((100 * layerBytes) / total).toFixed(1)}%) in ${blobGets.length} blob requests; per layer ${perLayer.join(', ')}`);
    assert.ok(layerBytes < total / 4, `fetched ${layerBytes} of ${total} layer blob bytes`);

    // The daemon's own account agrees with the registry's, and says which layers podman holds.
    const m = await metrics();
    assert.equal(m.get('lazyroot_layer_store_fetched_bytes_total'), layerBytes);
    for (const digest of layerDigests) {
      const ratio = m.get(`lazyroot_layer_fetched_ratio{digest="${digest}",format="gzip"}`);
      assert.ok(ratio !== undefined && ratio <= 1, `fetched ratio of ${digest}: ${ratio}`);
      assert.equal(m.get(`lazyroot_layer_uses{digest="${digest}",format="gzip"}`), 1, `uses of ${digest}: the pull's lookup released, the layer's creation kept`);
    }

    // Podman stacked our diff/ dirs rather than downloading: its layers point into the store.
    const layersJson = JSON.parse(await readFile(join(podmanRoot, 'root', 'overlay-layers', 'layers.json'), 'utf8')) as Array<{ 'compressed-diff-digest'?: string }>;
    assert.deepEqual(layersJson.map((l) => l['compressed-diff-digest']).sort(), [...layerDigests].sort());
  });

  test('a plain gzip layer with no index is streamed once, indexed and kept: podman runs it all the same', async () => {
    const spec: ImageSpec = {
      layers: [(await busyboxImageSpec('v1')).layers[0]!, { tar: await buildTar([dir('data'), file('data/other.bin', noise('other', 1 << 20)), file('etc/motd', 'no index\n')]), compression: 'gzip' }],
      config: { config: { Cmd: ['/bin/cat', '/etc/motd'], Env: ['PATH=/bin'] } },
      refName: 'noindex',
    };
    await writeOciLayout(join(work, 'layout-noindex'), [spec]);
    await pushToRegistry(join(work, 'layout-noindex'), 'lazy/noindex:latest', registry.host, { layoutRef: 'noindex' });
    const r = await podman([...podmanRun, `${registry.host}/lazy/noindex:latest`]);
    assert.equal(r.stdout, 'no index\n', `${r.stderr}\n--- layer store log:\n${daemonOut}`);
    assert.equal(r.code, 0);
  });

  test('an eStargz image (no index needed) runs through the layer store, fetching a small part of its blob', async () => {
    const busybox = await readFile('/bin/busybox');
    const image = await buildEstargzImage(
      [
        [
          dir('bin'),
          file('bin/busybox', busybox, { mode: 0o755 }),
          ...['sh', 'cat', 'true'].map((a) => symlink(`bin/${a}`, 'busybox')),
          dir('data'),
          file('data/big.bin', noise('esgz', 4 << 20)),
          dir('etc'),
          file('etc/motd', 'estargz through the layer store\n'),
        ],
      ],
      { config: { Cmd: ['/bin/cat', '/etc/motd'], Env: ['PATH=/bin'] } },
    );
    await registry.pushImage('lazy/esgz', 'latest', image);
    const before = (await registry.accessBytes()).length;
    const r = await podman([...podmanRun, `${registry.host}/lazy/esgz:latest`]);
    assert.equal(r.stdout, 'estargz through the layer store\n', `${r.stderr}\n--- layer store log:\n${daemonOut}`);
    assert.equal(r.code, 0);
    const fetched = (await registry.accessBytes())
      .slice(before)
      .filter((a) => a.method === 'GET' && a.path.endsWith(image.layerDigests[0]!))
      .reduce((n, a) => n + a.bytes, 0);
    const size = image.layers[0]!.blob.length;
    console.log(`layer store: podman (eStargz, cat /etc/motd) fetched ${fetched} of ${size} layer blob bytes (${((100 * fetched) / size).toFixed(1)}%)`);
    assert.ok(fetched < size / 4, `fetched ${fetched} of ${size}`);
    const m = await metrics();
    assert.ok(m.has(`lazyroot_layer_fetched_ratio{digest="${image.layerDigests[0]}",format="estargz"}`));
  });

  test('a zstd:chunked image (its own TOC, no index needed) runs through the layer store, fetching a small part of its blob', async () => {
    const busybox = await readFile('/bin/busybox');
    const tar = await buildTar([
      dir('bin'),
      file('bin/busybox', busybox, { mode: 0o755 }),
      ...['sh', 'cat', 'true'].map((a) => symlink(`bin/${a}`, 'busybox')),
      dir('data'),
      file('data/big.bin', noise('zchk', 4 << 20)),
      dir('etc'),
      file('etc/motd', 'zstd:chunked through the layer store\n'),
    ]);
    // The test writer's blob (containers/storage's layout): podman's own are mounted in test/mount/zstd-chunked.test.ts.
    const chunked = zstdChunked(tar, { chunkSize: 256 * 1024 });
    const image = buildImage({ layers: [{ tar, compression: 'zstd', blob: chunked.blob, annotations: chunked.annotations }], config: { config: { Cmd: ['/bin/cat', '/etc/motd'], Env: ['PATH=/bin'] } } });
    await registry.pushImage('lazy/zchunked', 'latest', image);
    const before = (await registry.accessBytes()).length;
    const r = await podman([...podmanRun, `${registry.host}/lazy/zchunked:latest`]);
    assert.equal(r.stdout, 'zstd:chunked through the layer store\n', `${r.stderr}\n--- layer store log:\n${daemonOut}`);
    assert.equal(r.code, 0);
    const fetched = (await registry.accessBytes())
      .slice(before)
      .filter((a) => a.method === 'GET' && a.path.endsWith(image.layerDigests[0]!))
      .reduce((n, a) => n + a.bytes, 0);
    const size = image.layers[0]!.blob.length;
    console.log(`layer store: podman (zstd:chunked, cat /etc/motd) fetched ${fetched} of ${size} layer blob bytes (${((100 * fetched) / size).toFixed(1)}%)`);
    assert.ok(fetched < size / 4, `fetched ${fetched} of ${size}`);
    const m = await metrics();
    assert.ok(m.has(`lazyroot_layer_fetched_ratio{digest="${image.layerDigests[0]}",format="zstd-chunked"}`));
  });

  test("each layer's diff/ equals lazyroot's own overlay-format unpack of that layer; info and blob as containers/storage reads them", async () => {
    const ref = Buffer.from(`${registry.host}/${repo}:latest`).toString('base64');
    const overlayStore = join(work, 'store-overlay');
    const created = await lazyroot(['--store', overlayStore, 'create', `docker://${registry.host}/${repo}:latest`, 'c1']);
    assert.equal(created.code, 0, created.stderr);
    try {
      const layerNames = (await readdir(join(overlayStore, 'layers'))).filter((n) => /^[0-9a-f]{64}$/.test(n));
      const inspect = JSON.parse((await lazyroot(['--store', overlayStore, 'inspect', '--json', `docker://${registry.host}/${repo}:latest`])).stdout) as { layers?: Array<{ chainId?: string; digest?: string }> };
      for (const [i, digest] of layerDigests.entries()) {
        const layerDir = join(mnt, ...ref.split('/'), digest);
        const chainId = inspect.layers?.[i]?.chainId?.replace(/^sha256:/, '');
        const unpacked = chainId && layerNames.includes(chainId) ? join(overlayStore, 'layers', chainId, 'diff') : undefined;
        assert.ok(unpacked, `layer ${i + 1}: no unpacked diff for chain ID ${chainId} among ${layerNames.join(', ')}`);
        const report = diffTreesReport(await snapshotTree(join(layerDir, 'diff'), { includeOverlayXattrs: true }), await snapshotTree(unpacked, { includeOverlayXattrs: true }), {
          allow: [{ path: /(^|\/)gone\.txt$/, field: 'mtime', reason: "a whiteout's time: the unpacker's mknod stamps the unpack time, the layer store shows the .wh. entry's" }],
        });
        assert.deepEqual(report.differences.map((d) => d.message), [], `layer ${i + 1} ${digest}`);

        const info = JSON.parse(await readFile(join(layerDir, 'info'), 'utf8')) as Record<string, unknown>;
        assert.equal(info['compressed-diff-digest'], digest);
        assert.equal(info['compressed-size'], layerSizes[i]);
        assert.equal(info.compression, 2, 'archive.Gzip');
        assert.match(String(info['diff-digest']), /^sha256:[0-9a-f]{64}$/);
      }
      // blob: the compressed bytes, whole, as the registry has them.
      const last = layerDigests[layerDigests.length - 1]!;
      const blob = await readFile(join(mnt, ...ref.split('/'), last, 'blob'));
      assert.equal(`sha256:${createHash('sha256').update(blob).digest('hex')}`, last);
    } finally {
      await lazyroot(['--store', overlayStore, 'delete', 'c1']);
    }
  });

  test('a layer no one uses is closed after --release-after-ms without access, and opened again when looked up', async () => {
    const spec: ImageSpec = { layers: [{ tar: await buildTar([file('idle.txt', 'idle\n')]), compression: 'gzip' }], config: { config: {} }, refName: 'idle' };
    await writeOciLayout(join(work, 'layout-idle'), [spec]);
    await pushToRegistry(join(work, 'layout-idle'), 'lazy/idle:latest', registry.host, { layoutRef: 'idle' });
    const manifest = (await (await fetch(`${registry.url}/v2/lazy/idle/manifests/latest`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })).json()) as { layers: Array<{ digest: string }> };
    const digest = manifest.layers[0]!.digest;
    const layerDir = join(mnt, ...Buffer.from(`${registry.host}/lazy/idle:latest`).toString('base64').split('/'), digest);
    const sample = `lazyroot_layer_uses{digest="${digest}",format="gzip"}`;
    assert.equal(await readFile(join(layerDir, 'diff', 'idle.txt'), 'utf8'), 'idle\n');
    assert.equal((await metrics()).get(sample), 0, 'open, with no use signalled');
    const deadline = Date.now() + 15_000;
    while ((await metrics()).has(sample) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
    assert.equal((await metrics()).has(sample), false, 'closed after --release-after-ms 2000');
    for (const d of layerDigests) assert.ok((await metrics()).has(`lazyroot_layer_uses{digest="${d}",format="gzip"}`), `podman's layer ${d} stays open`);
    assert.equal(await readFile(join(layerDir, 'diff', 'idle.txt'), 'utf8'), 'idle\n', 'opened again');
  });

  test('after a restart of the layer store podman runs the image it pulled again: its layers are found anew by their paths', async () => {
    await daemon!.stop();
    assert.deepEqual(await mountsUnder(mnt), [], 'SIGTERM unmounts the layer store');
    await startDaemon();
    const r = await podman([...podmanRun, `${registry.host}/${repo}:latest`, '/bin/sh', '-c', 'cat /data/small.txt; exit 4']);
    assert.equal(r.stdout, 'small file\n', `${r.stderr}\n--- layer store log:\n${daemonOut}`);
    assert.equal(r.code, 4);
  });

  test('lazyroot clean while the layer store serves removes nothing it reads: its lease holds the blobs, partial blobs and indexes', async () => {
    const cleaned = await lazyroot(['--store', store, 'clean', '--threshold-bytes', '0']);
    assert.equal(cleaned.code, 0, cleaned.stderr);
    const r = await podman([...podmanRun, `${registry.host}/${repo}:latest`, '/bin/sh', '-c', 'head -c 100000 /data/big.bin | wc -c; cat /etc/motd']);
    assert.equal(r.stdout.replace(/^\s+/, ''), '100000\nserved by the layer store\n', `${r.stderr}\n--- layer store log:\n${daemonOut}`);
    assert.equal(r.code, 0);
    assert.ok((await readdir(join(store, 'indexes', 'sha256'))).length > 0, 'span indexes kept');
  });

  test('an unknown layer is ENOENT; `use` and the release rmdir are answered ENOENT, as containers/storage expects', async () => {
    const ref = Buffer.from(`${registry.host}/${repo}:latest`).toString('base64');
    const unknown = `sha256:${'0'.repeat(64)}`;
    await assert.rejects(readFile(join(mnt, ...ref.split('/'), unknown, 'info')), /ENOENT/);
    const layerDir = join(mnt, ...ref.split('/'), layerDigests[0]!);
    await assert.rejects(writeFile(join(layerDir, 'use'), ''), /ENOENT/);
    await assert.rejects(rmdir(layerDir), /ENOENT/);
    assert.ok((await readdir(join(layerDir, 'diff'))).includes('bin'));
  });
});

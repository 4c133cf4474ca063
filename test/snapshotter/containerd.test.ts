import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../helpers/free-port.js';
import { lazyroot } from '../helpers/cli.js';
import { buildEstargzImage } from '../helpers/estargz.js';
import { buildImage } from '../helpers/image-builder.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { requireOrSkip } from '../helpers/requirements.js';
import { busyboxImageSpec } from '../helpers/sample-images.js';
import { startSnapshotterWorld, type SnapshotterWorld } from '../helpers/snapshotter.js';
import { buildTar, dir, file, symlink, type TarEntry } from '../helpers/tar-builder.js';

/**
 * `lazyroot snapshotter` as containerd 1.6's proxy snapshotter, with the real
 * containerd, ctr-remote, runc and docker-registry on loopback; each test has
 * its own containerd (root, state, socket, config.toml) and snapshotter store.
 */
const needs = { root: true, fuse: true, tools: ['containerd', 'ctr-remote', 'runc', 'containerd-shim-runc-v2', 'docker-registry', 'busybox'] };
const motd = 'hello from a lazyroot sample image\n';

async function busyboxEntries(): Promise<TarEntry[][]> {
  const busybox = await readFile('/bin/busybox');
  return [
    [dir('bin'), file('bin/busybox', busybox, { mode: 0o755 }), ...['sh', 'cat', 'true', 'ls'].map((a) => symlink(`bin/${a}`, 'busybox')), dir('etc'), dir('tmp', { mode: 0o1777 })],
    [dir('etc'), file('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n'), file('etc/motd', motd)],
  ];
}

const imageConfig = { Env: ['PATH=/bin'], Cmd: ['/bin/cat', '/etc/motd'], WorkingDir: '/' };

interface Snapshot {
  key: string;
  kind: string;
  remote: { imageId: string; ref: string } | null;
}

async function snapshotsOf(world: SnapshotterWorld): Promise<Snapshot[]> {
  const run = await lazyroot(['--store', world.store, '--json', 'snapshots']);
  assert.equal(run.code, 0, run.stderr);
  return JSON.parse(run.stdout) as Snapshot[];
}

function snapshotLines(ls: string): string[] {
  return ls.split('\n').slice(1).filter((l) => l.trim() !== '');
}

async function lazyMountsUnder(world: SnapshotterWorld): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info.split('\n').map((l) => l.split(' ')[4] ?? '').filter((p) => p.startsWith(`${world.store}/snapshotter/mounts/`));
}

describe('lazyroot snapshotter under containerd', () => {
  let registry: TestRegistry;
  before(async () => {
    registry = await startRegistry();
  });
  after(async () => registry?.stop());

  test('ctr-remote rpull of an eStargz image fetches no layer into containerd; ctr run prints and relays the exit code; images rm + GC removes snapshots and mounts', async (t) => {
    if (!requireOrSkip(t, needs)) return;
    const world = await startSnapshotterWorld({ args: ['--trace'] });
    t.after(() => world.stop());
    const image = await buildEstargzImage(await busyboxEntries(), { config: imageConfig });
    await registry.pushImage('esgz/busybox', 'v1', image);
    const ref = `${registry.host}/esgz/busybox:v1`;

    await world.ctr(['image', 'rpull', '--plain-http', '--snapshotter', 'lazyroot', ref]);
    const content = await world.ctr(['content', 'ls', '-q']);
    const manifest = JSON.parse(image.manifestBytes.toString()) as { config: { digest: string } };
    assert.match(content, new RegExp(manifest.config.digest));
    for (const layer of image.layerDigests) assert.doesNotMatch(content, new RegExp(layer), `containerd fetched layer ${layer}`);
    const snapshots = await snapshotsOf(world);
    assert.equal(snapshots.length, 2);
    assert.ok(snapshots.every((s) => s.kind === 'committed' && s.remote?.ref === ref), JSON.stringify(snapshots));

    const out = await world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', ref, `esgz-${process.pid}`]);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.stdout, motd);
    const failing = await world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', ref, `esgz3-${process.pid}`, '/bin/sh', '-c', 'ls /bin >/dev/null && exit 3']);
    assert.equal(failing.code, 3, failing.stderr);
    assert.equal((await lazyMountsUnder(world)).length, 1, 'one lazy mount serves the image');
    const metrics = await world.metrics();
    assert.match(metrics, /^lazyroot_snapshotter_calls_total\{method="Prepare",code="ALREADY_EXISTS"\} 2$/m);
    // Call latency: a histogram per method whose +Inf bucket counts every call of it, and --trace's line per call.
    const prepares = metrics.match(/^lazyroot_snapshotter_call_seconds_count\{method="Prepare"\} (\d+)$/m);
    assert.ok(prepares && Number(prepares[1]) >= 3, metrics);
    assert.match(metrics, new RegExp(`^lazyroot_snapshotter_call_seconds_bucket\\{method="Prepare",le="\\+Inf"\\} ${prepares[1]}$`, 'm'));
    assert.match(await world.log(), /lazyroot snapshotter: \d{4}-\d\d-\d\dT[\d:.]+Z Prepare .+: ALREADY_EXISTS in \d+\.\d ms/);
    assert.match(metrics, /^lazyroot_mount_bytes_served_total\{mountpoint="[^"]+"\} [1-9]\d*$/m);
    assert.equal(metrics.match(/^lazyroot_layer_fetched_ratio\{/gm)?.length, 2, metrics);
    // Layer bytes came by range requests from lazyroot, never as whole-blob GETs by containerd.
    const layerGets = (await registry.accessLog()).filter((l) => image.layerDigests.some((d) => l.includes(d)) && l.startsWith('GET'));
    assert.ok(layerGets.length > 0, 'the FUSE mount read the layers from the registry');

    await world.ctr(['images', 'rm', '--sync', ref]);
    assert.deepEqual(snapshotLines(await world.ctr(['snapshots', '--snapshotter', 'lazyroot', 'ls'])), []);
    assert.deepEqual(await snapshotsOf(world), []);
    assert.deepEqual(await lazyMountsUnder(world), []);
  });

  test('plain ctr images pull + ctr run work through ordinary overlay snapshots', async (t) => {
    if (!requireOrSkip(t, needs)) return;
    const world = await startSnapshotterWorld();
    t.after(() => world.stop());
    await registry.pushImage('plain/busybox', 'v1', buildImage(await busyboxImageSpec()));
    const ref = `${registry.host}/plain/busybox:v1`;

    await world.ctr(['images', 'pull', '--plain-http', '--snapshotter', 'lazyroot', ref]);
    const snapshots = await snapshotsOf(world);
    assert.equal(snapshots.length, 2);
    assert.ok(snapshots.every((s) => s.kind === 'committed' && s.remote === null), JSON.stringify(snapshots));

    const out = await world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', ref, `plain-${process.pid}`, '/bin/sh', '-c', 'cat /etc/motd; echo written > /tmp/x; cat /tmp/x; exit 7']);
    assert.equal(out.code, 7, out.stderr);
    assert.equal(out.stdout, `${motd}written\n`);

    await world.ctr(['images', 'rm', '--sync', ref]);
    assert.deepEqual(snapshotLines(await world.ctr(['snapshots', '--snapshotter', 'lazyroot', 'ls'])), []);
    assert.deepEqual(await snapshotsOf(world), []);
  });

  test('an ordinary layer over a lazily served chain that no image ends with: a mount of the first layers serves it, and goes with the last snapshot', async (t) => {
    if (!requireOrSkip(t, needs)) return;
    const world = await startSnapshotterWorld();
    t.after(() => world.stop());
    const [base, motdLayer] = await busyboxEntries();
    // A and B share their two lower layers (same blobs, so same chain IDs) and differ on top.
    const a = await buildEstargzImage([base!, motdLayer!, [dir('etc'), file('etc/which', 'a\n')]], { config: imageConfig });
    const b = await buildEstargzImage([base!, motdLayer!, [dir('etc'), file('etc/which', 'b\n'), file('etc/only-b', 'only b\n')]], { config: imageConfig });
    assert.deepEqual(b.layerDigests.slice(0, 2), a.layerDigests.slice(0, 2));
    await registry.pushImage('shared/a', 'v1', a);
    await registry.pushImage('shared/b', 'v1', b);
    const refA = `${registry.host}/shared/a:v1`;
    const refB = `${registry.host}/shared/b:v1`;

    // A lazily: its three chains are remote snapshots, the second no image's top.
    await world.ctr(['image', 'rpull', '--plain-http', '--snapshotter', 'lazyroot', refA]);
    // B by plain ctr (no labels): containerd finds the two shared chains and unpacks B's top layer
    // itself, into an ordinary snapshot whose parent is the second, lazily served chain.
    await world.ctr(['images', 'pull', '--plain-http', '--snapshotter', 'lazyroot', refB]);
    const snapshots = await snapshotsOf(world);
    assert.equal(snapshots.length, 4, JSON.stringify(snapshots));
    assert.equal(snapshots.filter((s) => s.remote === null).length, 1, "B's own top layer is an ordinary snapshot");

    const out = await world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', refB, `shared-${process.pid}`, '/bin/sh', '-c', 'cat /etc/which /etc/only-b /etc/motd']);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.stdout, `b\nonly b\n${motd}`);
    // Two mounts: A's whole (made ahead during its rpull) and A's first two layers, under B's top.
    const mounts = (await lazyMountsUnder(world)).sort();
    assert.equal(mounts.length, 2, mounts.join(', '));
    assert.equal(mounts[1], `${mounts[0]}-2`);
    const outA = await world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', refA, `shared-a-${process.pid}`, '/bin/cat', '/etc/which']);
    assert.equal(outA.code, 0, outA.stderr);
    assert.equal(outA.stdout, 'a\n');

    await world.ctr(['images', 'rm', '--sync', refB]);
    await world.ctr(['images', 'rm', '--sync', refA]);
    assert.deepEqual(await snapshotsOf(world), []);
    assert.deepEqual(await lazyMountsUnder(world), []);
  });

  test('a registry mirror (hosts.toml, --hosts-dir) that is down is passed over, and its failures are in /metrics', async (t) => {
    if (!requireOrSkip(t, needs)) return;
    const hosts = await mkdtemp(join(tmpdir(), 'lazyroot-hosts-'));
    t.after(() => rm(hosts, { recursive: true, force: true }));
    const down = `127.0.0.1:${await freePort()}`;
    await mkdir(join(hosts, registry.host), { recursive: true });
    await writeFile(join(hosts, registry.host, 'hosts.toml'), `server = "${registry.url}"\n\n[host."http://${down}"]\n  capabilities = ["pull", "resolve"]\n`);
    const world = await startSnapshotterWorld({ args: ['--hosts-dir', hosts] });
    t.after(() => world.stop());
    await registry.pushImage('mirrored/busybox', 'v1', await buildEstargzImage(await busyboxEntries(), { config: imageConfig }));
    const ref = `${registry.host}/mirrored/busybox:v1`;
    await world.ctr(['image', 'rpull', '--plain-http', '--snapshotter', 'lazyroot', ref]);
    const out = await world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', ref, `mirrored-${process.pid}`]);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.stdout, motd);
    const metrics = await world.metrics();
    const failures = metrics.match(new RegExp(`^lazyroot_mirror_failures_total\\{mountpoint="[^"]+",mirror="http://${down.replace(/\./g, '\\.')}"\\} (\\d+)$`, 'm'));
    assert.ok(failures && Number(failures[1]) > 0, metrics);
    assert.match(metrics, new RegExp(`^lazyroot_mirror_answers_total\\{mountpoint="[^"]+",mirror="http://${down.replace(/\./g, '\\.')}"\\} 0$`, 'm'));
    await world.ctr(['images', 'rm', '--sync', ref]);
  });

  test('a gzip image with a span index in the lazyroot store is served lazily through the stargz label set', async (t) => {
    if (!requireOrSkip(t, needs)) return;
    const world = await startSnapshotterWorld();
    t.after(() => world.stop());
    const built = buildImage(await busyboxImageSpec());
    await registry.pushImage('indexed/busybox', 'v1', built);
    const ref = `${registry.host}/indexed/busybox:v1`;
    const indexed = await lazyroot(['--store', world.store, 'index', ref]);
    assert.equal(indexed.code, 0, indexed.stderr);

    await world.ctr(['image', 'rpull', '--plain-http', '--snapshotter', 'lazyroot', ref]);
    const content = await world.ctr(['content', 'ls', '-q']);
    for (const layer of built.layers) assert.doesNotMatch(content, new RegExp(layer.descriptor.digest), `containerd fetched layer ${layer.descriptor.digest}`);
    const snapshots = await snapshotsOf(world);
    assert.ok(snapshots.length === 2 && snapshots.every((s) => s.remote !== null), JSON.stringify(snapshots));

    const out = await world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', ref, `idx-${process.pid}`]);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.stdout, motd);
    await world.ctr(['images', 'rm', '--sync', ref]);
    assert.deepEqual(await lazyMountsUnder(world), []);
  });
});

test('a container keeps reading while the snapshotter restarts; the new one resumes with every snapshot', async (t) => {
  if (!requireOrSkip(t, needs)) return;
  const registry = await startRegistry();
  t.after(() => registry.stop());
  const world = await startSnapshotterWorld();
  t.after(() => world.stop());
  await registry.pushImage('restart/busybox', 'v1', await buildEstargzImage(await busyboxEntries(), { config: imageConfig }));
  const ref = `${registry.host}/restart/busybox:v1`;
  await world.ctr(['image', 'rpull', '--plain-http', '--snapshotter', 'lazyroot', ref]);

  // The container reads before, across and after the restart.
  const id = `restart-${process.pid}`;
  const container = world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', ref, id, '/bin/sh', '-c', 'cat /etc/motd; sleep 3; cat /etc/motd; ls /bin | wc -l']);
  // Restart once the task runs (its rootfs mounted), not while containerd is still preparing it.
  for (let i = 0; i < 400 && !(await world.ctr(['tasks', 'ls', '-q'])).split('\n').includes(id); i++) await new Promise((r) => setTimeout(r, 25));
  const before = world.snapshotterPid();
  await world.restartSnapshotter();
  assert.notEqual(world.snapshotterPid(), before);
  const out = await container;
  assert.equal(out.code, 0, out.stderr);
  assert.equal(out.stdout, `${motd}${motd}5\n`);

  assert.equal(snapshotLines(await world.ctr(['snapshots', '--snapshotter', 'lazyroot', 'ls'])).length, 2);
  const again = await world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', ref, `restart2-${process.pid}`]);
  assert.equal(again.stdout, motd, again.stderr);
  await world.ctr(['images', 'rm', '--sync', ref]);
  assert.deepEqual(await lazyMountsUnder(world), []);
});

test('rpull of a plain gzip image with no span index is served by the lazy mount; a zstd image takes the ordinary path; both run', async (t) => {
  if (!requireOrSkip(t, needs)) return;
  const registry = await startRegistry();
  t.after(() => registry.stop());
  const world = await startSnapshotterWorld();
  t.after(() => world.stop());
  const gzip = buildImage(await busyboxImageSpec());
  await registry.pushImage('gzip/busybox', 'v1', gzip);
  const zstdSpec = await busyboxImageSpec();
  // A first layer of its own, so that no chain ID is shared with the gzip image (containerd would find those).
  zstdSpec.layers = [{ tar: await buildTar([file('zstd-image', 'z\n')]), compression: 'zstd' as const }, ...zstdSpec.layers].map((l) => ({ ...l, compression: 'zstd' as const }));
  await registry.pushImage('zstd/busybox', 'v1', buildImage(zstdSpec));

  const gzipRef = `${registry.host}/gzip/busybox:v1`;
  await world.ctr(['image', 'rpull', '--plain-http', '--snapshotter', 'lazyroot', gzipRef]);
  const content = await world.ctr(['content', 'ls', '-q']);
  for (const layer of gzip.layers) assert.doesNotMatch(content, new RegExp(layer.descriptor.digest), 'containerd fetched a gzip layer');
  const zstdRef = `${registry.host}/zstd/busybox:v1`;
  await world.ctr(['image', 'rpull', '--plain-http', '--snapshotter', 'lazyroot', zstdRef]);
  const snapshots = await snapshotsOf(world);
  assert.equal(snapshots.filter((s) => s.remote?.ref === gzipRef).length, 2, JSON.stringify(snapshots));
  assert.equal(snapshots.filter((s) => s.remote === null).length, 3, JSON.stringify(snapshots));
  assert.match(await world.log(), /not served remotely: layer sha256:[0-9a-f]+ of the image is neither eStargz, zstd:chunked, gzip, tar nor in the store/);

  for (const [i, ref] of [gzipRef, zstdRef].entries()) {
    const out = await world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', ref, `kinds${i}-${process.pid}`]);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.stdout, motd);
  }
});

test('a lazy mount whose daemon was killed is mounted again by the next snapshotter start, and serves the next container', async (t) => {
  if (!requireOrSkip(t, needs)) return;
  const registry = await startRegistry();
  t.after(() => registry.stop());
  const world = await startSnapshotterWorld();
  t.after(() => world.stop());
  await registry.pushImage('killed/busybox', 'v1', await buildEstargzImage(await busyboxEntries(), { config: imageConfig }));
  const ref = `${registry.host}/killed/busybox:v1`;
  await world.ctr(['image', 'rpull', '--plain-http', '--snapshotter', 'lazyroot', ref]);
  const first = await world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', ref, `killed1-${process.pid}`]);
  assert.equal(first.stdout, motd, first.stderr);

  const [mountpoint] = await lazyMountsUnder(world);
  assert.ok(mountpoint);
  const stats = await lazyroot(['--store', world.store, '--json', 'mount', '--stats', mountpoint]);
  const pid = (JSON.parse(stats.stdout) as { pid?: number }).pid;
  assert.ok(pid, stats.stdout + stats.stderr);
  process.kill(pid, 'SIGKILL'); // the FUSE daemon the snapshotter started for this test's store
  for (let i = 0; i < 200; i++) {
    try {
      process.kill(pid, 0);
      await new Promise((r) => setTimeout(r, 10));
    } catch {
      break;
    }
  }
  await world.restartSnapshotter();
  // Served again: by a new daemon, or by kernel overlayfs once prefetch had brought every layer into the store.
  let served: string | undefined;
  for (let i = 0; i < 400 && !served; i++) {
    const now = await lazyroot(['--store', world.store, '--json', 'mount', '--stats', mountpoint]);
    const stats = now.code === 0 ? (JSON.parse(now.stdout) as { pid?: number; driver: string }) : undefined;
    if (stats?.driver === 'overlay' || (stats?.pid && stats.pid !== pid)) served = `${stats.driver} ${stats.pid ?? ''}`;
    else await new Promise((r) => setTimeout(r, 25));
  }
  assert.ok(served, `no new daemon serves ${mountpoint} after the start: ${await world.log()}`);
  assert.match(await world.log(), /mounted again at/);
  const again = await world.ctrStatus(['run', '--rm', '--snapshotter', 'lazyroot', ref, `killed2-${process.pid}`]);
  assert.equal(again.code, 0, again.stderr);
  assert.equal(again.stdout, motd);
  await world.ctr(['images', 'rm', '--sync', ref]);
  assert.deepEqual(await lazyMountsUnder(world), []);
});

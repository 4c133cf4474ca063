import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { convertToEstargz, startContainerd, type Containerd } from '../test/helpers/estargz.js';
import { pushToRegistry } from '../test/helpers/image-builder.js';
import { dropCaches, median, timeCommand } from './measure.js';
import { startEmulatedRegistry, startRelay, type Relay } from './netns.js';
import { largeImageLayout } from './sample-images.js';
import type { BenchContext, BenchRow } from './types.js';

const run = promisify(execFile);
const MiB = 1 << 20;

/** Runs a command and returns its stdout; fails with its stderr. */
export async function capture(argv: string[], what = argv.join(' ')): Promise<string> {
  try {
    const { stdout } = await run(argv[0]!, argv.slice(1), { maxBuffer: 64 << 20 });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`${what}: ${e.stderr?.trim().slice(-2000) || e.message}`);
  }
}

/** Mount points at or under `dir`, deepest first (from /proc/self/mountinfo, octal escapes decoded). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const points = text
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => !!p)
    .map((p) => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p === dir || p.startsWith(`${dir}/`));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

/**
 * Removes a lazyroot store made for one round: deletes its rootfses (which
 * stops their mount daemons), unmounts anything still mounted under it, and
 * refuses to `rm -r` while a mount remains (that would write through it).
 */
export async function removeStore(lazyrootBin: string, store: string): Promise<void> {
  if (!existsSync(store)) return;
  if (existsSync(join(store, 'meta.db'))) {
    const list = await capture([process.execPath, lazyrootBin, '--store', store, '--json', 'list']).catch(() => '[]');
    for (const r of JSON.parse(list || '[]') as Array<{ id: string }>) {
      await capture([process.execPath, lazyrootBin, '--store', store, 'delete', r.id]).catch(() => undefined);
    }
  }
  for (const point of await mountsUnder(store)) {
    await capture([process.execPath, lazyrootBin, '--store', store, 'umount', point]).catch(() => capture(['umount', point]).catch(() => undefined));
  }
  const left = await mountsUnder(store);
  if (left.length) throw new Error(`bench: could not unmount ${left.join(', ')}; not removing ${store}`);
  await rm(store, { recursive: true, force: true });
}

// ---- the images

export interface LazyImages {
  /** Repository:tag of the gzip image and of its eStargz conversion, in the loopback registry. */
  gzip: string;
  estargz: string;
  /** `indexes/` of a store where `lazyroot index` ran over the gzip image: copied into a fresh store for the "prebuilt index" variant. */
  indexesDir: string;
  /** The largest layer, as `REPO@DIGEST`, to probe an emulated network's bandwidth. */
  largestBlob: string;
}

interface ManifestJson {
  layers: Array<{ digest: string; size: number; mediaType: string; annotations?: Record<string, string> }>;
}

async function manifestOf(registryHost: string, repoTag: string): Promise<ManifestJson> {
  const [repo, tag] = repoTag.split(':');
  const response = await fetch(`http://${registryHost}/v2/${repo}/manifests/${tag}`, {
    headers: { accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' },
  });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`GET manifest ${repoTag} from ${registryHost}: ${response.status} ${text.slice(0, 300)}`);
  return JSON.parse(text) as ManifestJson;
}

/**
 * The eStargz form of the large image, converted by the real ctr-remote in a
 * private containerd. Converting takes ~45 s on 2 cores, so the result is kept
 * as an OCI layout in the cache, named after the source manifest's digest.
 */
async function estargzLayout(ctx: BenchContext, sourceLayout: string, registryHost: string): Promise<string> {
  const index = JSON.parse(await readFile(join(sourceLayout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
  const key = index.manifests[0]!.digest.slice('sha256:'.length, 'sha256:'.length + 12);
  const dir = join(ctx.cacheDir, `large-estargz-${key}`);
  if (existsSync(join(dir, 'index.json'))) return dir;
  process.stderr.write('bench: converting the large image to eStargz with ctr-remote (once; cached in .bench-cache)\n');
  const containerd = await startContainerd();
  try {
    await convertToEstargz(`${registryHost}/bench/large:v1`, `${registryHost}/bench/large:esgz`, containerd);
  } finally {
    await containerd.stop();
  }
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await capture(['skopeo', '--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', `docker://${registryHost}/bench/large:esgz`, `oci:${tmp}:esgz`], 'keep the eStargz image');
  await rename(tmp, dir);
  return dir;
}

/** Pushes the gzip and eStargz images to the loopback registry and builds the span indexes once. */
export async function prepareLazyImages(ctx: BenchContext): Promise<LazyImages> {
  const layout = await largeImageLayout(ctx.cacheDir);
  await pushToRegistry(layout, 'bench/large:v1', ctx.registryHost, { layoutRef: 'v1' });
  const esgz = await estargzLayout(ctx, layout, ctx.registryHost);
  await pushToRegistry(esgz, 'bench/large:esgz', ctx.registryHost, { layoutRef: 'esgz' });
  const converted = await manifestOf(ctx.registryHost, 'bench/large:esgz');
  const missing = converted.layers.filter((l) => !l.annotations?.['containerd.io/snapshot/stargz/toc.digest']);
  if (missing.length) throw new Error(`bench: bench/large:esgz has ${missing.length} layers without a TOC digest annotation: not eStargz (delete ${esgz} to convert again)`);

  const indexStore = join(ctx.workDir, 'index-store');
  await capture([process.execPath, ctx.lazyrootBin, '--store', indexStore, '--quiet', 'index', `docker://${ctx.registryHost}/bench/large:v1`], 'lazyroot index');
  const gzip = await manifestOf(ctx.registryHost, 'bench/large:v1');
  const largest = gzip.layers.reduce((a, b) => (b.size > a.size ? b : a));
  return { gzip: 'bench/large:v1', estargz: 'bench/large:esgz', indexesDir: join(indexStore, 'indexes'), largestBlob: `bench/large@${largest.digest}` };
}

// ---- the scenario

interface Sample {
  seconds: number;
  /** Bytes the registry sent (through the counting relay), HTTP headers included. */
  bytes: number;
  /** The mount daemon's own count of fetched bytes (ranges only), for the mount rows. */
  daemonBytes?: number;
}

interface Variant {
  name: string;
  repoTag: keyof Pick<LazyImages, 'gzip' | 'estargz'>;
  prebuiltIndex: boolean;
}

const variants: Variant[] = [
  { name: 'gzip, index built at mount', repoTag: 'gzip', prebuiltIndex: false },
  { name: 'gzip + prebuilt index', repoTag: 'gzip', prebuiltIndex: true },
  { name: 'eStargz (ctr-remote)', repoTag: 'estargz', prebuiltIndex: false },
];

export interface LazyStartResult {
  rows: BenchRow[];
  /** Lines comparing the results with the lazy-start goals. */
  goals: string[];
}

/**
 * Lazy start of the large image from a registry reached at `host` (through
 * `relay`, which counts the bytes): per round, each variant gets a fresh
 * empty store and a cold page cache for (a) `lazyroot mount` until the daemon
 * is ready and (b) `lazyroot run --lazy … /bin/true`; then the full paths:
 * skopeo + umoci + runc, lazyroot pull + run, containerd pull + run.
 */
async function lazyStart(ctx: BenchContext, images: LazyImages, host: string, relay: Relay, label: string, withFloor: boolean, networkNote = ''): Promise<LazyStartResult> {
  const node = process.execPath;
  const lz = (store: string, ...args: string[]) => [node, ctx.lazyrootBin, '--store', store, ...args];
  const ref = (v: Variant) => `docker://${host}/${images[v.repoTag]}`;
  const fullRef = `${host}/${images.gzip}`;
  const samples = new Map<string, Sample[]>();
  const add = (key: string, s: Sample) => samples.set(key, [...(samples.get(key) ?? []), s]);

  const freshStore = async (prefix: string, v?: Variant): Promise<string> => {
    const store = await mkdtemp(join(ctx.workDir, prefix));
    if (v?.prebuiltIndex) await cp(images.indexesDir, join(store, 'indexes'), { recursive: true });
    return store;
  };

  for (let round = 0; round < ctx.rounds; round++) {
    // The floor under every lazyroot row: a Node start and the CLI's modules, cold.
    if (withFloor) {
      await dropCaches();
      add('floor', { ...(await timeCommand([node, ctx.lazyrootBin, '--version'])), bytes: 0 });
    }

    for (const v of variants) {
      // (a) rootfs visible: `lazyroot mount` returns once the daemon reports ready.
      const storeA = await freshStore('lazy-a-', v);
      const mountpoint = join(storeA, 'mnt');
      await mkdir(mountpoint);
      try {
        await dropCaches();
        relay.take();
        const m = await timeCommand(lz(storeA, 'mount', ref(v), mountpoint));
        const bin = await readFile(join(mountpoint, 'bin/true'));
        // Counted at once: a background prefetch, where the daemon has one, must not add to it.
        const bytes = relay.take().down;
        if (bin.length < 1000) throw new Error(`bench: ${mountpoint}/bin/true is ${bin.length} bytes: not busybox`);
        const stats = JSON.parse(await capture(lz(storeA, '--json', 'mount', '--stats', mountpoint))) as { bytesFetched: number };
        add(`a:${v.name}`, { seconds: m.seconds, bytes, daemonBytes: stats.bytesFetched });
      } finally {
        await removeStore(ctx.lazyrootBin, storeA);
      }

      // (b) first command: `lazyroot run --lazy` until /bin/true has exited in runc and all is cleaned up.
      const storeB = await freshStore('lazy-b-', v);
      try {
        await dropCaches();
        relay.take();
        const m = await timeCommand(lz(storeB, 'run', '--lazy', ref(v), '--', '/bin/true'));
        add(`b:${v.name}`, { seconds: m.seconds, bytes: relay.take().down });
      } finally {
        await removeStore(ctx.lazyrootBin, storeB);
      }
    }

    // skopeo copy + umoci unpack (rootfs visible) + runc run (first command).
    const work = await mkdtemp(join(ctx.workDir, 'full-skopeo-'));
    const id = `lzb-${process.pid}-${round}`;
    try {
      await dropCaches();
      relay.take();
      const copy = await timeCommand(['skopeo', '--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', `docker://${fullRef}`, `oci:${work}/layout:v1`]);
      const unpack = await timeCommand(['umoci', 'unpack', '--image', `${work}/layout:v1`, `${work}/bundle`]);
      const bytes = relay.take().down;
      // umoci writes `terminal: true`; with no tty here runc would fail at once (untimed edit).
      const configPath = join(work, 'bundle', 'config.json');
      const config = JSON.parse(await readFile(configPath, 'utf8')) as { process: { terminal?: boolean } };
      config.process.terminal = false;
      await writeFile(configPath, JSON.stringify(config));
      const runc = await timeCommand(['runc', '--root', `${work}/runc`, 'run', '--bundle', `${work}/bundle`, id]);
      add('a:skopeo', { seconds: copy.seconds + unpack.seconds, bytes });
      add('b:skopeo', { seconds: copy.seconds + unpack.seconds + runc.seconds, bytes });
    } finally {
      await capture(['runc', '--root', `${work}/runc`, 'delete', '--force', id]).catch(() => undefined);
      await rm(work, { recursive: true, force: true });
    }

    // lazyroot pull + lazyroot run (kernel overlayfs).
    const storeO = await freshStore('full-lazyroot-');
    try {
      await dropCaches();
      relay.take();
      const pull = await timeCommand(lz(storeO, 'pull', '--quiet', `docker://${fullRef}`));
      const runO = await timeCommand(lz(storeO, 'run', `docker://${fullRef}`, '--', '/bin/true'));
      add('b:lazyroot', { seconds: pull.seconds + runO.seconds, bytes: relay.take().down });
    } finally {
      await removeStore(ctx.lazyrootBin, storeO);
    }

    // containerd: `ctr images pull` (fetch + unpack into its overlayfs snapshotter), then `ctr run --rm`.
    let containerd: Containerd | undefined;
    try {
      containerd = await startContainerd();
      const ctr = ['ctr-remote', '--address', containerd.address];
      await dropCaches();
      relay.take();
      const pull = await timeCommand([...ctr, 'images', 'pull', '--plain-http', fullRef]);
      const bytes = relay.take().down;
      const runC = await timeCommand([...ctr, 'run', '--rm', fullRef, id, '/bin/true']);
      add('a:ctr', { seconds: pull.seconds, bytes });
      add('b:ctr', { seconds: pull.seconds + runC.seconds, bytes });
    } finally {
      if (containerd) {
        // stop() removes its directory: nothing may stay mounted under it by then.
        for (const point of await mountsUnder(containerd.dir)) await capture(['umount', point]).catch(() => capture(['umount', '-l', point]));
        await containerd.stop();
      }
    }
  }

  const med = (key: string, f: (s: Sample) => number = (s) => s.seconds): number => median(samples.get(key)!.map(f));
  const mib = (bytes: number) => (bytes >= 10 * MiB ? `${(bytes / MiB).toFixed(0)} MiB` : `${(bytes / MiB).toFixed(2)} MiB`);
  const peerA = med('a:skopeo');
  const peerB = med('b:skopeo');
  const ctrA = med('a:ctr');
  const ctrB = med('b:ctr');
  const scenarioA = `lazy start (a): rootfs visible, 231 MiB image, ${label}`;
  const scenarioB = `lazy start (b): /bin/true done in runc, 231 MiB image, ${label}`;
  const row = (scenario: string, tool: string, seconds: number, peer: number, note: string): BenchRow => ({ scenario, tool, seconds, ratio: seconds / peer, note });
  const sooner = (s: number, skopeo: number, ctr: number) => `${(skopeo / s).toFixed(1)}× sooner than skopeo path, ${(ctr / s).toFixed(1)}× than ctr`;

  const rows: BenchRow[] = [];
  for (const v of variants) {
    const s = med(`a:${v.name}`);
    rows.push(
      row(scenarioA, `lazyroot mount, ${v.name}`, s, peerA, `${sooner(s, peerA, ctrA)}; fetched ${mib(med(`a:${v.name}`, (x) => x.bytes))} by mount + read of /bin/true (daemon's stats: ${mib(med(`a:${v.name}`, (x) => x.daemonBytes ?? 0))} by range)`),
    );
  }
  if (withFloor) rows.push(row(scenarioA, 'lazyroot --version (floor: Node start + CLI load)', med('floor'), peerA, 'no work; lazyroot mount starts Node twice (CLI, then daemon)'));
  rows.push(row(scenarioA, 'skopeo copy + umoci unpack', peerA, peerA, `peer; fetched ${mib(med('a:skopeo', (x) => x.bytes))}${networkNote}`));
  rows.push(row(scenarioA, 'ctr images pull (fetch + unpack)', ctrA, peerA, `containerd 1.6 overlayfs snapshotter; fetched ${mib(med('a:ctr', (x) => x.bytes))}`));
  for (const v of variants) {
    const s = med(`b:${v.name}`);
    rows.push(row(scenarioB, `lazyroot run --lazy, ${v.name}`, s, peerB, `${sooner(s, peerB, ctrB)}; fetched ${mib(med(`b:${v.name}`, (x) => x.bytes))}`));
  }
  rows.push(row(scenarioB, 'skopeo copy + umoci unpack + runc run', peerB, peerB, `peer; fetched ${mib(med('b:skopeo', (x) => x.bytes))}${networkNote}`));
  rows.push(row(scenarioB, 'lazyroot pull + lazyroot run (overlayfs)', med('b:lazyroot'), peerB, `fetched ${mib(med('b:lazyroot', (x) => x.bytes))}`));
  rows.push(row(scenarioB, 'ctr images pull + ctr run --rm', ctrB, peerB, `fetched ${mib(med('b:ctr', (x) => x.bytes))}`));

  const mark = (ok: boolean) => (ok ? 'met' : 'missed');
  const goals = [
    `Goals, ${label}${networkNote} (medians):`,
    `  rootfs visible in under 0.2 s: ${variants.map((v) => `${v.name} ${med(`a:${v.name}`).toFixed(2)} s ${mark(med(`a:${v.name}`) < 0.2)}`).join('; ')}`,
    `  /bin/true at least 7× sooner than full pull + unpack (skopeo+umoci+runc ${peerB.toFixed(2)} s, ctr ${ctrB.toFixed(2)} s): ${variants
      .map((v) => {
        const s = med(`b:${v.name}`);
        return `${v.name} ${(peerB / s).toFixed(1)}×/${(ctrB / s).toFixed(1)}× ${mark(peerB / s >= 7 && ctrB / s >= 7)}`;
      })
      .join('; ')}`,
    `  under 5 MiB fetched for it: ${variants.map((v) => `${v.name} ${mib(med(`b:${v.name}`, (x) => x.bytes))} ${mark(med(`b:${v.name}`, (x) => x.bytes) < 5 * MiB)}`).join('; ')}`,
  ];
  return { rows, goals };
}

/** Lazy start against the loopback registry, through a counting relay (no delay). */
export async function lazyBench(ctx: BenchContext, images: LazyImages): Promise<LazyStartResult> {
  const [name, port] = ctx.registryHost.split(':');
  const relay = await startRelay({ host: '127.0.0.1', port: 0 }, { host: name!, port: Number(port) });
  try {
    return await lazyStart(ctx, images, relay.address, relay, 'loopback registry', true);
  } finally {
    await relay.close();
  }
}

/**
 * Lazy start against a registry in its own network namespace, 20 ms round
 * trip and 200 Mbit/s (see netns.ts), serving the loopback registry's storage.
 */
export async function lazyBenchEmulated(ctx: BenchContext, images: LazyImages, registryStorageDir: string): Promise<LazyStartResult> {
  const net = await startEmulatedRegistry(registryStorageDir, { delayMsEachWay: 10, rate: '200mbit' }, images.largestBlob);
  try {
    const measured = `; network measured: ${net.measured.rttMs.toFixed(0)} ms RTT, ${net.measured.mbitPerSecond.toFixed(0)} Mbit/s`;
    return await lazyStart(ctx, images, net.host, net.relay, 'netns registry, 20 ms RTT, 200 Mbit/s', false, measured);
  } finally {
    await net.stop();
  }
}

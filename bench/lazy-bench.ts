import { execFile, spawn } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { convertToEstargz, startContainerd, type Containerd } from '../test/helpers/estargz.js';
import { pushToRegistry } from '../test/helpers/image-builder.js';
import { dropCaches, median, timeCommand } from './measure.js';
import { startEmulatedRegistry, startRelay, type Relay } from './netns.js';
import { describeImage, PYTHON_COMMAND, realisticImageLayout, type RealisticImage } from './realistic-image.js';
import type { BenchContext } from './types.js';

const run = promisify(execFile);

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
  /** The image as built (sizes, entry counts). */
  image: RealisticImage;
  /** Repository:tag of the gzip image and of its eStargz conversion, in the loopback registry. */
  gzip: string;
  estargz: string;
  /** Sum of the eStargz layers' sizes. */
  estargzBytes: number;
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
 * The eStargz form of an image already pushed as `REPO:v1`, converted by the
 * real ctr-remote in a private containerd, pushed as `REPO:esgz`. Converting
 * takes a while on 2 cores, so the result is kept as an OCI layout in the
 * cache, named after the source manifest's digest.
 */
async function estargzLayout(ctx: BenchContext, sourceLayout: string, repo: string, registryHost: string): Promise<string> {
  const index = JSON.parse(await readFile(join(sourceLayout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
  const key = index.manifests[0]!.digest.slice('sha256:'.length, 'sha256:'.length + 12);
  const dir = join(ctx.cacheDir, `${repo.replace(/\//g, '-')}-estargz-${key}`);
  if (existsSync(join(dir, 'index.json'))) return dir;
  process.stderr.write(`bench: converting ${repo}:v1 to eStargz with ctr-remote (once; cached in .bench-cache)\n`);
  const containerd = await startContainerd();
  try {
    await convertToEstargz(`${registryHost}/${repo}:v1`, `${registryHost}/${repo}:esgz`, containerd);
  } finally {
    await containerd.stop();
  }
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await capture(['skopeo', '--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', `docker://${registryHost}/${repo}:esgz`, `oci:${tmp}:esgz`], 'keep the eStargz image');
  await rename(tmp, dir);
  return dir;
}

/** Builds (once) the realistic image, pushes its gzip and eStargz forms to the loopback registry, builds the span indexes. */
export async function prepareLazyImages(ctx: BenchContext): Promise<LazyImages> {
  const image = await realisticImageLayout(ctx.cacheDir);
  process.stderr.write(`bench: ${describeImage(image)}\n`);
  const repo = 'bench/bookworm-python3';
  await pushToRegistry(image.layoutDir, `${repo}:v1`, ctx.registryHost, { layoutRef: 'v1' });
  const esgz = await estargzLayout(ctx, image.layoutDir, repo, ctx.registryHost);
  await pushToRegistry(esgz, `${repo}:esgz`, ctx.registryHost, { layoutRef: 'esgz' });
  const converted = await manifestOf(ctx.registryHost, `${repo}:esgz`);
  const missing = converted.layers.filter((l) => !l.annotations?.['containerd.io/snapshot/stargz/toc.digest']);
  if (missing.length) throw new Error(`bench: ${repo}:esgz has ${missing.length} layers without a TOC digest annotation: not eStargz (delete ${esgz} to convert again)`);

  const indexStore = join(ctx.workDir, 'index-store');
  await capture([process.execPath, ctx.lazyrootBin, '--store', indexStore, '--quiet', 'index', `docker://${ctx.registryHost}/${repo}:v1`], 'lazyroot index');
  const indexesDir = join(indexStore, 'indexes');
  const gzip = await manifestOf(ctx.registryHost, `${repo}:v1`);
  const largest = gzip.layers.reduce((a, b) => (b.size > a.size ? b : a));
  return {
    image,
    gzip: `${repo}:v1`,
    estargz: `${repo}:esgz`,
    estargzBytes: converted.layers.reduce((n, l) => n + l.size, 0),
    indexesDir,
    largestBlob: `${repo}@${largest.digest}`,
  };
}

// ---- the scenario

interface Sample {
  /** (a): until the rootfs is visible; (b): until python3 has finished (its output is in). */
  seconds: number;
  /** (b): until the tool returned, its teardown (unmount, container removal) done. */
  exitSeconds?: number;
  /** Bytes the registry sent (through the counting relay), HTTP headers included. */
  bytes: number;
  /** For mounts: `lazyroot mount` alone, before the listing. */
  mountSeconds?: number;
  /** The mount daemon's own count of bytes fetched on demand (ranges only). */
  daemonBytes?: number;
}

interface Variant {
  name: string;
  repoTag: keyof Pick<LazyImages, 'gzip' | 'estargz'>;
  prebuiltIndex: boolean;
  /**
   * A warm standby mount daemon (lazyroot's default: a process that has loaded
   * everything and waits for the next mount, like containerd already running)
   * is ready before the timed command; false: LAZYROOT_STANDBY=0, every Node
   * process lazyroot needs starts cold.
   */
  standby: boolean;
  /** Checked against the goals. */
  goal: boolean;
}

const variants: Variant[] = [
  { name: 'eStargz (ctr-remote)', repoTag: 'estargz', prebuiltIndex: false, standby: true, goal: true },
  { name: 'gzip + prebuilt index', repoTag: 'gzip', prebuiltIndex: true, standby: true, goal: true },
  { name: 'gzip, no index', repoTag: 'gzip', prebuiltIndex: false, standby: true, goal: true },
  { name: 'eStargz, no standby daemon', repoTag: 'estargz', prebuiltIndex: false, standby: false, goal: false },
];
const goalVariants = variants.filter((v) => v.goal);

// ---- the standby mount daemon, kept in a directory of the bench's own

/** The live standby daemons' pids in `dir` (pid files of processes still running). */
async function standbyPids(dir: string): Promise<number[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const pids: number[] = [];
  for (const name of names.filter((n) => n.startsWith('standby-') && n.endsWith('.pid'))) {
    const pid = Number((await readFile(join(dir, name), 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(pid) || pid <= 0) continue;
    try {
      process.kill(pid, 0);
      if (existsSync(join(dir, name.replace(/\.pid$/, '.sock')))) pids.push(pid);
    } catch {
      // gone
    }
  }
  return pids;
}

/**
 * Stops the standby daemons of `dir`: every process whose environment names
 * that directory (only this bench's do, and their own children) and that is
 * a `mount-daemon --standby` still loading or waiting. Call it only when no
 * mount is up: a standby that took a mount keeps its command line.
 */
async function stopStandbys(dir: string): Promise<void> {
  const mark = `LAZYROOT_STANDBY_DIR=${dir}`;
  for (const name of await readdir('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    const [cmdline, environ] = await Promise.all([readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => ''), readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '')]);
    const argv = cmdline.split('\0');
    if (!argv.includes('mount-daemon') || !argv.includes('--standby') || !environ.split('\0').includes(mark)) continue;
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // gone meanwhile
    }
  }
}

/**
 * Makes sure a standby daemon of this build waits in `dir` (as the previous
 * mount leaves one, or a new one started the way lazyroot starts it), so
 * that every timed mount finds one.
 */
async function ensureStandby(lazyrootBin: string, dir: string): Promise<void> {
  if ((await standbyPids(dir)).length > 0) return;
  const deadline = Date.now() + 10_000;
  let spawned = false;
  for (;;) {
    // The last mount's daemon may be starting one right now: give it a moment before starting our own.
    if (!spawned && Date.now() > deadline - 8_000) {
      const child = spawn(process.execPath, [lazyrootBin, 'mount-daemon', '--standby'], { detached: true, stdio: 'ignore', env: { ...process.env, LAZYROOT_STANDBY_DIR: dir } });
      child.unref();
      spawned = true;
    }
    await new Promise((r) => setTimeout(r, 25));
    if ((await standbyPids(dir)).length > 0) return;
    if (Date.now() > deadline) throw new Error(`bench: no standby mount daemon in ${dir} after 10 s`);
  }
}

/** What the command prints: the check that each measured run really worked. */
const EXPECTED = '1\n';

export interface LazyStartResult {
  /** A title line and the markdown table. */
  table: string;
  /** Lines comparing the results with the lazy-start goals. */
  goals: string[];
}

const MiB = 1 << 20;
const mib = (bytes: number) => (bytes >= 10 * MiB ? `${(bytes / MiB).toFixed(1)} MiB` : bytes >= MiB ? `${(bytes / MiB).toFixed(2)} MiB` : `${(bytes / 1024).toFixed(0)} KiB`);

function markdown(header: string[], cells: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => `| ${c.map((x, i) => x.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...cells.map(line)].join('\n');
}

/**
 * Lazy start of the realistic image from a registry reached at `host`
 * (through `relay`, which counts the bytes). Each round, each way of starting
 * gets a fresh empty store and a cold page cache:
 *   (a) rootfs visible: `lazyroot mount` returned and `ls DIR/usr/bin` worked
 *       (full paths: the image pulled and unpacked);
 *   (b) first command: `python3 -c 'import json, sys; print(1)'` has exited in
 *       runc, having printed exactly "1".
 */
async function lazyStart(ctx: BenchContext, images: LazyImages, host: string, relay: Relay, label: string, withFloor: boolean, networkNote = ''): Promise<LazyStartResult> {
  const node = process.execPath;
  const lz = (store: string, ...args: string[]) => [node, ctx.lazyrootBin, '--store', store, ...args];
  const ref = (v: Variant) => `docker://${host}/${images[v.repoTag]}`;
  const fullRef = `${host}/${images.gzip}`;
  const samples = new Map<string, Sample[]>();
  const add = (key: string, s: Sample) => samples.set(key, [...(samples.get(key) ?? []), s]);
  const elapsed = (since: bigint) => Number(process.hrtime.bigint() - since) / 1e9;
  const listUsrBin = async (root: string, what: string): Promise<void> => {
    const names = await readdir(join(root, 'usr/bin'));
    if (!names.includes('python3') || !names.includes('bash')) throw new Error(`bench: ${what}: ${root}/usr/bin has no python3 or bash (${names.length} names)`);
  };

  // Standby daemons live in the bench's own directory: none of another build or user is used, and the bench stops its own at the end.
  const standbyDir = join(ctx.workDir, 'standby');
  await mkdir(standbyDir, { recursive: true, mode: 0o700 });
  const envFor = (v: Variant): NodeJS.ProcessEnv => ({ ...process.env, LAZYROOT_STANDBY_DIR: standbyDir, ...(v.standby ? {} : { LAZYROOT_STANDBY: '0' }) });
  const prepare = async (v: Variant): Promise<void> => {
    if (v.standby) await ensureStandby(ctx.lazyrootBin, standbyDir);
    else await stopStandbys(standbyDir);
  };

  const loadAtStart = loadavg()[0]!.toFixed(2);
  const freshStore = async (prefix: string, v?: Variant): Promise<string> => {
    const store = await mkdtemp(join(ctx.workDir, prefix));
    if (v?.prebuiltIndex) await cp(images.indexesDir, join(store, 'indexes'), { recursive: true });
    return store;
  };

  try {
    for (let round = 0; round < ctx.rounds; round++) {
      process.stderr.write(`bench: ${label}: round ${round + 1} of ${ctx.rounds}\n`);
      // The floor under every lazyroot row: a Node start and the CLI's modules, cold.
      if (withFloor) {
        await dropCaches();
        add('floor', { ...(await timeCommand([node, ctx.lazyrootBin, '--version'])), bytes: 0 });
      }

      for (const v of variants) {
        // (a) rootfs visible: `lazyroot mount` returns once the daemon reports ready; then list /usr/bin.
        const storeA = await freshStore('lazy-a-', v);
        const mountpoint = join(storeA, 'mnt');
        await mkdir(mountpoint);
        try {
          await prepare(v);
          await dropCaches();
          relay.take();
          const started = process.hrtime.bigint();
          const m = await timeCommand(lz(storeA, 'mount', ref(v), mountpoint), { env: envFor(v) });
          await listUsrBin(mountpoint, `lazyroot mount, ${v.name}`);
          const seconds = elapsed(started);
          // Counted at once: the background prefetch (1 s after ready) must not add to it.
          const bytes = relay.take().down;
          const stats = JSON.parse(await capture(lz(storeA, '--json', 'mount', '--stats', mountpoint))) as { bytesFetched: number };
          add(`a:${v.name}`, { seconds, mountSeconds: m.seconds, bytes, daemonBytes: stats.bytesFetched });
        } finally {
          await removeStore(ctx.lazyrootBin, storeA);
        }

        // (b) first command: `lazyroot run --lazy` until python3 has exited in runc and all is cleaned up.
        const storeB = await freshStore('lazy-b-', v);
        try {
          await prepare(v);
          await dropCaches();
          relay.take();
          let bytes = 0;
          const m = await timeCommand(lz(storeB, 'run', '--lazy', ref(v), '--', ...PYTHON_COMMAND), { env: envFor(v), expectStdout: EXPECTED, onOutput: () => (bytes = relay.take().down) });
          add(`b:${v.name}`, { seconds: m.outputSeconds!, exitSeconds: m.seconds, bytes });
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
        await listUsrBin(join(work, 'bundle', 'rootfs'), 'umoci unpack');
        // umoci writes `terminal: true` and the image's Cmd; with no tty here runc would fail at once. Untimed edit.
        const configPath = join(work, 'bundle', 'config.json');
        const config = JSON.parse(await readFile(configPath, 'utf8')) as { process: { terminal?: boolean; args?: string[] } };
        config.process.terminal = false;
        config.process.args = PYTHON_COMMAND;
        await writeFile(configPath, JSON.stringify(config));
        const runc = await timeCommand(['runc', '--root', `${work}/runc`, 'run', '--bundle', `${work}/bundle`, id], { expectStdout: EXPECTED });
        add('a:skopeo', { seconds: copy.seconds + unpack.seconds, bytes });
        add('b:skopeo', { seconds: copy.seconds + unpack.seconds + runc.outputSeconds!, exitSeconds: copy.seconds + unpack.seconds + runc.seconds, bytes });
      } finally {
        await capture(['runc', '--root', `${work}/runc`, 'delete', '--force', id]).catch(() => undefined);
        await rm(work, { recursive: true, force: true });
      }

      // lazyroot pull + create (rootfs visible, kernel overlayfs), then in another fresh store pull + run.
      const storeC = await freshStore('full-lazyroot-a-');
      try {
        await dropCaches();
        relay.take();
        const pull = await timeCommand(lz(storeC, 'pull', '--quiet', `docker://${fullRef}`));
        const create = await timeCommand(lz(storeC, 'create', `docker://${fullRef}`, 'bench'));
        const bytes = relay.take().down;
        await listUsrBin(join(storeC, 'rootfs', 'bench', 'merged'), 'lazyroot create');
        add('a:lazyroot', { seconds: pull.seconds + create.seconds, bytes });
      } finally {
        await removeStore(ctx.lazyrootBin, storeC);
      }
      const storeO = await freshStore('full-lazyroot-b-');
      try {
        await dropCaches();
        relay.take();
        const pull = await timeCommand(lz(storeO, 'pull', '--quiet', `docker://${fullRef}`));
        const runO = await timeCommand(lz(storeO, 'run', `docker://${fullRef}`, '--', ...PYTHON_COMMAND), { expectStdout: EXPECTED });
        add('b:lazyroot', { seconds: pull.seconds + runO.outputSeconds!, exitSeconds: pull.seconds + runO.seconds, bytes: relay.take().down });
      } finally {
        await removeStore(ctx.lazyrootBin, storeO);
      }

      // containerd (Debian's, a private instance per round): `ctr images pull` (fetch + unpack into
      // its overlayfs snapshotter), then `ctr run --rm`.
      let containerd: Containerd | undefined;
      try {
        containerd = await startContainerd();
        const ctr = ['ctr', '--address', containerd.address];
        await dropCaches();
        relay.take();
        const pull = await timeCommand([...ctr, 'images', 'pull', '--plain-http', '--snapshotter', 'overlayfs', fullRef]);
        const bytes = relay.take().down;
        const runC = await timeCommand([...ctr, 'run', '--rm', '--snapshotter', 'overlayfs', fullRef, id, ...PYTHON_COMMAND], { expectStdout: EXPECTED });
        add('a:ctr', { seconds: pull.seconds, bytes });
        add('b:ctr', { seconds: pull.seconds + runC.outputSeconds!, exitSeconds: pull.seconds + runC.seconds, bytes: bytes + relay.take().down });
      } finally {
        if (containerd) {
          // stop() removes its directory: nothing may stay mounted under it by then.
          for (const point of await mountsUnder(containerd.dir)) await capture(['umount', point]).catch(() => capture(['umount', '-l', point]));
          await containerd.stop();
        }
      }
    }
  } finally {
    // The standby daemons this bench started (the last mount's daemon may have left one behind,
    // still loading at low priority): twice, a second apart.
    await stopStandbys(standbyDir);
    await new Promise((r) => setTimeout(r, 1000));
    await stopStandbys(standbyDir);
  }

  const med = (key: string, f: (s: Sample) => number = (s) => s.seconds): number => median(samples.get(key)!.map(f));
  const peerA = med('a:skopeo');
  const peerB = med('b:skopeo');
  const ctrB = med('b:ctr');
  const x = (peer: number, s: number) => `${(peer / s).toFixed(1)}×`;

  const header = ['tool: (a) rootfs visible / (b) python3 done', '(a) s', '(a) vs skopeo', '(a) fetched', '(b) s', '(b) vs skopeo', '(b) vs ctr', '(b) fetched', '(b) tool returned s'];
  const cells: string[][] = [];
  for (const v of variants) {
    const a = med(`a:${v.name}`);
    const b = med(`b:${v.name}`);
    cells.push([
      `lazyroot mount / run --lazy, ${v.name}`,
      `${a.toFixed(3)} (mount ${med(`a:${v.name}`, (s) => s.mountSeconds!).toFixed(3)})`,
      x(peerA, a),
      `${mib(med(`a:${v.name}`, (s) => s.bytes))} (stats: ${mib(med(`a:${v.name}`, (s) => s.daemonBytes ?? 0))})`,
      b.toFixed(2),
      x(peerB, b),
      x(ctrB, b),
      mib(med(`b:${v.name}`, (s) => s.bytes)),
      med(`b:${v.name}`, (s) => s.exitSeconds!).toFixed(2),
    ]);
  }
  const full = (key: string, tool: string) => {
    const a = med(`a:${key}`);
    const b = med(`b:${key}`);
    cells.push([tool, a.toFixed(2), x(peerA, a), mib(med(`a:${key}`, (s) => s.bytes)), b.toFixed(2), x(peerB, b), x(ctrB, b), mib(med(`b:${key}`, (s) => s.bytes)), med(`b:${key}`, (s) => s.exitSeconds!).toFixed(2)]);
  };
  full('lazyroot', 'lazyroot pull + create / pull + run (overlayfs)');
  full('skopeo', 'skopeo copy + umoci unpack / + runc run (peer)');
  full('ctr', 'ctr images pull / + ctr run --rm (containerd, overlayfs)');
  if (withFloor) cells.push(['lazyroot --version (floor: cold Node start + CLI load)', med('floor').toFixed(3), x(peerA, med('floor')), '0', '', '', '', '', '']);

  const load = loadavg()[0]!.toFixed(2);
  const img = images.image;
  const title =
    `Lazy start, ${label}${networkNote}: Debian bookworm minbase + python3, ${mib(img.compressedBytes)} gzip in ${img.layers.length} layers ` +
    `(eStargz ${mib(images.estargzBytes)}), ${img.mergedEntries} entries; median of ${ctx.rounds} cold rounds (1-min load average, start → end: ${loadAtStart} → ${load}); "vs" = how many times sooner than that peer`;

  const mark = (ok: boolean) => (ok ? 'met' : 'MISSED');
  const goals = [
    `Goals, ${label} (medians):`,
    `  rootfs visible in under 0.2 s: ${goalVariants.map((v) => `${v.name} ${med(`a:${v.name}`).toFixed(3)} s ${mark(med(`a:${v.name}`) < 0.2)}`).join('; ')}`,
    `  python3 at least 7× sooner than full pull + unpack (skopeo+umoci+runc ${peerB.toFixed(2)} s; ctr ${ctrB.toFixed(2)} s): ${goalVariants
      .map((v) => {
        const s = med(`b:${v.name}`);
        return `${v.name} ${(peerB / s).toFixed(1)}× ${mark(peerB / s >= 7)} (vs ctr ${(ctrB / s).toFixed(1)}× ${mark(ctrB / s >= 7)})`;
      })
      .join('; ')}`,
    `  under 5 MiB fetched by then: ${goalVariants.map((v) => `${v.name} ${mib(med(`b:${v.name}`, (s) => s.bytes))} ${mark(med(`b:${v.name}`, (s) => s.bytes) < 5 * MiB)}`).join('; ')}`,
  ];
  return { table: `${title}\n\n${markdown(header, cells)}`, goals };
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
    const measured = ` (measured: ${net.measured.rttMs.toFixed(0)} ms RTT, ${net.measured.mbitPerSecond.toFixed(0)} Mbit/s)`;
    return await lazyStart(ctx, images, net.host, net.relay, 'netns registry, 20 ms RTT, 200 Mbit/s', false, measured);
  } finally {
    await net.stop();
  }
}

import { spawn } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { convertToEstargz, startContainerd, type Containerd } from '../test/helpers/estargz.js';
import { startSnapshotterWorld } from '../test/helpers/snapshotter.js';
import { pushToRegistry } from '../test/helpers/image-builder.js';
import { dropCaches, median, timeCommand } from './measure.js';
import { stargzDaemonBinary, startStargzPeer, writeStargzConfig } from './stargz-peer.js';
import { capture, cpuSeconds, mountsUnder, unmountAllUnder } from './system.js';
import { startEmulatedRegistry, startRelay, type Relay } from './netns.js';
import { describeImage, PYTHON_COMMAND, realisticImageLayout, type RealisticImage } from './realistic-image.js';
import type { BenchContext } from './types.js';

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
  // Built here, and pushed to the registry as the image's index artifact (the "registry index artifact only" variant reads it there).
  await capture([process.execPath, ctx.lazyrootBin, '--store', indexStore, '--quiet', 'index', '--push', `docker://${ctx.registryHost}/${repo}:v1`], 'lazyroot index --push');
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
  /** (a): until the rootfs is visible; (b): until `/bin/true` has finished (the tool returned); (c): until python3 has finished (its output is in). */
  seconds: number;
  /** (c): until the tool returned, its teardown (unmount, container removal) done. */
  exitSeconds?: number;
  /** Bytes the registry sent (through the counting relay), HTTP headers included. */
  bytes: number;
  /** For mounts: `lazyroot mount` alone, before the listing. */
  mountSeconds?: number;
  /** The mount daemon's own count of bytes fetched on demand (ranges only). */
  daemonBytes?: number;
  /** Mount daemon CPU: utime + stime of the daemon process when the mount was ready. */
  cpuSeconds?: number;
  /** The same, less what the standby had used before it took the mount (loading its modules). */
  cpuSinceClaim?: number;
  /** The daemon's own split of its mount CPU (mount --stats): every layer's index ready, then the merged tree. */
  indexCpuSeconds?: number;
  treeCpuSeconds?: number;
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
  /**
   * The store starts with the image's access profile, recorded before the
   * rounds by one `run --lazy` of the python3 command in another store (as a
   * machine that ran the image before has it): the mount fetches those ranges
   * at once.
   */
  profile?: boolean;
  /** Checked against the goals. */
  goal: boolean;
  /**
   * Gzip without local indexes: take the span indexes from the registry's
   * index artifact (`index --push`, done by prepareLazyImages). Every other
   * gzip variant runs with --no-remote-index, so "no index" still means none.
   */
  remoteIndex?: boolean;
}

const variants: Variant[] = [
  { name: 'eStargz (ctr-remote)', repoTag: 'estargz', prebuiltIndex: false, standby: true, goal: true },
  { name: 'gzip + prebuilt index', repoTag: 'gzip', prebuiltIndex: true, standby: true, goal: true },
  { name: 'gzip, no index', repoTag: 'gzip', prebuiltIndex: false, standby: true, goal: true },
  { name: 'gzip, registry index artifact only', repoTag: 'gzip', prebuiltIndex: false, remoteIndex: true, standby: true, goal: false },
  { name: 'eStargz, no standby daemon', repoTag: 'estargz', prebuiltIndex: false, standby: false, goal: false },
  { name: 'eStargz + recorded profile', repoTag: 'estargz', prebuiltIndex: false, standby: true, profile: true, goal: false },
  { name: 'gzip + index + recorded profile', repoTag: 'gzip', prebuiltIndex: true, standby: true, profile: true, goal: false },
];
const goalVariants = variants.filter((v) => v.goal);

/** lazyroot as containerd's proxy snapshotter (`lazyroot snapshotter`), pulled with ctr-remote's label set, as stargz is. */
const snapshotterVariants: Array<{ name: string; repoTag: Variant['repoTag']; prebuiltIndex: boolean }> = [
  { name: 'eStargz', repoTag: 'estargz', prebuiltIndex: false },
  { name: 'gzip + span index', repoTag: 'gzip', prebuiltIndex: true },
];

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

interface LazyStartOptions {
  /** Also time `lazyroot --version`, cold: the floor under every lazyroot row. */
  floor: boolean;
  /** Run containerd + stargz-snapshotter in the same rounds (this daemon binary, stargz-peer.ts) and compare with it. */
  stargzBinary?: string;
  /** Run containerd + `lazyroot snapshotter` in the same rounds. */
  snapshotter?: boolean;
  /** Measure the mount daemon's own CPU time at the first and second mount of the eStargz image. */
  daemonCpu: boolean;
  /** Added to the title (the emulated network as measured). */
  networkNote?: string;
}

/** `ls /usr/bin` in a container: done once as many lines as `names` have arrived; right when they are exactly `names`. */
function listingOf(names: string[]): { done: (stdout: string) => boolean; check: (stdout: string) => string | undefined } {
  const want = new Set(names);
  return {
    done: (out) => out.endsWith('\n') && out.split('\n').length - 1 >= want.size,
    check: (out) => {
      const got = new Set(out.split('\n').filter((l) => l !== ''));
      const missing = [...want].filter((n) => !got.has(n));
      const extra = [...got].filter((n) => !want.has(n));
      return missing.length || extra.length ? `ls /usr/bin listed ${got.size} names, expected the ${want.size} the lazyroot mount shows (missing ${missing.slice(0, 5).join(' ')}; extra ${extra.slice(0, 5).join(' ')})` : undefined;
    },
  };
}

/**
 * Lazy start of the realistic image from a registry reached at `host`
 * (through `relay`, which counts the bytes). Each round, each way of starting
 * gets a fresh empty store (or fresh containerd and stargz roots) and a cold
 * page cache:
 *   (a) rootfs visible: `lazyroot mount` returned and `ls DIR/usr/bin` worked
 *       (full paths: the image pulled and unpacked; stargz: `ctr-remote image
 *       rpull` + `ctr run --rm … ls /usr/bin` has listed it);
 *   (b) `/bin/true` done: `lazyroot run --lazy … -- /bin/true` (stargz:
 *       rpull + `ctr run --rm … /bin/true`) returned, exit 0, teardown included;
 *   (c) first command: `python3 -c 'import json, sys; print(1)'` has exited in
 *       runc, having printed exactly "1".
 */
async function lazyStart(ctx: BenchContext, images: LazyImages, host: string, relay: Relay, label: string, opts: LazyStartOptions): Promise<LazyStartResult> {
  const lz = (store: string, ...args: string[]) => [ctx.lazyrootCommand, '--store', store, ...args];
  const ref = (v: Variant) => `docker://${host}/${images[v.repoTag]}`;
  /** Flags of `mount` and `run --lazy` for a variant: the registry's index artifact only where the variant is about it. */
  const flags = (v: Variant): string[] => (v.repoTag === 'gzip' && !v.remoteIndex ? ['--no-remote-index'] : []);
  const fullRef = `${host}/${images.gzip}`;
  const samples = new Map<string, Sample[]>();
  const add = (key: string, s: Sample) => samples.set(key, [...(samples.get(key) ?? []), s]);
  const elapsed = (since: bigint) => Number(process.hrtime.bigint() - since) / 1e9;
  /** What /usr/bin of the mounted image holds (the first lazyroot mount tells): stargz's `ls` must list exactly that. */
  let usrBin: string[] | undefined;
  const listUsrBin = async (root: string, what: string): Promise<void> => {
    const names = await readdir(join(root, 'usr/bin'));
    if (!names.includes('python3') || !names.includes('bash')) throw new Error(`bench: ${what}: ${root}/usr/bin has no python3 or bash (${names.length} names)`);
    usrBin ??= names;
  };

  // Standby daemons live in the bench's own directory: none of another build or user is used, and the bench stops its own at the end.
  const standbyDir = join(ctx.workDir, 'standby');
  await mkdir(standbyDir, { recursive: true, mode: 0o700 });
  const envFor = (v: Variant): NodeJS.ProcessEnv => ({ ...process.env, LAZYROOT_STANDBY_DIR: standbyDir, ...(v.standby ? {} : { LAZYROOT_STANDBY: '0' }) });
  const prepare = async (v: Variant): Promise<void> => {
    if (v.standby) await ensureStandby(ctx.lazyrootBin, standbyDir);
    else await stopStandbys(standbyDir);
  };

  // The stargz daemon's config names the registry as the clients reach it (the relay); its roots go under here.
  const stargzDir = join(ctx.workDir, 'stargz');
  const stargzConfig = opts.stargzBinary ? await writeStargzConfig(stargzDir, host) : undefined;

  const loadAtStart = loadavg()[0]!.toFixed(2);
  // What containerd runs with stargz and with lazyroot's snapshotter: (a) rootfs visible, (b) /bin/true, (c) python3.
  const stargzWorkloads: Array<{ key: 'a' | 'b' | 'c'; argv: string[] }> = [
    { key: 'a', argv: ['ls', '/usr/bin'] },
    { key: 'b', argv: ['/bin/true'] },
    { key: 'c', argv: PYTHON_COMMAND },
  ];
  const freshStore = async (prefix: string, v?: Variant): Promise<string> => {
    const store = await mkdtemp(join(ctx.workDir, prefix));
    if (v?.prebuiltIndex) await cp(images.indexesDir, join(store, 'indexes'), { recursive: true });
    // Under the name the store gives it (IMAGE-HEX.profile): under any other a mount never finds it.
    if (v?.profile) await cp(profiles.get(v.repoTag)!.path, join(store, 'indexes', 'sha256', profiles.get(v.repoTag)!.name));
    return store;
  };
  // The access profile of each image, recorded once by `run --lazy` of the python3 command (untimed).
  const profiles = new Map<Variant['repoTag'], { path: string; name: string }>();
  for (const v of variants.filter((x) => x.profile)) {
    if (profiles.has(v.repoTag)) continue;
    const store = await freshStore('profile-', { ...v, profile: false });
    await capture(lz(store, 'run', '--lazy', ...flags(v), ref(v), '--', ...PYTHON_COMMAND), `record the access profile of ${v.repoTag}`, { ...envFor(v), LAZYROOT_STANDBY: '0' });
    const recorded = (await readdir(join(store, 'indexes', 'sha256'))).find((n) => n.endsWith('.profile'));
    if (!recorded) throw new Error(`bench: run --lazy of ${ref(v)} recorded no access profile in ${store}`);
    const kept = join(ctx.workDir, `${v.repoTag}-${recorded}`);
    await cp(join(store, 'indexes', 'sha256', recorded), kept);
    profiles.set(v.repoTag, { path: kept, name: recorded });
    await removeStore(ctx.lazyrootBin, store);
  }

  try {
    for (let round = 0; round < ctx.rounds; round++) {
      process.stderr.write(`bench: ${label}: round ${round + 1} of ${ctx.rounds}\n`);
      // The floor under every lazyroot row: a Node start and the CLI's modules, cold.
      if (opts.floor) {
        await dropCaches();
        add('floor', { ...(await timeCommand([process.execPath, ctx.lazyrootBin, '--version'])), bytes: 0 });
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
          const m = await timeCommand(lz(storeA, 'mount', ...flags(v), ref(v), mountpoint), { env: envFor(v) });
          await listUsrBin(mountpoint, `lazyroot mount, ${v.name}`);
          const seconds = elapsed(started);
          // Counted at once: the background prefetch (1 s after ready) must not add to it.
          const bytes = relay.take().down;
          const stats = JSON.parse(await capture(lz(storeA, '--json', 'mount', '--stats', mountpoint))) as { bytesFetched: number; recording: string };
          // A mount that found an access profile records none: the sign that a profile row has its profile.
          // (Until session 12 it was copied in under another name, and those rows ran without one.)
          if (v.profile && stats.recording !== 'no') throw new Error(`bench: ${v.name}: the mount found no access profile in ${storeA} (it is recording one)`);
          add(`a:${v.name}`, { seconds, mountSeconds: m.seconds, bytes, daemonBytes: stats.bytesFetched });
        } finally {
          await removeStore(ctx.lazyrootBin, storeA);
        }

        // (b) `/bin/true` in runc via `lazyroot run --lazy`: until the command returned (it prints nothing), teardown included.
        const storeT = await freshStore('lazy-t-', v);
        try {
          await prepare(v);
          await dropCaches();
          relay.take();
          const m = await timeCommand(lz(storeT, 'run', '--lazy', ...flags(v), ref(v), '--', '/bin/true'), { env: envFor(v) });
          add(`b:${v.name}`, { seconds: m.seconds, bytes: relay.take().down });
        } finally {
          await removeStore(ctx.lazyrootBin, storeT);
        }

        // (c) first command: `lazyroot run --lazy` until python3 has exited in runc and all is cleaned up.
        const storeB = await freshStore('lazy-b-', v);
        try {
          await prepare(v);
          await dropCaches();
          relay.take();
          let bytes = 0;
          const m = await timeCommand(lz(storeB, 'run', '--lazy', ...flags(v), ref(v), '--', ...PYTHON_COMMAND), { env: envFor(v), expectStdout: EXPECTED, onOutput: () => (bytes = relay.take().down) });
          add(`c:${v.name}`, { seconds: m.outputSeconds!, exitSeconds: m.seconds, bytes });
        } finally {
          await removeStore(ctx.lazyrootBin, storeB);
        }
      }

      // containerd + stargz-snapshotter, each workload cold: both daemons fresh (new roots), page cache dropped,
      // then `ctr-remote image rpull` (lazy: manifest, config, footers and TOCs) and `ctr run --rm --snapshotter=stargz`.
      // stargz keeps fetching whole layers in the background afterwards: bytes are counted when the workload is done.
      if (opts.stargzBinary) {
        const esgzRef = `${host}/${images.estargz}`;
        for (const w of stargzWorkloads) {
          const peer = await startStargzPeer(opts.stargzBinary, stargzConfig!, stargzDir);
          try {
            await dropCaches();
            relay.take();
            let bytes = 0;
            const pull = await timeCommand(['ctr-remote', '-a', peer.address, 'image', 'rpull', '--plain-http', esgzRef]);
            const runArgv = ['ctr', '-a', peer.address, 'run', '--rm', '--snapshotter=stargz', esgzRef, `lzb-${process.pid}-${round}-${w.key}`, ...w.argv];
            if (w.key === 'b') {
              const r = await timeCommand(runArgv);
              add('b:stargz', { seconds: pull.seconds + r.seconds, bytes: relay.take().down });
            } else {
              const output = w.key === 'a' ? { outputDone: listingOf(usrBin!) } : { expectStdout: EXPECTED };
              const r = await timeCommand(runArgv, { ...output, onOutput: () => (bytes = relay.take().down) });
              add(`${w.key}:stargz`, { seconds: pull.seconds + r.outputSeconds!, exitSeconds: pull.seconds + r.seconds, bytes });
            }
          } catch (err) {
            const tail = (await peer.log()).split('\n').slice(-15).join('\n');
            throw new Error(`${(err as Error).message}\nstargz daemon log (last lines):\n${tail}`, { cause: err });
          } finally {
            await peer.stop();
          }
        }
      }

      // containerd + lazyroot snapshotter, the same way: a fresh snapshotter store (the span indexes copied in for
      // gzip) and containerd per workload, a standby mount daemon waiting (lazyroot's default, as a long-lived
      // snapshotter has one), cache dropped; `ctr-remote image rpull --snapshotter lazyroot` + `ctr run --rm`.
      if (opts.snapshotter) {
        for (const sv of snapshotterVariants) {
          const refSv = `${host}/${images[sv.repoTag]}`;
          for (const w of stargzWorkloads) {
            await ensureStandby(ctx.lazyrootBin, standbyDir);
            const world = await startSnapshotterWorld({
              env: { ...process.env, LAZYROOT_STANDBY_DIR: standbyDir },
              ...(sv.prebuiltIndex ? { prepareStore: (store: string) => cp(images.indexesDir, join(store, 'indexes'), { recursive: true }) } : {}),
            });
            try {
              await dropCaches();
              relay.take();
              let bytes = 0;
              const address = world.containerd.address;
              const pull = await timeCommand(['ctr-remote', '--address', address, 'image', 'rpull', '--plain-http', '--snapshotter', 'lazyroot', refSv]);
              const runArgv = ['ctr', '--address', address, 'run', '--rm', '--snapshotter', 'lazyroot', refSv, `lzs-${process.pid}-${round}-${w.key}`, ...w.argv];
              const key = `${w.key}:snapshotter:${sv.name}`;
              if (w.key === 'b') {
                const r = await timeCommand(runArgv);
                add(key, { seconds: pull.seconds + r.seconds, bytes: relay.take().down });
              } else {
                const output = w.key === 'a' ? { outputDone: listingOf(usrBin!) } : { expectStdout: EXPECTED };
                const r = await timeCommand(runArgv, { ...output, onOutput: () => (bytes = relay.take().down) });
                add(key, { seconds: pull.seconds + r.outputSeconds!, exitSeconds: pull.seconds + r.seconds, bytes });
              }
            } catch (err) {
              const tail = (await world.log().catch(() => '')).split('\n').slice(-15).join('\n');
              throw new Error(`${(err as Error).message}\nlazyroot snapshotter log (last lines):\n${tail}`, { cause: err });
            } finally {
              await world.stop();
            }
          }
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
        add('c:skopeo', { seconds: copy.seconds + unpack.seconds + runc.outputSeconds!, exitSeconds: copy.seconds + unpack.seconds + runc.seconds, bytes });
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
        add('c:lazyroot', { seconds: pull.seconds + runO.outputSeconds!, exitSeconds: pull.seconds + runO.seconds, bytes: relay.take().down });
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
        add('c:ctr', { seconds: pull.seconds + runC.outputSeconds!, exitSeconds: pull.seconds + runC.seconds, bytes: bytes + relay.take().down });
      } finally {
        if (containerd) {
          // stop() removes its directory: nothing may stay mounted under it by then.
          await unmountAllUnder(containerd.dir);
          await containerd.stop();
        }
      }

      // The mount daemon's own CPU time for this image (eStargz, warm standby): the first mount into a
      // fresh store (TOCs fetched and parsed, 8,000-odd entries merged), then, after unmounting it, a second
      // mount from the same store (TOCs local). --no-prefetch keeps the layers partial, so the second
      // mount is lazy (FUSE) too. Read from /proc/PID/stat as soon as `mount --json` returned with the pid.
      if (opts.daemonCpu) {
        const v = variants.find((x) => x.repoTag === 'estargz' && x.standby)!;
        const storeM = await freshStore('cpu-', v);
        const mnt = join(storeM, 'mnt');
        await mkdir(mnt);
        try {
          for (const which of ['first', 'second']) {
            await prepare(v);
            const before = new Map<number, number>();
            for (const pid of await standbyPids(standbyDir)) before.set(pid, await cpuSeconds(pid).catch(() => 0));
            await dropCaches();
            const started = process.hrtime.bigint();
            const out = JSON.parse(await capture(lz(storeM, '--json', 'mount', '--no-prefetch', ref(v), mnt), 'lazyroot mount --json', envFor(v))) as { pid?: number; driver: string };
            const seconds = elapsed(started);
            if (out.driver !== 'fuse' || !out.pid) throw new Error(`bench: daemon CPU, ${which} mount: expected a FUSE mount with a daemon pid, got ${JSON.stringify(out)}`);
            const cpu = await cpuSeconds(out.pid);
            const split = JSON.parse(await capture(lz(storeM, '--json', 'mount', '--stats', mnt), 'lazyroot mount --stats --json')) as { indexCpuMillis?: number; treeCpuMillis?: number };
            add(`cpu:${which}`, {
              seconds,
              bytes: 0,
              cpuSeconds: cpu,
              cpuSinceClaim: cpu - (before.get(out.pid) ?? 0),
              indexCpuSeconds: (split.indexCpuMillis ?? NaN) / 1000,
              treeCpuSeconds: (split.treeCpuMillis ?? NaN) / 1000,
            });
            await listUsrBin(mnt, `lazyroot mount (${which}, daemon CPU)`);
            await capture(lz(storeM, 'umount', mnt), 'lazyroot umount');
          }
        } finally {
          await removeStore(ctx.lazyrootBin, storeM);
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
  const peerC = med('c:skopeo');
  const ctrC = med('c:ctr');
  const x = (peer: number, s: number) => `${(peer / s).toFixed(1)}×`;

  const header = ['tool: (a) rootfs visible / (c) python3 done', '(a) s', '(a) vs skopeo', '(a) fetched', '(c) s', '(c) vs skopeo', '(c) vs ctr', '(c) fetched', '(c) tool returned s'];
  const cells: string[][] = [];
  for (const v of variants) {
    const a = med(`a:${v.name}`);
    const c = med(`c:${v.name}`);
    cells.push([
      `lazyroot mount / run --lazy, ${v.name}`,
      `${a.toFixed(3)} (mount ${med(`a:${v.name}`, (s) => s.mountSeconds!).toFixed(3)})`,
      x(peerA, a),
      `${mib(med(`a:${v.name}`, (s) => s.bytes))} (stats: ${mib(med(`a:${v.name}`, (s) => s.daemonBytes ?? 0))})`,
      c.toFixed(2),
      x(peerC, c),
      x(ctrC, c),
      mib(med(`c:${v.name}`, (s) => s.bytes)),
      med(`c:${v.name}`, (s) => s.exitSeconds!).toFixed(2),
    ]);
  }
  const full = (key: string, tool: string) => {
    const a = med(`a:${key}`);
    const c = med(`c:${key}`);
    cells.push([tool, a.toFixed(2), x(peerA, a), mib(med(`a:${key}`, (s) => s.bytes)), c.toFixed(2), x(peerC, c), x(ctrC, c), mib(med(`c:${key}`, (s) => s.bytes)), med(`c:${key}`, (s) => s.exitSeconds!).toFixed(2)]);
  };
  if (opts.stargzBinary) full('stargz', 'ctr-remote image rpull / + ctr run --rm (containerd + stargz-snapshotter, lazy)');
  full('lazyroot', 'lazyroot pull + create / pull + run (overlayfs)');
  full('skopeo', 'skopeo copy + umoci unpack / + runc run (peer)');
  full('ctr', 'ctr images pull / + ctr run --rm (containerd, overlayfs)');
  if (opts.floor) cells.push(['lazyroot --version (floor: cold Node start + CLI load)', med('floor').toFixed(3), x(peerA, med('floor')), '0', '', '', '', '', '']);

  const load = loadavg()[0]!.toFixed(2);
  const img = images.image;
  const title =
    `Lazy start, ${label}${opts.networkNote ?? ''}: Debian bookworm minbase + python3, ${mib(img.compressedBytes)} gzip in ${img.layers.length} layers ` +
    `(eStargz ${mib(images.estargzBytes)}), ${img.mergedEntries} entries; median of ${ctx.rounds} cold rounds (1-min load average, start → end: ${loadAtStart} → ${load}); "vs" = how many times sooner than that peer`;
  const tables = [`${title}\n\n${markdown(header, cells)}`];

  const mark = (ok: boolean) => (ok ? 'met' : 'MISSED');
  const goals = [
    `Goals, ${label} (medians):`,
    `  rootfs visible in under 0.2 s: ${goalVariants.map((v) => `${v.name} ${med(`a:${v.name}`).toFixed(3)} s ${mark(med(`a:${v.name}`) < 0.2)}`).join('; ')}`,
    `  python3 at least 7× sooner than full pull + unpack (skopeo+umoci+runc ${peerC.toFixed(2)} s; ctr ${ctrC.toFixed(2)} s): ${goalVariants
      .map((v) => {
        const s = med(`c:${v.name}`);
        return `${v.name} ${(peerC / s).toFixed(1)}× ${mark(peerC / s >= 7)} (vs ctr ${(ctrC / s).toFixed(1)}× ${mark(ctrC / s >= 7)})`;
      })
      .join('; ')}`,
    `  under 5 MiB fetched by then: ${goalVariants.map((v) => `${v.name} ${mib(med(`c:${v.name}`, (s) => s.bytes))} ${mark(med(`c:${v.name}`, (s) => s.bytes) < 5 * MiB)}`).join('; ')}`,
  ];

  if (opts.stargzBinary) {
    // The same rounds against containerd's stargz-snapshotter: each lazyroot row's seconds with (× stargz) = lazyroot ÷ stargz.
    const sA = med('a:stargz');
    const sB = med('b:stargz');
    const sC = med('c:stargz');
    const sBytes = med('c:stargz', (s) => s.bytes);
    const times = (s: number, peer: number) => `${(s / peer).toFixed(2)}×`;
    const sgHeader = ['tool: (a) mount + ls / (b), (c) run --lazy', '(a) rootfs visible s', '(b) /bin/true done s', '(c) python3 printed 1 s', '(c) fetched'];
    const sgCells: string[][] = [
      ['containerd + stargz-snapshotter: ctr-remote image rpull + ctr run --rm (peer)', sA.toFixed(3), sB.toFixed(2), sC.toFixed(2), mib(sBytes)],
    ];
    const row = (label: string, key: string) => {
      const a = med(`a:${key}`);
      const b = med(`b:${key}`);
      const c = med(`c:${key}`);
      const bytes = med(`c:${key}`, (s) => s.bytes);
      sgCells.push([label, `${a.toFixed(3)} (${times(a, sA)})`, `${b.toFixed(2)} (${times(b, sB)})`, `${c.toFixed(2)} (${times(c, sC)})`, `${mib(bytes)} (${times(bytes, sBytes)})`]);
    };
    if (opts.snapshotter) for (const sv of snapshotterVariants) row(`containerd + lazyroot snapshotter, ${sv.name}: ctr-remote image rpull + ctr run --rm`, `snapshotter:${sv.name}`);
    for (const v of variants) row(`lazyroot, ${v.name}`, v.name);
    tables.push(
      `Lazy start vs containerd's stargz-snapshotter, ${label}: same image (eStargz for stargz), same rounds; median of ${ctx.rounds} cold rounds; ` +
        `(× stargz) = lazyroot ÷ stargz, under 1 is faster / fewer bytes. (a) lazyroot mount + ls /usr/bin | rpull + ctr run ls /usr/bin listed; ` +
        `(b) until the command returned (teardown included); (c) until "1" was printed; fetched: registry bytes by then\n\n${markdown(sgHeader, sgCells)}`,
    );
    const est = variants.find((v) => v.repoTag === 'estargz' && v.standby)!;
    const gzi = variants.find((v) => v.prebuiltIndex)!;
    const vs = (key: string, peer: number, bound: number) => {
      const s = med(key);
      return `${s.toFixed(2)} s vs ${peer.toFixed(2)} s = ${(s / peer).toFixed(2)}× ${mark(s / peer <= bound)}`;
    };
    const estBytes = med(`c:${est.name}`, (s) => s.bytes);
    goals.push(
      `Goals vs stargz-snapshotter, ${label} (medians; × = lazyroot ÷ stargz):`,
      `  eStargz run --lazy ≤ 0.8× stargz: python3 ${vs(`c:${est.name}`, sC, 0.8)}; /bin/true ${vs(`b:${est.name}`, sB, 0.8)}; rootfs visible ${vs(`a:${est.name}`, sA, 0.8)}`,
      `  eStargz bytes fetched by python3 ≤ stargz: ${mib(estBytes)} vs ${mib(sBytes)} = ${(estBytes / sBytes).toFixed(2)}× ${mark(estBytes <= sBytes)}`,
      `  gzip + prebuilt span index ≤ 1.0× stargz (python3): ${vs(`c:${gzi.name}`, sC, 1.0)}`,
      ...variants.filter((v) => v.profile).map((v) => `  ${v.name}: python3 ≤ 0.6× stargz: ${vs(`c:${v.name}`, sC, 0.6)}`),
    );
    if (opts.snapshotter) {
      for (const sv of snapshotterVariants) {
        const key = `snapshotter:${sv.name}`;
        const bytes = med(`c:${key}`, (s) => s.bytes);
        goals.push(
          `  containerd + lazyroot snapshotter, ${sv.name}, ≤ 0.7× stargz: python3 ${vs(`c:${key}`, sC, 0.7)}; /bin/true ${vs(`b:${key}`, sB, 0.7)}; rootfs visible ${vs(`a:${key}`, sA, 0.7)}; ` +
            `bytes ${mib(bytes)} vs ${mib(sBytes)} ${mark(bytes <= sBytes)}`,
        );
      }
    }
  }

  if (opts.daemonCpu) {
    const line = (which: string, what: string) =>
      `  ${which} mount (${what}): ${med(`cpu:${which}`, (s) => s.cpuSinceClaim!).toFixed(3)} s since it took the mount ` +
      `(${med(`cpu:${which}`, (s) => s.cpuSeconds!).toFixed(3)} s with its start as a standby); mount returned in ${med(`cpu:${which}`).toFixed(3)} s; ` +
      `of it, on its main thread by its own count: ${med(`cpu:${which}`, (s) => s.indexCpuSeconds!).toFixed(3)} s until every layer's index was ready (TOCs fetched, checked, mapped), ` +
      `${med(`cpu:${which}`, (s) => s.treeCpuSeconds!).toFixed(3)} s for the merged tree (merge + FUSE tree, or read back)`;
    tables.push(
      [
        `Mount daemon CPU time (utime + stime of the daemon process from /proc/PID/stat, read when \`lazyroot mount --json\` returned), eStargz image, ${img.mergedEntries} entries, warm standby, --no-prefetch; median of ${ctx.rounds}:`,
        line('first', 'fresh store: TOCs fetched, parsed and merged'),
        line('second', 'same store after umount: TOCs local'),
      ].join('\n'),
    );
    const tree = med('cpu:first', (s) => s.treeCpuSeconds!);
    goals.push(`  merged tree of the ${img.mergedEntries}-entry image built from its TOCs ≤ 50 ms CPU (first mount, the TOCs parsed before; the main thread, where that work runs): ${(tree * 1000).toFixed(0)} ms ${mark(tree <= 0.05)}`);
  }
  return { table: tables.join('\n\n'), goals };
}

/**
 * Lazy start against the loopback registry, through a counting relay (no
 * delay), with containerd's stargz-snapshotter in the same rounds (unless
 * BENCH_STARGZ=0) and the mount daemon's CPU time.
 */
export async function lazyBench(ctx: BenchContext, images: LazyImages): Promise<LazyStartResult> {
  const stargzBinary = process.env.BENCH_STARGZ === '0' ? undefined : await stargzDaemonBinary(ctx);
  const [name, port] = ctx.registryHost.split(':');
  const relay = await startRelay({ host: '127.0.0.1', port: 0 }, { host: name!, port: Number(port) });
  try {
    return await lazyStart(ctx, images, relay.address, relay, 'loopback registry', { floor: true, daemonCpu: true, snapshotter: process.env.BENCH_SNAPSHOTTER !== '0', ...(stargzBinary ? { stargzBinary } : {}) });
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
    const networkNote = ` (measured: ${net.measured.rttMs.toFixed(0)} ms RTT, ${net.measured.mbitPerSecond.toFixed(0)} Mbit/s)`;
    return await lazyStart(ctx, images, net.host, net.relay, 'netns registry, 20 ms RTT, 200 Mbit/s', { floor: false, daemonCpu: false, networkNote });
  } finally {
    await net.stop();
  }
}

import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnProcess, type ManagedProcess } from '../test/helpers/process.js';
import { dropCaches, median, timeCommand } from './measure.js';
import { startRelay, type Relay } from './netns.js';
import { PYTHON_COMMAND } from './realistic-image.js';
import { removeStore, type LazyImages } from './lazy-bench.js';
import { capture, mountsUnder, unmountAllUnder } from './system.js';
import type { BenchContext } from './types.js';

/**
 * Podman (Debian's 4.3.1) running the realistic image, cold, three ways:
 *   - its own pull: `podman run` downloads and unpacks every layer;
 *   - through `lazyroot layer-store` (an additional layer store named in
 *     storage.conf), gzip layers with the span indexes prebuilt;
 *   - the same with the eStargz form of the image (no index needed).
 * Each (round, way, workload) gets a fresh podman storage root, a fresh
 * lazyroot store and layer-store mount, and a cold page cache. The layer
 * store is a long-running daemon (as containerd is for the containerd rows):
 * its start is not timed, the `podman run` (pull included) is.
 * Registry bytes are counted by a relay in front of the loopback registry:
 * both podman and the layer store reach the registry through it.
 */

// The flags podman needs on these machines (shared/peers/podman.md).
const PODMAN_GLOBAL = ['--runtime', 'runc', '--cgroup-manager', 'cgroupfs'];
const PODMAN_RUN = ['run', '--rm', '--net=none', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024', '--tls-verify=false'];

/** What the python3 command prints: the check that each measured run really worked. */
const EXPECTED = '1\n';

interface Way {
  key: string;
  name: string;
  /** Which form of the image podman runs. */
  repoTag: keyof Pick<LazyImages, 'gzip' | 'estargz'>;
  /** Through `lazyroot layer-store` (else podman's own pull). */
  layerStore: boolean;
  /** Copy the prebuilt span indexes into the fresh lazyroot store. */
  prebuiltIndex: boolean;
}

const WAYS: Way[] = [
  { key: 'pull', name: "podman run, Podman's own pull (gzip) (peer)", repoTag: 'gzip', layerStore: false, prebuiltIndex: false },
  { key: 'gzip', name: 'podman run + lazyroot layer-store, gzip + span index', repoTag: 'gzip', layerStore: true, prebuiltIndex: true },
  { key: 'esgz', name: 'podman run + lazyroot layer-store, eStargz', repoTag: 'estargz', layerStore: true, prebuiltIndex: false },
];

interface Sample {
  /** (b): until `podman run … /bin/true` returned; (c): until python3's "1" was printed. */
  seconds: number;
  /** (c): until `podman run` returned (container removed). */
  exitSeconds?: number;
  /** Registry bytes through the relay by then (HTTP headers included). */
  bytes: number;
}

export interface PodmanBenchResult {
  table: string;
  goals: string[];
}

const MiB = 1 << 20;
const mib = (bytes: number) => (bytes >= 10 * MiB ? `${(bytes / MiB).toFixed(1)} MiB` : bytes >= MiB ? `${(bytes / MiB).toFixed(2)} MiB` : `${(bytes / 1024).toFixed(0)} KiB`);

function markdown(header: string[], cells: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => `| ${c.map((x, i) => x.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...cells.map(line)].join('\n');
}

/** One cold setting: a podman storage root (and for the layer-store ways a lazyroot store with its layer store mounted). */
interface Setting {
  env: NodeJS.ProcessEnv;
  podman: (args: string[]) => string[];
  checkServed(layers: number): Promise<void>;
  /** Stops what it started (by PID), unmounts, removes its directories. */
  teardown(): Promise<void>;
}

async function startSetting(ctx: BenchContext, images: LazyImages, way: Way): Promise<Setting> {
  const dir = await mkdtemp(join(ctx.workDir, `podman-${way.key}-`));
  // Podman refuses a runroot over 50 characters: its directories go under a short name in the system's tmpdir.
  const podmanRoot = await mkdtemp(join(tmpdir(), 'lzp-'));
  const graphroot = join(podmanRoot, 'root');
  const runroot = join(podmanRoot, 'run');
  const tmp = join(podmanRoot, 'tmp');
  const conf = join(podmanRoot, 'storage.conf');
  const env: NodeJS.ProcessEnv = { ...process.env, CONTAINERS_STORAGE_CONF: conf };
  // Root and runroot come from storage.conf only: podman 4.3 given `--root`/`--runroot` ignores its
  // `additionallayerstores` and pulls everything itself (seen here: the layer-store rows fetched whole blobs).
  const podman = (args: string[]) => ['podman', ...PODMAN_GLOBAL, '--tmpdir', tmp, ...args];
  const store = join(dir, 'store');
  const mnt = join(dir, 'als');
  let daemon: ManagedProcess | undefined;
  let daemonLog = '';
  let metricsUrl: string | undefined;

  const teardown = async (): Promise<void> => {
    const problems: string[] = [];
    // Podman's images first (their release tells the layer store), then whatever podman left mounted under its root.
    await capture(podman(['rmi', '--all', '--force']), 'podman rmi --all', env).catch((err: Error) => problems.push(err.message));
    await unmountAllUnder(podmanRoot).catch((err: Error) => problems.push(err.message));
    if (daemon) {
      // SIGTERM: the layer store unmounts itself.
      await daemon.stop();
      const left = await mountsUnder(mnt);
      if (left.length) {
        problems.push(`lazyroot layer-store (pid ${daemon.pid}, ${daemon.exitStatus()}) left ${left.join(', ')} mounted`);
        for (const point of left) await capture(['umount', '-l', point]).catch(() => undefined);
      }
    }
    for (const d of [podmanRoot, dir]) {
      const left = await mountsUnder(d);
      if (left.length) throw new Error(`bench: podman: still mounted under ${d}: ${left.join(', ')}; not removing it (${problems.join('; ')})`);
    }
    await removeStore(ctx.lazyrootBin, store);
    await rm(podmanRoot, { recursive: true, force: true });
    await rm(dir, { recursive: true, force: true });
    if (problems.length) throw new Error(`bench: podman teardown: ${problems.join('; ')}`);
  };

  try {
    let options = '';
    if (way.layerStore) {
      await mkdir(store);
      if (way.prebuiltIndex) await cp(images.indexesDir, join(store, 'indexes'), { recursive: true });
      await mkdir(mnt);
      daemon = spawnProcess(process.execPath, [ctx.lazyrootBin, '--store', store, 'layer-store', '--metrics-address', '127.0.0.1:0', mnt], { name: 'lazyroot layer-store' });
      daemon.child.stdout!.on('data', (c: Buffer) => (daemonLog += c.toString()));
      daemon.child.stderr!.on('data', (c: Buffer) => (daemonLog += c.toString()));
      await daemon.waitReady(async () => daemonLog.includes('layer store at') && (await mountsUnder(mnt)).includes(mnt), { timeoutMs: 30_000, describe: () => daemonLog.slice(-2000) });
      metricsUrl = /metrics at (\S+)/.exec(daemonLog)?.[1];
      options = `[storage.options]\nadditionallayerstores = ["${mnt}:ref"]\n`;
    }
    await writeFile(conf, `[storage]\ndriver = "overlay"\nrunroot = "${runroot}"\ngraphroot = "${graphroot}"\n${options}`);
  } catch (err) {
    await teardown().catch(() => undefined);
    throw err;
  }
  /**
   * After a run through the layer store: every layer of the image was opened
   * there (else podman pulled it itself, and the row would measure its pull).
   */
  const checkServed = async (layers: number): Promise<void> => {
    if (!way.layerStore) return;
    if (!metricsUrl) throw new Error(`bench: podman: the layer store named no metrics address: ${daemonLog.slice(-500)}`);
    const text = await (await fetch(metricsUrl)).text();
    const open = text.split('\n').filter((l) => l.startsWith('lazyroot_layer_fetched_ratio{')).length;
    if (open < layers) throw new Error(`bench: podman, ${way.name}: the layer store opened ${open} of the image's ${layers} layers: podman pulled the rest itself`);
  };
  return { env, podman, checkServed, teardown };
}

/** Podman with `lazyroot layer-store` against Podman's own pull; the realistic image from prepareLazyImages. */
export async function podmanBench(ctx: BenchContext, images: LazyImages): Promise<PodmanBenchResult> {
  const [name, port] = ctx.registryHost.split(':');
  const relay: Relay = await startRelay({ host: '127.0.0.1', port: 0 }, { host: name!, port: Number(port) });
  const samples = new Map<string, Sample[]>();
  const add = (key: string, s: Sample) => samples.set(key, [...(samples.get(key) ?? []), s]);
  const loadAtStart = loadavg()[0]!.toFixed(2);
  try {
    for (let round = 0; round < ctx.rounds; round++) {
      process.stderr.write(`bench: podman: round ${round + 1} of ${ctx.rounds}\n`);
      for (const way of WAYS) {
        const image = `${relay.address}/${images[way.repoTag]}`;
        for (const workload of ['b', 'c'] as const) {
          const setting = await startSetting(ctx, images, way);
          let failed = false;
          try {
            await dropCaches();
            relay.take();
            if (workload === 'b') {
              const m = await timeCommand(setting.podman([...PODMAN_RUN, image, '/bin/true']), { env: setting.env });
              add(`b:${way.key}`, { seconds: m.seconds, bytes: relay.take().down });
            } else {
              let bytes = 0;
              const m = await timeCommand(setting.podman([...PODMAN_RUN, image, ...PYTHON_COMMAND]), { env: setting.env, expectStdout: EXPECTED, onOutput: () => (bytes = relay.take().down) });
              add(`c:${way.key}`, { seconds: m.outputSeconds!, exitSeconds: m.seconds, bytes });
            }
            await setting.checkServed(images.image.layers.length);
          } catch (err) {
            failed = true;
            throw err;
          } finally {
            // A teardown failure after a failed run must not hide the run's error.
            await setting.teardown().catch((err: Error) => {
              if (!failed) throw err;
              process.stderr.write(`bench: podman: ${err.message}\n`);
            });
          }
        }
      }
    }
  } finally {
    await relay.close();
  }

  const med = (key: string, f: (s: Sample) => number = (s) => s.seconds) => median(samples.get(key)!.map(f));
  const pullB = med('b:pull');
  const pullC = med('c:pull');
  const pullBytes = med('c:pull', (s) => s.bytes);
  const times = (s: number, peer: number) => `${(s / peer).toFixed(2)}×`;
  const header = ['podman run, cold (fresh storage)', '(b) /bin/true s (× pull)', '(c) python3 printed 1 s (× pull)', '(c) podman returned s', '(c) fetched (× pull)'];
  const cells = WAYS.map((w) => {
    const b = med(`b:${w.key}`);
    const c = med(`c:${w.key}`);
    const bytes = med(`c:${w.key}`, (s) => s.bytes);
    return [w.name, `${b.toFixed(2)} (${times(b, pullB)})`, `${c.toFixed(2)} (${times(c, pullC)})`, med(`c:${w.key}`, (s) => s.exitSeconds!).toFixed(2), `${mib(bytes)} (${times(bytes, pullBytes)})`];
  });
  const title =
    `Podman 4.3 with lazyroot layer-store vs Podman's own pull, loopback registry (counting relay): Debian bookworm + python3, ${mib(images.image.compressedBytes)} gzip ` +
    `(eStargz ${mib(images.estargzBytes)}); median of ${ctx.rounds} cold rounds, each run with fresh podman storage, a fresh lazyroot store and layer store (started untimed), page cache dropped ` +
    `(1-min load average, start → end: ${loadAtStart} → ${loadavg()[0]!.toFixed(2)}); × pull = row ÷ Podman's own pull, under 1 is faster / fewer bytes; ` +
    `(b) until \`podman run … /bin/true\` returned, pull included; (c) until python3 printed "1"; fetched: registry bytes by then`;
  const goals = [
    'Podman with the layer store vs its own pull (medians; × = row ÷ pull):',
    ...WAYS.filter((w) => w.layerStore).map(
      (w) => `  ${w.name}: /bin/true ${times(med(`b:${w.key}`), pullB)}, python3 ${times(med(`c:${w.key}`), pullC)}, bytes ${times(med(`c:${w.key}`, (s) => s.bytes), pullBytes)}`,
    ),
  ];
  return { table: `${title}\n\n${markdown(header, cells)}`, goals };
}

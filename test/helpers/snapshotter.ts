/**
 * `lazyroot snapshotter` for tests: the real CLI as a child process, with its
 * own store and socket under a temp dir, wired into a private containerd
 * (estargz.ts's startContainerd, `[proxy_plugins.lazyroot]`):
 *
 *   const env = await startSnapshotterWorld();
 *   after(() => env.stop());
 *   await env.ctr(['image', 'rpull', '--plain-http', '--snapshotter', 'lazyroot', ref]);
 *
 * `stop()` ends containerd and the snapshotter by their PIDs, unmounts what
 * is left under its dirs (lazy mounts' daemons exit with their mount), and
 * removes the dirs. `restartSnapshotter()` stops and starts the snapshotter
 * alone (the FUSE daemons, their own processes, keep serving).
 */
import { execFile } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { lazyroot, lazyrootBin } from './cli.js';
import { startContainerd, type Containerd } from './estargz.js';
import { spawnProcess, type ManagedProcess } from './process.js';

const run = promisify(execFile);

export interface SnapshotterWorld {
  dir: string;
  store: string;
  socket: string;
  containerd: Containerd;
  snapshotterPid(): number;
  /** GET /metrics of the running snapshotter (Prometheus text). */
  metrics(): Promise<string>;
  /** The snapshotter's stderr so far. */
  log(): Promise<string>;
  /** `ctr-remote --address CONTAINERD …`, rejecting with stderr on failure. */
  ctr(args: string[]): Promise<string>;
  /** The same, resolving with the exit code and both outputs. */
  ctrStatus(args: string[]): Promise<{ code: number; stdout: string; stderr: string }>;
  restartSnapshotter(): Promise<void>;
  stop(): Promise<void>;
}

export interface SnapshotterWorldOptions {
  /** Runs on the empty store before the snapshotter starts (the bench copies span indexes in). */
  prepareStore?: (store: string) => Promise<void>;
  /** The snapshotter's environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
  /** More arguments for `lazyroot snapshotter` (`--trace`). */
  args?: string[];
  /** containerd's CRI plugin on, pulling with lazyroot (startContainerd's `cri`), these registries over plain HTTP. */
  cri?: { plainHttp?: string[] };
}

async function startSnapshotterProcess(store: string, socket: string, logPath: string, env?: NodeJS.ProcessEnv, args: string[] = []): Promise<ManagedProcess> {
  // The log is appended to across restarts: only what this start writes counts.
  const before = (await readFile(logPath, 'utf8').catch(() => '')).length;
  const logFd = openSync(logPath, 'a');
  let proc: ManagedProcess;
  try {
    proc = spawnProcess(process.execPath, [lazyrootBin, '--store', store, 'snapshotter', '--address', socket, '--metrics-address', '127.0.0.1:0', ...args], {
      stdio: ['ignore', logFd, logFd],
      name: `lazyroot snapshotter on ${socket}`,
      ...(env ? { env } : {}),
    });
  } finally {
    closeSync(logFd);
  }
  await proc.waitReady(async () => (await readFile(logPath, 'utf8').catch(() => '')).slice(before).includes(`listening on ${socket}`), {
    timeoutMs: 20_000,
    intervalMs: 20,
    describe: () => readFile(logPath, 'utf8').catch(() => ''),
  });
  return proc;
}

export async function startSnapshotterWorld(options: SnapshotterWorldOptions = {}): Promise<SnapshotterWorld> {
  const dir = await mkdtemp(join(tmpdir(), 'lazyroot-snap-'));
  const store = join(dir, 'store');
  const socket = join(dir, 'snapshotter.sock');
  const logPath = join(dir, 'snapshotter.log');
  if (options.prepareStore) {
    await mkdir(store, { recursive: true });
    await options.prepareStore(store);
  }
  let snapshotter = await startSnapshotterProcess(store, socket, logPath, options.env, options.args);
  let containerd: Containerd;
  try {
    containerd = await startContainerd({ proxySnapshotters: { lazyroot: socket }, ...(options.cri ? { cri: { snapshotter: 'lazyroot', ...options.cri } } : {}) });
  } catch (err) {
    await snapshotter.stop();
    throw err;
  }
  const ctrStatus = async (args: string[]) => {
    try {
      const { stdout, stderr } = await run('ctr-remote', ['--address', containerd.address, ...args], { maxBuffer: 16 << 20 });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as Error & { code?: number; stdout?: string; stderr?: string };
      if (typeof e.code !== 'number') throw err;
      return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
    }
  };
  return {
    dir,
    store,
    socket,
    containerd,
    snapshotterPid: () => snapshotter.pid,
    log: () => readFile(logPath, 'utf8'),
    async metrics() {
      const ports = [...(await readFile(logPath, 'utf8')).matchAll(/metrics on port (\d+)/g)];
      const port = ports[ports.length - 1]?.[1];
      if (!port) throw new Error('the snapshotter logged no metrics port');
      const response = await fetch(`http://127.0.0.1:${port}/metrics`);
      if (response.status !== 200) throw new Error(`GET /metrics: ${response.status} ${await response.text()}`);
      return response.text();
    },
    ctr: containerd.ctr,
    ctrStatus,
    async restartSnapshotter() {
      await snapshotter.stop();
      snapshotter = await startSnapshotterProcess(store, socket, logPath, options.env, options.args);
      // containerd redials a proxy plugin with a backoff: until it has, its calls fail at once with the
      // old connection's error ("connection refused"). Wait until it reaches the new process.
      for (let i = 0; ; i++) {
        const probe = await ctrStatus(['snapshots', '--snapshotter', 'lazyroot', 'ls']);
        if (probe.code === 0) break;
        if (i >= 200) throw new Error(`containerd does not reach the restarted snapshotter: ${probe.stderr}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async stop() {
      await containerd.stop().catch(() => undefined);
      await snapshotter.stop();
      // Lazy mounts the snapshotter made: `lazyroot umount` stops each one's daemon (by the PID the store recorded).
      const mounts = join(store, 'snapshotter', 'mounts');
      if (existsSync(mounts)) {
        const info = await readFile('/proc/self/mountinfo', 'utf8');
        for (const line of info.split('\n')) {
          const point = line.split(' ')[4];
          if (point?.startsWith(`${mounts}/`)) await lazyroot(['--store', store, 'umount', point]);
        }
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

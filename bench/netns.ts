/**
 * Network plumbing for the lazy-start benchmarks.
 *
 * `startRelay` is a TCP relay on loopback that counts the bytes each way and
 * can hold every chunk back for a fixed delay in each direction (this kernel
 * has no netem, so latency is added here, in user space). The benchmarks point
 * every client at it, so "bytes fetched" counts everything a tool took from
 * the registry: manifests, configs, whole layers, ranges, HTTP headers.
 *
 * `startEmulatedRegistry` puts a second docker-registry (read-only, on the
 * first one's storage) behind an emulated network:
 *
 *   client ─tcp─▶ 127.0.0.1:P  relay in this process: +10 ms each way, counts
 *                   │ unix socket (sockets on paths cross network namespaces)
 *                   ▼
 *          netns lzb<pid>c: bridge (this file run as `bridge`)  10.231.0.1
 *                   │ veth, tbf 200 Mbit/s on both ends
 *                   ▼
 *          netns lzb<pid>r: docker-registry on 10.231.0.2:5000
 *
 * Both veth ends live in namespaces made here, so the host's own network
 * configuration is untouched; `stop()` ends the processes it started (by PID)
 * and deletes the namespaces, which takes the veth pair and qdiscs with them.
 */
import { execFile, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { spawnProcess, type ManagedProcess } from '../test/helpers/process.js';

const run = promisify(execFile);

export type Endpoint = { host: string; port: number } | { path: string };

export interface RelayCounts {
  /** Bytes from the target to the clients (responses). */
  down: number;
  /** Bytes from the clients to the target (requests). */
  up: number;
  connections: number;
}

export interface Relay {
  /** `127.0.0.1:PORT`, or the unix socket path. */
  address: string;
  /** Counts since the last `take()` (or the start), then starts counting afresh. */
  take(): RelayCounts;
  close(): Promise<void>;
}

export interface RelayOptions {
  /** Hold each chunk this long in each direction, and a new connection for two of these (its handshake). */
  delayMs?: number;
  /** Pause a sender while this many bytes wait in one direction (default 8 MiB). */
  highWaterBytes?: number;
}

/**
 * Forwards `from` to `to`, each chunk no sooner than `delayMs` after it
 * arrived, in order, with backpressure both ways (a slow reader pauses the
 * sender instead of filling memory).
 */
function forward(from: Socket, to: Socket, delayMs: number, highWater: number, count: (n: number) => void): void {
  const queue: Array<{ due: number; chunk: Buffer }> = [];
  let queued = 0;
  let ended = false;
  let timer: NodeJS.Timeout | undefined;
  let waitingDrain = false;

  const flush = (): void => {
    timer = undefined;
    if (waitingDrain || to.destroyed) return;
    const now = performance.now();
    while (queue.length > 0 && queue[0]!.due <= now) {
      const { chunk } = queue.shift()!;
      queued -= chunk.length;
      if (!to.write(chunk)) {
        waitingDrain = true;
        to.once('drain', () => {
          waitingDrain = false;
          flush();
        });
        break;
      }
    }
    if (queued < highWater / 4 && from.isPaused()) from.resume();
    if (queue.length > 0) {
      if (!waitingDrain) timer = setTimeout(flush, Math.max(0, queue[0]!.due - performance.now()));
    } else if (ended && !waitingDrain) {
      to.end();
    }
  };

  from.on('data', (chunk: Buffer) => {
    count(chunk.length);
    if (delayMs === 0 && queue.length === 0 && !waitingDrain) {
      if (!to.write(chunk)) {
        from.pause();
        to.once('drain', () => from.resume());
      }
      return;
    }
    queue.push({ due: performance.now() + delayMs, chunk });
    queued += chunk.length;
    if (queued >= highWater) from.pause();
    if (!timer && !waitingDrain) timer = setTimeout(flush, delayMs);
  });
  from.on('end', () => {
    ended = true;
    if (queue.length === 0 && !waitingDrain) to.end();
  });
  // A sender gone without a clean end (reset, error) takes the other side with it;
  // after a clean end, the queue drains and `to` is ended above.
  from.on('close', () => {
    if (!ended) {
      if (timer) clearTimeout(timer);
      to.destroy();
    }
  });
  to.on('close', () => {
    if (timer) clearTimeout(timer);
    queue.length = 0;
  });
}

function connectTo(target: Endpoint): Socket {
  return 'path' in target ? connect({ path: target.path, allowHalfOpen: true }) : connect({ port: target.port, host: target.host, allowHalfOpen: true });
}

/** A TCP (or unix socket) relay listening on `listen`, forwarding every connection to `target`. */
export async function startRelay(listen: Endpoint, target: Endpoint, options: RelayOptions = {}): Promise<Relay> {
  const delayMs = options.delayMs ?? 0;
  const highWater = options.highWaterBytes ?? 8 << 20;
  let counts: RelayCounts = { down: 0, up: 0, connections: 0 };
  const sockets = new Set<Socket>();

  const server: Server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
    counts.connections++;
    sockets.add(client);
    const start = () => {
      if (client.destroyed) return;
      const upstream = connectTo(target);
      upstream.setNoDelay?.(true);
      client.setNoDelay?.(true);
      sockets.add(upstream);
      const fail = () => {
        client.destroy();
        upstream.destroy();
      };
      client.on('error', fail);
      upstream.on('error', fail);
      client.on('close', () => sockets.delete(client));
      upstream.on('close', () => sockets.delete(upstream));
      forward(client, upstream, delayMs, highWater, (n) => (counts.up += n));
      forward(upstream, client, delayMs, highWater, (n) => (counts.down += n));
      client.resume();
    };
    // A real connection costs a round trip before the client may send.
    if (delayMs > 0) setTimeout(start, 2 * delayMs);
    else start();
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if ('path' in listen) server.listen(listen.path, resolve);
    else server.listen(listen.port, listen.host, resolve);
  });
  const address = 'path' in listen ? listen.path : `${listen.host}:${(server.address() as AddressInfo).port}`;
  return {
    address,
    take() {
      const out = counts;
      counts = { down: 0, up: 0, connections: 0 };
      return out;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// ---- the emulated network

export interface NetworkShape {
  /** Added in each direction, so the round trip grows by twice this. */
  delayMsEachWay: number;
  /** tc tbf rate on both veth ends, e.g. '200mbit'. */
  rate: string;
}

export interface EmulatedRegistry {
  /** `127.0.0.1:PORT` of the delaying, counting relay in front of it all. */
  host: string;
  relay: Relay;
  shape: NetworkShape;
  /** Measured through the whole path: median of 7 GET /v2/, and one large blob GET. */
  measured: { rttMs: number; mbitPerSecond: number };
  stop(): Promise<void>;
}

// Last-resort cleanup if the bench dies without stop(): our namespaces only (spawnProcess kills our PIDs).
const liveNamespaces = new Set<string>();
process.on('exit', () => {
  for (const ns of liveNamespaces) {
    try {
      // Synchronous on purpose: 'exit' handlers cannot wait.
      spawnSyncQuiet('ip', ['netns', 'del', ns]);
    } catch {
      // best effort
    }
  }
});

function spawnSyncQuiet(cmd: string, args: string[]): void {
  spawnSync(cmd, args, { stdio: 'ignore' });
}

async function sh(argv: string[], what: string): Promise<string> {
  try {
    const { stdout } = await run(argv[0]!, argv.slice(1));
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`emulated network: ${what}: ${argv.join(' ')}: ${e.stderr?.trim() || e.message}`);
  }
}

/** Spawns a long-lived child (test/helpers/process.ts) and waits until its output matches `ready`. */
async function spawnReady(argv: string[], ready: RegExp, what: string, timeoutMs = 10_000): Promise<ManagedProcess> {
  const proc = spawnProcess(argv[0]!, argv.slice(1), { name: `emulated network: ${what}` });
  let output = '';
  // Keep draining its output so it never blocks on a full pipe.
  const onData = (chunk: Buffer) => {
    output += chunk.toString();
    if (output.length > 100_000) output = output.slice(-50_000);
  };
  proc.child.stdout!.on('data', onData);
  proc.child.stderr!.on('data', onData);
  await proc.waitReady(() => ready.test(output), { timeoutMs, describe: () => output.slice(-2000) });
  return proc;
}

async function timeGet(url: string): Promise<{ ms: number; bytes: number; status: number }> {
  const started = performance.now();
  const response = await fetch(url);
  const body = new Uint8Array(await response.arrayBuffer());
  return { ms: performance.now() - started, bytes: body.length, status: response.status };
}

/**
 * A read-only docker-registry serving `storageDir` (a registry's filesystem
 * storage) from its own network namespace, behind a veth pair shaped by tbf
 * and a relay adding `delayMsEachWay`. `probeBlob` (`REPO@DIGEST` of a large
 * blob) is fetched once to measure the bandwidth actually achieved.
 */
export async function startEmulatedRegistry(storageDir: string, shape: NetworkShape, probeBlob: string): Promise<EmulatedRegistry> {
  const tag = `lzb${process.pid}`;
  const nsClient = `${tag}c`;
  const nsRegistry = `${tag}r`;
  const vethClient = `${tag}c0`;
  const vethRegistry = `${tag}r0`;
  const clientIp = '10.231.0.1';
  const registryIp = '10.231.0.2';
  const cleanups: Array<() => Promise<unknown>> = [];
  const dir = await mkdtemp(join(tmpdir(), 'lazyroot-netns-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  try {
    for (const ns of [nsClient, nsRegistry]) {
      await sh(['ip', 'netns', 'add', ns], `create namespace ${ns}`);
      liveNamespaces.add(ns);
      cleanups.push(async () => {
        await sh(['ip', 'netns', 'del', ns], `delete namespace ${ns}`);
        liveNamespaces.delete(ns);
      });
      await sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up'], `lo up in ${ns}`);
    }
    // Made directly inside the namespaces: the host never holds either end.
    await sh(['ip', 'link', 'add', vethClient, 'netns', nsClient, 'type', 'veth', 'peer', 'name', vethRegistry, 'netns', nsRegistry], 'create the veth pair');
    for (const [ns, dev, ip] of [
      [nsClient, vethClient, clientIp],
      [nsRegistry, vethRegistry, registryIp],
    ] as const) {
      await sh(['ip', '-n', ns, 'addr', 'add', `${ip}/30`, 'dev', dev], `address ${ip} on ${dev}`);
      await sh(['ip', '-n', ns, 'link', 'set', dev, 'up'], `${dev} up`);
      // burst 32kbit = 4 KB bucket; latency bounds the queue (50 ms at 200 Mbit/s ≈ 1.2 MB).
      await sh(['ip', 'netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', dev, 'root', 'tbf', 'rate', shape.rate, 'burst', '32kbit', 'latency', '50ms'], `tbf on ${dev}`);
    }

    const configPath = join(dir, 'registry.yml');
    await writeFile(
      configPath,
      [
        'version: 0.1',
        'log:',
        '  level: info',
        '  accesslog:',
        '    disabled: true',
        'storage:',
        '  filesystem:',
        `    rootdirectory: ${storageDir}`,
        '  maintenance:',
        '    uploadpurging:',
        '      enabled: false',
        '    readonly:',
        '      enabled: true',
        'http:',
        `  addr: ${registryIp}:5000`,
        `  secret: ${randomUUID()}`,
        '',
      ].join('\n'),
    );
    // `ip netns exec` execs in place: the PID we hold is the registry's.
    const registry = await spawnReady(['ip', 'netns', 'exec', nsRegistry, '/usr/bin/docker-registry', 'serve', configPath], /listening on/, 'docker-registry in its namespace');
    cleanups.push(() => registry.stop());

    const socket = join(dir, 'bridge.sock');
    const bridge = await spawnReady(
      ['ip', 'netns', 'exec', nsClient, process.execPath, fileURLToPath(import.meta.url), 'bridge', socket, `${registryIp}:5000`],
      /^ready$/m,
      'bridge in the client namespace',
    );
    cleanups.push(() => bridge.stop());

    const relay = await startRelay({ host: '127.0.0.1', port: 0 }, { path: socket }, { delayMs: shape.delayMsEachWay });
    cleanups.push(() => relay.close());
    const host = relay.address;

    const deadline = Date.now() + 10_000;
    for (;;) {
      const probe = await timeGet(`http://${host}/v2/`).catch((err: Error) => ({ ms: 0, bytes: 0, status: 0, err }));
      if (probe.status === 200) break;
      if (Date.now() > deadline) throw new Error(`emulated network: GET http://${host}/v2/ did not answer 200 within 10 s (last: ${probe.status})`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const rtts: number[] = [];
    for (let i = 0; i < 7; i++) rtts.push((await timeGet(`http://${host}/v2/`)).ms);
    rtts.sort((a, b) => a - b);
    const [repo, digest] = probeBlob.split('@');
    const blob = await timeGet(`http://${host}/v2/${repo}/blobs/${digest}`);
    if (blob.status !== 200) throw new Error(`emulated network: probe GET of ${probeBlob} answered ${blob.status}`);
    relay.take();

    return {
      host,
      relay,
      shape,
      measured: { rttMs: rtts[3]!, mbitPerSecond: (blob.bytes * 8) / 1e6 / (blob.ms / 1000) },
      async stop() {
        const errors: unknown[] = [];
        for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch((err) => errors.push(err));
        if (errors.length) throw errors[0];
      },
    };
  } catch (err) {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
    throw err;
  }
}

// ---- `node netns.js bridge SOCKET HOST:PORT`: run inside the client namespace

async function bridgeMain(socket: string, target: string): Promise<void> {
  const colon = target.lastIndexOf(':');
  const relay = await startRelay({ path: socket }, { host: target.slice(0, colon), port: Number(target.slice(colon + 1)) });
  process.stdout.write('ready\n');
  const stop = () => void relay.close().finally(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1] && process.argv[2] === 'bridge') {
  bridgeMain(process.argv[3]!, process.argv[4]!).catch((err) => {
    process.stderr.write(`bridge: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  });
}

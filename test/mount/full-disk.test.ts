import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { dir, file, symlink, type TarEntry } from '../helpers/tar-builder.js';
import { buildEstargzImage, incompressible } from '../helpers/estargz.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';
import { hashInChild } from '../helpers/hash-in-child.js';
import { processAlive } from '../../src/process-alive.js';

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry'] });
if (missing.length && process.env.CI) throw new Error(`CI: full-disk tests need ${missing.join(', ')}`);

const MiB = 1 << 20;
const run = promisify(execFile);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Stats {
  complete: boolean;
  layers: Array<{ prefetch: string; prefetchError?: string; complete: boolean }>;
}

const files = Array.from({ length: 6 }, (_, i) => ({ path: `data/part${i}.bin`, bytes: incompressible(2 * MiB, `full-${i}`) }));
const layers: TarEntry[][] = [
  [dir('bin'), file('bin/busybox', readFileSync('/bin/busybox'), { mode: 0o755 }), symlink('bin/sh', 'busybox')],
  [dir('data'), ...files.map((f) => file(f.path, f.bytes))],
];

describe('a full disk under a lazy mount costs only the bytes that could not be kept', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let disk: string;
  let registry: TestRegistry;
  let target: string | undefined;
  let store: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-full-'));
    disk = join(work, 'disk');
    await mkdir(disk);
    // The store's own filesystem: 16 MiB, less than the 12 MiB image plus what the store needs besides.
    await run('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'lazyroot-test-full', disk]);
    store = join(disk, 'store');
    registry = await startRegistry();
    await registry.pushImage('full/app', 'v1', await buildEstargzImage(layers, { config: { Cmd: ['/bin/sh'] } }));
  });

  after(async () => {
    if (target) await lazyroot(['--store', store, 'umount', target]);
    await registry?.stop();
    await run('umount', [disk]).catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  });

  /** Writes `path` until the disk is full, then gives back `leave` bytes. */
  async function fillUpTo(path: string, leave: number): Promise<void> {
    const handle = await open(path, 'w');
    const chunk = Buffer.alloc(MiB);
    let written = 0;
    try {
      try {
        for (;;) written += (await handle.write(chunk, 0, chunk.length)).bytesWritten;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
      }
      await handle.truncate(Math.max(0, written - leave));
    } finally {
      await handle.close();
    }
  }

  async function stats(): Promise<Stats> {
    const r = await lazyroot(['--store', store, 'mount', '--stats', '--json', target!]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as Stats;
  }

  test('reads stay right while nothing can be written, prefetch waits for space, and finishes once there is some', async () => {
    target = join(work, 'mnt');
    await mkdir(target);
    const mounted = await lazyroot(['--store', store, '--json', 'mount', '--prefetch-delay-ms', '0', `docker://${registry.host}/full/app:v1`, target]);
    assert.equal(mounted.code, 0, mounted.stderr);
    const daemon = (JSON.parse(mounted.stdout) as { pid: number }).pid;
    // Now fill the disk, leaving less than one file's room. Written until the disk is full, then cut
    // back: prefetch (delay 0) is writing to the same disk, so free space measured first can be gone.
    const filler = join(disk, 'filler');
    await fillUpTo(filler, 512 * 1024);

    for (const f of files) {
      const got = await hashInChild(join(target, f.path));
      // Served from the bytes fetched (verified in memory), whether or not they could be kept.
      assert.equal(got.hash, sha(f.bytes), `${f.path}: ${got.error ?? ''}`);
    }
    let s = await stats();
    assert.equal(s.complete, false, 'the data layer cannot be complete on a full disk');
    const data = s.layers[1]!;
    assert.notEqual(data.prefetch, 'failed', `prefetch waits, it does not give up: ${JSON.stringify(data)}`);
    // The mount is alive: metadata and reads still answer.
    assert.equal((await hashInChild(join(target, files[0]!.path))).hash, sha(files[0]!.bytes));

    // Space again: prefetch resumes by itself and completes every layer.
    await rm(filler);
    const began = Date.now();
    do {
      await sleep(250);
      s = await stats();
    } while (!s.complete && Date.now() - began < 30_000);
    assert.ok(s.complete, `prefetch completed once there was space: ${JSON.stringify(s.layers)}`);
    for (const f of files) assert.equal((await hashInChild(join(target, f.path))).hash, sha(f.bytes));
    assert.equal((await lazyroot(['--store', store, 'umount', target])).code, 0);
    target = undefined;
    // `umount` returned: the daemon has ended and holds nothing of the store, so its disk can go at once.
    assert.equal(processAlive(daemon), false, `the mount daemon (pid ${daemon}) still runs after umount returned`);
    await run('umount', [disk]);
  });
});

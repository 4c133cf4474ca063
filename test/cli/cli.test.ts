import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { buildImage, pushToRegistry, writeOciLayout, type ImageSpec } from '../helpers/image-builder.js';
import { buildTar, dir, file, gzip } from '../helpers/tar-builder.js';
import { buildEstargz } from '../helpers/estargz.js';
import { missingRequirements as missingFor, requireOrSkip } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';
import { storeSnapshot } from '../helpers/store-snapshot.js';

const missing = missingFor({ tools: ['docker-registry', 'skopeo'] });
if (missing.length && process.env.CI) throw new Error(`CI: CLI tests need ${missing.join(', ')} (run scripts/bootstrap)`);

function noise(seed: string, size: number): Buffer {
  const blocks: Buffer[] = [];
  for (let i = 0; i * 64 < size; i++) blocks.push(createHash('sha512').update(`${seed}/${i}`).digest());
  return Buffer.concat(blocks).subarray(0, size);
}

describe('lazyroot CLI', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let registry: TestRegistry;
  let work: string;
  let spec: ImageSpec;
  let ref: string;

  before(async () => {
    registry = await startRegistry();
    work = await mkdtemp(join(tmpdir(), 'lazyroot-cli-'));
    spec = {
      layers: [
        { tar: await buildTar([dir('a'), file('a/big', noise('a', 3 << 20))]), compression: 'gzip' },
        { tar: await buildTar([dir('b'), file('b/big', noise('b', 3 << 20))]), compression: 'gzip' },
        { tar: await buildTar([file('hello', 'world\n')]), compression: 'gzip' },
      ],
    };
    await writeOciLayout(join(work, 'layout'), [spec]);
    await pushToRegistry(join(work, 'layout'), 'cli/app:v1', registry.host);
    ref = `docker://${registry.host}/cli/app:v1`;
  });
  after(async () => {
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  test('every command has --help, and bad usage exits 2', async () => {
    for (const cmd of [[], ['pull'], ['images'], ['inspect'], ['rmi']]) {
      const run = await lazyroot([...cmd, '--help']);
      assert.equal(run.code, 0, cmd.join(' '));
      assert.match(run.stdout, /^Usage: lazyroot/);
    }
    const bad = await lazyroot(['pull']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /missing required argument 'ref'/);
    const unknown = await lazyroot(['frobnicate']);
    assert.equal(unknown.code, 2);
  });

  test('pull --json, images --json, inspect, rmi', async () => {
    const store = join(work, 'store-json');
    const pulled = await lazyroot(['pull', '--json', '--store', store, ref]);
    assert.equal(pulled.code, 0, pulled.stderr);
    assert.equal(pulled.stderr, '', 'no progress output with --json');
    const result = JSON.parse(pulled.stdout) as Record<string, unknown>;
    const built = buildImage(spec);
    assert.equal(result.id, built.configDigest);
    assert.equal(result.manifestDigest, built.manifestDigest);
    assert.equal(result.layers, 3);
    assert.equal(result.bytesTransferred, built.layers.reduce((n, l) => n + l.blob.length, 0));

    const images = JSON.parse((await lazyroot(['images', '--json', '--store', store])).stdout) as Array<{ id: string; names: string[] }>;
    assert.deepEqual(images.map((i) => [i.id, i.names]), [[built.configDigest, [`${registry.host}/cli/app:v1`]]]);

    const inspected = JSON.parse((await lazyroot(['inspect', '--store', store, built.configDigest.slice(7, 19)])).stdout) as {
      layers: Array<{ digest: string; diffId: string }>;
      stored: boolean;
    };
    assert.equal(inspected.stored, true);
    assert.deepEqual(inspected.layers.map((l) => l.digest), built.layerDigests);
    assert.deepEqual(inspected.layers.map((l) => l.diffId), built.diffIds);

    const removed = await lazyroot(['rmi', '--store', store, `${registry.host}/cli/app:v1`]);
    assert.equal(removed.code, 0, removed.stderr);
    assert.match(removed.stdout, /deleted sha256:[0-9a-f]{64} \(5 blobs freed\)/);
    assert.deepEqual(await storeSnapshot(store), { images: [], blobs: [] });
    const again = await lazyroot(['rmi', '--store', store, `${registry.host}/cli/app:v1`]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^lazyroot: image 127\.0\.0\.1:\d+\/cli\/app:v1: not in the store\n$/);
  });

  // Exit 2 is for bad usage and bad references; an image whose bytes are bad is bad input: exit 1.
  test('corrupt data exits 1, not 2: truncated gzip, gzip CRC, a registry 416, eStargz TOC offsets', async (t) => {
    const sha = (bytes: Buffer): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    const tar = await buildTar([file('f', noise('corrupt', 200_000))]);
    /** Pushes an image of one layer blob (gzip media type), whatever its bytes; returns its ref. */
    const push = async (name: string, blob: Buffer, diffId: string, annotations?: Record<string, string>): Promise<string> => {
      const configBytes = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [diffId] } }));
      const manifest = {
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(configBytes), size: configBytes.length },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha(blob), size: blob.length, ...(annotations ? { annotations } : {}) }],
      };
      await registry.pushImage(`corrupt/${name}`, 'v1', { manifestBytes: Buffer.from(JSON.stringify(manifest)), manifest, configBytes, layers: [{ blob }] });
      return `docker://${registry.host}/corrupt/${name}:v1`;
    };
    const whole = gzip(tar);
    const expectExit1 = async (args: string[], message: RegExp, code: string): Promise<void> => {
      const run = await lazyroot(['--json', '--store', join(work, `store-corrupt-${code}-${args[0]}`), ...args]);
      const error = (JSON.parse(run.stdout || '{}') as { error?: { code: string; message: string } }).error;
      assert.equal(run.code, 1, `${args.join(' ')}: ${run.stderr}`);
      assert.equal(error?.code, code, run.stderr);
      assert.match(error?.message ?? '', message);
    };

    // Cut short: digest and size describe the cut bytes, so only decompressing finds it.
    const cut = await push('cut', whole.subarray(0, whole.length - 100), sha(tar));
    await expectExit1(['pull', '--verify-diff-ids', cut], /cannot decompress \(gzip\)/, 'INVALID_DATA');
    // A wrong CRC-32 in the gzip trailer.
    const badCrc = Buffer.from(whole);
    badCrc[badCrc.length - 8]! ^= 0xff;
    await expectExit1(['pull', '--verify-diff-ids', await push('crc', badCrc, sha(tar))], /cannot decompress \(gzip\)/, 'INVALID_DATA');
    // A registry answering 416 (Range Not Satisfiable) for a blob.
    const proxy = await startFaultProxy(registry.host, [{ path: /\/blobs\/sha256:/, method: 'GET', fault: { kind: 'status', status: 416 } }]);
    try {
      const proxied = (await push('range', whole, sha(tar))).replace(registry.host, proxy.host);
      await expectExit1(['pull', proxied], /416/, 'INVALID_DATA');
    } finally {
      await proxy.close();
    }

    // An eStargz TOC whose chunk offset points past the TOC: found when a lazy mount reads the TOC.
    if (!requireOrSkip(t, { root: true, fuse: true })) return;
    const estargz = await buildEstargz([file('a', noise('toc', 5000))], {
      editToc: (toc) => {
        toc.entries[0]!.offset = 1 << 30;
      },
    });
    const { gunzipSync } = await import('node:zlib');
    const tocRef = await push('toc', estargz.blob, sha(gunzipSync(estargz.blob)), { 'containerd.io/snapshot/stargz/toc.digest': estargz.tocDigest });
    const mountpoint = join(work, 'mnt-bad-toc');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(mountpoint, { recursive: true });
    await expectExit1(['mount', tocRef, mountpoint], /not before the TOC/, 'INVALID_DATA');
  });

  test('errors: message on stderr, JSON error with --json, exit codes', async () => {
    const store = join(work, 'store-errors');
    const badRef = await lazyroot(['pull', '--store', store, 'docker://UPPER/case']);
    assert.equal(badRef.code, 2);
    assert.match(badRef.stderr, /^lazyroot: reference "docker:\/\/UPPER\/case": invalid repository component "UPPER"/);
    const notFound = await lazyroot(['pull', '--json', '--store', store, `docker://${registry.host}/cli/app:missing`]);
    assert.equal(notFound.code, 1);
    const error = (JSON.parse(notFound.stdout) as { error: { code: string; message: string } }).error;
    assert.equal(error.code, 'NOT_FOUND');
    assert.match(error.message, /cli\/app:missing/);
  });

  test('two pulls of the same image at once both succeed, and each blob is downloaded once', async () => {
    const store = join(work, 'store-concurrent');
    const before = (await registry.accessLog()).length;
    const [a, b] = await Promise.all([lazyroot(['pull', '--json', '--store', store, ref]), lazyroot(['pull', '--json', '--store', store, ref])]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(b.code, 0, b.stderr);
    const built = buildImage(spec);
    const transferred = [a, b].map((r) => (JSON.parse(r.stdout) as { bytesTransferred: number }).bytesTransferred);
    assert.equal(transferred[0]! + transferred[1]!, built.layers.reduce((n, l) => n + l.blob.length, 0), 'the layers were fetched once between them');
    const blobGets = (await registry.accessLog())
      .slice(before)
      .filter((l) => /^GET \S+\/blobs\/sha256:/.test(l) && built.layerDigests.some((d) => l.includes(d)));
    assert.equal(blobGets.length, 3, blobGets.join('\n'));
    assert.deepEqual((await storeSnapshot(store)).images, [`${registry.host}/cli/app:v1 ${built.configDigest}`]);
  });

  test('a pull killed mid-download leaves the store consistent; the next pull resumes', async () => {
    const proxy = await startFaultProxy(registry.host);
    try {
      const built = buildImage(spec);
      const big = built.layerDigests[0]!;
      proxy.setRules([{ path: new RegExp(`/blobs/${big}`), fault: { kind: 'stall', afterBytes: 1 << 20 } }]);
      const store = join(work, 'store-killed');
      const proxied = `docker://${proxy.host}/cli/app:v1`;
      const first = lazyroot(['pull', '--quiet', '--concurrency', '1', '--store', store, proxied]);
      // Wait until the stalled download has bytes on disk, then kill -9.
      const download = join(store, 'tmp', `sha256-${big.slice(7)}.download`);
      for (let i = 0; i < 200 && !((await stat(download).catch(() => undefined))?.size ?? 0); i++) await new Promise((r) => setTimeout(r, 50));
      process.kill(first.pid, 'SIGKILL');
      assert.equal((await first).signal, 'SIGKILL');
      const kept = (await stat(download)).size;
      assert.ok(kept > 0, 'part of the blob was on disk when killed');
      assert.deepEqual((await storeSnapshot(store)).images, [], 'no image recorded by the killed pull');

      proxy.setRules([]);
      proxy.log.length = 0;
      const second = await lazyroot(['pull', '--json', '--store', store, proxied]);
      assert.equal(second.code, 0, second.stderr);
      const total = built.layers.reduce((n, l) => n + l.blob.length, 0);
      assert.equal((JSON.parse(second.stdout) as { bytesTransferred: number }).bytesTransferred, total - kept);
      assert.ok(proxy.log.some((l) => l.includes(big) && l.endsWith(`range=bytes=${kept}-`)), proxy.log.join('\n'));
      assert.equal(existsSync(download), false);
      assert.deepEqual((await readdir(join(store, 'blobs', 'sha256'))).sort(), [...built.layerDigests, built.configDigest, built.manifestDigest].map((d) => d.slice(7)).sort());
    } finally {
      await proxy.close();
    }
  });
});

/**
 * zstd:chunked layers read lazily (issue 11, item 4), with images written by
 * the real thing: Debian's podman 4.3 (containers/storage 1.43) pushes them
 * with `--compression-format zstd:chunked` to Debian's docker-registry on
 * loopback. Edge-case images (edge-case-images.ts, pulled into podman from an
 * OCI layout) mount lazily with the tree `umoci unpack` makes of the same
 * image (copied back with skopeo; umoci 0.4.7 reads no zstd, so umoci.ts
 * hands it the layers decompressed: same tars, same diff IDs). Reading one
 * small file fetches a small part of the blob; a corrupted frame gives EIO,
 * never wrong bytes; a TOC whose checksum does not match the annotation fails
 * the mount, naming the layer (as an eStargz TOC digest mismatch does).
 */
import { assertLogged } from '../helpers/daemon-log.js';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { allFeaturesLayout, umociAllows, type EdgeCaseImage } from '../helpers/edge-case-images.js';
import { buildTar, dir, file, hardlink, opaque, symlink, whiteout } from '../helpers/tar-builder.js';
import { writeOciLayout } from '../helpers/image-builder.js';
import { diffTreesReport, snapshotTree } from '../helpers/tree-snapshot.js';
import { umociUnpack } from '../helpers/umoci.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';
import { readZstdChunkedIndex } from '../../src/index/zstd-chunked/toc.js';
import { manifestChecksumAnnotation, manifestPositionAnnotation } from '../../src/index/zstd-chunked/format.js';

const run = promisify(execFile);
const missing = missingRequirements({ root: true, fuse: true, tools: ['podman', 'skopeo', 'umoci', 'docker-registry', 'zstd'] });
if (missing.length && process.env.CI) throw new Error(`CI: zstd:chunked tests need ${missing.join(', ')}`);

/**
 * Edge-case images podman carries through unchanged (its storage re-creates each layer's tar from
 * tar-split). Not 'replace-types' (podman's pull refuses a layer listing one path twice) nor
 * 'whiteouts' (podman's vfs driver fails applying it): the 'stack' image below has the plainer
 * whiteouts and opaque directories podman does apply.
 */
const edgeImages = ['basics', 'links', 'hardlinks', 'implicit-parents'];

interface Manifest {
  layers: Array<{ mediaType: string; digest: string; size: number; annotations?: Record<string, string> }>;
}

interface LayerStats {
  digest: string;
  format: string;
  size: number;
  bytesFetched: number;
  bytesPrefetched: number;
  bytesStreamed: number;
  bytesIndexed: number;
}

/** Reads a file of the mount from another process (a read of our own mount from this one could deadlock). */
function readInChild(path: string): Promise<{ ok: boolean; stdout: Buffer; stderr: string }> {
  const child = spawn('cat', [path], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ ok: code === 0, stdout: Buffer.concat(out), stderr })));
}

describe('zstd:chunked images pushed by podman mount lazily', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let registry: TestRegistry;
  let images: EdgeCaseImage[];
  const mounted: Array<{ target: string; store: string }> = [];
  const big = randomBytes(3 * 1024 * 1024);
  const small = Buffer.from('a small file among many\n');

  /** podman with its own storage under `work` (peers/podman.md). */
  async function podman(args: string[]): Promise<string> {
    const env = { ...process.env, CONTAINERS_STORAGE_CONF: join(work, 'podman', 'storage.conf') };
    const root = ['--root', join(work, 'podman', 'root'), '--runroot', join(work, 'podman', 'run'), '--storage-driver', 'vfs'];
    try {
      const { stdout } = await run('podman', [...root, ...args], { env, maxBuffer: 1 << 26 });
      return stdout.trim();
    } catch (err) {
      const e = err as Error & { stderr?: string };
      throw new Error(`podman ${args.join(' ')}: ${(e.stderr ?? e.message).trim()}`);
    }
  }

  async function pushZstdChunked(local: string, repo: string): Promise<void> {
    await podman(['push', '--tls-verify=false', '--compression-format', 'zstd:chunked', local, `docker://${registry.host}/${repo}:v1`]);
  }

  async function manifestOf(repo: string, tag = 'v1'): Promise<Manifest> {
    const res = await fetch(`${registry.url}/v2/${repo}/manifests/${tag}`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
    assert.equal(res.status, 200);
    return (await res.json()) as Manifest;
  }

  async function mount(store: string, ref: string, extra: string[] = ['--no-prefetch']): Promise<string> {
    const target = join(work, `mnt-${mounted.length}`);
    await mkdir(target, { recursive: true });
    const r = await lazyroot(['--store', store, 'mount', ...extra, ref, target]);
    assert.equal(r.code, 0, r.stderr);
    mounted.push({ target, store });
    return target;
  }

  async function unmount(target: string): Promise<void> {
    const i = mounted.findIndex((m) => m.target === target);
    const [m] = mounted.splice(i, 1);
    const u = await lazyroot(['--store', m!.store, 'umount', target]);
    assert.equal(u.code, 0, u.stderr);
  }

  async function layerStats(store: string, target: string): Promise<LayerStats[]> {
    const s = await lazyroot(['--store', store, 'mount', '--stats', '--json', target]);
    assert.equal(s.code, 0, s.stderr);
    return (JSON.parse(s.stdout) as { layers: LayerStats[] }).layers;
  }

  before(async () => {
    // Short and lower case: podman names an image pulled from `oci:DIR` after DIR, and refuses a runroot over 50 characters.
    work = join(tmpdir(), `lzc-${process.pid}-${Date.now().toString(36)}`);
    await mkdir(work);
    await mkdir(join(work, 'podman'), { recursive: true });
    const p = join(work, 'podman');
    await writeFile(join(p, 'storage.conf'), `[storage]\ndriver = "vfs"\nrunroot = "${p}/run"\ngraphroot = "${p}/root"\n`);
    registry = await startRegistry();
    const layout = join(work, 'layout');
    images = (await allFeaturesLayout(layout)).images.filter((i) => edgeImages.includes(i.name));
    assert.equal(images.length, edgeImages.length);
    // Ours: two layers with the whiteouts and opaque directory podman applies.
    const stack = [
      [dir('etc'), file('etc/keep', 'kept\n'), file('etc/gone', 'whited out\n'), dir('opt'), file('opt/a', 'a\n'), file('opt/b', 'b\n', { mode: 0o755, uid: 1000, gid: 1000 }), symlink('etc/to-keep', 'keep'), hardlink('etc/keep-link', 'etc/keep'), dir('usr'), dir('usr/bin'), file('usr/bin/tool', 'tool v1\n', { mode: 0o755 })],
      [whiteout('etc/gone'), opaque('opt'), file('opt/c', 'c\n'), file('usr/bin/tool', 'tool v2\n', { mode: 0o755 }), file('etc/new', 'new in layer 2\n')],
    ];
    await writeOciLayout(join(work, 'stack-layout'), [{ refName: 'stack', layers: await Promise.all(stack.map(async (entries) => ({ tar: await buildTar(entries), compression: 'gzip' as const }))) }]);
    images.push({ name: 'stack', description: 'two layers: a whiteout, an opaque directory, a replaced file, links', spec: { layers: [] }, expect: { visible: ['etc/keep', 'etc/new', 'opt/c', 'etc/keep-link'], hidden: ['etc/gone', 'opt/a', 'opt/b'] },
      umociQuirks: [{ path: /^\.$/, field: 'mtime', reason: 'no layer has an entry for the root: umoci leaves it at the unpack time' }],
    });
    for (const image of images) {
      const source = image.name === 'stack' ? `oci:${join(work, 'stack-layout')}:stack` : `oci:${layout}:${image.name}`;
      const id = (await podman(['pull', '-q', source])).split('\n').at(-1)!;
      await pushZstdChunked(id, `edge/${image.name}`);
    }
    // Many small files and one big one, in one layer: `podman import` of a tar.
    const entries = [dir('etc'), file('etc/small.conf', small), file('data/big.bin', big), symlink('etc/link', 'small.conf')];
    for (let i = 0; i < 200; i++) entries.push(file(`lib/f${String(i).padStart(3, '0')}.txt`, `file ${i}\n`.repeat(20 + i)));
    await writeFile(join(work, 'big.tar'), await buildTar(entries));
    await podman(['import', '-q', join(work, 'big.tar'), 'localhost/zc/big:v1']);
    await pushZstdChunked('localhost/zc/big:v1', 'zc/big');
  });

  after(async () => {
    for (const m of [...mounted]) await lazyroot(['--store', m.store, 'umount', m.target]);
    await registry?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('podman 4.3 writes zstd:chunked: zstd layers with the manifest checksum and position annotations, and the footer', async () => {
    const manifest = await manifestOf('zc/big');
    assert.equal(manifest.layers.length, 1);
    const layer = manifest.layers[0]!;
    assert.equal(layer.mediaType, 'application/vnd.oci.image.layer.v1.tar+zstd');
    assert.match(layer.annotations?.[manifestChecksumAnnotation] ?? '', /^sha256:[0-9a-f]{64}$/);
    assert.match(layer.annotations?.[manifestPositionAnnotation] ?? '', /^\d+:\d+:\d+:1$/);
    const res = await fetch(`${registry.url}/v2/zc/big/blobs/${layer.digest}`, { headers: { range: `bytes=${layer.size - 8}-${layer.size - 1}` } });
    assert.equal(Buffer.from(await res.arrayBuffer()).toString('latin1'), 'GnUlInUx');
  });

  test('edge-case images: the lazy mount equals umoci unpack of the same image, every layer read as zstd:chunked', async (t) => {
    for (const image of images) {
      await t.test(image.name, async () => {
        const store = join(work, `store-edge-${image.name}`);
        const ref = `docker://${registry.host}/edge/${image.name}:v1`;
        const target = await mount(store, ref);
        try {
          const ours = await snapshotTree(target);
          const names = new Set(ours.map((e) => e.path));
          for (const p of image.expect?.visible ?? []) assert.ok(names.has(p), `${p} visible`);
          for (const p of image.expect?.hidden ?? []) assert.ok(!names.has(p), `${p} hidden`);
          const layout = join(work, `copy-${image.name}`);
          await run('skopeo', ['copy', '-q', '--src-tls-verify=false', ref, `oci:${layout}:v1`]);
          const theirs = await umociUnpack(layout, 'v1', join(work, `umoci-${image.name}`));
          const report = diffTreesReport(ours, await snapshotTree(theirs), { allow: umociAllows(image) });
          assert.deepEqual(report.differences.map((d) => d.message), [], `${image.name}: lazy mount vs umoci`);
          const layers = await layerStats(store, target);
          assert.ok(layers.length > 0);
          for (const l of layers) {
            assert.equal(l.format, 'zstd-chunked', l.digest);
            assert.equal(l.bytesIndexed, 0, `${l.digest}: nothing downloaded whole`);
            assert.equal(l.bytesStreamed, 0);
          }
        } finally {
          await unmount(target);
        }
      });
    }
  });

  test('reading one small file fetches a small part of the blob; the big file is served whole and right', async (t) => {
    const store = join(work, 'store-small-read');
    const target = await mount(store, `docker://${registry.host}/zc/big:v1`);
    const got = await readInChild(join(target, 'etc/small.conf'));
    assert.ok(got.ok, got.stderr);
    assert.ok(got.stdout.equals(small));
    const [layer] = await layerStats(store, target);
    t.diagnostic(`one small file: ${layer!.bytesFetched} bytes fetched (TOC included) of a ${layer!.size}-byte blob`);
    assert.ok(layer!.bytesFetched < layer!.size * 0.05, `${layer!.bytesFetched} of ${layer!.size} bytes fetched`);
    assert.equal(layer!.bytesPrefetched, 0);
    const whole = await readInChild(join(target, 'data/big.bin'));
    assert.ok(whole.ok, whole.stderr);
    assert.ok(whole.stdout.equals(big), 'big.bin as written');
    const tree = await snapshotTree(target);
    const lib = tree.filter((e) => e.path.startsWith('lib/f'));
    assert.equal(lib.length, 200);
    const f123 = await readInChild(join(target, 'lib/f123.txt'));
    assert.equal(f123.stdout.toString(), 'file 123\n'.repeat(143));
    await unmount(target);
  });

  test('a second mount of the image reads its TOC from the store: not one blob request, the same tree', async () => {
    const store = join(work, 'store-second');
    const ref = `docker://${registry.host}/zc/big:v1`;
    // Metadata only (find stats entries; it reads no file's bytes).
    const listing = (dir: string) =>
      new Promise<string>((resolve, reject) =>
        execFile('find', [dir, '-printf', '%P %y %m %U %G %s %T@ %l\\n'], { maxBuffer: 64 << 20 }, (err, out) => (err ? reject(err) : resolve(out.split('\n').sort().join('\n')))),
      );
    const first = await mount(store, ref);
    const tree = await listing(first);
    await unmount(first); // writes the parsed TOC to the store, if the mount had not yet
    const blobGets = async () => (await registry.accessLog()).filter((line) => /^GET \/v2\/zc\/big\/blobs\//.test(line));
    const before = (await blobGets()).length;
    const second = await mount(store, ref);
    assert.equal(await listing(second), tree);
    assert.deepEqual((await blobGets()).slice(before), [], 'the second mount fetched no footer and no TOC');
    const [layer] = await layerStats(store, second);
    assert.equal(layer!.bytesFetched, 0);
    await unmount(second);
  });

  test('with prefetch the blob is fetched whole, checked against the TOC, and promoted', async () => {
    const store = join(work, 'store-prefetch');
    const target = await mount(store, `docker://${registry.host}/zc/big:v1`, []);
    const began = Date.now();
    for (;;) {
      const s = await lazyroot(['--store', store, 'mount', '--stats', '--json', target]);
      const layer = (JSON.parse(s.stdout) as { layers: Array<{ complete: boolean; prefetch: string; prefetchError?: string }> }).layers[0]!;
      if (layer.complete) break;
      assert.notEqual(layer.prefetch, 'failed', layer.prefetchError);
      if (Date.now() - began > 60_000) assert.fail(`prefetch still ${layer.prefetch} after 60 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok((await readInChild(join(target, 'data/big.bin'))).stdout.equals(big));
    await unmount(target);
  });

  test('a TOC whose checksum does not match the annotation fails the mount, naming the layer', async () => {
    const manifest = await manifestOf('zc/big');
    const layer = manifest.layers[0]!;
    layer.annotations![manifestChecksumAnnotation] = `sha256:${'0'.repeat(64)}`;
    await registry.pushManifest('zc/big', 'bad-toc', Buffer.from(JSON.stringify(manifest)), 'application/vnd.oci.image.manifest.v1+json');
    const store = join(work, 'store-bad-toc');
    const target = join(work, 'mnt-bad-toc');
    await mkdir(target, { recursive: true });
    const r = await lazyroot(['--store', store, 'mount', '--no-prefetch', `docker://${registry.host}/zc/big:bad-toc`, target]);
    assert.notEqual(r.code, 0, 'mounted with a TOC that does not match its checksum');
    assert.match(r.stderr, new RegExp(`layer 1/1 ${layer.digest.slice(0, 19)}`));
    assert.match(r.stderr, /zstd:chunked TOC .*digest mismatch/);
    // The FUSE mount made while the TOC was read is gone again: nothing mounted, the directory empty and mountable.
    const mountinfo = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').map((l) => l.split(' ')[4]);
    assert.equal(mountinfo.includes(target), false, 'a FUSE mount was left at the target');
    const retry = await lazyroot(['--store', store, 'mount', '--no-prefetch', `docker://${registry.host}/zc/big:bad-toc`, target]);
    assert.doesNotMatch(retry.stderr, /mounted there already|not empty/);
  });

  // Last: it corrupts the registry's copy of the blob.
  test('a corrupted frame gives EIO, never wrong bytes; other files of the layer are still served', async () => {
    const manifest = await manifestOf('zc/big');
    const layer = manifest.layers[0]!;
    const hex = layer.digest.slice('sha256:'.length);
    const path = join(registry.storageDir, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
    const bytes = await readFile(path);
    const index = await readZstdChunkedIndex(
      { size: bytes.length, read: async (s, e) => bytes.subarray(s, e) },
      { checksum: layer.annotations![manifestChecksumAnnotation]!, position: layer.annotations![manifestPositionAnnotation]! },
    );
    const chunk = index.chunks.get('data/big.bin')![0]!;
    const f = await open(path, 'r+');
    try {
      // A byte in the middle of the first chunk's frame: it still decodes, to other bytes, or not at all.
      const at = Math.floor((chunk.compressedStart + chunk.compressedEnd) / 2);
      await f.write(Buffer.from([bytes[at]! ^ 0x55]), 0, 1, at);
    } finally {
      await f.close();
    }
    const store = join(work, 'store-corrupt');
    const target = await mount(store, `docker://${registry.host}/zc/big:v1`);
    const bad = await readInChild(join(target, 'data/big.bin'));
    assert.equal(bad.ok, false, 'a corrupted chunk was served');
    assert.match(bad.stderr, /Input\/output error/);
    assert.equal(bad.stdout.length, 0, 'no byte of the corrupted chunk reached the reader');
    const good = await readInChild(join(target, 'etc/small.conf'));
    assert.ok(good.ok && good.stdout.equals(small), good.stderr);
    await assertLogged(store, /data\/big\.bin.*chunk 0.*digest mismatch/);
    await unmount(target);
  });
});

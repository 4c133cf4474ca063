import { assertLogged, daemonLog } from '../helpers/daemon-log.js';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';
import { decodeIndex, encodeIndex, indexHeadLength } from '../../src/index/index-file.js';
import { MediaType } from '../../src/oci/media-types.js';
import { emptyConfigBytes, emptyConfigDescriptor, layerDigestAnnotation, lazyrootIndexArtifactType, spanIndexHeadDigestAnnotation, spanIndexHeadSizeAnnotation, spanIndexMediaType } from '../../src/oci/referrers.js';
import { spanIndexDescriptor } from '../../src/mount/index-artifact.js';
import type { Digest } from '../../src/oci/digest.js';
import type { Descriptor } from '../../src/oci/types.js';
import { parseReference, type DockerReference } from '../../src/reference/reference.js';
import { RegistryPusher } from '../../src/source/registry/push.js';
import { buildImage, type BuiltImage } from '../helpers/image-builder.js';
import { startRegistry, type AccessRecord, type TestRegistry } from '../helpers/registry.js';
import { buildTar, dir, file } from '../helpers/tar-builder.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry'] });
if (missing.length && process.env.CI) throw new Error(`CI: remote index tests need ${missing.join(', ')}`);

const MiB = 1 << 20;
const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const digestOf = (b: Buffer) => `sha256:${sha(b)}`;

/**
 * Text that gzip shrinks to about a third, as it does real images' binaries
 * and text: words of a small vocabulary in pseudo-random order, so that a
 * checkpoint's 32 KiB window deflates like the layer does.
 */
function text(bytes: number, seed: number): Buffer {
  let x = seed >>> 0 || 1;
  const next = () => ((x ^= x << 13), (x ^= x >>> 17), (x ^= x << 5), x >>> 0);
  const words = Array.from({ length: 1500 }, () => Array.from({ length: 3 + (next() % 7) }, () => String.fromCharCode(97 + (next() % 26))).join(''));
  const parts: string[] = [];
  let n = 0;
  while (n < bytes) {
    const w = next() % 9 === 0 ? `${next() % 100000}` : words[next() % words.length]!;
    const piece = next() % 12 === 0 ? `${w}\n` : `${w} `;
    parts.push(piece);
    n += piece.length;
  }
  return Buffer.from(parts.join('')).subarray(0, bytes);
}

/** Bytes [offset, offset + length) of a file, read by `dd` in a child (a read from the middle, as a program seeking would). */
function readRangeInChild(path: string, offset: number, length: number): Promise<{ ok: boolean; bytes?: Buffer; error?: string }> {
  const child = spawn('dd', [`if=${path}`, 'bs=4096', `skip=${offset / 4096}`, `count=${length / 4096}`, 'status=none'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve(code === 0 ? { ok: true, bytes: Buffer.concat(out) } : { ok: false, error: stderr })));
}

function readInChild(path: string): Promise<{ ok: boolean; sha256?: string; error?: string }> {
  const child = spawn('sha256sum', [path], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve(code === 0 ? { ok: true, sha256: stdout.split(' ')[0]! } : { ok: false, error: stderr })));
}

interface MountStats {
  bytesIndexed: number;
  bytesFetched: number;
  imageBytes: number;
  layers: Array<{ digest: string; bytesIndexed: number; size: number }>;
}

interface PushJson {
  repository: string;
  subject: string;
  digest: string;
  artifactType: string;
  via: string;
  tag?: string;
  indexes: number;
  profile: boolean;
  bytes: number;
  layers: Array<{ digest: string; format: string; from?: string }>;
}

describe('span indexes shared through the registry (index --push; mounts on another machine use them)', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let registry: TestRegistry;
  const hello = Buffer.from('hello from a machine that never streamed this layer\n');
  const images = new Map<string, BuiltImage>();
  let honest: BuiltImage;
  let corpus: Buffer;
  const mounted: Array<{ target: string; store: string }> = [];
  /** Index files store A built, by layer digest. */
  const indexFiles = new Map<string, Buffer>();

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-remote-index-'));
    registry = await startRegistry();
    corpus = text(6 * MiB, 7);
    // Layer 1: a small file among 6 MiB of text; layer 2: 48 MiB of text in 24 files.
    const layer1 = await buildTar([dir('etc'), file('etc/hello.txt', hello), file('etc/words.txt', corpus)]);
    const layer2 = await buildTar([
      dir('data'),
      ...Array.from({ length: 24 }, (_, i) => file(`data/part${String(i).padStart(2, '0')}.txt`, Buffer.concat([corpus.subarray((i * 211_111) % corpus.length), corpus]).subarray(0, 2 * MiB))),
    ]);
    const layers = [
      { tar: layer1, compression: 'gzip' as const },
      { tar: layer2, compression: 'gzip' as const },
    ];
    // One image per case: same layers, another config (so another manifest, another subject).
    for (const tag of ['v1', 'spans-digest', 'spans-past', 'other-blob', 'lying-entries', 'lying-mode', 'lying-window', 'whole-windows', 'damaged-window', 'other-spans', 'head-window', 'head-digest', 'head-size']) {
      const image = buildImage({ layers, config: { config: { Cmd: ['/bin/sh'], Labels: { case: tag } } } });
      images.set(tag, image);
      await registry.pushImage('remote/app', tag, image);
    }
    honest = images.get('v1')!;
  });

  after(async () => {
    for (const m of mounted) await lazyroot(['--store', m.store, 'umount', m.target]);
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  const ref = (tag: string) => `docker://${registry.host}/remote/app:${tag}`;
  const imageBytes = (image: BuiltImage) => image.layers.reduce((n, l) => n + l.blob.length, 0);

  async function mountAt(store: string, tag: string, extra: string[] = [], prefetch = false): Promise<string> {
    const target = join(work, `mnt-${mounted.length}`);
    await mkdir(target, { recursive: true });
    const r = await lazyroot(['--store', store, 'mount', ...(prefetch ? ['--prefetch-delay-ms', '0'] : ['--no-prefetch']), ...extra, ref(tag), target]);
    assert.equal(r.code, 0, r.stderr);
    mounted.push({ target, store });
    return target;
  }
  async function stats(store: string, target: string): Promise<MountStats> {
    const r = await lazyroot(['--store', store, 'mount', '--stats', '--json', target]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as MountStats;
  }
  async function umount(store: string, target: string): Promise<void> {
    const r = await lazyroot(['--store', store, 'umount', target]);
    assert.equal(r.code, 0, r.stderr);
    mounted.splice(mounted.findIndex((m) => m.target === target), 1);
  }
  /** Whole-blob answers among `records`: a layer GET that sent the blob's every byte. */
  function wholeBlobGets(records: AccessRecord[], image: BuiltImage): AccessRecord[] {
    return records.filter((r) => r.method === 'GET' && image.layers.some((l) => r.path.endsWith(`/blobs/${l.descriptor.digest}`) && r.bytes >= l.blob.length));
  }

  /** Pushes a lazyroot index artifact for `subject` with the given span-index blobs, as `index --push` would (a test's hostile one). */
  async function pushArtifact(tag: string, entries: Array<{ bytes: Buffer; annotatedLayer: string; head?: { bytes: Buffer } | { size: number } | 'from-file' }>): Promise<void> {
    const image = images.get(tag)!;
    const pusher = new RegistryPusher(parseReference(ref(tag)) as DockerReference);
    try {
      await pusher.pushBlob(emptyConfigBytes);
      const layers: Descriptor[] = [];
      for (const e of entries) {
        await pusher.pushBlob(e.bytes);
        // With `head`, annotated as `index --push` does (a mount reads the head alone, then windows by range); without, as an older lazyroot did.
        const descriptor = e.head ? spanIndexDescriptor(e.bytes, e.annotatedLayer as Digest, undefined) : { mediaType: spanIndexMediaType, digest: digestOf(e.bytes), size: e.bytes.length, annotations: { [layerDigestAnnotation]: e.annotatedLayer } };
        if (e.head && e.head !== 'from-file' && 'bytes' in e.head) descriptor.annotations![spanIndexHeadDigestAnnotation] = digestOf(e.head.bytes);
        if (e.head && e.head !== 'from-file' && 'size' in e.head) descriptor.annotations![spanIndexHeadSizeAnnotation] = String(e.head.size);
        layers.push(descriptor);
      }
      const manifest = Buffer.from(
        JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest, artifactType: lazyrootIndexArtifactType, config: emptyConfigDescriptor, layers, subject: { mediaType: image.manifest.mediaType, digest: image.manifestDigest, size: image.manifestBytes.length } }),
      );
      await pusher.pushReferrer(manifest, { mediaType: MediaType.ociManifest, digest: digestOf(manifest), size: manifest.length, artifactType: lazyrootIndexArtifactType }, image.manifestDigest);
    } finally {
      await pusher.close();
    }
  }

  test('store A pushes its span indexes; store B, with nothing local, mounts the gzip image and reads a small file: no whole-blob GET, under 5 % of the image sent', async (t) => {
    const storeA = join(work, 'store-a');
    const pushed = await lazyroot(['--store', storeA, '--json', 'index', '--push', ref('v1')]);
    assert.equal(pushed.code, 0, pushed.stderr);
    const report = JSON.parse(pushed.stdout) as PushJson;
    assert.equal(report.via, 'tag-fallback', 'distribution 2.8 has no referrers API');
    assert.equal(report.tag, `sha256-${honest.manifestDigest.slice(7)}`);
    assert.equal(report.subject, honest.manifestDigest);
    assert.equal(report.artifactType, 'application/vnd.lazyroot.index.v1');
    assert.equal(report.indexes, 2);
    assert.deepEqual(report.layers.map((l) => l.from), ['built', 'built']);
    for (const l of honest.layers) indexFiles.set(l.descriptor.digest, await readFile(join(storeA, 'indexes', 'sha256', l.descriptor.digest.slice(7))));

    // The fallback tag holds an index listing the artifact.
    const tagged = await fetch(`${registry.url}/v2/remote/app/manifests/${report.tag}`, { headers: { accept: MediaType.ociIndex } });
    const list = (await tagged.json()) as { manifests: Descriptor[] };
    assert.deepEqual(list.manifests.map((d) => [d.digest, d.artifactType]), [[report.digest, 'application/vnd.lazyroot.index.v1']]);

    // A second push replaces the entry (one artifact of this type per image), not adds to it.
    const again = await lazyroot(['--store', storeA, '--json', 'index', '--push', ref('v1')]);
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(((JSON.parse(again.stdout) as PushJson).layers).map((l) => l.from), ['store', 'store']);
    const relisted = (await (await fetch(`${registry.url}/v2/remote/app/manifests/${report.tag}`, { headers: { accept: MediaType.ociIndex } })).json()) as { manifests: Descriptor[] };
    assert.equal(relisted.manifests.length, 1);

    const storeB = join(work, 'store-b');
    const mark = (await registry.accessBytes()).length;
    const target = await mountAt(storeB, 'v1');
    assert.deepEqual(await readInChild(join(target, 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
    const records = (await registry.accessBytes()).slice(mark);
    const sent = records.reduce((n, r) => n + r.bytes, 0);
    const layerBytes = records.filter((r) => honest.layers.some((l) => r.path.endsWith(`/blobs/${l.descriptor.digest}`))).reduce((n, r) => n + r.bytes, 0);
    t.diagnostic(`image ${imageBytes(honest)} bytes in layers; store B's mount and read: ${sent} bytes sent by the registry in ${records.length} requests (${((100 * sent) / imageBytes(honest)).toFixed(2)} %), of which ${layerBytes} bytes of layer blobs (${((100 * layerBytes) / imageBytes(honest)).toFixed(2)} %); the index artifact's blobs have ${report.bytes}`);
    assert.deepEqual(wholeBlobGets(records, honest), [], 'no layer was fetched whole');
    // One span of the image's layers, the heads of the span indexes: not their every window (32 KiB each, deflated).
    assert.ok(sent < 0.05 * imageBytes(honest), `registry sent ${sent} bytes in all: not under 5 % of the image's ${imageBytes(honest)}`);

    // A read from the middle of a big file: its span's window comes by range from the span index.
    const middle = await readRangeInChild(join(target, 'etc/words.txt'), 3 * MiB, 8192);
    assert.equal(middle.ok, true, middle.error);
    assert.ok(middle.bytes!.equals(corpus.subarray(3 * MiB, 3 * MiB + 8192)), 'the bytes from the middle of etc/words.txt are right');
    const s = await stats(storeB, target);
    const all = (await registry.accessBytes()).slice(mark);
    assert.deepEqual(wholeBlobGets(all, honest), [], 'no layer was fetched whole');
    const indexBlobs = [...indexFiles.values()].map((bytes) => ({ digest: digestOf(bytes), size: bytes.length }));
    const indexReads = all.filter((r) => r.method === 'GET' && indexBlobs.some((b) => r.path.endsWith(`/blobs/${b.digest}`)));
    const indexBytes = indexReads.reduce((n, r) => n + r.bytes, 0);
    t.diagnostic(`span index blobs: ${indexBlobs.reduce((n, b) => n + b.size, 0)} bytes; ${indexBytes} read in ${indexReads.length} requests`);
    assert.deepEqual(indexReads.filter((r) => indexBlobs.some((b) => r.path.endsWith(`/blobs/${b.digest}`) && r.bytes >= b.size)), [], 'no span index was fetched whole');
    assert.ok(indexReads.length >= 3, 'two heads and the window of the middle span were read');
    assert.ok(indexBytes < 0.25 * indexBlobs.reduce((n, b) => n + b.size, 0), `${indexBytes} bytes of span indexes read: not under a quarter of them`);
    assert.ok(records.some((r) => r.path.includes(`/manifests/sha256-${honest.manifestDigest.slice(7)}`)), 'the fallback tag was read');
    assert.equal(s.bytesIndexed, 0, 'no layer was streamed to build an index');
    for (const l of honest.layers) {
      // Not kept while its windows are fetched as needed: the index built once the layer is whole is.
      assert.equal(await readFile(join(storeB, 'indexes', 'sha256', l.descriptor.digest.slice(7))).then(() => 'kept', () => 'not kept'), 'not kept');
    }
    await umount(storeB, target);
  });

  test('`index` on a third machine takes the indexes from the registry instead of streaming the layers', async () => {
    const storeC = join(work, 'store-c');
    const mark = (await registry.accessBytes()).length;
    const r = await lazyroot(['--store', storeC, '--json', 'index', ref('v1')]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual((JSON.parse(r.stdout) as PushJson['layers']).map((l) => l.from), ['registry', 'registry']);
    assert.deepEqual(wholeBlobGets((await registry.accessBytes()).slice(mark), honest), []);
    for (const l of honest.layers) {
      // An index to keep is fetched whole, and kept byte for byte as A built it.
      assert.deepEqual(await readFile(join(storeC, 'indexes', 'sha256', l.descriptor.digest.slice(7))), indexFiles.get(l.descriptor.digest));
    }
  });

  test('--no-remote-index does no lookup: mount and index stream the layers', async () => {
    const storeD = join(work, 'store-d');
    const mark = (await registry.accessBytes()).length;
    const target = await mountAt(storeD, 'v1', ['--no-remote-index']);
    assert.deepEqual(await readInChild(join(target, 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
    const s = await stats(storeD, target);
    assert.equal(s.bytesIndexed, imageBytes(honest), 'both layers streamed');
    await umount(storeD, target);
    const storeE = join(work, 'store-e');
    const r = await lazyroot(['--store', storeE, '--json', 'index', '--no-remote-index', ref('v1')]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual((JSON.parse(r.stdout) as PushJson['layers']).map((l) => l.from), ['built', 'built']);
    const lookups = (await registry.accessLog()).slice(mark).filter((line) => /\/referrers\/|\/manifests\/sha256-/.test(line));
    assert.deepEqual(lookups, []);
  });

  test('create --lazy takes the indexes from the registry too; with --no-remote-index it streams the layers', async () => {
    for (const [id, flags, indexed] of [
      ['with-artifact', [], 0],
      ['without', ['--no-remote-index'], imageBytes(honest)],
    ] as const) {
      const store = join(work, `store-create-${id}`);
      const created = await lazyroot(['--store', store, 'create', '--lazy', ...flags, ref('v1'), id]);
      assert.equal(created.code, 0, created.stderr);
      try {
        assert.deepEqual(await readInChild(join(store, 'rootfs', id, 'merged', 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
        assert.equal((await stats(store, join(store, 'rootfs', id, 'lower'))).bytesIndexed, indexed);
      } finally {
        const deleted = await lazyroot(['--store', store, 'delete', id]);
        assert.equal(deleted.code, 0, deleted.stderr);
      }
    }
  });

  test('hostile artifact, wrong span digests: the index is taken, and reading through it is EIO, never wrong bytes', async () => {
    const [l1, l2] = honest.layers;
    const lying = decodeIndex(indexFiles.get(l1!.descriptor.digest)!);
    for (const cp of lying.checkpoints) cp.spanDigest = digestOf(Buffer.from(`not span ${cp.compressedOffset}`));
    await pushArtifact('spans-digest', [
      { bytes: encodeIndex(lying), annotatedLayer: l1!.descriptor.digest },
      { bytes: indexFiles.get(l2!.descriptor.digest)!, annotatedLayer: l2!.descriptor.digest },
    ]);
    const store = join(work, 'store-spans-digest');
    const target = await mountAt(store, 'spans-digest');
    const read = await readInChild(join(target, 'etc/hello.txt'));
    assert.equal(read.ok, false, 'the read must fail');
    assert.match(read.error ?? '', /Input\/output error/);
    // Layer 2's honest index serves its files.
    const part = await readInChild(join(target, 'data/part03.txt'));
    assert.equal(part.ok, true, part.error);
    assert.equal((await stats(store, target)).bytesIndexed, 0);
    await assertLogged(store, /digest mismatch/i);
    await umount(store, target);
  });

  test('hostile artifact, spans pointing past the blob: refused with a warning, the layer is streamed, reads are right', async () => {
    const [l1, l2] = honest.layers;
    const lying = decodeIndex(indexFiles.get(l1!.descriptor.digest)!);
    lying.checkpoints.at(-1)!.compressedOffset = l1!.blob.length + 4096;
    await pushArtifact('spans-past', [
      { bytes: encodeIndex(lying), annotatedLayer: l1!.descriptor.digest },
      { bytes: indexFiles.get(l2!.descriptor.digest)!, annotatedLayer: l2!.descriptor.digest },
    ]);
    const store = join(work, 'store-spans-past');
    const target = await mountAt(store, 'spans-past');
    assert.deepEqual(await readInChild(join(target, 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
    const s = await stats(store, target);
    assert.deepEqual(s.layers.map((l) => l.bytesIndexed), [l1!.blob.length, 0], 'layer 1 streamed, layer 2 from the registry');
    await assertLogged(store, /remote index sha256:[0-9a-f]+.*refused: span \d+ starts at byte \d+, outside the blob/);
    await umount(store, target);
  });

  test('hostile artifact, an index for another blob: ignored with a warning, the layer is streamed, reads are right', async () => {
    const [l1, l2] = honest.layers;
    await pushArtifact('other-blob', [
      // Layer 2's index, said to be layer 1's.
      { bytes: indexFiles.get(l2!.descriptor.digest)!, annotatedLayer: l1!.descriptor.digest },
      // An index naming a blob that is no layer of the image.
      { bytes: indexFiles.get(l2!.descriptor.digest)!, annotatedLayer: digestOf(Buffer.from('no such layer')) },
    ]);
    const store = join(work, 'store-other-blob');
    const target = await mountAt(store, 'other-blob');
    assert.deepEqual(await readInChild(join(target, 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
    const s = await stats(store, target);
    assert.deepEqual(s.layers.map((l) => l.bytesIndexed), [l1!.blob.length, l2!.blob.length], 'both streamed: no usable index for either');
    await assertLogged(store, new RegExp(`it is the index of blob ${l2!.descriptor.digest}, not of this layer`));
    await assertLogged(store, /names blob sha256:[0-9a-f]+, not a layer of the image/);
    await assertLogged(store, /has no index for this layer; streaming it/);
    // Only what was checked is kept: the stored index of layer 1 is its own.
    assert.equal(decodeIndex(await readFile(join(store, 'indexes', 'sha256', l1!.descriptor.digest.slice(7)))).blobDigest, l1!.descriptor.digest);
    await umount(store, target);
  });

  test('hostile artifact, honest spans but a file pointed at another file\'s bytes: that file is EIO (its tar header disagrees), the others are served', async () => {
    const [l1, l2] = honest.layers;
    const lying = decodeIndex(indexFiles.get(l1!.descriptor.digest)!);
    const helloEntry = lying.entries.find((e) => e.path === 'etc/hello.txt')!;
    const words = lying.entries.find((e) => e.path === 'etc/words.txt')!;
    helloEntry.dataOffset = words.dataOffset! + 4096;
    await pushArtifact('lying-entries', [
      { bytes: encodeIndex(lying), annotatedLayer: l1!.descriptor.digest },
      { bytes: indexFiles.get(l2!.descriptor.digest)!, annotatedLayer: l2!.descriptor.digest },
    ]);
    const store = join(work, 'store-lying-entries');
    const target = await mountAt(store, 'lying-entries');
    const read = await readInChild(join(target, 'etc/hello.txt'));
    assert.equal(read.ok, false, 'bytes of words.txt must not be served as hello.txt');
    assert.match(read.error ?? '', /Input\/output error/);
    const other = await readInChild(join(target, 'etc/words.txt'));
    assert.equal(other.ok, true, other.error);
    assert.equal((await stats(store, target)).bytesIndexed, 0);
    await assertLogged(store, /"etc\/hello.txt": refused: the span index disagrees with the layer's tar stream/);
    await umount(store, target);
  });

  test('once prefetch has the whole layer, a registry index is checked whole: the honest one is then trusted as if built here', async () => {
    const store = join(work, 'store-whole-honest');
    const target = await mountAt(store, 'v1', [], true);
    const marker = (l: BuiltImage['layers'][number]) => join(store, 'indexes', 'sha256', `${l.descriptor.digest.slice(7)}.remote`);
    const began = Date.now();
    let s: MountStats & { complete?: boolean };
    do {
      await new Promise((r) => setTimeout(r, 200));
      s = await stats(store, target);
    } while (!s.complete && Date.now() - began < 60_000);
    assert.equal(s.complete, true, 'prefetch completed the layers');
    for (const l of honest.layers) await assert.rejects(access(marker(l)), 'the marker goes once the whole layer agreed');
    assert.deepEqual(await readInChild(join(target, 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
    assert.doesNotMatch(await daemonLog(store), /refused/);
    assert.equal(s.bytesIndexed, 0, 'the indexes came from the registry (marked until checked)');
    await umount(store, target);
  });

  test('hostile artifact, honest offsets but lying metadata (a setuid root file): once the layer is whole the mount refuses it and the index goes', async () => {
    const [l1, l2] = honest.layers;
    const lying = decodeIndex(indexFiles.get(l1!.descriptor.digest)!);
    Object.assign(lying.entries.find((e) => e.path === 'etc/hello.txt')!, { mode: 0o4755, uid: 0, gid: 0 });
    await pushArtifact('lying-mode', [
      { bytes: encodeIndex(lying), annotatedLayer: l1!.descriptor.digest },
      { bytes: indexFiles.get(l2!.descriptor.digest)!, annotatedLayer: l2!.descriptor.digest },
    ]);
    const store = join(work, 'store-lying-mode');
    const target = await mountAt(store, 'lying-mode', [], true);
    const began = Date.now();
    while (!/disagrees with the layer's tar stream: entry \d+/.test(await daemonLog(store)) && Date.now() - began < 60_000) await new Promise((r) => setTimeout(r, 200));
    await assertLogged(store, /refused: the span index from the registry disagrees with the layer's tar stream: entry \d+: the index has \{"path":"etc\/hello.txt","type":"file","mode":2541/);
    const read = await readInChild(join(target, 'etc/hello.txt'));
    assert.equal(read.ok, false, 'the layer is refused once found out');
    assert.match(read.error ?? '', /Input\/output error/);
    await assert.rejects(access(join(store, 'indexes', 'sha256', l1!.descriptor.digest.slice(7))), 'the lying index is removed');
    await umount(store, target);
    // The next mount of the same store shows the layer as it is: nothing derived from the lie was kept.
    const again = await mountAt(store, 'lying-mode', ['--no-remote-index']);
    assert.equal((await stat(join(again, 'etc/hello.txt'))).mode & 0o7777, 0o644);
    assert.deepEqual(await readInChild(join(again, 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
    await umount(store, again);
  });

  /** Waits until the mount's layers are complete (prefetch) or its daemon's log matches `until`. */
  async function waitFor(store: string, target: string, until?: RegExp): Promise<MountStats & { complete?: boolean }> {
    const began = Date.now();
    let s: MountStats & { complete?: boolean };
    do {
      await new Promise((r) => setTimeout(r, 200));
      s = await stats(store, target);
    } while (!(until ? until.test(await daemonLog(store)) : s.complete) && Date.now() - began < 60_000);
    return s;
  }

  test('hostile artifact, honest spans but a tampered window (which no read can check): once the layer is whole the mount refuses it and the index goes', async () => {
    const [l1, l2] = honest.layers;
    const lying = decodeIndex(indexFiles.get(l1!.descriptor.digest)!);
    const k = lying.checkpoints.findIndex((cp) => cp.window.length === 32768);
    assert.ok(k > 0, 'layer 1 has a span with a whole window');
    // The bytes its span copies are the ones an index keeps (the rest are zero): change those.
    const window = Buffer.from(lying.checkpoints[k]!.window);
    let changed = 0;
    for (let i = 0; i < window.length; i++) if (window[i] !== 0) (window[i]! ^= 0x41), changed++;
    assert.ok(changed > 0, 'the window holds bytes its span copies');
    lying.checkpoints[k] = { ...lying.checkpoints[k]!, window };
    await pushArtifact('lying-window', [
      { bytes: encodeIndex(lying), annotatedLayer: l1!.descriptor.digest },
      { bytes: indexFiles.get(l2!.descriptor.digest)!, annotatedLayer: l2!.descriptor.digest },
    ]);
    const store = join(work, 'store-lying-window');
    const target = await mountAt(store, 'lying-window', [], true);
    await waitFor(store, target, /refused: the span index from the registry disagrees/);
    await assertLogged(store, new RegExp(`refused: the span index from the registry disagrees with the layer's tar stream: span ${k}: its window \\(the 32768 bytes before uncompressed byte \\d+\\) is not the layer's`));
    const read = await readInChild(join(target, 'etc/words.txt'));
    assert.equal(read.ok, false, 'the layer is refused once found out');
    assert.match(read.error ?? '', /Input\/output error/);
    await assert.rejects(access(join(store, 'indexes', 'sha256', l1!.descriptor.digest.slice(7))), 'the lying index is removed');
    await umount(store, target);
    const again = await mountAt(store, 'lying-window', ['--no-remote-index']);
    assert.deepEqual(await readInChild(join(again, 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
    await umount(store, again);
  });

  test('an artifact whose windows are whole (as a builder that keeps every byte writes them): once the layer is whole it is accepted, not refused', async () => {
    const [l1, l2] = honest.layers;
    const tar = gunzipSync(l1!.blob);
    const whole = decodeIndex(indexFiles.get(l1!.descriptor.digest)!);
    whole.checkpoints = whole.checkpoints.map((cp) => ({ ...cp, window: tar.subarray(cp.uncompressedOffset - cp.window.length, cp.uncompressedOffset) }));
    const file = encodeIndex(whole);
    assert.ok(file.length > indexFiles.get(l1!.descriptor.digest)!.length, 'whole windows make a bigger index');
    await pushArtifact('whole-windows', [
      { bytes: file, annotatedLayer: l1!.descriptor.digest },
      { bytes: indexFiles.get(l2!.descriptor.digest)!, annotatedLayer: l2!.descriptor.digest },
    ]);
    const store = join(work, 'store-whole-windows');
    const target = await mountAt(store, 'whole-windows', [], true);
    assert.deepEqual(await readInChild(join(target, 'etc/words.txt')), { ok: true, sha256: sha(corpus) });
    const s = await waitFor(store, target);
    assert.equal(s.complete, true, 'prefetch made every layer whole');
    // Checked against the whole layer, this machine's index (trimmed windows) replaces it.
    const stored = join(store, 'indexes', 'sha256', l1!.descriptor.digest.slice(7));
    const began = Date.now();
    while ((await readFile(stored).catch(() => file)).length >= file.length && Date.now() - began < 30_000) await new Promise((r) => setTimeout(r, 200));
    assert.ok((await readFile(stored)).length < file.length, 'the index built here replaced the one from the registry');
    assert.doesNotMatch(await daemonLog(store), /refused/, 'the layer is not refused');
    assert.deepEqual(await readInChild(join(target, 'etc/words.txt')), { ok: true, sha256: sha(corpus) });
    await umount(store, target);
  });

  test('hostile artifact, a window that does not inflate (under a right checksum): ignored with a warning, the layer is streamed, reads are right', async () => {
    const [l1, l2] = honest.layers;
    const file = Buffer.from(indexFiles.get(l1!.descriptor.digest)!);
    const k = decodeIndex(file).checkpoints.findIndex((cp) => cp.window.length === 32768);
    const record = 128 + 96 * k;
    const stored = file.readUInt32LE(record + 24);
    assert.ok(stored < 32768, 'the window is stored deflated');
    const windowsAt = 128 + 96 * file.readUInt32LE(12) + file.readUInt32LE(100);
    const windowAt = windowsAt + Number(file.readBigUInt64LE(record + 16));
    file[windowAt] = 0xff; // a reserved deflate block type
    // Sealed again: its window digest and the file's checksum both right.
    createHash('sha256').update(file.subarray(windowAt, windowAt + stored)).digest().copy(file, record + 64);
    createHash('sha256').update(file.subarray(0, indexHeadLength(file))).digest().copy(file, file.length - 32);
    await pushArtifact('damaged-window', [
      { bytes: file, annotatedLayer: l1!.descriptor.digest },
      { bytes: indexFiles.get(l2!.descriptor.digest)!, annotatedLayer: l2!.descriptor.digest },
    ]);
    const store = join(work, 'store-damaged-window');
    const target = await mountAt(store, 'damaged-window');
    assert.deepEqual(await readInChild(join(target, 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
    const s = await stats(store, target);
    assert.deepEqual(s.layers.map((l) => l.bytesIndexed), [l1!.blob.length, 0], 'layer 1 streamed, layer 2 from the registry');
    await assertLogged(store, new RegExp(`remote index sha256:[0-9a-f]+.*checkpoint ${k}: its window does not inflate to the 32768 bytes the table says`));
    await umount(store, target);
  });

  test('hostile artifact read by its head, a window that is not the one its digest names: reads that need it are EIO, the rest are served', async () => {
    const [l1, l2] = honest.layers;
    const file = Buffer.from(indexFiles.get(l1!.descriptor.digest)!);
    const index = decodeIndex(file);
    const words = index.entries.find((e) => e.path === 'etc/words.txt')!;
    let k = 0;
    while (k + 1 < index.checkpoints.length && index.checkpoints[k + 1]!.uncompressedOffset <= words.dataOffset! + 3 * MiB) k++;
    assert.ok(k > 0 && index.checkpoints[k]!.window.length === 32768, 'the middle of etc/words.txt is in a span with a whole window');
    const record = 128 + 96 * k;
    const windowAt = indexHeadLength(file)! + Number(file.readBigUInt64LE(record + 16));
    file[windowAt + 100]! ^= 0x20; // the head (and its digest) unchanged
    await pushArtifact('head-window', [
      { bytes: file, annotatedLayer: l1!.descriptor.digest, head: { bytes: indexFiles.get(l1!.descriptor.digest)!.subarray(0, indexHeadLength(file)) } },
      { bytes: indexFiles.get(l2!.descriptor.digest)!, annotatedLayer: l2!.descriptor.digest, head: 'from-file' },
    ]);
    const store = join(work, 'store-head-window');
    const target = await mountAt(store, 'head-window');
    const middle = await readRangeInChild(join(target, 'etc/words.txt'), 3 * MiB, 4096);
    assert.equal(middle.ok, false, 'the read must fail');
    assert.match(middle.error ?? '', /Input\/output error/);
    await assertLogged(store, new RegExp(`checkpoint ${k}: its window \\(bytes \\d+-\\d+ of the windows\\)`));
    await assertLogged(store, /digest mismatch/i);
    assert.deepEqual(await readInChild(join(target, 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
    const part = await readRangeInChild(join(target, 'data/part07.txt'), MiB, 4096);
    assert.equal(part.ok, true, part.error);
    assert.equal((await stats(store, target)).bytesIndexed, 0, 'both indexes taken from the registry');
    await umount(store, target);
  });

  test('hostile artifact read by its head, a head that is not the one its annotation names: ignored with a warning, the layer is streamed, reads are right', async () => {
    const [l1, l2] = honest.layers;
    await pushArtifact('head-digest', [
      { bytes: indexFiles.get(l1!.descriptor.digest)!, annotatedLayer: l1!.descriptor.digest, head: { bytes: Buffer.from('another head') } },
      { bytes: indexFiles.get(l2!.descriptor.digest)!, annotatedLayer: l2!.descriptor.digest, head: 'from-file' },
    ]);
    const store = join(work, 'store-head-digest');
    const target = await mountAt(store, 'head-digest');
    const middle = await readRangeInChild(join(target, 'etc/words.txt'), 3 * MiB, 4096);
    assert.equal(middle.ok, true, middle.error);
    assert.ok(middle.bytes!.equals(corpus.subarray(3 * MiB, 3 * MiB + 4096)));
    const s = await stats(store, target);
    assert.deepEqual(s.layers.map((l) => l.bytesIndexed), [l1!.blob.length, 0], 'layer 1 streamed, layer 2 from the registry');
    await assertLogged(store, /remote index sha256:[0-9a-f]+.*: ignored, streaming the layer[\s\S]*its head \(bytes 0-\d+\)/);
    await umount(store, target);
  });

  test('hostile artifact read by its head, a head said to be longer than the index: ignored with a warning, the layer is streamed, reads are right', async () => {
    const [l1, l2] = honest.layers;
    const file = indexFiles.get(l1!.descriptor.digest)!;
    await pushArtifact('head-size', [
      { bytes: file, annotatedLayer: l1!.descriptor.digest, head: { size: file.length + 1 } },
      { bytes: indexFiles.get(l2!.descriptor.digest)!, annotatedLayer: l2!.descriptor.digest, head: 'from-file' },
    ]);
    const store = join(work, 'store-head-size');
    const target = await mountAt(store, 'head-size');
    assert.deepEqual(await readInChild(join(target, 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
    const s = await stats(store, target);
    assert.deepEqual(s.layers.map((l) => l.bytesIndexed), [l1!.blob.length, 0], 'layer 1 streamed, layer 2 from the registry');
    await assertLogged(store, new RegExp(`remote index sha256:[0-9a-f]+.*: ignored, streaming the layer[\\s\\S]*its head of ${file.length + 1} bytes does not fit its ${file.length}`));
    await umount(store, target);
  });

  test('an honest artifact with other span sizes: once the layer is whole, the index built here replaces it (its windows were the registry\'s word alone), and reads go on right', async () => {
    const storeC = join(work, 'store-c-small-spans');
    const built = await lazyroot(['--store', storeC, 'index', '-q', '--no-remote-index', '--span-bytes', String(128 * 1024), ref('v1')]);
    assert.equal(built.code, 0, built.stderr);
    const small = new Map<string, Buffer>();
    for (const l of honest.layers) small.set(l.descriptor.digest, await readFile(join(storeC, 'indexes', 'sha256', l.descriptor.digest.slice(7))));
    await pushArtifact('other-spans', honest.layers.map((l) => ({ bytes: small.get(l.descriptor.digest)!, annotatedLayer: l.descriptor.digest })));
    const store = join(work, 'store-other-spans');
    const target = await mountAt(store, 'other-spans', [], true);
    assert.deepEqual(await readInChild(join(target, 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
    const s = await waitFor(store, target);
    assert.equal(s.complete, true, 'prefetch completed the layers');
    for (const l of honest.layers) {
      const kept = decodeIndex(await readFile(join(store, 'indexes', 'sha256', l.descriptor.digest.slice(7))));
      const given = decodeIndex(small.get(l.descriptor.digest)!);
      const here = decodeIndex(indexFiles.get(l.descriptor.digest)!);
      assert.notEqual(given.checkpoints.length, here.checkpoints.length, 'the artifact\'s spans are not the default ones');
      assert.equal(kept.checkpoints.length, here.checkpoints.length, `layer ${l.descriptor.digest}: the store keeps the index built here`);
    }
    assert.doesNotMatch(await daemonLog(store), /refused/);
    for (const path of ['etc/hello.txt', 'etc/words.txt', 'data/part07.txt']) assert.equal((await readInChild(join(target, path))).ok, true, path);
    assert.deepEqual(await readInChild(join(target, 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
    await umount(store, target);
  });

  test('the access profile, when one is recorded, goes into the artifact and is kept by the machine that finds it', async () => {
    const storeA = join(work, 'store-a');
    const recording = await mountAt(storeA, 'v1', ['--record', '--record-ms', '1000']);
    assert.deepEqual(await readInChild(join(recording, 'etc/hello.txt')), { ok: true, sha256: sha(hello) });
    const profileOf = (store: string) => join(store, 'indexes', 'sha256', `${honest.configDigest.slice(7)}.profile`);
    const began = Date.now();
    while (!(await access(profileOf(storeA)).then(() => true, () => false)) && Date.now() - began < 15_000) await new Promise((r) => setTimeout(r, 200));
    await umount(storeA, recording);
    const pushed = await lazyroot(['--store', storeA, '--json', 'index', '--push', ref('v1')]);
    assert.equal(pushed.code, 0, pushed.stderr);
    const report = JSON.parse(pushed.stdout) as PushJson;
    assert.equal(report.profile, true);
    assert.equal(report.indexes, 2);
    const text = await lazyroot(['--store', storeA, 'index', '--push', ref('v1')]);
    assert.match(text.stdout, /pushed 2 span indexes and the access profile \(.*\) to 127\.0\.0\.1:\d+\/remote\/app as sha256:[0-9a-f]{64}, subject sha256:[0-9a-f]{64}, listed under tag sha256-[0-9a-f]{64} \(the registry has no referrers API\)/);

    const storeG = join(work, 'store-g');
    const target = await mountAt(storeG, 'v1');
    assert.deepEqual(await readFile(profileOf(storeG)), await readFile(profileOf(storeA)));
    assert.equal((await stats(storeG, target)).bytesIndexed, 0);
    await umount(storeG, target);
  });

  test('index --push errors name what is at fault and exit 1', async () => {
    // An image that did not come from a registry has nowhere to go.
    const layout = join(work, 'layout');
    const { writeOciLayout } = await import('../helpers/image-builder.js');
    await writeOciLayout(layout, [{ layers: [{ tar: await buildTar([file('a', 'a')]), compression: 'gzip' }], refName: 'v1' }]);
    const local = await lazyroot(['--store', join(work, 'store-layout'), 'index', '--push', `oci:${layout}:v1`]);
    assert.equal(local.code, 1);
    assert.match(local.stderr, /index --push oci:.*did not come from a registry.*nowhere to push/);
    // A registry that is not there.
    const gone = await lazyroot(['--store', join(work, 'store-a'), 'index', '--push', 'docker://127.0.0.1:1/remote/app:v1']);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /127\.0\.0\.1:1/);
    // Help lists the flags.
    const help = await lazyroot(['index', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--push/);
    assert.match(help.stdout, /--no-remote-index/);
    await access(join(work, 'store-a', 'indexes'));
  });
});

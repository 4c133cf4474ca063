/**
 * A zstd:chunked TOC whose checksum matches the layer's annotation but which
 * disagrees with the layer's own tar stream (the eStargz regression of issue
 * 12, item 2, for zstd:chunked): it says `data/b.txt` is the 28 bytes of
 * `data/a.txt` (a.txt's frames, a.txt's digest); the tar, which `create`
 * unpacks, has b.txt's real 5,001 bytes. The lazy mount fails b.txt (EIO,
 * logged), serves a.txt, whose headers precede the lie (c.txt, whose headers
 * frame the lie hides, is refused too: never served wrong), and prefetch does
 * not promote the blob. The blob is the test writer's (helpers/zstd-chunked.ts).
 */
import { assertLogged } from '../helpers/daemon-log.js';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { buildTar, dir, file } from '../helpers/tar-builder.js';
import { buildImage, type BuiltImage } from '../helpers/image-builder.js';
import { incompressible } from '../helpers/estargz.js';
import { zstdChunked } from '../helpers/zstd-chunked.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry', 'zstd'] });
if (missing.length && process.env.CI) throw new Error(`CI: zstd:chunked lying TOC tests need ${missing.join(', ')}`);

function readInChild(path: string): Promise<{ ok: boolean; stdout: Buffer; stderr: string }> {
  const child = spawn('cat', [path], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ ok: code === 0, stdout: Buffer.concat(out), stderr })));
}

describe('a zstd:chunked TOC that disagrees with its own tar stream', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let registry: TestRegistry;
  let image: BuiltImage;
  const a = Buffer.from('the 28 bytes of data/a.txt.\n');
  const b = incompressible(5001, 'b');
  const c = Buffer.from('c tells the truth\n');
  const mounted: Array<{ target: string; store: string }> = [];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-zc-lying-'));
    registry = await startRegistry();
    const tar = await buildTar([dir('data'), file('data/a.txt', a), file('data/b.txt', b), file('data/c.txt', c)]);
    const layer = zstdChunked(tar, {
      editToc: (toc) => {
        const entryA = toc.entries!.find((e) => e.name === 'data/a.txt')!;
        const entryB = toc.entries!.find((e) => e.name === 'data/b.txt')!;
        Object.assign(entryB, { size: entryA.size, offset: entryA.offset, endOffset: entryA.endOffset, digest: entryA.digest });
      },
    });
    image = buildImage({ layers: [{ tar, compression: 'zstd', blob: layer.blob, annotations: layer.annotations }] });
    await registry.pushImage('lying/zc', 'v1', image);
  });

  after(async () => {
    for (const m of mounted) await lazyroot(['--store', m.store, 'umount', m.target]);
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  async function mount(store: string, extra: string[] = []): Promise<string> {
    const target = join(work, `mnt-${mounted.length}`);
    await mkdir(target, { recursive: true });
    const r = await lazyroot(['--store', store, 'mount', ...extra, `docker://${registry.host}/lying/zc:v1`, target]);
    assert.equal(r.code, 0, r.stderr);
    mounted.push({ target, store });
    return target;
  }

  test('create unpacks the tar: b.txt has its real 5,001 bytes', async () => {
    const store = join(work, 'store-create');
    const r = await lazyroot(['--store', store, 'create', `docker://${registry.host}/lying/zc:v1`, 'truth']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok((await readFile(join(store, 'rootfs/truth/merged/data/b.txt'))).equals(b));
    assert.equal((await lazyroot(['--store', store, 'delete', 'truth'])).code, 0);
  });

  test('the lazy mount fails b.txt with EIO (logged with the layer and path), never serving the TOC\'s version; a.txt is served, c.txt never wrongly', async () => {
    const store = join(work, 'store-lazy');
    const target = await mount(store, ['--no-prefetch']);
    const lie = await readInChild(join(target, 'data/b.txt'));
    assert.equal(lie.ok, false, `b.txt was served: ${JSON.stringify(lie.stdout.toString('latin1').slice(0, 40))}`);
    assert.match(lie.stderr, /Input\/output error/);
    assert.equal(lie.stdout.length, 0);
    const truth = await readInChild(join(target, 'data/a.txt'));
    assert.ok(truth.ok && truth.stdout.equals(a), truth.stderr);
    // c.txt's headers frame is found after the last data frame the TOC knows of (a.txt's): with
    // the lie, b.txt's real header and data stand there, so c.txt is refused too. Never wrong bytes.
    const after = await readInChild(join(target, 'data/c.txt'));
    if (after.ok) assert.ok(after.stdout.equals(c));
    else assert.match(after.stderr, /Input\/output error/);
    const log = await assertLogged(store, /"data\/b\.txt": refused: the TOC disagrees with the layer's tar stream/);
    const refusals = log.split('\n').filter((l) => /"data\/b\.txt": refused: the TOC disagrees with the layer's tar stream/.test(l));
    assert.ok(refusals.length >= 1, log);
    assert.match(refusals[0]!, new RegExp(image.layerDigests[0]!.slice(7, 19)));
  });

  test('prefetch fetches the whole blob but does not promote it: the TOC is checked against the tar stream first', async () => {
    const store = join(work, 'store-prefetch');
    const target = await mount(store);
    let layer: { prefetch: string; prefetchError?: string; complete: boolean } | undefined;
    const began = Date.now();
    for (;;) {
      const s = await lazyroot(['--store', store, 'mount', '--stats', '--json', target]);
      layer = (JSON.parse(s.stdout) as { layers: Array<{ prefetch: string; prefetchError?: string; complete: boolean }> }).layers[0];
      if (layer && (layer.prefetch === 'failed' || layer.prefetch === 'done' || layer.complete)) break;
      if (Date.now() - began > 30_000) assert.fail(`prefetch still ${layer?.prefetch} after 30 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(layer.complete, false);
    assert.equal(layer.prefetch, 'failed');
    assert.match(layer.prefetchError ?? '', /TOC disagrees with the layer's tar stream/);
    assert.equal(existsSync(join(store, 'blobs', 'sha256', image.layerDigests[0]!.slice(7))), false, 'not promoted to blobs/');
    assert.equal((await readInChild(join(target, 'data/c.txt'))).ok, false, 'a refused layer serves nothing');
  });
});

/**
 * Regression (issue 12, item 2): an eStargz TOC whose digest matches the
 * layer's annotation, but which disagrees with the layer's own tar stream.
 * Here it says `data/b.txt` is the 28 bytes of `data/a.txt` (pointing at
 * a.txt's gzip member, with that chunk's digest) and that a.txt is empty;
 * the tar, which `create` unpacks, has b.txt's real 5,001 bytes. One image
 * digest must never show two contents: the lazy mount fails b.txt (EIO,
 * logged), serves the files the TOC tells the truth about, and prefetch does
 * not promote the blob.
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
import { dir, file } from '../helpers/tar-builder.js';
import { buildEstargzImage, incompressible, type EstargzImage } from '../helpers/estargz.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry'] });
if (missing.length && process.env.CI) throw new Error(`CI: lying TOC tests need ${missing.join(', ')}`);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Reads a file of the mount from another process. */
function readInChild(path: string): Promise<{ ok: boolean; stdout: Buffer; stderr: string }> {
  const child = spawn('cat', [path], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ ok: code === 0, stdout: Buffer.concat(out), stderr })));
}

describe('an eStargz TOC that disagrees with its own tar stream', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let registry: TestRegistry;
  let image: EstargzImage;
  const a = Buffer.from('the 28 bytes of data/a.txt.\n');
  const b = incompressible(5001, 'b');
  const c = Buffer.from('c tells the truth\n');
  const mounted: Array<{ target: string; store: string }> = [];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-lying-toc-'));
    registry = await startRegistry();
    assert.equal(a.length, 28);
    image = await buildEstargzImage([[dir('data'), file('data/a.txt', a), file('data/b.txt', b), file('data/c.txt', c)]], {
      editToc: (toc) => {
        const entryA = toc.entries.find((e) => e.name === 'data/a.txt')!;
        const entryB = toc.entries.find((e) => e.name === 'data/b.txt')!;
        // b.txt: a.txt's member and digests; a.txt: empty. The TOC's digest is taken after this edit.
        Object.assign(entryB, { size: 28, offset: entryA.offset, chunkDigest: entryA.chunkDigest, digest: entryA.digest });
        entryA.size = 0;
        delete entryA.offset;
        delete entryA.chunkDigest;
        delete entryA.digest;
      },
    });
    await registry.pushImage('lying/toc', 'v1', image);
  });

  after(async () => {
    for (const m of mounted) await lazyroot(['--store', m.store, 'umount', m.target]);
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  const ref = () => `docker://${registry.host}/lying/toc:v1`;

  async function mount(store: string, extra: string[] = []): Promise<string> {
    const target = join(work, `mnt-${mounted.length}`);
    await mkdir(target, { recursive: true });
    const r = await lazyroot(['--store', store, 'mount', ...extra, ref(), target]);
    assert.equal(r.code, 0, r.stderr);
    mounted.push({ target, store });
    return target;
  }

  test('create unpacks the tar: b.txt has its real 5,001 bytes', async () => {
    const store = join(work, 'store-create');
    const r = await lazyroot(['--store', store, 'create', ref(), 'truth']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok((await readFile(join(store, 'rootfs/truth/merged/data/b.txt'))).equals(b));
    assert.equal((await lazyroot(['--store', store, 'delete', 'truth'])).code, 0);
  });

  test('the lazy mount fails b.txt with EIO (logged with the layer and path), never serving the TOC\'s version; c.txt is served', async () => {
    const store = join(work, 'store-lazy');
    const target = await mount(store, ['--no-prefetch']);
    const lie = await readInChild(join(target, 'data/b.txt'));
    assert.equal(lie.ok, false, `b.txt was served: ${JSON.stringify(lie.stdout.toString('latin1').slice(0, 40))}`);
    assert.match(lie.stderr, /Input\/output error/);
    assert.equal((await readInChild(join(target, 'data/b.txt'))).ok, false, 'and again');
    const truth = await readInChild(join(target, 'data/c.txt'));
    assert.ok(truth.ok, truth.stderr);
    assert.ok(truth.stdout.equals(c));
    const log = await assertLogged(store, /"data\/b\.txt": refused: the TOC disagrees with the layer's tar stream/);
    const refusals = log.split('\n').filter((l) => /"data\/b\.txt": refused: the TOC disagrees with the layer's tar stream/.test(l));
    assert.equal(refusals.length, 1, log);
    assert.match(refusals[0]!, new RegExp(image.layerDigests[0]!.slice(7, 19)));
  });

  test('prefetch downloads and verifies the whole blob, but does not promote it: the TOC is checked against the tar stream first', async () => {
    const store = join(work, 'store-prefetch');
    const target = await mount(store);
    let layer: { prefetch: string; prefetchError?: string; complete: boolean } | undefined;
    const began = Date.now();
    for (;;) {
      const s = await lazyroot(['--store', store, 'mount', '--stats', '--json', target]);
      assert.equal(s.code, 0, s.stderr);
      layer = (JSON.parse(s.stdout) as { layers: Array<{ prefetch: string; prefetchError?: string; complete: boolean }> }).layers[0];
      if (layer && (layer.prefetch === 'failed' || layer.prefetch === 'done' || layer.complete)) break;
      if (Date.now() - began > 30_000) assert.fail(`prefetch still ${layer?.prefetch} after 30 s`);
      await sleep(100);
    }
    assert.equal(layer.complete, false);
    assert.equal(layer.prefetch, 'failed');
    assert.match(layer.prefetchError ?? '', /TOC disagrees with the layer's tar stream/);
    assert.equal(existsSync(join(store, 'blobs', 'sha256', image.layerDigests[0]!.slice(7))), false, 'not promoted to blobs/');
    // Every read of the layer fails now, c.txt's too: the layer is refused.
    assert.equal((await readInChild(join(target, 'data/b.txt'))).ok, false);
    assert.equal((await readInChild(join(target, 'data/c.txt'))).ok, false);
    await assertLogged(store, /refused: the TOC disagrees with the layer's tar stream/);
  });
});

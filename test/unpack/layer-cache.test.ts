import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { LazyrootError } from '../../src/errors.js';
import { Store } from '../../src/store/store.js';
import { pullReference } from '../../src/store/operations.js';
import { ensureLayersUnpacked } from '../../src/unpack/layer-cache.js';
import { unpackLayer } from '../../src/unpack/unpack-layer.js';
import { writeOciLayout, type ImageSpec, type LayerSpec } from '../helpers/image-builder.js';
import { buildTar, chardev, dir, fifo, file, hardlink, opaque, symlink, whiteout, type TarEntry } from '../helpers/tar-builder.js';
import { diffTreesReport, snapshotTree } from '../helpers/tree-snapshot.js';
import { missingRequirements } from '../helpers/requirements.js';

const missing = missingRequirements({ root: true });
if (missing.length && process.env.CI) throw new Error(`CI: layer cache tests need ${missing.join(', ')}`);

const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

/** Deterministic bytes gzip cannot shrink: a sha512 chain. */
function incompressible(seed: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  let block = createHash('sha512').update(seed).digest();
  for (let at = 0; at < size; at += block.copy(out, at)) block = createHash('sha512').update(block).digest();
  return out;
}

/** Many small files in a few directories, as a distribution layer has. */
function smallFiles(prefix: string, count: number): TarEntry[] {
  const entries: TarEntry[] = [];
  for (let d = 0; d < 4; d++) {
    entries.push(dir(`${prefix}/d${d}`, { mode: d === 1 ? 0o2775 : 0o755, gid: d === 1 ? 50 : 0 }));
    for (let f = 0; f < count / 4; f++) {
      entries.push(file(`${prefix}/d${d}/f${f}`, `file ${d}/${f}\n`.repeat(f % 7), { mode: f % 5 === 0 ? 0o755 : 0o644, uid: f % 3 === 0 ? 1000 : 0 }));
    }
  }
  return entries;
}

describe('ensureLayersUnpacked: big layers decompressed on a worker thread', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let store: Store;
  let layers: LayerSpec[];
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-layer-cache-'));
    store = await Store.open(join(work, 'store'));
    const big = incompressible('big', 11 << 20); // over the worker threshold, gzipped
    // Layer 1 is small: unpacked on the main thread while the worker starts for layer 2,
    // which is over the worker threshold; layer 3 then rides the worker too.
    layers = [
      {
        tar: await buildTar([
          dir('etc'),
          ...smallFiles('usr', 400),
          file('etc/suid', 'root tool', { mode: 0o4755, uid: 1000, gid: 1000 }),
          symlink('etc/link', '../usr/d0/f1'),
          file('etc/big.bin', 'small for now', { mode: 0o600 }),
          hardlink('etc/big-again', 'etc/big.bin'),
          dir('d'),
          file('d/old', 'o'),
          file('f2d', 'a file, then a directory'),
          fifo('run-fifo'),
          chardev('null', 1, 3),
        ]),
        compression: 'gzip',
      },
      {
        tar: await buildTar([
          file('etc/big.bin', big, { mode: 0o600 }),
          whiteout('usr/d0/f2'),
          opaque('d'),
          file('d/new', 'n'),
          hardlink('etc/alias', 'usr/d2/f3'),
          dir('f2d'),
          file('f2d/inside', 'i'),
          ...smallFiles('opt', 40),
        ]),
        compression: 'gzip',
      },
      { tar: await buildTar([file('etc/motd', 'hello\n'), whiteout('etc/big-again')]), compression: 'none' },
    ];
  });
  after(async () => {
    store.close();
    await rm(work, { recursive: true, force: true });
  });

  async function pulled(name: string, spec: ImageSpec) {
    await writeOciLayout(join(work, name), [{ ...spec, refName: 'v1' }]);
    return (await pullReference(store, `oci:${join(work, name)}:v1`)).image;
  }

  test('the diffs equal those unpacked from the same tars on the main thread', async () => {
    const image = await pulled('layout', { layers });
    const reused: boolean[] = [];
    const unpacked = await ensureLayersUnpacked(store, image, { onLayer: (i, r) => (reused[i] = r) });
    assert.deepEqual(reused, [false, false, false]);
    const reference: string[] = [];
    for (const [i, layer] of layers.entries()) {
      const target = join(work, 'reference', `diff${i}`);
      await mkdir(target, { recursive: true });
      const result = await unpackLayer(Readable.from([layer.tar]), { target, lowers: [...reference].reverse(), what: `layer ${i}` });
      assert.equal(result.diffId, sha256(layer.tar));
      reference.push(target);
      const report = diffTreesReport(await snapshotTree(unpacked[i]!.diff, { includeOverlayXattrs: true }), await snapshotTree(target, { includeOverlayXattrs: true }), {
        allow: [{ path: /^(usr\/d0\/f2|etc\/big-again)$/, field: 'mtime', reason: 'whiteouts are made when unpacked, with no time of their own' }],
      });
      assert.deepEqual(report.differences.map((d) => d.message), [], `layer ${i}`);
    }
  });

  test('layers already unpacked are reused; only the new top layer is read', async () => {
    const top: LayerSpec = { tar: await buildTar([file('top', incompressible('top', 11 << 20))]), compression: 'gzip' };
    const image = await pulled('layout-more', { layers: [...layers, top] });
    const reused: boolean[] = [];
    const unpacked = await ensureLayersUnpacked(store, image, { onLayer: (i, r) => (reused[i] = r) });
    assert.deepEqual(reused, [true, true, true, false]);
    assert.ok(incompressible('top', 11 << 20).equals(await readFile(join(unpacked[3]!.diff, 'top'))));
  });

  test('a diff ID lie is caught, and leaves no layer behind', async () => {
    const alone: LayerSpec = { tar: await buildTar([file('alone', incompressible('alone', 11 << 20))]), compression: 'gzip' };
    const lie = sha256(alone.tar).replace(/.$/, (c) => (c === '0' ? '1' : '0'));
    const image = await pulled('layout-lie', { layers: [alone], config: { rootfs: { type: 'layers', diff_ids: [lie] } } });
    const before = await readdir(store.paths.layers);
    await assert.rejects(ensureLayersUnpacked(store, image), (e: LazyrootError) => {
      assert.equal(e.code, 'DIGEST_MISMATCH');
      assert.match(e.message, /layer 1\/1 .*uncompressed content vs the config's diff ID: digest mismatch/);
      return true;
    });
    assert.deepEqual(await readdir(store.paths.layers), before);
  });

  test('a hostile entry after megabytes of data is refused; nothing is left and the worker stops', async () => {
    const outside = join(work, 'outside');
    await mkdir(outside, { recursive: true });
    const hostile: LayerSpec = {
      tar: await buildTar([file('padding', incompressible('pad', 11 << 20)), symlink('escape', outside), file('escape/evil', 'x')]),
      compression: 'gzip',
    };
    const image = await pulled('layout-hostile', { layers: [hostile, layers[2]!] });
    const before = await readdir(store.paths.layers);
    await assert.rejects(ensureLayersUnpacked(store, image), (e: LazyrootError) => {
      assert.equal(e.code, 'HOSTILE_ARCHIVE');
      assert.match(e.message, /entry "escape\/evil" would be written through the symlink "escape"/);
      return true;
    });
    assert.ok(!existsSync(join(outside, 'evil')));
    assert.deepEqual(await readdir(store.paths.layers), before);
  });
});

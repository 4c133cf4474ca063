import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { LayerTarReader } from '../../src/unpack/layer-tar-reader.js';
import { compress } from '../helpers/tar-builder.js';
import { missingRequirements } from '../helpers/requirements.js';

/** Deterministic bytes that compress a little: 64-byte hash blocks, each repeated once. */
function content(seed: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  let block = createHash('sha256').update(seed).digest();
  for (let at = 0; at < size; ) {
    block = createHash('sha512').update(block).digest();
    at += block.copy(out, at);
    at += block.copy(out, at);
  }
  return out;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

describe('LayerTarReader: layer blobs decompressed and hashed on a worker thread', () => {
  let work: string;
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-tar-reader-'));
  });
  after(async () => {
    await rm(work, { recursive: true, force: true });
  });

  test('gzip, zstd and uncompressed blobs, in turn, through a window far smaller than each', async () => {
    const zstdMissing = missingRequirements({ tools: ['zstd'] }).length > 0;
    const kinds = (['gzip', 'none', 'zstd'] as const).filter((k) => k !== 'zstd' || !zstdMissing);
    const blobs = await Promise.all(
      kinds.map(async (compression, i) => {
        const plain = content(`blob ${i}`, (3 << 20) + 12345 * i);
        const path = join(work, `blob-${compression}`);
        await writeFile(path, compress(plain, compression));
        return { compression, plain, path };
      }),
    );
    const reader = new LayerTarReader(64 << 10);
    try {
      // All asked for at once: the worker reads them one after the other.
      const tars = blobs.map((b) => reader.read(b.path, b.compression));
      for (const [i, tar] of tars.entries()) {
        const got = await readAll(tar.stream);
        assert.ok(got.equals(blobs[i]!.plain), `${blobs[i]!.compression}: same bytes`);
        assert.deepEqual(await tar.hashed, { diffId: sha256(blobs[i]!.plain), size: blobs[i]!.plain.length });
      }
    } finally {
      await reader.close();
    }
  });

  test('a corrupt blob fails its stream with the decompressor error; the next blob still reads', async () => {
    const plain = content('corrupt', 1 << 20);
    const gz = compress(plain, 'gzip');
    gz[gz.length >> 1] ^= 0xff;
    await writeFile(join(work, 'corrupt.gz'), gz);
    await writeFile(join(work, 'fine.gz'), compress(plain, 'gzip'));
    const reader = new LayerTarReader();
    try {
      const bad = reader.read(join(work, 'corrupt.gz'), 'gzip');
      const good = reader.read(join(work, 'fine.gz'), 'gzip');
      await assert.rejects(readAll(bad.stream), (err: NodeJS.ErrnoException) => /^Z_/.test(err.code ?? '') && err.message.length > 0);
      await assert.rejects(bad.hashed);
      assert.ok((await readAll(good.stream)).equals(plain));
    } finally {
      await reader.close();
    }
  });

  test('a missing blob fails with ENOENT', async () => {
    const reader = new LayerTarReader();
    try {
      const tar = reader.read(join(work, 'no-such-blob'), 'gzip');
      await assert.rejects(readAll(tar.stream), (err: NodeJS.ErrnoException) => err.code === 'ENOENT');
    } finally {
      await reader.close();
    }
  });

  test('a stream dropped half-read does not hold up the blobs after it', async () => {
    const plain = content('dropped', 4 << 20);
    await writeFile(join(work, 'dropped.gz'), compress(plain, 'gzip'));
    const reader = new LayerTarReader(128 << 10);
    try {
      const first = reader.read(join(work, 'dropped.gz'), 'gzip');
      const second = reader.read(join(work, 'dropped.gz'), 'gzip');
      for await (const _ of first.stream) break; // one chunk, then destroyed
      await assert.rejects(first.hashed);
      assert.ok((await readAll(second.stream)).equals(plain));
      assert.equal((await second.hashed).diffId, sha256(plain));
    } finally {
      await reader.close();
    }
  });

  test('close() fails streams not read to their end', async () => {
    const plain = content('closed', 2 << 20);
    await writeFile(join(work, 'closed.gz'), compress(plain, 'gzip'));
    const reader = new LayerTarReader(64 << 10);
    const tar = reader.read(join(work, 'closed.gz'), 'gzip');
    const reading = assert.rejects(readAll(tar.stream), /closed/);
    await reader.close();
    await reading;
    await assert.rejects(tar.hashed, /closed/);
    const late = reader.read(join(work, 'closed.gz'), 'gzip');
    await assert.rejects(readAll(late.stream), /closed/);
  });
});

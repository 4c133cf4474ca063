/**
 * Checks any ImageSource test can share: read a blob whole, and read every
 * blob of a resolved image checking each against its descriptor.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import type { Descriptor } from '../../src/oci/types.js';
import type { ImageSource, ResolvedImage } from '../../src/source/image-source.js';

const run = promisify(execFile);

export function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

export async function readBlob(source: ImageSource, descriptor: Descriptor, offset = 0): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of await source.openBlob(descriptor, offset)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Reads the config and every layer (whole, from an offset, and as a range) and checks digests and sizes. */
export async function checkEveryBlob(source: ImageSource, image: ResolvedImage): Promise<void> {
  assert.equal(sha256(image.manifestBytes), image.manifestDigest);
  assert.equal(sha256(image.configBytes), image.manifest.config.digest);
  for (const descriptor of [image.manifest.config, ...image.manifest.layers]) {
    const bytes = await readBlob(source, descriptor);
    assert.equal(bytes.length, descriptor.size, `${descriptor.digest}: size`);
    assert.equal(sha256(bytes), descriptor.digest, `${descriptor.digest}: digest`);
    const tail = await readBlob(source, descriptor, Math.floor(descriptor.size / 2));
    assert.ok(tail.equals(bytes.subarray(Math.floor(descriptor.size / 2))), `${descriptor.digest}: read from offset`);
    if (source.readRange) {
      const start = Math.floor(descriptor.size / 3);
      const end = Math.floor((2 * descriptor.size) / 3) + 1;
      const range = await source.readRange(descriptor, start, end);
      assert.ok(range.equals(bytes.subarray(start, end)), `${descriptor.digest}: range`);
    }
  }
}

/** Runs the real skopeo; returns its stdout. */
export async function skopeo(...args: string[]): Promise<Buffer> {
  const { stdout } = await run('skopeo', ['--insecure-policy', ...args], { encoding: 'buffer', maxBuffer: 1 << 28 });
  return stdout;
}

import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { buildTar, dir, file, type TarEntry } from '../test/helpers/tar-builder.js';
import { writeOciLayout } from '../test/helpers/image-builder.js';
import { busyboxImageSpec } from '../test/helpers/sample-images.js';

/**
 * Deterministic pseudo-random bytes (sha256 in counter mode): incompressible
 * like binaries and media, and the same on every run so the cached image
 * keeps its digests.
 */
function noise(seed: string, size: number): Buffer {
  const out = Buffer.allocUnsafe(size);
  for (let i = 0, n = 0; i < size; n++) {
    const block = createHash('sha256').update(`${seed}/${n}`).digest();
    i += block.copy(out, i);
  }
  return out;
}

/** Text that compresses about 4:1, like source, configs and docs. */
function prose(seed: string, size: number): Buffer {
  const words = ['layer', 'image', 'root', 'mount', 'lazy', 'store', 'digest', 'index', 'chunk', 'span', 'fuse', 'overlay'];
  const parts: string[] = [];
  let length = 0;
  for (let n = 0; length < size; n++) {
    const h = createHash('sha256').update(`${seed}/${n}`).digest();
    const line = Array.from(h.subarray(0, 12), (b) => words[b % words.length]).join(' ') + ` ${h.readUInt32BE(12)}\n`;
    parts.push(line);
    length += line.length;
  }
  return Buffer.from(parts.join('')).subarray(0, size);
}

/**
 * The benchmark image: a static busybox base (so runc can run /bin/true),
 * then 5 gzip layers of ~46 MiB compressed each (40 MiB of incompressible
 * files and 24 MiB of text per layer): ~231 MiB compressed, ~322 MiB
 * unpacked. Built once into `cacheDir` and reused.
 */
export async function largeImageLayout(cacheDir: string): Promise<string> {
  const layoutDir = join(cacheDir, 'large-v2');
  if (existsSync(join(layoutDir, 'index.json'))) return layoutDir;
  await rm(layoutDir, { recursive: true, force: true });
  await mkdir(cacheDir, { recursive: true });
  const layers = [(await busyboxImageSpec('base')).layers[0]!];
  for (let l = 0; l < 5; l++) {
    const entries: TarEntry[] = [dir(`data${l}`)];
    for (let f = 0; f < 40; f++) entries.push(file(`data${l}/bin${f}`, noise(`${l}/${f}`, 1 << 20), { mode: 0o755 }));
    for (let f = 0; f < 24; f++) entries.push(file(`data${l}/doc${f}.txt`, prose(`${l}/${f}`, 1 << 20)));
    layers.push({ tar: await buildTar(entries), compression: 'gzip' as const });
  }
  await writeOciLayout(layoutDir, [{ layers, refName: 'v1', config: { config: { Cmd: ['/bin/true'], Env: ['PATH=/bin'] } } }]);
  return layoutDir;
}

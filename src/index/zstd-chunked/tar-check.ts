import type { Readable } from 'node:stream';
import { LazyrootError } from '../../errors.js';
import { TarIndexer } from '../tar-index.js';
import { chunkChecker, entryDifference } from '../toc-tar-compare.js';
import type { EstargzChunk, IndexEntry } from '../types.js';

/**
 * Checks a whole zstd:chunked layer's tar stream (the blob decompressed, as
 * `create` unpacks it) against its TOC, once the blob's digest is verified:
 * the tar's members must be the TOC's entries in order (path, type, size,
 * link target, mode, owner), and each file's bytes, cut at the TOC's chunk
 * boundaries, must match the chunk digests. Reads verify every chunk, so
 * after this a lazy mount serves exactly what `create` unpacks. Throws
 * INVALID_DATA naming the first disagreement.
 */
export async function checkZstdChunkedTocAgainstTar(
  tar: Readable,
  index: { entries: readonly IndexEntry[]; chunks: ReadonlyMap<string, readonly EstargzChunk[]> },
  what: string,
): Promise<void> {
  const expected = index.entries;
  let next = 0;
  let failure: LazyrootError | undefined;
  const mismatch = (why: string) => new LazyrootError('INVALID_DATA', `${what}: the TOC disagrees with the layer's tar stream: ${why}`);
  const indexer = new TarIndexer(what, (entry) => {
    if (failure) throw failure;
    const want = expected[next++];
    if (!want) throw mismatch(`the tar has ${JSON.stringify(entry.path)} after the TOC's last entry`);
    const differs = entryDifference(want, entry);
    if (differs) throw mismatch(`entry ${next - 1} ${JSON.stringify(want.path)}: ${differs}`);
    if (entry.type !== 'file' || entry.size === 0) return;
    return chunkChecker(index.chunks.get(want.path) ?? [], (why) => (failure ??= mismatch(`${JSON.stringify(want.path)}: ${why}`)));
  });
  for await (const piece of tar) {
    await indexer.write(piece as Buffer);
    if (failure) throw failure;
  }
  await indexer.end();
  if (failure) throw failure;
  if (next !== expected.length) throw mismatch(`the TOC lists ${expected.length} entries, the tar ${next}`);
}

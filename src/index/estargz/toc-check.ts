import type { Readable } from 'node:stream';
import { LazyrootError } from '../../errors.js';
import { TarIndexer } from '../tar-index.js';
import { chunkChecker, entryDifference } from '../toc-tar-compare.js';
import type { IndexEntry } from '../types.js';
import { noPrefetchLandmark, prefetchLandmark, tocTarName, type EstargzMemberChunk } from './toc.js';

/**
 * Checks a whole eStargz layer's tar stream against its TOC, once the blob is
 * whole and its digest verified: the tar members, read as `create` reads them
 * (TarIndexer), must be the TOC's entries in the same order — path, type,
 * size, mode, owner, link target — and each regular file's bytes, cut at the
 * TOC's chunk boundaries, must match the chunk digests. Reads verify every
 * chunk against its digest, so after this check a lazy mount of the layer
 * serves exactly the bytes `create` unpacks. The landmarks and the TOC's own
 * entry are in the tar but not among the entries; nothing may follow the TOC.
 * Throws INVALID_DATA naming the first disagreement.
 */
export async function checkTocAgainstTar(
  tar: Readable,
  index: { entries: readonly IndexEntry[]; chunks: ReadonlyMap<string, readonly EstargzMemberChunk[]> },
  what: string,
): Promise<void> {
  const expected = index.entries;
  let next = 0;
  let tocSeen = false;
  /** A chunk whose bytes did not match: found inside a data sink, which must not throw. */
  let failure: LazyrootError | undefined;
  const mismatch = (why: string) => new LazyrootError('INVALID_DATA', `${what}: the TOC disagrees with the layer's tar stream: ${why}`);

  const indexer = new TarIndexer(what, (entry) => {
    if (failure) throw failure;
    if (tocSeen) throw mismatch(`${JSON.stringify(entry.path)} follows the TOC`);
    if (entry.type === 'file' && (entry.path === prefetchLandmark || entry.path === noPrefetchLandmark)) return;
    if (entry.type === 'file' && entry.path === tocTarName && next === expected.length) {
      tocSeen = true;
      return;
    }
    const want = expected[next++];
    if (!want) throw mismatch(`the tar has ${JSON.stringify(entry.path)} after the TOC's last entry`);
    const differs = entryDifference(want, entry);
    if (differs) throw mismatch(`entry ${next - 1} ${JSON.stringify(want.path)}: ${differs}`);
    if (entry.type !== 'file' || entry.size === 0) return;
    const chunks = index.chunks.get(want.path) ?? [];
    return chunkChecker(chunks, (why) => (failure ??= mismatch(`${JSON.stringify(want.path)}: ${why}`)));
  });
  for await (const piece of tar) {
    await indexer.write(piece as Buffer);
    if (failure) throw failure;
  }
  await indexer.end();
  if (failure) throw failure;
  if (next !== expected.length) throw mismatch(`the TOC lists ${expected.length} entries, the tar ${next} (next: ${JSON.stringify(expected[next]!.path)})`);
  if (!tocSeen) throw mismatch(`no ${tocTarName} entry at the end of the tar`);
}

import { createHash, type Hash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { LazyrootError } from '../../errors.js';
import { digestAlgorithm } from '../../oci/digest.js';
import { TarIndexer } from '../tar-index.js';
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
    const differs = difference(want, entry);
    if (differs) throw mismatch(`entry ${next - 1} ${JSON.stringify(want.path)}: ${differs}`);
    if (entry.type !== 'file' || entry.size === 0) return;
    return chunkSink(index.chunks.get(want.path) ?? [], (why) => (failure ??= mismatch(`${JSON.stringify(want.path)}: ${why}`)));
  });
  for await (const piece of tar) {
    await indexer.write(piece as Buffer);
    if (failure) throw failure;
  }
  await indexer.end();
  if (failure) throw failure;
  if (next !== expected.length) throw mismatch(`the TOC lists ${expected.length} entries, the tar ${next}`);
}

function difference(want: IndexEntry, got: IndexEntry): string | undefined {
  if (want.path !== got.path) return `the tar has ${JSON.stringify(got.path)} there`;
  if (want.type !== got.type) return `the tar has a ${got.type}, the TOC a ${want.type}`;
  if (want.type === 'file' && got.sparse) return 'the tar has a sparse file';
  if (want.type === 'file' && want.size !== got.size) return `the tar has ${got.size} bytes, the TOC ${want.size}`;
  if ((want.linkname ?? '') !== (got.linkname ?? '')) return `the tar links to ${JSON.stringify(got.linkname)}, the TOC to ${JSON.stringify(want.linkname)}`;
  if (want.mode !== got.mode) return `the tar has mode ${got.mode.toString(8)}, the TOC ${want.mode.toString(8)}`;
  if (want.uid !== got.uid || want.gid !== got.gid) return `the tar has owner ${got.uid}:${got.gid}, the TOC ${want.uid}:${want.gid}`;
  return undefined;
}

/** Hashes a file's bytes chunk by chunk; reports (never throws: it runs inside the tar parser) a chunk that differs. */
function chunkSink(chunks: readonly EstargzChunk[], fail: (why: string) => void): (data: Buffer) => void {
  let i = 0;
  let at = 0;
  let hash: Hash | undefined;
  return (data) => {
    let off = 0;
    while (off < data.length) {
      const chunk = chunks[i];
      if (!chunk) return fail(`the tar has more bytes than its chunks cover (${at}+)`);
      hash ??= createHash(digestAlgorithm(chunk.chunkDigest));
      const take = Math.min(data.length - off, chunk.offset + chunk.size - at);
      hash.update(data.subarray(off, off + take));
      off += take;
      at += take;
      if (at === chunk.offset + chunk.size) {
        const got = `${digestAlgorithm(chunk.chunkDigest)}:${hash.digest('hex')}`;
        hash = undefined;
        if (got !== chunk.chunkDigest) return fail(`chunk ${i} (file bytes ${chunk.offset}–${at}) is ${got} in the tar, ${chunk.chunkDigest} in the TOC`);
        i++;
      }
    }
  };
}

import { createHash, type Hash } from 'node:crypto';
import { digestAlgorithm } from '../oci/digest.js';
import type { EstargzChunk, IndexEntry } from './types.js';

/**
 * Comparing a layer's TOC (eStargz, zstd:chunked) with the tar stream it
 * stands for, entry by entry, as a blob is promoted: one image digest must
 * never show two contents. The walk over the tar is each format's own; what
 * "agrees" means is shared here.
 */

/** What differs between the TOC's entry and the tar's, or undefined. */
export function entryDifference(want: IndexEntry, got: IndexEntry): string | undefined {
  if (want.path !== got.path) return `the tar has ${JSON.stringify(got.path)} there`;
  if (want.type !== got.type) return `the tar has a ${got.type}, the TOC a ${want.type}`;
  if (want.type === 'file' && got.sparse) return 'the tar has a sparse file';
  if (want.type === 'file' && want.size !== got.size) return `the tar has ${got.size} bytes, the TOC ${want.size}`;
  if ((want.linkname ?? '') !== (got.linkname ?? '')) return `the tar links to ${JSON.stringify(got.linkname)}, the TOC to ${JSON.stringify(want.linkname)}`;
  if (want.mode !== got.mode) return `the tar has mode ${got.mode.toString(8)}, the TOC ${want.mode.toString(8)}`;
  if (want.uid !== got.uid || want.gid !== got.gid) return `the tar has owner ${got.uid}:${got.gid}, the TOC ${want.uid}:${want.gid}`;
  return undefined;
}

/**
 * A sink for a file's bytes (in tar order) that hashes them chunk by chunk
 * and reports — never throws: it runs inside the tar parser — a chunk whose
 * digest differs from the TOC's, or bytes past the last chunk.
 */
export function chunkChecker(chunks: readonly Pick<EstargzChunk, 'offset' | 'size' | 'chunkDigest'>[], fail: (why: string) => void): (data: Buffer) => void {
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
        if (got !== chunk.chunkDigest) return fail(`chunk ${i} (file bytes ${chunk.offset}-${at}) is ${got} in the tar, ${chunk.chunkDigest} in the TOC`);
        i++;
      }
    }
  };
}

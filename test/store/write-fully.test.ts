import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { FileHandle } from 'node:fs/promises';
import { writeFully, writevFully } from '../../src/store/write-fully.js';

/** A file that takes at most `step` bytes per call and has room for `room` bytes in all (then ENOSPC), as write(2) on a nearly full disk. */
function shortWriter(room: number, step: number): { file: FileHandle; bytes: Buffer } {
  const bytes = Buffer.alloc(64);
  let used = 0;
  const take = (data: Uint8Array, offset: number, length: number, position: number): number => {
    if (used >= room) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    const n = Math.min(length, step, room - used);
    bytes.set(data.subarray(offset, offset + n), position);
    used += n;
    return n;
  };
  const file = {
    write: async (data: Uint8Array, offset: number, length: number, position: number) => ({ bytesWritten: take(data, offset, length, position), buffer: data }),
    writev: async (buffers: Buffer[], position: number) => {
      // One short write over the concatenation, as writev(2) does.
      const all = Buffer.concat(buffers);
      return { bytesWritten: take(all, 0, all.length, position), buffers };
    },
  } as unknown as FileHandle;
  return { file, bytes };
}

test('writeFully and writevFully finish what a short write left, and fail with ENOSPC instead of leaving a hole', async () => {
  const data = Buffer.from('0123456789abcdefghij');
  const a = shortWriter(64, 3);
  await writeFully(a.file, data, 2, 10, 5);
  assert.equal(a.bytes.subarray(5, 15).toString(), '23456789ab');

  const b = shortWriter(64, 7);
  await writevFully(b.file, [data.subarray(0, 4), data.subarray(4, 9), data.subarray(9)], 1);
  assert.equal(b.bytes.subarray(1, 21).toString(), data.toString());

  const full = shortWriter(8, 5);
  await assert.rejects(writeFully(full.file, data, 0, 20, 0), { code: 'ENOSPC' });
  await assert.rejects(writevFully(shortWriter(8, 5).file, [data], 0), { code: 'ENOSPC' });
});

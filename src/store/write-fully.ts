import type { FileHandle } from 'node:fs/promises';

/**
 * write(2) and writev(2) on a nearly full disk write part of what they were
 * given and return the count; only the next call fails with ENOSPC. Node's
 * FileHandle.write/writev pass that count on without looping, so a caller
 * that ignores it leaves a hole where it believes its bytes are: a blob that
 * was hashed while streaming but is not what the file holds, a range marked
 * present that serves zeros. These write everything or throw.
 */
export async function writeFully(file: FileHandle, bytes: Uint8Array, offset: number, length: number, position: number): Promise<void> {
  for (let done = 0; done < length; ) {
    const { bytesWritten } = await file.write(bytes, offset + done, length - done, position + done);
    if (bytesWritten <= 0) throw noRoom(position + done);
    done += bytesWritten;
  }
}

export async function writevFully(file: FileHandle, buffers: Buffer[], position: number): Promise<void> {
  const total = buffers.reduce((n, b) => n + b.length, 0);
  const { bytesWritten } = await file.writev(buffers, position);
  if (bytesWritten === total) return;
  if (bytesWritten <= 0) throw noRoom(position);
  // A short writev: the rest, buffer by buffer.
  let skip = bytesWritten;
  let at = position + bytesWritten;
  for (const b of buffers) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    await writeFully(file, b, skip, b.length - skip, at);
    at += b.length - skip;
    skip = 0;
  }
}

function noRoom(position: number): Error {
  return Object.assign(new Error(`ENOSPC: no space left on device (nothing written at byte ${position})`), { code: 'ENOSPC' });
}

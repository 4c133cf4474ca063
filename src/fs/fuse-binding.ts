import { constants } from 'node:os';
import Fuse from 'fuse-native';
import type { FuseOperations, FuseOptions, FuseSignal } from 'fuse-native';

const { ERANGE, ENODATA } = constants.errno;

// fuse-native copies the -o string into a 1024-byte buffer and silently cuts it there.
const maxOptionsLength = 1023;

/**
 * fuse-native's Fuse with what it lacks for an exact filesystem:
 * - mount options it has no switch for (`use_ino`, `ro`, `negative_timeout`…),
 *   appended to the `-o` string it builds;
 * - getxattr/listxattr with the kernel's size rules: a zero-size buffer asks
 *   for the size, a too-small one gets ERANGE. fuse-native copies into the
 *   buffer without looking at its size (and pads listxattr's size by 128),
 *   which libfuse then replies with past the end of the buffer.
 * Both overrides use fuse-native internals: its version is pinned.
 */
export class FuseBinding extends Fuse {
  private readonly extraOptions: readonly string[];

  constructor(mountpoint: string, ops: FuseOperations, options: FuseOptions, extraOptions: readonly string[]) {
    super(mountpoint, ops, options);
    this.extraOptions = extraOptions;
  }

  /** The `-o` argument as fuse-native passes it to libfuse. */
  mountOptions(): string {
    return this._fuseOptions();
  }

  protected override _fuseOptions(): string {
    const base = super._fuseOptions(); // '' or '-oa,b'
    const all = [base.slice(2), ...this.extraOptions].filter((o) => o !== '').join(',');
    if (all.length + 2 > maxOptionsLength) throw new Error(`FUSE options are ${all.length + 2} bytes, over fuse-native's ${maxOptionsLength}`);
    return all === '' ? '' : `-o${all}`;
  }

  protected override _op_getxattr(signal: FuseSignal, path: string, name: string, valueBuf: Buffer, position: number): void {
    this.ops.getxattr!(path, name, position, (err, value) => {
      if (err < 0) return signal(err, valueBuf.buffer);
      if (!value) return signal(-ENODATA, valueBuf.buffer);
      if (valueBuf.length === 0) return signal(value.length, valueBuf.buffer);
      if (value.length > valueBuf.length) return signal(-ERANGE, valueBuf.buffer);
      value.copy(valueBuf);
      return signal(value.length, valueBuf.buffer);
    });
  }

  protected override _op_listxattr(signal: FuseSignal, path: string, listBuf: Buffer): void {
    this.ops.listxattr!(path, (err, names) => {
      if (err < 0) return signal(err, listBuf.buffer);
      let size = 0;
      for (const name of names ?? []) size += Buffer.byteLength(name) + 1;
      if (listBuf.length === 0) return signal(size, listBuf.buffer);
      if (size > listBuf.length) return signal(-ERANGE, listBuf.buffer);
      let at = 0;
      for (const name of names ?? []) {
        at += listBuf.write(name, at);
        listBuf[at++] = 0;
      }
      return signal(size, listBuf.buffer);
    });
  }
}

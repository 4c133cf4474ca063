import type { FsNode, FsTree } from '../fs/tree.js';
import type { ImageConfig } from '../oci/types.js';

/**
 * What a container's start reads, guessed from the image when no access
 * profile is recorded (design.md, "Starting fast"): the program it runs (the
 * image's Entrypoint and Cmd, or the caller's command), that program's ELF
 * interpreter and shared libraries, theirs in turn, a script's `#!`
 * interpreter, the dynamic linker's cache, and /etc/passwd and /etc/group
 * (containerd and `run` read both to build the user). A lazy mount reads them
 * once it serves, all at once, instead of one round trip after another as
 * the loader asks: the same bytes the start would fetch, only sooner (a big
 * file only where its headers are). Like a profile it is only a hint: every
 * byte is verified as a read's, and a program that is not there, or a file
 * that does not parse as ELF, is passed over.
 */
export interface StartupGuess {
  /** Paths of the files read (resolved: symlinks followed), in the order they were asked for. */
  files: string[];
  /** Bytes asked for: small files whole, the header pieces of big ones. */
  bytes: number;
}

export interface StartupReader {
  read(node: FsNode, position: number, length: number): Promise<Buffer>;
}

export interface StartupLimits {
  /**
   * A file up to this size is read whole (a loader maps most of a library);
   * a bigger one only where its headers are, the rest left to the reads that
   * need it (in a gzip layer, a whole 7 MB python3 brings spans nobody reads).
   */
  wholeFileBytes: number;
  /** Files and bytes read in all. */
  maxFiles: number;
  maxBytes: number;
}

const defaultLimits: StartupLimits = { wholeFileBytes: 2 << 20, maxFiles: 64, maxBytes: 32 << 20 };

const defaultPath = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Read by every container start that builds a user from the image (containerd, runc bundles). */
const alwaysRead = ['etc/passwd', 'etc/group'];

/**
 * The program whose start a mount reads ahead, found through the image's
 * PATH: the one the container runs, which is the image's Entrypoint, else
 * `command`, else (an empty command) the image's Cmd.
 */
export function startupProgram(config: ImageConfig, command: readonly string[]): { program: string; path: string } | undefined {
  const path = config.config?.Env?.find((e) => e.startsWith('PATH='))?.slice(5) || defaultPath;
  const program = [...(config.config?.Entrypoint ?? []), ...(command.length ? command : (config.config?.Cmd ?? []))][0];
  return program ? { program, path } : undefined;
}

/**
 * Reads ahead what programs of a mount load, through its reader: a program
 * named up front (`program`), and every ELF file the mount is asked for from
 * its start (`firstRead`: an exec, a library the loader opens), whose
 * interpreter and libraries are then read at once instead of one after
 * another as the loader asks. Each file is read once, within `limits`; what
 * fails is left for the workload's own reads to meet.
 */
export class StartupFiles {
  readonly guess: StartupGuess = { files: [], bytes: 0 };
  private readonly limits: StartupLimits;
  private readonly seen = new Set<string>();
  private readonly pending: Array<Promise<void>> = [];
  private unsettled = 0;
  private linkerCache = false;

  constructor(
    private readonly tree: FsTree,
    private readonly reader: StartupReader,
    private readonly signal?: AbortSignal,
    limits: Partial<StartupLimits> = {},
  ) {
    this.limits = { ...defaultLimits, ...limits };
  }

  /** No more files will be read ahead. */
  get full(): boolean {
    return this.guess.files.length >= this.limits.maxFiles || this.guess.bytes >= this.limits.maxBytes || !!this.signal?.aborted;
  }

  /** `program` (found through `path` when it has no slash), what it loads, and the files every container start reads. */
  program(program: string, path: string): void {
    for (const file of alwaysRead) this.visit(resolvePath(this.tree, file), false);
    this.visit(program.includes('/') ? resolvePath(this.tree, program) : findIn(this.tree, path.split(':'), program), true);
  }

  /** A read from `node`'s start returned `bytes`: an ELF file's interpreter and libraries are read now. */
  firstRead(node: FsNode, bytes: Buffer): void {
    const path = node.entry.sourcePath ?? node.entry.path;
    if (this.full || this.seen.has(path) || bytes.length < 4 || bytes.readUInt32BE(0) !== 0x7f454c46) return;
    this.seen.add(path);
    this.track(this.follow(path, node, bytes));
  }

  /** Reads begun and not settled yet. */
  get reading(): boolean {
    return this.unsettled > 0;
  }

  /** What fails is left for the workload's own reads to meet. */
  private track(work: Promise<void>): void {
    this.unsettled++;
    this.pending.push(work.catch(() => undefined).finally(() => this.unsettled--));
  }

  /** Resolves when every read begun so far, and those they began, have settled. */
  async settled(): Promise<StartupGuess> {
    for (let done = 0; done < this.pending.length; ) {
      const now = this.pending.length;
      await Promise.all(this.pending.slice(done, now));
      done = now;
    }
    return this.guess;
  }

  private visit(found: Resolved | undefined, parse: boolean): void {
    if (!found || found.node.type !== 'file' || this.seen.has(found.path) || this.full) return;
    this.seen.add(found.path);
    const { node, path } = found;
    const length = node.size <= this.limits.wholeFileBytes ? node.size : Math.min(node.size, headerBytes);
    this.guess.files.push(path);
    this.guess.bytes += length;
    if (length === 0) return;
    this.track(this.reader.read(node, 0, length).then((bytes) => (parse ? this.follow(path, node, bytes) : undefined)));
  }

  /**
   * What a file says it loads: a script's interpreter, an ELF file's
   * interpreter and libraries. Headers past `first` (a big binary's dynamic
   * section and strings) are read where they are, a few steps at most.
   */
  private async follow(filePath: string, node: FsNode, first: Buffer): Promise<void> {
    if (first[0] === 0x23 && first[1] === 0x21) {
      const interpreter = shebangInterpreter(first);
      if (interpreter) this.visit(resolvePath(this.tree, interpreter), true);
      return;
    }
    const bytes = new ElfBytes(first);
    let elf = parseElf(bytes);
    for (let step = 0; elf?.need && step < maxHeaderSteps; step++) {
      const { offset, length } = elf.need;
      if (offset >= node.size || length > maxHeaderStep || this.full) return;
      const wanted = Math.min(node.size - offset, Math.max(length, 4096));
      this.guess.bytes += wanted;
      bytes.add(offset, await this.reader.read(node, offset, wanted));
      elf = parseElf(bytes);
    }
    if (!elf || elf.need) return;
    if (elf.interpreter) {
      this.visit(resolvePath(this.tree, elf.interpreter), true);
      if (!this.linkerCache) {
        this.linkerCache = true;
        this.visit(resolvePath(this.tree, 'etc/ld.so.cache'), false);
      }
    }
    const dir = filePath.slice(0, filePath.lastIndexOf('/') + 1);
    const searched = [...elf.runPath.map((d) => d.replace(/\$\{?ORIGIN\}?/g, `/${dir}`)), ...libraryDirs(elf)];
    for (const name of elf.needed) this.visit(name.includes('/') ? resolvePath(this.tree, name) : findIn(this.tree, searched, name), true);
  }
}

/** Headers past the first read: at most this many more reads of a file, each at most this long (a hostile file asks for more). */
const maxHeaderSteps = 4;
const maxHeaderStep = 1 << 20;

/** Enough of an ELF file to find its program headers, interpreter and dynamic section in most binaries. */
const headerBytes = 64 << 10;

interface Resolved {
  node: FsNode;
  /** The path with every symlink followed (no leading slash). */
  path: string;
}

/** The node `path` names in the tree, symlinks followed as the kernel would inside the container's root. */
export function resolvePath(tree: FsTree, path: string): Resolved | undefined {
  const todo = path.split('/').reverse();
  const at: string[] = [];
  let node = tree.root;
  let links = 0;
  while (todo.length) {
    const name = todo.pop()!;
    if (name === '' || name === '.') continue;
    if (name === '..') {
      at.pop();
      node = tree.lookup(at.join('/')) ?? tree.root;
      continue;
    }
    const child = node.children?.get(name);
    if (!child) return undefined;
    if (child.type === 'symlink') {
      // Linux's own bound on links followed in one lookup.
      if (++links > 40) return undefined;
      const target = child.target ?? '';
      if (target.startsWith('/')) {
        at.length = 0;
        node = tree.root;
      }
      todo.push(...target.split('/').reverse());
      continue;
    }
    at.push(name);
    node = child;
  }
  return { node, path: at.join('/') };
}

function findIn(tree: FsTree, dirs: readonly string[], name: string): Resolved | undefined {
  for (const dir of dirs) {
    if (!dir) continue;
    const found = resolvePath(tree, `${dir}/${name}`);
    if (found?.node.type === 'file') return found;
  }
  return undefined;
}

/** `#!/bin/sh -e` → `/bin/sh`. */
function shebangInterpreter(bytes: Buffer): string | undefined {
  const end = bytes.indexOf(0x0a);
  const line = bytes.subarray(2, end < 0 ? Math.min(bytes.length, 256) : end).toString('latin1').trim();
  const interpreter = line.split(/[ \t]/)[0];
  return interpreter?.startsWith('/') ? interpreter : undefined;
}

export interface ElfInfo {
  /** PT_INTERP: the dynamic loader's path. */
  interpreter?: string;
  /** DT_NEEDED: the libraries' names. */
  needed: string[];
  /** DT_RUNPATH (else DT_RPATH) directories, `$ORIGIN` unexpanded. */
  runPath: string[];
  bits: 32 | 64;
  machine: number;
  /** The headers go on past the bytes given: these are needed next (file offset and length). */
  need?: { offset: number; length: number };
}

/** Pieces of a file by offset: what has been read of its headers. */
export class ElfBytes {
  private readonly pieces: Array<{ start: number; bytes: Buffer }> = [];

  constructor(first: Buffer) {
    this.pieces.push({ start: 0, bytes: first });
  }

  add(start: number, bytes: Buffer): void {
    this.pieces.push({ start, bytes });
  }

  /** Bytes [offset, offset + length), or NeedBytes when no piece holds them. */
  at(offset: number, length: number): Buffer {
    for (const { start, bytes } of this.pieces) {
      if (offset >= start && offset + length <= start + bytes.length) return bytes.subarray(offset - start, offset - start + length);
    }
    throw new NeedBytes(offset, length);
  }

  /** The NUL-terminated string at `offset` (latin1). */
  cString(offset: number): string {
    for (const { start, bytes } of this.pieces) {
      if (offset < start || offset >= start + bytes.length) continue;
      const end = bytes.indexOf(0, offset - start);
      if (end >= 0) return bytes.toString('latin1', offset - start, end);
    }
    throw new NeedBytes(offset, 4096);
  }
}

class NeedBytes {
  constructor(
    readonly offset: number,
    readonly length: number,
  ) {}
}

/**
 * The ELF headers a loader follows: PT_INTERP and the dynamic section's
 * DT_NEEDED and DT_RUNPATH strings, from what has been read of the file
 * (`need` says what to read next). Written here because it is sixty lines
 * of offsets and no maintained npm package reads just this; anything that
 * is not ELF or does not add up gives undefined (a hostile image costs
 * nothing but the guess).
 */
export function parseElf(source: Buffer | ElfBytes): ElfInfo | undefined {
  const bytes = source instanceof ElfBytes ? source : new ElfBytes(source);
  let info: ElfInfo | undefined;
  try {
    const ident = bytes.at(0, 20);
    if (ident.readUInt32BE(0) !== 0x7f454c46) return undefined;
    const bits = ident[4] === 2 ? 64 : ident[4] === 1 ? 32 : 0;
    const little = ident[5] === 1;
    if (!bits || (!little && ident[5] !== 2)) return undefined;
    const u16 = (o: number) => (little ? bytes.at(o, 2).readUInt16LE(0) : bytes.at(o, 2).readUInt16BE(0));
    const u32 = (o: number) => (little ? bytes.at(o, 4).readUInt32LE(0) : bytes.at(o, 4).readUInt32BE(0));
    const word = (o: number) => (bits === 64 ? Number(little ? bytes.at(o, 8).readBigUInt64LE(0) : bytes.at(o, 8).readBigUInt64BE(0)) : u32(o));
    info = { needed: [], runPath: [], bits, machine: u16(18) };
    const phoff = word(bits === 64 ? 32 : 28);
    const phentsize = u16(bits === 64 ? 54 : 42);
    const phnum = u16(bits === 64 ? 56 : 44);
    if (phentsize < (bits === 64 ? 56 : 32)) return undefined;
    bytes.at(phoff, phnum * phentsize); // all program headers, in one piece
    const segments: Array<{ type: number; offset: number; vaddr: number; filesz: number }> = [];
    for (let i = 0; i < phnum; i++) {
      const at = phoff + i * phentsize;
      segments.push(
        bits === 64
          ? { type: u32(at), offset: word(at + 8), vaddr: word(at + 16), filesz: word(at + 32) }
          : { type: u32(at), offset: u32(at + 4), vaddr: u32(at + 8), filesz: u32(at + 16) },
      );
    }
    const interp = segments.find((s) => s.type === 3);
    if (interp) info.interpreter = bytes.cString(interp.offset);
    const dynamic = segments.find((s) => s.type === 2);
    if (!dynamic) return info;
    bytes.at(dynamic.offset, dynamic.filesz); // the whole dynamic section, in one piece
    const entrySize = bits === 64 ? 16 : 8;
    const tags: Array<[number, number]> = [];
    for (let at = dynamic.offset; at + entrySize <= dynamic.offset + dynamic.filesz; at += entrySize) {
      const tag = word(at);
      if (tag === 0) break;
      tags.push([tag, word(at + entrySize / 2)]);
    }
    const strtabAddr = tags.find(([t]) => t === 5)?.[1];
    const load = strtabAddr === undefined ? undefined : segments.find((s) => s.type === 1 && s.vaddr <= strtabAddr && strtabAddr < s.vaddr + s.filesz);
    if (strtabAddr === undefined || !load) return info;
    const strtab = load.offset + (strtabAddr - load.vaddr);
    const strsz = tags.find(([t]) => t === 10)?.[1] ?? 0;
    if (strsz > 0) bytes.at(strtab, strsz); // the string table, in one piece
    const needed: string[] = [];
    for (const [tag, value] of tags) if (tag === 1) needed.push(bytes.cString(strtab + value));
    info.needed = needed;
    const runPath = tags.find(([t]) => t === 29) ?? tags.find(([t]) => t === 15);
    if (runPath) info.runPath = bytes.cString(strtab + runPath[1]).split(':').filter(Boolean);
    return info;
  } catch (err) {
    if (err instanceof NeedBytes && info) return { ...info, need: { offset: err.offset, length: err.length } };
    return undefined; // not ELF, or offsets that do not add up
  }
}

/** Debian's multiarch triplets by ELF machine: where its libraries are, before the classic directories. */
const multiarch: Record<number, string> = {
  3: 'i386-linux-gnu',
  8: 'mips-linux-gnu',
  20: 'powerpc-linux-gnu',
  21: 'powerpc64le-linux-gnu',
  22: 's390x-linux-gnu',
  40: 'arm-linux-gnueabihf',
  62: 'x86_64-linux-gnu',
  183: 'aarch64-linux-gnu',
  243: 'riscv64-linux-gnu',
};

function libraryDirs(elf: ElfInfo): string[] {
  const triplet = multiarch[elf.machine];
  const classic = elf.bits === 64 ? ['/lib64', '/usr/lib64', '/lib', '/usr/lib'] : ['/lib', '/usr/lib', '/lib32', '/usr/lib32'];
  return [...(triplet ? [`/lib/${triplet}`, `/usr/lib/${triplet}`] : []), ...classic, '/usr/local/lib'];
}

import type { FsNode, FsTree } from '../fs/tree.js';
import type { ImageConfig } from '../oci/types.js';

/**
 * What a container's start reads, guessed from the image when no access
 * profile is recorded (design.md, "Starting fast"): the program it runs (the
 * image's Entrypoint and Cmd, or the caller's command), that program's ELF
 * interpreter and shared libraries, theirs in turn, a script's `#!`
 * interpreter, the dynamic linker's cache, and /etc/passwd and /etc/group
 * (containerd and `run` read both to build the user). A lazy mount reads them
 * whole as soon as its tree is known, all at once, instead of one round trip
 * after another as the loader asks: they are the same bytes the start would
 * fetch, only sooner. Like a profile it is only a hint: every byte is verified
 * as a read's, and a program that is not there, or a file that does not parse
 * as ELF, is passed over.
 */
export interface StartupGuess {
  /** Paths of the files read (resolved: symlinks followed), in the order they were asked for. */
  files: string[];
  /** Bytes of those files. */
  bytes: number;
}

export interface StartupReader {
  read(node: FsNode, position: number, length: number): Promise<Buffer>;
}

export interface StartupLimits {
  /** A file bigger than this is read for its headers only. */
  maxFileBytes: number;
  /** Files and bytes read in all. */
  maxFiles: number;
  maxBytes: number;
}

/** A whole file read comes back as one buffer, dropped once its headers are parsed: these bound that memory too. */
const defaultLimits: StartupLimits = { maxFileBytes: 16 << 20, maxFiles: 64, maxBytes: 48 << 20 };

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
    if (this.follow(path, bytes) || node.size > this.limits.maxFileBytes) return;
    // The headers end past what was read (a big binary's dynamic section): read the whole file.
    this.track(this.reader.read(node, 0, node.size).then((all) => void this.follow(path, all), () => undefined));
  }

  /** Reads begun and not settled yet. */
  get reading(): boolean {
    return this.unsettled > 0;
  }

  private track(read: Promise<void>): void {
    this.unsettled++;
    this.pending.push(read.finally(() => this.unsettled--));
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
    const size = found.node.size;
    const whole = size <= this.limits.maxFileBytes && this.guess.bytes + size <= this.limits.maxBytes;
    this.guess.files.push(found.path);
    this.guess.bytes += whole ? size : Math.min(size, headerBytes);
    if (size === 0) return;
    // The headers first, beside the whole file: what it loads is asked for as soon as they are in.
    const head = this.reader.read(found.node, 0, Math.min(size, headerBytes));
    const all = whole && size > headerBytes ? this.reader.read(found.node, 0, size) : undefined;
    all?.catch(() => undefined);
    this.track(
      head
        .then(async (bytes) => {
          if (parse && !this.follow(found.path, bytes) && all) this.follow(found.path, await all);
        })
        .catch(() => undefined),
    );
    if (all) this.track(all.then(() => undefined, () => undefined));
  }

  /** What a file's bytes say it loads: a script's interpreter, an ELF file's interpreter and libraries. False: the bytes end before the headers do. */
  private follow(filePath: string, bytes: Buffer): boolean {
    if (bytes[0] === 0x23 && bytes[1] === 0x21) {
      const interpreter = shebangInterpreter(bytes);
      if (interpreter) this.visit(resolvePath(this.tree, interpreter), true);
      return true;
    }
    const elf = parseElf(bytes);
    if (!elf) return true;
    if (elf.truncated) return false;
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
    return true;
  }
}

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
  /** The bytes given end before the program headers, the dynamic section or its strings do: read more. */
  truncated: boolean;
}

/**
 * The ELF headers a loader follows: PT_INTERP and the dynamic section's
 * DT_NEEDED and DT_RUNPATH strings. Written here because it is fifty lines
 * of offsets and no maintained npm package reads just this; anything out of
 * bounds or not ELF gives undefined (a hostile image costs nothing but the
 * guess).
 */
export function parseElf(bytes: Buffer): ElfInfo | undefined {
  try {
    if (bytes.length < 52 || bytes.readUInt32BE(0) !== 0x7f454c46) return undefined;
    const bits = bytes[4] === 2 ? 64 : bytes[4] === 1 ? 32 : 0;
    const little = bytes[5] === 1;
    if (!bits || (!little && bytes[5] !== 2)) return undefined;
    const u16 = (o: number) => (little ? bytes.readUInt16LE(o) : bytes.readUInt16BE(o));
    const u32 = (o: number) => (little ? bytes.readUInt32LE(o) : bytes.readUInt32BE(o));
    const word = (o: number) => (bits === 64 ? Number(little ? bytes.readBigUInt64LE(o) : bytes.readBigUInt64BE(o)) : u32(o));
    const machine = u16(18);
    const phoff = word(bits === 64 ? 32 : 28);
    const phentsize = u16(bits === 64 ? 54 : 42);
    const phnum = u16(bits === 64 ? 56 : 44);
    const info: ElfInfo = { needed: [], runPath: [], bits, machine, truncated: false };
    const short = (): ElfInfo => ({ ...info, truncated: true });
    const segments: Array<{ type: number; offset: number; vaddr: number; filesz: number }> = [];
    for (let i = 0; i < phnum; i++) {
      const at = phoff + i * phentsize;
      if (at + (bits === 64 ? 56 : 32) > bytes.length) return short();
      segments.push(
        bits === 64
          ? { type: u32(at), offset: word(at + 8), vaddr: word(at + 16), filesz: word(at + 32) }
          : { type: u32(at), offset: u32(at + 4), vaddr: u32(at + 8), filesz: u32(at + 16) },
      );
    }
    const cString = (offset: number) => {
      if (offset < 0 || offset >= bytes.length) return undefined;
      const end = bytes.indexOf(0, offset);
      return end < 0 ? undefined : bytes.toString('latin1', offset, end);
    };
    const interp = segments.find((s) => s.type === 3);
    if (interp) {
      if (interp.offset + interp.filesz > bytes.length) return short();
      const name = cString(interp.offset);
      if (name) info.interpreter = name;
    }
    const dynamic = segments.find((s) => s.type === 2);
    if (!dynamic) return info;
    if (dynamic.offset + dynamic.filesz > bytes.length) return short();
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
    if (strtab + strsz > bytes.length) return short();
    const runPath = tags.find(([t]) => t === 29) ?? tags.find(([t]) => t === 15);
    for (const [tag, value] of tags) {
      if (tag !== 1) continue;
      const name = cString(strtab + value);
      if (name) info.needed.push(name);
    }
    if (runPath) info.runPath = (cString(strtab + runPath[1]) ?? '').split(':').filter(Boolean);
    return info;
  } catch {
    return undefined; // offsets past the bytes read: not a file we can follow
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

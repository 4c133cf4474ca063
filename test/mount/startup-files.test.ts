import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { lstatSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { buildTree, type FsNode, type FsTree, type TreeEntry } from '../../src/fs/tree.js';
import { mountImageLazily, type LazyMount } from '../../src/mount/lazy-mount.js';
import { ElfBytes, parseElf, resolvePath, StartupFiles, startupProgram } from '../../src/mount/startup-files.js';
import type { ImageConfig } from '../../src/oci/types.js';
import { Store } from '../../src/store/store.js';
import { buildEstargzImage } from '../helpers/estargz.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { missingRequirements } from '../helpers/requirements.js';
import { dir, file, symlink, type TarEntry } from '../helpers/tar-builder.js';

/**
 * The start of a program read ahead (startup-files.ts), on this machine's own
 * Debian binaries: what glibc's `ldd` says a program loads is what is read.
 */

/** The paths `ldd` prints for what `program` loads (the loader included), as it names them. */
function lddPaths(program: string): string[] {
  const out = execFileSync('ldd', [program], { encoding: 'utf8' });
  return out
    .split('\n')
    .map((l) => /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(l)?.[1])
    .filter((p): p is string => p !== undefined);
}

/** What `ldd` says `program` loads: each file's path inside the root, symlinks resolved as on the host. */
const lddLibraries = (program: string): string[] => lddPaths(program).map((p) => realpathSync(p).slice(1));

/** A merged-/usr Debian root as the host has it: /bin, /lib and /lib64 are symlinks into /usr. */
const hostFiles = ['/usr/bin/true', '/usr/bin/dash', '/usr/bin/python3', '/etc/ld.so.cache', ...lddLibraries('/usr/bin/python3').map((p) => `/${p}`), ...lddLibraries('/usr/bin/true').map((p) => `/${p}`)];

function hostTreeEntries(): { entries: TreeEntry[]; bytes: Map<string, Buffer> } {
  const bytes = new Map<string, Buffer>();
  const entries: TreeEntry[] = [];
  const base = { mode: 0o755, uid: 0, gid: 0, mtime: 0, layer: 0 };
  const add = (path: string, data: Buffer) => {
    bytes.set(path, data);
    entries.push({ ...base, path, type: 'file', size: data.length });
  };
  for (const f of new Set(hostFiles)) add(realpathSync(f).slice(1), readFileSync(f));
  add('etc/passwd', Buffer.from('root:x:0:0:root:/root:/bin/sh\n'));
  add('etc/group', Buffer.from('root:x:0:\n'));
  add('usr/local/bin/entry', Buffer.from('#!/bin/sh -e\nexec true\n'));
  const link = (path: string, target: string) => entries.push({ ...base, path, type: 'symlink', size: 0, linkname: target });
  link('bin', 'usr/bin');
  link('lib', 'usr/lib');
  link('lib64', 'usr/lib64');
  link('usr/bin/sh', 'dash');
  link('usr/bin/python3', realpathSync('/usr/bin/python3').split('/').pop()!);
  link('usr/lib64/ld-linux-x86-64.so.2', `/${realpathSync('/lib64/ld-linux-x86-64.so.2').slice(1)}`);
  // The libraries' sonames, symlinks to the versioned files as Debian ships them (libz.so.1 -> libz.so.1.2.13).
  for (const p of new Set([...lddPaths('/usr/bin/python3'), ...lddPaths('/usr/bin/true'), ...lddPaths('/usr/bin/dash')])) {
    const at = `${realpathSync(dirname(p)).slice(1)}/${basename(p)}`;
    if (lstatSync(p).isSymbolicLink() && !entries.some((e) => e.path === at)) link(at, readlinkSync(p));
  }
  link('loop/a', 'b');
  link('loop/b', 'a');
  entries.sort((a, b) => a.path.localeCompare(b.path));
  return { entries, bytes };
}

/** A reader over the tree's bytes that logs what was asked. */
function memoryReader(bytes: Map<string, Buffer>) {
  const reads: Array<{ path: string; position: number; length: number }> = [];
  return {
    reads,
    read(node: FsNode, position: number, length: number): Promise<Buffer> {
      reads.push({ path: node.entry.path, position, length });
      const b = bytes.get(node.entry.path);
      return b ? Promise.resolve(b.subarray(position, position + length)) : Promise.reject(new Error(`no bytes for ${node.entry.path}`));
    },
  };
}

const x86 = process.arch === 'x64';

describe('the start of a program, read ahead from its ELF headers', { skip: x86 ? false : 'the host libraries are x86-64 Debian ones' }, () => {
  let tree: FsTree;
  let bytes: Map<string, Buffer>;
  before(() => {
    const built = hostTreeEntries();
    tree = buildTree(built.entries);
    bytes = built.bytes;
  });

  test('parseElf reads what ldd reports: the interpreter, the needed libraries', () => {
    const elf = parseElf(readFileSync('/usr/bin/python3'))!;
    assert.equal(elf.bits, 64);
    assert.equal(elf.machine, 62);
    assert.equal(elf.need, undefined);
    assert.equal(elf.interpreter, '/lib64/ld-linux-x86-64.so.2');
    const ldd = execFileSync('ldd', ['/usr/bin/python3'], { encoding: 'utf8' });
    const names = [...ldd.matchAll(/^\s*(\S+\.so[.\d]*) =>/gm)].map((m) => m[1]!);
    assert.deepEqual([...elf.needed].sort(), names.sort());
    assert.equal(parseElf(readFileSync('/bin/busybox'))?.interpreter, undefined, 'a static binary has no interpreter');
  });

  test('parseElf: too few bytes say so; garbage and hostile headers never throw', () => {
    const python = readFileSync('/usr/bin/python3');
    const need = parseElf(python.subarray(0, 4096))?.need;
    assert.ok(need && need.offset + need.length > 4096 && need.offset + need.length <= python.length, "python3's dynamic section lies past its first 4 KiB: where it is is asked for");
    // Given what it asks for, piece by piece, it gets to the same answer as from the whole file.
    const pieces = new ElfBytes(python.subarray(0, 4096));
    let elf = parseElf(pieces);
    for (let i = 0; elf?.need && i < 4; i++) {
      pieces.add(elf.need.offset, python.subarray(elf.need.offset, elf.need.offset + Math.max(elf.need.length, 4096)));
      elf = parseElf(pieces);
    }
    assert.deepEqual(elf, parseElf(python));
    assert.equal(parseElf(Buffer.from('#!/bin/sh\n')), undefined);
    assert.equal(parseElf(Buffer.alloc(0)), undefined);
    const hostile = Buffer.from(readFileSync('/usr/bin/true'));
    hostile.writeBigUInt64LE(0xffffffffffn, 32); // e_phoff far past the file
    assert.ok((parseElf(hostile)?.need?.offset ?? 0) > hostile.length, 'asks for bytes past the file (which the reader then refuses)');
    const badStrings = Buffer.from(readFileSync('/usr/bin/true'));
    for (let i = 64; i < badStrings.length - 8; i += 8) badStrings.writeUInt32LE(0xfffffff0, i); // every offset and size absurd
    assert.doesNotThrow(() => parseElf(badStrings));
  });

  test('resolvePath follows absolute, relative and directory symlinks as the kernel does, and gives up on loops', () => {
    const loader = resolvePath(tree, '/lib64/ld-linux-x86-64.so.2');
    assert.equal(loader?.path, realpathSync('/lib64/ld-linux-x86-64.so.2').slice(1));
    assert.equal(resolvePath(tree, 'bin/sh')?.path, 'usr/bin/dash');
    assert.equal(resolvePath(tree, 'usr/bin/../bin/./true')?.path, 'usr/bin/true');
    assert.equal(resolvePath(tree, 'loop/a'), undefined);
    assert.equal(resolvePath(tree, 'usr/bin/missing'), undefined);
  });

  test("a program's start: the program, its loader, the linker's cache, its libraries, /etc/passwd and /etc/group", async () => {
    const reader = memoryReader(bytes);
    const startup = new StartupFiles(tree, reader);
    startup.program('python3', '/usr/local/bin:/usr/bin:/bin');
    const guess = await startup.settled();
    const expected = ['etc/passwd', 'etc/group', realpathSync('/usr/bin/python3').slice(1), 'etc/ld.so.cache', ...lddLibraries('/usr/bin/python3')];
    assert.deepEqual([...guess.files].sort(), [...new Set(expected)].sort());
    // Each file up to 2 MiB whole, once; python3 (bigger) only where its headers are.
    const small = [...new Set(expected)].filter((p) => bytes.get(p)!.length <= 2 << 20);
    const whole = reader.reads.filter((r) => r.position === 0 && r.length === bytes.get(r.path)!.length).map((r) => r.path);
    assert.deepEqual(whole.sort(), small.sort());
    const pythonPath = realpathSync('/usr/bin/python3').slice(1);
    const ofPython = reader.reads.filter((r) => r.path === pythonPath);
    assert.ok(bytes.get(pythonPath)!.length > 2 << 20 && ofPython.length >= 2, `python3 read in ${ofPython.length} pieces`);
    assert.ok(ofPython.reduce((n, r) => n + r.length, 0) < 1 << 20, 'python3: its headers, not the whole file');
    assert.equal(guess.bytes, reader.reads.reduce((n, r) => n + r.length, 0));
  });

  test("a script's interpreter is followed; a missing program reads only the user files; limits hold", async () => {
    const script = new StartupFiles(tree, memoryReader(bytes));
    script.program('entry', '/usr/local/bin');
    const files = (await script.settled()).files;
    for (const want of ['usr/local/bin/entry', 'usr/bin/dash', ...lddLibraries('/usr/bin/dash')]) assert.ok(files.includes(want), `${want} in ${files.join(' ')}`);

    const missing = new StartupFiles(tree, memoryReader(bytes));
    missing.program('no-such-program', '/usr/bin');
    assert.deepEqual((await missing.settled()).files, ['etc/passwd', 'etc/group']);

    const few = new StartupFiles(tree, memoryReader(bytes), undefined, { maxFiles: 3 });
    few.program('python3', '/usr/bin');
    assert.equal((await few.settled()).files.length, 3);
  });

  test('an ELF file read from its start has its interpreter and libraries read at once; other files do not', async () => {
    const reader = memoryReader(bytes);
    const startup = new StartupFiles(tree, reader);
    const python = tree.lookup(realpathSync('/usr/bin/python3').slice(1))!;
    // The first 4 KiB, as an exec's first read brings: the dynamic section lies past it, and is read where it is.
    startup.firstRead(python, bytes.get(python.entry.path)!.subarray(0, 4096));
    startup.firstRead(tree.lookup('etc/passwd')!, bytes.get('etc/passwd')!);
    const files = (await startup.settled()).files;
    assert.deepEqual([...files].sort(), [...new Set(['etc/ld.so.cache', ...lddLibraries('/usr/bin/python3')])].sort());
    const ofPython = reader.reads.filter((r) => r.path === python.entry.path);
    assert.ok(ofPython.length > 0 && ofPython.every((r) => r.position > 0 && r.length < 1 << 20), "python3's headers read past its first 4 KiB, not the whole file");
  });

  test("startupProgram: the image's Entrypoint, else the command, else its Cmd, through its PATH", () => {
    const config = (c: Record<string, unknown>) => ({ config: c }) as unknown as ImageConfig;
    assert.deepEqual(startupProgram(config({ Cmd: ['python3'], Env: ['PATH=/opt/bin'] }), []), { program: 'python3', path: '/opt/bin' });
    assert.deepEqual(startupProgram(config({ Cmd: ['python3'] }), ['/bin/true'])?.program, '/bin/true');
    assert.deepEqual(startupProgram(config({ Entrypoint: ['/init'], Cmd: ['x'] }), ['y'])?.program, '/init');
    assert.equal(startupProgram(config({}), []), undefined);
  });
});

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry'] });
if (missing.length && process.env.CI) throw new Error(`CI: startup read-ahead tests need ${missing.join(', ')}`);

describe('a lazy mount reads the start of the container program ahead', { skip: !x86 ? 'x86-64 host binaries' : missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let registry: TestRegistry;
  const ref = () => `docker://${registry.host}/startup/app:v1`;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-startup-'));
    registry = await startRegistry();
    const { entries: treeEntries, bytes } = hostTreeEntries();
    const layer: TarEntry[] = [];
    for (const e of treeEntries) {
      if (e.path.startsWith('loop/')) continue;
      if (e.type === 'symlink') layer.push(symlink(e.path, e.linkname!));
      else layer.push(file(e.path, bytes.get(e.path)!, { mode: 0o755 }));
    }
    const dirs = new Set(treeEntries.filter((e) => !e.path.startsWith('loop/')).flatMap((e) => e.path.split('/').slice(0, -1).map((_, i, parts) => parts.slice(0, i + 1).join('/'))));
    const image = await buildEstargzImage([[...[...dirs].sort().map((d) => dir(d)), ...layer]], { config: { Cmd: ['python3'], Env: ['PATH=/usr/bin:/bin'] } });
    await registry.pushImage('startup/app', 'v1', image);
  });

  after(async () => {
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  /** Requests for layer bytes so far, once they have stopped changing. */
  async function settledRequests(mount: LazyMount): Promise<number> {
    const count = () => mount.stats().layers.reduce((n, l) => n + l.requests, 0);
    let last = -1;
    for (let i = 0; i < 100; i++) {
      await new Promise((r) => setTimeout(r, 100));
      const now = count();
      if (now === last && mount.stats().fs.inFlight === 0 && !mount.stats().startupReading) return now;
      last = now;
    }
    assert.fail('layer requests never settled');
  }

  async function withMount(name: string, options: { command?: string[] }, body: (mount: LazyMount, target: string) => Promise<void>): Promise<void> {
    const store = await Store.open(join(work, `store-${name}`));
    const target = join(work, `mnt-${name}`);
    await mkdir(target);
    try {
      // Background prefetch held off: every byte fetched here is the guess's or a read's.
      const mount = await mountImageLazily(store, ref(), target, { registry: { insecure: true }, prefetchDelayMs: 600_000, ...options });
      try {
        await body(mount, target);
      } finally {
        await mount.unmount();
      }
    } finally {
      store.close();
    }
  }

  test("with the command: the program and its libraries are fetched before anything asks; reading them then fetches nothing", async () => {
    await withMount('command', { command: [] }, async (mount, target) => {
      const before = await settledRequests(mount);
      const expected = new Set(['etc/passwd', 'etc/group', realpathSync('/usr/bin/python3').slice(1), 'etc/ld.so.cache', ...lddLibraries('/usr/bin/python3')]);
      assert.equal(mount.stats().startupFiles, expected.size, 'the image Cmd (python3): itself, its loader and libraries, the linker cache, the user files');
      assert.ok(before > 0 && mount.stats().bytesFetched > 0);
      const own = hostTreeEntries().bytes;
      // The files read whole (up to 2 MiB: all but python3 itself): reading them now fetches nothing more.
      for (const path of expected) if (own.get(path)!.length <= 2 << 20) assert.deepEqual(await readFile(join(target, path)), own.get(path), `${path} reads right`);
      assert.equal(await settledRequests(mount), before, 'every library the program loads was fetched ahead');
      const python = realpathSync('/usr/bin/python3').slice(1);
      assert.deepEqual(await readFile(join(target, python)), own.get(python));
    });
  });

  test('without a command nothing is guessed; an ELF file read from its start brings its libraries along', async () => {
    await withMount('exec', {}, async (mount, target) => {
      const atMount = await settledRequests(mount);
      assert.equal(mount.stats().startupFiles, 0, 'no file read ahead before one is read');
      const head = await readFile(join(target, 'usr/bin/true'));
      assert.deepEqual(head, readFileSync('/usr/bin/true'));
      const after = await settledRequests(mount);
      assert.ok(after > atMount);
      assert.equal(mount.stats().startupFiles, new Set(['etc/ld.so.cache', ...lddLibraries('/usr/bin/true')]).size);
      for (const lib of lddLibraries('/usr/bin/true')) assert.deepEqual(await readFile(join(target, lib)), readFileSync(`/${lib}`));
      assert.equal(await settledRequests(mount), after, "true's loader and libc were fetched when it was read");
    });
  });
});

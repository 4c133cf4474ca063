/**
 * eStargz for tests, from the real producer and from a small in-process writer.
 *
 * Real producer: Debian's `ctr-remote` (stargz-snapshotter) converting images
 * held by a private containerd, against a loopback registry:
 *
 *   const registry = await startRegistry();
 *   const containerd = await startContainerd();
 *   after(() => containerd.stop());
 *   await pushToRegistry(layoutDir, 'src:v1', registry.host);            // image-builder.ts
 *   const converted = await convertToEstargz(`${registry.host}/src:v1`, `${registry.host}/src:esgz`, containerd);
 *   converted.manifest.layers[0].annotations['containerd.io/snapshot/stargz/toc.digest']
 *
 * `startContainerd()` runs containerd with its own root, state, socket and a
 * minimal config (no CRI plugin, no snapshotters that need btrfs/zfs/devmapper),
 * all under a temp dir; `stop()` ends it by its PID and removes the dir.
 * `startContainerd({ proxySnapshotters: { stargz: SOCKET } })` also wires
 * remote snapshotters in as `[proxy_plugins.NAME]` (the benchmarks run
 * stargz-snapshotter's daemon that way).
 *
 * In-process writer: `buildEstargz(entries)` lays tar-builder entries out as
 * eStargz does (a gzip member per chunk, a JSON TOC, the footer), with knobs
 * for what real producers never write (legacy footer, hostile TOCs).
 *
 * Readers: `registryBlobReader` reads a blob with HTTP Range requests and
 * counts what it fetched; `memoryBlobReader` does the same over a Buffer.
 *
 * Needs: containerd and stargz-snapshotter (ctr-remote), as root.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync, gzipSync } from 'node:zlib';
import { request } from 'undici';
import { estargzFooter } from '../../src/index/estargz/footer.js';
import type { BlobRangeReader } from '../../src/index/types.js';
import type { ImageManifest } from '../../src/oci/types.js';
import { spawnProcess, type ManagedProcess } from './process.js';
import type { PushableImage } from './registry.js';
import { buildTar, file, type TarEntry } from './tar-builder.js';

const run = promisify(execFile);

// ---- containerd

export interface Containerd {
  /** The gRPC socket: `ctr-remote --address ADDRESS …`. */
  address: string;
  dir: string;
  pid: number;
  /** Milliseconds from spawn to the first answer of `ctr version`. */
  startupMs: number;
  /** containerd's own log so far. */
  log(): Promise<string>;
  /** Runs `ctr-remote --address ADDRESS ...args`; rejects with its stderr on failure. */
  ctr(args: string[]): Promise<string>;
  stop(): Promise<void>;
}

export interface ContainerdOptions {
  /** Snapshotters served by other daemons: name → their gRPC unix socket (`[proxy_plugins.NAME] type = "snapshot"`). */
  proxySnapshotters?: Record<string, string>;
  /**
   * Enables the CRI plugin (the kubelet's API, on the same socket), pulling with this snapshotter
   * and passing layer annotations to it (`disable_snapshot_annotations = false`), as Kubernetes
   * nodes with a lazy-pull snapshotter configure it; `plainHttp` registries are reached over HTTP.
   */
  cri?: { snapshotter: string; plainHttp?: string[] };
}

/** Starts a private containerd (about 50 ms on the dev machine). */
export async function startContainerd(options: ContainerdOptions = {}): Promise<Containerd> {
  const dir = await mkdtemp(join(tmpdir(), 'lazyroot-containerd-'));
  const address = join(dir, 'containerd.sock');
  const configPath = join(dir, 'config.toml');
  const logPath = join(dir, 'containerd.log');
  // Unix socket paths are limited to 108 bytes; tmpdir() is short on Linux.
  await writeFile(
    configPath,
    [
      'version = 2',
      `root = ${JSON.stringify(join(dir, 'root'))}`,
      `state = ${JSON.stringify(join(dir, 'state'))}`,
      'disabled_plugins = [',
      ...(options.cri ? [] : ['  "io.containerd.grpc.v1.cri",']),
      '  "io.containerd.snapshotter.v1.aufs",',
      '  "io.containerd.snapshotter.v1.btrfs",',
      '  "io.containerd.snapshotter.v1.devmapper",',
      '  "io.containerd.snapshotter.v1.zfs",',
      '  "io.containerd.internal.v1.tracing",',
      '  "io.containerd.tracing.processor.v1.otlp",',
      ']',
      '[grpc]',
      `  address = ${JSON.stringify(address)}`,
      '[ttrpc]',
      `  address = ${JSON.stringify(`${address}.ttrpc`)}`,
      '[debug]',
      `  address = ${JSON.stringify(join(dir, 'debug.sock'))}`,
      '[plugins]',
      '  [plugins."io.containerd.internal.v1.opt"]',
      `    path = ${JSON.stringify(join(dir, 'opt'))}`,
      ...(options.cri
        ? [
            '  [plugins."io.containerd.grpc.v1.cri"]',
            `    sandbox_image = "127.0.0.1:1/none:v1"`,
            '    [plugins."io.containerd.grpc.v1.cri".containerd]',
            `      snapshotter = ${JSON.stringify(options.cri.snapshotter)}`,
            '      disable_snapshot_annotations = false',
            '    [plugins."io.containerd.grpc.v1.cri".cni]',
            `      bin_dir = ${JSON.stringify(join(dir, 'cni-bin'))}`,
            `      conf_dir = ${JSON.stringify(join(dir, 'cni-conf'))}`,
            ...(options.cri.plainHttp ?? []).flatMap((host) => [
              `    [plugins."io.containerd.grpc.v1.cri".registry.mirrors.${JSON.stringify(host)}]`,
              `      endpoint = [${JSON.stringify(`http://${host}`)}]`,
            ]),
          ]
        : []),
      ...Object.entries(options.proxySnapshotters ?? {}).flatMap(([name, socket]) => [
        `[proxy_plugins.${JSON.stringify(name)}]`,
        '  type = "snapshot"',
        `  address = ${JSON.stringify(socket)}`,
      ]),
      '',
    ].join('\n'),
  );
  const logFd = openSync(logPath, 'a');
  const started = Date.now();
  let proc: ManagedProcess;
  try {
    proc = spawnProcess('containerd', ['--config', configPath], { stdio: ['ignore', logFd, logFd], name: `containerd on ${address}` });
  } finally {
    closeSync(logFd);
  }

  const ctr = async (args: string[]): Promise<string> => {
    try {
      const { stdout } = await run('ctr-remote', ['--address', address, ...args], { maxBuffer: 16 << 20 });
      return stdout;
    } catch (err) {
      const e = err as Error & { stderr?: string };
      throw new Error(`ctr-remote ${args.join(' ')}: ${e.stderr?.trim() || e.message}`);
    }
  };
  const stop = async (): Promise<void> => {
    await proc.stop();
    await rm(dir, { recursive: true, force: true });
  };

  try {
    await proc.waitReady(
      () => run('ctr-remote', ['--address', address, 'version'], { timeout: 2000 }).then(() => true, () => false),
      { intervalMs: 20, describe: async () => (await readFile(logPath, 'utf8').catch(() => '')).split('\n').slice(-20).join('\n') },
    );
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    address,
    dir,
    pid: proc.pid,
    startupMs: Date.now() - started,
    log: () => readFile(logPath, 'utf8'),
    ctr,
    stop,
  };
}

export interface ConvertOptions {
  /** Paths to put first, before `.prefetch.landmark` (`--estargz-record-in`). */
  prioritizedFiles?: string[];
  /** `--estargz-chunk-size` (ctr-remote's default: 4 MiB). */
  chunkSize?: number;
}

export interface ConvertedImage {
  ref: string;
  manifestDigest: string;
  manifestBytes: Buffer;
  manifest: ImageManifest;
}

/**
 * Converts an image in a plain-HTTP registry to eStargz with the real producer:
 * `ctr-remote images pull --plain-http SRC`, `ctr-remote images convert
 * --estargz --oci SRC DST`, `ctr-remote images push --plain-http DST`.
 * Refs are `HOST/REPO:TAG`. Returns the converted manifest as the registry serves it.
 */
export async function convertToEstargz(
  srcRef: string,
  dstRef: string,
  containerd: Containerd,
  options: ConvertOptions = {},
): Promise<ConvertedImage> {
  await containerd.ctr(['images', 'pull', '--plain-http', srcRef]);
  const convertArgs = ['images', 'convert', '--estargz', '--oci'];
  if (options.chunkSize !== undefined) convertArgs.push('--estargz-chunk-size', String(options.chunkSize));
  if (options.prioritizedFiles) {
    const record = join(containerd.dir, `record-${createHash('sha256').update(dstRef).digest('hex').slice(0, 12)}.json`);
    // ctr-remote optimize's record format: one JSON object per line with the path.
    await writeFile(record, options.prioritizedFiles.map((path) => `${JSON.stringify({ path })}\n`).join(''));
    convertArgs.push('--estargz-record-in', record);
  }
  await containerd.ctr([...convertArgs, srcRef, dstRef]);
  await containerd.ctr(['images', 'push', '--plain-http', dstRef]);

  const slash = dstRef.indexOf('/');
  const colon = dstRef.lastIndexOf(':');
  const host = dstRef.slice(0, slash);
  const repository = dstRef.slice(slash + 1, colon);
  const tag = dstRef.slice(colon + 1);
  const response = await request(`http://${host}/v2/${repository}/manifests/${tag}`, {
    headers: { accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json' },
  });
  const manifestBytes = Buffer.from(await response.body.arrayBuffer());
  if (response.statusCode !== 200) throw new Error(`GET manifest ${dstRef}: ${response.statusCode} ${manifestBytes.toString()}`);
  const manifest = JSON.parse(manifestBytes.toString('utf8')) as ImageManifest;
  if (manifest.mediaType !== 'application/vnd.oci.image.manifest.v1+json') {
    throw new Error(`converted ${dstRef} is a ${manifest.mediaType}, not an OCI image manifest`);
  }
  return { ref: dstRef, manifestDigest: `sha256:${createHash('sha256').update(manifestBytes).digest('hex')}`, manifestBytes, manifest };
}

// ---- blob readers that count what they fetch

export interface CountingBlobReader extends BlobRangeReader {
  /** Every read, in order: [start, end). */
  readonly reads: Array<[number, number]>;
  /** Sum of the bytes of every read. */
  bytesRead(): number;
  /** Forget the reads so far. */
  reset(): void;
}

function counting(size: number, read: (start: number, end: number) => Promise<Buffer>): CountingBlobReader {
  const reads: Array<[number, number]> = [];
  return {
    size,
    reads,
    bytesRead: () => reads.reduce((sum, [s, e]) => sum + (e - s), 0),
    reset: () => {
      reads.length = 0;
    },
    async read(start, end) {
      if (!(start >= 0 && end >= start && end <= size)) throw new Error(`read ${start}–${end} outside a blob of ${size} bytes`);
      reads.push([start, end]);
      return read(start, end);
    },
  };
}

/** A lazy reader of a registry blob: one HTTP Range request per read. */
export async function registryBlobReader(registryUrl: string, repository: string, digest: string): Promise<CountingBlobReader> {
  const url = `${registryUrl}/v2/${repository}/blobs/${digest}`;
  const head = await request(url, { method: 'HEAD' });
  await head.body.dump();
  if (head.statusCode !== 200) throw new Error(`HEAD ${url}: ${head.statusCode}`);
  const size = Number(head.headers['content-length']);
  return counting(size, async (start, end) => {
    if (end === start) return Buffer.alloc(0);
    const response = await request(url, { headers: { range: `bytes=${start}-${end - 1}` } });
    const bytes = Buffer.from(await response.body.arrayBuffer());
    if (response.statusCode !== 206) throw new Error(`GET ${url} bytes ${start}-${end - 1}: ${response.statusCode}, not 206`);
    const contentRange = String(response.headers['content-range'] ?? '');
    if (contentRange !== `bytes ${start}-${end - 1}/${size}`) throw new Error(`GET ${url}: Content-Range ${contentRange}`);
    return bytes;
  });
}

/** A reader over bytes in memory, counting like the registry one. */
export function memoryBlobReader(blob: Buffer): CountingBlobReader {
  return counting(blob.length, async (start, end) => Buffer.from(blob.subarray(start, end)));
}

/** Reads through `inner`, with the byte at blob offset `at` flipped: a registry serving wrong bytes. */
export function corruptingReader(inner: BlobRangeReader, at: number): BlobRangeReader {
  return {
    size: inner.size,
    async read(start, end) {
      const bytes = await inner.read(start, end);
      if (at >= start && at < end) bytes[at - start] ^= 0xff;
      return bytes;
    },
  };
}

// ---- an in-process eStargz writer

export interface BuildEstargzOptions {
  /** Bytes of file data per chunk (default 4 MiB, as ctr-remote). */
  chunkSize?: number;
  /**
   * Start a new gzip member for a chunk only once the current one holds this
   * many uncompressed bytes; smaller payloads share a member (`innerOffset`).
   */
  minChunkSize?: number;
  /** Write the 47-byte legacy stargz footer instead of eStargz's 51-byte one. */
  legacyFooter?: boolean;
  /** Change the TOC before it is written (hostile or odd TOCs). */
  editToc?: (toc: { version: number; entries: Array<Record<string, unknown>> }) => void;
  /** Write these bytes as the TOC JSON instead. */
  tocJson?: Buffer;
}

export interface BuiltEstargz {
  blob: Buffer;
  toc: { version: number; entries: Array<Record<string, unknown>> };
  tocJson: Buffer;
  tocDigest: string;
  tocOffset: number;
}

const tocTypes: Record<string, string> = {
  file: 'reg',
  directory: 'dir',
  symlink: 'symlink',
  link: 'hardlink',
  'character-device': 'char',
  'block-device': 'block',
  fifo: 'fifo',
};

/**
 * Lays tar-builder entries (`file`, `dir`, `symlink`, …; not `raw`) out as an
 * eStargz blob, the way estargz.Writer does: tar headers go into the open gzip
 * member; each chunk of file data starts a new member; the TOC is its own member
 * (a tar holding stargz.index.json, then the end-of-archive blocks); the footer last.
 */
export async function buildEstargz(entries: readonly TarEntry[], options: BuildEstargzOptions = {}): Promise<BuiltEstargz> {
  const chunkSize = options.chunkSize ?? 4 * 1024 * 1024;
  const minChunkSize = options.minChunkSize ?? 0;
  const members: Buffer[] = [];
  let written = 0;
  let open: Buffer[] = [];
  let openBytes = 0;
  const closeMember = (): void => {
    if (open.length === 0) return;
    const member = gzipSync(Buffer.concat(open), { level: 9 });
    members.push(member);
    written += member.length;
    open = [];
    openBytes = 0;
  };
  const put = (bytes: Buffer): void => {
    open.push(bytes);
    openBytes += bytes.length;
  };
  const tocEntries: Array<Record<string, unknown>> = [];

  for (const entry of entries) {
    if (entry.kind !== 'packed') throw new Error('buildEstargz: raw entries are not supported');
    const h = entry.header;
    const data = entry.data ?? Buffer.alloc(0);
    const tar = await buildTar([entry]);
    const dataBlocks = Math.ceil(data.length / 512) * 512;
    const headerBytes = tar.subarray(0, tar.length - 1024 - dataBlocks);
    const type = tocTypes[h.type ?? 'file'];
    if (!type) throw new Error(`buildEstargz: unsupported type ${h.type}`);
    const toc: Record<string, unknown> = { name: h.name, type };
    const mtime = h.mtime instanceof Date ? h.mtime : undefined;
    if (mtime && mtime.getTime() !== 0) toc.modtime = mtime.toISOString().replace(/\.\d{3}Z$/, 'Z');
    if (h.mode) toc.mode = h.mode;
    if (h.uid) toc.uid = h.uid;
    if (h.gid) toc.gid = h.gid;
    if (h.linkname) toc.linkName = h.linkname;
    if (h.devmajor) toc.devMajor = h.devmajor;
    if (h.devminor) toc.devMinor = h.devminor;
    const xattrs = Object.entries(h.pax ?? {}).filter(([k]) => k.startsWith('SCHILY.xattr.'));
    if (xattrs.length > 0) {
      toc.xattrs = Object.fromEntries(xattrs.map(([k, v]) => [k.slice('SCHILY.xattr.'.length), Buffer.from(v).toString('base64')]));
    }
    put(headerBytes);
    if (type !== 'reg' || data.length === 0) {
      if (type === 'reg') toc.size = 0;
      tocEntries.push(toc);
      continue;
    }
    toc.size = data.length;
    toc.digest = digestOf(data);
    let ent = toc;
    for (let at = 0; at < data.length; at += chunkSize) {
      const chunk = data.subarray(at, Math.min(data.length, at + chunkSize));
      if (openBytes >= minChunkSize) {
        closeMember();
        ent.offset = written;
      } else {
        ent.offset = written;
        ent.innerOffset = openBytes;
      }
      if (at > 0) ent.chunkOffset = at;
      if (at + chunkSize < data.length) ent.chunkSize = chunk.length;
      ent.chunkDigest = digestOf(chunk);
      put(chunk);
      tocEntries.push(ent);
      ent = { name: h.name, type: 'chunk' };
    }
    put(Buffer.alloc(dataBlocks - data.length));
  }
  closeMember();
  const tocOffset = written;
  const toc = { version: 1, entries: tocEntries };
  options.editToc?.(toc);
  const tocJson = options.tocJson ?? Buffer.from(JSON.stringify(toc, null, '\t'));
  const tocMember = gzipSync(await buildTar([file('stargz.index.json', tocJson, { mtime: 0, mode: 0o644 })]), { level: 9 });
  const footer = options.legacyFooter ? legacyFooter(tocOffset) : estargzFooter(tocOffset);
  const blob = Buffer.concat([...members, tocMember, footer]);
  return { blob, toc, tocJson, tocDigest: digestOf(tocJson), tocOffset };
}

/** google/crfs's 47-byte footer: the Extra field is the bare "%016xSTARGZ". */
function legacyFooter(tocOffset: number): Buffer {
  const footer = Buffer.alloc(47);
  footer.set([0x1f, 0x8b, 8, 4], 0);
  footer[9] = 255;
  footer.writeUInt16LE(22, 10);
  footer.write(`${tocOffset.toString(16).padStart(16, '0')}STARGZ`, 12, 'latin1');
  footer.set([1, 0, 0, 0xff, 0xff], 34);
  return footer;
}

export interface EstargzImage extends PushableImage {
  layerDigests: string[];
  /** Per layer: where the `.prefetch.landmark` member starts (bytes before it hold the prioritized entries), else 0. */
  prioritizedEnd: number[];
}

/**
 * An image of `buildEstargz` layers, the way ctr-remote lays one out: gzip
 * layer media type with the TOC digest annotation, diff IDs of the whole
 * uncompressed streams. Push it with the registry helper's `pushImage`.
 */
export async function buildEstargzImage(
  layers: TarEntry[][],
  options: { chunkSize?: number; config?: Record<string, unknown>; editToc?: (toc: BuiltEstargz['toc'], layer: number) => void } = {},
): Promise<EstargzImage> {
  const built = await Promise.all(
    layers.map((entries, i) =>
      buildEstargz(entries, {
        ...(options.chunkSize ? { chunkSize: options.chunkSize } : {}),
        ...(options.editToc ? { editToc: (toc: BuiltEstargz['toc']) => options.editToc!(toc, i) } : {}),
      }),
    ),
  );
  const config = {
    architecture: 'amd64',
    os: 'linux',
    config: options.config ?? {},
    rootfs: { type: 'layers', diff_ids: built.map((b) => digestOf(gunzipSync(b.blob))) },
  };
  const configBytes = Buffer.from(JSON.stringify(config));
  const manifest = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digestOf(configBytes), size: configBytes.length },
    layers: built.map((b) => ({
      mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
      digest: digestOf(b.blob),
      size: b.blob.length,
      annotations: { 'containerd.io/snapshot/stargz/toc.digest': b.tocDigest },
    })),
  };
  return {
    manifestBytes: Buffer.from(JSON.stringify(manifest)),
    manifest,
    configBytes,
    layers: built.map((b) => ({ blob: b.blob })),
    layerDigests: manifest.layers.map((l) => l.digest),
    prioritizedEnd: built.map((b) => (b.toc.entries.find((e) => e.name === '.prefetch.landmark')?.offset as number | undefined) ?? 0),
  };
}

function digestOf(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** Bytes that do not compress: a stable stream from sha256 in counter mode. */
export function incompressible(size: number, seed = 'lazyroot'): Buffer {
  const out = Buffer.alloc(size);
  for (let i = 0, at = 0; at < size; i++, at += 32) {
    createHash('sha256').update(`${seed}:${i}`).digest().copy(out, at);
  }
  return out;
}

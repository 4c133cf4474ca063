import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import { estargzFooter } from '../index/estargz/footer.js';

/**
 * A made-up two-layer eStargz image and a registry on 127.0.0.1 that serves
 * it, for a standby's warm-up mount (warm-up.ts): built in memory in a few
 * milliseconds, never written anywhere. Its shape is that of a small
 * distribution image (directories of files, /etc/passwd and /etc/group, a
 * file replaced and one deleted by the second layer) so that every step a
 * real mount takes runs over it.
 */
export interface WarmImage {
  /** `127.0.0.1:PORT/warm/image:v1`, served over plain HTTP. */
  ref: string;
  /** Paths in the image a warm-up reads. */
  files: string[];
  /** The layers' blobs, base first: a warm-up parses their TOCs again in memory. */
  layerBlobs: Buffer[];
  close(): Promise<void>;
}

const sha256 = (bytes: Buffer | string): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

interface WarmEntry {
  name: string;
  data?: Buffer;
  /** A symbolic link to this target. */
  link?: string;
  /** The file's data in chunks of this size, each its own gzip member (ctr-remote's large files). */
  chunkSize?: number;
}

/** A ustar header: regular file (with `data`) or directory (name ending in '/'). */
function tarHeader(entry: WarmEntry): Buffer {
  const header = Buffer.alloc(512);
  const octal = (value: number, offset: number, width: number) => header.write(`${value.toString(8).padStart(width - 1, '0')}\0`, offset, 'latin1');
  const dir = entry.name.endsWith('/');
  header.write(entry.name, 0, 'utf8');
  octal(dir ? 0o755 : entry.link ? 0o777 : 0o644, 100, 8);
  octal(0, 108, 8);
  octal(0, 116, 8);
  octal(entry.data?.length ?? 0, 124, 12);
  octal(1_700_000_000, 136, 12);
  header.write(dir ? '5' : entry.link ? '2' : '0', 156, 'latin1');
  if (entry.link) header.write(entry.link, 157, 'utf8');
  header.write('ustar\0', 257, 'latin1');
  header.write('00', 263, 'latin1');
  header.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return header;
}

const padding = (n: number) => Buffer.alloc((512 - (n % 512)) % 512);

/** An eStargz blob of `entries` (a gzip member per file's data, the TOC, the footer), with its TOC and diff digests. */
function estargzLayer(entries: readonly WarmEntry[]): { blob: Buffer; tocDigest: string; diffId: string } {
  const members: Buffer[] = [];
  const tar: Buffer[] = [];
  let written = 0;
  let open: Buffer[] = [];
  const close = () => {
    if (open.length === 0) return;
    const member = gzipSync(Buffer.concat(open), { level: 1 });
    members.push(member);
    written += member.length;
    open = [];
  };
  const put = (bytes: Buffer) => {
    open.push(bytes);
    tar.push(bytes);
  };
  // TOC entries with the fields, in the order, that ctr-remote writes them (JSON.parse gives each
  // order its own object shape: a warm-up on other shapes leaves the real TOC's code cold).
  const modtime = '2023-11-14T22:13:20Z';
  const toc: Array<Record<string, unknown>> = [];
  for (const entry of [landmark, ...entries]) {
    put(tarHeader(entry));
    if (entry.name.endsWith('/')) {
      toc.push({ name: entry.name, type: 'dir', modtime, mode: 0o755 });
      continue;
    }
    if (entry.link) {
      toc.push({ name: entry.name, type: 'symlink', modtime, linkName: entry.link, mode: 0o777 });
      continue;
    }
    const data = entry.data ?? Buffer.alloc(0);
    const digest = sha256(data);
    if (data.length === 0) {
      toc.push({ name: entry.name, type: 'reg', modtime, mode: 0o644, digest });
      continue;
    }
    const chunkSize = entry.chunkSize ?? data.length;
    for (let at = 0; at < data.length; at += chunkSize) {
      close(); // each chunk of a file's data starts a gzip member
      const chunk = data.subarray(at, at + chunkSize);
      const chunkDigest = sha256(chunk);
      if (entry === landmark) toc.push({ name: entry.name, type: 'reg', size: data.length, offset: written, digest, chunkDigest });
      else if (at > 0 && at + chunkSize < data.length) toc.push({ name: entry.name, type: 'chunk', offset: written, chunkOffset: at, chunkSize, chunkDigest });
      else if (at > 0) toc.push({ name: entry.name, type: 'chunk', offset: written, chunkOffset: at, chunkDigest }); // the last: to the file's end
      else if (entry.chunkSize) toc.push({ name: entry.name, type: 'reg', size: data.length, modtime, mode: 0o644, offset: written, digest, chunkSize, chunkDigest });
      else toc.push({ name: entry.name, type: 'reg', size: data.length, modtime, mode: 0o644, offset: written, digest, chunkDigest });
      put(chunk);
    }
    put(padding(data.length));
  }
  close();
  const tocOffset = written;
  const tocJson = Buffer.from(JSON.stringify({ version: 1, entries: toc }));
  const tocTar = Buffer.concat([tarHeader({ name: 'stargz.index.json', data: tocJson }), tocJson, padding(tocJson.length), Buffer.alloc(1024)]);
  tar.push(tocTar);
  const blob = Buffer.concat([...members, gzipSync(tocTar, { level: 1 }), estargzFooter(tocOffset)]);
  return { blob, tocDigest: sha256(tocJson), diffId: sha256(Buffer.concat(tar)) };
}

/** ctr-remote's first entry of every layer (no prioritized files). */
const landmark: WarmEntry = { name: '.no.prefetch.landmark', data: Buffer.from([0x76]) };

function text(seed: number, bytes: number): Buffer {
  const line = `line ${seed} of a made-up file for warming a standby up\n`;
  return Buffer.from(line.repeat(Math.ceil(bytes / line.length)).slice(0, bytes));
}

function layers(): { base: WarmEntry[]; top: WarmEntry[]; files: string[] } {
  const base: WarmEntry[] = [{ name: 'etc/' }, { name: 'etc/passwd', data: text(0, 900) }, { name: 'etc/group', data: text(1, 450) }];
  const files = ['etc/passwd', 'etc/group'];
  for (let d = 0; d < 40; d++) {
    base.push({ name: `usr/lib/d${d}/` });
    for (let f = 0; f < 40; f++) {
      const name = `usr/lib/d${d}/f${f}`;
      base.push({ name, data: text(d * 40 + f, 64 + ((d * 977 + f * 131) % 6000)) });
      if (f === d % 40) files.push(name);
      if (f % 8 === 0) base.push({ name: `usr/lib/d${d}/l${f}`, link: `f${f}` });
    }
    if (d % 10 === 0) base.push({ name: `usr/lib/d${d}/big`, data: text(5_000 + d, 20_000), chunkSize: 4096 });
  }
  const top: WarmEntry[] = [{ name: 'etc/' }, { name: 'etc/group', data: text(2, 500) }, { name: 'usr/' }, { name: 'usr/lib/' }];
  for (let d = 0; d < 40; d++) {
    top.push({ name: `usr/lib/d${d}/` });
    if (d === 3) top.push({ name: 'usr/lib/d3/.wh.f1', data: Buffer.alloc(0) });
    for (let f = d; f < 300; f += 40) top.push({ name: `usr/lib/d${d}/g${f}`, data: text(10_000 + f, 200 + f * 7) });
  }
  files.push('usr/lib/d5/g5', 'usr/lib/d7/g47', 'usr/lib/d10/big', 'usr/lib/d16/l16');
  return { base: [{ name: 'usr/' }, { name: 'usr/lib/' }, ...base], top, files };
}

/** Builds the image and serves it (GET /v2/, the manifest by tag, blobs whole or by Range) on 127.0.0.1. */
export async function serveWarmImage(): Promise<WarmImage> {
  const { base, top, files } = layers();
  const built = [estargzLayer(base), estargzLayer(top)];
  const arch = process.arch === 'x64' ? 'amd64' : process.arch;
  const config = Buffer.from(JSON.stringify({ architecture: arch, os: 'linux', config: { Cmd: ['/bin/true'] }, rootfs: { type: 'layers', diff_ids: built.map((l) => l.diffId) } }));
  const blobs = new Map<string, Buffer>([[sha256(config), config], ...built.map((l) => [sha256(l.blob), l.blob] as [string, Buffer])]);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
      layers: built.map((l) => ({
        mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
        digest: sha256(l.blob),
        size: l.blob.length,
        annotations: { 'containerd.io/snapshot/stargz/toc.digest': l.tocDigest },
      })),
    }),
  );
  const server: Server = createServer((req, res) => {
    const url = req.url ?? '';
    const blob = url.startsWith('/v2/warm/image/blobs/') ? blobs.get(url.slice('/v2/warm/image/blobs/'.length)) : undefined;
    if (url === '/v2/' || url === '/v2') {
      res.writeHead(200, { 'content-type': 'application/json', 'docker-distribution-api-version': 'registry/2.0' }).end('{}');
    } else if (url === '/v2/warm/image/manifests/v1') {
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'docker-content-digest': sha256(manifest), 'content-length': manifest.length });
      res.end(req.method === 'HEAD' ? undefined : manifest);
    } else if (blob) {
      const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (!range) return void res.writeHead(200, { 'content-length': blob.length }).end(req.method === 'HEAD' ? undefined : blob);
      const start = Number(range[1]);
      const end = Math.min(Number(range[2]), blob.length - 1);
      res.writeHead(206, { 'content-length': end - start + 1, 'content-range': `bytes ${start}-${end}/${blob.length}` });
      res.end(blob.subarray(start, end + 1));
    } else {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"NAME_UNKNOWN"}]}');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as AddressInfo;
  return {
    ref: `127.0.0.1:${port}/warm/image:v1`,
    files,
    layerBlobs: built.map((l) => l.blob),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/**
 * tar-stream decodes every PAX record value as UTF-8, which corrupts binary
 * values: `SCHILY.xattr.security.capability` holds a raw capability blob, and
 * any byte ≥ 0x80 in it would become U+FFFD. This swaps tar-stream's PAX
 * decoder for one that keeps `SCHILY.xattr.*` values as "binary strings"
 * (latin1: one char per byte; `Buffer.from(v, 'latin1')` gives the bytes back)
 * and decodes every other record as UTF-8, as before. It also keeps GNU
 * sparse 0.0 maps, whose repeated keys tar-stream would collapse. tar-stream's package
 * exports hide headers.js, so it is loaded by path: the same module instance
 * its extractor calls into.
 */
const xattrPrefix = 'SCHILY.xattr.';
let installed = false;

export function installBinaryPaxDecoder(): void {
  if (installed) return;
  const require = createRequire(import.meta.url);
  const headers = require(join(dirname(require.resolve('tar-stream')), 'headers.js')) as {
    decodePax: (buf: Buffer) => Record<string, string>;
  };
  headers.decodePax = function decodePax(buf: Buffer): Record<string, string> {
    const result: Record<string, string> = {};
    // GNU PAX sparse 0.0 repeats GNU.sparse.offset/numbytes once per data
    // region; a plain record object keeps only the last. Collect them into the
    // 0.1 form (GNU.sparse.map = "off,size,off,size…") instead.
    const sparseMap: string[] = [];
    let rest = buf;
    while (rest.length) {
      const space = rest.indexOf(0x20);
      if (space < 0) break;
      const length = Number.parseInt(rest.subarray(0, space).toString('ascii'), 10);
      if (!length || length > rest.length) break;
      // A record is "LEN KEY=VALUE\n"; LEN counts the whole record in bytes.
      const record = rest.subarray(space + 1, length - 1);
      const eq = record.indexOf(0x3d);
      if (eq < 0) break;
      const key = record.subarray(0, eq).toString('utf8');
      const value = record.subarray(eq + 1);
      if (key === 'GNU.sparse.offset' || key === 'GNU.sparse.numbytes') sparseMap.push(value.toString('ascii'));
      else result[key] = value.toString(key.startsWith(xattrPrefix) ? 'latin1' : 'utf8');
      rest = rest.subarray(length);
    }
    if (sparseMap.length > 0 && result['GNU.sparse.map'] === undefined) result['GNU.sparse.map'] = sparseMap.join(',');
    return result;
  };
  installed = true;
}

/**
 * The xattrs a member's PAX records carry, as name → raw bytes. A record with
 * an empty value deletes the keyword (POSIX pax): no xattr, as Go reads it.
 */
export function paxXattrs(pax: Record<string, string> | undefined): Array<[string, Buffer]> {
  if (!pax) return [];
  return Object.entries(pax)
    .filter(([k, v]) => k.startsWith(xattrPrefix) && v !== '')
    .map(([k, v]) => [k.slice(xattrPrefix.length), Buffer.from(v, 'latin1')]);
}

import { normalizeEntryPath } from '../../oci/entry-path.js';

/**
 * The fields of a 512-byte tar header that index checks need (POSIX ustar,
 * GNU base-256 numbers, PAX records): the TOC's own tar entry, and the header
 * in front of each file's data, compared with what the TOC (or a span index
 * from the registry) says of the file.
 */

/** Whether the header's checksum (bytes 148-155, counted as spaces) matches. */
export function checksumOk(header: Buffer): boolean {
  const stored = octal(header.subarray(148, 156));
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i]!;
  return stored === sum;
}

/** A numeric field: octal text, or GNU base-256; NaN when it is neither. */
export function octal(field: Buffer): number {
  if (field[0]! & 0x80) {
    // base-256 (GNU): big-endian, the top bit of the first byte flags it
    let value = field[0]! & 0x7f;
    for (let i = 1; i < field.length; i++) value = value * 256 + field[i]!;
    return value;
  }
  const text = field.toString('latin1').replace(/\0.*$/s, '').trim();
  return text === '' ? 0 : /^[0-7]+$/.test(text) ? Number.parseInt(text, 8) : Number.NaN;
}

/** The ustar name, with its prefix. */
export function tarName(header: Buffer): string {
  const cString = (b: Buffer): string => {
    const nul = b.indexOf(0);
    return (nul < 0 ? b : b.subarray(0, nul)).toString('utf8');
  };
  const name = cString(header.subarray(0, 100));
  const isUstar = header.subarray(257, 262).toString('latin1') === 'ustar';
  const prefix = isUstar ? cString(header.subarray(345, 500)) : '';
  return prefix ? `${prefix}/${name}` : name;
}

/** PAX records (`LEN key=value\n`). */
export function parsePax(data: Buffer): Record<string, string> {
  const records: Record<string, string> = {};
  let rest = data;
  while (rest.length > 0) {
    const space = rest.indexOf(0x20);
    if (space < 0) break;
    const length = Number.parseInt(rest.subarray(0, space).toString('ascii'), 10);
    if (!length || length > rest.length) break;
    const record = rest.subarray(space + 1, length - 1);
    const eq = record.indexOf(0x3d);
    if (eq > 0) records[record.subarray(0, eq).toString('utf8')] = record.subarray(eq + 1).toString('utf8');
    rest = rest.subarray(length);
  }
  return records;
}


/**
 * Walks the tar headers in stream[p…] (entries without data, PAX and GNU
 * long-name records, whole files): the last must be the header of file
 * `path` and end exactly where the stream ends, where the file's bytes
 * begin. Returns undefined when they agree, else why not. `size`: the
 * file's size as the index says (undefined: not compared, sparse files).
 */
export function headerBeforeData(stream: Buffer, p: number, path: string, size: number | undefined, what: string): string | undefined {
  let pax: Record<string, string> = {};
  let longName: string | undefined;
  while (p + 512 <= stream.length) {
    const header = stream.subarray(p, p + 512);
    if (!checksumOk(header)) return `no valid tar header at uncompressed byte ${p} before its data`;
    const typeflag = String.fromCharCode(header[156]!);
    const length = pax.size !== undefined ? Number(pax.size) : octal(header.subarray(124, 136));
    if (!Number.isSafeInteger(length) || length < 0) return 'a tar header before it has a bad size';
    const dataEnd = p + 512 + Math.ceil(length / 512) * 512;
    if (typeflag === 'x' || typeflag === 'g' || typeflag === 'L' || typeflag === 'K') {
      if (dataEnd > stream.length) break;
      const data = stream.subarray(p + 512, p + 512 + length);
      if (typeflag === 'x') pax = parsePax(data);
      if (typeflag === 'L') longName = cString(data);
      p = dataEnd;
      continue;
    }
    const name = pax.path ?? longName ?? tarName(header);
    const regular = (typeflag === '0' || typeflag === '\0' || typeflag === '7') && !(typeflag === '\0' && name.endsWith('/'));
    const hasData = regular || typeflag === 'S';
    if (p + 512 === stream.length) {
      // The header right before the file's bytes: it must be the file's.
      let headerPath: string;
      try {
        headerPath = normalizeEntryPath(name, what);
      } catch {
        headerPath = name;
      }
      if (headerPath !== path) return `the tar header before its bytes names ${JSON.stringify(name)}`;
      if (!hasData || (size !== undefined && !regular)) return `the tar header before its bytes has type ${JSON.stringify(typeflag)}, not a regular file`;
      if (size !== undefined && length !== size) return `the tar header says ${length} bytes, the index ${size}`;
      return undefined;
    }
    p = hasData ? dataEnd : p + 512;
    pax = {};
    longName = undefined;
  }
  return 'no tar header of its own right before its bytes';
}

function cString(b: Buffer): string {
  const nul = b.indexOf(0);
  return (nul < 0 ? b : b.subarray(0, nul)).toString('utf8');
}

/**
 * The fields of a 512-byte tar header that eStargz checks need (POSIX ustar,
 * GNU base-256 numbers, PAX records): the TOC's own tar entry, and the header
 * in front of each file's data, compared with what the TOC says of the file.
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


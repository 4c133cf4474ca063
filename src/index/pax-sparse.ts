import { LazyrootError } from '../errors.js';

/** A sparse file's data regions, in order: bytes [offset, offset+size) hold data; the rest are holes. */
export interface SparseMap {
  realSize: number;
  realName?: string;
  regions: Array<{ offset: number; size: number }>;
  /** Format 1.0 keeps the map at the start of the member's data, in this many bytes. */
  mapBytesInData: number;
}

/**
 * GNU tar's PAX sparse formats (tar manual, "Storing Sparse Files"):
 * 0.1 keeps the map in `GNU.sparse.map` ("off,size,off,size…"), 0.0 in
 * repeated offset/numbytes records (tar-binary-pax.ts folds them into the
 * 0.1 form); 1.0 keeps it
 * as decimal lines at the start of the data, padded to 512 bytes. Returns
 * undefined for members that are not sparse. The old GNU 'S' header format
 * cannot be read through tar-stream (it hides the header's extension blocks):
 * it is refused by the caller.
 */
export function sparseFromPax(pax: Record<string, string> | undefined, what: string): SparseMap | undefined {
  if (!pax) return undefined;
  const major = pax['GNU.sparse.major'];
  const minor = pax['GNU.sparse.minor'];
  if (major === '1' && minor === '0') {
    return {
      realSize: num(pax['GNU.sparse.realsize'], what),
      ...(pax['GNU.sparse.name'] ? { realName: pax['GNU.sparse.name'] } : {}),
      regions: [],
      mapBytesInData: -1, // read from the data
    };
  }
  if (pax['GNU.sparse.map'] !== undefined) {
    const numbers = pax['GNU.sparse.map'].split(',').filter((s) => s !== '').map((s) => num(s, what));
    if (numbers.length % 2) throw bad(what, 'odd number of values in GNU.sparse.map');
    const regions = [];
    for (let i = 0; i < numbers.length; i += 2) regions.push({ offset: numbers[i]!, size: numbers[i + 1]! });
    return {
      realSize: num(pax['GNU.sparse.size'] ?? pax['GNU.sparse.realsize'], what),
      ...(pax['GNU.sparse.name'] ? { realName: pax['GNU.sparse.name'] } : {}),
      regions,
      mapBytesInData: 0,
    };
  }
  return undefined;
}

/** Parses format 1.0's in-data map from the first bytes of the member; returns the map and its padded length. */
export function parseSparseMapPrefix(head: Buffer, what: string): { regions: SparseMap['regions']; length: number } | undefined {
  const values: number[] = [];
  let pos = 0;
  const readNumber = (): number | undefined => {
    const nl = head.indexOf(0x0a, pos);
    if (nl < 0) return undefined;
    const value = num(head.subarray(pos, nl).toString('ascii'), what);
    pos = nl + 1;
    return value;
  };
  const count = readNumber();
  if (count === undefined) return undefined;
  for (let i = 0; i < count * 2; i++) {
    const v = readNumber();
    if (v === undefined) return undefined;
    values.push(v);
  }
  const regions = [];
  for (let i = 0; i < values.length; i += 2) regions.push({ offset: values[i]!, size: values[i + 1]! });
  return { regions, length: Math.ceil(pos / 512) * 512 };
}

function num(text: string | undefined, what: string): number {
  if (text === undefined || !/^\d+$/.test(text.trim())) throw bad(what, `bad number ${JSON.stringify(text)} in sparse map`);
  return Number(text.trim());
}

function bad(what: string, why: string): LazyrootError {
  return new LazyrootError('HOSTILE_ARCHIVE', `${what}: ${why}`);
}

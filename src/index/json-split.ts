/**
 * Finding the elements of a big JSON array without decoding it, so that it
 * can be parsed a batch of elements at a time: the whole text never becomes
 * one JavaScript string, nor the whole array one tree of objects. Used for an
 * eStargz TOC's entries and a span index's entry tuples. The scan only
 * counts brackets and skips strings; each batch's JSON.parse checks the rest.
 */

/** An array's elements as byte ranges: each batch is its elements and the commas between them. */
export interface SplitArray {
  count: number;
  batches: Array<[number, number]>;
  /** Just after the closing bracket. */
  end: number;
}

/**
 * The array starting at byte `i` of `json` (its `[`), in batches of
 * `perBatch` elements; undefined when it is not a well-formed array.
 */
export function splitJsonArray(json: Buffer, i: number, perBatch: number): SplitArray | undefined {
  if (json[i] !== 0x5b) return undefined; // [
  let count = 0;
  const batches: Array<[number, number]> = [];
  i = skipSpace(json, i + 1);
  if (json[i] === 0x5d) return { count, batches, end: i + 1 };
  let batchStart = i;
  let inBatch = 0;
  for (;;) {
    const end = skipValue(json, i);
    if (end < 0 || end === i) return undefined;
    count++;
    inBatch++;
    i = skipSpace(json, end);
    const last = json[i] === 0x5d;
    if (inBatch === perBatch || last) {
      batches.push([batchStart, end]);
      inBatch = 0;
    }
    if (last) return { count, batches, end: i + 1 };
    if (json[i] !== 0x2c) return undefined; // ,
    i = skipSpace(json, i + 1);
    if (inBatch === 0) batchStart = i;
  }
}

/** Parses the elements of `batch` (a range from splitJsonArray). */
export function parseBatch(json: Buffer, batch: readonly [number, number]): unknown[] {
  return JSON.parse(`[${json.toString('utf8', batch[0], batch[1])}]`) as unknown[];
}

export function skipSpace(json: Buffer, i: number): number {
  for (;;) {
    const c = json[i];
    if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) return i;
    i++;
  }
}

/** `i` is at a string's opening quote: the index after its closing quote, or -1. */
export function skipString(json: Buffer, i: number): number {
  let at = i + 1;
  for (;;) {
    const quote = json.indexOf(0x22, at);
    if (quote < 0) return -1;
    let backslashes = 0;
    while (json[quote - 1 - backslashes] === 0x5c) backslashes++;
    if (backslashes % 2 === 0) return quote + 1;
    at = quote + 1;
  }
}

/**
 * `i` is at a value: the index just after it, or -1. Brackets are only
 * counted, not matched: JSON.parse of the value checks it.
 */
export function skipValue(json: Buffer, i: number): number {
  const n = json.length;
  let depth = 0;
  while (i < n) {
    const c = json[i]!;
    if (c === 0x22) {
      i = skipString(json, i);
      if (i < 0) return -1;
      if (depth === 0) return i;
      continue;
    }
    if (c === 0x7b || c === 0x5b) depth++;
    else if (c === 0x7d || c === 0x5d) {
      if (depth === 0) return i; // a scalar ends at its container's close
      if (--depth === 0) return i + 1;
    } else if (depth === 0 && (c === 0x2c || c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d)) return i;
    i++;
  }
  return depth === 0 ? i : -1;
}


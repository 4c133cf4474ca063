/**
 * containerd's filter syntax, as `List` receives it (containerd
 * `filters/parser.go`): filters are OR'ed; in one filter, comma-separated
 * terms are AND'ed; a term is `FIELD`, `FIELD==VALUE`, `FIELD!=VALUE` or
 * `FIELD~=REGEXP`; a field path is dot-separated, parts and values may be
 * double-quoted (`labels."containerd.io/snapshot.ref"==sha256:…`).
 */
import { LazyrootError } from '../errors.js';

type Term = { path: string[]; op?: '==' | '!=' | '~='; value?: string; regexp?: RegExp };

/** Looks up a field path of the thing being filtered; undefined when absent. */
export type FieldLookup = (path: readonly string[]) => string | undefined;

export type Filter = (lookup: FieldLookup) => boolean;

/** One filter matching anything the given filter strings match (none given: everything). */
export function parseFilters(filters: readonly string[]): Filter {
  const parsed = filters.filter((f) => f.trim() !== '').map(parseFilter);
  if (parsed.length === 0) return () => true;
  return (lookup) => parsed.some((terms) => terms.every((t) => matches(t, lookup)));
}

function matches(term: Term, lookup: FieldLookup): boolean {
  const value = lookup(term.path);
  if (term.op === undefined) return value !== undefined;
  if (value === undefined) return term.op === '!=';
  if (term.op === '==') return value === term.value;
  if (term.op === '!=') return value !== term.value;
  return term.regexp!.test(value);
}

function parseFilter(text: string): Term[] {
  const tokens = tokenize(text);
  const terms: Term[] = [];
  let at = 0;
  const fail = (why: string): never => {
    throw new LazyrootError('INVALID_ARGUMENT', `filter ${JSON.stringify(text)}: ${why}`);
  };
  while (at < tokens.length) {
    const path: string[] = [];
    for (;;) {
      const part = tokens[at++];
      if (!part || part.kind === 'op' || part.kind === 'comma' || part.kind === 'dot') fail('expected a field name');
      path.push(part!.text);
      if (tokens[at]?.kind !== 'dot') break;
      at++;
    }
    const term: Term = { path };
    if (tokens[at]?.kind === 'op') {
      term.op = tokens[at]!.text as Term['op'];
      at++;
      // A value may hold dots and any character up to the next comma: join what the tokenizer split.
      let value = '';
      while (at < tokens.length && tokens[at]!.kind !== 'comma') value += tokens[at++]!.text;
      term.value = value;
      if (term.op === '~=') {
        try {
          term.regexp = new RegExp(value);
        } catch {
          fail(`bad regular expression ${value}`);
        }
      }
    }
    terms.push(term);
    if (at < tokens.length) {
      if (tokens[at]!.kind !== 'comma') fail(`unexpected ${tokens[at]!.text}`);
      at++;
    }
  }
  return terms;
}

type Token = { kind: 'word' | 'op' | 'comma' | 'dot'; text: string };

function tokenize(text: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (c === ',') {
      out.push({ kind: 'comma', text: c });
      i++;
    } else if (c === '.') {
      out.push({ kind: 'dot', text: c });
      i++;
    } else if ((c === '=' || c === '!' || c === '~') && text[i + 1] === '=') {
      out.push({ kind: 'op', text: text.slice(i, i + 2) });
      i += 2;
    } else if (c === '"') {
      let j = i + 1;
      let s = '';
      while (j < text.length && text[j] !== '"') {
        if (text[j] === '\\' && j + 1 < text.length) j++;
        s += text[j++];
      }
      out.push({ kind: 'word', text: s });
      i = j + 1;
    } else if (c === ' ') {
      i++;
    } else {
      let j = i;
      while (j < text.length && !',."'.includes(text[j]!) && !(['=', '!', '~'].includes(text[j]!) && text[j + 1] === '=')) j++;
      out.push({ kind: 'word', text: text.slice(i, j) });
      i = j;
    }
  }
  return out;
}

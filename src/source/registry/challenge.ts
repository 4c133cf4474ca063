/** One auth challenge from a WWW-Authenticate header: `Bearer realm="…",service="…"`. */
export interface Challenge {
  /** Lower-cased: `bearer`, `basic`. */
  scheme: string;
  /** Parameter names lower-cased, values unquoted. */
  params: Record<string, string>;
}

const tokenPattern = /[!#$%&'*+\-.^_`|~0-9A-Za-z]+/y;

/**
 * Parses WWW-Authenticate values (RFC 7235): several challenges may share one
 * header, separated by commas like their parameters, and quoted values may
 * contain commas (`scope="repository:a:pull,push"`).
 */
export function parseChallenges(header: string | string[] | undefined): Challenge[] {
  if (header === undefined) return [];
  const values = Array.isArray(header) ? header : [header];
  return values.flatMap(parseOneHeader);
}

function parseOneHeader(text: string): Challenge[] {
  const challenges: Challenge[] = [];
  let i = 0;
  const skipSpaceAndCommas = (): void => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t' || text[i] === ',')) i++;
  };
  const readToken = (): string | undefined => {
    tokenPattern.lastIndex = i;
    const match = tokenPattern.exec(text);
    if (!match) return undefined;
    i += match[0].length;
    return match[0];
  };
  const readQuoted = (): string => {
    let value = '';
    i++; // opening quote
    while (i < text.length && text[i] !== '"') {
      if (text[i] === '\\' && i + 1 < text.length) i++;
      value += text[i];
      i++;
    }
    i++; // closing quote
    return value;
  };

  let current: Challenge | undefined;
  while (i < text.length) {
    skipSpaceAndCommas();
    const token = readToken();
    if (token === undefined) {
      i++; // garbage: step over it
      continue;
    }
    let j = i;
    while (text[j] === ' ' || text[j] === '\t') j++;
    if (text[j] === '=') {
      i = j + 1;
      while (text[i] === ' ' || text[i] === '\t') i++;
      const value = text[i] === '"' ? readQuoted() : readToken() ?? '';
      // A parameter before any scheme belongs to nothing: dropped.
      if (current !== undefined) current.params[token.toLowerCase()] = value;
    } else {
      current = { scheme: token.toLowerCase(), params: {} };
      challenges.push(current);
    }
  }
  return challenges;
}

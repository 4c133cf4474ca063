import type { Header as TarHeader } from 'tar-stream';

/** A time with nanoseconds: `sec` may be negative (before 1970), `nsec` is 0..999 999 999. */
export interface TarTime {
  sec: number;
  nsec: number;
}

export const epochTime: TarTime = { sec: 0, nsec: 0 };

/**
 * A PAX time record (`mtime`, `atime`): decimal seconds with an optional
 * fraction, as Go's archive/tar parses it: a sign, digits, at most nine
 * fraction digits kept (more are cut off). "-1.5" is 1.5 s before the epoch
 * (sec -2, nsec 500 000 000). Undefined when absent or malformed.
 */
export function parsePaxTime(value: string | undefined): TarTime | undefined {
  if (value === undefined) return undefined;
  const m = /^([+-]?)(\d+)(?:\.(\d*))?$/.exec(value);
  if (!m) return undefined;
  const whole = Number(m[2]);
  if (!Number.isSafeInteger(whole)) return undefined;
  const nsec = Number((m[3] ?? '').slice(0, 9).padEnd(9, '0'));
  if (m[1] !== '-') return { sec: whole, nsec };
  return nsec === 0 ? { sec: -whole, nsec: 0 } : { sec: -whole - 1, nsec: 1_000_000_000 - nsec };
}

/** A member's mtime: the PAX record when there is one, else the header's whole seconds. */
export function tarMtime(header: Pick<TarHeader, 'mtime' | 'pax'>): TarTime {
  const pax = parsePaxTime((header.pax as Record<string, string> | null | undefined)?.mtime);
  if (pax) return pax;
  const ms = header.mtime?.getTime();
  return ms === undefined || Number.isNaN(ms) ? epochTime : { sec: Math.floor(ms / 1000), nsec: 0 };
}

/**
 * Typeflag NUL (the pre-POSIX "regular file") on a name ending in `/`, the
 * name taken after PAX and GNU long names: a directory, in the old
 * convention Go's archive/tar (umoci, containerd) and GNU tar follow.
 * tar-stream means to, but decides the type before it looks. Typeflag '0'
 * with a trailing slash stays a regular file, as POSIX defines '0' and as Go
 * reads it (GNU tar alone makes it a directory: README, "Where unpackers
 * disagree"). `typeflagNul` is set by tar-stream-patches.ts.
 */
export function isOldStyleDir(header: { name: string; type: TarHeader['type'] | null; typeflagNul?: boolean }): boolean {
  return header.type === 'file' && header.typeflagNul === true && header.name.endsWith('/');
}

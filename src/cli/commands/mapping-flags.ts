import { parseIdRange, type IdMapping } from '../../unpack/id-mapping.js';

/** commander collector for repeatable flags. */
export const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

/** `--uid-mapping`/`--gid-mapping` in GrootFS's CONTAINER:HOST:SIZE form. */
export function mappingFrom(opts: { uidMapping?: string[]; gidMapping?: string[] }): IdMapping | undefined {
  const uids = (opts.uidMapping ?? []).map((m) => parseIdRange(m, '--uid-mapping'));
  const gids = (opts.gidMapping ?? []).map((m) => parseIdRange(m, '--gid-mapping'));
  return uids.length || gids.length ? { uids, gids } : undefined;
}

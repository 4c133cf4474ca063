import { LazyrootError } from '../errors.js';

/** One GrootFS/runc-style range: container IDs [containerId, containerId+size) ↦ host IDs from hostId. */
export interface IdRange {
  containerId: number;
  hostId: number;
  size: number;
}

export interface IdMapping {
  uids: IdRange[];
  gids: IdRange[];
}

/** Parses GrootFS's `CONTAINER:HOST:SIZE` form. */
export function parseIdRange(text: string, flag: string): IdRange {
  const m = /^(\d+):(\d+):(\d+)$/.exec(text.trim());
  if (!m) throw new LazyrootError('INVALID_ARGUMENT', `${flag} ${JSON.stringify(text)}: expected CONTAINER:HOST:SIZE`);
  const [containerId, hostId, size] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (size < 1) throw new LazyrootError('INVALID_ARGUMENT', `${flag} ${text}: size must be at least 1`);
  if (containerId + size > 2 ** 32 || hostId + size > 2 ** 32) throw new LazyrootError('INVALID_ARGUMENT', `${flag} ${text}: range exceeds 32-bit IDs`);
  return { containerId, hostId, size };
}

/**
 * The host ID for a container ID. IDs outside every range are left as they
 * are: inside the container's user namespace they then show as the overflow
 * ID, which is what the kernel does for any unmapped owner.
 */
export function mapId(id: number, ranges: readonly IdRange[]): number {
  for (const r of ranges) if (id >= r.containerId && id < r.containerId + r.size) return r.hostId + (id - r.containerId);
  return id;
}

export function isIdentity(mapping: IdMapping | undefined): boolean {
  return !mapping || (mapping.uids.length === 0 && mapping.gids.length === 0);
}

/** A stable key for a mapping: mapped layer copies are cached under it. */
export function mappingKey(mapping: IdMapping): string {
  const part = (rs: IdRange[]) => rs.map((r) => `${r.containerId}-${r.hostId}-${r.size}`).join(',');
  return `u${part(mapping.uids)}_g${part(mapping.gids)}`;
}

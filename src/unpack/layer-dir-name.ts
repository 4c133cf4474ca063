import { createHash } from 'node:crypto';
import { digestHex, type Digest } from '../oci/digest.js';
import { isIdentity, mappingKey, type IdMapping } from './id-mapping.js';

/** A layer's directory name: its chain ID, plus the ID mapping its owners were mapped with. */
export function layerDirName(chainId: Digest, mapping?: IdMapping): string {
  const hex = digestHex(chainId);
  if (isIdentity(mapping)) return hex;
  return `${hex}-map-${createHash('sha256').update(mappingKey(mapping!)).digest('hex').slice(0, 12)}`;
}

import { LazyrootError } from '../errors.js';
import type { Descriptor, Platform } from './types.js';

const nodeArchToOci: Record<string, string> = {
  x64: 'amd64',
  arm64: 'arm64',
  arm: 'arm',
  ia32: '386',
  ppc64: 'ppc64le',
  s390x: 's390x',
  riscv64: 'riscv64',
  mips64el: 'mips64le',
  loong64: 'loong64',
};

/** The platform of this machine in OCI terms. */
export function hostPlatform(): Platform {
  const architecture = nodeArchToOci[process.arch] ?? process.arch;
  const platform: Platform = { os: process.platform, architecture };
  if (architecture === 'arm64') platform.variant = 'v8';
  return platform;
}

/** Parses `os/arch[/variant]`. */
export function parsePlatform(text: string): Platform {
  const parts = text.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === '')) {
    throw new LazyrootError('INVALID_ARGUMENT', `platform ${JSON.stringify(text)}: expected os/arch[/variant]`);
  }
  const [os, architecture, variant] = parts as [string, string, string | undefined];
  return variant ? { os, architecture, variant } : { os, architecture };
}

export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

/** Default variants, as containerd's platforms package normalises them. */
function normalizedVariant(p: Platform): string | undefined {
  if (p.variant) return p.variant;
  if (p.architecture === 'arm64') return 'v8';
  if (p.architecture === 'arm') return 'v7';
  return undefined;
}

export function platformMatches(want: Platform, have: Platform): boolean {
  if (want.os !== have.os || want.architecture !== have.architecture) return false;
  const wantVariant = normalizedVariant(want);
  return wantVariant === undefined || wantVariant === normalizedVariant(have);
}

/**
 * Picks the manifest for a platform from an index. Entries with no platform are
 * skipped (they are attestations or artifacts); the first match wins, as in containerd.
 */
export function selectPlatform(manifests: Descriptor[], want: Platform): Descriptor | undefined {
  return manifests.find((m) => m.platform !== undefined && platformMatches(want, m.platform));
}

import { accessSync, constants } from 'node:fs';
import { execFileSync } from 'node:child_process';
import type { TestContext } from 'node:test';

/**
 * What a test needs from the machine. Missing on a developer's machine: the
 * test is skipped with the reason. Missing under CI=true: the test fails
 * loudly, because CI must never pass by skipping.
 */
export function missingRequirements(needs: { root?: boolean; tools?: string[]; fuse?: boolean }): string[] {
  const missing: string[] = [];
  if (needs.root && process.getuid?.() !== 0) missing.push('root');
  if (needs.fuse) {
    try {
      accessSync('/dev/fuse', constants.R_OK | constants.W_OK);
    } catch {
      missing.push('/dev/fuse');
    }
  }
  for (const tool of needs.tools ?? []) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    } catch {
      missing.push(tool);
    }
  }
  return missing;
}

/** Call first in a test: returns false (and skips) when something is missing, throws under CI. */
export function requireOrSkip(t: TestContext, needs: { root?: boolean; tools?: string[]; fuse?: boolean }): boolean {
  const missing = missingRequirements(needs);
  if (missing.length === 0) return true;
  const why = `needs ${missing.join(', ')} (run scripts/bootstrap as root)`;
  if (process.env.CI) throw new Error(`CI: ${why}`);
  t.skip(why);
  return false;
}

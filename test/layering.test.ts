import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

// The layering table of design.md: each folder may import only from folders above it.
const order = ['oci', 'reference', 'source', 'store', 'index', 'union', 'unpack', 'fs', 'mount', 'rootfs', 'bundle', 'cli'];
// Packages only one folder may use.
const ownedPackages: Record<string, string> = {
  undici: 'source',
  'better-sqlite3': 'store',
  'fuse-native': 'fs',
  commander: 'cli',
  'cli-progress': 'cli',
};
// rootfs and bundle sit side by side: bundle may use rootfs.
const rank = (folder: string): number => (folder === 'bundle' ? order.indexOf('rootfs') + 0.5 : order.indexOf(folder));

const srcDir = resolve(dirname(fileURLToPath(import.meta.url)), '../../src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sourceFiles(path);
    return name.endsWith('.ts') ? [path] : [];
  });
}

function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/(?:^|\n)\s*(?:import|export)[^'"]*?from\s+['"]([^'"]+)['"]/g)].map((m) => m[1]!);
}

test('each src folder imports only from the folders above it (design.md)', () => {
  const violations: string[] = [];
  for (const file of sourceFiles(srcDir)) {
    const rel = relative(srcDir, file);
    const folder = rel.includes('/') ? rel.split('/')[0]! : undefined;
    for (const spec of importsOf(file)) {
      if (spec.startsWith('.')) {
        const target = relative(srcDir, resolve(dirname(file), spec));
        const targetFolder = target.includes('/') ? target.split('/')[0]! : undefined;
        if (!folder || !targetFolder || targetFolder === folder) continue; // top-level files (errors.ts, index.ts) are shared
        if (rank(targetFolder) > rank(folder)) violations.push(`${rel} imports ${spec} (${targetFolder} is below ${folder})`);
      } else {
        const pkg = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!;
        const owner = ownedPackages[pkg];
        if (owner && folder !== owner) violations.push(`${rel} imports ${pkg}, which only src/${owner}/ may use`);
      }
    }
  }
  assert.deepEqual(violations, []);
});

test('only src/cli/ prints or exits', () => {
  const offenders = sourceFiles(srcDir)
    .filter((f) => !relative(srcDir, f).startsWith('cli/'))
    .filter((f) => /\bconsole\.(log|error|warn|info)\(|process\.exit\(|process\.std(out|err)\.write\(/.test(readFileSync(f, 'utf8')))
    .map((f) => relative(srcDir, f));
  assert.deepEqual(offenders, []);
});

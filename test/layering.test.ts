import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The layering of design.md ("Layers of the code": each folder may import
 * only from those above it), checked against every import under src/ —
 * static, re-exports, side-effect and dynamic `import()` — for folders and
 * for the top-level files alike. The table is read from design.md itself
 * (../shared/design.md from the repository root; in CI, shared/ sits beside
 * the clone), so the page and the code cannot drift apart unnoticed.
 */

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const srcDir = join(repoRoot, 'src');
const designPath = resolve(repoRoot, '../shared/design.md');

/**
 * Entries an older design.md's table did not list, each placed after an
 * entry it does list (`after: undefined`: above everything). design.md lists
 * them now; CI may still read a copy of shared/ from before that change, so
 * an entry here counts only where design.md does not list it.
 */
const supplement: Array<{ entries: string[]; after?: string; why: string }> = [
  { entries: ['errors.ts', 'native.ts', 'process-alive.ts'], why: 'shared by every folder: the error type, the N-API addon, a pid check' },
  { entries: ['trace.ts'], why: 'LAZYROOT_TRACE: the phases of a mount or run, from any folder' },
  { entries: ['unpack'], after: 'union', why: 'safe layer unpacking into overlay-format diffs, the per-chain-ID layer cache' },
  { entries: ['index.ts'], after: 'bundle', why: 'the library API: above the CLI, below everything it exports' },
  // Placed after index.ts's entry, so it goes in between bundle and index.ts, which exports both.
  { entries: ['layer-store', 'snapshotter'], after: 'bundle', why: "the engines' front ends (Podman's additional layer store, containerd's proxy snapshotter), over mount/ and store/" },
];

/** Packages only one folder may use (style.md, "Layering you can check"). */
const ownedPackages: Record<string, string> = {
  undici: 'source',
  'better-sqlite3': 'store',
  'fuse-native': 'fs',
  commander: 'cli',
  'cli-progress': 'cli',
  '@grpc/grpc-js': 'snapshotter',
  '@grpc/proto-loader': 'snapshotter',
};

/** The rows of design.md's layering table, top first; each row's entries in the order written (`src/rootfs/`, `src/bundle/`). */
function designRows(): string[][] {
  if (!existsSync(designPath)) {
    throw new Error(`layering: ${designPath} is missing; the layering table is read from design.md (in CI, shared/ must sit beside the repository clone)`);
  }
  const text = readFileSync(designPath, 'utf8');
  const start = text.search(/^## Layers of the code/m);
  if (start < 0) throw new Error(`layering: ${designPath} has no "## Layers of the code" section`);
  const rest = text.slice(start);
  const end = rest.slice(3).search(/^## /m);
  const section = end < 0 ? rest : rest.slice(0, end + 3);
  const rows = section
    .split('\n')
    .filter((line) => line.startsWith('|'))
    .map((line) => line.split('|')[1] ?? '')
    .map((cell) => [...cell.matchAll(/`src\/([^`]+?)\/?`/g)].map((m) => m[1]!))
    .filter((entries) => entries.length > 0);
  if (rows.length < 5) throw new Error(`layering: could not read the table of "Layers of the code" in ${designPath} (found ${rows.length} rows)`);
  return rows;
}

/** Rank of every entry: its row, and its place within the row (a later entry of a row may import an earlier one). */
function ranks(rows: string[][]): Map<string, number> {
  const all = rows.map((r) => [...r]);
  const listed = new Set(rows.flat());
  for (const s of supplement) {
    if (s.entries.every((e) => listed.has(e))) continue;
    const at = s.after === undefined ? 0 : all.findIndex((r) => r.includes(s.after!)) + 1;
    if (s.after !== undefined && at === 0) throw new Error(`layering: the supplement places ${s.entries.join(', ')} after ${s.after}, which design.md does not list`);
    all.splice(at, 0, s.entries);
  }
  const rank = new Map<string, number>();
  all.forEach((row, i) => row.forEach((entry, j) => rank.set(entry, i + j / 100)));
  return rank;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sourceFiles(path);
    return name.endsWith('.ts') ? [path] : [];
  });
}

/** What a file imports: `import … from`, `export … from`, `import 'x'` and `import('x')`, comments left out. */
function importsOf(text: string): string[] {
  const code = text
    .split('\n')
    .filter((line) => !/^\s*(\/\/|\/\*|\*)/.test(line))
    .join('\n');
  const found = [
    ...code.matchAll(/(?:^|\n)\s*(?:import|export)\s[^'"]*?\sfrom\s+['"]([^'"]+)['"]/g),
    ...code.matchAll(/(?:^|\n)\s*import\s+['"]([^'"]+)['"]/g),
    ...code.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g),
  ];
  return found.map((m) => m[1]!);
}

/** `oci` for src/oci/…, `errors.ts` for src/errors.ts. */
function entryOf(relPath: string): string {
  return relPath.includes('/') ? relPath.split('/')[0]! : relPath;
}

test('design.md lists every folder and top-level file of src/ (with the supplement), and nothing that is gone', () => {
  const rows = designRows();
  const listed = new Set(rows.flat());
  const rank = ranks(rows);
  const problems: string[] = [];
  const present = readdirSync(srcDir).filter((name) => statSync(join(srcDir, name)).isDirectory() || name.endsWith('.ts'));
  for (const name of present) {
    if (!rank.has(name)) problems.push(`src/${name}${name.endsWith('.ts') ? '' : '/'} is in no row of design.md's layering table (nor in this test's supplement)`);
  }
  for (const entry of listed) if (!present.includes(entry)) problems.push(`design.md lists src/${entry}/, which does not exist`);
  assert.deepEqual(problems, []);
});

test('the import scanner sees static, re-exported, side-effect and dynamic imports', () => {
  const sample = [
    "import { a } from './a.js';",
    'import {',
    '  b,',
    "} from '../b/b.js';",
    "export { c } from './c.js';",
    "import './d.js';",
    "const e = await import('../e/e.js');",
    "// import { f } from './f.js';",
    " * import('./g.js')",
  ].join('\n');
  assert.deepEqual(importsOf(sample).sort(), ['../b/b.js', '../e/e.js', './a.js', './c.js', './d.js']);
  // And on the real code: the library entry point loads its modules dynamically.
  assert.ok(importsOf(readFileSync(join(srcDir, 'index.ts'), 'utf8')).includes('./mount/background-mount.js'));
});

test('each src folder and top-level file imports only from those above it (design.md)', () => {
  const rank = ranks(designRows());
  const violations: string[] = [];
  for (const file of sourceFiles(srcDir)) {
    const rel = relative(srcDir, file);
    const own = entryOf(rel);
    const ownRank = rank.get(own);
    if (ownRank === undefined) continue; // reported by the test above
    for (const spec of importsOf(readFileSync(file, 'utf8'))) {
      if (spec.startsWith('.')) {
        const target = relative(srcDir, resolve(dirname(file), spec));
        if (target.startsWith('..')) {
          violations.push(`${rel} imports ${spec}, outside src/`);
          continue;
        }
        const entry = entryOf(target.replace(/\.js$/, '.ts'));
        if (entry === own) continue;
        const targetRank = rank.get(entry);
        if (targetRank === undefined) violations.push(`${rel} imports ${spec}: src/${entry} is not in the layering table`);
        else if (targetRank >= ownRank) violations.push(`${rel} imports ${spec} (${entry} is not above ${own})`);
      } else if (!spec.startsWith('node:')) {
        const pkg = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!;
        const owner = ownedPackages[pkg];
        if (owner && own !== owner) violations.push(`${rel} imports ${pkg}, which only src/${owner}/ may use`);
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

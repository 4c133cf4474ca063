import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { requireOrSkip } from '../helpers/requirements.js';

/**
 * Our proto/ copy of containerd's snapshots API against Debian's
 * (golang-github-containerd-containerd-dev, the containerd 1.6.20 we run):
 * every message's fields (name → number and type), the enum values and the
 * service's methods must be the same — they are the wire contract. The -dev
 * package pulls in over a hundred Go source packages, so it is not installed:
 * when it is absent the test takes Debian's files from the .deb itself
 * (`apt-get download`, `dpkg-deb -x`, about 600 KB).
 */
const run = promisify(execFile);
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const debianPackage = 'golang-github-containerd-containerd-dev';
const debianApi = 'usr/share/gocode/src/github.com/containerd/containerd/api';
const files = ['services/snapshots/v1/snapshots.proto', 'types/mount.proto'];

/** `message`/`enum` → "field = N" lines and `service` → rpc lines, from a .proto's text (comments and options dropped). */
function contract(text: string): Map<string, string[]> {
  const body = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '').replace(/\[[^\]]*\]/g, '');
  const out = new Map<string, string[]>();
  for (const m of body.matchAll(/\b(message|enum|service)\s+(\w+)\s*\{([^}]*)\}/g)) {
    const lines = m[3]!
      .split(';')
      .map((l) => l.replace(/\s+/g, ' ').trim())
      .filter((l) => l !== '' && !l.startsWith('option'))
      .map((l) => l.replace(/map<\s*(\w+)\s*,\s*(\w+)\s*>/, 'map<$1,$2>'))
      .sort();
    out.set(`${m[1]} ${m[2]}`, lines);
  }
  return out;
}

async function debianFiles(): Promise<{ root: string; cleanup: () => Promise<void> }> {
  if (existsSync(join('/', debianApi, files[0]!))) return { root: join('/', debianApi), cleanup: async () => undefined };
  const dir = await mkdtemp(join(tmpdir(), 'lazyroot-proto-'));
  await run('apt-get', ['download', debianPackage], { cwd: dir });
  const deb = (await readdir(dir)).find((n) => n.endsWith('.deb'))!;
  await run('dpkg-deb', ['-x', join(dir, deb), join(dir, 'x')]);
  return { root: join(dir, 'x', debianApi), cleanup: () => rm(dir, { recursive: true, force: true }) };
}

test("proto/: containerd's snapshots API, field for field as Debian's containerd 1.6 ships it", async (t) => {
  if (!requireOrSkip(t, { tools: ['apt-get', 'dpkg-deb'] })) return;
  const debian = await debianFiles();
  t.after(() => debian.cleanup());
  for (const path of files) {
    const ours = contract(await readFile(join(repoRoot, 'proto/containerd', path), 'utf8'));
    const theirs = contract(await readFile(join(debian.root, path), 'utf8'));
    assert.ok(theirs.size > 0, `read nothing from Debian's ${path}`);
    // Imports are spelled differently (our include root is proto/): compare what they name.
    const norm = (m: Map<string, string[]>) => new Map([...m].map(([k, v]) => [k, v.map((l) => l.replace(/\bcontainerd\.types\./g, 'types.'))]));
    assert.deepEqual(norm(ours), norm(theirs), path);
  }
});

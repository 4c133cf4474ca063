/**
 * `node mount-child.js MOUNTPOINT`: mounts the fixture tree there, prints
 * "ready" and serves until killed. The process stale-mount tests SIGKILL.
 * Without an argument it does nothing, so a test runner may load it safely.
 */
import { buildTree } from '../../../src/fs/tree.js';
import { mountTree } from '../../../src/fs/lazy-fs.js';
import { fixtureTree } from './fixture-tree.js';

const mountpoint = process.argv[2];
if (mountpoint) {
  const { entries, reader } = fixtureTree();
  await mountTree(buildTree(entries), mountpoint, reader, { timeoutMs: 5000 });
  process.stdout.write('ready\n');
}

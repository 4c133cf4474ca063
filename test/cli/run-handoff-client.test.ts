import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseMountArgs, parseRunArgs } from '../../src/cli/run-handoff-client.js';

test('only the plain form of run --lazy is handed to a standby; anything else is left to the CLI', () => {
  assert.deepEqual(parseRunArgs(['run', '--lazy', 'docker://r/i:1']), { ref: 'docker://r/i:1', args: [], insecure: false, remoteIndex: true });
  assert.deepEqual(parseRunArgs(['--store', '/s', '-q', 'run', '--lazy', '--insecure', '--no-remote-index', '--deadline-ms', '500', 'img', '--', 'sh', '-c', 'exit 3']), {
    store: '/s',
    ref: 'img',
    args: ['sh', '-c', 'exit 3'],
    insecure: true,
    remoteIndex: false,
    deadlineMs: 500,
  });
  assert.deepEqual(parseRunArgs(['--store=rel', 'run', '--deadline-ms=9', '--lazy', 'img', 'echo', 'hi']), { store: 'rel', ref: 'img', args: ['echo', 'hi'], insecure: false, remoteIndex: true, deadlineMs: 9 });
  for (const args of [
    ['run', 'img'], // not lazy
    ['run', '--lazy'], // no image
    ['pull', 'img'],
    ['--json', 'run', '--lazy', 'img'],
    ['run', '--lazy', '--creds', 'u:p', 'img'],
    ['run', '--lazy', '--uid-mapping', '0:1000:1', 'img'],
    ['run', '--lazy', '--help'],
    ['run', '--lazy', '--deadline-ms', 'soon', 'img'], // the CLI names the bad value
    ['run', '--lazy', '--deadline-ms', '0', 'img'],
    ['run', '--lazy', 'img', 'ls', '-l'], // an option after the image without `--`: commander's call
    ['--store', '', 'run', '--lazy', 'img'],
  ]) {
    assert.equal(parseRunArgs(args), undefined, args.join(' '));
  }
});

test('only the plain form of mount is handed to a standby', () => {
  assert.deepEqual(parseMountArgs(['--json', 'mount', '--no-prefetch', 'img', 'dir']), { json: true, quiet: false, ref: 'img', dir: 'dir', insecure: false, prefetch: false, remoteIndex: true });
  assert.deepEqual(parseMountArgs(['--store', '/s', '-q', 'mount', 'img', '--insecure', 'dir', '--deadline-ms', '9']), {
    store: '/s',
    json: false,
    quiet: true,
    ref: 'img',
    dir: 'dir',
    insecure: true,
    prefetch: true,
    remoteIndex: true,
    deadlineMs: 9,
  });
  for (const args of [['mount', 'img'], ['mount', '--stats', 'dir'], ['mount', '--foreground', 'img', 'dir'], ['mount', '--creds', 'u:p', 'img', 'dir'], ['mount', 'img', 'dir', 'extra'], ['umount', 'dir']]) {
    assert.equal(parseMountArgs(args), undefined, args.join(' '));
  }
});

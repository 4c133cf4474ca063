/**
 * A bearer token that expires during a long-lived lazy mount is renewed
 * without failing reads. The registry is the real docker-registry with token
 * auth; its token server issues tokens the registry accepts for 2 s (the JWT
 * `exp` says so), and the mount daemon reads on demand long after that.
 *
 * Two token services: one that says `expires_in: 2` (the client renews before
 * sending a dead token), and one that leaves `expires_in` out (the client
 * assumes 60 s, as the spec says, so the registry's 401 is what tells it the
 * token died: it fetches a new one and retries the read).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { buildEstargzImage, incompressible, type EstargzImage } from '../helpers/estargz.js';
import { dir, file } from '../helpers/tar-builder.js';
import { missingRequirements } from '../helpers/requirements.js';
import { lazyroot } from '../helpers/cli.js';

const missing = missingRequirements({ root: true, fuse: true, tools: ['docker-registry', 'openssl'] });
if (missing.length && process.env.CI) throw new Error(`CI: token renewal tests need ${missing.join(', ')}`);

const tokenTtlSeconds = 2;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const first = incompressible(256 * 1024, 'first');
const second = incompressible(1024 * 1024, 'second');

describe('a token that expires during a lazy mount is renewed without failing reads', { concurrency: true, skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let work: string;
  let image: EstargzImage;
  let told: TestRegistry;
  let silent: TestRegistry;
  const mounted: Array<{ target: string; store: string }> = [];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'lazyroot-token-renewal-'));
    // eStargz: each file is its own chunks, so a read fetches just that file's range.
    image = await buildEstargzImage([[dir('data'), file('data/first.bin', first), file('data/second.bin', second)]], { chunkSize: 256 * 1024 });
    [told, silent] = await Promise.all([
      startRegistry({ auth: 'token', tokenTtlSeconds }),
      startRegistry({ auth: 'token', tokenTtlSeconds, omitExpiresIn: true }),
    ]);
    await Promise.all([told.pushImage('renew/app', 'v1', image), silent.pushImage('renew/app', 'v1', image)]);
  });

  after(async () => {
    for (const m of mounted) await lazyroot(['--store', m.store, 'umount', m.target]);
    await told?.stop();
    await silent?.stop();
    await rm(work, { recursive: true, force: true });
  });

  /**
   * Mounts the image with the registry's credentials, reads one file, waits
   * until the token has died, reads another (not fetched yet) and checks its
   * bytes. Returns the registry's blob requests made for the second read.
   */
  async function readAcrossExpiry(registry: TestRegistry, name: string): Promise<string[]> {
    const store = join(work, `store-${name}`);
    const target = join(work, `mnt-${name}`);
    await mkdir(target);
    const { username, password } = registry.credentials!;
    const ref = `docker://${registry.host}/renew/app:v1`;
    const r = await lazyroot(['--store', store, 'mount', '--no-prefetch', '--creds', `${username}:${password}`, ref, target]);
    assert.equal(r.code, 0, r.stderr);
    mounted.push({ target, store });
    const daemonLog = () => readFile(join(store, 'mount-daemon.log'), 'utf8').catch(() => '');

    // Reads go through the thread pool: this process's event loop stays free for the token server.
    assert.ok((await readFile(join(target, 'data/first.bin'))).equals(first), 'first file');
    const tokensBefore = registry.tokenRequests().length;
    const logBefore = (await registry.accessLog()).length;
    await sleep(2 * tokenTtlSeconds * 1000);

    let read: Buffer;
    try {
      read = await readFile(join(target, 'data/second.bin'));
    } catch (err) {
      assert.fail(`reading after the token expired: ${(err as Error).message}\ndaemon log:\n${await daemonLog()}`);
    }
    assert.ok(read.equals(second), 'second file: exact bytes');

    const tokenRequests = registry.tokenRequests();
    assert.ok(tokenRequests.length > tokensBefore, `a new token was issued for the late read (${tokenRequests.length} token requests in all)`);
    assert.ok(tokenRequests.length > 1);
    const stats = await lazyroot(['--store', store, 'mount', '--stats', '--json', target]);
    assert.equal(stats.code, 0, stats.stderr);
    assert.equal((JSON.parse(stats.stdout) as { fs: { errors: number } }).fs.errors, 0, `no read failed\ndaemon log:\n${await daemonLog()}`);

    assert.equal((await lazyroot(['--store', store, 'umount', target])).code, 0);
    mounted.splice(mounted.findIndex((m) => m.target === target), 1);
    const layer = image.layerDigests[0]!;
    return (await registry.accessLog()).slice(logBefore).filter((line) => line.startsWith(`GET /v2/renew/app/blobs/${layer} `));
  }

  test('expires_in given: the token is renewed before the read, no request leaves with a dead one', async () => {
    const blobRequests = await readAcrossExpiry(told, 'told');
    assert.ok(blobRequests.length > 0, 'the second file was fetched after the wait');
    assert.ok(blobRequests.every((line) => line.endsWith(' 206')), blobRequests.join('\n'));
  });

  test('expires_in left out (assumed 60 s): the registry refuses the dead token, a new one is fetched and the read retried', async () => {
    const blobRequests = await readAcrossExpiry(silent, 'silent');
    assert.ok(blobRequests[0]?.endsWith(' 401'), `the dead token was refused first:\n${blobRequests.join('\n')}`);
    assert.ok(blobRequests.slice(1).length > 0 && blobRequests.slice(1).every((line) => line.endsWith(' 206')), blobRequests.join('\n'));
  });
});

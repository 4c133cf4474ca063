import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isLazyrootError } from '../../../src/errors.js';
import { authFilePaths, credentialsFromAuthDocument, findCredentials, normalizeAuthKey } from '../../../src/source/registry/credentials.js';

const basic = (user: string, password: string): string => Buffer.from(`${user}:${password}`).toString('base64');
let home: string;

before(async () => {
  home = await mkdtemp(join(tmpdir(), 'lazyroot-creds-'));
});
after(() => rm(home, { recursive: true, force: true }));

test('credentials: auth file keys normalize to registry[/namespace]', () => {
  assert.equal(normalizeAuthKey('https://index.docker.io/v1/'), 'docker.io');
  assert.equal(normalizeAuthKey('registry-1.docker.io'), 'docker.io');
  assert.equal(normalizeAuthKey('http://127.0.0.1:5000'), '127.0.0.1:5000');
  assert.equal(normalizeAuthKey('https://Quay.io/v2/'), 'quay.io');
  assert.equal(normalizeAuthKey('quay.io/team/'), 'quay.io/team');
});

test('credentials: auth (base64 user:pass, colons kept in the password) or username/password', () => {
  const doc = {
    auths: {
      'https://index.docker.io/v1/': { auth: basic('hubuser', 'p:a:ss') },
      'quay.io': { username: 'q', password: 'qp' },
      'quay.io/team': { auth: basic('teamuser', 'tp') },
      'ghcr.io': {},
    },
  };
  assert.deepEqual(credentialsFromAuthDocument(doc, 'docker.io', 'library/alpine'), { username: 'hubuser', password: 'p:a:ss' });
  assert.deepEqual(credentialsFromAuthDocument(doc, 'quay.io', 'team/app'), { username: 'teamuser', password: 'tp' }, 'the most specific key wins');
  assert.deepEqual(credentialsFromAuthDocument(doc, 'quay.io', 'other/app'), { username: 'q', password: 'qp' });
  assert.equal(credentialsFromAuthDocument(doc, 'ghcr.io', 'x/y'), undefined, 'credsStore placeholders carry nothing');
  assert.equal(credentialsFromAuthDocument({}, 'quay.io', 'x'), undefined);
});

test('credentials: files in containers/image order', () => {
  assert.deepEqual(authFilePaths({ env: { HOME: '/h', XDG_RUNTIME_DIR: '/run/user/1' } }), [
    '/run/user/1/containers/auth.json',
    '/h/.config/containers/auth.json',
    '/h/.docker/config.json',
  ]);
  assert.deepEqual(authFilePaths({ env: { HOME: '/h', REGISTRY_AUTH_FILE: '/a.json', XDG_RUNTIME_DIR: '/run', DOCKER_CONFIG: '/d' } }), [
    '/a.json',
    '/h/.config/containers/auth.json',
    '/d/config.json',
  ]);
  assert.deepEqual(authFilePaths({ authFile: '/only.json', env: { HOME: '/h' } }), ['/only.json']);
});

test('credentials: the first file with an entry for the registry wins; missing files are skipped', async () => {
  await mkdir(join(home, '.config', 'containers'), { recursive: true });
  await writeFile(join(home, '.config', 'containers', 'auth.json'), JSON.stringify({ auths: { 'quay.io': { auth: basic('podman', '1') } } }));
  await mkdir(join(home, '.docker'), { recursive: true });
  await writeFile(
    join(home, '.docker', 'config.json'),
    JSON.stringify({ auths: { 'quay.io': { auth: basic('docker', '2') }, 'https://index.docker.io/v1/': { auth: basic('hub', '3') } } }),
  );
  const env = { HOME: home, XDG_RUNTIME_DIR: join(home, 'missing-runtime') };
  assert.deepEqual(await findCredentials('quay.io', 'a/b', { env }), {
    credentials: { username: 'podman', password: '1' },
    file: join(home, '.config', 'containers', 'auth.json'),
  });
  assert.deepEqual((await findCredentials('docker.io', 'library/alpine', { env }))?.credentials, { username: 'hub', password: '3' });
  assert.equal(await findCredentials('ghcr.io', 'a/b', { env }), undefined);
});

test('credentials: a broken auth file is an error naming it', async () => {
  const broken = join(home, 'broken.json');
  await writeFile(broken, '{"auths": ');
  await assert.rejects(findCredentials('quay.io', 'a', { authFile: broken }), (e) => isLazyrootError(e, 'INVALID_ARGUMENT') && e.message.includes(broken));
});

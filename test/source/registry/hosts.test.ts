import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LazyrootError } from '../../../src/errors.js';
import { defaultHostsDir, hostUrl, hostsDirFrom, loadRegistryHosts, parseHostsToml } from '../../../src/source/registry/hosts.js';

const at = '/etc/lazyroot/certs.d/registry.example.com/hosts.toml';

test('hosts.toml: mirrors in the order written, each with its capabilities, the server last', () => {
  const hosts = parseHostsToml(
    [
      'server = "https://registry.example.com"',
      '',
      '[host."http://mirror-b.local:5000"]',
      '  capabilities = ["pull", "resolve"]',
      '',
      '[host."https://mirror-a.local"]',
      '  capabilities = ["pull"]',
      '  skip_verify = true',
      '  ca = "mirror-a.pem"',
      '',
      '[host."https://cache.local/some/prefix"]',
      '  ca = ["/abs/one.pem", "two.pem"]',
      '  [host."https://cache.local/some/prefix".header]',
      '    x-tenant = "blue"',
    ].join('\n'),
    at,
    'registry.example.com',
  );
  assert.deepEqual(
    hosts.map((h) => [h.origin, h.apiPath, [...h.capabilities].sort().join(','), h.mirror]),
    [
      ['http://mirror-b.local:5000', '/v2', 'pull,resolve', true],
      ['https://mirror-a.local', '/v2', 'pull', true],
      ['https://cache.local', '/some/prefix/v2', 'pull,push,resolve', true],
      ['https://registry.example.com', '/v2', 'pull,push,resolve', false],
    ],
  );
  assert.equal(hosts[0]!.scheme, 'http');
  assert.equal(hosts[0]!.host, 'mirror-b.local:5000');
  assert.equal(hosts[1]!.skipVerify, true);
  assert.deepEqual(hosts[1]!.ca, ['/etc/lazyroot/certs.d/registry.example.com/mirror-a.pem'], 'relative ca paths are beside the file');
  assert.deepEqual(hosts[2]!.ca, ['/abs/one.pem', '/etc/lazyroot/certs.d/registry.example.com/two.pem']);
  assert.deepEqual(hosts[2]!.headers, { 'x-tenant': 'blue' });
  assert.equal(hosts[3]!.discoverScheme, undefined, 'a server given is used as written');
});

test('hosts.toml: without `server` the registry itself is the upstream (scheme found as without the file); override_path; Docker Hub', () => {
  const hosts = parseHostsToml('[host."http://127.0.0.1:6000/cache/v2"]\n  override_path = true\n', at, '127.0.0.1:5000');
  assert.equal(hosts.length, 2);
  assert.equal(hosts[0]!.apiPath, '/cache/v2');
  assert.equal(hosts[1]!.host, '127.0.0.1:5000');
  assert.equal(hosts[1]!.discoverScheme, true);
  assert.equal(hosts[1]!.mirror, false);
  const hub = parseHostsToml('[host."https://mirror.gcr.io"]\n', at, 'docker.io');
  assert.equal(hub[1]!.host, 'registry-1.docker.io', "Docker Hub's API host");
  // A path not ending in /v2 gets it appended, as containerd does.
  assert.equal(parseHostsToml('[host."https://m.local/prefix/"]\n', at, 'r.io')[0]!.apiPath, '/prefix/v2');
  // An empty file: just the upstream.
  assert.deepEqual(parseHostsToml('', at, 'r.io').map((h) => h.origin), ['https://r.io']);
});

test('ns=: requests to a mirror name the upstream registry; requests to the upstream do not', () => {
  const [mirror, upstream] = parseHostsToml('[host."http://mirror.local:5000"]\n', at, 'docker.io');
  const url = hostUrl(mirror!, 'docker.io', 'library/alpine', 'blobs/sha256:abc');
  assert.equal(url.toString(), 'http://mirror.local:5000/v2/library/alpine/blobs/sha256:abc?ns=docker.io');
  assert.equal(hostUrl(upstream!, 'docker.io', 'library/alpine', 'manifests/3.20').toString(), 'https://registry-1.docker.io/v2/library/alpine/manifests/3.20');
  const [withPort] = parseHostsToml('[host."http://m.local"]\n', at, '127.0.0.1:5000');
  assert.equal(hostUrl(withPort!, '127.0.0.1:5000', 'app', 'manifests/v1').searchParams.get('ns'), '127.0.0.1:5000');
});

test('a malformed hosts.toml is refused naming the file and the problem', () => {
  const cases: Array<[string, RegExp]> = [
    ['[host."http://m.local"\ncapabilities = ["pull"]', /not valid TOML/],
    ['[host."http://m.local"]\ncapabilities = ["pull", "fly"]', /host "http:\/\/m\.local": unknown capability "fly"/],
    ['[host."http://m.local"]\ncapabilities = "pull"', /"capabilities" must be a list of strings/],
    ['[host."m.local:5000"]\n', /"m\.local:5000": only http and https hosts|is not a URL/],
    ['[host."not a url"]\n', /"not a url" is not a URL/],
    ['[host."ftp://m.local"]\n', /only http and https hosts are supported/],
    ['server = 5', /"server" must be a string/],
    ['[host."http://m.local"]\nskip_verify = "yes"', /"skip_verify" must be true or false/],
    ['mirrors = ["http://m.local"]', /unknown key "mirrors"/],
  ];
  for (const [text, message] of cases) {
    assert.throws(
      () => parseHostsToml(text, at, 'registry.example.com'),
      (err: unknown) => {
        assert.ok(err instanceof LazyrootError, String(err));
        assert.equal(err.code, 'INVALID_DATA');
        assert.ok(err.message.startsWith(`registry hosts file ${at}: `), err.message);
        assert.match(err.message, message);
        return true;
      },
      text,
    );
  }
});

test('loadRegistryHosts: <dir>/<registry>/hosts.toml, else <dir>/_default/hosts.toml, else none; the hosts dir from the option or LAZYROOT_HOSTS_DIR', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazyroot-hosts-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  assert.equal(loadRegistryHosts('127.0.0.1:5000', dir), undefined);
  await mkdir(join(dir, '127.0.0.1:5000'));
  await writeFile(join(dir, '127.0.0.1:5000', 'hosts.toml'), '[host."http://127.0.0.1:6000"]\ncapabilities = ["pull"]\n');
  assert.deepEqual(loadRegistryHosts('127.0.0.1:5000', dir)?.map((h) => h.origin), ['http://127.0.0.1:6000', 'https://127.0.0.1:5000']);
  assert.equal(loadRegistryHosts('other.io', dir), undefined);
  await mkdir(join(dir, '_default'));
  await writeFile(join(dir, '_default', 'hosts.toml'), '[host."https://all.local"]\n');
  assert.deepEqual(loadRegistryHosts('other.io', dir)?.map((h) => h.origin), ['https://all.local', 'https://other.io']);

  assert.equal(hostsDirFrom('/opt/x', { LAZYROOT_HOSTS_DIR: '/opt/y' }), '/opt/x');
  assert.equal(hostsDirFrom(undefined, { LAZYROOT_HOSTS_DIR: '/opt/y' }), '/opt/y');
  assert.equal(hostsDirFrom(undefined, {}), defaultHostsDir);
  assert.equal(defaultHostsDir, '/etc/lazyroot/certs.d');
});

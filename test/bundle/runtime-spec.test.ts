import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildRuntimeSpec, type RuntimeSpecOptions } from '../../src/bundle/runtime-spec.js';
import { defaultPath } from '../../src/bundle/linux-defaults.js';
import { LazyrootError } from '../../src/errors.js';
import type { ContainerConfig, ImageConfig } from '../../src/oci/types.js';

function imageWith(config: ContainerConfig | undefined): ImageConfig {
  return { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, ...(config ? { config } : {}) };
}

const root = { uid: 0, gid: 0, additionalGids: [], home: '/root' };
const base: RuntimeSpecOptions = { rootfsPath: 'rootfs', user: root };

function specFor(config: ContainerConfig | undefined, options: Partial<RuntimeSpecOptions> = {}) {
  return buildRuntimeSpec(imageWith(config), { ...base, ...options });
}

test('args: Cmd alone, Entrypoint alone, Entrypoint + Cmd', () => {
  assert.deepEqual(specFor({ Cmd: ['/bin/cat', '/etc/motd'] }).process.args, ['/bin/cat', '/etc/motd']);
  assert.deepEqual(specFor({ Entrypoint: ['/bin/echo'] }).process.args, ['/bin/echo']);
  assert.deepEqual(specFor({ Entrypoint: ['/bin/echo', '-n'], Cmd: ['hi'] }).process.args, ['/bin/echo', '-n', 'hi']);
  assert.deepEqual(specFor({ Entrypoint: null, Cmd: ['/bin/sh'] }).process.args, ['/bin/sh']);
});

test('args given replace Cmd but keep Entrypoint, like docker run IMAGE ARGS', () => {
  assert.deepEqual(specFor({ Cmd: ['/bin/sh'] }, { args: ['/bin/id', '-u'] }).process.args, ['/bin/id', '-u']);
  assert.deepEqual(specFor({ Entrypoint: ['/bin/echo'], Cmd: ['default'] }, { args: ['given'] }).process.args, ['/bin/echo', 'given']);
  // No args at all means the image's Cmd, as in containerd.
  assert.deepEqual(specFor({ Cmd: ['/bin/sh'] }, { args: [] }).process.args, ['/bin/sh']);
});

test('nothing to run is an error naming the image', () => {
  for (const config of [undefined, {}, { Entrypoint: [], Cmd: [] }, { Entrypoint: null, Cmd: null }]) {
    assert.throws(
      () => specFor(config, { imageName: 'example.com/empty:1' }),
      (err: unknown) => err instanceof LazyrootError && err.code === 'INVALID_ARGUMENT' && /example\.com\/empty:1.*no Entrypoint or Cmd/.test(err.message),
    );
  }
});

test('env: PATH added when the image has none, HOME from the user when missing', () => {
  const env = specFor({ Cmd: ['x'], Env: ['A=1'] }).process.env;
  assert.deepEqual(env, ['A=1', `PATH=${defaultPath}`, 'HOME=/root']);
});

test('env: the image\'s own PATH and HOME win', () => {
  const env = specFor({ Cmd: ['x'], Env: ['PATH=/opt/bin', 'HOME=/srv', 'B=2'] }).process.env;
  assert.deepEqual(env, ['PATH=/opt/bin', 'HOME=/srv', 'B=2']);
});

test('env: HOME is / for a user without a passwd entry (runc\'s fallback)', () => {
  const env = specFor({ Cmd: ['x'] }, { user: { uid: 4242, gid: 0, additionalGids: [] } }).process.env;
  assert.deepEqual(env, [`PATH=${defaultPath}`, 'HOME=/']);
});

test('env: a variable whose name only starts with PATH is not PATH', () => {
  const env = specFor({ Cmd: ['x'], Env: ['PATHS=a', 'HOMEDIR=b'] }).process.env;
  assert.ok(env.includes(`PATH=${defaultPath}`));
  assert.ok(env.includes('HOME=/root'));
});

test('cwd: WorkingDir, "/" without one, relative ones read from "/"', () => {
  assert.equal(specFor({ Cmd: ['x'], WorkingDir: '/srv/app' }).process.cwd, '/srv/app');
  assert.equal(specFor({ Cmd: ['x'] }).process.cwd, '/');
  assert.equal(specFor({ Cmd: ['x'], WorkingDir: '' }).process.cwd, '/');
  assert.equal(specFor({ Cmd: ['x'], WorkingDir: 'app/' }).process.cwd, '/app');
});

test('user, root, hostname and read-only rootfs are as given', () => {
  const spec = specFor(
    { Cmd: ['x'] },
    { user: { uid: 1000, gid: 1000, additionalGids: [10, 20] }, rootfsPath: '/abs/rootfs', hostname: 'box', readonlyRootfs: true },
  );
  assert.deepEqual(spec.process.user, { uid: 1000, gid: 1000, additionalGids: [10, 20] });
  assert.deepEqual(spec.root, { path: '/abs/rootfs', readonly: true });
  assert.equal(spec.hostname, 'box');
  const plain = specFor({ Cmd: ['x'] });
  assert.deepEqual(plain.root, { path: 'rootfs' });
  assert.equal('hostname' in plain, false);
});

test('defaults: version, no terminal, namespaces, mounts, caps, rlimits, masked paths', () => {
  const spec = specFor({ Cmd: ['x'] });
  assert.equal(spec.ociVersion, '1.0.2');
  assert.equal(spec.process.terminal, false);
  assert.equal(spec.process.noNewPrivileges, true);
  assert.deepEqual(spec.linux.namespaces.map((n) => n.type), ['pid', 'ipc', 'uts', 'mount', 'network']);
  assert.deepEqual(spec.mounts.map((m) => m.destination), ['/proc', '/dev', '/dev/pts', '/dev/shm', '/dev/mqueue', '/sys', '/sys/fs/cgroup']);
  for (const ro of ['/sys', '/sys/fs/cgroup']) assert.ok(spec.mounts.find((m) => m.destination === ro)!.options!.includes('ro'), ro);
  assert.equal(spec.process.capabilities.bounding.length, 14);
  assert.ok(spec.process.capabilities.bounding.includes('CAP_NET_BIND_SERVICE'));
  assert.ok(!spec.process.capabilities.bounding.includes('CAP_SYS_ADMIN'));
  assert.deepEqual(spec.process.capabilities.effective, spec.process.capabilities.bounding);
  assert.deepEqual(spec.process.rlimits, [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }]);
  assert.ok(spec.linux.maskedPaths.includes('/proc/kcore'));
  assert.ok(spec.linux.readonlyPaths.includes('/proc/sys'));
  assert.deepEqual(spec.linux.resources.devices, [{ allow: false, access: 'rwm' }]);
  assert.equal(spec.linux.uidMappings, undefined);
});

test('specs do not share mutable default lists', () => {
  const a = specFor({ Cmd: ['x'] });
  a.mounts.pop();
  a.process.capabilities.bounding.pop();
  a.linux.maskedPaths.pop();
  const b = specFor({ Cmd: ['x'] });
  assert.equal(b.mounts.length, 7);
  assert.equal(b.process.capabilities.bounding.length, 14);
  assert.ok(b.linux.maskedPaths.includes('/sys/devices/virtual/powercap'));
});

test('uid/gid mappings add a user namespace; one without the other is an error', () => {
  const map = [{ containerID: 0, hostID: 100000, size: 65536 }];
  const spec = specFor({ Cmd: ['x'] }, { uidMappings: map, gidMappings: map });
  assert.ok(spec.linux.namespaces.some((n) => n.type === 'user'));
  assert.deepEqual(spec.linux.uidMappings, map);
  assert.deepEqual(spec.linux.gidMappings, map);
  assert.throws(() => specFor({ Cmd: ['x'] }, { uidMappings: map }), /both uid and gid mappings/);
});

test('the spec is plain JSON', () => {
  const spec = specFor({ Cmd: ['x'], Env: ['A=1'] }, { hostname: 'h' });
  assert.deepEqual(JSON.parse(JSON.stringify(spec)), spec);
});

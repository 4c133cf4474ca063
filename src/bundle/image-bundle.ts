import { randomBytes } from 'node:crypto';
import { tracePhase } from '../trace.js';
import { rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { LazyrootError } from '../errors.js';
import { createRootfs, deleteRootfs, type CreateOptions } from '../rootfs/rootfs.js';
import type { Store } from '../store/store.js';
import { runBundle, writeBundle, type RunBundleOptions } from './bundle.js';
import { buildRuntimeSpec, type RuntimeSpec } from './runtime-spec.js';
import { resolveUser } from './user.js';

export interface BundleOptions extends CreateOptions {
  /** Rootfs ID (default: derived from the bundle directory). */
  id?: string;
  /** Replaces the image's Cmd (Entrypoint stays), like `docker run IMAGE CMD…`. */
  args?: string[];
}

/**
 * `lazyroot bundle REF DIR`: an OCI runtime bundle runc can run, with the
 * image's rootfs mounted at DIR/rootfs and DIR/config.json built from the
 * image config (entrypoint, cmd, env, working dir, user from the image's own
 * /etc/passwd and /etc/group).
 */
export async function makeBundle(store: Store, ref: string, dir: string, options: BundleOptions & { ephemeral?: boolean } = {}): Promise<{ rootfsId: string; spec: RuntimeSpec }> {
  const bundleDir = resolve(dir);
  if (options.mapping) await checkTraversable(dirname(bundleDir));
  const rootfsId = options.id ?? `bundle-${randomBytes(6).toString('hex')}`;
  tracePhase('bundle: creating the rootfs');
  // What the container runs: its start is read ahead while the lazy mount is made.
  const lazy = options.lazy ? { lazy: { ...options.lazy, command: options.args ?? [] } } : {};
  const { rootfs, spec: fragment } = await createRootfs(store, ref, rootfsId, { ...options, ...lazy, mountPoint: join(bundleDir, 'rootfs') });
  try {
    tracePhase('bundle: rootfs ready');
    const image = store.db.imageById(rootfs.imageId)!;
    const config = await store.configOf(image);
    const user = await resolveUser(config.config?.User, fragment.root.path, { image: image.names[0] ?? image.id });
    const spec = buildRuntimeSpec(config, {
      rootfsPath: 'rootfs',
      user,
      imageName: image.names[0] ?? image.id,
      ...(options.args && options.args.length ? { args: options.args } : {}),
      ...(options.mapping ? { uidMappings: options.mapping.uids.map(toSpec), gidMappings: options.mapping.gids.map(toSpec) } : {}),
    });
    await writeBundle(bundleDir, spec, { durable: !options.ephemeral });
    tracePhase('bundle: written');
    return { rootfsId, spec };
  } catch (err) {
    await deleteRootfs(store, rootfsId).catch(() => undefined);
    throw err;
  }
}

/**
 * In a user namespace the container's root is an unprivileged host user: every
 * directory above the bundle must let others through (o+x), or runc fails
 * with a bare "permission denied" while mounting the rootfs.
 */
async function checkTraversable(dir: string): Promise<void> {
  for (let d = dir; ; d = dirname(d)) {
    const mode = (await stat(d).catch(() => undefined))?.mode;
    if (mode !== undefined && (mode & 0o001) === 0) {
      throw new LazyrootError('FAILED_PRECONDITION', `${d} (mode ${(mode & 0o777).toString(8)}) cannot be traversed by the mapped root user: a container in a user namespace could not reach its rootfs; chmod o+x it or use another --store`);
    }
    if (d === dirname(d)) return;
  }
}

function toSpec(r: { containerId: number; hostId: number; size: number }) {
  return { containerID: r.containerId, hostID: r.hostId, size: r.size };
}

/**
 * `lazyroot run REF [-- CMD…]`: a bundle in the store's tmp/, run with runc,
 * then removed. Resolves to the command's exit code (128+N for signal N).
 */
export async function runImage(store: Store, ref: string, options: BundleOptions & { stdio?: RunBundleOptions['stdio']; signal?: AbortSignal } = {}): Promise<number> {
  const name = `run-${randomBytes(6).toString('hex')}`;
  const dir = join(store.paths.tmp, name);
  const { rootfsId } = await makeBundle(store, ref, dir, { ...options, id: name, ephemeral: true });
  try {
    return await runBundle(dir, name, { ...(options.stdio ? { stdio: options.stdio } : {}), ...(options.signal ? { signal: options.signal } : {}) });
  } finally {
    tracePhase('run: runc exited');
    // Not asked whether a process still uses it (a walk over /proc): `runc run` has returned, and
    // with the container's init its PID namespace and every process in it are gone.
    await deleteRootfs(store, rootfsId, { force: true });
    tracePhase('run: rootfs deleted');
    await rm(dir, { recursive: true, force: true });
  }
}

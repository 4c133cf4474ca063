import { posix } from 'node:path';
import { LazyrootError } from '../errors.js';
import type { ImageConfig } from '../oci/types.js';
import {
  defaultCapabilities,
  defaultMaskedPaths,
  defaultMounts,
  defaultNamespaces,
  defaultNofile,
  defaultPath,
  defaultReadonlyPaths,
} from './linux-defaults.js';
import type { ContainerUser } from './user.js';

/**
 * The part of the OCI runtime spec (config.json, version 1.0.2) that lazyroot
 * writes. Field names are the spec's JSON names.
 */
export interface RuntimeSpec {
  ociVersion: string;
  process: RuntimeProcess;
  root: { path: string; readonly?: boolean };
  hostname?: string;
  mounts: RuntimeMount[];
  linux: RuntimeLinux;
}

export interface RuntimeProcess {
  terminal: boolean;
  user: { uid: number; gid: number; additionalGids?: number[] };
  args: string[];
  env: string[];
  cwd: string;
  capabilities: { bounding: string[]; effective: string[]; permitted: string[] };
  rlimits: { type: string; hard: number; soft: number }[];
  noNewPrivileges: boolean;
}

export interface RuntimeMount {
  destination: string;
  type: string;
  source: string;
  options?: string[];
}

export interface IdMapping {
  containerID: number;
  hostID: number;
  size: number;
}

export interface RuntimeLinux {
  namespaces: { type: string; path?: string }[];
  uidMappings?: IdMapping[];
  gidMappings?: IdMapping[];
  maskedPaths: string[];
  readonlyPaths: string[];
  resources: { devices: { allow: boolean; access: string; type?: string; major?: number; minor?: number }[] };
}

export interface RuntimeSpecOptions {
  /** root.path: absolute, or relative to the bundle directory. */
  rootfsPath: string;
  /** Replaces the image's Cmd (not its Entrypoint), like `docker run IMAGE ARGS...`. */
  args?: string[];
  hostname?: string;
  readonlyRootfs?: boolean;
  /** Both given: the container gets a user namespace with these mappings. */
  uidMappings?: IdMapping[];
  gidMappings?: IdMapping[];
  /** From resolveUser() on the image's User. */
  user: ContainerUser;
  /** Only pipes for now; a terminal needs a console socket. */
  terminal?: false;
  /** Names the image in error messages. */
  imageName?: string;
}

export const runtimeSpecVersion = '1.0.2';

/**
 * Builds config.json for an image, as containerd's default Unix spec with
 * `WithImageConfigArgs` does: Entrypoint + (args or Cmd), the image's Env with
 * PATH and HOME filled in, WorkingDir, and Docker's default confinement.
 */
export function buildRuntimeSpec(image: ImageConfig, options: RuntimeSpecOptions): RuntimeSpec {
  const config = image.config ?? {};
  const what = options.imageName ? `image ${options.imageName}` : 'image';

  const command = options.args && options.args.length > 0 ? options.args : (config.Cmd ?? []);
  const args = [...(config.Entrypoint ?? []), ...command];
  if (args.length === 0) {
    throw new LazyrootError('INVALID_ARGUMENT', `${what}: nothing to run: the image has no Entrypoint or Cmd and no command was given`);
  }

  const namespaces: RuntimeLinux['namespaces'] = defaultNamespaces.map((type) => ({ type }));
  const userns = userNamespace(options, what);
  if (userns) namespaces.push({ type: 'user' });

  const caps = [...defaultCapabilities];
  return {
    ociVersion: runtimeSpecVersion,
    process: {
      terminal: false,
      user: { uid: options.user.uid, gid: options.user.gid, additionalGids: [...options.user.additionalGids] },
      args,
      env: containerEnv(config.Env ?? [], options.user),
      cwd: workingDir(config.WorkingDir),
      capabilities: { bounding: caps, effective: [...caps], permitted: [...caps] },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: defaultNofile, soft: defaultNofile }],
      noNewPrivileges: true,
    },
    root: { path: options.rootfsPath, ...(options.readonlyRootfs ? { readonly: true } : {}) },
    ...(options.hostname !== undefined ? { hostname: options.hostname } : {}),
    mounts: defaultMounts(),
    linux: {
      namespaces,
      ...userns,
      maskedPaths: [...defaultMaskedPaths],
      readonlyPaths: [...defaultReadonlyPaths],
      // Deny every device; runc then allows its standard set (null, zero, full, tty, random, urandom, ptmx).
      resources: { devices: [{ allow: false, access: 'rwm' }] },
    },
  };
}

/** The image's Env, plus PATH and HOME when it sets neither (Docker does the same). */
function containerEnv(imageEnv: string[], user: ContainerUser): string[] {
  const has = (key: string) => imageEnv.some((e) => e.startsWith(`${key}=`));
  const env = [...imageEnv];
  if (!has('PATH')) env.push(`PATH=${defaultPath}`);
  // runc's own fallback for a user without a passwd entry is "/".
  if (!has('HOME')) env.push(`HOME=${user.home ?? '/'}`);
  return env;
}

/** runc needs an absolute cwd; Docker reads a relative WorkingDir from "/". */
function workingDir(dir: string | undefined): string {
  if (!dir) return '/';
  return posix.resolve('/', dir);
}

function userNamespace(options: RuntimeSpecOptions, what: string): Pick<RuntimeLinux, 'uidMappings' | 'gidMappings'> | undefined {
  const { uidMappings, gidMappings } = options;
  if (!uidMappings?.length && !gidMappings?.length) return undefined;
  if (!uidMappings?.length || !gidMappings?.length) {
    throw new LazyrootError('INVALID_ARGUMENT', `${what}: a user namespace needs both uid and gid mappings`);
  }
  return { uidMappings: uidMappings.map((m) => ({ ...m })), gidMappings: gidMappings.map((m) => ({ ...m })) };
}

/**
 * The confinement every container gets by default, as Docker and containerd
 * give it (containerd `pkg/oci/spec.go` and `mounts.go`, moby
 * `oci/defaults.go`). Kept as data so a reader can compare them line by line.
 */
import type { RuntimeMount } from './runtime-spec.js';

/** `PATH` for images whose Env has none (the same on every Docker-compatible runtime). */
export const defaultPath = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * Docker's default capabilities, which containerd 1.x also used. containerd
 * 2.0 dropped MKNOD, NET_RAW, SETFCAP, SYS_CHROOT and AUDIT_WRITE; we keep
 * Docker's set because images built and tested under Docker expect it.
 */
export const defaultCapabilities: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

/**
 * New pid, ipc, uts, mount and network namespaces. A network namespace with no
 * path is a fresh one; runc brings its loopback up and adds nothing else.
 */
export const defaultNamespaces = ['pid', 'ipc', 'uts', 'mount', 'network'] as const;

export function defaultMounts(): RuntimeMount[] {
  return [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    {
      destination: '/dev/pts',
      type: 'devpts',
      source: 'devpts',
      // gid=5 is the conventional tty group; newinstance keeps the host's ptys out.
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
    },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    // runc mounts the container's own cgroups here (v1 or v2), read-only.
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
  ];
}

/** Kernel interfaces that leak host information or are unsafe: hidden (bind of /dev/null or an empty tmpfs). */
export const defaultMaskedPaths: readonly string[] = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/devices/virtual/powercap',
];

/** Kernel interfaces a container may read but must not change. */
export const defaultReadonlyPaths: readonly string[] = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

/** Open files per process; Docker's and containerd's default soft and hard limit. */
export const defaultNofile = 1024;

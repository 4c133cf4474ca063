import { processAlive } from '../process-alive.js';
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { awaitReady, type DaemonReady, type MountRequest } from './daemon-channel.js';
import { daemonNodeFlags } from './daemon-memory.js';

/**
 * A warm standby mount daemon. Most of a mount daemon's start is Node loading
 * modules (undici, fuse-native, SQLite, ours: ~0.25 s of CPU); the mount
 * itself takes a few milliseconds. So after a daemon is ready it leaves one
 * standby behind that has loaded everything and waits on a Unix socket; the
 * next `mount` hands it the request and it becomes that mount's daemon (one
 * mount per process, as before), leaving a new standby in turn. Like the
 * long-running daemons of containerd's snapshotters, minus the shared fate:
 * a crash takes down one mount, not all.
 *
 * `LAZYROOT_STANDBY=0` turns it off; `LAZYROOT_STANDBY_DIR` moves the socket
 * (default /run/lazyroot for root, else $TMPDIR/lazyroot-UID); an unclaimed
 * standby exits after `LAZYROOT_STANDBY_IDLE_MS` (default 10 minutes). The
 * socket's name carries a stamp of this build, so a standby of older code is
 * never used.
 */
export function standbyEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.LAZYROOT_STANDBY !== '0';
}

export function standbyPaths(env: NodeJS.ProcessEnv = process.env): { dir: string; socket: string; pidFile: string; startingFile: string } {
  const uid = process.getuid?.() ?? 0;
  const dir = env.LAZYROOT_STANDBY_DIR ?? (uid === 0 ? '/run/lazyroot' : join(tmpdir(), `lazyroot-${uid}`));
  // This file's inode and mtime (ms), in hex: native/front.c finds the socket the same way.
  const self = statSync(fileURLToPath(import.meta.url), { bigint: true });
  const stamp = `${self.ino.toString(16)}-${(self.mtimeNs / 1_000_000n).toString(16)}`;
  return { dir, socket: join(dir, `standby-${stamp}.sock`), pidFile: join(dir, `standby-${stamp}.pid`), startingFile: join(dir, `standby-${stamp}.starting`) };
}

/** The pid of a live standby still loading and warming up, if there is one. */
function startingPid(): number | undefined {
  try {
    const pid = Number(readFileSync(standbyPaths().startingFile, 'utf8'));
    return Number.isInteger(pid) && pid > 0 && processAlive(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * In a new standby, before it loads and warms up (a second or so): marks it
 * as the one on its way, so that mounts ending meanwhile do not start more
 * (spawnStandby). False when another live one is on its way already: this
 * one should end at once. A marker left by a dead one is taken over.
 */
export function claimStarting(): boolean {
  const { dir, startingFile } = standbyPaths();
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(startingFile, String(process.pid), { flag: 'wx' });
      process.once('exit', releaseStarting);
      return true;
    } catch {
      if (startingPid() !== undefined) return false;
      rmSync(startingFile, { force: true }); // its standby died on the way
    }
  }
  return false;
}

/** The marker of claimStarting, removed if it is this process's. */
export function releaseStarting(): void {
  try {
    const { startingFile } = standbyPaths();
    if (readFileSync(startingFile, 'utf8').trim() === String(process.pid)) rmSync(startingFile, { force: true });
  } catch {
    // gone already
  }
}

function setPriorityQuietly(pid: number, priority: number): void {
  try {
    setPriority(pid, priority);
  } catch {
    // not allowed (raising priority needs CAP_SYS_NICE): it only costs speed
  }
}


/**
 * Sets the priority of every thread of this process. Linux's setpriority(2)
 * on a pid moves only the thread with that id: the threads libuv (zlib,
 * hashing, file I/O) and V8 (compiler, GC) started while the standby was
 * niced would stay at 19 and starve once the standby serves a mount.
 */
function setThreadsPriority(priority: number): void {
  let tids: string[];
  try {
    tids = readdirSync('/proc/self/task');
  } catch {
    tids = [String(process.pid)];
  }
  for (const tid of tids) setPriorityQuietly(Number(tid), priority);
}

/** The pid of the live standby, if there is one. */
export function standbyPid(env: NodeJS.ProcessEnv = process.env): number | undefined {
  try {
    const pid = Number(readFileSync(standbyPaths(env).pidFile, 'utf8'));
    return Number.isInteger(pid) && pid > 0 && processAlive(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Hands `request` to the standby. Resolves with the daemon's pid once the
 * mount is ready, or undefined when no standby took it (none listening, or
 * another caller got it first): the caller then starts a daemon itself. Once
 * the standby has accepted the request its failure is the mount's failure.
 */
export async function claimStandby(request: MountRequest, timeoutMs: number): Promise<DaemonReady | undefined> {
  if (!standbyEnabled()) return undefined;
  const socket = await new Promise<Socket | undefined>((resolve) => {
    const s = connect(standbyPaths().socket);
    s.once('connect', () => resolve(s));
    s.once('error', () => resolve(undefined));
  });
  if (!socket) return undefined;
  let accepted = false;
  socket.on('error', () => undefined); // surfaces as 'close'
  try {
    socket.write(`${JSON.stringify(request)}\n`);
    return await awaitReady(socket, timeoutMs, () => (accepted = true));
  } catch (err) {
    if (!accepted) return undefined;
    throw err;
  } finally {
    socket.destroy();
  }
}

/**
 * In a standby: listen until one caller connects, then stop listening (the
 * socket is gone before the mount starts, so the next caller spawns or finds
 * the next standby) and return its connection. Undefined when another live
 * standby holds the socket, or nobody came within the idle time.
 */
export async function awaitAssignment(idleMs = Number(process.env.LAZYROOT_STANDBY_IDLE_MS ?? 600_000)): Promise<Socket | undefined> {
  const { dir, socket, pidFile } = standbyPaths();
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (standbyPid() !== undefined) return undefined;
  rmSync(socket, { force: true }); // left by a standby that died
  const server = createServer();
  const listening = await new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(socket, () => resolve(true));
  });
  if (!listening) return undefined;
  // Loaded (and warmed up) at the lowest priority; waiting at the normal one: a niced standby on a
  // busy machine took up to 0.7 s to notice its caller (measured). Root may raise it back; others stay niced.
  setThreadsPriority(0);
  writeFileSync(pidFile, String(process.pid));
  releaseStarting();
  const release = () => {
    server.close();
    // Only ours: a newer standby may have taken the names already.
    let holder = '';
    try {
      holder = readFileSync(pidFile, 'utf8').trim();
    } catch {
      // gone already
    }
    if (holder === String(process.pid)) {
      rmSync(pidFile, { force: true });
      rmSync(socket, { force: true });
    }
  };
  return new Promise<Socket | undefined>((resolve) => {
    // Idle too long, or told to stop: clean up the names and end.
    const stop = () => {
      clearTimeout(idle);
      release();
      resolve(undefined);
    };
    const idle = setTimeout(stop, idleMs);
    process.once('SIGTERM', stop);
    server.on('connection', (conn) => {
      if (!server.listening) return conn.destroy(); // a second caller in the backlog: it falls back
      clearTimeout(idle);
      process.off('SIGTERM', stop);
      release();
      resolve(conn);
    });
  });
}

/** Leaves a standby behind for the next mount, unless one is there already or standbys are off. */
export function spawnStandby(bin: string): void {
  if (!standbyEnabled() || standbyPid() !== undefined || startingPid() !== undefined) return;
  const child = spawn(process.execPath, [...daemonNodeFlags, bin, 'mount-daemon', '--standby'], { detached: true, stdio: 'ignore' });
  child.on('error', () => undefined);
  // It loads at the lowest priority, so the command that just got its mount is not slowed.
  if (child.pid !== undefined) setPriorityQuietly(child.pid, 19);
  child.unref();
}

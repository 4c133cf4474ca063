import { closeSync } from 'node:fs';
import { Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import type { Readable, Writable } from 'node:stream';
import { native, type Native } from '../native.js';

/**
 * runc started by posix_spawn (native/spawn.c) rather than child_process:
 * Node forks, and a fork of a mount daemon serving a lazy mount (150-300 MB
 * resident) took 15-40 ms on every container's start; posix_spawn borrows
 * the parent's memory until the exec, whatever its size. Only what
 * runBundle needs: stdio inherited, /dev/null or piped, the exit status,
 * kill.
 */
export interface RuncProcess {
  pid: number;
  stdin?: Writable;
  stdout?: Readable;
  stderr?: Readable;
  /** The exit code, or 128 + N when signal N ended it; once its piped output is drained too. */
  closed: Promise<number>;
  kill(signal: NodeJS.Signals): void;
}

interface SpawnNative extends Native {
  spawnProcess(args: string[], env: string[], fds: [number, number, number]): number;
  waitProcess(pid: number): Promise<[number | null, number | null]>;
  makePipe(): [number, number];
}

export type StdioChoice = 'inherit' | 'ignore' | 'pipe';

/** Starts `file` (found on PATH) with `args`, this process's environment and the given stdio. Throws with `code` ENOENT when there is no such program. */
export function spawnRunc(file: string, args: readonly string[], stdio: readonly [StdioChoice, StdioChoice, StdioChoice]): RuncProcess {
  const addon = native() as SpawnNative;
  const childFds: [number, number, number] = [-1, -1, -1];
  const ours: Array<number | undefined> = [undefined, undefined, undefined];
  const opened: number[] = [];
  try {
    stdio.forEach((choice, i) => {
      if (choice === 'inherit') childFds[i] = i;
      else if (choice === 'pipe') {
        const [theirs, mine] = addon.makePipe();
        opened.push(theirs, mine);
        // A socket pair (as libuv gives children): one end the child's, the other ours.
        childFds[i] = theirs;
        ours[i] = mine;
      }
    });
    const env = Object.entries(process.env).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]));
    const pid = addon.spawnProcess([file, ...args], env, childFds);
    for (const fd of childFds) if (fd > 2) closeSync(fd);
    const stdin = ours[0] !== undefined ? new Socket({ fd: ours[0], readable: false, writable: true }) : undefined;
    const stdout = ours[1] !== undefined ? new Socket({ fd: ours[1], readable: true, writable: false }) : undefined;
    const stderr = ours[2] !== undefined ? new Socket({ fd: ours[2], readable: true, writable: false }) : undefined;
    const drained = [stdout, stderr].map((s) => (s ? new Promise<void>((resolve) => s.once('close', () => resolve())) : undefined));
    const exited = addon.waitProcess(pid).then(([code, signal]) => (code !== null ? code : 128 + (signal ?? 0)));
    return {
      pid,
      ...(stdin ? { stdin } : {}),
      ...(stdout ? { stdout } : {}),
      ...(stderr ? { stderr } : {}),
      closed: Promise.all([exited, ...drained]).then(([code]) => code),
      kill(signal) {
        try {
          process.kill(pid, osConstants.signals[signal]);
        } catch {
          // gone already
        }
      },
    };
  } catch (err) {
    for (const fd of opened) {
      try {
        closeSync(fd);
      } catch {
        // closed already
      }
    }
    throw err;
  }
}

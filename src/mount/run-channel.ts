import type { Duplex } from 'node:stream';

/**
 * A `run` handed to a warm standby (cli/run-handoff-client.ts →
 * bundle/run-handoff.ts): after the request line and its `accepted` reply
 * (daemon-channel.ts), both sides speak in frames — a type byte, a 4-byte
 * length, the payload — so the container's output, the caller's input, a
 * signal and the exit status share one Unix socket.
 */

/** What a front end asks a standby to run: `lazyroot run --lazy REF [-- CMD…]`, nothing more exotic. */
export interface RunRequest {
  kind: 'run';
  /** Absolute store root. */
  store: string;
  ref: string;
  /** Replaces the image's Cmd when not empty. */
  args: string[];
  insecure?: boolean;
  deadlineMs?: number;
  /** false: no lookup of span indexes pushed to the registry (`--no-remote-index`). */
  remoteIndex?: boolean;
  /** The caller's environment: registry credentials are found through it. */
  env: Record<string, string | undefined>;
  /** Where the runner logs (the standby's own log is /dev/null). */
  logFile: string;
  /** The caller's working directory: a relative `oci:` or archive path is relative to it. */
  cwd: string;
}

export const enum Frame {
  Stdout = 0x6f, // 'o'
  Stderr = 0x65, // 'e'
  Stdin = 0x69, // 'i'
  StdinEnd = 0x49, // 'I'
  /** The caller got a signal (payload: its name): the container is stopped. */
  Signal = 0x73, // 's'
  /** The run is over (payload: JSON `{ code }`, or `{ error: { code, message } }`). */
  Exit = 0x78, // 'x'
  /** The standby will not run it (payload: why); nothing was done, the caller runs it itself. */
  Declined = 0x64, // 'd'
}

export function writeFrame(channel: Duplex, type: Frame, payload: Buffer | string = Buffer.alloc(0)): boolean {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const head = Buffer.allocUnsafe(5);
  head[0] = type;
  head.writeUInt32BE(body.length, 1);
  channel.write(head);
  return channel.write(body);
}

/** Calls `onFrame` for every complete frame of `channel`, bytes already read (`pending`) first. */
export function readFrames(channel: Duplex, onFrame: (type: Frame, payload: Buffer) => void, pending: Buffer = Buffer.alloc(0)): void {
  let buffered = pending;
  const drain = () => {
    while (buffered.length >= 5) {
      const length = buffered.readUInt32BE(1);
      if (buffered.length < 5 + length) return;
      const type = buffered[0] as Frame;
      const payload = buffered.subarray(5, 5 + length);
      buffered = buffered.subarray(5 + length);
      onFrame(type, payload);
    }
  };
  channel.on('data', (chunk: Buffer) => {
    buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
    drain();
  });
  drain();
}

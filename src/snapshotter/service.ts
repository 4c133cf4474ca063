import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { isLazyrootError } from '../errors.js';
import type { SnapshotRecord } from '../store/snapshot-table.js';
import type { CallCounter } from './metrics.js';
import type { Logger } from './remote-layers.js';
import type { Snapshotter } from './snapshotter.js';

/**
 * containerd.services.snapshots.v1.Snapshots over gRPC, a thin shell around
 * Snapshotter: requests in, LazyrootErrors out as the status codes
 * containerd's errdefs reads (NOT_FOUND, ALREADY_EXISTS — which the unpacker
 * takes as "the layer is there" —, FAILED_PRECONDITION, UNAVAILABLE, …).
 *
 * The .proto files are our own copy in proto/ (same package, messages and
 * field numbers as containerd 1.6's, minus gogoproto options): the wire is the
 * contract, and a running daemon must not need a Go -dev package.
 */
const protoRoot = fileURLToPath(new URL('../../../proto', import.meta.url));

export function loadSnapshotsService(): grpc.ServiceDefinition {
  const definition = protoLoader.loadSync('containerd/services/snapshots/v1/snapshots.proto', {
    includeDirs: [protoRoot],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(definition) as unknown as {
    containerd: { services: { snapshots: { v1: { Snapshots: { service: grpc.ServiceDefinition } } } } };
  };
  return pkg.containerd.services.snapshots.v1.Snapshots.service;
}

const statusOf: Record<string, grpc.status> = {
  NOT_FOUND: grpc.status.NOT_FOUND,
  ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  INVALID_REFERENCE: grpc.status.INVALID_ARGUMENT,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  IN_USE: grpc.status.FAILED_PRECONDITION,
  UNAVAILABLE: grpc.status.UNAVAILABLE,
  UNAUTHORIZED: grpc.status.PERMISSION_DENIED,
  UNSUPPORTED: grpc.status.UNIMPLEMENTED,
};

function toStatus(err: unknown): Partial<grpc.StatusObject> {
  const code = isLazyrootError(err) ? (statusOf[err.code] ?? grpc.status.UNKNOWN) : grpc.status.UNKNOWN;
  return { code, details: (err as Error)?.message ?? String(err) };
}

const kindName = { view: 'VIEW', active: 'ACTIVE', committed: 'COMMITTED' } as const;

function timestamp(ms: number): { seconds: number; nanos: number } {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
}

function info(s: SnapshotRecord): Record<string, unknown> {
  return {
    name: s.key,
    parent: s.parent ?? '',
    kind: kindName[s.kind],
    created_at: timestamp(s.createdAt),
    updated_at: timestamp(s.updatedAt),
    labels: s.labels,
  };
}

type Req = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/**
 * The handlers, one per RPC; every error is answered as a status, and unexpected ones are logged.
 * `trace` (the daemon's `--trace`) gets one line per call with its outcome and time.
 */
export function snapshotsHandlers(snapshotter: Snapshotter, log: Logger, calls?: CallCounter, trace?: (line: string) => void): grpc.UntypedServiceImplementation {
  const unary =
    (name: string, fn: (req: Req) => Promise<unknown> | unknown): grpc.handleUnaryCall<Req, unknown> =>
    (call, callback) => {
      const started = performance.now();
      const seconds = () => (performance.now() - started) / 1000;
      Promise.resolve()
        .then(() => fn(call.request))
        .then(
          (reply) => {
            calls?.add(name, 'OK', seconds());
            trace?.(`${name} ${call.request.key ?? call.request.name ?? ''}: OK in ${(seconds() * 1000).toFixed(1)} ms`);
            callback(null, reply);
          },
          (err: unknown) => {
            const status = toStatus(err);
            const code = grpc.status[status.code!] ?? String(status.code);
            calls?.add(name, code, seconds());
            trace?.(`${name} ${call.request.key ?? call.request.name ?? ''}: ${code} in ${(seconds() * 1000).toFixed(1)} ms`);
            if (status.code === grpc.status.UNKNOWN || status.code === grpc.status.UNAVAILABLE) log(`${name} ${call.request.key ?? ''}`, err);
            callback(status, null);
          },
        );
    };
  return {
    Prepare: unary('Prepare', async (r) => ({ mounts: await snapshotter.prepare(r.key, r.parent, r.labels ?? {}) })),
    View: unary('View', async (r) => ({ mounts: await snapshotter.view(r.key, r.parent, r.labels ?? {}) })),
    Mounts: unary('Mounts', async (r) => ({ mounts: await snapshotter.mounts(r.key) })),
    Commit: unary('Commit', async (r) => {
      await snapshotter.commit(r.name, r.key, r.labels ?? {});
      return {};
    }),
    Remove: unary('Remove', async (r) => {
      await snapshotter.remove(r.key);
      return {};
    }),
    Stat: unary('Stat', (r) => ({ info: info(snapshotter.stat(r.key)) })),
    Update: unary('Update', (r) => ({
      info: info(snapshotter.update(r.info?.name ?? '', r.info?.labels ?? {}, r.update_mask?.paths ?? [])),
    })),
    List: ((call: grpc.ServerWritableStream<Req, unknown>) => {
      try {
        const all = snapshotter.list(call.request.filters ?? []);
        // containerd's own service sends batches of 100.
        for (let i = 0; i < all.length; i += 100) call.write({ info: all.slice(i, i + 100).map(info) });
        call.end();
        calls?.add('List', 'OK', 0);
      } catch (err) {
        calls?.add('List', grpc.status[toStatus(err).code!] ?? 'UNKNOWN');
        call.destroy(Object.assign(new Error(toStatus(err).details), toStatus(err)));
      }
    }) as grpc.handleServerStreamingCall<Req, unknown>,
    Usage: unary('Usage', (r) => snapshotter.usage(r.key)),
    Cleanup: unary('Cleanup', async () => {
      await snapshotter.cleanup();
      return {};
    }),
  };
}

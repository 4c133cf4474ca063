/**
 * A small HTTP proxy on loopback in front of a real registry that injects
 * faults into chosen requests: status codes, connection resets after N body
 * bytes, stalls, corrupted bytes, ignored Range headers. Each rule applies to
 * requests whose method and path match, for its first `times` matches.
 */
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type Fault =
  | { kind: 'status'; status: number; body?: string }
  | { kind: 'reset-after'; bytes: number }
  | { kind: 'stall'; afterBytes?: number }
  | { kind: 'corrupt'; atByte: number }
  | { kind: 'ignore-range' }
  | { kind: 'truncate'; bytes: number };

export interface FaultRule {
  method?: string;
  path: RegExp;
  fault: Fault;
  /** How many matching requests get the fault (default: all). */
  times?: number;
  /** Only every Nth matching request (the Nth, 2Nth, …) gets it (default: each). */
  every?: number;
}

export interface FaultProxy {
  host: string;
  /** Request lines seen, e.g. `GET /v2/x/blobs/sha256:… range=bytes=10-`. */
  log: string[];
  /** The faults given so far, by kind. */
  injected: Record<string, number>;
  /** Replaces the rules (counts restart). */
  setRules(rules: FaultRule[]): void;
  close(): Promise<void>;
}

export async function startFaultProxy(targetHost: string, initial: FaultRule[] = []): Promise<FaultProxy> {
  const [targetName, targetPort] = splitHost(targetHost);
  let rules = initial.map((r) => ({ ...r, used: 0, seen: 0 }));
  const log: string[] = [];
  const injected: Record<string, number> = {};
  const sockets = new Set<Socket>();

  const pick = (req: IncomingMessage) => {
    const rule = rules.find((r) => {
      if ((r.method && r.method !== req.method) || !r.path.test(req.url ?? '') || (r.times !== undefined && r.used >= r.times)) return false;
      r.seen++;
      return r.every === undefined || r.seen % r.every === 0;
    });
    if (!rule) return undefined;
    rule.used++;
    injected[rule.fault.kind] = (injected[rule.fault.kind] ?? 0) + 1;
    return rule.fault;
  };

  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    log.push(`${req.method} ${req.url}${req.headers.range ? ` range=${req.headers.range}` : ''}`);
    const fault = pick(req);
    if (fault?.kind === 'status') {
      res.writeHead(fault.status, { 'content-type': 'application/json' });
      res.end(fault.body ?? JSON.stringify({ errors: [{ code: 'UNKNOWN', message: `injected ${fault.status}` }] }));
      return;
    }
    const headers = { ...req.headers, host: targetHost };
    if (fault?.kind === 'ignore-range') delete headers.range;
    const upstream = httpRequest({ host: targetName, port: targetPort, method: req.method, path: req.url, headers }, (up) => {
      const outHeaders = { ...up.headers };
      if (up.headers.location) outHeaders.location = up.headers.location.replace(`//${targetHost}`, `//${proxyHost()}`);
      res.writeHead(up.statusCode ?? 502, outHeaders);
      let sent = 0;
      const cut = () =>
        // Let the client read what was sent before cutting: an RST discards
        // whatever still sits unread in the client's receive queue.
        setTimeout(() => {
          if (fault?.kind === 'reset-after') res.socket?.resetAndDestroy();
          else if (fault?.kind === 'truncate') res.socket?.end();
          // stall: leave the client waiting with the connection open.
        }, 50);
      if ((fault?.kind === 'reset-after' || fault?.kind === 'truncate') && fault.bytes === 0) {
        res.flushHeaders();
        up.destroy();
        cut();
        return;
      }
      up.on('data', (chunk: Buffer) => {
        let out = chunk;
        if (fault?.kind === 'corrupt' && fault.atByte >= sent && fault.atByte < sent + chunk.length) {
          out = Buffer.from(chunk);
          out[fault.atByte - sent] = out[fault.atByte - sent]! ^ 0xff;
        }
        const limit =
          fault?.kind === 'reset-after' || fault?.kind === 'truncate' ? fault.bytes : fault?.kind === 'stall' ? (fault.afterBytes ?? 0) : Infinity;
        if (sent >= limit) return;
        if (sent + out.length > limit) {
          out = out.subarray(0, Math.max(0, limit - sent));
          sent = limit;
          up.destroy();
          res.write(out, cut);
          return;
        }
        sent += out.length;
        res.write(out);
      });
      up.on('end', () => res.end());
    });
    upstream.on('error', () => res.socket?.destroy());
    req.pipe(upstream);
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const proxyHost = () => `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    host: proxyHost(),
    log,
    injected,
    setRules(next) {
      rules = next.map((r) => ({ ...r, used: 0, seen: 0 }));
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

function splitHost(host: string): [string, number] {
  const i = host.lastIndexOf(':');
  return [host.slice(0, i), Number(host.slice(i + 1))];
}

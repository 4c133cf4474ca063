/**
 * A real registry for tests: Debian's `docker-registry` (distribution 2.8) on a
 * free loopback port, with a temp storage dir and config, optionally behind
 * htpasswd basic auth or token auth (an in-process token server issuing real
 * RS256 JWTs). It starts in about 40 ms (timed on the dev machine: process
 * spawn to the first answer of GET /v2/); `startupMs` says how long it took.
 *
 *   const registry = await startRegistry({ auth: 'token' });
 *   after(() => registry.stop());
 *   await registry.pushImage('app', 'v1', buildImage(spec));   // image-builder.ts
 *   await registry.accessLog()   // ['GET /v2/ 401', 'GET /v2/app/manifests/v1 200', …]
 *
 * Pushes here go straight over HTTP with admin rights (basic credentials or a
 * token minted by the helper itself), so they work whatever the auth mode; for
 * a push through real tooling use image-builder's `pushToRegistry` (skopeo) on
 * a registry without auth. `startRegistry({ proxyRemoteUrl: upstream.url })`
 * starts a pull-through cache in front of another. `stop()` ends only what this helper started (the
 * registry by its PID, the token server), and removes the temp dir.
 *
 * Needs: docker-registry, openssl (token auth), htpasswd from apache2-utils
 * (basic auth).
 */
import { execFile } from 'node:child_process';
import { createHash, createPrivateKey, generateKeyPairSync, randomUUID, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, get, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './free-port.js';
import { spawnProcess } from './process.js';

const run = promisify(execFile);

export interface RegistryOptions {
  /** Default 'none'. */
  auth?: 'none' | 'basic' | 'token';
  /** user → password; default `{ tester: 'test-password' }` when auth is on. */
  users?: Record<string, string>;
  /** Accept schema1 manifests (`compatibility.schema1.enabled`). */
  schema1?: boolean;
  /**
   * Token auth: how long an issued token is accepted by the registry (default
   * 300), also reported to clients as `expires_in`.
   */
  tokenTtlSeconds?: number;
  /** Token auth: leave `expires_in` out of token answers (clients then assume 60 s). */
  omitExpiresIn?: boolean;
  /**
   * Run as a pull-through cache (`proxy: remoteurl:`) of the registry at
   * this URL (`http://127.0.0.1:PORT`): it answers a Range request for a
   * blob it has not cached with 200 and the whole blob, 206 once it has it.
   * Pushes to it are refused.
   */
  proxyRemoteUrl?: string;
}

export interface TestRegistry {
  /** `127.0.0.1:PORT` */
  host: string;
  /** `http://127.0.0.1:PORT` */
  url: string;
  storageDir: string;
  /** Milliseconds from spawn to the first answer of GET /v2/. */
  startupMs: number;
  /** The first configured user, when auth is on. */
  credentials?: { username: string; password: string };
  /**
   * Requests the registry served, from its access log: `METHOD PATH STATUS`.
   * Async because the log reaches us through a pipe after the answer reaches
   * the client: it first waits for a marker request of its own to be logged,
   * so every request answered before the call is in the list.
   */
  accessLog(): Promise<string[]>;
  /** The same requests with the body bytes the registry wrote for each (the log's size field). */
  accessBytes(): Promise<AccessRecord[]>;
  /** Token auth: the token requests seen, as `GET /token?…` lines (else empty). */
  tokenRequests(): string[];
  /** Uploads a blob (with admin rights); returns its digest. */
  pushBlob(repository: string, bytes: Buffer): Promise<string>;
  /** PUTs a manifest by tag or digest; returns the digest the registry gave it. */
  pushManifest(repository: string, reference: string, bytes: Buffer, mediaType: string): Promise<string>;
  /** Pushes a built image (image-builder's BuiltImage fits): layers, config, then manifest. */
  pushImage(repository: string, reference: string, image: PushableImage): Promise<string>;
  stop(): Promise<void>;
}

/** One request of the access log, with the bytes of the answer's body. */
export interface AccessRecord {
  method: string;
  path: string;
  status: number;
  bytes: number;
}

/** The parts of an image `pushImage` needs (image-builder's `BuiltImage` has them). */
export interface PushableImage {
  manifestBytes: Buffer;
  manifest: { mediaType: string };
  configBytes: Buffer;
  layers: Array<{ blob: Buffer }>;
}

const tokenService = 'lazyroot-test-registry';
const tokenIssuer = 'lazyroot-test-issuer';
// distribution accepts a token up to 60 s after its `exp` (token.Leeway): a
// token meant to live N seconds says exp = now + N - 60.
const registryLeewaySeconds = 60;

export async function startRegistry(options: RegistryOptions = {}): Promise<TestRegistry> {
  try {
    return await startOnce(options);
  } catch (err) {
    // freePort can race with another process taking the port: one more try.
    if (/address already in use/i.test(String((err as Error).message))) return startOnce(options);
    throw err;
  }
}

async function startOnce(options: RegistryOptions): Promise<TestRegistry> {
  const auth = options.auth ?? 'none';
  const users = options.users ?? (auth === 'none' ? {} : { tester: 'test-password' });
  const dir = await mkdtemp(join(tmpdir(), 'lazyroot-registry-'));
  const storageDir = join(dir, 'storage');
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const cleanups: Array<() => Promise<void>> = [() => rm(dir, { recursive: true, force: true })];

  let tokenServer: TokenServer | undefined;
  let authSection = '';
  try {
    if (auth === 'basic') {
      const lines: string[] = [];
      for (const [user, password] of Object.entries(users)) {
        // bcrypt (-B), the only hash distribution's htpasswd accepts; cost 4 keeps tests fast.
        const { stdout } = await run('htpasswd', ['-nbB', '-C', '4', user, password]);
        lines.push(stdout.trim());
      }
      await writeFile(join(dir, 'htpasswd'), `${lines.join('\n')}\n`);
      authSection = `auth:\n  htpasswd:\n    realm: lazyroot-test\n    path: ${join(dir, 'htpasswd')}\n`;
    } else if (auth === 'token') {
      tokenServer = await startTokenServer(dir, users, options);
      cleanups.unshift(() => tokenServer!.close());
      authSection = [
        'auth:',
        '  token:',
        `    realm: ${tokenServer.url}/token`,
        `    service: ${tokenService}`,
        `    issuer: ${tokenIssuer}`,
        `    rootcertbundle: ${tokenServer.certPath}`,
        '',
      ].join('\n');
    }

    const configPath = join(dir, 'config.yml');
    await writeFile(
      configPath,
      [
        'version: 0.1',
        'log:',
        '  level: info',
        '  accesslog:',
        '    disabled: false',
        'storage:',
        '  filesystem:',
        `    rootdirectory: ${storageDir}`,
        '  delete:',
        '    enabled: true',
        'http:',
        `  addr: ${host}`,
        `  secret: ${randomUUID()}`,
        ...(options.schema1 ? ['compatibility:', '  schema1:', '    enabled: true'] : []),
        ...(options.proxyRemoteUrl ? ['proxy:', `  remoteurl: ${options.proxyRemoteUrl}`] : []),
        '',
      ].join('\n') + authSection,
    );

    const started = Date.now();
    const registry = startRegistryProcess(configPath, host);
    cleanups.unshift(() => registry.stop());
    await registry.waitReady();
    const startupMs = Date.now() - started;

    const [firstUser] = Object.entries(users);
    const credentials = firstUser ? { username: firstUser[0], password: firstUser[1] } : undefined;
    const adminAuthorization = (repository: string): string | undefined => {
      if (auth === 'basic' && credentials) {
        return `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
      }
      if (auth === 'token' && tokenServer) {
        return `Bearer ${tokenServer.mint('admin', [{ type: 'repository', name: repository, actions: ['pull', 'push'] }], 300)}`;
      }
      return undefined;
    };
    const url = `http://${host}`;

    const pushBlob = async (repository: string, bytes: Buffer): Promise<string> => {
      const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
      const authorization = adminAuthorization(repository);
      const headers: Record<string, string> = authorization ? { authorization } : {};
      const started = await fetch(`${url}/v2/${repository}/blobs/uploads/`, { method: 'POST', headers });
      await started.arrayBuffer();
      if (started.status !== 202) throw new Error(`push blob ${digest} to ${repository}: POST answered ${started.status}`);
      const location = new URL(started.headers.get('location') ?? '', url);
      location.searchParams.set('digest', digest);
      const put = await fetch(location, {
        method: 'PUT',
        headers: { ...headers, 'content-type': 'application/octet-stream' },
        body: new Uint8Array(bytes),
      });
      const text = await put.text();
      if (put.status !== 201) throw new Error(`push blob ${digest} to ${repository}: PUT answered ${put.status} ${text}`);
      return digest;
    };

    const pushManifest = async (repository: string, reference: string, bytes: Buffer, mediaType: string): Promise<string> => {
      const authorization = adminAuthorization(repository);
      const response = await fetch(`${url}/v2/${repository}/manifests/${reference}`, {
        method: 'PUT',
        headers: { ...(authorization ? { authorization } : {}), 'content-type': mediaType },
        body: new Uint8Array(bytes),
      });
      const text = await response.text();
      if (response.status !== 201) throw new Error(`push manifest ${repository}:${reference}: ${response.status} ${text}`);
      return response.headers.get('docker-content-digest') ?? '';
    };

    return {
      host,
      url,
      storageDir,
      startupMs,
      ...(credentials ? { credentials } : {}),
      accessLog: () => registry.accessLog(),
      accessBytes: () => registry.accessBytes(),
      tokenRequests: () => tokenServer?.requests.slice() ?? [],
      pushBlob,
      pushManifest,
      async pushImage(repository, reference, image) {
        for (const layer of image.layers) await pushBlob(repository, layer.blob);
        await pushBlob(repository, image.configBytes);
        return pushManifest(repository, reference, image.manifestBytes, image.manifest.mediaType);
      },
      async stop() {
        for (const cleanup of cleanups.splice(0)) await cleanup();
      },
    };
  } catch (err) {
    for (const cleanup of cleanups.splice(0)) await cleanup().catch(() => undefined);
    throw err;
  }
}

// ---- the registry process

interface WatchedRegistry {
  waitReady(): Promise<void>;
  accessLog(): Promise<string[]>;
  accessBytes(): Promise<AccessRecord[]>;
  stop(): Promise<void>;
}

function startRegistryProcess(configPath: string, host: string): WatchedRegistry {
  const proc = spawnProcess('/usr/bin/docker-registry', ['serve', configPath], { name: `docker-registry on ${host}` });
  const access: string[] = [];
  const records: AccessRecord[] = [];
  const stderrTail: string[] = [];
  // The access log (Apache combined format) goes to stdout:
  // 127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "ua"
  // Marker requests (GET /v2/?lazyroot-log-marker=N) are answered by the
  // registry like any other; seeing one logged means every request answered
  // before it was sent has been logged too. They never show in the lists. A marker's waiter is
  // set before its request is sent, so its line cannot come first.
  let markers = 0;
  const markerWaiters = new Map<number, () => void>();
  lines(proc.child.stdout, (line) => {
    const m = /"([A-Z]+) (\S+) HTTP\/[\d.]+" (\d{3}) (\d+|-)/.exec(line);
    if (!m) return;
    const marker = /[?&]lazyroot-log-marker=(\d+)/.exec(m[2]!);
    if (marker) {
      const n = Number(marker[1]);
      markerWaiters.get(n)?.();
      return;
    }
    access.push(`${m[1]} ${m[2]} ${m[3]}`);
    records.push({ method: m[1]!, path: m[2]!, status: Number(m[3]), bytes: m[4] === '-' ? 0 : Number(m[4]) });
  });
  lines(proc.child.stderr, (line) => {
    stderrTail.push(line);
    if (stderrTail.length > 30) stderrTail.shift();
  });

  const logged = async (): Promise<void> => {
    const n = ++markers;
    const seen = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`docker-registry on ${host}: marker request ${n} not logged within 10 s`)), 10_000);
      markerWaiters.set(n, () => {
        clearTimeout(timer);
        resolve();
      });
    });
    const answered = await fetch(`http://${host}/v2/?lazyroot-log-marker=${n}`);
    await answered.arrayBuffer();
    await seen.finally(() => markerWaiters.delete(n));
  };

  return {
    waitReady: () => proc.waitReady(() => answers(`http://${host}/v2/`), { describe: () => stderrTail.join('\n') }),
    accessLog: async () => {
      await logged();
      return access.slice();
    },
    accessBytes: async () => {
      await logged();
      return records.slice();
    },
    stop: () => proc.stop(),
  };
}

function lines(stream: NodeJS.ReadableStream | null, onLine: (line: string) => void): void {
  let pending = '';
  stream?.setEncoding('utf8');
  stream?.on('data', (chunk: string) => {
    pending += chunk;
    let i: number;
    while ((i = pending.indexOf('\n')) >= 0) {
      onLine(pending.slice(0, i));
      pending = pending.slice(i + 1);
    }
  });
}

function answers(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = get(url, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('error', () => resolve(false));
    req.setTimeout(1000, () => req.destroy());
  });
}

// ---- token auth

interface Access {
  type: string;
  name: string;
  actions: string[];
}

interface TokenServer {
  url: string;
  certPath: string;
  requests: string[];
  mint(subject: string, access: Access[], ttlSeconds: number): string;
  close(): Promise<void>;
}

function base64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

/**
 * libtrust's key ID, which distribution uses for `kid`: the SHA-256 of the DER
 * public key, truncated to 240 bits, base32, in colon-separated groups of four.
 */
export function libtrustKeyId(publicKey: KeyObject): string {
  const hash = createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest().subarray(0, 30);
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const byte of hash) bits += byte.toString(2).padStart(8, '0');
  let encoded = '';
  for (let i = 0; i + 5 <= bits.length; i += 5) encoded += alphabet[parseInt(bits.slice(i, i + 5), 2)];
  return encoded.match(/.{1,4}/g)!.join(':');
}

async function startTokenServer(dir: string, users: Record<string, string>, options: RegistryOptions): Promise<TokenServer> {
  const keyPath = join(dir, 'token.key');
  const certPath = join(dir, 'token.crt');
  // The registry checks the token's x5c chain against this self-signed root.
  await run('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath,
    '-days', '2', '-subj', '/CN=lazyroot test token issuer',
  ]);
  const privateKey = createPrivateKey(await readFile(keyPath));
  const cert = new X509Certificate(await readFile(certPath));
  const header = base64url(
    JSON.stringify({ typ: 'JWT', alg: 'RS256', kid: libtrustKeyId(cert.publicKey), x5c: [cert.raw.toString('base64')] }),
  );
  const ttl = options.tokenTtlSeconds ?? 300;
  const requests: string[] = [];

  const mint = (subject: string, access: Access[], ttlSeconds: number): string => {
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      iss: tokenIssuer,
      sub: subject,
      aud: tokenService,
      iat: now,
      nbf: now - 1,
      exp: now + ttlSeconds - registryLeewaySeconds,
      jti: randomUUID(),
      access,
    };
    const signingInput = `${header}.${base64url(JSON.stringify(claims))}`;
    return `${signingInput}.${base64url(sign('sha256', Buffer.from(signingInput), privateKey))}`;
  };

  const server: Server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const query = new URL(req.url ?? '/', 'http://token').searchParams;
    let subject = '';
    const authorization = req.headers.authorization;
    if (authorization !== undefined) {
      const decoded = Buffer.from(authorization.replace(/^Basic\s+/i, ''), 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      const [user, password] = [decoded.slice(0, colon), decoded.slice(colon + 1)];
      if (!/^Basic\s/i.test(authorization) || colon < 0 || users[user] !== password) {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] }));
        return;
      }
      subject = user;
    }
    // Known users get what they ask for; anonymous clients get a token granting nothing.
    const access: Access[] = subject === ''
      ? []
      : query.getAll('scope').flatMap((scope) => {
          const [type, name, actions] = scope.split(':');
          return type && name && actions ? [{ type, name, actions: actions.split(',') }] : [];
        });
    const token = mint(subject, access, ttl);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token, issued_at: new Date().toISOString(), ...(options.omitExpiresIn ? {} : { expires_in: ttl }) }));
  });
  const port = await freePort();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return {
    url: `http://127.0.0.1:${port}`,
    certPath,
    requests,
    mint,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

// ---- schema1

/**
 * Signs a schema1 manifest the way libtrust does (what `docker push` did before
 * schema2): the JSON is indented with three spaces, its closing `\n}` is cut
 * off and recorded in the protected header (formatLength/formatTail), and a
 * `signatures` array with an ES256 JWS over the full JSON is spliced in.
 * Returns the signed bytes and the unsigned payload (whose sha256 is the
 * manifest's digest).
 */
export function signSchema1(manifest: Record<string, unknown>): { signed: Buffer; payload: Buffer } {
  const payload = Buffer.from(JSON.stringify(manifest, null, 3));
  const formatLength = payload.length - 2;
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = publicKey.export({ format: 'jwk' });
  const protectedHeader = base64url(
    JSON.stringify({ formatLength, formatTail: base64url(payload.subarray(formatLength)), time: new Date().toISOString() }),
  );
  const signature = sign('sha256', Buffer.from(`${protectedHeader}.${base64url(payload)}`), {
    key: privateKey,
    dsaEncoding: 'ieee-p1363',
  });
  const signatures = [
    { header: { jwk: { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }, alg: 'ES256' }, signature: base64url(signature), protected: protectedHeader },
  ];
  const signatureJson = JSON.stringify(signatures, null, 3).replace(/\n/g, '\n   ');
  const signed = Buffer.concat([payload.subarray(0, formatLength), Buffer.from(`,\n   "signatures": ${signatureJson}\n}`)]);
  return { signed, payload };
}

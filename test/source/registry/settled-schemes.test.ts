import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { probeScheme } from '../../../src/source/registry/answers.js';
import type { Authenticator } from '../../../src/source/registry/auth.js';
import { adoptSettledSchemes, settledSchemesNow } from '../../../src/source/registry/settled-schemes.js';
import type { ResponseHeaders, Transport, TransportRequest, TransportResponse } from '../../../src/source/registry/transport.js';

/** A transport that answers every request with `status` and records the URLs asked for. */
function recordingTransport(status = 200, headers: ResponseHeaders = {}): { transport: Transport; asked: string[] } {
  const asked: string[] = [];
  const transport = {
    async request<T>(req: TransportRequest, consume: (response: TransportResponse) => Promise<T>): Promise<T> {
      asked.push(req.url.href);
      return consume({ status, headers, body: Readable.from([]), url: req.url, attempts: 1 });
    },
  } as unknown as Transport;
  return { transport, asked };
}

function learningAuth(): { auth: Authenticator; learned: ResponseHeaders[] } {
  const learned: ResponseHeaders[] = [];
  return { auth: { learn: (h: ResponseHeaders) => (learned.push(h), true) } as unknown as Authenticator, learned };
}

/**
 * A mount daemon takes what its caller's pings settled (daemon-channel.ts's
 * `registrySchemes`): its first request to the registry is then a real one.
 * Each test uses its own host: the settled schemes are the process's.
 */
describe('registry schemes settled in another process', () => {
  test('are used without a ping, and a 401 challenge learned there reaches this authenticator', async () => {
    const challenge = { 'www-authenticate': 'Bearer realm="http://127.0.0.1:1/token",service="reg"' };
    adoptSettledSchemes([['https,http 127.0.0.1:61001/v2', { scheme: 'http', challenge }]]);
    const { transport, asked } = recordingTransport();
    const { auth, learned } = learningAuth();
    const base = await probeScheme(transport, auth, { host: '127.0.0.1:61001', schemes: ['https', 'http'], what: 'test' });
    assert.equal(base.href, 'http://127.0.0.1:61001/');
    assert.deepEqual(asked, [], 'no ping');
    assert.deepEqual(learned, [challenge]);
  });

  test('a scheme the host does not allow is not taken (no downgrade to plain HTTP)', async () => {
    adoptSettledSchemes([['https registry.example:61002/v2', { scheme: 'http' }]]);
    assert.ok(!settledSchemesNow().some(([key]) => key === 'https registry.example:61002/v2'));
    const { transport, asked } = recordingTransport();
    const base = await probeScheme(transport, learningAuth().auth, { host: 'registry.example:61002', schemes: ['https'], what: 'test' });
    assert.equal(base.href, 'https://registry.example:61002/');
    assert.deepEqual(asked, ['https://registry.example:61002/v2/'], 'pinged over HTTPS, as with nothing adopted');
  });

  test('entries of another shape are passed over, and a scheme settled here stays', async () => {
    const { transport } = recordingTransport();
    await probeScheme(transport, learningAuth().auth, { host: '127.0.0.1:61003', schemes: ['https', 'http'], what: 'test' });
    adoptSettledSchemes([['https,http 127.0.0.1:61003/v2', { scheme: 'http' }], 'junk', [1, 2], ['https,http 127.0.0.1:61004/v2', { scheme: 'gopher' }], ['https,http 127.0.0.1:61005/v2', null]]);
    adoptSettledSchemes({ not: 'a list' });
    const settled = new Map(settledSchemesNow());
    assert.equal(settled.get('https,http 127.0.0.1:61003/v2')?.scheme, 'https', 'the ping here answered over HTTPS first');
    assert.ok(!settled.has('https,http 127.0.0.1:61004/v2'));
    assert.ok(!settled.has('https,http 127.0.0.1:61005/v2'));
  });
});

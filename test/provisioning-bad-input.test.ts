// Issue #3 acceptance 4: bad input, each a clear coded error; the service keeps serving;
// no certificate issued and no device, token or certificate row written.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { startTestProvisioning, type TestProvisioning } from '../harness/gateway.ts';
import { https } from '../harness/https.ts';
import { csrPem, newKeys, opensslCsr } from '../harness/pki.ts';
import { fileScope } from '../harness/run.ts';
import { csrDer } from '../provisioning/ca/csr.ts';

let p: TestProvisioning;
let ca: Buffer;
let token: string;
let goodCsr: string;
const pems: Record<string, string> = {};
const scope = fileScope(after);

before(async () => {
  p = await startTestProvisioning(scope);
  ca = readFileSync(p.rootFile);
  token = p.registry.addDevice({ id: 'victim-1', type: 'sensor' }, 'test', { tokenTtlMs: 3_600_000 }).token!.token;
  goodCsr = await csrPem(await newKeys(), 'victim-1');
  pems.rsa1024 = (await opensslCsr(p.dir, 'weak', 'rsa1024')).csrPem;
  const der = csrDer(goodCsr);
  der[der.length - 1] = (der[der.length - 1] as number) ^ 0x01;
  pems.tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
  pems.derAsPem = `-----BEGIN CERTIFICATE REQUEST-----\n${csrDer(goodCsr).toString('latin1')}\n-----END CERTIFICATE REQUEST-----\n`;
});

function rows() {
  const { devices, certificates, tokens, revocations, denylist } = p.registry.counts();
  return { devices, certificates, tokens, revocations, denylist };
}

const post = (path: string, body: string | Buffer, headers: Record<string, string> = {}) =>
  https(`${p.url}${path}`, { ca, body, headers });
const json = (o: unknown) => JSON.stringify(o);
const big = 'x'.repeat(10_000);
const unicode = '设备-🔐-\u202e\u0000';

const cases: [string, () => Promise<{ status: number; json<T>(): T; body: string }>, number, string][] = [
  ['non-PEM garbage', () => post('/v1/enroll', json({ token, csr: 'hello, not a csr' })), 400, 'CSR_INVALID'],
  [
    'PEM with a broken base64 body',
    () =>
      post(
        '/v1/enroll',
        json({ token, csr: '-----BEGIN CERTIFICATE REQUEST-----\nMIIB*&^%$\n-----END CERTIFICATE REQUEST-----\n' }),
      ),
    400,
    'CSR_INVALID',
  ],
  ['a DER CSR sent as PEM', () => post('/v1/enroll', json({ token, csr: pems.derAsPem })), 400, 'CSR_INVALID'],
  [
    'a CSR with a tampered signature',
    () => post('/v1/enroll', json({ token, csr: pems.tampered })),
    400,
    'CSR_INVALID',
  ],
  ['RSA-1024', () => post('/v1/enroll', json({ token, csr: pems.rsa1024 })), 400, 'KEY_TOO_WEAK'],
  ['a 1 MiB body', () => post('/v1/enroll', json({ token, csr: 'A'.repeat(1 << 20) })), 413, 'PAYLOAD_TOO_LARGE'],
  [
    'JSON with wrong field types',
    () => post('/v1/enroll', json({ token: 12345, csr: ['not', 'a', 'string'] })),
    400,
    'BAD_REQUEST',
  ],
  ['JSON that does not parse', () => post('/v1/enroll', '{"token": "abc", "csr": '), 400, 'BAD_REQUEST'],
  [
    'extra fields',
    () => post('/v1/enroll', json({ token, csr: goodCsr, deviceId: 'someone-else' })),
    400,
    'BAD_REQUEST',
  ],
  [
    'wrong media type',
    () => post('/v1/enroll', json({ token, csr: goodCsr }), { 'content-type': 'application/xml' }),
    415,
    'UNSUPPORTED_MEDIA_TYPE',
  ],
  [
    'EST with the wrong media type',
    () =>
      post('/.well-known/est/simpleenroll', 'abc', {
        'content-type': 'text/plain',
        authorization: `Basic ${Buffer.from(`victim-1:${token}`).toString('base64')}`,
      }),
    415,
    'UNSUPPORTED_MEDIA_TYPE',
  ],
  [
    'a token with SQL in it',
    () => post('/v1/enroll', json({ token: "x'); DROP TABLE devices;--", csr: goodCsr })),
    401,
    'TOKEN_INVALID',
  ],
  [
    'a hardware serial with SQL in it',
    () => post('/v1/enroll/claim', json({ hardwareSerial: "x'); DROP TABLE devices;--", csr: goodCsr })),
    401,
    'CERT_REQUIRED',
  ],
  [
    'EST with a device id with SQL in it',
    () =>
      post('/.well-known/est/simpleenroll', csrDer(goodCsr).toString('base64'), {
        'content-type': 'application/pkcs10',
        authorization: `Basic ${Buffer.from(`x'); DROP TABLE devices;--:${token}`).toString('base64')}`,
      }),
    401,
    'TOKEN_INVALID',
  ],
  // The requester is authenticated before its CSR is parsed: a bad token is the first refusal.
  ['unicode in every field', () => post('/v1/enroll', json({ token: unicode, csr: unicode })), 401, 'TOKEN_INVALID'],
  ['unicode CSR with a good token', () => post('/v1/enroll', json({ token, csr: unicode })), 400, 'CSR_INVALID'],
  ['10 KB strings in every field', () => post('/v1/enroll', json({ token: big, csr: big })), 400, 'BAD_REQUEST'],
  [
    '10 KB strings in every claim field (40 KB: over the body limit)',
    () => post('/v1/enroll/claim', json({ hardwareSerial: big, csr: big, type: big, fleet: big })),
    413,
    'PAYLOAD_TOO_LARGE',
  ],
  [
    'a 10 KB hardware serial',
    () => post('/v1/enroll/claim', json({ hardwareSerial: big, csr: goodCsr })),
    400,
    'BAD_REQUEST',
  ],
  ['an unknown route', () => https(`${p.url}/v1/nope`, { ca }), 404, 'ROUTE_NOT_FOUND'],
];

for (const [name, send, status, code] of cases) {
  test(`bad input/${name} → ${status} ${code}; nothing written; still serving`, async () => {
    const before = rows();
    const r = await send();
    assert.equal(r.status, status, r.body.slice(0, 300));
    const got = r.body.startsWith('{') ? r.json<{ error: { code: string } }>().error.code : r.body.split(':')[0];
    assert.equal(got, code);
    assert.doesNotMatch(r.body, /BEGIN CERTIFICATE-----/, 'no certificate in the answer');
    assert.deepEqual(rows(), before, 'no row written');
    const health = await https(`${p.url}/healthz`, { ca });
    assert.equal(health.status, 200, 'the service keeps serving');
  });
}

test('bad input/after all of that, the token still works exactly once', async () => {
  const ok = await post('/v1/enroll', json({ token, csr: goodCsr }));
  assert.equal(ok.status, 201, ok.body);
  assert.equal(p.registry.listCertificates({ deviceId: 'victim-1' }).length, 1);
});

test('rate limit/past the per-IP rate, 429 with Retry-After', async (t) => {
  const limited = await startTestProvisioning(t, { FLEETGATE_ENROLL_RATE: '3' });
  const ca2 = readFileSync(limited.rootFile);
  const results = [];
  for (let i = 0; i < 6; i++)
    results.push(await https(`${limited.url}/v1/enroll`, { ca: ca2, body: json({ token: 'fgt_x', csr: goodCsr }) }));
  const last = results.at(-1)!;
  assert.equal(last.status, 429);
  assert.equal(last.json<{ error: { code: string } }>().error.code, 'RATE_LIMITED');
  assert.ok(Number(last.headers['retry-after']) >= 0, 'Retry-After header');
});

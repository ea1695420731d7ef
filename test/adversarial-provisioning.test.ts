// Issue #10 §1, §3, §4 on provisioning (JSON API and EST), tried as an attacker and a broken
// factory station would: CSRs built to be expensive or ambiguous, keys a CA must refuse,
// non-canonical encodings that would dodge a key denylist, renewal with a superseded
// certificate, anonymous floods that would grow the audit log, and what an error tells the peer.
// Every refusal is coded, the service stays up, and no device, token or certificate row is written.
import assert from 'node:assert/strict';
import { createHash, createPublicKey, generateKeyPairSync, type KeyObject, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { oidDer, seq, set, tlv, toPem } from '../firmware-sdk/protocol/der.ts';
import { startTestProvisioning, type TestProvisioning } from '../harness/gateway.ts';
import { errorCodeOf, https } from '../harness/https.ts';
import { type Credential, csrPem, enrollDevice, newKeys, openssl } from '../harness/pki.ts';
import { fileScope } from '../harness/run.ts';

let p: TestProvisioning;
let ca: Buffer;
const scope = fileScope(after);

before(async () => {
  p = await startTestProvisioning(scope);
  ca = readFileSync(p.rootFile);
});

const code = errorCodeOf;
const post = (path: string, body: string, headers: Record<string, string> = {}, cred?: Credential) =>
  https(`${p.url}${path}`, { ca, body, headers, ...(cred && { cred }) });
const tokenFor = (id: string) =>
  p.registry.addDevice({ id, type: 'sensor' }, 'test', { tokenTtlMs: 3_600_000 }).token!.token;
function rows() {
  const { devices, certificates, tokens, revocations, denylist } = p.registry.counts();
  return { devices, certificates, tokens, revocations, denylist };
}

const INT0 = tlv(0x02, Buffer.from([0]));
const utf8 = (s: string) => tlv(0x0c, Buffer.from(s, 'utf8'));
const cnName = (cn: string) => seq(set(seq(oidDer('2.5.4.3'), utf8(cn))));

/** A PKCS#10 request assembled by hand (ECDSA P-256, signed for real), with parts the test chooses. */
function handCsr(key: KeyObject, parts: { subject?: Buffer; spki?: Buffer } = {}): string {
  const spki = parts.spki ?? createPublicKey(key).export({ type: 'spki', format: 'der' });
  const info = seq(INT0, parts.subject ?? cnName('hand'), spki, tlv(0xa0));
  const signature = sign('sha256', info, key);
  return toPem(
    seq(info, seq(oidDer('1.2.840.10045.4.3.2')), tlv(0x03, Buffer.concat([Buffer.from([0]), signature]))),
    'CERTIFICATE REQUEST',
  );
}

const ecKey = () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;

test('csr/a subject with 1,000 attributes is refused (capped, parsed in linear time) — and not parsed at all without a valid token', async () => {
  const subject = seq(...Array.from({ length: 1000 }, () => set(seq(oidDer('2.5.4.3'), utf8('')))));
  const csr = handCsr(ecKey(), { subject });
  assert.ok(csr.length < 16_384, `${csr.length} bytes: within the CSR field limit`);
  const before = rows();
  const anonymous = await post('/v1/enroll', JSON.stringify({ token: 'fgt_not-a-token', csr }), {
    'content-type': 'application/json',
  });
  assert.deepEqual([anonymous.status, code(anonymous)], [401, 'TOKEN_INVALID'], 'authentication comes first');
  const withToken = await post('/v1/enroll', JSON.stringify({ token: tokenFor('attr-1'), csr }), {
    'content-type': 'application/json',
  });
  assert.deepEqual([withToken.status, code(withToken)], [400, 'CSR_INVALID']);
  assert.deepEqual(
    { ...rows(), devices: before.devices, tokens: before.tokens },
    { ...before },
    'no certificate written',
  );
});

test('csr/a non-canonical key encoding (long-form length with leading zeros) is refused: the key denylist cannot be dodged', async () => {
  const key = ecKey();
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  assert.equal(spki[0], 0x30);
  const stretched = Buffer.concat([Buffer.from([0x30, 0x82, 0x00, spki[1]!]), spki.subarray(2)]); // 30 82 00 59 …
  const r = await post(
    '/v1/enroll',
    JSON.stringify({ token: tokenFor('spki-1'), csr: handCsr(key, { spki: stretched }) }),
    { 'content-type': 'application/json' },
  );
  assert.deepEqual([r.status, code(r)], [400, 'CSR_INVALID']);
  const ok = await post('/v1/enroll', JSON.stringify({ token: tokenFor('spki-2'), csr: handCsr(key) }), {
    'content-type': 'application/json',
  });
  assert.equal(ok.status, 201, 'the same key, canonically encoded, enrolls');
  // Denylisted by key (the hash of its canonical encoding): no further certificate for it, in any encoding.
  p.registry.addDeny(
    { kind: 'spki', value: createHash('sha256').update(spki).digest('hex'), reason: 'stolen key' },
    'test',
  );
  const again = await post('/v1/enroll', JSON.stringify({ token: tokenFor('spki-3'), csr: handCsr(key) }), {
    'content-type': 'application/json',
  });
  assert.deepEqual([again.status, code(again)], [403, 'DENYLISTED']);
  const dodge = await post(
    '/v1/enroll',
    JSON.stringify({ token: tokenFor('spki-4'), csr: handCsr(key, { spki: stretched }) }),
    { 'content-type': 'application/json' },
  );
  assert.deepEqual([dodge.status, code(dodge)], [400, 'CSR_INVALID']);
});

test('keys/explicit EC curve parameters, RSA exponent 3 and RSA-1024 are refused', async () => {
  const csrFor = async (name: string, genkey: string[]) => {
    const keyFile = join(p.dir, `${name}.key`);
    assert.equal((await openssl([...genkey, '-out', keyFile])).code, 0);
    const csr = await openssl(['req', '-new', '-key', keyFile, '-subj', `/CN=${name}`]);
    assert.equal(csr.code, 0, csr.stderr);
    return csr.stdout;
  };
  const cases = [
    [
      'explicit curve parameters',
      await csrFor('curveball', ['ecparam', '-name', 'prime256v1', '-param_enc', 'explicit', '-genkey', '-noout']),
      'KEY_UNSUPPORTED',
    ],
    [
      'RSA e=3',
      await csrFor('e3', [
        'genpkey',
        '-algorithm',
        'RSA',
        '-pkeyopt',
        'rsa_keygen_bits:2048',
        '-pkeyopt',
        'rsa_keygen_pubexp:3',
      ]),
      'KEY_TOO_WEAK',
    ],
    [
      'RSA-1024',
      await csrFor('rsa1024', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024']),
      'KEY_TOO_WEAK',
    ],
  ] as const;
  const before = rows();
  for (const [what, csr, expected] of cases) {
    const r = await post(
      '/v1/enroll',
      JSON.stringify({ token: tokenFor(`key-${expected.length}-${what.length}`), csr }),
      { 'content-type': 'application/json' },
    );
    assert.deepEqual([r.status, code(r)], [400, expected], what);
  }
  assert.equal(rows().certificates, before.certificates);
});

test('pem/two CSRs in one body, or anything after END, is ambiguous: refused', async () => {
  const one = await csrPem(await newKeys(), 'pem-1');
  const two = await csrPem(await newKeys(), 'pem-1');
  for (const [what, csr] of [
    ['two blocks', one + two],
    ['junk after END', `${one}trailing junk\n`],
    ['junk before BEGIN', `hello\n${one}`],
  ] as const) {
    const r = await post('/v1/enroll', JSON.stringify({ token: tokenFor(`pem-${what.length}`), csr }), {
      'content-type': 'application/json',
    });
    assert.deepEqual([r.status, code(r)], [400, 'CSR_INVALID'], what);
  }
});

test('renew/a superseded certificate cannot renew again (JSON and EST); audited as suspicious; the chain stays true', async () => {
  const a = await enrollDevice(p.registry, p.ca, p.dir, { id: 'rot-1' });
  const renew = async (cred: Credential) =>
    post(
      '/v1/renew',
      JSON.stringify({ csr: await csrPem(await newKeys(), 'rot-1') }),
      { 'content-type': 'application/json' },
      cred,
    );
  const first = await renew(a);
  assert.equal(first.status, 201, first.body);
  const b = first.json<{ serial: string }>().serial;
  const again = await renew(a);
  assert.deepEqual([again.status, code(again)], [403, 'CERT_SUPERSEDED']);
  const est = await https(`${p.url}/.well-known/est/simplereenroll`, {
    ca,
    cred: a,
    body: (await csrPem(await newKeys(), 'rot-1')).replace(/-----[^-]+-----|\n/g, ''),
    headers: { 'content-type': 'application/pkcs10' },
  });
  assert.equal(est.status, 403);
  assert.match(est.body, /^CERT_SUPERSEDED: /);
  assert.equal(p.registry.getCertificate(a.serial)?.supersededBy, b, 'superseded_by still names the real renewal');
  assert.equal(p.registry.listCertificates({ deviceId: 'rot-1' }).length, 2, 'no third certificate');
  const suspicious = p.registry.listAudit().filter((e) => e.action === 'renew.superseded' && e.subject === 'rot-1');
  assert.equal(suspicious.length, 2);
});

test('errors/a refused peer hears the code and the public message: no operator reason, no device id', async () => {
  const t1 = tokenFor('nm-1');
  p.registry.addDeny({ kind: 'device', value: 'nm-1', reason: 'suspected clone, case INC-4411' }, 'test');
  const csr = await csrPem(await newKeys(), 'nm-1');
  const denied = await post('/v1/enroll', JSON.stringify({ token: t1, csr }), { 'content-type': 'application/json' });
  assert.equal(denied.status, 403);
  assert.doesNotMatch(denied.body, /INC-4411|clone|nm-1/);
  const t2 = tokenFor('leak-1');
  assert.equal(
    (
      await post('/v1/enroll', JSON.stringify({ token: t2, csr: await csrPem(await newKeys(), 'leak-1') }), {
        'content-type': 'application/json',
      })
    ).status,
    201,
  );
  const used = await post('/v1/enroll', JSON.stringify({ token: t2, csr }), { 'content-type': 'application/json' });
  assert.deepEqual([used.status, code(used)], [409, 'TOKEN_USED']);
  assert.doesNotMatch(used.body, /leak-1/);
  const est = await https(`${p.url}/.well-known/est/simpleenroll`, {
    ca,
    body: csr.replace(/-----[^-]+-----|\n/g, ''),
    headers: {
      'content-type': 'application/pkcs10',
      authorization: `Basic ${Buffer.from(`leak-1:${t2}`).toString('base64')}`,
    },
  });
  assert.equal(est.body, 'TOKEN_USED: enrollment token already used\n');
  assert.match(JSON.stringify(p.log.lines), /INC-4411/, 'the operator finds the reason in the log');
});

test('flood/anonymous EST refusals write no audit rows and are logged throttled', async () => {
  const auditBefore = p.registry.counts().audit;
  const linesBefore = p.log.lines.length;
  const csr = (await csrPem(await newKeys(), 'x')).replace(/-----[^-]+-----|\n/g, '');
  for (let i = 0; i < 60; i++) {
    const r = await https(`${p.url}/.well-known/est/simpleenroll`, {
      ca,
      body: csr,
      headers: {
        'content-type': 'application/pkcs10',
        authorization: `Basic ${Buffer.from(`ghost-${i}:fgt_nope${i}`).toString('base64')}`,
      },
    });
    assert.equal(r.status, 401);
  }
  assert.equal(p.registry.counts().audit, auditBefore, 'no audit rows for parties never identified');
  const refusals = p.log.lines.slice(linesBefore).filter((l) => l.code === 'TOKEN_INVALID');
  assert.ok(refusals.length > 0 && refusals.length <= 20, `${refusals.length} log lines for 60 refusals`);
});

test('state/the service still enrolls', async () => {
  const r = await post(
    '/v1/enroll',
    JSON.stringify({ token: tokenFor('last-1'), csr: await csrPem(await newKeys(), 'last-1') }),
    { 'content-type': 'application/json' },
  );
  assert.equal(r.status, 201);
});

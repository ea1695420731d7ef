// Issue #3 acceptance 3: token race, token expiry, claim allowlist, renewal — each by code.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { startTestProvisioning, type TestProvisioning } from '../harness/gateway.ts';
import { errorCodeOf, https } from '../harness/https.ts';
import { type Credential, csrPem, enrollDevice, forgeCert, newKeys } from '../harness/pki.ts';
import { fileScope, fleetgateOk } from '../harness/run.ts';

let p: TestProvisioning;
let ca: Buffer;
const scope = fileScope(after);

before(async () => {
  p = await startTestProvisioning(scope);
  ca = readFileSync(p.rootFile);
});

const code = errorCodeOf;

test('token/20 concurrent uses of one token produce exactly one certificate', async () => {
  const { token } = p.registry.addDevice({ id: 'race-1', type: 'sensor' }, 'test', { tokenTtlMs: 60_000 });
  const csrs = await Promise.all(Array.from({ length: 20 }, async () => csrPem(await newKeys(), 'race-1')));
  const results = await Promise.all(
    csrs.map((csr) => https(`${p.url}/v1/enroll`, { ca, body: JSON.stringify({ token: token!.token, csr }) })),
  );
  const statuses = results.map((r) => r.status).sort();
  assert.deepEqual(statuses, [201, ...Array(19).fill(409)]);
  assert.deepEqual(results.filter((r) => r.status === 409).map(code), Array(19).fill('TOKEN_USED'));
  assert.equal(p.registry.listCertificates({ deviceId: 'race-1' }).length, 1);
});

test('token/unknown → 401 TOKEN_INVALID; expired → 401 TOKEN_EXPIRED', async () => {
  const csr = await csrPem(await newKeys(), 'x');
  const unknown = await https(`${p.url}/v1/enroll`, { ca, body: JSON.stringify({ token: 'fgt_no-such-token', csr }) });
  assert.deepEqual([unknown.status, code(unknown)], [401, 'TOKEN_INVALID']);
  const { token } = p.registry.addDevice({ id: 'late-1', type: 'sensor' }, 'test', { tokenTtlMs: 1 });
  await new Promise((r) => setTimeout(r, 5));
  const expired = await https(`${p.url}/v1/enroll`, { ca, body: JSON.stringify({ token: token!.token, csr }) });
  assert.deepEqual([expired.status, code(expired)], [401, 'TOKEN_EXPIRED']);
  assert.equal(p.registry.listCertificates({ deviceId: 'late-1' }).length, 0);
});

test('claim/allowed serial enrolls once; unknown serial; second use; revoked claim', async () => {
  const out = join(p.dir, 'claim-line-1');
  await fleetgateOk([
    'claim',
    'create',
    'line-1',
    '--out',
    out,
    '--fleet',
    'north',
    '--types',
    'camera,sensor',
    '--data',
    p.config.dataDir,
  ]);
  await fleetgateOk(['claim', 'allow', 'line-1', '--serials', '-', '--data', p.config.dataDir], {
    input: 'SN-0001\nSN-0002\nSN-0003\n# comment\n\n',
  });
  const claim = {
    deviceId: 'claim',
    certPem: readFileSync(join(out, 'claim.crt'), 'utf8'),
    keyPem: readFileSync(join(out, 'claim.key'), 'utf8'),
  } as Credential;
  const enrollAs = async (hardwareSerial: string, cred: Credential | null = claim, type?: string, fleet?: string) =>
    https(`${p.url}/v1/enroll/claim`, {
      ca,
      ...(cred !== null && { cred }),
      body: JSON.stringify({
        hardwareSerial,
        csr: await csrPem(await newKeys(), hardwareSerial),
        ...(type && { type }),
        ...(fleet && { fleet }),
      }),
    });
  // The claim decides the fleet and the types; the holder of the claim certificate cannot.
  for (const [type, fleet] of [
    ['gateway', undefined],
    ['service', undefined],
    [undefined, 'south'],
  ] as const) {
    const r = await enrollAs('SN-0003', claim, type, fleet);
    assert.deepEqual([r.status, code(r)], [403, 'NOT_AUTHORIZED'], `type ${type} fleet ${fleet}`);
  }
  assert.equal(p.registry.getDevice('hw-SN-0003'), undefined, 'nothing created');
  const first = await enrollAs('SN-0001', claim, 'camera');
  assert.equal(first.status, 201, first.body);
  assert.equal(first.json<{ deviceId: string }>().deviceId, 'hw-SN-0001');
  assert.deepEqual(
    [p.registry.getDevice('hw-SN-0001')?.type, p.registry.getDevice('hw-SN-0001')?.fleet],
    ['camera', 'north'],
  );
  const byDefault = await enrollAs('SN-0003', claim, undefined, 'north');
  assert.equal(byDefault.status, 201, byDefault.body);
  assert.equal(p.registry.getDevice('hw-SN-0003')?.type, 'camera', "the claim's first type is the default");
  const second = await enrollAs('SN-0001');
  assert.deepEqual([second.status, code(second)], [409, 'SERIAL_ALREADY_ENROLLED']);
  const unknown = await enrollAs('SN-9999');
  assert.deepEqual([unknown.status, code(unknown)], [403, 'SERIAL_NOT_ALLOWED']);
  const noCert = await enrollAs('SN-0002', null);
  assert.deepEqual([noCert.status, code(noCert)], [401, 'CERT_REQUIRED']);
  const device = await enrollDevice(p.registry, p.ca, p.dir, { id: 'not-a-claim' });
  const wrongCert = await enrollAs('SN-0002', device);
  assert.deepEqual([wrongCert.status, code(wrongCert)], [403, 'NOT_AUTHORIZED']);
  await fleetgateOk(['claim', 'revoke', 'line-1', '--data', p.config.dataDir]);
  const revoked = await enrollAs('SN-0002');
  assert.deepEqual([revoked.status, code(revoked)], [403, 'CLAIM_REVOKED']);
  assert.equal(p.registry.getDevice('hw-SN-0002'), undefined, 'nothing created');
});

test('renew/valid; revoked; suspended; denylisted; expired', async () => {
  const renew = async (cred: Credential) =>
    https(`${p.url}/v1/renew`, {
      ca,
      cred,
      body: JSON.stringify({ csr: await csrPem(await newKeys(), cred.deviceId) }),
    });
  const good = await enrollDevice(p.registry, p.ca, p.dir, { id: 'renew-ok' });
  const ok = await renew(good);
  assert.equal(ok.status, 201, ok.body);
  const renewed = ok.json<{ serial: string; deviceId: string }>();
  assert.equal(renewed.deviceId, 'renew-ok');
  assert.equal(p.registry.getCertificate(good.serial)?.supersededBy, renewed.serial);
  assert.equal(p.registry.getCertificate(good.serial)?.revocation, null, 'overlap: the old one stays valid');

  const revoked = await enrollDevice(p.registry, p.ca, p.dir, { id: 'renew-revoked' });
  p.registry.revokeCertificate(revoked.serial, 1, 'test');
  const r1 = await renew(revoked);
  assert.deepEqual([r1.status, code(r1)], [403, 'CERT_REVOKED']);

  const suspended = await enrollDevice(p.registry, p.ca, p.dir, { id: 'renew-suspended' });
  p.registry.suspendDevice('renew-suspended', 'test');
  const r2 = await renew(suspended);
  assert.deepEqual([r2.status, code(r2)], [403, 'DEVICE_SUSPENDED']);

  const denied = await enrollDevice(p.registry, p.ca, p.dir, { id: 'renew-denied' });
  p.registry.addDeny({ kind: 'spki', value: denied.spki }, 'test');
  const r3 = await renew(denied);
  assert.deepEqual([r3.status, code(r3)], [403, 'DENYLISTED']);

  p.registry.addDevice({ id: 'renew-expired', type: 'sensor' }, 'test');
  const expired = await forgeCert(p.ca, p.dir, {
    name: 'renew-expired',
    deviceId: 'renew-expired',
    notBefore: new Date(Date.now() - 7_200_000),
    notAfter: new Date(Date.now() - 3_600_000),
    record: p.registry,
  });
  const r4 = await renew(expired);
  assert.deepEqual([r4.status, code(r4)], [403, 'CERT_EXPIRED']);
  for (const id of ['renew-revoked', 'renew-suspended', 'renew-denied', 'renew-expired']) {
    assert.equal(p.registry.listCertificates({ deviceId: id }).length, 1, `${id} got no new certificate`);
  }
});

test('audit/what identified parties did is audited with its code; anonymous refusals are logged, not audited; the token never appears', async () => {
  const refused = p.registry.listAudit().filter((a) => a.action === 'enroll.refused');
  const codes = new Set(refused.map((a) => a.detail.code));
  for (const c of ['TOKEN_USED', 'TOKEN_EXPIRED', 'SERIAL_NOT_ALLOWED', 'CLAIM_REVOKED', 'CERT_REVOKED'])
    assert.ok(codes.has(c), `${c} audited`);
  // An unknown token identifies nobody: anyone could write such rows without bound.
  assert.ok(!codes.has('TOKEN_INVALID'), 'an unknown token is not audited');
  assert.ok(
    p.log.lines.some((l) => l.code === 'TOKEN_INVALID' && l.decision === 'refused'),
    'but it is logged',
  );
  const text = JSON.stringify(p.registry.listAudit()) + JSON.stringify(p.log.lines);
  assert.doesNotMatch(text, /fgt_[A-Za-z0-9_-]{20,}/, 'no token in the audit log or the service log');
});

// Issue #6: the SDK's other enrollment paths — EST (cacerts, simpleenroll, simplereenroll), claim
// certificate, RSA-2048 keys — against the real provisioning service.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { enrollWithClaim, estCacerts, estSimpleEnroll, estSimpleReenroll, renew } from '../firmware-sdk/enroll.ts';
import { loadIdentity } from '../firmware-sdk/identity.ts';
import type { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { startTestProvisioning } from '../harness/gateway.ts';
import { fleetgateOk } from '../harness/run.ts';

test('sdk enroll/EST: cacerts, simpleenroll with Basic auth, simplereenroll with the current certificate', async (t) => {
  const p = await startTestProvisioning(t);
  const chain = await estCacerts(p.url, p.ca.rootPem);
  assert.deepEqual(chain, [p.ca.intermediatePem, p.ca.rootPem]);
  const { token } = p.registry.addDevice({ id: 'est-1', type: 'sensor' }, 'test', { tokenTtlMs: 60_000 });
  const identityDir = join(p.dir, 'est-1');
  const first = await estSimpleEnroll({
    server: p.url,
    ca: p.ca.rootPem,
    identityDir,
    deviceId: 'est-1',
    token: token!.token,
    keyType: 'rsa-2048',
  });
  assert.equal(first.info.deviceId, 'est-1');
  assert.match(first.keyPem, /PRIVATE KEY/);
  const second = await estSimpleReenroll({ server: p.url, identityDir });
  assert.notEqual(second.info.serial, first.info.serial);
  assert.equal(loadIdentity(identityDir).info.serial, second.info.serial, 'stored');
  const third = await renew({ server: p.url, identityDir });
  assert.equal(p.registry.getCertificate(second.info.serial)?.supersededBy, third.info.serial);
  await assert.rejects(
    estSimpleEnroll({
      server: p.url,
      ca: p.ca.rootPem,
      identityDir: join(p.dir, 'again'),
      deviceId: 'est-1',
      token: token!.token,
    }),
    (e: FleetgateError) => e.code === 'TOKEN_USED',
  );
});

test('sdk enroll/claim certificate + hardware serial', async (t) => {
  const p = await startTestProvisioning(t);
  const claimDir = join(p.dir, 'claim');
  await fleetgateOk([
    'claim',
    'create',
    'line-9',
    '--out',
    claimDir,
    '--types',
    'sensor,camera',
    '--data',
    p.config.dataDir,
  ]);
  await fleetgateOk(['claim', 'allow', 'line-9', '--serials', '-', '--data', p.config.dataDir], { input: 'SN-77\n' });
  const id = await enrollWithClaim({
    server: p.url,
    ca: p.ca.rootPem,
    identityDir: join(p.dir, 'hw'),
    claimDir,
    hardwareSerial: 'SN-77',
    type: 'camera',
  });
  assert.equal(id.info.deviceId, 'hw-SN-77');
  await assert.rejects(
    enrollWithClaim({
      server: p.url,
      ca: p.ca.rootPem,
      identityDir: join(p.dir, 'hw2'),
      claimDir,
      hardwareSerial: 'SN-77',
    }),
    (e: FleetgateError) => e.code === 'SERIAL_ALREADY_ENROLLED',
  );
});

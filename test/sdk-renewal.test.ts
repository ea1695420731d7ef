// Issue #6 acceptance 2: with a 2-minute certificate lifetime, a connected SDK device renews by
// itself and keeps publishing across the expiry of its first certificate, without the
// application doing anything; no QoS 1 message is lost across the switch (counted by the
// subscriber). Takes about 2 ½ minutes by nature.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { Device } from '../firmware-sdk/device.ts';
import { enrollWithToken } from '../firmware-sdk/enroll.ts';
import { startTestFleet } from '../harness/gateway.ts';
import { connect, end } from '../harness/mqtt.ts';
import { enrollDevice } from '../harness/pki.ts';
import { startProvisioning } from '../provisioning/api/server.ts';

test("sdk/renews by itself and keeps publishing across the first certificate's expiry; no QoS 1 loss", {
  timeout: 240_000,
}, async (t) => {
  const fleet = await startTestFleet(t, { FLEETGATE_PROVISION_PORT: '0', FLEETGATE_LEAF_VALIDITY: '2m' });
  const provisioning = await startProvisioning(fleet.config, { log: pino({ level: 'silent' }) });
  t.after(() => provisioning.close());
  const { token } = fleet.registry.addDevice({ id: 'renewer-1', type: 'sensor' }, 'test', { tokenTtlMs: 60_000 });
  const identityDir = join(fleet.dir, 'identity');
  const first = await enrollWithToken({
    server: provisioning.endpoint,
    ca: fleet.ca.rootPem,
    identityDir,
    token: token!.token,
  });
  assert.ok(first.info.notAfter - Date.now() <= 120_000 + 1_000, 'a two-minute certificate');

  const svc = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, {
    id: 'svc-1',
    type: 'service',
    validityMs: 3_600_000,
  });
  const sub = await connect(fleet.mqttsUrl, svc, { ca: fleet.rootFile });
  t.after(() => end(sub));
  const received = new Set<number>();
  sub.on('message', (_topic, payload) => received.add(Number(payload.toString())));
  await sub.subscribeAsync('devices/renewer-1/seq', { qos: 1 });

  const device = new Device({ identityDir, mqttUrl: fleet.mqttsUrl, provisioningUrl: provisioning.endpoint });
  t.after(() => device.stop());
  const renewals: string[] = [];
  device.on('renewed', (id: { info: { serial: string } }) => renewals.push(id.info.serial));
  await device.start();

  // The application only publishes: one QoS 1 message every 200 ms until 10 s past the first expiry.
  const sent: Promise<void>[] = [];
  let n = 0;
  while (Date.now() < first.info.notAfter + 10_000) {
    sent.push(device.publish('devices/renewer-1/seq', String(n++), { qos: 1 }));
    await new Promise((r) => setTimeout(r, 200));
  }
  await Promise.all(sent);
  await new Promise((r) => setTimeout(r, 500));
  assert.ok(renewals.length >= 1, 'renewed without being asked');
  assert.notEqual(device.identity.info.serial, first.info.serial);
  assert.ok(device.identity.info.notAfter > first.info.notAfter);
  assert.ok(device.connected, 'still connected after the first certificate expired');
  const missing = Array.from({ length: n }, (_, i) => i).filter((i) => !received.has(i));
  assert.deepEqual(missing, [], `${n} QoS 1 messages sent, none lost`);
  assert.equal(fleet.registry.getCertificate(first.info.serial)?.supersededBy, renewals[0]);
});

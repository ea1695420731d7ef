// Issue #6 acceptance 3: revoked while connected → the SDK reports the refusal, stops, and makes
// no further connection attempts (counted on the server over 10 s); after a gateway restart the
// SDK reconnects by itself, with backoff.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { loadConfig } from '../config/config.ts';
import { Device } from '../firmware-sdk/device.ts';
import { enrollWithToken } from '../firmware-sdk/enroll.ts';
import type { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { startGateway } from '../gateway/gateway.ts';
import { LogCapture, startTestFleet } from '../harness/gateway.ts';
import { startProvisioning } from '../provisioning/api/server.ts';

async function enrolledDevice(
  fleet: Awaited<ReturnType<typeof startTestFleet>>,
  t: import('node:test').TestContext,
  id: string,
) {
  const provisioning = await startProvisioning(fleet.config, { log: pino({ level: 'silent' }) });
  t.after(() => provisioning.close());
  const { token } = fleet.registry.addDevice({ id, type: 'sensor' }, 'test', { tokenTtlMs: 60_000 });
  const identityDir = join(fleet.dir, `id-${id}`);
  await enrollWithToken({ server: provisioning.endpoint, ca: fleet.ca.rootPem, identityDir, token: token!.token });
  return { identityDir, provisioningUrl: provisioning.endpoint };
}

const attemptsOn = (log: LogCapture, deviceId: string) =>
  log.lines.filter((l) => l.deviceId === deviceId && (l.decision === 'admitted' || l.decision === 'refused')).length;

for (const mqttVersion of [5, 3] as const) {
  test(`sdk/MQTT ${mqttVersion === 5 ? '5' : '3.1.1'}: revoked while connected: reports CERT_REVOKED, stops, no further attempts for 10 s`, async (t) => {
    const fleet = await startTestFleet(t, { FLEETGATE_PROVISION_PORT: '0' });
    const id = `victim-${mqttVersion}`;
    const { identityDir } = await enrolledDevice(fleet, t, id);
    // MQTT 5 learns the reason from the gateway's DISCONNECT (no HTTPS plane given); 3.1.1 has to ask /v1/whoami.
    const device = new Device({
      identityDir,
      mqttUrl: fleet.mqttsUrl,
      mqttVersion,
      ...(mqttVersion === 3 && { httpsUrl: fleet.httpsUrl }),
      backoff: { baseMs: 100, maxMs: 1_000 },
    });
    t.after(() => device.stop());
    await device.start();
    assert.ok(device.connected);
    const refused = new Promise<FleetgateError>((resolve) => device.once('refused', resolve));
    fleet.registry.revokeDevice(id, 1, 'test');
    const err = await refused;
    assert.ok(
      ['CERT_REVOKED', 'DEVICE_REVOKED'].includes(err.code),
      `the exact reason (${err.code}), ${mqttVersion === 5 ? 'said in the DISCONNECT' : 'learned from the HTTPS plane'}`,
    );
    if (mqttVersion === 3) assert.equal(err.code, 'CERT_REVOKED');
    assert.equal(device.refusal?.code, err.code);
    await assert.rejects(device.publish(`devices/${id}/x`, 'after'), (e: FleetgateError) => e.code === err.code);
    const seen = attemptsOn(fleet.log, id);
    const attempts = device.attempts;
    await new Promise((r) => setTimeout(r, 10_000));
    assert.equal(attemptsOn(fleet.log, id), seen, 'no connection attempt reached the gateway in 10 s');
    assert.equal(device.attempts, attempts);
  });
}

test('sdk/MQTT 5: a message outside its topics is refused (TOPIC_DENIED) without stopping the device; a kick reconnects; a revoked device is refused at CONNECT with the exact code', async (t) => {
  const fleet = await startTestFleet(t, { FLEETGATE_PROVISION_PORT: '0' });
  const { identityDir } = await enrolledDevice(fleet, t, 'polite-1');
  const device = new Device({ identityDir, mqttUrl: fleet.wssUrl, backoff: { baseMs: 100, maxMs: 500 } });
  t.after(() => device.stop());
  await device.start();
  await assert.rejects(
    device.publish('devices/someone-else/x', 'no', { qos: 1 }),
    (e: FleetgateError) => e.code === 'TOPIC_DENIED',
  );
  await assert.rejects(
    device.subscribe('devices/someone-else/#', { qos: 1 }),
    (e: FleetgateError) => e.code === 'TOPIC_DENIED',
  );
  await device.publish('devices/polite-1/x', 'yes', { qos: 1 });
  assert.ok(device.connected, 'still connected: MQTT 5 refuses the message, not the connection');
  const back = new Promise<void>((resolve) => device.once('disconnect', () => device.once('connect', () => resolve())));
  assert.equal(fleet.gateway.kick('polite-1', 'operator:test'), 1);
  await back;
  assert.equal(device.refusal, undefined, 'a kick is not a refusal');
  device.stop();
  // At CONNECT: the CONNACK's reason string names the code (no HTTPS plane here either).
  const other = await enrolledDevice(fleet, t, 'polite-2');
  fleet.registry.revokeDevice('polite-2', 1, 'test');
  const again = new Device({ identityDir: other.identityDir, mqttUrl: fleet.mqttsUrl });
  t.after(() => again.stop());
  await again.start();
  assert.equal(again.refusal?.code, 'CERT_REVOKED');
});

test('sdk/after a gateway restart the device reconnects by itself, with backoff; queued QoS 1 messages arrive', async (t) => {
  const fleet = await startTestFleet(t, { FLEETGATE_PROVISION_PORT: '0' });
  const { identityDir } = await enrolledDevice(fleet, t, 'survivor-1');
  const device = new Device({ identityDir, mqttUrl: fleet.mqttsUrl, backoff: { baseMs: 200, maxMs: 2_000 } });
  t.after(() => device.stop());
  await device.start();
  const attemptsBefore = device.attempts;
  const down = new Promise<void>((resolve) => device.once('disconnect', () => resolve()));
  await fleet.gateway.close();
  await down;
  const queued = device.publish('devices/survivor-1/while-down', 'queued', { qos: 1 });
  await new Promise((r) => setTimeout(r, 1_500)); // a few refused reconnects while it is down
  const log = new LogCapture();
  const config = loadConfig({
    dataDir: fleet.config.dataDir,
    env: {
      FLEETGATE_MQTT_PORT: String(fleet.gateway.ports.mqtts),
      FLEETGATE_WSS_PORT: '0',
      FLEETGATE_HTTPS_PORT: '0',
      FLEETGATE_ADMIN_PORT: '0',
      FLEETGATE_CONSOLE_PORT: '0',
    },
  });
  const again = await startGateway(config, { log: pino({ level: 'debug' }, log.stream) });
  t.after(() => again.close());
  await new Promise<void>((resolve) => (device.connected ? resolve() : device.once('connect', () => resolve())));
  await queued; // acknowledged by the new gateway
  assert.ok(device.attempts - attemptsBefore >= 2, `${device.attempts - attemptsBefore} attempts: retried while down`);
  assert.ok(log.lines.some((l) => l.decision === 'admitted' && l.deviceId === 'survivor-1'));
});

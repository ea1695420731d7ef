// Issue #6 acceptance 3: revoked while connected → the SDK reports the refusal, stops, and makes
// no further connection attempts (counted on the server over 10 s); after a gateway restart the
// SDK reconnects by itself, with backoff.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { Device } from '../firmware-sdk/device.ts';
import { enrollWithToken } from '../firmware-sdk/enroll.ts';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { startGateway } from '../gateway/gateway.ts';
import { loadConfig } from '../config/config.ts';
import { startProvisioning } from '../provisioning/api/server.ts';
import { LogCapture, startTestFleet } from './helpers/gateway.ts';

async function enrolledDevice(fleet: Awaited<ReturnType<typeof startTestFleet>>, t: import('node:test').TestContext, id: string) {
  const provisioning = await startProvisioning(fleet.config, { log: pino({ level: 'silent' }) });
  t.after(() => provisioning.close());
  const { token } = fleet.registry.addDevice({ id, type: 'sensor' }, 'test', { tokenTtlMs: 60_000 });
  const identityDir = join(fleet.dir, `id-${id}`);
  await enrollWithToken({ server: provisioning.endpoint, ca: fleet.ca.rootPem, identityDir, token: token!.token });
  return { identityDir, provisioningUrl: provisioning.endpoint };
}

const attemptsOn = (log: LogCapture, deviceId: string) => log.lines.filter((l) => l.deviceId === deviceId && (l.decision === 'admitted' || l.decision === 'refused')).length;

test('sdk/revoked while connected: reports CERT_REVOKED, stops, no further attempts for 10 s', async (t) => {
  const fleet = await startTestFleet(t, { FLEETGATE_PROVISION_PORT: '0' });
  const { identityDir } = await enrolledDevice(fleet, t, 'victim-1');
  const device = new Device({ identityDir, mqttUrl: fleet.mqttsUrl, httpsUrl: fleet.httpsUrl, backoff: { baseMs: 100, maxMs: 1_000 } });
  t.after(() => device.stop());
  await device.start();
  assert.ok(device.connected);
  const refused = new Promise<FleetgateError>((resolve) => device.once('refused', resolve));
  fleet.registry.revokeDevice('victim-1', 1, 'test');
  const err = await refused;
  assert.equal(err.code, 'CERT_REVOKED', 'the exact reason, learned from the HTTPS plane');
  assert.equal(device.refusal?.code, 'CERT_REVOKED');
  await assert.rejects(device.publish('devices/victim-1/x', 'after'), (e: FleetgateError) => e.code === 'CERT_REVOKED');
  const seen = attemptsOn(fleet.log, 'victim-1');
  const attempts = device.attempts;
  await new Promise((r) => setTimeout(r, 10_000));
  assert.equal(attemptsOn(fleet.log, 'victim-1'), seen, 'no connection attempt reached the gateway in 10 s');
  assert.equal(device.attempts, attempts);
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
    env: { FLEETGATE_MQTT_PORT: String(fleet.gateway.ports.mqtts), FLEETGATE_WSS_PORT: '0', FLEETGATE_HTTPS_PORT: '0', FLEETGATE_ADMIN_PORT: '0' },
  });
  const again = await startGateway(config, { log: pino({ level: 'debug' }, log.stream) });
  t.after(() => again.close());
  await new Promise<void>((resolve) => (device.connected ? resolve() : device.once('connect', () => resolve())));
  await queued; // acknowledged by the new gateway
  assert.ok(device.attempts - attemptsBefore >= 2, `${device.attempts - attemptsBefore} attempts: retried while down`);
  assert.ok(log.lines.some((l) => l.decision === 'admitted' && l.deviceId === 'survivor-1'));
});

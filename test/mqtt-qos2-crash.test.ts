// Issue #11: QoS 2 is exactly once across a gateway crash. A persistent session publishes QoS 2,
// gets its PUBREC (the id is on disk with the message), the gateway is SIGKILLed, and the client —
// which for all it knows never saw the PUBREC — sends the same PUBLISH again (DUP) after the
// restart: it is acknowledged and not delivered a second time [MQTT-4.3.3-2]; PUBREL → PUBCOMP
// releases the id, and a new message may then use it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import mqtt from 'mqtt';
import type { IConnackPacket, IPubcompPacket, IPubrecPacket } from 'mqtt-packet';
import { end, withTimeout } from '../harness/mqtt.ts';
import { enrollDevice } from '../harness/pki.ts';
import { bytes, connectBytes, rawClient } from '../harness/raw-mqtt.ts';
import { benchFleet, type GatewayProcess, spawnService, stablePort } from '../harness/services.ts';

test('qos2 crash/a QoS 2 PUBLISH sent again after a SIGKILL of the gateway is acknowledged, not delivered twice', {
  timeout: 120_000,
}, async (t) => {
  const fleet = await benchFleet(); // a data dir with a CA and registry, removed after the test
  t.after(() => {
    fleet.registry.close();
    fleet.cleanup();
  });
  const { dir, config, registry, ca } = fleet;
  const pub = await enrollDevice(registry, ca, dir, { id: 'q2-pub' });
  const svc = await enrollDevice(registry, ca, dir, { id: 'q2-svc', type: 'service' });

  // Restarted on the same port, from outside the ephemeral range (nothing else takes it meanwhile).
  const port = String(await stablePort());
  let gateway: GatewayProcess = await spawnService('gateway', config.dataDir, { FLEETGATE_MQTT_PORT: port });
  t.after(() => gateway.stop());
  const url = `mqtts://127.0.0.1:${port}`;

  // The subscriber reconnects by itself; what it receives is counted by payload.
  const got: string[] = [];
  const sub = await mqtt.connectAsync(url, {
    ca: ca.rootPem,
    cert: svc.certPem,
    key: svc.keyPem,
    clientId: 'q2-svc',
    reconnectPeriod: 200,
    servername: 'localhost',
  });
  t.after(() => end(sub));
  sub.on('error', () => undefined);
  sub.on('message', (_t, payload) => got.push(payload.toString()));
  await sub.subscribeAsync('devices/+/telemetry', { qos: 1 });

  // 1. A persistent session publishes QoS 2 and receives PUBREC: the message and its id are committed.
  const publish = (dup: boolean, payload: string) =>
    bytes({ cmd: 'publish', topic: 'devices/q2-pub/telemetry', payload, qos: 2, messageId: 7, dup, retain: false });
  let raw = await rawClient(url, pub, ca.rootPem);
  raw.send(connectBytes('q2-pub', { clean: false }));
  await raw.next('connack');
  raw.send(publish(false, 'once'));
  assert.equal(((await raw.next('pubrec')) as IPubrecPacket).messageId, 7);
  await withTimeout(
    (async () => {
      while (!got.includes('once')) await new Promise((r) => setTimeout(r, 20));
    })(),
    15_000,
    'the first delivery',
  );

  // 2. SIGKILL before the PUBREL; restart on the same port.
  gateway.child.kill('SIGKILL');
  await new Promise((r) => gateway.child.once('exit', r));
  raw.end();
  gateway = await spawnService('gateway', config.dataDir, { FLEETGATE_MQTT_PORT: port });
  await withTimeout(
    new Promise((r) => (sub.connected ? r(undefined) : sub.once('connect', r))),
    20_000,
    'the subscriber back',
  );
  await sub.subscribeAsync('devices/+/telemetry', { qos: 1 }); // subscribed again before the resend, so a second delivery would be seen

  // 3. The same PUBLISH again (DUP): PUBREC, and no second delivery; PUBREL → PUBCOMP.
  raw = await rawClient(url, pub, ca.rootPem);
  t.after(() => raw.end());
  raw.send(connectBytes('q2-pub', { clean: false }));
  assert.equal(((await raw.next('connack')) as IConnackPacket).sessionPresent, true, 'the session survived the crash');
  raw.send(publish(true, 'once'));
  assert.equal(((await raw.next('pubrec')) as IPubrecPacket).messageId, 7);
  raw.send(bytes({ cmd: 'pubrel', messageId: 7 }));
  assert.equal(((await raw.next('pubcomp')) as IPubcompPacket).messageId, 7);

  // 4. The id is free again: a new message with it is delivered. It follows the resend on the same
  //    connection, so once it has arrived a second "once" would have arrived before it.
  raw.send(publish(false, 'second'));
  await raw.next('pubrec');
  raw.send(bytes({ cmd: 'pubrel', messageId: 7 }));
  await raw.next('pubcomp');
  await withTimeout(
    (async () => {
      while (!got.includes('second')) await new Promise((r) => setTimeout(r, 20));
    })(),
    15_000,
    'the new message',
  );
  assert.deepEqual(
    got.filter((g) => g === 'once'),
    ['once'],
    'exactly once across the crash',
  );
});

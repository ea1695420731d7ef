// Issue #11: bounded everything. A subscriber that stops reading never stalls the others (its
// QoS 0 is dropped and counted, then it is disconnected after the drain timeout); retained
// messages are bounded per device, and a revoked device's retained messages go with it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { startTestFleet } from '../harness/gateway.ts';
import { https } from '../harness/https.ts';
import { connect, end } from '../harness/mqtt.ts';
import { enrollDevice } from '../harness/pki.ts';
import { bytes, connectBytes } from '../harness/raw-mqtt.ts';

test('slow consumer/one subscriber stops reading: the others get every message at their pace; it is dropped after the drain timeout', {
  timeout: 120_000,
}, async (t) => {
  // The subscribers are services, whose own bound (16 MiB by default: they absorb the fleet's bursts) is set small here.
  const fleet = await startTestFleet(
    t,
    { FLEETGATE_MQTT_DRAIN_TIMEOUT: '2s' },
    { gateway: { limits: { service: { maxOutboundBytes: 65536 } } } },
  );
  const dev = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'dev-1' });
  const fastCred = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'svc-fast', type: 'service' });
  const slowCred = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'svc-slow', type: 'service' });

  // The slow one: subscribes, then never reads again.
  const slow = tlsConnect({
    host: '127.0.0.1',
    port: fleet.gateway.ports.mqtts,
    ca: fleet.ca.rootPem,
    cert: slowCred.certPem,
    key: slowCred.keyPem,
    servername: 'localhost',
  });
  slow.on('error', () => undefined);
  await new Promise<void>((resolve) => slow.once('secureConnect', () => resolve()));
  const slowClosed = new Promise<number>((resolve) => slow.once('close', () => resolve(Date.now())));
  slow.write(connectBytes('svc-slow'));
  slow.write(bytes({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/+/telemetry', qos: 0 }] }));
  await new Promise<void>((resolve) => {
    let seen = Buffer.alloc(0);
    const on = (b: Buffer) => {
      seen = Buffer.concat([seen, b]);
      if (seen.includes(Buffer.from([0x90, 0x03, 0x00, 0x01]))) {
        slow.off('data', on);
        resolve();
      } // SUBACK for id 1
    };
    slow.on('data', on);
  });
  slow.pause();

  const fast = await connect(fleet.mqttsUrl, fastCred, { ca: fleet.rootFile });
  t.after(() => end(fast));
  let got = 0;
  fast.on('message', () => {
    got++;
  });
  await fast.subscribeAsync('devices/+/telemetry', { qos: 0 });
  const pub = await connect(fleet.mqttsUrl, dev, { ca: fleet.rootFile });
  t.after(() => end(pub));
  const N = 4_000;
  const payload = Buffer.alloc(4096, 0x61);
  const started = Date.now();
  for (let i = 0; i < N; i++) await pub.publishAsync('devices/dev-1/telemetry', payload, { qos: 1 });
  for (let i = 0; i < 200 && got < N; i++) await new Promise((r) => setTimeout(r, 50));
  assert.equal(got, N, 'the reading subscriber got every message');
  await fleet.log.find((l) => l.code === 'SLOW_CONSUMER' && l.deviceId === 'svc-slow', 30_000);
  assert.deepEqual(
    fleet.gateway.sessions.ofDevice('svc-slow'),
    [],
    'the subscriber that does not read was disconnected',
  );
  slow.resume(); // now it reads: what it finds is the end of the connection
  const closedAt = await Promise.race([slowClosed, new Promise<number>((r) => setTimeout(() => r(0), 30_000))]);
  assert.ok(closedAt > 0, 'its connection is closed');
  const metrics = (await https(`https://127.0.0.1:${fleet.gateway.ports.admin}/metrics`, { ca: fleet.ca.rootPem }))
    .body;
  assert.match(metrics, /fleetgate_mqtt_dropped_total\{reason="slow_consumer"\} [1-9]/);
  assert.match(metrics, /fleetgate_mqtt_slow_consumers_total [1-9]/);
  assert.ok(Date.now() - started < 110_000);
});

test("retained/quota per device: past it a message is delivered but not retained; a revoked device's retained messages are removed", async (t) => {
  const fleet = await startTestFleet(t, { FLEETGATE_MQTT_RETAINED_PER_DEVICE: '3' });
  const a = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'ret-a' });
  const b = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'ret-b' });
  const svc = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'svc-r', type: 'service' });
  const pa = await connect(fleet.mqttsUrl, a, { ca: fleet.rootFile });
  const pb = await connect(fleet.mqttsUrl, b, { ca: fleet.rootFile });
  t.after(() => end(pa, pb));
  for (let i = 1; i <= 5; i++) await pa.publishAsync(`devices/ret-a/r/${i}`, `a${i}`, { qos: 1, retain: true });
  await pb.publishAsync('devices/ret-b/r/1', 'b1', { qos: 1, retain: true });
  const retainedNow = async (filter: string) => {
    const s = await connect(fleet.mqttsUrl, svc, { ca: fleet.rootFile });
    const got: string[] = [];
    s.on('message', (_t, p, packet) => {
      if (packet.retain) got.push(p.toString());
    });
    await s.subscribeAsync(filter, { qos: 1 });
    await new Promise((r) => setTimeout(r, 300));
    await end(s);
    return got.sort();
  };
  assert.deepEqual(await retainedNow('devices/ret-a/r/#'), ['a1', 'a2', 'a3'], 'three retained, the rest refused');
  assert.deepEqual(await retainedNow('devices/ret-b/r/#'), ['b1'], 'another device has its own quota');
  const metrics = (await https(`https://127.0.0.1:${fleet.gateway.ports.admin}/metrics`, { ca: fleet.ca.rootPem }))
    .body;
  assert.match(metrics, /fleetgate_mqtt_retained_refused_total 2/);
  // Replacing a retained topic does not count twice.
  await pa.publishAsync('devices/ret-a/r/1', 'a1-new', { qos: 1, retain: true });
  assert.deepEqual(await retainedNow('devices/ret-a/r/1'), ['a1-new']);
  fleet.registry.revokeDevice('ret-a', 1, 'test');
  let left = ['?'];
  for (let i = 0; i < 50 && left.length > 0; i++) {
    left = await retainedNow('devices/ret-a/#');
  }
  assert.deepEqual(left, [], "the revoked device's retained messages are gone");
  assert.deepEqual(await retainedNow('devices/ret-b/#'), ['b1'], 'others keep theirs');
});

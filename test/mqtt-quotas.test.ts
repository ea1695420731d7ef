// Issue #25 points 2 and 3: per-device quotas. Subscriptions per session are capped per device
// type (SUBACK 0x80; MQTT 5 0x97 Quota exceeded), counted, logged (throttled), and shown among the
// console's refusals; inbound messages and bytes per second are bounded per device type.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { nodeTotals } from '../gateway/node-totals.ts';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { bytes, bytes5, connect5Bytes, connectBytes, rawClient } from '../harness/raw-mqtt.ts';
import { fileScope } from '../harness/run.ts';

let fleet: TestFleet;
let sensor: Credential;
const scope = fileScope(after);

before(async () => {
  fleet = await startTestFleet(scope, {}, { gateway: { limits: { sensor: { maxSubscriptions: 3 } } } });
  sensor = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'subs-1' });
});

const filters = (n: number, from = 0) =>
  Array.from({ length: n }, (_, i) => ({ topic: `devices/subs-1/f${from + i}`, qos: 0 }));

test('subscriptions/past the type cap a 3.1.1 SUBACK says 0x80 for the extra filters; the session keeps the rest', async (t) => {
  const raw = await rawClient(fleet.mqttsUrl, sensor, fleet.ca.rootPem);
  t.after(() => raw.end());
  raw.send(connectBytes('subs-1'));
  assert.equal(((await raw.next('connack')) as { returnCode: number }).returnCode, 0);
  raw.send(bytes({ cmd: 'subscribe', messageId: 1, subscriptions: filters(5) }));
  const suback = (await raw.next('suback')) as { granted: number[] };
  assert.deepEqual(suback.granted, [0, 0, 0, 0x80, 0x80]);
  // Re-subscribing to a filter it holds is a replacement, not a new subscription: granted.
  raw.send(bytes({ cmd: 'subscribe', messageId: 2, subscriptions: filters(1) }));
  assert.deepEqual(((await raw.next('suback')) as { granted: number[] }).granted, [0]);
  const denied = await fleet.gateway.metrics.denied.get();
  assert.ok(
    denied.values.some((v) => v.labels.code === 'QUOTA_EXCEEDED' && v.labels.action === 'subscribe' && v.value >= 2),
    'counted',
  );
  const totals = await nodeTotals(fleet.gateway.metrics, fleet.gateway.sessions);
  assert.ok(
    totals.refusals.some(([code]) => code === 'QUOTA_EXCEEDED'),
    "among the console's refusals",
  );
});

test('subscriptions/MQTT 5: 0x97 Quota exceeded, with the catalogue code as reason string', async (t) => {
  const raw = await rawClient(fleet.mqttsUrl, sensor, fleet.ca.rootPem, { v5: true });
  t.after(() => raw.end());
  raw.send(connect5Bytes('subs-1'));
  assert.equal(((await raw.next('connack')) as { reasonCode: number }).reasonCode, 0);
  raw.send(bytes5({ cmd: 'subscribe', messageId: 1, subscriptions: filters(4, 10) }));
  const suback = (await raw.next('suback')) as { granted: number[]; properties?: { reasonString?: string } };
  assert.deepEqual(suback.granted, [0, 0, 0, 0x97]);
  assert.match(suback.properties?.reasonString ?? '', /QUOTA_EXCEEDED/);
});

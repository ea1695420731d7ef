// Issue #25 points 2 and 3: per-device quotas. Subscriptions per session are capped per device
// type (SUBACK 0x80; MQTT 5 0x97 Quota exceeded), counted, logged (throttled), and shown among the
// console's refusals; inbound messages and bytes per second are bounded per device type.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { nodeTotals } from '../gateway/node-totals.ts';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { errorCodeOf, https } from '../harness/https.ts';
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

/** A fleet whose sensors may send 5 messages a second (burst 50) and connect 3 times a minute. */
async function tightFleet(
  t: import('node:test').TestContext,
  env: NodeJS.ProcessEnv = {},
  sensor: Record<string, number> = { messagesPerSecond: 5, connectsPerMinute: 3, requestsPerSecond: 1 },
) {
  const limits = { sensor };
  const f = await startTestFleet(t, { FLEETGATE_LIMITS: JSON.stringify(limits), ...env });
  const cred = await enrollDevice(f.registry, f.ca, f.dir, { id: 'chatty-1' });
  return { f, cred };
}

const publish = (id: string, i: number, qos = 0) =>
  bytes5({
    cmd: 'publish',
    topic: `devices/${id}/telemetry`,
    payload: `m${i}`,
    qos,
    ...(qos > 0 && { messageId: i + 1 }),
  });

test('rates/MQTT 5 over its messages a second: DISCONNECT 0x96 Message rate too high (quotaAction disconnect)', async (t) => {
  const { f, cred } = await tightFleet(t);
  const raw = await rawClient(f.mqttsUrl, cred, f.ca.rootPem, { v5: true });
  t.after(() => raw.end());
  raw.send(connect5Bytes('chatty-1'));
  assert.equal(((await raw.next('connack')) as { reasonCode: number }).reasonCode, 0);
  for (let i = 0; i < 200; i++) raw.send(publish('chatty-1', i));
  const d = (await raw.next('disconnect')) as { reasonCode: number; properties?: { reasonString?: string } };
  assert.equal(d.reasonCode, 0x96);
  assert.ok(await raw.closed(), 'and the connection is closed');
  const denied = await f.gateway.metrics.denied.get();
  assert.ok(denied.values.some((v) => v.labels.code === 'RATE_LIMITED' && v.value >= 1));
});

test('rates/MQTT 3.1.1 over its rate: closed (3.1.1 has no way to say why)', async (t) => {
  const { f, cred } = await tightFleet(t);
  const raw = await rawClient(f.mqttsUrl, cred, f.ca.rootPem);
  t.after(() => raw.end());
  raw.send(connectBytes('chatty-1'));
  assert.equal(((await raw.next('connack')) as { returnCode: number }).returnCode, 0);
  for (let i = 0; i < 200; i++) raw.send(bytes({ cmd: 'publish', topic: 'devices/chatty-1/t', payload: 'x', qos: 0 }));
  assert.ok(await raw.closed(), 'closed');
});

test('rates/quotaAction drop: MQTT 5 QoS 1 past the rate gets PUBACK 0x97 and the connection stays', async (t) => {
  const { f, cred } = await tightFleet(t, { FLEETGATE_QUOTA_ACTION: 'drop' });
  const raw = await rawClient(f.mqttsUrl, cred, f.ca.rootPem, { v5: true });
  t.after(() => raw.end());
  raw.send(connect5Bytes('chatty-1'));
  assert.equal(((await raw.next('connack')) as { reasonCode: number }).reasonCode, 0);
  const codes: number[] = [];
  for (let i = 0; i < 60; i++) {
    raw.send(publish('chatty-1', i, 1));
    codes.push(((await raw.next('puback')) as { reasonCode?: number }).reasonCode ?? 0);
  }
  assert.ok(
    codes.slice(0, 40).every((c) => c === 0),
    'the burst passes',
  );
  assert.ok(codes.includes(0x97), 'past it: Quota exceeded');
  raw.send(bytes5({ cmd: 'pingreq' }));
  await raw.next('pingresp');
});

test('rates/a reconnect loop: past its connects a minute, CONNACK refuses (3.1.1: 3; MQTT 5: 0x9F)', async (t) => {
  const { f, cred } = await tightFleet(t);
  const codes: number[] = [];
  for (let i = 0; i < 4; i++) {
    const raw = await rawClient(f.mqttsUrl, cred, f.ca.rootPem);
    raw.send(connectBytes('chatty-1'));
    codes.push(((await raw.next('connack')) as { returnCode: number }).returnCode);
    raw.end();
  }
  assert.deepEqual(codes, [0, 0, 0, 3]);
  const raw5 = await rawClient(f.mqttsUrl, cred, f.ca.rootPem, { v5: true });
  t.after(() => raw5.end());
  raw5.send(connect5Bytes('chatty-1'));
  const connack = (await raw5.next('connack')) as { reasonCode: number; properties?: { reasonString?: string } };
  assert.equal(connack.reasonCode, 0x9f);
  assert.match(connack.properties?.reasonString ?? '', /RATE_LIMITED/);
});

test('rates/HTTPS past its requests a second: 429 RATE_LIMITED with Retry-After', async (t) => {
  const { f, cred } = await tightFleet(t, {}, { requestsPerSecond: 1, connectsPerMinute: 1_000 });
  const ca = readFileSync(f.rootFile);
  const statuses: number[] = [];
  let retryAfter: string | undefined;
  for (let i = 0; i < 14; i++) {
    const r = await https(`${f.httpsUrl}/v1/whoami`, { ca, cred });
    statuses.push(r.status);
    if (r.status === 429) {
      assert.equal(errorCodeOf(r), 'RATE_LIMITED');
      retryAfter = String(r.headers['retry-after']);
    }
  }
  assert.ok(
    statuses.slice(0, 3).every((s) => s === 200),
    `the burst passes: ${statuses}`,
  );
  assert.ok(statuses.includes(429), `past it, 429: ${statuses}`);
  assert.ok(Number(retryAfter) >= 1, `Retry-After ${retryAfter}`);
});

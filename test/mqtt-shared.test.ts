// Issue #28: shared subscriptions ($share/<name>/<filter>) for backend services, on one node.
// A group of services takes each message once in total; a member that dies hands what it was
// owed to the others; a device may not join; retained messages are not sent on a shared
// subscription; MQTT 5 and 3.1.1 members in one group. (Across nodes: test/cluster-nats.test.ts.)
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { MqttClient } from 'mqtt';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { collect, connect, until } from '../harness/mqtt.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope } from '../harness/run.ts';

const scope = fileScope(after);
let fleet: TestFleet;
let sensor: Credential;
const services: Credential[] = [];

before(async () => {
  // Quotas off: 3,000 messages from one sensor in a burst is the point here, not its rate quota.
  fleet = await startTestFleet(scope, { FLEETGATE_QUOTAS: 'false' });
  sensor = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'sh-sensor' });
  for (let i = 0; i < 4; i++)
    services.push(await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: `sh-svc-${i}`, type: 'service' }));
});

async function publishMany(client: MqttClient, topic: string, n: number, from = 0): Promise<void> {
  const sends: Promise<unknown>[] = [];
  for (let i = from; i < from + n; i++) sends.push(client.publishAsync(topic, `m-${i}`, { qos: 1 }));
  await Promise.all(sends);
}

test('shared/a group of 3 services (MQTT 5 and 3.1.1) takes each of 3,000 QoS 1 messages exactly once, in equal shares; an ordinary subscriber gets all', async () => {
  const members = await Promise.all(
    [5, 4, 5].map((v, i) => connect(fleet.mqttsUrl, services[i], { ca: fleet.rootFile, protocolVersion: v as 4 | 5 })),
  );
  const watcher = await connect(fleet.mqttsUrl, services[3], { ca: fleet.rootFile, protocolVersion: 5 });
  const pub = await connect(fleet.mqttsUrl, sensor, { ca: fleet.rootFile });
  try {
    const got = members.map((m) => collect(m, 'devices/sh-sensor/telemetry'));
    const all = collect(watcher, 'devices/sh-sensor/telemetry');
    for (const m of members) {
      const ack = await m.subscribeAsync('$share/workers/devices/+/telemetry', { qos: 1 });
      assert.equal(ack[0]?.qos, 1, 'granted');
    }
    await watcher.subscribeAsync('devices/+/telemetry', { qos: 1 });
    await publishMany(pub, 'devices/sh-sensor/telemetry', 3_000);
    await until('every message reached the group', () => got.reduce((n, g) => n + g.length, 0) >= 3_000, 60_000);
    await until('and the ordinary subscriber', () => all.length >= 3_000, 60_000);
    const seen = got.flat();
    assert.equal(seen.length, 3_000, 'none twice');
    assert.equal(new Set(seen).size, 3_000, 'none lost');
    const shares = got.map((g) => g.length);
    assert.ok(
      shares.every((n) => n >= 900 && n <= 1_100),
      `round robin: equal shares, give or take a member's moment of back-pressure (${shares})`,
    );
    assert.equal(new Set(all).size, 3_000);
  } finally {
    await Promise.all([...members, watcher, pub].map((c) => c.endAsync()));
  }
});

test('shared/a member killed mid-run: what it was owed goes to the others; nothing lost, a message twice only if it was in flight', async () => {
  const members = await Promise.all(
    [0, 1, 2].map((i) => connect(fleet.mqttsUrl, services[i], { ca: fleet.rootFile, protocolVersion: 5 })),
  );
  const pub = await connect(fleet.mqttsUrl, sensor, { ca: fleet.rootFile });
  try {
    const got = members.map((m) => collect(m, 'devices/sh-sensor/kill'));
    for (const m of members) await m.subscribeAsync('$share/killers/devices/+/kill', { qos: 1 });
    // The victim dies without a DISCONNECT while its share of a burst is still in flight or queued.
    const victim = members[0]!;
    await publishMany(pub, 'devices/sh-sensor/kill', 1_500, 0);
    (victim as unknown as { stream: { destroy(): void } }).stream.destroy();
    await publishMany(pub, 'devices/sh-sensor/kill', 1_500, 1_500);
    await until(
      'every message reached a living member or the victim before it died',
      () => new Set(got.flat()).size >= 3_000,
      60_000,
    );
    const seen = got.flat();
    const twice = seen.length - new Set(seen).size;
    assert.equal(new Set(seen).size, 3_000, 'none lost');
    assert.ok(twice <= fleet.config.mqtt.maxInflight, `${twice} delivered twice (at most the in-flight window)`);
    console.log(`# member killed: ${got.map((g) => g.length)} received; ${twice} redelivered twice`);
    await until('the handover is logged', () =>
      fleet.log.lines.some((l) => l.msg === 'shared-subscription messages given to other members'),
    );
  } finally {
    await Promise.all(
      members
        .slice(1)
        .concat(pub)
        .map((c) => c.endAsync()),
    );
  }
});

test('shared/a device may not join a group (0x87 on MQTT 5, 0x80 on 3.1.1), and each refusal is a log line and a count', async () => {
  // mqtt.js rejects a SUBACK that refuses everything; the packet's code is in the error.
  for (const [protocolVersion, code] of [
    [5, 0x87],
    [4, 0x80],
  ] as const) {
    const client = await connect(fleet.mqttsUrl, sensor, { ca: fleet.rootFile, protocolVersion });
    try {
      await assert.rejects(
        client.subscribeAsync('$share/g/devices/sh-sensor/#', { qos: 1 }),
        (e: { packet?: { granted?: number[] } }) => {
          assert.deepEqual(e.packet?.granted, [code]);
          return true;
        },
      );
    } finally {
      await client.endAsync();
    }
  }
  await until('logged with its code', () =>
    fleet.log.lines.some(
      (l) => l.msg === 'subscribe refused' && l.code === 'NOT_AUTHORIZED' && l.topic === '$share/g/devices/sh-sensor/#',
    ),
  );
  const metrics = await fleet.gateway.metrics.registry.getSingleMetricAsString('fleetgate_denied_total');
  assert.match(metrics, /action="subscribe",code="NOT_AUTHORIZED"\} [2-9]/);
});

test('shared/a retained message is not sent on a shared subscription; QoS per member; leaving stops delivery', async () => {
  const pub = await connect(fleet.mqttsUrl, sensor, { ca: fleet.rootFile });
  const m0 = await connect(fleet.mqttsUrl, services[0], { ca: fleet.rootFile, protocolVersion: 5 });
  try {
    await pub.publishAsync('devices/sh-sensor/state', 'kept', { qos: 1, retain: true });
    const got: { payload: string; qos: number; retain: boolean }[] = [];
    m0.on('message', (_t, payload, packet) =>
      got.push({ payload: payload.toString(), qos: packet.qos, retain: packet.retain }),
    );
    await m0.subscribeAsync('$share/solo/devices/sh-sensor/state', { qos: 0 });
    await pub.publishAsync('devices/sh-sensor/state', 'live', { qos: 1 });
    await until('the live message', () => got.length >= 1);
    assert.deepEqual(got, [{ payload: 'live', qos: 0, retain: false }], 'no retained message; QoS 0 as subscribed');
    await m0.unsubscribeAsync('$share/solo/devices/sh-sensor/state');
    await m0.subscribeAsync('devices/sh-sensor/marker', { qos: 1 });
    await pub.publishAsync('devices/sh-sensor/state', 'after-leaving', { qos: 1 });
    await pub.publishAsync('devices/sh-sensor/marker', 'marker', { qos: 1 });
    await until('the marker', () => got.some((g) => g.payload === 'marker'));
    assert.ok(!got.some((g) => g.payload === 'after-leaving'));
  } finally {
    await pub.publishAsync('devices/sh-sensor/state', '', { qos: 1, retain: true });
    await Promise.all([pub.endAsync(), m0.endAsync()]);
  }
});

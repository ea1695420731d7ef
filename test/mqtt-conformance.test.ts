// Issue #11: a conformance module of our own for the MQTT core, written from the MQTT 3.1.1
// normative statements (ids cited per case). Raw packets over mqtts and wss for what no client
// library will send; mqtt.js for the flows. Every malformed packet closes that connection only,
// with a coded log line, while a witness connection carries on.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { MqttClient } from 'mqtt';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { connect, end, nextMessage } from '../harness/mqtt.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { bytes, connectBytes, frame, rawClient, str } from '../harness/raw-mqtt.ts';
import { fileScope } from '../harness/run.ts';

const scope = fileScope(after);
let fleet: TestFleet;
const c: Record<string, Credential> = {};
let witness: MqttClient;

before(async () => {
  fleet = await startTestFleet(scope);
  for (const id of ['dev-1', 'dev-2', 'dev-3', 'dev-4', 'dev-5'])
    c[id] = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id });
  c.svc = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'svc-1', type: 'service' });
  c.svc2 = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'svc-2', type: 'service' });
  c.witness = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'witness-1' });
  witness = await connect(fleet.mqttsUrl, c.witness, { ca: fleet.rootFile });
  scope.after(() => end(witness));
});

const T = 'devices/dev-1/x';
const connectRaw = (flags: number, payload: Buffer[], name = 'MQTT', level = 4) =>
  frame(0x10, Buffer.concat([str(name), Buffer.from([level, flags, 0, 30]), ...payload]));

/** Each case: what is sent, and the normative statement it breaks. */
const beforeConnect: [string, Buffer][] = [
  ['MQTT-3.1.2-3 CONNECT reserved flag set', connectRaw(0x03, [str('dev-1')])],
  ['MQTT-3.1.2-14 will QoS 3', connectRaw(0x02 | 0x04 | 0x18, [str('dev-1'), str('devices/dev-1/will'), str('bye')])],
  ['MQTT-3.1.2-11 will QoS without the will flag', connectRaw(0x02 | 0x08, [str('dev-1')])],
  ['MQTT-3.1.2-22 password flag without user name flag', connectRaw(0x02 | 0x40, [str('dev-1'), str('pw')])],
  ['MQTT-1.5.3-1 client id not well-formed UTF-8', connectRaw(0x02, [str(Buffer.from([0x64, 0xff, 0x31]))])],
  ['MQTT-1.5.3-2 client id with U+0000', connectRaw(0x02, [str('dev\u00001')])],
  ['MQTT-3.1.2-1 protocol name not MQTT', connectRaw(0x02, [str('dev-1')], 'MQTX')],
  [
    'MQTT-2.2.2-1 CONNECT with fixed-header flags',
    Buffer.concat([Buffer.from([0x11]), connectBytes('dev-1').subarray(1)]),
  ],
  ['MQTT-3.1.0-1 first packet is not CONNECT', Buffer.from([0xc0, 0x00])],
  ['MQTT-2.2.3 remaining length of five bytes', Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0x7f])],
  ['MQTT-2.2.1 a client sends CONNACK', Buffer.from([0x20, 0x02, 0x00, 0x00])],
];

const afterConnect: [string, Buffer][] = [
  ['MQTT-3.1.0-2 a second CONNECT', connectBytes('dev-1')],
  ['MQTT-3.3.1-4 PUBLISH with QoS 3', frame(0x36, Buffer.concat([str(T), Buffer.from([0, 1])]))],
  ['MQTT-3.3.1-2 DUP set on QoS 0', frame(0x38, str(T))],
  ['MQTT-2.3.1-1 QoS 1 PUBLISH with packet id 0', frame(0x32, Buffer.concat([str(T), Buffer.from([0, 0])]))],
  [
    'MQTT-1.5.3-1 topic name not well-formed UTF-8',
    frame(0x30, str(Buffer.concat([Buffer.from('devices/dev-1/'), Buffer.from([0xc3, 0x28])]))),
  ],
  ['MQTT-1.5.3-2 topic name with U+0000', frame(0x30, str('devices/dev-1/\u0000'))],
  ['MQTT-3.3.2-2 wildcard in a topic name', frame(0x30, str('devices/dev-1/+'))],
  ['MQTT-3.8.1-1 SUBSCRIBE with flags 0', frame(0x80, Buffer.concat([Buffer.from([0, 1]), str(T), Buffer.from([0])]))],
  [
    'MQTT-2.3.1-1 SUBSCRIBE with packet id 0',
    frame(0x82, Buffer.concat([Buffer.from([0, 0]), str(T), Buffer.from([0])])),
  ],
  ['MQTT-3.8.3-3 SUBSCRIBE without a filter', frame(0x82, [0, 1])],
  [
    'MQTT-4.7.1-2 filter with # not last',
    frame(0x82, Buffer.concat([Buffer.from([0, 1]), str('devices/dev-1/#/b'), Buffer.from([0])])),
  ],
  ['MQTT-3-8.3-4 requested QoS 3', frame(0x82, Buffer.concat([Buffer.from([0, 1]), str(T), Buffer.from([3])]))],
  ['MQTT-3.6.1-1 PUBREL with flags 0', frame(0x60, [0, 1])],
  ['MQTT-3.10.1-1 UNSUBSCRIBE with flags 0', frame(0xa0, Buffer.concat([Buffer.from([0, 1]), str(T)]))],
  ['MQTT-3.10.3-2 UNSUBSCRIBE without a filter', frame(0xa2, [0, 1])],
  ['MQTT-2.2.2-1 PINGREQ with flags', Buffer.from([0xc1, 0x00])],
  ['MQTT-2.2.3 PUBACK longer than 2 bytes', frame(0x40, [0, 1, 0])],
];

for (const transport of ['mqtts', 'wss'] as const) {
  describe(`malformed packets over ${transport}`, () => {
    const url = () => (transport === 'mqtts' ? fleet.mqttsUrl : fleet.wssUrl);
    for (const [name, packet] of beforeConnect) {
      test(`${name}: that connection is closed, logged`, async () => {
        const before = fleet.log.lines.length;
        const raw = await rawClient(url(), c['dev-1']!, fleet.ca.rootPem);
        raw.send(packet);
        assert.equal(await raw.closed(), true, 'closed by the server');
        const line = await fleet.log.find(
          (l) =>
            fleet.log.lines.indexOf(l) >= before &&
            (l.code === 'BAD_REQUEST' || l.code === 'PROTOCOL_UNSUPPORTED' || l.code === 'PAYLOAD_TOO_LARGE'),
        );
        assert.ok(line.code !== undefined);
        assert.ok(witness.connected, 'the witness is untouched');
      });
    }
    for (const [name, packet] of afterConnect) {
      test(`${name}: that connection is closed, logged`, async () => {
        const raw = await rawClient(url(), c['dev-2']!, fleet.ca.rootPem);
        raw.send(connectBytes('dev-2'));
        assert.equal(((await raw.next('connack')) as { returnCode: number }).returnCode, 0);
        const before = fleet.log.lines.length;
        raw.send(
          name.includes('T)') ? packet : Buffer.from(packet.toString('latin1').replaceAll('dev-1', 'dev-2'), 'latin1'),
        );
        assert.equal(await raw.closed(), true, 'closed by the server');
        const line = await fleet.log.find(
          (l) => fleet.log.lines.indexOf(l) >= before && l.code === 'BAD_REQUEST' && l.decision === 'closed',
        );
        assert.match(String(line.rule), /^MQTT-/);
        assert.ok(witness.connected, 'the witness is untouched');
      });
    }
  });
}

test('MQTT-3.2.2-4/5 a refused CONNECT gets a CONNACK with session present 0, then the connection is closed', async () => {
  const raw = await rawClient(fleet.mqttsUrl, c['dev-1']!, fleet.ca.rootPem);
  raw.send(connectBytes('someone-else'));
  const ack = (await raw.next('connack')) as { returnCode: number; sessionPresent: boolean };
  assert.deepEqual([ack.returnCode, ack.sessionPresent], [2, false]);
  assert.equal(await raw.closed(), true);
});

test("MQTT-3.8.4-6 QoS is downgraded to the subscription's, wildcards included; MQTT-3.3.5-1 overlapping subscriptions deliver once at the maximum QoS", async () => {
  const svc = await connect(fleet.mqttsUrl, c.svc, { ca: fleet.rootFile });
  const dev = await connect(fleet.wssUrl, c['dev-3'], { ca: fleet.rootFile });
  try {
    await svc.subscribeAsync('devices/+/down', { qos: 1 });
    const got: { topic: string; qos: number }[] = [];
    svc.on('message', (topic, _p, packet) => got.push({ topic, qos: packet.qos }));
    await dev.publishAsync('devices/dev-3/down', 'q2', { qos: 2 });
    await svc.subscribeAsync('devices/dev-3/#', { qos: 0 });
    await svc.subscribeAsync('devices/+/over', { qos: 1 });
    await dev.publishAsync('devices/dev-3/over', 'q1', { qos: 1 });
    for (let i = 0; i < 100 && got.length < 2; i++) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 200)); // room for a wrong second copy to arrive
    assert.deepEqual(got, [
      { topic: 'devices/dev-3/down', qos: 1 },
      { topic: 'devices/dev-3/over', qos: 1 },
    ]);
  } finally {
    await end(svc, dev);
  }
});

test('MQTT-3.3.1-5/6/8/9/10 retained: stored, sent to new subscribers with RETAIN, live copies without, cleared by an empty payload', async () => {
  const dev = await connect(fleet.mqttsUrl, c['dev-4'], { ca: fleet.rootFile });
  const live = await connect(fleet.mqttsUrl, c.svc2, { ca: fleet.rootFile });
  try {
    await live.subscribeAsync('devices/dev-4/state', { qos: 1 });
    const liveCopy = new Promise<boolean>((resolve) =>
      live.once('message', (_t, _p, packet) => resolve(packet.retain)),
    );
    await dev.publishAsync('devices/dev-4/state', 'on', { qos: 1, retain: true });
    assert.equal(await liveCopy, false, 'a live subscriber gets it without RETAIN [MQTT-3.3.1-9]');
    const late = await connect(fleet.wssUrl, c.svc, { ca: fleet.rootFile });
    const retained = new Promise<[string, boolean]>((resolve) =>
      late.once('message', (_t, p, packet) => resolve([p.toString(), packet.retain])),
    );
    await late.subscribeAsync('devices/+/state', { qos: 1 });
    assert.deepEqual(await retained, ['on', true], 'a new subscriber gets it with RETAIN [MQTT-3.3.1-8]');
    await end(late);
    await dev.publishAsync('devices/dev-4/state', '', { qos: 1, retain: true });
    const after = await connect(fleet.mqttsUrl, c.svc, { ca: fleet.rootFile });
    let any = false;
    after.on('message', () => {
      any = true;
    });
    await after.subscribeAsync('devices/+/state', { qos: 1 });
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(any, false, 'an empty retained payload clears it [MQTT-3.3.1-10]');
    await end(after);
  } finally {
    await end(dev, live);
  }
});

test("MQTT-3.1.2-8/10 will: published when the connection drops, not after DISCONNECT; a will outside the device's topics is refused", async () => {
  const svc = await connect(fleet.mqttsUrl, c.svc, { ca: fleet.rootFile });
  try {
    await svc.subscribeAsync('devices/dev-5/status', { qos: 1 });
    const will = { topic: 'devices/dev-5/status', payload: Buffer.from('gone'), qos: 1 as const, retain: false };
    const raw = await rawClient(fleet.mqttsUrl, c['dev-5']!, fleet.ca.rootPem);
    raw.send(
      bytes({
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: 4,
        clean: true,
        keepalive: 30,
        clientId: 'dev-5',
        will,
      }),
    );
    assert.equal(((await raw.next('connack')) as { returnCode: number }).returnCode, 0);
    const got = nextMessage(svc, 'devices/dev-5/status');
    raw.end(); // the network connection drops
    assert.equal(await got, 'gone');
    const polite = await rawClient(fleet.mqttsUrl, c['dev-5']!, fleet.ca.rootPem);
    polite.send(
      bytes({
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: 4,
        clean: true,
        keepalive: 30,
        clientId: 'dev-5',
        will: { ...will, payload: Buffer.from('second') },
      }),
    );
    await polite.next('connack');
    let second = false;
    svc.on('message', (_t, p) => {
      if (p.toString() === 'second') second = true;
    });
    polite.send([0xe0, 0x00]); // DISCONNECT
    assert.equal(await polite.closed(), true);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(second, false, 'no will after DISCONNECT');
    const outside = await rawClient(fleet.mqttsUrl, c['dev-5']!, fleet.ca.rootPem);
    outside.send(
      bytes({
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: 4,
        clean: true,
        keepalive: 30,
        clientId: 'dev-5',
        will: { ...will, topic: 'devices/dev-1/status' },
      }),
    );
    assert.equal(((await outside.next('connack')) as { returnCode: number }).returnCode, 5);
  } finally {
    await end(svc);
  }
});

test('MQTT-3.1.4-2 takeover: a second connection with the same client id closes the first', async () => {
  const first = await rawClient(fleet.mqttsUrl, c['dev-2']!, fleet.ca.rootPem);
  first.send(connectBytes('dev-2'));
  await first.next('connack');
  const second = await rawClient(fleet.wssUrl, c['dev-2']!, fleet.ca.rootPem);
  second.send(connectBytes('dev-2'));
  assert.equal(((await second.next('connack')) as { returnCode: number }).returnCode, 0);
  assert.equal(await first.closed(), true);
  second.end();
});

test('MQTT-3.1.2-4/5, MQTT-3.2.2-2, MQTT-4.6.0-2 persistent session: subscriptions and QoS 1 messages kept while away, in order; MQTT-3.1.2-6 clean session discards', async () => {
  const opts = { ca: fleet.rootFile };
  const sub = await connect(fleet.mqttsUrl, c.svc2, opts);
  await end(sub); // a clean session first, so the next one starts from nothing
  const raw1 = await rawClient(fleet.mqttsUrl, c.svc2!, fleet.ca.rootPem);
  raw1.send(connectBytes('svc-2', { clean: false }));
  assert.equal(((await raw1.next('connack')) as { sessionPresent: boolean }).sessionPresent, false);
  raw1.send(bytes({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/dev-1/p/#', qos: 1 }] }));
  await raw1.next('suback');
  raw1.send([0xe0, 0x00]);
  await raw1.closed();
  const dev = await connect(fleet.mqttsUrl, c['dev-1'], opts);
  for (let i = 1; i <= 5; i++) await dev.publishAsync(`devices/dev-1/p/${i}`, String(i), { qos: 1 });
  await end(dev);
  const raw2 = await rawClient(fleet.wssUrl, c.svc2!, fleet.ca.rootPem);
  raw2.send(connectBytes('svc-2', { clean: false }));
  assert.equal(
    ((await raw2.next('connack')) as { sessionPresent: boolean }).sessionPresent,
    true,
    'session present [MQTT-3.2.2-2]',
  );
  const seen: string[] = [];
  for (let i = 0; i < 5; i++) {
    const p = (await raw2.next('publish')) as { payload: Buffer; messageId: number; qos: number };
    assert.equal(p.qos, 1);
    seen.push(p.payload.toString());
    raw2.send(bytes({ cmd: 'puback', messageId: p.messageId }));
  }
  assert.deepEqual(seen, ['1', '2', '3', '4', '5'], 'in order [MQTT-4.6.0-2]');
  raw2.end();
  const raw3 = await rawClient(fleet.mqttsUrl, c.svc2!, fleet.ca.rootPem);
  raw3.send(connectBytes('svc-2', { clean: true }));
  assert.equal(
    ((await raw3.next('connack')) as { sessionPresent: boolean }).sessionPresent,
    false,
    'clean session: no session present [MQTT-3.2.2-1]',
  );
  raw3.end();
});

test('MQTT-4.3.3 QoS 2 end to end: delivered exactly once, PUBREC/PUBREL/PUBCOMP in both directions', async () => {
  const svc = await connect(fleet.mqttsUrl, c.svc, { ca: fleet.rootFile });
  const got: string[] = [];
  try {
    await svc.subscribeAsync('devices/dev-1/q2', { qos: 2 });
    svc.on('message', (_t, p) => got.push(p.toString()));
    const raw = await rawClient(fleet.mqttsUrl, c['dev-1']!, fleet.ca.rootPem);
    raw.send(connectBytes('dev-1'));
    await raw.next('connack');
    const publish = bytes({ cmd: 'publish', topic: 'devices/dev-1/q2', payload: 'once', qos: 2, messageId: 7 });
    raw.send(publish);
    assert.equal(((await raw.next('pubrec')) as { messageId: number }).messageId, 7);
    publish[0] = (publish[0] as number) | 0x08; // the client resends with DUP before PUBREL
    raw.send(publish);
    assert.equal(((await raw.next('pubrec')) as { messageId: number }).messageId, 7);
    raw.send(bytes({ cmd: 'pubrel', messageId: 7 }));
    assert.equal(((await raw.next('pubcomp')) as { messageId: number }).messageId, 7);
    for (let i = 0; i < 100 && got.length < 1; i++) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(got, ['once']);
    raw.end();
  } finally {
    await end(svc);
  }
});

test('MQTT-3.1.2-24 keepalive: no packet for 1.5 × the keepalive closes the connection; PINGREQ keeps it', async () => {
  const idle = await rawClient(fleet.mqttsUrl, c['dev-4']!, fleet.ca.rootPem);
  const busy = await rawClient(fleet.wssUrl, c.svc2!, fleet.ca.rootPem);
  idle.send(connectBytes('dev-4', { keepalive: 5 }));
  busy.send(connectBytes('svc-2', { keepalive: 5 }));
  await Promise.all([idle.next('connack'), busy.next('connack')]);
  const started = Date.now();
  const pinger = setInterval(() => busy.send([0xc0, 0x00]), 2_000);
  try {
    assert.equal(await idle.closed(30_000), true, 'closed for silence');
    assert.ok(Date.now() - started >= 7_000, `not before 1.5 × 5 s (${Date.now() - started} ms)`);
    assert.equal(busy.isClosed, false, 'the pinging one stays');
    await busy.next('pingresp');
  } finally {
    clearInterval(pinger);
    busy.end();
  }
});

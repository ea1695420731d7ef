// Issue #15: the MQTT 5 part of our conformance module, written from the MQTT 5.0 normative
// statements (ids cited per case; "MQTT5-§x" where the statement has no id). Raw packets over
// mqtts and wss for what no client library will send and to read reason codes and properties
// exactly; mqtt.js (v5) for flows. A malformed packet gets DISCONNECT with 0x81/0x82/… and closes
// that connection only, with a coded log line; a witness connection carries on.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { MqttClient } from 'mqtt';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { connect, end, withTimeout } from '../harness/mqtt.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { bytes5, connect5Bytes, frame, type RawClient, rawClient, str } from '../harness/raw-mqtt.ts';
import { fileScope } from '../harness/run.ts';

const scope = fileScope(after);
let fleet: TestFleet;
const c: Record<string, Credential> = {};
let witness: MqttClient;

before(async () => {
  fleet = await startTestFleet(scope);
  for (const id of ['v5-1', 'v5-2', 'v5-3', 'v5-4', 'v5-5', 'v5-6', 'v5-7', 'v5-8'])
    c[id] = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id });
  c.svc = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'svc5-1', type: 'service' });
  c.svc2 = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'svc5-2', type: 'service' });
  c['svc5-1'] = c.svc;
  c.witness = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'witness5-1' });
  witness = await connect(fleet.mqttsUrl, c.witness, { ca: fleet.rootFile, protocolVersion: 5 });
  scope.after(() => end(witness));
});

type Pkt = {
  cmd: string;
  reasonCode?: number;
  returnCode?: number;
  sessionPresent?: boolean;
  granted?: number[];
  messageId?: number;
  topic?: string;
  payload?: Buffer;
  retain?: boolean;
  qos?: number;
  properties?: Record<string, unknown>;
};

/** A raw MQTT 5 client, connected (CONNACK 0 checked) with `props` on its CONNECT. */
async function raw5(
  id: string,
  url = fleet.mqttsUrl,
  connect: Record<string, unknown> = {},
): Promise<{ raw: RawClient; connack: Pkt }> {
  const raw = await rawClient(url, c[id]!, fleet.ca.rootPem, { v5: true });
  raw.send(connect5Bytes(id, connect));
  const connack = (await raw.next('connack')) as Pkt;
  return { raw, connack };
}

const next = async (raw: RawClient, cmd: string, ms = 15_000) => (await raw.next(cmd, ms)) as Pkt;
/** The subscription identifiers of a received PUBLISH (mqtt-packet gives one as a number, several as an array). */
const ids = (p: Pkt): number[] =>
  ([] as number[]).concat((p.properties?.subscriptionIdentifier as number | number[] | undefined) ?? []);

/** A PUBLISH body by hand: topic, [packet id], properties (already encoded, with their length), payload. */
function publishRaw(first: number, topic: string | Buffer, props: number[], payload = 'x', id?: number): Buffer {
  return frame(
    first,
    Buffer.concat([
      str(topic),
      ...(id === undefined ? [] : [Buffer.from([id >> 8, id & 0xff])]),
      Buffer.from([props.length, ...props]),
      Buffer.from(payload),
    ]),
  );
}

const T = 'devices/v5-2/x';
/** After a v5 CONNECT: what is sent, the statement it breaks, the DISCONNECT reason expected. */
const afterConnect: [string, Buffer, number][] = [
  [
    'MQTT5-§2.2.2.2 property duplicated (message expiry twice)',
    publishRaw(0x30, T, [0x02, 0, 0, 0, 9, 0x02, 0, 0, 0, 9]),
    0x82,
  ],
  [
    'MQTT5-§2.2.2.2 property not valid for the packet (session expiry on PUBLISH)',
    publishRaw(0x30, T, [0x11, 0, 0, 0, 9]),
    0x81,
  ],
  ['MQTT-3.3.4-6 subscription identifier on a client PUBLISH', publishRaw(0x30, T, [0x0b, 5]), 0x81],
  ['MQTT-1.5.4-1 invalid UTF-8 in a user property', publishRaw(0x30, T, [0x26, 0, 1, 0x61, 0, 2, 0xc3, 0x28]), 0x81],
  [
    'MQTT5-§2.2.2.1 property length past the end of the packet',
    frame(0x30, Buffer.concat([str(T), Buffer.from([40, 0x01])])),
    0x81,
  ],
  ['MQTT-3.3.2-8 topic alias 0', publishRaw(0x30, T, [0x23, 0, 0]), 0x94],
  ['MQTT-3.3.2-12 topic alias above the maximum', publishRaw(0x30, T, [0x23, 0, 33]), 0x94],
  ['MQTT5-§3.3.2.3.4 empty topic with an alias never set', publishRaw(0x30, '', [0x23, 0, 3]), 0x82],
  ['MQTT5-§3.3.2.1 empty topic without an alias', publishRaw(0x30, '', []), 0x82],
  [
    'MQTT-3.8.3-5 subscription options with reserved bits',
    frame(0x82, Buffer.concat([Buffer.from([0, 1, 0]), str(T), Buffer.from([0xc0])])),
    0x81,
  ],
  [
    'MQTT5-§3.8.3.1 retain handling 3',
    frame(0x82, Buffer.concat([Buffer.from([0, 1, 0]), str(T), Buffer.from([0x30])])),
    0x82,
  ],
  [
    'MQTT5-§3.8.2.1.2 subscription identifier 0',
    frame(0x82, Buffer.concat([Buffer.from([0, 1, 2, 0x0b, 0]), str(T), Buffer.from([0])])),
    0x82,
  ],
  ['MQTT-3.4.2-1 PUBACK with a reason code PUBACK does not have', frame(0x40, [0, 1, 0x92]), 0x81],
  [
    'MQTT5-§3.14.2.2.2 DISCONNECT raises the session expiry from 0',
    bytes5({ cmd: 'disconnect', reasonCode: 0, properties: { sessionExpiryInterval: 60 } }),
    0x82,
  ],
  ['MQTT5-§4.12 AUTH without an authentication method', Buffer.from([0xf0, 0x00]), 0x82],
  [
    'MQTT-1.5.5-1 variable byte integer not minimal (property length 0 as 0x80 0x00)',
    frame(0x30, Buffer.concat([str(T), Buffer.from([0x80, 0x00]), Buffer.from('x')])),
    0x81,
  ],
  [
    "MQTT-2.2.3 PUBLISH over the device type's maximum packet size",
    frame(0x30, Buffer.concat([str(T), Buffer.from([0]), Buffer.alloc(64 * 1024 + 10)])),
    0x95,
  ],
];
/** A v5 CONNECT by hand (clean start, keepalive 30) with raw properties. */
const connectWithProps = (props: number[]) =>
  frame(0x10, Buffer.concat([str('MQTT'), Buffer.from([5, 0x02, 0, 30, props.length, ...props]), str('v5-1')]));
const beforeConnect: [string, Buffer][] = [
  ['MQTT5-§2.2.2.2 CONNECT with a property twice', connectWithProps([0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2])],
  ['MQTT5-§2.2.2.2 CONNECT with a will property among its own', connectWithProps([0x18, 0, 0, 0, 1])],
  ['MQTT5-§3.1.2.11.3 receive maximum 0', connectWithProps([0x21, 0, 0])],
  ['MQTT5-§3.1.2.11.4 maximum packet size 0', connectWithProps([0x27, 0, 0, 0, 0])],
  ['MQTT-1.5.4-1 invalid UTF-8 in a CONNECT user property', connectWithProps([0x26, 0, 1, 0x61, 0, 1, 0xff])],
];

for (const transport of ['mqtts', 'wss'] as const) {
  describe(`MQTT 5 malformed packets over ${transport}`, () => {
    const url = () => (transport === 'mqtts' ? fleet.mqttsUrl : fleet.wssUrl);
    for (const [name, packet, reason] of afterConnect) {
      test(`${name}: DISCONNECT 0x${reason.toString(16)}, that connection closed, logged`, async () => {
        const { raw, connack } = await raw5('v5-2', url());
        assert.equal(connack.reasonCode, 0);
        const before = fleet.log.lines.length;
        raw.send(packet);
        const d = await next(raw, 'disconnect');
        assert.equal(d.reasonCode, reason);
        assert.equal(await raw.closed(), true, 'closed by the server');
        const line = await fleet.log.find(
          (l) =>
            fleet.log.lines.indexOf(l) >= before &&
            (l.code === 'BAD_REQUEST' || l.code === 'PAYLOAD_TOO_LARGE') &&
            l.decision === 'closed',
        );
        assert.match(String(line.rule), /^MQTT/);
        assert.ok(witness.connected, 'the witness is untouched');
      });
    }
    for (const [name, packet] of beforeConnect) {
      test(`${name}: closed before any CONNACK, logged`, async () => {
        const raw = await rawClient(url(), c['v5-1']!, fleet.ca.rootPem, { v5: true });
        const before = fleet.log.lines.length;
        raw.send(packet);
        assert.equal(await raw.closed(), true);
        await assert.rejects(raw.next('connack', 1));
        await fleet.log.find((l) => fleet.log.lines.indexOf(l) >= before && l.code === 'BAD_REQUEST');
        assert.ok(witness.connected);
      });
    }
  });
}

test('MQTT-3.2.2-8 a CONNECT over the size limit: MQTT 5 gets CONNACK 0x95 Packet too large, 3.1.1 a plain close; both logged PAYLOAD_TOO_LARGE', async () => {
  const oversize = (level: 4 | 5) => {
    const body = Buffer.concat([
      str('MQTT'),
      Buffer.from([level, 0x02, 0, 30]),
      level === 5 ? Buffer.from([0]) : Buffer.alloc(0),
      str('v5-1'),
      Buffer.alloc(fleet.config.gateway.limits.sensor.maxPacketBytes + 10),
    ]);
    return frame(0x10, body);
  };
  for (const url of [fleet.mqttsUrl, fleet.wssUrl]) {
    const v5 = await rawClient(url, c['v5-1']!, fleet.ca.rootPem, { v5: true });
    const before = fleet.log.lines.length;
    v5.send(oversize(5));
    const ack = await next(v5, 'connack');
    assert.deepEqual([ack.reasonCode, ack.sessionPresent], [0x95, false]);
    assert.match(String(ack.properties?.reasonString), /^PAYLOAD_TOO_LARGE: /);
    assert.equal(await v5.closed(), true);
    await fleet.log.find(
      (l) => fleet.log.lines.indexOf(l) >= before && l.code === 'PAYLOAD_TOO_LARGE' && l.decision === 'refused',
    );
    const v3 = await rawClient(url, c['v5-1']!, fleet.ca.rootPem);
    v3.send(oversize(4));
    assert.equal(await v3.closed(), true);
    await assert.rejects(v3.next('connack', 1), 'no MQTT 5 CONNACK for a 3.1.1 client');
  }
  assert.ok(witness.connected);
});

describe('MQTT 5 CONNECT and CONNACK', () => {
  test("MQTT-3.2.2-3 CONNACK properties: receive maximum, maximum packet size (the type's), topic alias maximum, shared subscriptions available; session expiry lowered to the configured maximum", async () => {
    const { raw, connack } = await raw5('v5-3', fleet.mqttsUrl, { properties: { sessionExpiryInterval: 0xffffffff } });
    raw.end();
    assert.equal(connack.reasonCode, 0);
    const p = connack.properties ?? {};
    assert.equal(p.receiveMaximum, fleet.config.mqtt.receiveMaximum);
    assert.equal(p.maximumPacketSize, fleet.config.gateway.limits.sensor.maxPacketBytes);
    assert.equal(p.topicAliasMaximum, fleet.config.mqtt.topicAliasMaximum);
    assert.notEqual(p.sharedSubscriptionAvailable, false, 'absent or true: available [MQTT-3.2.2.3.18]');
    assert.equal(p.sessionExpiryInterval, fleet.config.mqtt.sessionExpiryMs / 1000);
    assert.equal(p.assignedClientIdentifier, undefined, 'never assigns a client id');
  });

  test("MQTT-3.2.2-21 a keepalive outside the type's range is not refused in v5: the CONNACK sets Server Keep Alive", async () => {
    for (const [asked, expect] of [
      [1, 5],
      [0, 1200],
      [5000, 1200],
    ] as const) {
      const { raw, connack } = await raw5('v5-3', fleet.mqttsUrl, { keepalive: asked });
      raw.end();
      assert.equal(connack.reasonCode, 0);
      assert.equal(connack.properties?.serverKeepAlive, expect, `asked ${asked}`);
    }
  });

  const refusals: [string, string, Record<string, unknown>, number, string][] = [
    ['MQTT-3.1.3-8 client id that is not the device id', 'someone-else', {}, 0x85, 'CLIENT_ID_MISMATCH'],
    ['MQTT-3.2.2-16 empty client id (never assigned)', '', {}, 0x85, 'CLIENT_ID_MISMATCH'],
    [
      'MQTT5-§4.12 enhanced authentication asked',
      'v5-4',
      { properties: { authenticationMethod: 'SCRAM-SHA-1' } },
      0x8c,
      'NOT_AUTHORIZED',
    ],
    [
      "will topic outside the device's topics",
      'v5-4',
      { will: { topic: 'devices/other/will', payload: Buffer.from('x'), qos: 0, retain: false } },
      0x87,
      'TOPIC_DENIED',
    ],
    [
      'will payload not UTF-8 though its format says so',
      'v5-4',
      {
        will: {
          topic: 'devices/v5-4/will',
          payload: Buffer.from([0xff]),
          qos: 0,
          retain: false,
          properties: { payloadFormatIndicator: true },
        },
      },
      0x99,
      'BAD_REQUEST',
    ],
  ];
  for (const [name, clientId, extra, reason, code] of refusals) {
    test(`${name}: CONNACK 0x${reason.toString(16)} with the catalogue code as reason string, session present 0, closed [MQTT-3.2.2-6], [MQTT-3.2.2-7]`, async () => {
      const raw = await rawClient(fleet.wssUrl, c['v5-4']!, fleet.ca.rootPem, { v5: true });
      raw.send(connect5Bytes(clientId, extra));
      const ack = await next(raw, 'connack');
      assert.deepEqual([ack.reasonCode, ack.sessionPresent], [reason, false]);
      assert.match(String(ack.properties?.reasonString), new RegExp(`^${code}: `));
      assert.equal(await raw.closed(), true);
    });
  }

  test('a revoked device: CONNACK 0x87 "CERT_REVOKED…"; a denylisted one: 0x8A Banned (mqtt.js v5 sees the codes)', async () => {
    const r = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'v5-revoked' });
    const d = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'v5-denied' });
    fleet.registry.revokeDevice('v5-revoked', 1, 'test'); // keyCompromise
    fleet.registry.addDeny({ kind: 'device', value: 'v5-denied' }, 'test');
    await assert.rejects(
      connect(fleet.mqttsUrl, r, { ca: fleet.rootFile, protocolVersion: 5 }),
      (e: { code?: number }) => e.code === 0x87,
    );
    await assert.rejects(
      connect(fleet.mqttsUrl, d, { ca: fleet.rootFile, protocolVersion: 5 }),
      (e: { code?: number }) => e.code === 0x8a,
    );
  });
});

describe('MQTT 5 refusals that keep the connection', () => {
  test("MQTT-3.4.2-1 a PUBLISH outside the device's topics: PUBACK/PUBREC 0x87 with the reason, the connection stays", async () => {
    const { raw } = await raw5('v5-5');
    raw.send(bytes5({ cmd: 'publish', topic: 'devices/other/x', payload: Buffer.from('no'), qos: 1, messageId: 3 }));
    const ack = await next(raw, 'puback');
    assert.deepEqual([ack.messageId, ack.reasonCode], [3, 0x87]);
    assert.match(String(ack.properties?.reasonString), /^TOPIC_DENIED: /);
    raw.send(bytes5({ cmd: 'publish', topic: 'devices/other/x', payload: Buffer.from('no'), qos: 2, messageId: 4 }));
    assert.equal((await next(raw, 'pubrec')).reasonCode, 0x87);
    // A response topic outside its topics is refused the same way; so is bad UTF-8 under payload format 1.
    raw.send(
      bytes5({
        cmd: 'publish',
        topic: 'devices/v5-5/x',
        payload: Buffer.from('q'),
        qos: 1,
        messageId: 5,
        properties: { responseTopic: 'devices/other/reply' },
      }),
    );
    assert.equal((await next(raw, 'puback')).reasonCode, 0x87);
    raw.send(
      bytes5({
        cmd: 'publish',
        topic: 'devices/v5-5/x',
        payload: Buffer.from([0xc3, 0x28]),
        qos: 1,
        messageId: 6,
        properties: { payloadFormatIndicator: true },
      }),
    );
    assert.equal((await next(raw, 'puback')).reasonCode, 0x99);
    raw.send(
      bytes5({
        cmd: 'publish',
        topic: 'devices/v5-5/x',
        payload: Buffer.from('q'),
        qos: 1,
        messageId: 7,
        properties: { userProperties: { big: 'x'.repeat(fleet.config.mqtt.maxUserPropertyBytes) } },
      }),
    );
    assert.equal((await next(raw, 'puback')).reasonCode, 0x97);
    raw.send(bytes5({ cmd: 'pingreq' }));
    await next(raw, 'pingresp');
    assert.equal(raw.isClosed, false, 'still connected');
    raw.end();
  });

  test("MQTT-3.9.3-2 SUBACK per filter: 0x87 outside the device's topics, 0x87 for a device joining a shared group (services only), 0x8F for a malformed $share filter, the granted QoS otherwise; UNSUBACK 0x11 for no subscription [MQTT-3.11.3-1]", async () => {
    const { raw } = await raw5('v5-5');
    raw.send(
      bytes5({
        cmd: 'subscribe',
        messageId: 9,
        subscriptions: [
          { topic: 'devices/v5-5/#', qos: 1 },
          { topic: 'devices/other/#', qos: 1 },
          { topic: '$share/g/devices/v5-5/x', qos: 0 },
          { topic: '$share/g', qos: 0 },
        ],
      }),
    );
    const ack = await next(raw, 'suback');
    assert.deepEqual(ack.granted, [1, 0x87, 0x87, 0x8f]);
    raw.send(bytes5({ cmd: 'unsubscribe', messageId: 10, unsubscriptions: ['devices/v5-5/#', 'devices/never/#'] }));
    assert.deepEqual((await next(raw, 'unsuback')).granted, [0, 0x11]);
    raw.end();
  });
});

describe('MQTT 5 message properties and subscription options', () => {
  test('MQTT-3.3.2-4/15/16/17/18/20 payload format, content type, response topic, correlation data and user properties (in order) reach a v5 subscriber unaltered; a 3.1.1 subscriber gets the payload', async () => {
    const sub = await connect(fleet.mqttsUrl, c.svc, { ca: fleet.rootFile, protocolVersion: 5 });
    const sub3 = await connect(fleet.wssUrl, c.svc2, { ca: fleet.rootFile });
    const pub = await connect(fleet.wssUrl, c['v5-6'], { ca: fleet.rootFile, protocolVersion: 5 });
    scope.after(() => end(sub, sub3, pub));
    await sub.subscribeAsync('devices/v5-6/props', { qos: 1 });
    await sub3.subscribeAsync('devices/v5-6/props', { qos: 1 });
    const got = new Promise<{ payload: string; props: Record<string, unknown> }>((resolve) =>
      sub.once('message', (_t, payload, packet) =>
        resolve({ payload: String(payload), props: (packet.properties ?? {}) as Record<string, unknown> }),
      ),
    );
    const got3 = new Promise<string>((resolve) => sub3.once('message', (_t, payload) => resolve(String(payload))));
    await pub.publishAsync('devices/v5-6/props', 'héllo', {
      qos: 1,
      properties: {
        payloadFormatIndicator: true,
        contentType: 'text/plain',
        responseTopic: 'devices/v5-6/reply',
        correlationData: Buffer.from([1, 2, 3]),
        userProperties: { zeta: ['1', '3'], alpha: '2' },
      },
    });
    const { payload, props } = await withTimeout(got, 15_000, 'message');
    assert.equal(payload, 'héllo');
    assert.equal(props.payloadFormatIndicator, true);
    assert.equal(props.contentType, 'text/plain');
    assert.equal(props.responseTopic, 'devices/v5-6/reply');
    assert.deepEqual([...(props.correlationData as Buffer)], [1, 2, 3]);
    assert.deepEqual(
      Object.entries({ ...(props.userProperties as object) }),
      [
        ['zeta', ['1', '3']],
        ['alpha', '2'],
      ],
      'same pairs, same order',
    );
    assert.equal(await withTimeout(got3, 15_000, '3.1.1 message'), 'héllo');
  });

  test('MQTT-3.3.2-12 topic aliases: a topic with alias sets it, an empty topic uses it; the subscriber sees the full topic', async () => {
    const sub = await raw5('svc5-1');
    sub.raw.send(bytes5({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/v5-7/alias', qos: 0 }] }));
    await next(sub.raw, 'suback');
    const { raw } = await raw5('v5-7');
    raw.send(
      bytes5({
        cmd: 'publish',
        topic: 'devices/v5-7/alias',
        payload: Buffer.from('one'),
        qos: 0,
        properties: { topicAlias: 4 },
      }),
    );
    raw.send(bytes5({ cmd: 'publish', topic: '', payload: Buffer.from('two'), qos: 0, properties: { topicAlias: 4 } }));
    for (const expect of ['one', 'two']) {
      const p = await next(sub.raw, 'publish');
      assert.deepEqual([p.topic, String(p.payload)], ['devices/v5-7/alias', expect]);
      assert.equal(p.properties?.topicAlias, undefined, 'the gateway sends no aliases of its own');
    }
    raw.end();
    sub.raw.end();
  });

  test('MQTT-3.8.3-3 No Local; MQTT-3.3.1-12/13 Retain As Published; MQTT-3.3.1-9/10/11 Retain Handling; MQTT-3.3.4-3/4 subscription identifiers', async () => {
    const { raw } = await raw5('v5-7');
    // A retained message first.
    raw.send(
      bytes5({
        cmd: 'publish',
        topic: 'devices/v5-7/r',
        payload: Buffer.from('kept'),
        qos: 1,
        messageId: 1,
        retain: true,
      }),
    );
    await next(raw, 'puback');
    // No Local: its own message does not come back on devices/v5-7/nl; Retain Handling 2: no retained on subscribe.
    raw.send(
      bytes5({
        cmd: 'subscribe',
        messageId: 2,
        properties: { subscriptionIdentifier: 7 },
        subscriptions: [
          { topic: 'devices/v5-7/nl', qos: 0, nl: true },
          { topic: 'devices/v5-7/r', qos: 0, rap: true, rh: 2 },
        ],
      }),
    );
    assert.deepEqual((await next(raw, 'suback')).granted, [0, 0]);
    raw.send(bytes5({ cmd: 'publish', topic: 'devices/v5-7/nl', payload: Buffer.from('own'), qos: 0 }));
    // Retain As Published: a live retained publish arrives with retain 1 and the subscription id.
    raw.send(bytes5({ cmd: 'publish', topic: 'devices/v5-7/r', payload: Buffer.from('live'), qos: 0, retain: true }));
    const p = await next(raw, 'publish');
    assert.deepEqual(
      [String(p.payload), p.retain, ids(p)],
      ['live', true, [7]],
      'not "own" (No Local), not "kept" (Retain Handling 2)',
    );
    // Retain Handling 1: retained only when the subscription is new.
    raw.send(bytes5({ cmd: 'subscribe', messageId: 3, subscriptions: [{ topic: 'devices/v5-7/+', qos: 0, rh: 1 }] }));
    await next(raw, 'suback');
    const first = await next(raw, 'publish');
    assert.deepEqual([first.topic, String(first.payload), first.retain], ['devices/v5-7/r', 'live', true]);
    raw.send(bytes5({ cmd: 'subscribe', messageId: 4, subscriptions: [{ topic: 'devices/v5-7/+', qos: 0, rh: 1 }] }));
    await next(raw, 'suback');
    // Overlapping subscriptions with identifiers: one PUBLISH with both ids (order not significant).
    raw.send(
      bytes5({
        cmd: 'subscribe',
        messageId: 5,
        properties: { subscriptionIdentifier: 9 },
        subscriptions: [{ topic: 'devices/v5-7/#', qos: 0, rh: 2 }],
      }),
    );
    await next(raw, 'suback');
    raw.send(bytes5({ cmd: 'publish', topic: 'devices/v5-7/r', payload: Buffer.from('both'), qos: 0 }));
    const both = await next(raw, 'publish');
    assert.equal(
      String(both.payload),
      'both',
      'no retained "live" again: Retain Handling 1 on an existing subscription',
    );
    assert.deepEqual(ids(both).sort(), [7, 9]);
    raw.end();
  });
});

describe('MQTT 5 flow control, sizes, expiry', () => {
  test("MQTT-3.3.4-9 the gateway sends no more unacknowledged QoS 1 PUBLISHes than the client's Receive Maximum", async () => {
    const { raw } = await raw5('v5-1', fleet.mqttsUrl, { properties: { receiveMaximum: 2 } });
    raw.send(bytes5({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/v5-1/rm', qos: 1 }] }));
    await next(raw, 'suback');
    for (let i = 1; i <= 5; i++)
      raw.send(
        bytes5({
          cmd: 'publish',
          topic: 'devices/v5-1/rm',
          payload: Buffer.from(String(i)),
          qos: 1,
          messageId: 100 + i,
        }),
      );
    for (let i = 1; i <= 5; i++) await next(raw, 'puback');
    const a = await next(raw, 'publish');
    const b = await next(raw, 'publish');
    await assert.rejects(raw.next('publish', 1_500), 'a third waits for an acknowledgement');
    raw.send(bytes5({ cmd: 'puback', messageId: a.messageId, reasonCode: 0 }));
    const third = await next(raw, 'publish');
    assert.deepEqual([String(a.payload), String(b.payload), String(third.payload)], ['1', '2', '3']);
    raw.end();
  });

  test('MQTT-3.3.4-7 a client past our Receive Maximum gets DISCONNECT 0x93', async () => {
    const { raw } = await raw5('v5-1');
    const burst = Array.from({ length: fleet.config.mqtt.receiveMaximum + 20 }, (_, i) =>
      bytes5({ cmd: 'publish', topic: 'devices/v5-1/burst', payload: Buffer.from('b'), qos: 2, messageId: i + 1 }),
    );
    raw.send(Buffer.concat(burst)); // QoS 2 ids stay unacknowledged until PUBREL
    const d = await next(raw, 'disconnect');
    assert.equal(d.reasonCode, 0x93);
    assert.equal(await raw.closed(), true);
  });

  test("MQTT-3.1.2-24/25 a message larger than the client's Maximum Packet Size is not sent to it; smaller ones are", async () => {
    const { raw } = await raw5('v5-2', fleet.mqttsUrl, { properties: { maximumPacketSize: 200 } });
    raw.send(bytes5({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/v5-2/size', qos: 1 }] }));
    await next(raw, 'suback');
    raw.send(
      bytes5({ cmd: 'publish', topic: 'devices/v5-2/size', payload: Buffer.alloc(500, 0x61), qos: 1, messageId: 1 }),
    );
    raw.send(
      bytes5({ cmd: 'publish', topic: 'devices/v5-2/size', payload: Buffer.from('small'), qos: 1, messageId: 2 }),
    );
    const p = await next(raw, 'publish');
    assert.equal(String(p.payload), 'small');
    raw.end();
  });

  test('MQTT-3.3.2-5/6 message expiry: an expired message is not delivered to a session that was away; a live one carries the time left', async () => {
    const first = await raw5('v5-3', fleet.mqttsUrl, { clean: true, properties: { sessionExpiryInterval: 300 } });
    first.raw.send(
      bytes5({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/v5-3/commands/exp', qos: 1 }] }),
    );
    await next(first.raw, 'suback');
    first.raw.send(bytes5({ cmd: 'disconnect', reasonCode: 0 }));
    await first.raw.closed();
    const svc = await raw5('svc5-1');
    svc.raw.send(
      bytes5({
        cmd: 'publish',
        topic: 'devices/v5-3/commands/exp',
        payload: Buffer.from('short'),
        qos: 1,
        messageId: 1,
        properties: { messageExpiryInterval: 1 },
      }),
    );
    svc.raw.send(
      bytes5({
        cmd: 'publish',
        topic: 'devices/v5-3/commands/exp',
        payload: Buffer.from('long'),
        qos: 1,
        messageId: 2,
        properties: { messageExpiryInterval: 3600 },
      }),
    );
    assert.equal((await next(svc.raw, 'puback')).reasonCode, 0);
    assert.equal((await next(svc.raw, 'puback')).reasonCode, 0);
    const published = Date.now();
    svc.raw.end();
    // Let the short one expire (1 s), with room; then come back to the session.
    await new Promise((r) => setTimeout(r, Math.max(0, published + 2_500 - Date.now())));
    const back = await raw5('v5-3', fleet.mqttsUrl, { clean: false, properties: { sessionExpiryInterval: 300 } });
    assert.equal(back.connack.sessionPresent, true);
    const p = await next(back.raw, 'publish');
    assert.equal(String(p.payload), 'long', '"short" expired while the session was away');
    const left = p.properties?.messageExpiryInterval as number;
    assert.ok(left > 3590 && left <= 3600, `expiry left ${left}`);
    back.raw.end();
  });
});

describe("MQTT 5 sessions, wills and the gateway's DISCONNECT", () => {
  test('MQTT-4.13 revocation, suspension, denylisting, kick and takeover: the device gets DISCONNECT with the reason (0x87 + catalogue code, 0x98, 0x8E) before the close', async () => {
    const cases: [string, () => unknown, number, RegExp][] = [
      ['v5-rev', () => fleet.registry.revokeDevice('v5-rev', 1, 'test'), 0x87, /^CERT_REVOKED: |^DEVICE_REVOKED: /],
      ['v5-sus', () => fleet.registry.suspendDevice('v5-sus', 'test'), 0x87, /^DEVICE_SUSPENDED: /],
      // Banned (0x8A) is a CONNACK code only: a DISCONNECT says 0x87, the reason string says DENYLISTED.
      ['v5-ban', () => fleet.registry.addDeny({ kind: 'device', value: 'v5-ban' }, 'test'), 0x87, /^DENYLISTED: /],
      ['v5-ban2', () => fleet.registry.addDeny({ kind: 'device', value: 'v5-ban2' }, 'test'), 0x87, /^DENYLISTED: /],
      ['v5-kick', () => fleet.gateway.kick('v5-kick', 'operator:test'), 0x98, /^NOT_AUTHORIZED: /],
    ];
    for (const [id, act, reason, text] of cases) {
      c[id] = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id });
      const client = await connect(id.endsWith('ban2') ? fleet.wssUrl : fleet.mqttsUrl, c[id], {
        ca: fleet.rootFile,
        protocolVersion: 5,
      });
      const said = new Promise<{ reasonCode?: number; properties?: { reasonString?: string } }>((resolve) =>
        client.once('disconnect', resolve),
      );
      act();
      const d = await withTimeout(said, 15_000, `${id} DISCONNECT`);
      assert.equal(d.reasonCode, reason, id);
      assert.match(String(d.properties?.reasonString), text);
      await end(client);
    }
    // Takeover: the older connection hears 0x8E Session taken over.
    const old = await raw5('v5-5');
    const newer = await raw5('v5-5', fleet.wssUrl);
    assert.equal((await next(old.raw, 'disconnect')).reasonCode, 0x8e);
    newer.raw.end();
  });

  test('MQTT-3.1.2-23 / MQTT-4.1.0-2 session expiry: kept while within it (session present, queued message delivered), freed after it', async () => {
    const sub = async (expiry: number, clean: boolean) =>
      raw5('v5-8', fleet.mqttsUrl, { clean, properties: { sessionExpiryInterval: expiry } });
    const a = await sub(300, true);
    a.raw.send(
      bytes5({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/v5-8/commands/q', qos: 1 }] }),
    );
    await next(a.raw, 'suback');
    a.raw.send(bytes5({ cmd: 'disconnect', reasonCode: 0 }));
    await a.raw.closed();
    const svc = await raw5('svc5-1');
    svc.raw.send(
      bytes5({
        cmd: 'publish',
        topic: 'devices/v5-8/commands/q',
        payload: Buffer.from('while away'),
        qos: 1,
        messageId: 1,
      }),
    );
    assert.equal((await next(svc.raw, 'puback')).reasonCode, 0);
    const b = await sub(2, false);
    assert.equal(b.connack.sessionPresent, true);
    assert.equal(String((await next(b.raw, 'publish')).payload), 'while away');
    // Now a 2 s expiry: once it has passed (the gateway sweeps each second), the session is gone.
    b.raw.send(bytes5({ cmd: 'disconnect', reasonCode: 0 }));
    await b.raw.closed();
    const gone = Date.now();
    svc.raw.send(
      bytes5({
        cmd: 'publish',
        topic: 'devices/v5-8/commands/q',
        payload: Buffer.from('after expiry'),
        qos: 1,
        messageId: 2,
      }),
    );
    await next(svc.raw, 'puback');
    svc.raw.end();
    await new Promise((r) => setTimeout(r, Math.max(0, gone + 4_000 - Date.now())));
    const c2 = await sub(0, false);
    assert.equal(c2.connack.sessionPresent, false, 'the session was freed');
    await assert.rejects(c2.raw.next('publish', 1_000), 'nothing queued for a freed session');
    c2.raw.end();
  });

  test('MQTT-3.1.3-9 will delay: a reconnection within the delay cancels the will; otherwise it is sent after the delay; DISCONNECT 0x04 sends it at once', async () => {
    const watcher = await connect(fleet.mqttsUrl, c.svc2, { ca: fleet.rootFile, protocolVersion: 5 });
    scope.after(() => end(watcher));
    await watcher.subscribeAsync('devices/v5-6/will', { qos: 0 });
    const wills: { payload: string; at: number }[] = [];
    watcher.on('message', (_t, p) => wills.push({ payload: String(p), at: Date.now() }));
    const withWill = (payload: string, delay: number) =>
      raw5('v5-6', fleet.mqttsUrl, {
        properties: { sessionExpiryInterval: 60 },
        will: {
          topic: 'devices/v5-6/will',
          payload: Buffer.from(payload),
          qos: 0,
          retain: false,
          properties: { willDelayInterval: delay },
        },
      });
    // 1. Dropped, back within the 30 s delay: no will.
    const a = await withWill('cancelled', 30);
    a.raw.end();
    await a.raw.closed();
    const back = await raw5('v5-6', fleet.mqttsUrl, { clean: false, properties: { sessionExpiryInterval: 60 } });
    // 2. DISCONNECT with 0x04 (and no delay): the will at once.
    back.raw.end();
    const b = await withWill('asked for', 0);
    b.raw.send(bytes5({ cmd: 'disconnect', reasonCode: 0x04 }));
    // 3. Dropped and not back: sent after the 2 s delay, measured from the drop.
    const cWill = await withWill('delayed', 2);
    const dropped = Date.now();
    cWill.raw.end();
    const deadline = Date.now() + 20_000;
    while (!wills.some((w) => w.payload === 'delayed') && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    const delayed = wills.find((w) => w.payload === 'delayed');
    assert.ok(delayed !== undefined, 'the delayed will arrived');
    assert.ok(delayed.at - dropped >= 1_500, `not before its delay (${delayed.at - dropped} ms)`);
    assert.deepEqual(
      wills.map((w) => w.payload),
      ['asked for', 'delayed'],
      '"cancelled" never sent',
    );
  });
});

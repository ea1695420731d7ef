// Issue #4: one behaviour suite over both transports (MQTT over TLS and over WSS), with mqtt.js.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { closed, connect, end, nextMessage } from '../harness/mqtt.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope } from '../harness/run.ts';

let fleet: TestFleet;
const scope = fileScope(after);
const creds: Record<string, Credential> = {};

before(async () => {
  fleet = await startTestFleet(scope);
  const { registry, ca, dir } = fleet;
  creds.svc = await enrollDevice(registry, ca, dir, { id: 'svc-1', type: 'service' });
  creds.gw = await enrollDevice(registry, ca, dir, { id: 'gw-1', type: 'gateway' });
  for (const id of ['s-1', 's-2', 'cam-1'])
    creds[id] = await enrollDevice(registry, ca, dir, { id, type: id.startsWith('cam') ? 'camera' : 'sensor' });
  registry.addDevice({ id: 'child-1', type: 'sensor', parent: 'gw-1' }, 'test');
});

for (const transport of ['mqtts', 'wss'] as const) {
  const url = () => (transport === 'mqtts' ? fleet.mqttsUrl : fleet.wssUrl);
  const as = (who: string, extra: { clientId?: string } = {}) =>
    connect(url(), creds[who], { ca: fleet.rootFile, ...extra });

  describe(`mqtt over ${transport}`, () => {
    test('ok/a device publishes telemetry a service receives (QoS 0 and 1)', async () => {
      const svc = await as('svc');
      const dev = await as('s-1');
      try {
        await svc.subscribeAsync('devices/+/telemetry', { qos: 1 });
        for (const qos of [0, 1] as const) {
          const got = nextMessage(svc, 'devices/s-1/telemetry');
          await dev.publishAsync('devices/s-1/telemetry', `t-${transport}-${qos}`, { qos });
          assert.equal(await got, `t-${transport}-${qos}`);
        }
      } finally {
        await end(svc, dev);
      }
    });

    test('ok/a service sends a command only its device receives', async () => {
      const svc = await as('svc');
      const s1 = await as('s-1');
      const s2 = await as('s-2');
      try {
        await s1.subscribeAsync('devices/s-1/commands/#', { qos: 1 });
        let leaked = false;
        s2.on('message', () => {
          leaked = true;
        });
        await s2.subscribeAsync('devices/s-2/commands/#', { qos: 1 });
        const got = nextMessage(s1, 'devices/s-1/commands/reboot');
        await svc.publishAsync('devices/s-1/commands/reboot', 'now', { qos: 1 });
        assert.equal(await got, 'now');
        await new Promise((r) => setTimeout(r, 100));
        assert.equal(leaked, false, "no device receives another device's commands");
      } finally {
        await end(svc, s1, s2);
      }
    });

    test('ok/a gateway publishes for its registered child, not for strangers', async () => {
      const svc = await as('svc');
      const gw = await as('gw');
      try {
        await svc.subscribeAsync('devices/+/telemetry', { qos: 1 });
        const got = nextMessage(svc, 'devices/child-1/telemetry');
        await gw.publishAsync('devices/child-1/telemetry', 'from child', { qos: 1 });
        assert.equal(await got, 'from child');
        const cut = closed(gw);
        gw.publish('devices/s-1/telemetry', 'forged', { qos: 0 });
        await cut;
      } finally {
        await end(svc, gw);
      }
    });

    test('error/subscribing to # or another device gets SUBACK 0x80', async () => {
      const dev = await as('s-1');
      try {
        for (const filter of ['#', 'devices/s-2/#', 'devices/+/telemetry', '$SYS/#']) {
          // mqtt.js rejects a SUBACK with 0x80; the packet it carries is the proof.
          const err = await dev.subscribeAsync(filter, { qos: 1 }).then(
            () => undefined,
            (e: { packet?: { granted?: number[] } }) => e,
          );
          assert.deepEqual(err?.packet?.granted, [128], `${filter} refused with SUBACK 0x80`);
        }
        const own = await dev.subscribeAsync('devices/s-1/#', { qos: 1 });
        assert.equal(own[0]?.qos, 1);
        assert.ok(dev.connected, 'a refused SUBSCRIBE does not disconnect');
      } finally {
        await end(dev);
      }
    });

    for (const [name, topic] of [
      ["another device's topic", 'devices/s-2/telemetry'],
      ['$SYS', '$SYS/broker/clients'],
      ['outside devices/', 'factory/line-1'],
    ] as const) {
      test(`error/publishing to ${name} closes the connection`, async () => {
        const dev = await as('s-1');
        const witness = await as('s-2');
        try {
          const cut = closed(dev);
          dev.publish(topic, 'x', { qos: 1 });
          await cut;
          assert.ok(witness.connected, 'other clients keep working');
          await fleet.log.find((l) => l.code === 'TOPIC_DENIED' && l.topic === topic);
        } finally {
          await end(dev, witness);
        }
      });
    }

    test('error/client id of another device → CONNACK 2 (identifier rejected)', async () => {
      await assert.rejects(as('s-1', { clientId: 's-2' }), (e: { code?: number }) => e.code === 2);
      await assert.rejects(as('s-1', { clientId: '' }), (e: { code?: number }) => e.code === 2);
    });

    test('error/without a client certificate the handshake fails', async () => {
      await assert.rejects(
        connect(url(), undefined, { ca: fleet.rootFile, clientId: 's-1' }),
        (e: Error & { code?: unknown }) => typeof e.code !== 'number',
      );
    });

    test('ok/a new session for the same device takes over the old one', async () => {
      const first = await as('cam-1');
      const cut = closed(first);
      const second = await as('cam-1');
      try {
        await cut;
        assert.ok(second.connected);
      } finally {
        await end(first, second);
      }
    });
  });
}

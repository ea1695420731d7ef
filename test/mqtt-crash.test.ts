// Issue #11: a PUBACK means the message is on disk for every persistent session that must get
// it. QoS 1 publishers → a persistent-session subscriber; the gateway process is SIGKILLed at a
// random moment, ten times; after each restart every PUBACKed message still reaches the
// subscriber, in order per publisher (redeliveries may repeat a message, never skip or reorder one).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import mqtt, { type MqttClient } from 'mqtt';
import { end, withTimeout } from '../harness/mqtt.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { benchFleet, type GatewayProcess, spawnService, stablePort } from '../harness/services.ts';

const ROUNDS = 10;

test('crash/SIGKILL of the gateway at random moments loses no PUBACKed QoS 1 message to a persistent session', {
  timeout: 300_000,
}, async (t) => {
  const fleet = await benchFleet(); // a data dir with a CA and registry, removed after the test
  t.after(() => {
    fleet.registry.close();
    fleet.cleanup();
  });
  const { dir, config, registry, ca } = fleet;
  const pubs: Credential[] = [
    await enrollDevice(registry, ca, dir, { id: 'pub-1' }),
    await enrollDevice(registry, ca, dir, { id: 'pub-2' }),
  ];
  const svc = await enrollDevice(registry, ca, dir, { id: 'svc-1', type: 'service' });

  let gateway: GatewayProcess | undefined;
  // The same port after every restart, from outside the ephemeral range (nothing else takes it meanwhile).
  const port = String(await stablePort());
  const start = async () => {
    gateway = await spawnService('gateway', config.dataDir, { FLEETGATE_MQTT_PORT: port });
    return `mqtts://127.0.0.1:${port}`;
  };
  t.after(() => gateway?.stop());
  const url = await start();
  const tls = (c: Credential) => ({
    ca: ca.rootPem,
    cert: c.certPem,
    key: c.keyPem,
    rejectUnauthorized: true,
    servername: 'localhost',
  });

  // The subscriber: a persistent session that reconnects by itself after every crash.
  const received = new Map<string, number[]>(pubs.map((p) => [p.deviceId, []]));
  const subscriber = await mqtt.connectAsync(url, {
    ...tls(svc),
    clientId: 'svc-1',
    clean: false,
    keepalive: 30,
    reconnectPeriod: 200,
    connectTimeout: 10_000,
  } as mqtt.IClientOptions);
  t.after(() => end(subscriber));
  subscriber.on('error', () => undefined);
  subscriber.on('message', (_topic, payload) => {
    const [from, seq] = payload.toString().split(':') as [string, string];
    received.get(from)?.push(Number(seq));
  });
  await subscriber.subscribeAsync('devices/+/telemetry', { qos: 1 });

  const acked = new Map<string, number[]>(pubs.map((p) => [p.deviceId, []]));
  const nextSeq = new Map<string, number>(pubs.map((p) => [p.deviceId, 1]));
  const publishUntilCut = async (cred: Credential, client: MqttClient) => {
    const cut = new Promise<never>((_r, reject) => client.once('close', () => reject(new Error('connection closed'))));
    cut.catch(() => undefined);
    for (;;) {
      const seq = nextSeq.get(cred.deviceId)!;
      try {
        await withTimeout(
          Promise.race([
            client.publishAsync(`devices/${cred.deviceId}/telemetry`, `${cred.deviceId}:${seq}`, { qos: 1 }),
            cut,
          ]),
          15_000,
          'publish',
        );
      } catch {
        return; // the gateway is gone: this message was not acknowledged
      }
      acked.get(cred.deviceId)!.push(seq);
      nextSeq.set(cred.deviceId, seq + 1);
    }
  };

  for (let round = 0; round < ROUNDS; round++) {
    const current = round === 0 ? url : await start();
    const clients = await Promise.all(
      pubs.map((p) =>
        mqtt.connectAsync(
          current,
          { ...tls(p), clientId: p.deviceId, reconnectPeriod: 0, connectTimeout: 10_000 } as mqtt.IClientOptions,
          false,
        ),
      ),
    );
    for (const c of clients) c.on('error', () => undefined);
    const loops = pubs.map((p, i) => publishUntilCut(p, clients[i]!));
    // Kill at a random moment once publishing is under way.
    await new Promise((r) => setTimeout(r, 100 + Math.floor(Math.random() * 700)));
    gateway!.child.kill('SIGKILL');
    await new Promise((r) => gateway!.child.once('exit', r));
    await Promise.all(loops);
    await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
  }
  await start();

  // Every acknowledged message arrives (after the subscriber's reconnect), bounded in time.
  const missing = () =>
    pubs.flatMap((p) =>
      acked
        .get(p.deviceId)!
        .filter((s) => !received.get(p.deviceId)!.includes(s))
        .map((s) => `${p.deviceId}:${s}`),
    );
  const deadline = Date.now() + 60_000;
  while (missing().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  const total = pubs.reduce((n, p) => n + acked.get(p.deviceId)!.length, 0);
  assert.ok(total > ROUNDS, `publishers got ${total} PUBACKs over ${ROUNDS} rounds`);
  assert.deepEqual(missing(), [], `every PUBACKed message was delivered (${total} acknowledged)`);
  for (const p of pubs) {
    const firsts = [...new Set(received.get(p.deviceId)!)];
    const inOrder = firsts.every((s, i) => i === 0 || s > firsts[i - 1]!);
    assert.ok(inOrder, `order per publisher kept for ${p.deviceId}: ${firsts.slice(0, 50).join(',')}`);
  }
});

// Issue #27: persistent sessions, their queued QoS 1/2 messages and retained messages on NATS
// JetStream (replicas 3 on three nats-servers routed over mTLS), so that a session follows its
// device to any node and nothing acknowledged is lost when a gateway node or a NATS server dies.
// Node A runs in this process; B and C in their own (killed with SIGKILL by one test).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import type { MqttClient } from 'mqtt';
import type { IConnackPacket, IPublishPacket, IPubrelPacket, Packet } from 'mqtt-packet';
import { type NatsConnection, connect as natsConnect } from 'nats';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { https } from '../harness/https.ts';
import { collect, connect, end, until } from '../harness/mqtt.ts';
import { type NatsCluster, natsAvailable, nodeIdentity, startNatsCluster } from '../harness/nats.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { bytes, connectBytes, rawClient } from '../harness/raw-mqtt.ts';
import { fileScope } from '../harness/run.ts';
import { type GatewayProcess, spawnService } from '../harness/services.ts';

if (!natsAvailable() && process.env.CI === 'true')
  throw new Error("nats-server is missing: .ci/run installs Debian's nats-server for the cluster tests");
const skip = natsAvailable() ? false : 'no nats-server (apt-get install nats-server)';

const scope = fileScope(after);
let nats: NatsCluster;
let a: TestFleet;
let b: GatewayProcess;
let c: GatewayProcess;
let service: Credential;

before(async () => {
  if (skip !== false) return;
  a = await startTestFleet(scope, { FLEETGATE_CLUSTER_NODE_TIMEOUT: '6s' }, undefined, async (dataDir) => {
    nats = await startNatsCluster({ tls: { dataDir, gateways: ['a', 'b', 'c', 'intruder'] } });
    scope.after(() => nats.stop());
    return nats.node('a');
  });
  [b, c] = await Promise.all([
    spawnService('gateway', a.config.dataDir, await nats.node('b')),
    spawnService('gateway', a.config.dataDir, await nats.node('c')),
  ]);
  scope.after(() => b.stop());
  scope.after(() => c.stop());
  service = await enrollDevice(a.registry, a.ca, a.dir, { id: 'js-svc', type: 'service' });
});

const url = (node: 'a' | 'b' | 'c') => (node === 'a' ? a.mqttsUrl : (node === 'b' ? b : c).endpoints['mqtt+tls']!);

/** A persistent-session connection of `device` to a node; resolves with the client and whether the session was there. */
async function persistent(
  node: 'a' | 'b' | 'c',
  device: Credential,
  protocolVersion: 4 | 5 = 4,
): Promise<{ client: MqttClient; present: boolean }> {
  const client = await connect(url(node), device, { ca: a.rootFile, clean: false, protocolVersion });
  // mqtt.js keeps the CONNACK's session present flag on the client after connecting.
  const present = (client as unknown as { _resubscribeTopics?: unknown; connackPacket?: { sessionPresent: boolean } })
    .connackPacket?.sessionPresent;
  return { client, present: present === true };
}

/** A NATS connection as the gateway identity `intruder` (listed in the NATS configuration, no gateway process). */
async function intruder(servers: string[]): Promise<NatsConnection> {
  const dir = a.config.dataDir;
  const files = await nodeIdentity(dir, 'gateway', 'intruder');
  return natsConnect({
    servers,
    tls: {
      ca: readFileSync(`${dir}/ca/root.crt`, 'utf8'),
      cert: readFileSync(files.FLEETGATE_NODE_CERT!, 'utf8'),
      key: readFileSync(files.FLEETGATE_NODE_KEY!, 'utf8'),
    },
    inboxPrefix: '_INBOX.intruder',
  });
}

/** A connection's close, not waited on for more than 5 s (one caught mid-reconnect may never say it closed). */
const closeBounded = (nc: NatsConnection) =>
  Promise.race([nc.close(), new Promise<void>((r) => setTimeout(r, 5_000).unref())]);

/** Waits until a (restarted) NATS server answers JetStream API requests again: its cluster took it back. */
async function jetStreamAnswers(server: string): Promise<void> {
  await until(
    `JetStream answering through ${server}`,
    async () => {
      const nc = await intruder([server]).catch(() => undefined);
      if (nc === undefined) return false;
      try {
        const jsm = await nc.jetstreamManager({ timeout: 2_000 });
        await jsm.streams.info('KV_fleetgate_sessions');
        return true;
      } catch {
        return false;
      } finally {
        await closeBounded(nc);
      }
    },
    60_000,
    500,
  );
}

/** The service on node A publishes `count` QoS 1 messages (each PUBACKed) to `topic`, payloads `<tag>-<i>`. */
async function publishFromA(topic: string, tag: string, count: number): Promise<void> {
  const svc = await connect(a.mqttsUrl, service, { ca: a.rootFile });
  try {
    for (let i = 0; i < count; i++) await svc.publishAsync(topic, `${tag}-${i}`, { qos: 1 });
  } finally {
    await svc.endAsync();
  }
}

test('jetstream/a session follows its device: subscribed on B, queued while offline, resumed on C with everything', {
  skip,
}, async () => {
  const device = await enrollDevice(a.registry, a.ca, a.dir, { id: 'js-follow' });
  const first = await persistent('b', device);
  assert.equal(first.present, false);
  await first.client.subscribeAsync('devices/js-follow/commands/#', { qos: 1 });
  await first.client.endAsync();

  await publishFromA('devices/js-follow/commands/set', 'queued', 50);

  const got: string[] = [];
  const resumed = await connect(url('c'), device, { ca: a.rootFile, clean: false });
  resumed.on('message', (_t, payload) => got.push(payload.toString()));
  try {
    await until('the 50 queued commands at the device on node C', () => got.length >= 50);
    assert.deepEqual(
      got.slice(0, 50),
      Array.from({ length: 50 }, (_, i) => `queued-${i}`),
      'everything queued, in order',
    );
    // Live now, on C: a command published on A arrives through the inbox too.
    await publishFromA('devices/js-follow/commands/set', 'live', 5);
    await until('the live commands', () => got.filter((m) => m.startsWith('live-')).length >= 5);
  } finally {
    await resumed.endAsync();
  }
});

test('jetstream/a device reconnecting to another node while its old connection lives: the old node hands over', {
  skip,
}, async () => {
  const device = await enrollDevice(a.registry, a.ca, a.dir, { id: 'js-handover' });
  const onB = await persistent('b', device, 5);
  await onB.client.subscribeAsync('devices/js-handover/commands/#', { qos: 1 });
  const oldClosed = new Promise<void>((resolve) => onB.client.once('close', () => resolve()));
  const onC = await persistent('c', device, 5);
  assert.equal(onC.present, true, 'the session is there on C');
  await oldClosed; // node B closed the older connection (takeover across nodes)
  const got = collect(onC.client, 'devices/js-handover/commands/');
  try {
    await publishFromA('devices/js-handover/commands/x', 'handed', 20);
    await until('20 commands on node C', () => new Set(got).size >= 20);
  } finally {
    onB.client.end(true);
    await onC.client.endAsync();
  }
});

test('jetstream/devices that move to another node at once resume there (their record read from the stream leader at CONNECT)', {
  skip,
}, async () => {
  // Each device: a new session on B, subscribed (the SUBACK waits for its record in JetStream),
  // gone, and on C straight away — before C's follow of the bucket may have read the record.
  // One device at a time: ten connections at once can outlast the registry's answer bound (500 ms)
  // on a busy machine, which is not what this is about.
  const hops: { device: Credential; client: MqttClient; present: boolean }[] = [];
  for (let i = 0; i < 10; i++) {
    const device = await enrollDevice(a.registry, a.ca, a.dir, { id: `js-hop-${i}` });
    const onB = await persistent('b', device);
    await onB.client.subscribeAsync(`devices/js-hop-${i}/commands/#`, { qos: 1 });
    await onB.client.endAsync();
    hops.push({ device, ...(await persistent('c', device)) });
  }
  try {
    assert.deepEqual(
      hops.map((h) => h.present),
      hops.map(() => true),
      'every session is present on C',
    );
    const got = hops.map((h) => collect(h.client, `devices/${h.device.deviceId}/commands/`));
    for (const h of hops) await publishFromA(`devices/${h.device.deviceId}/commands/x`, 'hop', 1);
    await until('a command at each device on C (its subscription came with the session)', () =>
      got.every((g) => g.length >= 1),
    );
    // C counts its JetStream work (and, when its copy was behind, the records it read at CONNECT).
    const metrics = (await https(`${c.endpoints.admin}/metrics`, { ca: readFileSync(a.rootFile) })).body;
    assert.match(metrics, /^fleetgate_cluster_jetstream_total\{event="write"\} [1-9]/m);
  } finally {
    for (const h of hops) await h.client.endAsync();
  }
});

test('jetstream/kill -9 of the node a device is on, mid-traffic: every PUBACKed message reaches it on another node', {
  skip,
}, async () => {
  const device = await enrollDevice(a.registry, a.ca, a.dir, { id: 'js-crash' });
  const onB = await persistent('b', device);
  const got: string[] = [];
  onB.client.on('message', (_t, p) => got.push(p.toString()));
  await onB.client.subscribeAsync('devices/js-crash/commands/#', { qos: 1 });
  const total = 300;
  const publishing = publishFromA('devices/js-crash/commands/x', 'm', total);
  await until('a third delivered on B', () => got.length >= total / 3);
  b.child.kill('SIGKILL');
  await new Promise<void>((resolve) => onB.client.once('close', () => resolve()));
  onB.client.end(true);
  await publishing;
  const onC = await connect(url('c'), device, { ca: a.rootFile, clean: false });
  onC.on('message', (_t, p) => got.push(p.toString()));
  try {
    await until('every message at the device', () => new Set(got).size >= total, 60_000);
    // Order per publisher: first arrivals in order (a redelivery after the crash may repeat some).
    const firsts = [...new Set(got)];
    assert.deepEqual(
      firsts,
      Array.from({ length: total }, (_, i) => `m-${i}`),
    );
    console.log(`kill -9 mid-traffic: ${total} delivered, ${got.length - total} duplicates`);
  } finally {
    await onC.endAsync();
    b = await spawnService('gateway', a.config.dataDir, await nats.node('b'));
  }
});

test('jetstream/QoS 2 across a node kill: a message released (PUBREC received) gets its PUBREL on the next node, one not yet acknowledged comes again under its id — neither is delivered twice', {
  skip,
}, async () => {
  const device = await enrollDevice(a.registry, a.ca, a.dir, { id: 'js-q2' });
  const caPem = readFileSync(a.rootFile, 'utf8');
  const payloadOf = (p: Packet) => String((p as IPublishPacket).payload);
  let raw = await rawClient(url('b'), device, caPem);
  raw.send(connectBytes('js-q2', { clean: false }));
  await raw.next('connack');
  raw.send(bytes({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/js-q2/commands/#', qos: 2 }] }));
  await raw.next('suback');
  const svc = await connect(a.mqttsUrl, service, { ca: a.rootFile });
  let killed = false;
  try {
    for (const m of ['q2-a', 'q2-b']) await svc.publishAsync('devices/js-q2/commands/x', m, { qos: 2 });
    // On B: both sent; the first acknowledged (PUBREC) and released (PUBREL, after the record
    // says so), the second left unacknowledged. Then B dies.
    const first = (await raw.next('publish')) as IPublishPacket;
    const second = (await raw.next('publish')) as IPublishPacket;
    assert.deepEqual([payloadOf(first), payloadOf(second)], ['q2-a', 'q2-b']);
    raw.send(bytes({ cmd: 'pubrec', messageId: first.messageId }));
    assert.equal(((await raw.next('pubrel')) as IPubrelPacket).messageId, first.messageId);
    b.child.kill('SIGKILL');
    killed = true;
    await raw.closed();
    raw.end();

    // On C: the PUBREL for the first, the second again under the same id; then a third message,
    // which comes after anything of this publisher's sent again (one inbox, in order).
    raw = await rawClient(url('c'), device, caPem);
    raw.send(connectBytes('js-q2', { clean: false }));
    assert.equal(((await raw.next('connack')) as IConnackPacket).sessionPresent, true);
    const seen: Packet[] = [];
    const until3 = async () => {
      for (;;) {
        const p = await raw.next(undefined, 30_000);
        seen.push(p);
        if (p.cmd === 'publish') raw.send(bytes({ cmd: 'pubrec', messageId: (p as IPublishPacket).messageId }));
        if (p.cmd === 'pubrel') raw.send(bytes({ cmd: 'pubcomp', messageId: (p as IPubrelPacket).messageId }));
        if (p.cmd === 'publish' && payloadOf(p) === 'q2-c') return;
      }
    };
    const reading = until3();
    await until(
      'the PUBREL and the unacknowledged message again',
      () => seen.filter((p) => p.cmd === 'publish').length >= 1 && seen.some((p) => p.cmd === 'pubrel'),
    );
    await svc.publishAsync('devices/js-q2/commands/x', 'q2-c', { qos: 2 });
    await reading;
    const rels = seen.filter((p) => p.cmd === 'pubrel').map((p) => (p as IPubrelPacket).messageId);
    const pubs = seen.filter((p) => p.cmd === 'publish') as IPublishPacket[];
    assert.ok(rels.includes(first.messageId as number), `a PUBREL for ${first.messageId} (got ${rels.join(', ')})`);
    assert.deepEqual(
      pubs.map((p) => [payloadOf(p), p.messageId === second.messageId || payloadOf(p) === 'q2-c']),
      [
        ['q2-b', true],
        ['q2-c', true],
      ],
      'the released message not sent again; the unacknowledged one under the id it had',
    );
  } finally {
    raw.end();
    await end(svc);
    if (killed) b = await spawnService('gateway', a.config.dataDir, await nats.node('b'));
  }
});

test('jetstream/a shared group with persistent members: its messages wait while every member is offline, and none PUBACKed is lost when a member’s node is killed', {
  skip,
}, async () => {
  const [w1, w2] = await Promise.all(
    ['js-w1', 'js-w2'].map((id) => enrollDevice(a.registry, a.ca, a.dir, { id, type: 'service' })),
  );
  const group = '$share/jobs/devices/+/commands/job';
  const topic = 'devices/js-shr/commands/job';
  const got: string[] = [];
  const clients: MqttClient[] = [];
  const member = async (node: 'b' | 'c', cred: Credential) => {
    const { client } = await persistent(node, cred);
    clients.push(client);
    client.on('message', (_t, p) => got.push(p.toString()));
    return client;
  };
  let killed = false;
  try {
    // 1. The only member subscribes, then goes offline: what is published meanwhile waits for it.
    const first = await member('b', w1 as Credential);
    await first.subscribeAsync(group, { qos: 1 });
    await first.endAsync();
    await publishFromA(topic, 'offline', 20);
    await member('c', w1 as Credential);
    await until('the 20 queued while the group had no member online', () => got.length >= 20, 30_000);
    assert.deepEqual([...new Set(got)].sort(), Array.from({ length: 20 }, (_, i) => `offline-${i}`).sort());

    // 2. A second member on B; B killed mid-traffic: everything reaches a member (the first on C,
    //    or the second once it is back, on C).
    got.length = 0;
    const two = await member('b', w2 as Credential);
    await two.subscribeAsync(group, { qos: 1 });
    const total = 300;
    const publishing = publishFromA(topic, 'm', total);
    await until('a third delivered', () => got.length >= total / 3, 30_000);
    b.child.kill('SIGKILL');
    killed = true;
    await new Promise<void>((resolve) => two.once('close', () => resolve()));
    two.end(true);
    await publishing;
    await member('c', w2 as Credential);
    await until('every message at a member', () => new Set(got).size >= total, 90_000);
    console.log(`shared group, member's node killed: ${total} delivered, ${got.length - total} duplicates`);
  } finally {
    await end(...clients);
    if (killed) b = await spawnService('gateway', a.config.dataDir, await nats.node('b'));
  }
});

test('jetstream/a node killed with its devices attached: their sessions expire like offline ones (node timeout); restarted, it resumes the others', {
  skip,
}, async () => {
  const orphan = await enrollDevice(a.registry, a.ca, a.dir, { id: 'js-orphan' });
  const kept = await enrollDevice(a.registry, a.ca, a.dir, { id: 'js-kept' });
  // MQTT 5 asking for a 2 s session expiry: gone 2 s after its node is declared dead.
  const o = await connect(url('b'), orphan, { ca: a.rootFile, clean: false, protocolVersion: 5, sessionExpiry: 2 });
  await o.subscribeAsync('devices/js-orphan/commands/#', { qos: 1 });
  const k = await persistent('b', kept);
  await k.client.subscribeAsync('devices/js-kept/commands/#', { qos: 1 });
  const closed = [o, k.client].map((c) => new Promise<void>((resolve) => c.once('close', () => resolve())));
  b.child.kill('SIGKILL');
  await Promise.all(closed);
  o.end(true);
  k.client.end(true);
  try {
    // Node A (cluster.nodeTimeout 6 s) stops hearing B's beat, counts its sessions offline since.
    const expired = await a.log.find((l) => l.clientId === 'js-orphan' && /its node died/.test(String(l.msg)), 60_000);
    assert.equal(expired.node, 'b');
    await publishFromA('devices/js-kept/commands/x', 'kept', 10);
  } finally {
    b = await spawnService('gateway', a.config.dataDir, await nats.node('b'));
  }
  // The orphan's session is gone everywhere; the other one, long-lived, waited: node B, restarted,
  // reads the records it wrote before it died like any other node's.
  const again = await persistent('c', orphan, 5);
  assert.equal(again.present, false, 'the expired session is not resumed');
  await again.client.endAsync();
  const got: string[] = [];
  const resumed = await persistent('b', kept);
  resumed.client.on('message', (_t, p) => got.push(p.toString()));
  try {
    assert.equal(resumed.present, true, 'restarted node B resumes the session it held');
    await until('the 10 commands queued while B was down', () => new Set(got).size >= 10);
    assert.deepEqual(
      [...new Set(got)],
      Array.from({ length: 10 }, (_, i) => `kept-${i}`),
    );
  } finally {
    await resumed.client.endAsync();
  }
});

test('jetstream/one of three NATS servers killed mid-traffic: nothing PUBACKed lost (a persistent session, a durable shared group)', {
  skip,
}, async () => {
  const device = await enrollDevice(a.registry, a.ca, a.dir, { id: 'js-natskill' });
  const worker = await enrollDevice(a.registry, a.ca, a.dir, { id: 'js-natskill-w', type: 'service' });
  const sub = await persistent('c', device);
  const got: string[] = [];
  sub.client.on('message', (_t, p) => got.push(p.toString()));
  await sub.client.subscribeAsync('devices/js-natskill/commands/#', { qos: 1 });
  // The only member of a shared group, persistent: the group's messages go through JetStream.
  const member = await persistent('b', worker);
  const shared: string[] = [];
  member.client.on('message', (_t, p) => shared.push(p.toString()));
  await member.client.subscribeAsync('$share/natskill/devices/js-natskill/commands/#', { qos: 1 });
  const acked: string[] = [];
  const total = 300;
  let killed = false;
  // A device that resends what was not acknowledged (as any MQTT client does after a reconnect).
  let svc = await connect(a.mqttsUrl, service, { ca: a.rootFile });
  for (let i = 0; i < total; i++) {
    if (i === 100) {
      killed = true;
      await nats.servers[0]!.stop('SIGKILL');
    }
    for (;;) {
      try {
        await svc.publishAsync('devices/js-natskill/commands/x', `n-${i}`, { qos: 1 });
        acked.push(`n-${i}`);
        break;
      } catch {
        svc.end(true);
        svc = await connect(a.mqttsUrl, service, { ca: a.rootFile });
      }
    }
  }
  await svc.endAsync();
  assert.ok(killed);
  try {
    await until('every PUBACKed message at the subscriber', () => acked.every((m) => got.includes(m)), 60_000);
    await until('every PUBACKed message at the shared group', () => acked.every((m) => shared.includes(m)), 60_000);
    console.log(
      `NATS server killed mid-traffic: ${acked.length} acknowledged, ${got.length - new Set(got).size} duplicates (${shared.length - new Set(shared).size} in the group)`,
    );
  } finally {
    await end(sub.client, member.client);
    await nats.servers[0]!.start();
    await jetStreamAnswers(nats.servers[0]!.url);
  }
});

test('jetstream/retained messages live in JetStream: set on one node, seen on the others', { skip }, async () => {
  const device = await enrollDevice(a.registry, a.ca, a.dir, { id: 'js-retain' });
  const pub = await connect(url('b'), device, { ca: a.rootFile });
  await pub.publishAsync('devices/js-retain/state', 'on', { qos: 1, retain: true });
  await pub.endAsync();
  for (const node of ['a', 'c'] as const) {
    const svc = await connect(url(node), service, { ca: a.rootFile });
    const got: string[] = [];
    svc.on('message', (t, p, packet) => {
      if (packet.retain) got.push(`${t}=${p.toString()}`);
    });
    try {
      // A node learns of the change when its bucket follow reads it — later while that follow is made
      // again after the NATS server the previous test killed: subscribed again until it has it.
      await until(
        `the retained message on node ${node}`,
        async () => {
          await svc.subscribeAsync('devices/js-retain/#', { qos: 1 });
          await new Promise((r) => setTimeout(r, 250));
          return got.includes('devices/js-retain/state=on');
        },
        30_000,
      );
    } finally {
      await svc.endAsync();
    }
  }
});

test('jetstream/what another process writes is input: a forged session record is refused; a gateway cannot delete the streams', {
  skip,
}, async () => {
  const nc = await intruder(nats.url.split(','));
  try {
    const js = nc.jetstream();
    const kv = await js.views.kv('fleetgate_sessions');
    await kv.put('s.forged', new TextEncoder().encode('{"v":1,"clientId":"someone-else"}'));
    await kv.put('s.garbage', new Uint8Array([0xff, 0x00]));
    await a.log.find((l) => l.code === 'CLUSTER_MESSAGE_INVALID');
    const jsm = await nc.jetstreamManager();
    await assert.rejects(jsm.streams.delete('FLEETGATE_INBOX'), /permission|timeout/i);
    await assert.rejects(jsm.streams.delete('KV_fleetgate_sessions'), /permission|timeout/i);
  } finally {
    await closeBounded(nc);
  }
  // The nodes carry on: a session still resumes. (On the node that wrote its record: another node
  // learns of it a few milliseconds later — resuming elsewhere is the first test's.)
  const device = await enrollDevice(a.registry, a.ca, a.dir, { id: 'js-after' });
  const first = await persistent('c', device);
  await first.client.subscribeAsync('devices/js-after/commands/#', { qos: 1 }); // SUBACK once the record is stored
  await end(first.client);
  const again = await persistent('c', device);
  assert.equal(again.present, true);
  await end(again.client);
});

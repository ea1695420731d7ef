// Issue #26: the links between nodes prove who they are, and no message on them — from an
// outsider, a device, or an authenticated node gone bad — breaks a node. Node A runs in this
// process, node B in its own, on one NATS with TLS and verify_and_map (configured by the project's
// generator, certificates from the test fleet's CA). `evil` is a gateway identity the NATS
// config lists: what an attacker holding one gateway node's key can send.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { type NatsConnection, connect as natsConnect } from 'nats';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { collect, connect, linked, until } from '../harness/mqtt.ts';
import { type NatsServer, natsAvailable, nodeIdentity, startNats } from '../harness/nats.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope, fleetgate, fleetgateOk, tempDir } from '../harness/run.ts';
import { type GatewayProcess, spawnService } from '../harness/services.ts';

if (!natsAvailable() && process.env.CI === 'true')
  throw new Error("nats-server is missing: .ci/run installs Debian's nats-server for the cluster tests");
const skip = natsAvailable() ? false : 'no nats-server (apt-get install nats-server)';

const scope = fileScope(after);
let nats: NatsServer;
let a: TestFleet;
let b: GatewayProcess;
let sensor: Credential;
let service: Credential;

before(async () => {
  if (skip !== false) return;
  a = await startTestFleet(scope, {}, undefined, async (dataDir) => {
    nats = await startNats({ tls: { dataDir, gateways: ['a', 'b', 'evil', 'joiner', 'holder'] } });
    scope.after(() => nats.stop());
    return nats.node('a');
  });
  b = await spawnService('gateway', a.config.dataDir, await nats.node('b'));
  scope.after(() => b.stop());
  sensor = await enrollDevice(a.registry, a.ca, a.dir, { id: 'l-sensor' });
  service = await enrollDevice(a.registry, a.ca, a.dir, { id: 'l-svc', type: 'service' });
});

/** The certificate and key files of a node identity's environment (harness `nodeIdentity`, `NatsServer.node`). */
const filesOf = (env: Record<string, string>) => ({ cert: env.FLEETGATE_NODE_CERT!, key: env.FLEETGATE_NODE_KEY! });

/** TLS options trusting the fleet root and presenting `files` (PEM files). */
function nodeTls(files: { cert: string; key: string }): { ca: string; cert: string; key: string } {
  return {
    ca: readFileSync(a.rootFile, 'utf8'),
    cert: readFileSync(files.cert, 'utf8'),
    key: readFileSync(files.key, 'utf8'),
  };
}

/** A raw NATS client on `servers` (the shared NATS by default) presenting `files`, trusting the fleet root. */
function natsClient(files?: { cert: string; key: string }, servers = nats.url): Promise<NatsConnection> {
  const tls = files === undefined ? { ca: readFileSync(a.rootFile, 'utf8') } : nodeTls(files);
  return natsConnect({ servers, tls, reconnect: false, timeout: 10_000 });
}

async function asNode(name: string): Promise<NatsConnection> {
  return natsClient(filesOf(await nodeIdentity(a.config.dataDir, 'gateway', name)));
}

/** A's count of bus messages it refused. */
async function invalidAtA(): Promise<number> {
  const text = await a.gateway.metrics.registry.getSingleMetricAsString('fleetgate_cluster_messages_total');
  return Number(/direction="invalid"\} (\d+)/.exec(text)?.[1] ?? 0);
}

test('cluster links/NATS refuses a client without a certificate, a device certificate, and a node it does not list', {
  skip,
}, async () => {
  await assert.rejects(natsClient(), 'no client certificate: the TLS handshake fails');
  const device = { cert: sensor.certFile, key: sensor.keyFile };
  await assert.rejects(natsClient(device), /authorization|auth/i, 'a device certificate maps to no NATS user');
  const stranger = await nodeIdentity(a.config.dataDir, 'gateway', 'stranger');
  await assert.rejects(
    natsClient(filesOf(stranger)),
    /authorization|auth/i,
    'a node certificate from the fleet CA for a node the config does not list',
  );
  const operatorRole = await nodeIdentity(a.config.dataDir, 'operator', 'a');
  await assert.rejects(
    natsClient(filesOf(operatorRole)),
    /authorization|auth/i,
    "another role's certificate with a listed gateway's name",
  );
});

test("cluster links/a gateway's NATS user cannot speak for another node or read its replies", { skip }, async () => {
  const evil = await asNode('evil');
  const holder = await asNode('holder');
  try {
    const heard: string[] = [];
    const announcements = holder.subscribe('fg.s.*', {
      callback: (_err, msg) => heard.push(`${msg.subject}=${new TextDecoder().decode(msg.data)}`),
    });
    await holder.flush();
    const inbox = evil.subscribe('_INBOX.a.>');
    const denied = (async () => {
      for await (const _ of inbox) return 'message';
      return 'closed';
    })();
    await assert.rejects(denied, /permissions violation/i, "node a's reply inboxes are a's alone");
    evil.publish('fg.s.a', 'l-sensor'); // a takeover announced under node a's name: dropped by NATS
    evil.publish('fg.s.evil', 'l-sensor'); // under its own name: delivered
    await evil.flush();
    await until('its own announcement arrives', () => heard.includes('fg.s.evil=l-sensor'));
    assert.deepEqual(heard, ['fg.s.evil=l-sensor'], 'the one under another node’s name never did');
    announcements.unsubscribe();
  } finally {
    await Promise.all([evil.close(), holder.close()]);
  }
});

test('cluster links/forged and malformed messages from an authenticated node are dropped and counted; the node goes on', {
  skip,
}, async () => {
  const svc = await connect(a.mqttsUrl, service, { ca: a.rootFile });
  const pub = await connect(b.endpoints['mqtt+tls']!, sensor, { ca: a.rootFile });
  const evil = await asNode('evil');
  try {
    const got = collect(svc, '');
    await svc.subscribeAsync('devices/l-sensor/#', { qos: 1 });
    await linked(pub, 'devices/l-sensor/t', got);
    const before = await invalidAtA();
    const forged: [string, Uint8Array][] = [
      ['fg.m.devices.l-sensor.t', Buffer.from([1, 8, 0])], // the 3-byte message of the report
      ['fg.m.devices.l-sensor.t', Buffer.from([2, 8, 0])],
      ['fg.m.devices.l-sensor.t', Buffer.from([2, 16, 0, 0, 0, 0, 200])],
      ['fg.m.devices.l-sensor.t', Buffer.from('garbage')],
      ['fg.m.devices.l-sensor.~KysrKw', Buffer.from([2, 0, 0, 120])], // a level that decodes to wildcards
      ['fg.l.AAAA', Buffer.from([2, 0, 0, 120])], // a hashed subject without its topic
      ['fg.r.devices.l-sensor.forged', Buffer.from([2, 8, 0])],
      ['fg.s.evil', new Uint8Array(0)],
      ['fg.admin.kick', Buffer.from('{"deviceId": 7}')],
      ['fg.admin.connections', Buffer.from('not json')],
    ];
    for (const [subject, data] of forged) evil.publish(subject, data);
    await evil.flush();
    await until('A counts every malformed message', async () => (await invalidAtA()) >= before + forged.length, 15_000);
    // A is still on the bus: a fresh message from B's device arrives, and nothing forged was delivered.
    const n = got.length;
    await pub.publishAsync('devices/l-sensor/t', 'after-the-attack', { qos: 1 });
    await until('a real message after the forged ones', () => got.includes('after-the-attack'));
    assert.deepEqual(
      got.slice(n).filter((g) => !g.startsWith('probe')),
      ['after-the-attack'],
      'no forged message reached the subscriber',
    );
    const metrics = await a.gateway.metrics.registry.getSingleMetricAsString('fleetgate_cluster_link_up');
    assert.match(metrics, /fleetgate_cluster_link_up 1/);
    assert.ok(
      a.log.lines.some((l) => l.code === 'CLUSTER_MESSAGE_INVALID'),
      'a throttled log line says a message was refused',
    );
  } finally {
    await Promise.all([svc.endAsync(), pub.endAsync(), evil.close()]);
  }
});

test('cluster links/a device publishing and subscribing with 5,000-character levels keeps its node on the bus; nobody loses a message', {
  skip,
}, async () => {
  const svc = await connect(a.mqttsUrl, service, { ca: a.rootFile });
  const pub = await connect(b.endpoints['mqtt+tls']!, sensor, { ca: a.rootFile });
  try {
    const got = collect(svc, 'devices/l-sensor/');
    await svc.subscribeAsync('devices/l-sensor/#', { qos: 1 });
    await linked(pub, 'devices/l-sensor/t', got);
    const long = `devices/l-sensor/${'x'.repeat(5_000)}`;
    // The device also subscribes with a long filter (its own long topic) on its node.
    await pub.subscribeAsync(`devices/l-sensor/${'y'.repeat(5_000)}`, { qos: 0 });
    for (let i = 0; i < 200; i++) {
      await pub.publishAsync(long, `long-${i}`, { qos: 1 });
      await pub.publishAsync('devices/l-sensor/t', `normal-${i}`, { qos: 1 });
    }
    await until('every normal message and every long-topic message crossed', () =>
      Array.from({ length: 200 }, (_, i) => i).every((i) => got.includes(`normal-${i}`) && got.includes(`long-${i}`)),
    );
    assert.ok(!a.log.lines.some((l) => /NATS link down/.test(String(l.msg))), "A's link never went down");
  } finally {
    await Promise.all([svc.endAsync(), pub.endAsync()]);
  }
});

test('cluster links/a node certificate is not a device certificate: the device listener refuses it', {
  skip,
}, async () => {
  const id = await nodeIdentity(a.config.dataDir, 'gateway', 'a');
  const asDevice: Credential = {
    ...sensor,
    deviceId: 'gateway-a',
    certPem: readFileSync(id.FLEETGATE_NODE_CERT!, 'utf8'),
    keyPem: readFileSync(id.FLEETGATE_NODE_KEY!, 'utf8'),
  };
  await assert.rejects(connect(a.mqttsUrl, asDevice, { ca: a.rootFile, timeoutMs: 10_000 }));
  await until('the refusal is logged with its reason', () =>
    a.log.lines.some(
      (l) => /node certificate/.test(String(l.err ?? l.msg ?? '')) || /node certificate/.test(JSON.stringify(l)),
    ),
  );
});

test('cluster links/a node whose NATS or PostgreSQL link leaves this host unauthenticated refuses to start', async (t) => {
  await assert.rejects(
    startTestFleet(t, { FLEETGATE_NATS: 'nats://10.255.255.1:4222', FLEETGATE_NODE: 'open' }),
    (e: { code?: string; message?: string }) => e.code === 'CLUSTER_INSECURE' && /tls:\/\//.test(e.message ?? ''),
  );
  // Through the CLI, as an operator would start it: a clear code and exit status, before any connection is tried.
  const dir = tempDir(t);
  await fleetgateOk(['init', '--data', dir]);
  for (const [command, env] of [
    ['gateway', { FLEETGATE_NATS: 'nats://10.255.255.1:4222' }],
    ['gateway', { FLEETGATE_REGISTRY: 'postgres://fleetgate@10.255.255.1:5432/fleetgate' }],
    ['provision', { FLEETGATE_REGISTRY: 'postgres://fleetgate@10.255.255.1:5432/fleetgate?sslmode=require' }],
  ] as const) {
    const r = await fleetgate([command, '--data', dir, '--json'], { env: { ...env, FLEETGATE_MQTT_PORT: '0' } });
    assert.equal(r.code, 2, `${command} ${JSON.stringify(env)}: ${r.stderr}`);
    assert.match(r.stderr, /CLUSTER_INSECURE/);
  }
});

test('cluster links/a joining node refuses a forged retained snapshot whole: the 1e9 offer, a bad chunk, an oversized chunk, an empty set', {
  skip,
}, async () => {
  const pino = (await import('pino')).default;
  const { NatsBus } = await import('../gateway/cluster/bus.ts');
  const { CHUNK_RECORDS, encodeEnvelope, encodeRecord, endChunk } = await import('../gateway/cluster/wire.ts');
  const { retainedSubject } = await import('../gateway/cluster/subjects.ts');
  const { Message } = await import('../gateway/mqtt/session.ts');
  // A NATS of its own: only the joiner and the forger answer here.
  const own = await startNats({ tls: { dataDir: a.config.dataDir, gateways: ['joiner', 'evil'], operators: ['ops'] } });
  const quiet = pino({ level: 'silent' });
  const events = {
    message: () => undefined,
    link: () => undefined,
    session: () => undefined,
    retained: () => undefined,
    shared: () => undefined,
  };
  const joiner = await NatsBus.connect(
    { servers: own.url, tls: nodeTls(filesOf(await own.node('joiner'))) },
    'joiner',
    quiet,
    events,
    { retainedTotal: 1_000, retainedBytesTotal: 64 * 1024 },
  );
  const evil = await natsClient(filesOf(await own.node('evil')), own.url);
  const record = (i: number, size = 10) => {
    const m = new Message(`devices/s-1/r${i}`, Buffer.alloc(size, 1), 1, true, 's-1');
    return Buffer.concat(encodeRecord(retainedSubject(m.topic), encodeEnvelope(m)));
  };
  /** `evil` offers `count` and, when chosen, sends `chunks`. */
  const forge = async (count: number, chunks: Buffer[]) => {
    const offer = evil.subscribe('fg.sync.retained.offer', {
      callback: (_e, msg) => msg.respond(new TextEncoder().encode(JSON.stringify({ node: 'evil', count }))),
    });
    const send = evil.subscribe('fg.sync.retained.send.evil', {
      callback: (_e, msg) => {
        for (const c of chunks) evil.publish(msg.reply!, c);
      },
    });
    await evil.flush();
    try {
      const before = joiner.counts.invalid;
      const result = await joiner.fetchRetained(5_000);
      return { ...result, refusedCount: joiner.counts.invalid - before };
    } finally {
      offer.unsubscribe();
      send.unsubscribe();
      await evil.flush();
    }
  };
  try {
    const huge = await forge(1e9, []);
    assert.equal(huge.node, undefined, 'an offer over the bound is no offer');
    assert.equal(huge.messages.length, 0);
    assert.ok(huge.refusedCount >= 1);

    const badChunk = await forge(3, [
      Buffer.concat([Buffer.of(CHUNK_RECORDS), record(1), Buffer.from([0, 9, 0])]),
      endChunk(2),
    ]);
    assert.deepEqual(
      [badChunk.messages.length, badChunk.complete, badChunk.refusedCount],
      [0, false, 1],
      'nothing of it applied',
    );
    assert.match(badChunk.refused ?? '', /past the end/);

    const oversized = await forge(3, [
      Buffer.concat([Buffer.of(CHUNK_RECORDS), record(1, 140 * 1024), record(2), record(3)]),
      endChunk(3),
    ]);
    assert.deepEqual([oversized.messages.length, oversized.complete], [0, false]);
    assert.match(oversized.refused ?? '', /bytes/);

    // A consistent but empty set, after offering some: not the cluster's set, so nothing is dropped.
    const empty = await forge(3, [endChunk(0)]);
    assert.deepEqual([empty.node, empty.messages.length, empty.complete], ['evil', 0, false]);

    // A snapshot from a non-gateway identity cannot exist: an operator may neither hear the offer
    // nor publish to any inbox (NATS refuses the subscription and drops the publish).
    const ops = await natsClient(filesOf(await nodeIdentity(a.config.dataDir, 'operator', 'ops')), own.url);
    try {
      const offers = ops.subscribe('fg.sync.retained.offer');
      await assert.rejects(
        (async () => {
          for await (const _ of offers) return;
        })(),
        /permissions violation/i,
      );
      const heard: number[] = [];
      const inbox = evil.subscribe('_INBOX.evil.probe', { callback: (_e, msg) => heard.push(msg.data.length) });
      await evil.flush();
      ops.publish('_INBOX.evil.probe', endChunk(0)); // dropped: an operator may not publish to inboxes
      evil.publish('_INBOX.evil.probe', endChunk(0)); // a gateway may (noEcho is off here: it hears itself)
      await ops.flush();
      await evil.flush();
      await until('the gateway’s own publish arrives', () => heard.length >= 1);
      await ops.flush(); // the server has handled the operator's publish…
      await evil.flush(); // …and whatever it routed to evil before this round trip has arrived
      assert.deepEqual(heard, [5], 'only the gateway’s');
      inbox.unsubscribe();
    } finally {
      await ops.close();
    }

    // Against all that, an honest set is taken whole.
    const honest = await forge(2, [Buffer.concat([Buffer.of(CHUNK_RECORDS), record(1), record(2)]), endChunk(2)]);
    assert.deepEqual([honest.messages.length, honest.complete], [2, true]);
  } finally {
    await Promise.all([joiner.close(), evil.close()]);
    await own.stop();
  }
});

// Issue #12, first step: gateway nodes exchange messages over NATS. Node A runs in this process,
// node B in its own, on one data directory (the registry is the shared SQLite file here;
// test/cluster.test.ts runs three nodes on PostgreSQL) and one nats-server of their own. A device's publish on A
// reaches a service subscribed on B (QoS 0 and 1, nothing lost), B's command reaches the device on
// A, and when NATS restarts the gap is in A's metrics and log and fan-out resumes.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { closed, collect, connect, linked, until, withTimeout } from '../harness/mqtt.ts';
import { type NatsServer, natsAvailable, startNats } from '../harness/nats.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope } from '../harness/run.ts';
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
  // The cluster links as production runs them: NATS over mutual TLS, each node its own certificate and user.
  a = await startTestFleet(scope, {}, undefined, async (dataDir) => {
    nats = await startNats({ tls: { dataDir, gateways: ['a', 'b', 'c', 'd'] } });
    scope.after(() => nats.stop());
    return nats.node('a');
  });
  b = await spawnService('gateway', a.config.dataDir, await nats.node('b'));
  scope.after(() => b.stop());
  sensor = await enrollDevice(a.registry, a.ca, a.dir, { id: 'c-sensor' });
  service = await enrollDevice(a.registry, a.ca, a.dir, { id: 'c-svc', type: 'service' });
});

/**
 * Subscribes to `devices/c-sensor/#` on the node at `url`; returns the retained messages
 * (`topic=payload`, sorted) that arrive before a fresh message the sensor publishes on that node.
 */
async function retainedOn(url: string): Promise<string[]> {
  const svc = await connect(url, service, { ca: a.rootFile });
  const pub = await connect(url, sensor, { ca: a.rootFile });
  try {
    const got: string[] = [];
    const sentinel = new Promise<void>((resolve) =>
      svc.on('message', (topic, payload, packet) => {
        if (packet.retain) got.push(`${topic}=${payload.toString()}`);
        else if (topic === 'devices/c-sensor/sentinel') resolve();
      }),
    );
    await svc.subscribeAsync('devices/c-sensor/#', { qos: 1 });
    // Retained messages are sent with the SUBACK; a message published after it arrives after them.
    await pub.publishAsync('devices/c-sensor/sentinel', 'now', { qos: 1 });
    await withTimeout(sentinel, 10_000, 'the sentinel message');
    return got.sort();
  } finally {
    await pub.endAsync();
    await svc.endAsync();
  }
}

/** The sensor, connected to node A, keeps (or, with '', clears) these retained messages. */
async function retainOnA(messages: [topic: string, payload: string][]): Promise<void> {
  const dev = await connect(a.mqttsUrl, sensor, { ca: a.rootFile });
  try {
    for (const [topic, payload] of messages) await dev.publishAsync(topic, payload, { qos: 1, retain: true });
  } finally {
    await dev.endAsync();
  }
}

test('cluster/a publish on node A reaches a service on node B, QoS 0 and 1, nothing lost; and back', {
  skip,
}, async () => {
  const svc = await connect(b.endpoints['mqtt+tls']!, service, { ca: a.rootFile });
  const dev = await connect(a.mqttsUrl, sensor, { ca: a.rootFile });
  try {
    await svc.subscribeAsync('devices/+/telemetry', { qos: 1 });
    const atService = collect(svc, 'devices/c-sensor/telemetry');
    await linked(dev, 'devices/c-sensor/telemetry', atService);
    atService.length = 0;
    for (let i = 0; i < 200; i++) dev.publish('devices/c-sensor/telemetry', `q0-${i}`, { qos: 0 });
    for (let i = 0; i < 200; i++) await dev.publishAsync('devices/c-sensor/telemetry', `q1-${i}`, { qos: 1 });
    await until('all 400 messages at the service on node B', () => atService.length >= 400);
    const q1 = atService.filter((m) => m.startsWith('q1-'));
    assert.deepEqual(
      q1,
      Array.from({ length: 200 }, (_, i) => `q1-${i}`),
      'QoS 1: every message, in order',
    );
    assert.equal(atService.filter((m) => m.startsWith('q0-')).length, 200);

    // The other way: the service's command on B reaches the device on A.
    await dev.subscribeAsync('devices/c-sensor/commands/#', { qos: 1 });
    const atDevice = collect(dev, 'devices/c-sensor/commands/');
    await linked(svc, 'devices/c-sensor/commands/reboot', atDevice);
    await svc.publishAsync('devices/c-sensor/commands/reboot', 'now', { qos: 1 });
    await until('the command at the device on node A', () => atDevice.includes('now'));
  } finally {
    await dev.endAsync();
    await svc.endAsync();
  }
});

test('cluster/NATS restarted: the gap is in metrics and the log, and fan-out resumes', { skip }, async () => {
  const svc = await connect(b.endpoints['mqtt+tls']!, service, { ca: a.rootFile });
  const dev = await connect(a.mqttsUrl, sensor, { ca: a.rootFile });
  try {
    await svc.subscribeAsync('devices/+/telemetry', { qos: 1 });
    const got = collect(svc, 'devices/c-sensor/telemetry');
    await linked(dev, 'devices/c-sensor/telemetry', got);

    await nats.stop();
    await a.log.find(
      (l) =>
        l.msg === 'NATS link down: messages to subscribers on other nodes are not delivered until it is back' &&
        l.code === 'CLUSTER_UNAVAILABLE',
    );
    for (let i = 0; i < 5; i++) await dev.publishAsync('devices/c-sensor/telemetry', `gap-${i}`, { qos: 1 }); // acknowledged by A, delivered on A only
    const metrics = await a.gateway.metrics.registry.metrics();
    assert.match(metrics, /fleetgate_cluster_link_up 0/);
    const lost = Number(/fleetgate_cluster_messages_total\{direction="lost"\} (\d+)/.exec(metrics)?.[1] ?? 0);
    assert.ok(lost >= 5, `lost while down: ${lost}`);

    await nats.start();
    await a.log.find((l) => l.msg === 'NATS link back: fan-out between nodes resumed');
    got.length = 0;
    await linked(dev, 'devices/c-sensor/telemetry', got); // B subscribed again by itself
    await dev.publishAsync('devices/c-sensor/telemetry', 'after', { qos: 1 });
    await until('a message after the restart', () => got.includes('after'));
    assert.match(await a.gateway.metrics.registry.metrics(), /fleetgate_cluster_link_up 1/);
  } finally {
    await dev.endAsync();
    await svc.endAsync();
  }
});

test('cluster/the same device connecting to node B takes its session over from node A', { skip }, async () => {
  const first = await connect(a.mqttsUrl, sensor, { ca: a.rootFile });
  const closedOnA = closed(first, 20_000);
  const second = await connect(b.endpoints['mqtt+tls']!, sensor, { ca: a.rootFile });
  try {
    await closedOnA;
    await a.log.find(
      (l) => l.msg === 'session taken over on another node' && l.clientId === 'c-sensor' && l.node === 'b',
    );
    assert.equal(a.gateway.sessions.ofDevice('c-sensor').length, 0, 'nothing of it left on A');
    assert.ok(second.connected, 'the newer connection, on B, stays');
  } finally {
    await second.endAsync();
  }
});

test('cluster/a retained message kept on node A is given to a later subscriber on node B, and its clearing too', {
  skip,
}, async () => {
  const dev = await connect(a.mqttsUrl, sensor, { ca: a.rootFile });
  const svc = await connect(b.endpoints['mqtt+tls']!, service, { ca: a.rootFile });
  /** Subscribes on B until a retained message with `marker` arrives (replication is asynchronous); returns what arrived in that subscription. */
  const retainedAtB = async (marker: string): Promise<string[]> => {
    for (let i = 0; i < 40; i++) {
      const got: string[] = [];
      const on = (_t: string, payload: Buffer, packet: { retain?: boolean }) => {
        if (packet.retain === true) got.push(payload.toString());
      };
      svc.on('message', on);
      await svc.subscribeAsync('devices/c-sensor/#', { qos: 1 });
      await new Promise((r) => setTimeout(r, 250));
      await svc.unsubscribeAsync('devices/c-sensor/#');
      svc.off('message', on);
      if (got.includes(marker)) return got;
    }
    throw new Error(`no retained ${marker} at node B`);
  };
  try {
    await dev.publishAsync('devices/c-sensor/state', 'r1', { qos: 1, retain: true });
    assert.deepEqual(await retainedAtB('r1'), ['r1']);
    // Cleared on A (empty payload), then a marker: once B has the marker it has applied the clearing.
    await dev.publishAsync('devices/c-sensor/state', '', { qos: 1, retain: true });
    await dev.publishAsync('devices/c-sensor/marker', 'm1', { qos: 1, retain: true });
    assert.deepEqual(await retainedAtB('m1'), ['m1']);
  } finally {
    await dev.endAsync();
    await svc.endAsync();
  }
});

test('cluster/a node that joins later is given the retained messages the others hold before it serves anyone', {
  skip,
}, async () => {
  await retainOnA([['devices/c-sensor/late', 'before-c']]);
  // C starts after: by the time it listens, it holds what A (or B) held — one subscription, no
  // waiting for replication. The earlier test left these two retained (and cleared devices/c-sensor/state).
  const c = await spawnService('gateway', a.config.dataDir, await nats.node('c'));
  try {
    assert.deepEqual(await retainedOn(c.endpoints['mqtt+tls']!), [
      'devices/c-sensor/late=before-c',
      'devices/c-sensor/marker=m1',
    ]);
  } finally {
    await c.stop();
  }
});

test('cluster/a node that was away forgets the retained messages cleared while it was gone', { skip }, async () => {
  // D holds a retained message, stops; while it is away A clears that one and keeps a new one.
  // When D comes back, its own store still has the old one: the cluster's set replaces it.
  await retainOnA([['devices/c-sensor/away', 'stale']]);
  let d = await spawnService('gateway', a.config.dataDir, await nats.node('d'));
  try {
    assert.ok(
      (await retainedOn(d.endpoints['mqtt+tls']!)).includes('devices/c-sensor/away=stale'),
      'D was given the retained message when it joined',
    );
  } finally {
    await d.stop();
  }
  await retainOnA([
    ['devices/c-sensor/away', ''],
    ['devices/c-sensor/while-away', 'new'],
  ]);
  const atA = await retainedOn(a.mqttsUrl);
  d = await spawnService('gateway', a.config.dataDir, await nats.node('d'));
  try {
    const atD = await retainedOn(d.endpoints['mqtt+tls']!);
    assert.ok(
      !atD.includes('devices/c-sensor/away=stale'),
      `D still serves the cleared message: ${JSON.stringify(atD)}`,
    );
    assert.deepEqual(atD, atA, 'D holds what the cluster holds');
    assert.ok(atD.includes('devices/c-sensor/while-away=new'));
  } finally {
    await d.stop();
  }
});

test("cluster/the console on node A counts node B's sessions in its overview, shows a device's session on B and kicks it there", {
  skip,
}, async () => {
  const { https } = await import('../harness/https.ts');
  const { readFileSync } = await import('node:fs');
  const operator = await enrollDevice(a.registry, a.ca, a.dir, { id: 'c-ops', type: 'operator' });
  const ca = readFileSync(a.rootFile);
  const origin = `https://127.0.0.1:${a.gateway.ports.console}`;
  const dev = await connect(b.endpoints['mqtt+tls']!, sensor, { ca: a.rootFile });
  const cut = closed(dev, 20_000);
  try {
    const page = await https(`${origin}/devices/c-sensor`, { ca, cred: operator });
    assert.equal(page.status, 200);
    assert.match(page.body, /<td>b<\/td><td>mqtts<\/td>/, 'the session, on node b');
    // The overview on A counts the sensor connected to B: the figures of both nodes, summed.
    const overview = await https(`${origin}/`, { ca, cred: operator });
    assert.equal(overview.status, 200);
    assert.match(overview.body, /Cluster: the figures of 2 nodes \(a, b\), summed/);
    assert.match(
      overview.body,
      /<td>sensor<\/td><td>mqtts<\/td><td class="num">1<\/td>/,
      "the sensor on node b, in node a's overview",
    );
    const confirm = await https(`${origin}/confirm?action=kick&id=c-sensor`, { ca, cred: operator });
    const csrf = /name="csrf" value="([^"]+)"/.exec(confirm.body)?.[1];
    assert.ok(csrf !== undefined);
    const r = await https(`${origin}/act`, {
      ca,
      cred: operator,
      method: 'POST',
      body: new URLSearchParams({ action: 'kick', id: 'c-sensor', csrf }).toString(),
      headers: { 'content-type': 'application/x-www-form-urlencoded', origin },
    });
    assert.equal(r.status, 200, r.body);
    assert.match(r.body, /1 live session of c-sensor closed \(every node that answered\)/);
    await cut;
  } finally {
    await dev.endAsync(true).catch(() => undefined);
  }
});

test('cluster/the console on node A lists a revoked device still connecting to node B, refusals of both nodes summed', {
  skip,
}, async () => {
  const { https } = await import('../harness/https.ts');
  const { readFileSync } = await import('node:fs');
  const operator = await enrollDevice(a.registry, a.ca, a.dir, { id: 'c-ops2', type: 'operator' });
  const gone = await enrollDevice(a.registry, a.ca, a.dir, { id: 'c-gone' });
  a.registry.revokeDevice(gone.deviceId, 1, 'test');
  /** Connects until the node refuses the revoked device (the status feed reaches each node on its own). */
  const refusedBy = (url: string) =>
    until(`${url} refusing the revoked device`, () =>
      connect(url, gone, { ca: a.rootFile }).then(
        async (c) => {
          await c.endAsync(true);
          return false;
        },
        () => true,
      ),
    );
  await refusedBy(b.endpoints['mqtt+tls']!);
  const ca = readFileSync(a.rootFile);
  const origin = `https://127.0.0.1:${a.gateway.ports.console}`;
  const findings = async () => {
    const page = await https(`${origin}/certificates?view=findings`, { ca, cred: operator });
    assert.equal(page.status, 200, page.body);
    return page.body;
  };
  // Refused only by B: A's console shows it, from B's book.
  let body = await findings();
  assert.match(body, /every node that answered \(a, b\)/);
  assert.match(
    body,
    /<a href="\/devices\/c-gone">c-gone<\/a><\/td>\s*<td><code>CERT_REVOKED<\/code> × 1/,
    "B's refusal, on A's page",
  );
  // Refused by A too: the two books summed.
  await refusedBy(a.mqttsUrl);
  body = await findings();
  assert.match(
    body,
    /<a href="\/devices\/c-gone">c-gone<\/a><\/td>\s*<td><code>CERT_REVOKED<\/code> × 2/,
    "A's and B's refusals, summed",
  );
});

test('cluster/the retained snapshot crosses in chunks: 1,000 messages of 1 KiB arrive whole, from one node only', {
  skip,
}, async () => {
  const pino = (await import('pino')).default;
  const { NatsBus } = await import('../gateway/cluster/bus.ts');
  const { Message } = await import('../gateway/mqtt/session.ts');
  const quiet = pino({ level: 'silent' });
  const events = {
    message: () => undefined,
    link: () => undefined,
    session: () => undefined,
    retained: () => undefined,
    shared: () => undefined,
  };
  const own = await startNats(); // a NATS of its own: nodes A and B (holding retained messages too) must not answer
  const limits = { retainedTotal: 100_000, retainedBytesTotal: 256 * 1024 * 1024 };
  const link = { servers: own.url };
  const holders = await Promise.all(['snap-1', 'snap-2'].map((n) => NatsBus.connect(link, n, quiet, events, limits)));
  const joiner = await NatsBus.connect(link, 'snap-joiner', quiet, events, limits);
  try {
    const held = Array.from(
      { length: 1_000 },
      (_, i) => new Message(`devices/s-${i % 50}/state/${i}`, Buffer.alloc(1024, i % 251), 1, true, `s-${i % 50}`),
    );
    await Promise.all(holders.map((h) => h.serveRetained(() => held)));
    const result = await joiner.fetchRetained();
    const got = new Map(result.messages.map((m) => [m.topic, m.payload]));
    assert.equal(result.complete, true);
    assert.equal(result.messages.length, 1_000, `each message once: one node streamed (${result.node})`);
    assert.ok(result.node === 'snap-1' || result.node === 'snap-2');
    for (const m of held) assert.ok(got.get(m.topic)?.equals(m.payload), m.topic);
  } finally {
    await Promise.all([...holders, joiner].map((b) => b.close()));
    await own.stop();
  }
});

test('cluster/a shared group with members on two nodes takes each message once, cluster-wide, from publishers on both', {
  skip,
}, async () => {
  const second = await enrollDevice(a.registry, a.ca, a.dir, { id: 'c-svc-2', type: 'service' });
  const sensor2 = await enrollDevice(a.registry, a.ca, a.dir, { id: 'c-sensor-2' });
  const onA = await connect(a.mqttsUrl, service, { ca: a.rootFile, protocolVersion: 5 });
  const onB = await connect(b.endpoints['mqtt+tls']!, second, { ca: a.rootFile, protocolVersion: 5 });
  const pubA = await connect(a.mqttsUrl, sensor, { ca: a.rootFile });
  const pubB = await connect(b.endpoints['mqtt+tls']!, sensor2, { ca: a.rootFile });
  try {
    const got = [collect(onA, 'devices/c-sensor'), collect(onB, 'devices/c-sensor')];
    for (const m of [onA, onB]) await m.subscribeAsync('$share/backend/devices/+/shared', { qos: 1 });
    // Both nodes' queue subscriptions must have reached NATS: probe until each member has had one.
    let n = 0;
    await until(
      'both members reachable',
      async () => {
        await pubA.publishAsync('devices/c-sensor/shared', `probe-${n++}`, { qos: 1 });
        return got.every((g) => g.some((p) => p.startsWith('probe')));
      },
      30_000,
      50,
    );
    const probes = got.flat().length;
    const sends: Promise<unknown>[] = [];
    for (let i = 0; i < 150; i++) {
      sends.push(pubA.publishAsync('devices/c-sensor/shared', `s-${i}`, { qos: 1 }));
      sends.push(pubB.publishAsync('devices/c-sensor-2/shared', `s-${150 + i}`, { qos: 1 }));
    }
    await Promise.all(sends);
    await until('all 300 delivered to the group', () => got.flat().filter((p) => p.startsWith('s-')).length >= 300);
    const seen = got.flat().filter((p) => p.startsWith('s-'));
    assert.equal(seen.length, 300, 'each once, cluster-wide');
    assert.equal(new Set(seen).size, 300);
    const split = got.map((g) => g.filter((p) => p.startsWith('s-')).length);
    assert.ok(
      split.every((k) => k > 0),
      `both nodes' members took a share (${split}; ${probes} probes)`,
    );
  } finally {
    await Promise.all([onA, onB, pubA, pubB].map((c) => c.endAsync()));
  }
});

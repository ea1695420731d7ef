// Issue #12: three gateway nodes (separate processes) and one provisioning service behind
// Debian's HAProxy (`mode tcp`, round robin, `send-proxy-v2`, health checks on each node's
// `/healthz`; issue #27), on one PostgreSQL registry (started by the test: initdb in a temp dir) and
// three nats-servers (JetStream, replicas 3: the cluster's default `cluster.sessions: jetstream`;
// persistent sessions across nodes are test/cluster-jetstream's and the crash test's). A device enrolled through provisioning connects through the proxy to any node; a publish
// on one node reaches a service on another; `connections` and `kick` on one node see and act on
// all three; a revocation cuts the device on whichever node holds it (latencies printed; bench
// figures belong to `npm run bench:cluster`); kill -9 of a node: its devices reconnect through
// the proxy to the others; PostgreSQL restarted: nothing revoked around it is missed, new
// connections are refused with the registry's code while it is down, live sessions go on; every NATS
// server restarted: the gap is in every node's metrics and fan-out resumes; a second provisioning
// instance: the same token sent to both at once issues one certificate.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { MqttClient } from 'mqtt';
import pg from 'pg';
import { createDatabase, pgSkip, sharedPostgres, stopSharedPostgres } from '../harness/engines.ts';
import { type Haproxy, haproxyAvailable, startHaproxy } from '../harness/haproxy.ts';
import { errorCodeOf, https } from '../harness/https.ts';
import { closed, connect, until, withTimeout } from '../harness/mqtt.ts';
import { type NatsCluster, natsAvailable, nodeIdentity, startNatsCluster } from '../harness/nats.ts';
import { type Credential, csrPem, enrollDevice, keyPem, newKeys } from '../harness/pki.ts';
import type { PostgresServer } from '../harness/postgres.ts';
import { fileScope, fleetgate } from '../harness/run.ts';
import { benchFleet, type GatewayProcess, spawnService } from '../harness/services.ts';
import { RegistryWriter } from '../provisioning/registry/writer.ts';

if (!haproxyAvailable() && process.env.CI === 'true')
  throw new Error("haproxy is missing: .ci/run installs Debian's haproxy for the cluster tests");
if (!natsAvailable() && process.env.CI === 'true')
  throw new Error("nats-server is missing: .ci/run installs Debian's nats-server for the cluster tests");
const skip = !natsAvailable()
  ? 'no nats-server (apt-get install nats-server)'
  : !haproxyAvailable()
    ? 'no haproxy (apt-get install haproxy)'
    : pgSkip;

const scope = fileScope(after);
let nats: NatsCluster;
let postgres: PostgresServer;
let registryUrl: string;
let fleet: Awaited<ReturnType<typeof benchFleet>>;
const nodes: GatewayProcess[] = [];
let provisioning: GatewayProcess;
let proxy: Haproxy;
let ca: Buffer;
let operator: Credential;

/** The registry URL a member of `role` named `name` uses: mTLS with its own node certificate. */
async function roleUrl(role: 'gateway' | 'provisioning' | 'operator', name: string): Promise<string> {
  const id = await nodeIdentity(fleet.config.dataDir, role, name);
  const files = { cert: id.FLEETGATE_NODE_CERT!, key: id.FLEETGATE_NODE_KEY!, root: fleet.paths.rootCert };
  return postgres.roleUrl(role, new URL(registryUrl).pathname.slice(1), files);
}

/** The nodes not killed by the kill -9 test. */
const living = () => nodes.filter((n) => n.child.exitCode === null && n.child.signalCode === null);
const mqttPort = (n: GatewayProcess) => Number(new URL(n.endpoints['mqtt+tls']!.replace('mqtts', 'https')).port);

before(async () => {
  if (skip !== false) return;
  postgres = await sharedPostgres();
  scope.after(stopSharedPostgres);
  registryUrl = await createDatabase(postgres);
  // This process plays the CLI and the factory: its own writer on the same PostgreSQL (the
  // superuser, owner of the schema, over loopback).
  fleet = await benchFleet(registryUrl);
  scope.after(() => fleet.cleanup());
  scope.after(() => fleet.registry.close());
  // The links as production runs them: PostgreSQL over TLS with certificate authentication and
  // the three roles; NATS over mutual TLS with verify_and_map; each node its own certificate.
  await postgres.enableTls(fleet.config.dataDir);
  new RegistryWriter(registryUrl).close(); // the owner applies the roles' GRANTs, as `fleetgate init` does
  nats = await startNatsCluster({ tls: { dataDir: fleet.config.dataDir, gateways: ['n1', 'n2', 'n3'] } });
  scope.after(() => nats.stop());

  ca = readFileSync(fleet.paths.rootCert);
  operator = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'ops-cluster', type: 'operator' });
  for (const name of ['n1', 'n2', 'n3']) {
    // An idle HTTPS keep-alive connection stays open a minute (default 5 s): what closes it in the revocation test must be the revocation.
    // A registry question may take 10 s (default 500 ms) before the connection is refused: on a busy 2-core machine running three
    // nodes, PostgreSQL, NATS and another test run, an answer can be late; no test here is about that bound (a stopped
    // PostgreSQL is refused at once: its connection is refused).
    const node = await spawnService('gateway', fleet.config.dataDir, {
      ...(await nats.node(name)),
      FLEETGATE_REGISTRY: await roleUrl('gateway', name),
      FLEETGATE_HTTPS_KEEPALIVE_TIMEOUT: '60s',
      FLEETGATE_PROXY_PROTOCOL_FROM: '127.0.0.2',
      FLEETGATE_REGISTRY_TIMEOUT: '10s',
    });
    nodes.push(node);
    scope.after(() => node.stop());
  }
  provisioning = await spawnService('provision', fleet.config.dataDir, {
    FLEETGATE_REGISTRY: await roleUrl('provisioning', 'p1'),
  });
  scope.after(() => provisioning.stop());
  // The balancer connects from 127.0.0.2, the address every node trusts for PROXY headers.
  proxy = await startHaproxy([
    {
      proxy: 'v2',
      upstreams: nodes.map(mqttPort),
      source: '127.0.0.2',
      check: { path: '/healthz', ports: nodes.map((n) => Number(new URL(n.endpoints.admin!).port)) },
    },
  ]);
  scope.after(() => proxy.stop());
});

/** A device added with a one-time token and enrolled through the provisioning service (key made here, the CSR sent). */
async function enrollThroughProvisioning(id: string): Promise<Credential> {
  const token = fleet.registry.addDevice({ id, type: 'sensor' }, 'test', { tokenTtlMs: 600_000 }).token!.token;
  const keys = await newKeys();
  const r = await https(`${provisioning.endpoints.provision}/v1/enroll`, {
    ca,
    body: JSON.stringify({ token, csr: await csrPem(keys, id) }),
  });
  assert.equal(r.status, 201, r.body);
  const body = r.json<{ certificate: string; chain: string; serial: string; fingerprint: string }>();
  return {
    deviceId: id,
    certPem: body.certificate + body.chain,
    keyPem: await keyPem(keys),
    certFile: '',
    keyFile: '',
    serial: body.serial,
    fingerprint: body.fingerprint,
    spki: '',
    keys,
  };
}

const viaProxy = (cred: Credential) =>
  connect(`mqtts://127.0.0.1:${proxy.ports[0]}`, cred, { ca: fleet.paths.rootCert });
/** Straight to one node, past the proxy. */
const direct = (n: GatewayProcess, cred: Credential) =>
  connect(`mqtts://127.0.0.1:${mqttPort(n)}`, cred, { ca: fleet.paths.rootCert });

/** The cluster's view of live sessions, asked of one node's admin API. */
async function connections(
  node: GatewayProcess,
): Promise<{ connections: { deviceId: string; node: string; remoteAddress: string }[]; nodes: string[] }> {
  const r = await https(`${node.endpoints.admin}/v1/connections`, { ca, cred: operator });
  assert.equal(r.status, 200, r.body);
  return r.json();
}

test('cluster/devices enrolled through provisioning connect through the proxy to every node; one node lists and kicks across the cluster', {
  skip,
}, async () => {
  const creds = await Promise.all(['cl-1', 'cl-2', 'cl-3'].map(enrollThroughProvisioning));
  const clients: MqttClient[] = [];
  for (const c of creds) clients.push(await viaProxy(c));
  try {
    const view = await connections(nodes[0]!);
    assert.deepEqual(view.nodes, ['n1', 'n2', 'n3'], 'every node answered');
    const where = new Map(
      view.connections.filter((c) => c.deviceId.startsWith('cl-')).map((c) => [c.deviceId, c.node]),
    );
    assert.equal(where.size, 3);
    // Through HAProxy's PROXY header every node sees the device's address, not the balancer's (127.0.0.2).
    for (const c of view.connections.filter((c) => c.deviceId.startsWith('cl-')))
      assert.equal(c.remoteAddress, '127.0.0.1', `${c.deviceId} on ${c.node}`);
    assert.equal(
      new Set(where.values()).size,
      3,
      `round robin put the three on three nodes: ${JSON.stringify([...where])}`,
    );

    // Kick, asked of node 1, for a device held by another node.
    const held = [...where].find(([, node]) => node !== 'n1')!;
    const cut = closed(clients[creds.findIndex((c) => c.deviceId === held[0])]!);
    const r = await https(`${nodes[0]!.endpoints.admin}/v1/connections/${held[0]}`, {
      ca,
      cred: operator,
      method: 'DELETE',
    });
    assert.equal(r.status, 200, r.body);
    const kicked = r.json<{ closed: number; nodes: { node: string; closed: number }[] }>();
    assert.equal(kicked.closed, 1);
    assert.equal(kicked.nodes.find((n) => n.node === held[1])?.closed, 1);
    await cut;
  } finally {
    for (const c of clients) await c.endAsync(true).catch(() => undefined);
  }
});

test('cluster/a publish on any node reaches a service on another: QoS 0 and 1, nothing lost', { skip }, async () => {
  const service = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'x-svc', type: 'service' });
  const sensors = await Promise.all(['x-1', 'x-2', 'x-3'].map(enrollThroughProvisioning));
  // Straight to a node each, so the service is on n1 and the publishers on n1, n2 and n3.
  const sub = await direct(nodes[0]!, service);
  const pubs = await Promise.all(sensors.map((c, i) => direct(nodes[i]!, c)));
  try {
    await sub.subscribeAsync('devices/+/telemetry/#', { qos: 1 });
    const got = new Map<string, number>();
    const per = 100;
    const all = new Promise<void>((resolve) => {
      sub.on('message', (topic) => {
        got.set(topic, (got.get(topic) ?? 0) + 1);
        if ([...got.values()].reduce((a, b) => a + b, 0) === sensors.length * per * 2) resolve();
      });
    });
    // The subscription is known on every node once a probe from each node arrives.
    await withTimeout(
      (async () => {
        for (;;) {
          const seen = new Set<string>();
          const probe = new Promise<void>((resolve) => {
            const on = (topic: string) => {
              if (topic.endsWith('/probe')) seen.add(topic);
              if (seen.size === pubs.length) {
                sub.off('message', on);
                resolve();
              }
            };
            sub.on('message', on);
            setTimeout(() => {
              sub.off('message', on);
              resolve();
            }, 500).unref();
          });
          await Promise.all(
            pubs.map((p, i) => p.publishAsync(`devices/${sensors[i]!.deviceId}/telemetry/probe`, 'p', { qos: 1 })),
          );
          await probe;
          if (seen.size === pubs.length) return;
        }
      })(),
      30_000,
      'every node knowing the subscription',
    );
    got.clear();
    await Promise.all(
      pubs.map(async (p, i) => {
        for (let k = 0; k < per; k++) {
          p.publish(`devices/${sensors[i]!.deviceId}/telemetry/q0`, String(k), { qos: 0 });
          await p.publishAsync(`devices/${sensors[i]!.deviceId}/telemetry/q1`, String(k), { qos: 1 });
        }
      }),
    );
    await withTimeout(all, 30_000, `every message (got ${JSON.stringify([...got])})`);
    for (const c of sensors) {
      assert.equal(got.get(`devices/${c.deviceId}/telemetry/q0`), per, `QoS 0 from ${c.deviceId}`);
      assert.equal(got.get(`devices/${c.deviceId}/telemetry/q1`), per, `QoS 1 from ${c.deviceId}`);
    }
  } finally {
    for (const c of [sub, ...pubs]) await c.endAsync(true).catch(() => undefined);
  }
});

test('cluster/a revocation cuts the device on whichever node holds it, and every node refuses it afterwards', {
  skip,
}, async () => {
  const latencies: number[] = [];
  for (let i = 0; i <= 30; i++) {
    const cred = await enrollThroughProvisioning(`rv-${i}`);
    const client = await viaProxy(cred);
    const cut = closed(client, 30_000);
    const started = Date.now();
    if (i === 0) {
      // The first holds live sessions on all three nodes — MQTT on one, HTTPS keep-alive on each —
      // and is revoked through the CLI itself, on the same PostgreSQL (its process start is in this
      // latency, not in the figures): every one of them is cut.
      const agents = nodes.map(
        () => new Agent({ keepAlive: true, maxSockets: 1, ca, cert: cred.certPem, key: cred.keyPem }),
      );
      // Each resolves, once its request is answered, to the promise of its connection's close (wrapped: a promise resolved with a promise would wait for it).
      const httpsCuts = await Promise.all(
        nodes.map(
          (n, k) =>
            new Promise<{ closed: Promise<void> }>((resolve, reject) => {
              request(`${n.endpoints.https}/v1/whoami`, { agent: agents[k], servername: 'localhost' }, (res) => {
                const socket = res.socket; // kept by the agent for the next request once this one ends
                const closed = new Promise<void>((r) => socket.once('close', () => r()));
                res.resume();
                res.on('end', () => {
                  if (res.statusCode !== 200) reject(new Error(`whoami on ${n.endpoints.https}: ${res.statusCode}`));
                  else resolve({ closed: withTimeout(closed, 30_000, 'an HTTPS keep-alive connection to be cut') });
                });
              })
                .on('error', reject)
                .end();
            }),
        ),
      );
      const r = await fleetgate([
        'device',
        'revoke',
        cred.deviceId,
        '--reason',
        'keyCompromise',
        '--json',
        '--data',
        fleet.config.dataDir,
        '--registry',
        registryUrl,
      ]);
      assert.equal(r.code, 0, r.stderr);
      await cut;
      await Promise.all(httpsCuts.map((h) => h.closed));
      for (const a of agents) a.destroy();
      // Cut by the revocation, not closed idle: each node wrote its own audit row for its HTTPS connection.
      await until(
        "the three nodes' audit rows for the HTTPS cuts and the MQTT one",
        () => {
          const rows = fleet.registry
            .listAudit({ device: cred.deviceId })
            .filter((a) => a.action === 'session.disconnect' && a.detail.reason === 'disconnected by revocation');
          return (
            rows.filter((a) => a.detail.transport === 'https').length === 3 &&
            rows.some((a) => a.detail.transport !== 'https')
          );
        },
        30_000,
        100,
      );
      console.log(
        `the device revoked through the CLI: MQTT and three HTTPS connections cut, each audited by its node, ${Date.now() - started} ms from the start (three requests and the CLI process included)`,
      );
      // Refused by every node: three attempts through the round robin land on three different nodes.
      for (let k = 0; k < 3; k++)
        await assert.rejects(viaProxy(cred), (e: { code?: number }) => e.code === 5, 'CONNACK 5: not authorized');
      continue;
    }
    fleet.registry.revokeDevice(cred.deviceId, 1, 'test'); // another process than the nodes, as the CLI is
    await cut;
    latencies.push(Date.now() - started);
  }
  latencies.sort((x, y) => x - y);
  console.log(
    `revoke → cut over 30 revocations, across 3 nodes: p50 ${latencies[14]} ms, p99 ${latencies[29]} ms (measured, not asserted: npm run bench:cluster)`,
  );
});

test('cluster/kill -9 of a node: its devices reconnect through the proxy to the others', { skip }, async () => {
  const creds = await Promise.all(['k-1', 'k-2', 'k-3'].map(enrollThroughProvisioning));
  const clients: MqttClient[] = [];
  for (const c of creds) clients.push(await viaProxy(c));
  try {
    const view = await connections(nodes[0]!);
    const victimNode = 'n3';
    const victim = view.connections.find((c) => c.deviceId.startsWith('k-') && c.node === victimNode);
    assert.ok(victim !== undefined, `a k- device is on ${victimNode}: ${JSON.stringify(view.connections)}`);
    const index = creds.findIndex((c) => c.deviceId === victim.deviceId);
    const lost = closed(clients[index]!, 30_000);
    nodes[2]!.child.kill('SIGKILL');
    await lost;
    // HAProxy finds n3 refusing (and its health check failing) and hands the connection to a living
    // node; until its check has counted n3 out (3 × 300 ms) a connection may still meet the dead
    // node and be closed — the device tries again, as devices do.
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        clients[index] = await viaProxy(creds[index]!);
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    const after = await connections(nodes[0]!);
    assert.deepEqual(after.nodes, ['n1', 'n2'], 'the dead node no longer answers');
    const now = after.connections.find((c) => c.deviceId === victim.deviceId);
    assert.ok(now !== undefined && now.node !== victimNode, `reconnected elsewhere: ${JSON.stringify(now)}`);
    assert.equal(
      after.connections.filter((c) => c.deviceId.startsWith('k-')).length,
      3,
      'all three devices connected again',
    );
  } finally {
    for (const c of clients) await c.endAsync(true).catch(() => undefined);
  }
});

// The CLI path too: `fleetgate connections` on one node lists every node's sessions.
test('cluster/fleetgate connections --json lists the sessions of every node', { skip }, async () => {
  const cred = await enrollThroughProvisioning('cli-1');
  const client = await viaProxy(cred);
  try {
    const r = await fleetgate([
      'connections',
      '--json',
      '--data',
      fleet.config.dataDir,
      '--registry',
      registryUrl,
      '--admin',
      nodes[1]!.endpoints.admin!,
    ]);
    assert.equal(r.code, 0, r.stderr);
    const rows = JSON.parse(r.stdout) as { deviceId: string; node: string }[];
    assert.ok(
      rows.some((row) => row.deviceId === 'cli-1' && typeof row.node === 'string'),
      r.stdout,
    );
  } finally {
    await client.endAsync();
  }
});

test('cluster/PostgreSQL restarted: no revocation around it is missed; while down, new connections are refused with the registry code, /healthz says so, and live sessions go on', {
  skip,
}, async () => {
  const [before1, live, during, after1, newcomer] = await Promise.all(
    ['pg-a', 'pg-b', 'pg-c', 'pg-d', 'pg-e'].map(enrollThroughProvisioning),
  );
  const clients = await Promise.all([before1!, live!, during!, after1!].map(viaProxy));
  const [cBefore, cLive, cDuring, cAfter] = clients as [MqttClient, MqttClient, MqttClient, MqttClient];
  try {
    // Revoked just as PostgreSQL goes down: the node holding it reads it now or when it is back.
    const cutBefore = closed(cBefore, 60_000);
    fleet.registry.revokeDevice(before1!.deviceId, 1, 'test');
    await postgres.stop();
    let restarted = false;
    try {
      // While down: a device never seen is refused by every node, CONNACK 3 (the registry's code)…
      for (const n of living()) {
        await assert.rejects(
          direct(n, newcomer!),
          (e: { code?: number }) => e.code === 3,
          'CONNACK 3: registry unavailable',
        );
      }
      // …and the balancer, whose health checks read /healthz (503 now), has taken every node out
      // of rotation: a new connection through it gets no node at all.
      await until(
        'HAProxy stops handing out nodes',
        async () => {
          try {
            (await viaProxy(newcomer!)).end(true);
            return false;
          } catch (e) {
            return (e as { code?: number }).code !== 3;
          }
        },
        30_000,
        200,
      );
      // Live sessions go on: a QoS 1 publish is acknowledged.
      await withTimeout(
        cLive.publishAsync(`devices/${live!.deviceId}/telemetry/t`, 'still here', { qos: 1 }),
        10_000,
        'PUBACK while PostgreSQL is down',
      );
      assert.ok(cDuring.connected && cAfter.connected);
      // Every living node says so in /healthz (a probe takes it out of the balancer's rotation for new connections).
      for (const n of living()) {
        const h = await https(`${n.endpoints.admin}/healthz`, { ca });
        assert.equal(h.status, 503, h.body);
        assert.equal(errorCodeOf(h), 'REGISTRY_UNAVAILABLE');
      }
      await postgres.start();
      restarted = true;
    } finally {
      if (!restarted) await postgres.start();
    }
    await cutBefore;
    // Revoked right after the restart (the writer reconnects on its own): cut too.
    const cutAfter = closed(cAfter, 60_000);
    fleet.registry.revokeDevice(after1!.deviceId, 1, 'test');
    await cutAfter;
    assert.ok(cLive.connected && cDuring.connected, 'the others stayed connected throughout');
    for (const n of living()) {
      await until(
        '/healthz back to 200',
        async () => (await https(`${n.endpoints.admin}/healthz`, { ca })).status === 200,
        30_000,
        200,
      );
    }
    // And new connections are admitted again once every node reads the registry.
    const deadline = Date.now() + 30_000;
    let admitted: MqttClient | undefined;
    while (admitted === undefined) {
      try {
        admitted = await viaProxy(newcomer!);
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    await admitted.endAsync();
  } finally {
    for (const c of clients) await c.endAsync(true).catch(() => undefined);
  }
});

test("cluster/every NATS server restarted mid-run: the gap is in every node's metrics, and fan-out between nodes resumes", {
  skip,
}, async () => {
  // n3 was killed above: the service on n1, the publisher on n2.
  const [svcCred, pubCred] = await Promise.all([
    enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'nr-svc', type: 'service' }),
    enrollThroughProvisioning('nr-1'),
  ]);
  const svc = await direct(nodes[0]!, svcCred!);
  const pub = await direct(nodes[1]!, pubCred!);
  const metrics = async (n: GatewayProcess) => (await https(`${n.endpoints.admin}/metrics`, { ca })).body;
  const got: string[] = [];
  svc.on('message', (_t, payload) => got.push(payload.toString()));
  /** Publishes until one arrives on the other node (a subscription crosses NATS asynchronously). */
  const crossed = async (tag: string) =>
    withTimeout(
      (async () => {
        for (let i = 0; ; i++) {
          await pub.publishAsync(`devices/nr-1/telemetry/t`, `${tag}-${i}`, { qos: 1 });
          await new Promise((r) => setTimeout(r, 100));
          if (got.some((g) => g.startsWith(`${tag}-`))) return;
        }
      })(),
      30_000,
      `a message across nodes (${tag})`,
    );
  try {
    await svc.subscribeAsync('devices/nr-1/telemetry/#', { qos: 1 });
    await crossed('before');
    await nats.stop();
    // Every living node sees the link down (all three servers are).
    for (const n of nodes.slice(0, 2)) {
      await until('link_up 0', async () => /fleetgate_cluster_link_up 0/.test(await metrics(n)), 30_000, 100);
    }
    for (let i = 0; i < 5; i++) await pub.publishAsync('devices/nr-1/telemetry/t', `gap-${i}`, { qos: 1 }); // acknowledged by n2, not delivered across
    const lost = Number(
      /fleetgate_cluster_messages_total\{direction="lost"\} (\d+)/.exec(await metrics(nodes[1]!))?.[1] ?? 0,
    );
    assert.ok(lost >= 5, `n2 counts what it could not send across: ${lost}`);
    await Promise.all(nats.servers.map((server) => server.start()));
    await crossed('after'); // the nodes reconnected and subscribed again by themselves
    for (const n of nodes.slice(0, 2)) assert.match(await metrics(n), /fleetgate_cluster_link_up 1/);
  } finally {
    await svc.endAsync(true).catch(() => undefined);
    await pub.endAsync(true).catch(() => undefined);
  }
});

test("cluster/a node's LISTEN connection killed: revocations still reach it, and it listens again by itself", {
  skip,
}, async () => {
  const admin = new pg.Client({ connectionString: registryUrl });
  await admin.connect();
  const listeners = async () =>
    Number(
      (
        await admin.query(
          `SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'fleetgate-feed' AND query ILIKE 'LISTEN%'`,
        )
      ).rows[0].n,
    );
  try {
    await until('every living node listening', async () => (await listeners()) >= living().length, 30_000, 100);
    await admin.query(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'fleetgate-feed'`,
    );
    // Revoked while nobody listens: the nodes poll the feed until they listen again.
    const cred = await enrollThroughProvisioning('ls-1');
    const client = await viaProxy(cred);
    const cut = closed(client, 30_000);
    fleet.registry.revokeDevice(cred.deviceId, 1, 'test');
    await cut;
    await until('every living node listening again', async () => (await listeners()) >= living().length, 30_000, 100);
  } finally {
    await admin.end();
  }
});

test('cluster/a flood of status notifications from any role that can connect makes a few feed reads, not one each', {
  skip,
}, async () => {
  const node = living()[0]!;
  const reads = async () =>
    Number(
      /fleetgate_registry_feed_reads_total (\d+)/.exec(
        (await https(`${node.endpoints.admin}/metrics`, { ca })).body,
      )?.[1] ?? Number.NaN,
    );
  const admin = new pg.Client({ connectionString: registryUrl });
  await admin.connect();
  try {
    const before = await reads();
    assert.ok(Number.isFinite(before), 'the counter is exported');
    // 5,000 doorbells in one statement: each is delivered (distinct payloads), none is coalesced by PostgreSQL.
    await admin.query(`SELECT pg_notify('fleetgate_status', g::text) FROM generate_series(1, 5000) g`);
    // Then a real revocation must still be read promptly: the doorbell still works after the flood.
    const cred = await enrollThroughProvisioning('flood-1');
    const client = await viaProxy(cred);
    const cut = closed(client, 30_000);
    fleet.registry.revokeDevice(cred.deviceId, 1, 'test');
    await cut;
    const made = (await reads()) - before;
    // Coalesced: at most one read per statusPoll (20 ms) while rung, plus the idle polls; never one per notification.
    assert.ok(made < 1_000, `${made} feed reads for 5,000 notifications`);
    console.log(`# feed reads for 5,000 notifications and one revocation: ${made}`);
  } finally {
    await admin.end();
  }
});

test('cluster/two provisioning instances on one PostgreSQL: the same token sent to both at once issues one certificate', {
  skip,
}, async () => {
  const second = await spawnService('provision', fleet.config.dataDir, {
    FLEETGATE_REGISTRY: await roleUrl('provisioning', 'p2'),
  });
  try {
    const keys = await newKeys();
    const outcomes: number[][] = [];
    for (let i = 0; i < 10; i++) {
      const id = `twice-${i}`;
      const token = fleet.registry.addDevice({ id, type: 'sensor' }, 'test', { tokenTtlMs: 600_000 }).token!.token;
      const body = JSON.stringify({ token, csr: await csrPem(keys, id) });
      const answers = await Promise.all(
        [provisioning, second].map((p) => https(`${p.endpoints.provision}/v1/enroll`, { ca, body })),
      );
      outcomes.push(answers.map((a) => a.status).sort());
      for (const a of answers) if (a.status !== 201) assert.equal(errorCodeOf(a), 'TOKEN_USED', a.body);
      assert.equal(fleet.registry.listCertificates({ deviceId: id }).length, 1, `${id}: one certificate recorded`);
    }
    assert.ok(
      outcomes.every((o) => o.filter((s) => s === 201).length === 1),
      `one 201 per token: ${JSON.stringify(outcomes)}`,
    );
  } finally {
    await second.stop();
  }
});

test('cluster/registry roles: a gateway node may read and append audit rows and nothing else; a device certificate opens no role', {
  skip,
}, async () => {
  const asGateway = new pg.Client({ connectionString: await roleUrl('gateway', 'n1') });
  await asGateway.connect();
  try {
    const who = await asGateway.query('SELECT current_user AS u, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
    assert.deepEqual(who.rows[0], { u: 'fleetgate_gateway', ssl: true }, 'connected over TLS as the gateway role');
    assert.ok((await asGateway.query('SELECT count(*) FROM devices')).rows.length === 1, 'it reads the registry');
    await asGateway.query(
      "INSERT INTO audit (at, actor, action, subject, detail) VALUES (1, 'gateway:n1', 'test.append', NULL, '{}')",
    );
    const denied = async (sql: string) => {
      await assert.rejects(asGateway.query(sql), (e: { code?: string }) => e.code === '42501', sql);
    };
    await denied(
      "INSERT INTO devices (id, type, status, created_at, updated_at) VALUES ('forged', 'sensor', 'active', 1, 1)",
    );
    await denied("UPDATE devices SET status = 'active'");
    await denied('DELETE FROM revocations');
    await denied("UPDATE certificates SET not_after = 0 WHERE serial = 'x'");
    await denied('DELETE FROM denylist');
    await denied("INSERT INTO status_events (at, kind) VALUES (1, 'x')");
    await denied('CREATE TABLE planted (x int)');
  } finally {
    await asGateway.end();
  }
  const asProvisioning = new pg.Client({ connectionString: await roleUrl('provisioning', 'p1') });
  await asProvisioning.connect();
  try {
    await assert.rejects(asProvisioning.query('DROP TABLE audit'), (e: { code?: string }) => e.code === '42501');
  } finally {
    await asProvisioning.end();
  }
  // A device's certificate is from the same CA, but its CN (a device id, no ':') maps to no role.
  const device = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'pg-intruder' });
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-intruder-'));
  try {
    writeFileSync(join(dir, 'd.crt'), device.certPem + fleet.ca.intermediatePem);
    const files = { cert: join(dir, 'd.crt'), key: device.keyFile, root: fleet.paths.rootCert };
    for (const role of ['gateway', 'provisioning', 'operator'] as const) {
      const intruder = new pg.Client({
        connectionString: postgres.roleUrl(role, new URL(registryUrl).pathname.slice(1), files),
      });
      await assert.rejects(
        intruder.connect(),
        /certificate authentication failed|no pg_ident\.conf entry|ident/i,
        role,
      );
      await intruder.end().catch(() => undefined);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

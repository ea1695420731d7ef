// npm run bench:cluster — gateway nodes on NATS beside one node, in the same run (nats-server
// from Debian, started here on a loopback port; every node a process of its own):
//  1. messages/s and gateway CPU per message, QoS 0 and QoS 1, 10 publishers → 1 service:
//     one node; then two nodes with the publishers on node 1 and the service on node 2 (CPU of
//     both nodes counted, NATS's own beside it), over a plain NATS on loopback and over NATS with
//     mutual TLS and verify_and_map (as production runs off loopback); ratios cluster / one node
//     and mTLS / plain (the cost of TLS on the bus)
//  2. revocation → live cut with three nodes, the devices spread over them (p50 / p99)
//  3. QoS 1 to a persistent session (clean session 0): one node keeping it in SQLite (mqtt.db,
//     acknowledged once committed), one node keeping it on JetStream, and publishers on node 1 with
//     the session on node 2 — JetStream on three nats-servers (mTLS routes, replicas 3, file store),
//     CPU of the nodes and of all three servers; then revoke → live cut over three nodes while
//     that traffic runs
// (BENCH_PARTS=3 runs part 3 alone.)
// Registry: a PostgreSQL started here (initdb in a temp dir, fsync and synchronous commit ON, as
// in production), every node and this process on it; without PostgreSQL installed, the shared
// SQLite file (nodes on one host), and the output says which.
// Loopback only; bounded counts.
import { readFileSync } from 'node:fs';
import mqtt, { type MqttClient } from 'mqtt';
import { type NatsServer, natsAvailable, startNats, startNatsCluster } from '../harness/nats.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { postgresBin, startPostgres } from '../harness/postgres.ts';
import {
  benchFleet,
  countArrivals,
  fmt,
  type GatewayProcess,
  percentile,
  procStat,
  publishFromEach,
  spawnService,
} from './lib.ts';

const MESSAGES = Number(process.env.BENCH_MESSAGES ?? 3_000); // per publisher per QoS
const PUBLISHERS = 10;
const REVOCATIONS = Number(process.env.BENCH_REVOCATIONS ?? 60);
const PARTS = process.env.BENCH_PARTS ?? '123';
const log = (s: string) => process.stdout.write(`${s}\n`);

if (!natsAvailable()) {
  log('bench:cluster needs nats-server (Debian: apt-get install nats-server)');
  process.exit(2);
}
const postgres = postgresBin() === undefined ? undefined : await startPostgres({ durable: true });
const fleet = await benchFleet(postgres?.url);
const plainNats = await startNats();
const tlsNats = await startNats({ tls: { dataDir: fleet.config.dataDir, gateways: ['n1', 'n2', 'n3'] } });
const jsNats = PARTS.includes('3')
  ? await startNatsCluster({ tls: { dataDir: fleet.config.dataDir, gateways: ['j1', 'j2', 'j3'] } })
  : undefined;
const registryNote =
  postgres === undefined
    ? 'the shared SQLite file (PostgreSQL is not installed)'
    : 'PostgreSQL (fsync on), LISTEN/NOTIFY feed';
const ca = readFileSync(fleet.paths.rootCert);
const publishers: Credential[] = [];
for (let i = 0; i < PUBLISHERS; i++)
  publishers.push(await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: `bench-${i}` }));
const service = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'bench-svc', type: 'service' });
const victims: Credential[] = [];
for (let i = 0; i < REVOCATIONS; i++)
  victims.push(await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: `victim-${i}` }));
const loadVictims: Credential[] = [];
for (let i = 0; PARTS.includes('3') && i < REVOCATIONS; i++)
  loadVictims.push(await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: `victim-load-${i}` }));
log(
  `fleetgate bench:cluster — node ${process.version}; ${PUBLISHERS}×${MESSAGES} messages per QoS; ${REVOCATIONS} revocations over 3 nodes; registry: ${registryNote}; bus order: ${process.env.BENCH_TLS_FIRST === '1' ? 'mTLS first' : 'plain first'}`,
);

const open = (node: GatewayProcess, cred: Credential, clean = true) =>
  mqtt.connectAsync(
    node.endpoints['mqtt+tls']!,
    {
      ca,
      cert: cred.certPem,
      key: cred.keyPem,
      clientId: cred.deviceId,
      clean,
      protocolVersion: 4,
      reconnectPeriod: 0,
      keepalive: 600,
      servername: 'localhost',
    },
    false,
  );

interface Measured {
  qos: number;
  rate: number;
  cpuUs: number;
  natsUs: number;
  loss: number;
}

/** Publishers on `pubNode` → the service on `subNode`; CPU of `counted` nodes and of the NATS servers. */
async function run(
  pubNode: GatewayProcess,
  subNode: GatewayProcess,
  counted: GatewayProcess[],
  nats: NatsServer[],
  { qosList = [0, 1], clean = true }: { qosList?: (0 | 1)[]; clean?: boolean } = {},
): Promise<Measured[]> {
  const natsCpu = () => nats.reduce((a, s) => a + (s.pid() === undefined ? 0 : procStat(s.pid()!).cpu), 0);
  const sub = await open(subNode, service, clean);
  const pubs = await Promise.all(publishers.map((c) => open(pubNode, c)));
  const results = [];
  for (const qos of qosList) {
    const topic = `q${qos}`;
    await sub.subscribeAsync(`devices/+/${topic}`, { qos });
    // The subscription reaches the publishers' node through NATS: wait for a probe to come back.
    await new Promise<void>((resolve) => {
      const probe = setInterval(() => pubs[0]!.publish(`devices/bench-0/${topic}`, 'probe'), 50);
      sub.once('message', () => {
        clearInterval(probe);
        resolve();
      });
    });
    await new Promise((r) => setTimeout(r, 200));
    sub.removeAllListeners('message');
    const total = PUBLISHERS * MESSAGES;
    const arrivals = countArrivals(sub, total, (_t, payload) => payload.toString() !== 'probe');
    const cpu0 = counted.reduce((a, n) => a + n.cpuSeconds(), 0);
    const nats0 = natsCpu();
    const t0 = performance.now();
    await publishFromEach(pubs, topic, MESSAGES, qos);
    await arrivals.done;
    const seconds = (performance.now() - t0) / 1000;
    results.push({
      qos,
      rate: arrivals.received() / seconds,
      cpuUs: ((counted.reduce((a, n) => a + n.cpuSeconds(), 0) - cpu0) / total) * 1e6,
      natsUs: ((natsCpu() - nats0) / total) * 1e6,
      loss: 1 - arrivals.received() / total,
    });
    sub.removeAllListeners('message');
    await sub.unsubscribeAsync(`devices/+/${topic}`);
  }
  await Promise.all([sub, ...pubs].map((c: MqttClient) => c.endAsync(true)));
  return results;
}

const registryEnv = postgres === undefined ? {} : { FLEETGATE_REGISTRY: postgres.url };
const env = async (nats: Pick<NatsServer, 'node'>, node: string) => ({
  ...(await nats.node(node)),
  FLEETGATE_MQTT_DURABILITY: 'memory',
  // A cut appends an audit row on the registry thread, a PostgreSQL commit with fsync on: on a
  // VM whose fsync takes longer than the 500 ms default, the next admission behind it is refused
  // REGISTRY_UNAVAILABLE (seen this session, on this code and the previous commit alike).
  FLEETGATE_REGISTRY_TIMEOUT: '5s',
  ...registryEnv,
});
fleet.registry.close();
/** Each victim connected to node `i % 3` and revoked by this process: the times until its connection closed, sorted. */
async function revokeEach(three: GatewayProcess[], who: Credential[]): Promise<number[]> {
  const { RegistryWriter } = await import('../provisioning/registry/writer.ts');
  const registry = new RegistryWriter(fleet.paths.registry);
  const cuts: number[] = [];
  try {
    for (const [i, v] of who.entries()) {
      const c = await open(three[i % 3]!, v);
      const closedAt = new Promise<number>((r) => c.once('close', () => r(performance.now())));
      const t0 = performance.now();
      registry.revokeDevice(v.deviceId, 1, 'bench');
      cuts.push((await closedAt) - t0);
    }
  } finally {
    registry.close();
  }
  return cuts.sort((a, b) => a - b);
}

/** Parts 1 and 2: the core-NATS bus, plain and mTLS, and revocation over three nodes. */
async function busParts(): Promise<void> {
  const single = await spawnService('gateway', fleet.config.dataDir, {
    FLEETGATE_MQTT_DURABILITY: 'memory',
    ...registryEnv,
  });
  const one = await run(single, single, [single], [plainNats]);
  await single.stop();

  // BENCH_TLS_FIRST=1 measures the mTLS bus first (to see an order effect on a busy machine).
  const measurePlain = async () => {
    const p1 = await spawnService('gateway', fleet.config.dataDir, await env(plainNats, 'p1'));
    const p2 = await spawnService('gateway', fleet.config.dataDir, await env(plainNats, 'p2'));
    const result = await run(p1, p2, [p1, p2], [plainNats]);
    await Promise.all([p1.stop(), p2.stop()]);
    return result;
  };
  const tlsFirst = process.env.BENCH_TLS_FIRST === '1';
  const plainBefore = tlsFirst ? undefined : await measurePlain();
  const n1 = await spawnService('gateway', fleet.config.dataDir, await env(tlsNats, 'n1'));
  const n2 = await spawnService('gateway', fleet.config.dataDir, await env(tlsNats, 'n2'));
  const mtls = await run(n1, n2, [n1, n2], [tlsNats]);
  const plain = plainBefore ?? (await measurePlain());

  log('');
  log(
    '| work | one node: msgs/s | one node: CPU/msg | bus | 2 nodes (pub on 1, sub on 2): msgs/s | CPU/msg, both nodes | NATS CPU/msg | cluster / one node (CPU) | mTLS / plain (CPU, nodes + NATS) |',
  );
  log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (let i = 0; i < 2; i++) {
    const a = one[i]!;
    for (const [bus, b] of [
      ['plain, loopback', plain[i]!],
      ['mTLS, verify_and_map', mtls[i]!],
    ] as const) {
      const tlsRatio =
        bus === 'plain, loopback' ? '' : `${fmt((b.cpuUs + b.natsUs) / (plain[i]!.cpuUs + plain[i]!.natsUs), 2)}×`;
      log(
        `| QoS ${a.qos}, ${PUBLISHERS} → 1 | ${fmt(a.rate, 0)} | ${fmt(a.cpuUs, 1)} µs | ${bus} | ${fmt(b.rate, 0)} | ${fmt(b.cpuUs, 1)} µs | ${fmt(b.natsUs, 1)} µs | ${fmt(b.cpuUs / a.cpuUs, 2)}× | ${tlsRatio} |`,
      );
    }
  }
  const losses = (rs: { loss: number }[]) => rs.map((r) => `${fmt(r.loss * 100, 2)} %`).join(' / ');
  log(`loss: one node ${losses(one)}; two nodes, plain ${losses(plain)}; mTLS ${losses(mtls)} (QoS 0 / QoS 1)`);

  // 2. Revocation with three nodes (mTLS bus): each victim connected to node i % 3, revoked by this process.
  const n3 = await spawnService('gateway', fleet.config.dataDir, await env(tlsNats, 'n3'));
  const three = [n1, n2, n3];
  const cuts = await revokeEach(three, victims);
  log(
    `\nrevoke → live cut, ${REVOCATIONS} revocations over 3 nodes (registry: ${registryNote}): p50 ${fmt(percentile(cuts, 50), 1)} ms, p99 ${fmt(percentile(cuts, 99), 1)} ms`,
  );
  await Promise.all(three.map((n) => n.stop()));
}

/**
 * Part 3: QoS 1 to a persistent session — one node on SQLite, one node on JetStream, two nodes on
 * JetStream (publishers on j1, the session on j2); then revocations over j1–j3 while publishers on
 * j1 and j3 keep sending QoS 1 to the session on j2.
 */
async function persistentPart(): Promise<void> {
  const js = jsNats!;
  const persistent = { qosList: [1] as (0 | 1)[], clean: false };
  const single = await spawnService('gateway', fleet.config.dataDir, registryEnv); // mqtt.durability: disk
  const [sqlite] = await run(single, single, [single], [], persistent);
  await single.stop();
  const j1 = await spawnService('gateway', fleet.config.dataDir, await env(js, 'j1'));
  const j2 = await spawnService('gateway', fleet.config.dataDir, await env(js, 'j2'));
  const [oneJs] = await run(j1, j1, [j1], js.servers, persistent);
  const [twoJs] = await run(j1, j2, [j1, j2], js.servers, persistent);
  log('');
  log(
    '| QoS 1, 10 → 1 persistent session | msgs/s | gateway CPU/msg | NATS CPU/msg (3 servers) | total / one node on SQLite | loss |',
  );
  log('| --- | --- | --- | --- | --- | --- |');
  for (const [what, m] of [
    ['one node, SQLite (mqtt.db)', sqlite!],
    ['one node, JetStream (R3)', oneJs!],
    ['publishers on j1, session on j2, JetStream (R3)', twoJs!],
  ] as const)
    log(
      `| ${what} | ${fmt(m.rate, 0)} | ${fmt(m.cpuUs, 1)} µs | ${fmt(m.natsUs, 1)} µs | ${fmt((m.cpuUs + m.natsUs) / sqlite!.cpuUs, 2)}× | ${fmt(m.loss * 100, 2)} % |`,
    );

  // Revocations under that load: the session on j2, publishers on j1 and j3 sending until the last cut.
  const j3 = await spawnService('gateway', fleet.config.dataDir, await env(js, 'j3'));
  const sub = await open(j2, service, false);
  await sub.subscribeAsync('devices/+/load', { qos: 1 });
  let received = 0;
  sub.on('message', () => received++);
  const pubs = await Promise.all(publishers.map((c, i) => open(i % 2 === 0 ? j1 : j3, c)));
  let stop = false;
  let sent = 0;
  const deadline = performance.now() + 300_000;
  const load = Promise.all(
    pubs.map(async (p, i) => {
      for (let n = 0; !stop && n < 100_000 && performance.now() < deadline; n++) {
        await p.publishAsync(`devices/bench-${i}/load`, String(n), { qos: 1 });
        sent++;
      }
    }),
  );
  const t0 = performance.now();
  const cuts = await revokeEach([j1, j2, j3], loadVictims);
  const seconds = (performance.now() - t0) / 1000;
  stop = true;
  await load;
  log(
    `\nrevoke → live cut under that load (${fmt(sent / seconds, 0)} QoS 1 msgs/s to the session, ${REVOCATIONS} revocations over j1–j3): p50 ${fmt(percentile(cuts, 50), 1)} ms, p99 ${fmt(percentile(cuts, 99), 1)} ms; ${received} of ${sent} arrived before the end`,
  );
  await Promise.all([sub, ...pubs].map((c) => c.endAsync(true)));
  await Promise.all([j1, j2, j3].map((n) => n.stop()));
}

try {
  if (PARTS.includes('1')) await busParts();
  if (PARTS.includes('3')) await persistentPart();
} finally {
  await Promise.all([plainNats.stop(), tlsNats.stop(), jsNats?.stop()]);
  await postgres?.destroy();
  fleet.cleanup();
}

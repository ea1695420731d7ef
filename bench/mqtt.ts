// npm run bench:mqtt — fleetgate's MQTT core beside Mosquitto, in the same run, with the same
// clients and the same certificates (the fleet CA; Mosquitto with require_certificate). This
// machine is shared and noisy: what matters is the ratio of server CPU per unit of work.
//  1. mTLS connect → CONNACK: server CPU per connect
//  2. QoS 0 and QoS 1 messages, 10 publishers → 1 subscriber: server CPU per message, loss
//     (fleetgate in both durability modes: disk — PUBACK after the commit — and memory)
//  3. idle RSS per connection with N connections open (default 10,000), and the RSS 15 s after
//     they closed
//  4. fleetgate only: revoke → live cut latency
//  5. MQTT 5 beside 3.1.1: the same message phases with v5 clients (fleetgate memory and
//     Mosquitto), CPU per message v5 / 3.1.1 (BENCH_V5=0 skips it)
//  6. Shared subscriptions: QoS 0 and QoS 1, 10 publishers → a 4-member `$share` group beside
//     → one ordinary subscriber, fleetgate (memory) and Mosquitto, MQTT 5 (BENCH_SHARED=0 skips
//     it; BENCH_SHARED=only runs it alone)
//  7. Workers (#29): QoS 0 and QoS 1, 10 publishers → 1 subscriber, fleetgate memory mode with one
//     worker and with `--workers 2` (publishers on the subscriber's worker, then on the other),
//     Mosquitto beside: server CPU per message over all the server's processes (the bus's part
//     apart), messages/s, the load clients' CPU (BENCH_WORKERS=0 skips it; =only runs it alone;
//     BENCH_WORKER_ROUNDS, BENCH_WORKER_MESSAGES, BENCH_WORKER_QOS1_MESSAGES)
// Phases 1 and 2 are measured after an unmeasured warm-up on each server (BENCH_WARMUP_CONNECTS,
// BENCH_WARMUP_MESSAGES): the steady state, not the JIT's first minutes.
// Servers are child processes on loopback ports, stopped by PID. Every loop is bounded.
import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContext, type TLSSocket, connect as tlsConnect } from 'node:tls';
import mqtt, { type MqttClient } from 'mqtt';
import { https } from '../harness/https.ts';
import { until } from '../harness/mqtt.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import {
  type BenchServer,
  benchFleet,
  countArrivals,
  fmt,
  freePort,
  type GatewayProcess,
  percentile,
  processTree,
  publishFromEach,
  sharedKeyEnroller,
  spawnService,
  startMosquitto as startMosquittoFor,
  treeStat,
} from './lib.ts';

const CONNECTS = Number(process.env.BENCH_CONNECTS ?? 300);
const CONNECT_CONCURRENCY = 4;
const PUBLISHERS = 10;
// Per publisher and round (CPU ticks are 10 ms: enough work to measure): QoS 0 is cheap per
// message, so more of them; QoS 1 costs ~6× as much, so fewer give as many ticks.
const MESSAGES = Number(process.env.BENCH_MESSAGES ?? 5_000);
const QOS1_MESSAGES = Number(process.env.BENCH_QOS1_MESSAGES ?? 2_000);
// Rounds of the connect and message phases, interleaved over the servers on fresh processes
// (disk, Mosquitto, memory, disk, …); each figure is a server's median round, so a neighbour's
// burst of load moves one round, not the result.
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
// Unmeasured warm-up before each measured phase, the same for every server: a gateway runs for
// days, so its steady state is what counts — not V8 compiling the hot path during the first
// thousands of messages (measured: the first QoS 1 phase of a fresh gateway cost 35.6 µs per
// message, the same phase again 29.2 µs).
const WARMUP_CONNECTS = Number(process.env.BENCH_WARMUP_CONNECTS ?? 40);
const WARMUP_MESSAGES = Number(process.env.BENCH_WARMUP_MESSAGES ?? 1_000); // per publisher per QoS
const IDLE = Number(process.env.BENCH_IDLE_CONNECTIONS ?? 10_000);
const IDLE_CPU_SECONDS = Number(process.env.BENCH_IDLE_CPU_SECONDS ?? 20);
const AFTER_CLOSE_SECONDS = Number(process.env.BENCH_AFTER_CLOSE_SECONDS ?? 15);
const REVOCATIONS = Number(process.env.BENCH_REVOCATIONS ?? 40);
const V5 = process.env.BENCH_V5 !== '0';
// Another checkout of fleetgate (e.g. a worktree of the commit before a change) run beside this
// one in the message rounds, in memory mode: before/after in the same run.
const BASELINE = process.env.BENCH_BASELINE_ROOT;
// Quotas on (every message checked against limits no run reaches, bench/unmetered.ts) beside
// quotas off, in memory mode: what the per-device rate checks cost per message.
const QUOTAS_OFF = process.env.BENCH_QUOTAS_OFF === '1';

const log = (s: string) => process.stdout.write(`${s}\n`);
const fleet = await benchFleet();
log(
  `fleetgate bench:mqtt — node ${process.version}; ${ROUNDS} rounds of ${CONNECTS} connects and ${PUBLISHERS}×${MESSAGES} QoS 0, ${PUBLISHERS}×${QOS1_MESSAGES} QoS 1 messages; ${IDLE} idle connections; peer: Mosquitto`,
);

type Server = BenchServer;

/** Read and write system calls a process has made so far (`/proc/<pid>/io`: syscr, syscw). */
function syscalls(pid: number | undefined): { r: number; w: number } {
  if (pid === undefined) return { r: Number.NaN, w: Number.NaN };
  const io = readFileSync(`/proc/${pid}/io`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}: (\\d+)`, 'm').exec(io)?.[1] ?? Number.NaN);
  return { r: field('syscr'), w: field('syscw') };
}

const startMosquitto = async () => startMosquittoFor(fleet, await freePort());

async function startFleetgate(
  durability: 'disk' | 'memory',
  root?: string,
  quotas = true,
): Promise<Server & { gw: GatewayProcess }> {
  const env = {
    FLEETGATE_MQTT_DURABILITY: durability,
    FLEETGATE_MQTT_MAX_QUEUED: '100000',
    ...(!quotas && { FLEETGATE_QUOTAS: 'false' }),
  };
  const gw = await spawnService('gateway', fleet.config.dataDir, env, root);
  return {
    name: `fleetgate (${durability}${root === undefined ? '' : ', baseline'}${quotas ? '' : ', quotas off'})`,
    url: gw.endpoints['mqtt+tls']!,
    cpuSeconds: () => gw.cpuSeconds(),
    rssBytes: () => gw.rssBytes(),
    stop: () => gw.stop(),
    gw,
    pid: gw.child.pid,
  };
}

const enroller = await sharedKeyEnroller(fleet);
const ca = readFileSync(fleet.paths.rootCert);
const contexts = new Map<string, SecureContext>();
async function device(id: string, type = 'sensor'): Promise<Credential> {
  if (type !== 'sensor') return enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id, type });
  return enroller.enroll(id);
}
const sharedKeyPem = enroller.keyPem;
const contextFor = (cred: Credential) => {
  let c = contexts.get(cred.deviceId);
  if (c === undefined)
    contexts.set(
      cred.deviceId,
      (c = createSecureContext({ ca, cert: cred.certPem, key: cred.keyPem || sharedKeyPem })),
    );
  return c;
};

/** The protocol the message phases speak: 4 (3.1.1) or 5. */
let protocolVersion: 4 | 5 = 4;
function open(url: string, cred: Credential, extra: mqtt.IClientOptions = {}): Promise<MqttClient> {
  return mqtt.connectAsync(
    url,
    {
      secureContext: contextFor(cred),
      clientId: cred.deviceId,
      protocolVersion,
      reconnectPeriod: 0,
      keepalive: 600,
      connectTimeout: 20_000,
      servername: 'localhost',
      ...(protocolVersion === 5 && { properties: { sessionExpiryInterval: extra.clean === false ? 3_600 : 0 } }),
      ...extra,
    } as mqtt.IClientOptions,
    false,
  );
}

const SHARED = process.env.BENCH_SHARED ?? '1';
const SHARED_ROUNDS = Number(process.env.BENCH_SHARED_ROUNDS ?? 3);
const GROUP = 4;

const publishersCreds: Credential[] = [];
for (let i = 0; i < Math.max(PUBLISHERS, CONNECT_CONCURRENCY, REVOCATIONS); i++)
  publishersCreds.push(await device(`bench-${i}`));
const service = await device('bench-svc', 'service');
const members: Credential[] = [service];
for (let i = 1; i < GROUP; i++) members.push(await device(`bench-svc-${i}`, 'service'));

/** Arrivals over several clients (a shared group): `done` when `total` arrived, or none for 3 s. */
function countAll(clients: MqttClient[], total: number, topic: string): { done: Promise<void>; received(): number } {
  const each = clients.map((c) => countArrivals(c, total, (t) => t.endsWith(`/${topic}`)));
  const received = () => each.reduce((n, e) => n + e.received(), 0);
  const done = new Promise<void>((resolve) => {
    const check = setInterval(() => {
      if (received() >= total) {
        clearInterval(check);
        resolve();
      }
    }, 5);
    void Promise.all(each.map((e) => e.done)).then(() => {
      clearInterval(check);
      resolve();
    });
  });
  return { done, received };
}

/** Server CPU per message delivered, QoS 0 and 1: to one ordinary subscriber, then to a shared group of GROUP members. */
async function measureShared(server: Server): Promise<{ one: number[]; group: number[]; loss: number[] }> {
  const publishers = await Promise.all(publishersCreds.slice(0, PUBLISHERS).map((c) => open(server.url, c)));
  const subs = await Promise.all(members.map((m) => open(server.url, m)));
  const one: number[] = [];
  const group: number[] = [];
  const loss: number[] = [];
  for (const qos of [0, 1] as const) {
    for (const shared of [false, true]) {
      const topic = `${shared ? 'g' : 's'}${qos}`;
      const filter = `devices/+/${topic}`;
      const takers = shared ? subs : subs.slice(0, 1);
      for (const t of takers) await t.subscribeAsync(shared ? `$share/bench/${filter}` : filter, { qos });
      const count = qos === 0 ? MESSAGES : QOS1_MESSAGES;
      const total = PUBLISHERS * count;
      const warm = countAll(takers, PUBLISHERS * Math.min(WARMUP_MESSAGES, 200), topic);
      await publishFromEach(publishers, topic, Math.min(WARMUP_MESSAGES, 200), qos);
      await warm.done;
      for (const t of takers) t.removeAllListeners('message');
      const arrivals = countAll(takers, total, topic);
      const cpu0 = server.cpuSeconds();
      await publishFromEach(publishers, topic, count, qos);
      await arrivals.done;
      (shared ? group : one).push(((server.cpuSeconds() - cpu0) / total) * 1e6);
      if (shared) loss.push(1 - arrivals.received() / total);
      for (const t of takers) {
        t.removeAllListeners('message');
        await t.unsubscribeAsync(shared ? `$share/bench/${filter}` : filter);
      }
    }
  }
  await Promise.all([...subs, ...publishers].map((c) => c.endAsync(true)));
  return { one, group, loss };
}

/** Phase 6: rounds alternate fleetgate (memory) and Mosquitto; medians of the rounds. */
async function sharedPhase(): Promise<void> {
  const previous = protocolVersion;
  protocolVersion = 5;
  const runs = new Map<string, { one: number[]; group: number[]; loss: number[] }[]>();
  for (let round = 0; round < SHARED_ROUNDS; round++) {
    for (const make of [() => startFleetgate('memory'), startMosquitto]) {
      const server = await make();
      try {
        const r = await measureShared(server);
        runs.set(server.name, [...(runs.get(server.name) ?? []), r]);
      } finally {
        await server.stop();
      }
    }
  }
  protocolVersion = previous;
  const med = (name: string, pick: (r: { one: number[]; group: number[] }) => number) =>
    percentile(
      (runs.get(name) ?? []).map(pick).sort((a, b) => a - b),
      50,
    );
  log('');
  log(
    `Shared subscriptions (MQTT 5; ${PUBLISHERS} publishers → a $share group of ${GROUP}, or → 1 ordinary subscriber; server CPU per message delivered, median of ${SHARED_ROUNDS} rounds)`,
  );
  log(
    '| work | fleetgate: 1 subscriber | fleetgate: group of 4 | group / 1 | Mosquitto: 1 subscriber | Mosquitto: group of 4 | group / 1 | fleetgate / Mosquitto (group) |',
  );
  log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const [i, q] of ['QoS 0', 'QoS 1'].entries()) {
    const f1 = med('fleetgate (memory)', (r) => r.one[i]!);
    const fg = med('fleetgate (memory)', (r) => r.group[i]!);
    const m1 = med('mosquitto', (r) => r.one[i]!);
    const mg = med('mosquitto', (r) => r.group[i]!);
    log(
      `| ${q} | ${fmt(f1, 1)} µs | ${fmt(fg, 1)} µs | ${fmt(fg / f1, 2)}× | ${fmt(m1, 1)} µs | ${fmt(mg, 1)} µs | ${fmt(mg / m1, 2)}× | ${fmt(fg / mg, 2)}× |`,
    );
  }
  for (const [name, rs] of runs)
    log(
      `${name}, every round (µs, QoS 0 one/group, QoS 1 one/group; group loss): ${rs.map((r) => `${fmt(r.one[0]!, 1)}/${fmt(r.group[0]!, 1)}, ${fmt(r.one[1]!, 1)}/${fmt(r.group[1]!, 1)} (${r.loss.map((l) => `${fmt(l * 100, 2)} %`).join(' / ')})`).join('; ')}`,
    );
}

if (SHARED === 'only') {
  await sharedPhase();
  fleet.registry.close();
  fleet.cleanup();
  process.exit(0);
}

const WORKERS = process.env.BENCH_WORKERS ?? '1';
const WORKER_ROUNDS = Number(process.env.BENCH_WORKER_ROUNDS ?? 5);
/**
 * Messages per publisher in each workers round (QoS 0, QoS 1): 5,000 QoS 0 took ~0.5 s, too short
 * to tell 10 % apart on this machine (the same server varied 1.3× between rounds; 20,000 each
 * varied 1.1×), and each server starts fresh, so its first seconds are warm-up.
 */
const WORKER_MESSAGES = Number(process.env.BENCH_WORKER_MESSAGES ?? 20_000);
const WORKER_QOS1_MESSAGES = Number(process.env.BENCH_WORKER_QOS1_MESSAGES ?? 6_000);

interface WorkersServer extends Server {
  admin: string;
  /** CPU seconds of its nats-server (the workers' bus), 0 with one worker. */
  busCpuSeconds(): number;
  /** CPU seconds of each of its processes, by PID. */
  cpuByProcess(): Map<number, number>;
}

/** fleetgate in memory mode with `n` workers (1: one process, as elsewhere here), on ports of its own. */
async function startWorkers(n: number): Promise<WorkersServer> {
  const env: Record<string, string> = { FLEETGATE_MQTT_DURABILITY: 'memory', FLEETGATE_MQTT_MAX_QUEUED: '100000' };
  for (const k of ['MQTT', 'WSS', 'HTTPS', 'ADMIN', 'CONSOLE']) env[`FLEETGATE_${k}_PORT`] = String(await freePort());
  const gw = await spawnService('gateway', fleet.config.dataDir, env, undefined, n > 1 ? ['--workers', String(n)] : []);
  const pid = gw.child.pid!;
  return {
    name: `fleetgate, ${n} worker${n > 1 ? 's' : ''}`,
    url: gw.endpoints['mqtt+tls']!,
    admin: gw.endpoints.admin!,
    cpuSeconds: () => treeStat(processTree(pid)).cpu,
    busCpuSeconds: () => treeStat(processTree(pid), (cmd) => cmd.includes('nats-server')).cpu,
    cpuByProcess: () => new Map(processTree(pid).map((p) => [p, treeStat([p]).cpu])),
    rssBytes: () => gw.rssBytes(),
    stop: () => gw.stop(),
  };
}

/**
 * The subscriber and the publishers connected so that every publisher is on the subscriber's
 * worker (`cross` false) or on the other one (`cross` true): where each landed is read from the
 * admin API (`/v1/connections` names each connection's node), and a connection in the wrong
 * place is made again until the kernel puts it right.
 */
async function openPlaced(
  server: WorkersServer,
  operator: Credential,
  cross: boolean,
): Promise<{ sub: MqttClient; pubs: MqttClient[] }> {
  const sub = await open(server.url, service);
  const pubs = await Promise.all(publishersCreds.slice(0, PUBLISHERS).map((c) => open(server.url, c)));
  for (let attempt = 0; attempt < 200; attempt++) {
    const r = await https(`${server.admin}/v1/connections`, { ca, cred: operator });
    const nodes = new Map(
      (r.json<{ connections: { deviceId: string; node?: string }[] }>().connections ?? []).map((c) => [
        c.deviceId,
        c.node,
      ]),
    );
    const at = nodes.get(service.deviceId);
    const wrong = pubs.flatMap((_p, i) => {
      const node = nodes.get(publishersCreds[i]!.deviceId);
      return node === undefined || (cross ? node === at : node !== at) ? [i] : [];
    });
    if (at !== undefined && wrong.length === 0) return { sub, pubs };
    for (const i of wrong) {
      await pubs[i]!.endAsync(true);
      pubs[i] = await open(server.url, publishersCreds[i]!);
    }
  }
  throw new Error('publishers not placed after 200 attempts');
}

interface WorkerFigures {
  /** QoS 0, QoS 1: server CPU per message (µs), of which the bus's and the busiest process's, messages/s, the load clients' CPU (% of one core). */
  cpuUs: [number, number];
  busUs: [number, number];
  busiestUs: [number, number];
  rate: [number, number];
  clientPct: [number, number];
}

/** QoS 0 and QoS 1 from the publishers to the subscriber: server CPU per message, rate, client CPU. */
async function measureFlow(
  server: Server & { busCpuSeconds?(): number; cpuByProcess?(): Map<number, number> },
  sub: MqttClient,
  pubs: MqttClient[],
): Promise<WorkerFigures> {
  const f: WorkerFigures = { cpuUs: [0, 0], busUs: [0, 0], busiestUs: [0, 0], rate: [0, 0], clientPct: [0, 0] };
  for (const qos of [0, 1] as const) {
    const topic = `w${qos}`;
    await sub.subscribeAsync(`devices/+/${topic}`, { qos });
    const warm = countArrivals(sub, PUBLISHERS * 200, (t) => t.endsWith(`/${topic}`));
    await publishFromEach(pubs, topic, 200, qos);
    await warm.done;
    sub.removeAllListeners('message');
    const count = qos === 0 ? WORKER_MESSAGES : WORKER_QOS1_MESSAGES;
    const total = PUBLISHERS * count;
    const arrivals = countArrivals(sub, total, (t) => t.endsWith(`/${topic}`));
    const cpu0 = server.cpuSeconds();
    const bus0 = server.busCpuSeconds?.() ?? 0;
    const each0 = server.cpuByProcess?.() ?? new Map<number, number>();
    const client0 = process.cpuUsage();
    const t0 = performance.now();
    await publishFromEach(pubs, topic, count, qos);
    await arrivals.done;
    const seconds = (performance.now() - t0) / 1000;
    const client = process.cpuUsage(client0);
    const n = arrivals.received();
    f.cpuUs[qos] = ((server.cpuSeconds() - cpu0) / n) * 1e6;
    f.busUs[qos] = (((server.busCpuSeconds?.() ?? 0) - bus0) / n) * 1e6;
    const each = [...(server.cpuByProcess?.() ?? new Map<number, number>())].map(([p, c]) => c - (each0.get(p) ?? c));
    f.busiestUs[qos] = (Math.max(0, ...each) / n) * 1e6;
    f.rate[qos] = n / seconds;
    f.clientPct[qos] = ((client.user + client.system) / 1e6 / seconds) * 100;
    sub.removeAllListeners('message');
    await sub.unsubscribeAsync(`devices/+/${topic}`);
  }
  return f;
}

/** One round of phase 7 on fleetgate with `n` workers: every placement's figures, by name. */
async function workersRound(n: number, operator: Credential): Promise<[string, WorkerFigures][]> {
  const server = await startWorkers(n);
  const out: [string, WorkerFigures][] = [];
  try {
    // A worker publishes every message to the bus until it knows what the others listen to (3.5 s
    // after it starts): measured from when every worker does.
    if (n > 1)
      await until(
        'every worker knowing the others’ interest',
        async () => {
          const body = (await https(`${server.admin}/metrics`, { ca, cred: operator })).body;
          return (body.match(/^fleetgate_cluster_interest\{[^}]*what="publishing_all"\} 0$/gm) ?? []).length === n;
        },
        30_000,
        200,
      );
    for (const cross of n === 1 ? [false] : [false, true]) {
      const { sub, pubs } =
        n === 1
          ? {
              sub: await open(server.url, service),
              pubs: await Promise.all(publishersCreds.slice(0, PUBLISHERS).map((c) => open(server.url, c))),
            }
          : await openPlaced(server, operator, cross);
      out.push([
        n === 1 ? '1 worker' : cross ? '2 workers, across' : '2 workers, on one',
        await measureFlow(server, sub, pubs),
      ]);
      await Promise.all([sub, ...pubs].map((c) => c.endAsync(true)));
    }
  } finally {
    await server.stop();
  }
  return out;
}

/** Phase 7 (#29): what workers cost and buy — 1 worker, 2 workers (traffic on one, traffic across), Mosquitto. */
async function workersPhase(): Promise<void> {
  const operator = await device('bench-operator', 'operator');
  const runs = new Map<string, WorkerFigures[]>();
  const add = (name: string, f: WorkerFigures) => runs.set(name, [...(runs.get(name) ?? []), f]);
  for (let round = 0; round < WORKER_ROUNDS; round++) {
    for (const n of [1, 2]) for (const [name, f] of await workersRound(n, operator)) add(name, f);
    const mosquitto = await startMosquitto();
    try {
      const sub = await open(mosquitto.url, service);
      const pubs = await Promise.all(publishersCreds.slice(0, PUBLISHERS).map((c) => open(mosquitto.url, c)));
      add('Mosquitto', await measureFlow(mosquitto, sub, pubs));
      await Promise.all([sub, ...pubs].map((c) => c.endAsync(true)));
    } finally {
      await mosquitto.stop();
    }
  }
  const med = (name: string, pick: (f: WorkerFigures) => number) =>
    percentile(
      (runs.get(name) ?? []).map(pick).sort((a, b) => a - b),
      50,
    );
  log('');
  log(
    `Workers (#29): ${PUBLISHERS} publishers × ${WORKER_MESSAGES} QoS 0 and × ${WORKER_QOS1_MESSAGES} QoS 1 → 1 subscriber, fleetgate memory mode; server CPU per message over all its processes (supervisor, workers, their nats-server), median of ${WORKER_ROUNDS} rounds`,
  );
  log(
    '| traffic | QoS | server CPU / message | of which nats-server | of which the busiest process | / 1 worker | messages/s | load clients’ CPU (one core = 100 %) |',
  );
  log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const name of ['1 worker', '2 workers, on one', '2 workers, across', 'Mosquitto'])
    for (const q of [0, 1] as const) {
      const cpu = med(name, (f) => f.cpuUs[q]);
      log(
        `| ${name} | ${q} | ${fmt(cpu, 1)} µs | ${fmt(
          med(name, (f) => f.busUs[q]),
          1,
        )} µs | ${fmt(
          med(name, (f) => f.busiestUs[q]),
          1,
        )} µs | ${fmt(cpu / med('1 worker', (f) => f.cpuUs[q]), 2)}× | ${fmt(
          med(name, (f) => f.rate[q]),
          0,
        )} | ${fmt(
          med(name, (f) => f.clientPct[q]),
          0,
        )} % |`,
      );
    }
  for (const [name, fs] of runs)
    log(
      `${name}, every round (µs QoS 0 / QoS 1; messages/s QoS 0 / QoS 1): ${fs.map((f) => `${fmt(f.cpuUs[0], 1)} / ${fmt(f.cpuUs[1], 1)}; ${fmt(f.rate[0], 0)} / ${fmt(f.rate[1], 0)}`).join(' | ')}`,
    );
}

if (WORKERS === 'only') {
  await workersPhase();
  fleet.registry.close();
  fleet.cleanup();
  process.exit(0);
}

interface Figures {
  connectMs: number;
  qos0Us: number;
  qos1Us: number;
  qos1PersistentUs: number;
  loss0: number;
  loss1: number;
  lossP: number;
  /** Write and read system calls of the server per message delivered (QoS 0, QoS 1, QoS 1 persistent). */
  w0: number;
  w1: number;
  wP: number;
  r0: number;
  r1: number;
  rP: number;
  idleKiB: number;
  idleCpuPct: number;
  connectRate: number;
}

async function measureWork(server: Server): Promise<Omit<Figures, 'idleKiB' | 'idleCpuPct'>> {
  // 1. Connects (after WARMUP_CONNECTS unmeasured ones).
  const connects = async (count: number) => {
    let next = 0;
    await Promise.all(
      Array.from({ length: CONNECT_CONCURRENCY }, async (_, lane) => {
        while (next < count) {
          next++;
          const c = await open(server.url, publishersCreds[lane]!);
          await c.endAsync(true);
        }
      }),
    );
  };
  await connects(WARMUP_CONNECTS);
  let cpu0 = server.cpuSeconds();
  let t0 = performance.now();
  await connects(CONNECTS);
  const connectSeconds = (performance.now() - t0) / 1000;
  const connectMs = ((server.cpuSeconds() - cpu0) / CONNECTS) * 1000;

  // 2. Messages: QoS 0, QoS 1 to a clean session, QoS 1 to a persistent session (the one the
  //    durable mode writes to disk before each PUBACK).
  let sub = await open(server.url, service);
  const publishers = await Promise.all(publishersCreds.slice(0, PUBLISHERS).map((c) => open(server.url, c)));
  const out: number[] = [];
  const loss: number[] = [];
  const sys: { r: number; w: number }[] = [];
  for (const phase of ['q0', 'q1', 'q1p'] as const) {
    const qos = phase === 'q0' ? 0 : 1;
    const topic = phase;
    if (phase === 'q1p') {
      await sub.endAsync(true);
      sub = await open(server.url, service, { clean: false });
    }
    await sub.subscribeAsync(`devices/+/${topic}`, { qos });
    if (WARMUP_MESSAGES > 0) {
      const warm = countArrivals(sub, PUBLISHERS * WARMUP_MESSAGES, (t) => t.endsWith(`/${topic}`));
      await publishFromEach(publishers, topic, WARMUP_MESSAGES, qos);
      await warm.done;
      sub.removeAllListeners('message');
    }
    const count = qos === 0 ? WORKER_MESSAGES : WORKER_QOS1_MESSAGES;
    const total = PUBLISHERS * count;
    const arrivals = countArrivals(sub, total, (t) => t.endsWith(`/${topic}`));
    cpu0 = server.cpuSeconds();
    const sys0 = syscalls(server.pid);
    t0 = performance.now();
    await publishFromEach(publishers, topic, count, qos);
    await arrivals.done;
    // Wait until the server has nothing left to do for this phase (its CPU stops moving).
    out.push(((server.cpuSeconds() - cpu0) / total) * 1e6);
    const sys1 = syscalls(server.pid);
    sys.push({ r: (sys1.r - sys0.r) / total, w: (sys1.w - sys0.w) / total });
    loss.push(1 - arrivals.received() / total);
    sub.removeAllListeners('message');
    await sub.unsubscribeAsync(`devices/+/${topic}`);
  }
  await Promise.all([sub, ...publishers].map((c) => c.endAsync(true)));
  return {
    connectMs,
    qos0Us: out[0]!,
    qos1Us: out[1]!,
    qos1PersistentUs: out[2]!,
    loss0: loss[0]!,
    loss1: loss[1]!,
    lossP: loss[2]!,
    w0: sys[0]!.w,
    w1: sys[1]!.w,
    wP: sys[2]!.w,
    r0: sys[0]!.r,
    r1: sys[1]!.r,
    rP: sys[2]!.r,
    connectRate: CONNECTS / connectSeconds,
  };
}

async function measureIdle(server: Server, idleCreds: Credential[]): Promise<number> {
  // 3. Idle connections: raw TLS sockets with CONNECT, held open; RSS before and after.
  const rss0 = server.rssBytes();
  const sockets: TLSSocket[] = [];
  const port = Number(new URL(server.url).port);
  let opened = 0;
  let lane = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (lane < idleCreds.length) {
        const cred = idleCreds[lane++]!;
        const s = await new Promise<TLSSocket | undefined>((resolve) => {
          const sock = tlsConnect(
            { host: '127.0.0.1', port, secureContext: contextFor(cred), servername: 'localhost' },
            () => {
              sock.write(mqttConnect(cred.deviceId));
            },
          );
          sock.once('data', (b: Buffer) => resolve(b[0] === 0x20 && b[3] === 0 ? sock : undefined));
          sock.once('error', () => resolve(undefined));
          sock.once('close', () => resolve(undefined));
        });
        if (s !== undefined) {
          sockets.push(s);
          opened++;
        }
      }
    }),
  );
  await new Promise((r) => setTimeout(r, 2_000)); // let the servers settle
  const idleKiB = opened === 0 ? Number.NaN : (server.rssBytes() - rss0) / opened / 1024;
  if (opened < idleCreds.length) log(`  (${server.name}: ${opened}/${idleCreds.length} idle connections opened)`);
  const loaded = server.rssBytes();
  for (const s of sockets) s.destroy();
  // Does the memory go back when the connections close? (glibc's malloc kept it; on jemalloc a
  // background thread returns freed pages.)
  await new Promise((r) => setTimeout(r, AFTER_CLOSE_SECONDS * 1_000));
  const mib = (b: number) => fmt(b / 2 ** 20, 0);
  log(
    `${server.name}: RSS ${mib(rss0)} MiB idle → ${mib(loaded)} MiB with ${opened} connections → ${mib(server.rssBytes())} MiB ${AFTER_CLOSE_SECONDS} s after they closed`,
  );
  return idleKiB;
}

function mqttConnect(clientId: string): Buffer {
  const id = Buffer.from(clientId);
  const body = Buffer.concat([
    Buffer.from([0, 4]),
    Buffer.from('MQTT'),
    Buffer.from([4, 0x02, 0x02, 0x58]),
    Buffer.from([id.length >> 8, id.length & 0xff]),
    id,
  ]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

const idleCreds: Credential[] = [];
const t = performance.now();
for (let i = 0; i < IDLE; i++) idleCreds.push(await device(`idle-${i}`));
log(`(${IDLE} idle-connection devices enrolled in ${fmt((performance.now() - t) / 1000, 1)} s)`);

// The same client state for every server: all message phases first (interleaved), then the idle
// phase (which grows the client's memory), so no server is measured against a slower client.
type Work = Omit<Figures, 'idleKiB' | 'idleCpuPct'>;
/** ROUNDS interleaved rounds of {@link measureWork}, each on a fresh server process; per server the median of each figure (loss: the worst round). */
async function workRounds(makers: (() => Promise<Server>)[]): Promise<Map<string, Work>> {
  const rounds = new Map<string, Work[]>();
  for (let round = 0; round < ROUNDS; round++) {
    for (const make of makers) {
      const server = await make();
      try {
        const work = await measureWork(server);
        rounds.set(server.name, [...(rounds.get(server.name) ?? []), work]);
      } finally {
        await server.stop();
      }
    }
  }
  const summary = (rs: Work[]): Work =>
    Object.fromEntries(
      (Object.keys(rs[0]!) as (keyof Work)[]).map((k) => {
        const values = rs.map((r) => r[k]).sort((a, b) => a - b);
        return [k, k.startsWith('loss') ? values.at(-1)! : percentile(values, 50)];
      }),
    ) as Work;
  return new Map([...rounds].map(([name, rs]) => [name, summary(rs)]));
}

const results = new Map<string, Figures>();
for (const [name, work] of await workRounds([
  () => startFleetgate('disk'),
  () => startMosquitto(),
  () => startFleetgate('memory'),
  ...(BASELINE === undefined ? [] : [() => startFleetgate('memory', BASELINE)]),
  ...(QUOTAS_OFF ? [() => startFleetgate('memory', undefined, false)] : []),
])) {
  results.set(name, { ...work, idleKiB: Number.NaN, idleCpuPct: Number.NaN });
}
// 5. MQTT 5 beside 3.1.1, on the same servers and clients (fleetgate in memory mode: the
//    protocol cost, not the disk's) — before the idle phase, like the 3.1.1 rounds: measured
//    after it, with the client's memory grown by 10,000 sockets, both servers cost 30–45 % more
//    per message (fewer messages per read and write), which is the client, not MQTT 5.
let v5 = new Map<string, Work>();
if (V5) {
  protocolVersion = 5;
  v5 = await workRounds([
    () => startFleetgate('memory'),
    () => startMosquitto(),
    ...(BASELINE === undefined ? [] : [() => startFleetgate('memory', BASELINE)]),
  ]);
  protocolVersion = 4;
}

for (const make of [() => startFleetgate('disk'), () => startMosquitto()]) {
  const server = await make();
  try {
    // CPU of the server with no connection at all, after five settling seconds (start-up JIT and
    // GC, the registry watch's first fast spell): timers, polls, monitors.
    await new Promise((r) => setTimeout(r, 5_000));
    const cpu0 = server.cpuSeconds();
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, IDLE_CPU_SECONDS * 1_000));
    results.get(server.name)!.idleCpuPct = ((server.cpuSeconds() - cpu0) / ((performance.now() - t0) / 1_000)) * 100;
    results.get(server.name)!.idleKiB = await measureIdle(server, idleCreds);
  } finally {
    await server.stop();
  }
}
results.get('fleetgate (memory)')!.idleKiB = results.get('fleetgate (disk)')!.idleKiB; // the same code path when idle
results.get('fleetgate (memory)')!.idleCpuPct = results.get('fleetgate (disk)')!.idleCpuPct;

const fg = results.get('fleetgate (disk)')!;
const fm = results.get('fleetgate (memory)')!;
const mo = results.get('mosquitto')!;

const ratio = (a: number, b: number) => `${fmt(a / b, 2)}×`;
log('');
log(
  `server CPU per unit of work, median of ${ROUNDS} interleaved rounds (lower is better); ratio = fleetgate / Mosquitto`,
);
log(`| work | fleetgate disk | fleetgate memory | Mosquitto | ratio (disk) | ratio (memory) | target |`);
log(`| --- | --- | --- | --- | --- | --- | --- |`);
log(
  `| mTLS connect → CONNACK | ${fmt(fg.connectMs, 2)} ms | ${fmt(fm.connectMs, 2)} ms | ${fmt(mo.connectMs, 2)} ms | ${ratio(fg.connectMs, mo.connectMs)} | ${ratio(fm.connectMs, mo.connectMs)} | ≤ 1.0 |`,
);
log(
  `| QoS 0 message (10 → 1) | ${fmt(fg.qos0Us, 1)} µs | ${fmt(fm.qos0Us, 1)} µs | ${fmt(mo.qos0Us, 1)} µs | ${ratio(fg.qos0Us, mo.qos0Us)} | ${ratio(fm.qos0Us, mo.qos0Us)} | ≤ 1.0 |`,
);
log(
  `| QoS 1 message (10 → 1) | ${fmt(fg.qos1Us, 1)} µs | ${fmt(fm.qos1Us, 1)} µs | ${fmt(mo.qos1Us, 1)} µs | ${ratio(fg.qos1Us, mo.qos1Us)} | ${ratio(fm.qos1Us, mo.qos1Us)} | ≤ 1.5 (memory) |`,
);
log(
  `| QoS 1 to a persistent session | ${fmt(fg.qos1PersistentUs, 1)} µs | ${fmt(fm.qos1PersistentUs, 1)} µs | ${fmt(mo.qos1PersistentUs, 1)} µs | ${ratio(fg.qos1PersistentUs, mo.qos1PersistentUs)} | ${ratio(fm.qos1PersistentUs, mo.qos1PersistentUs)} | (disk: on disk before PUBACK) |`,
);
log(
  `| idle RSS per connection (${IDLE}) | ${fmt(fg.idleKiB, 1)} KiB | ${fmt(fm.idleKiB, 1)} KiB | ${fmt(mo.idleKiB, 1)} KiB | ${ratio(fg.idleKiB, mo.idleKiB)} | ${ratio(fm.idleKiB, mo.idleKiB)} | ≤ 1.5 |`,
);
log(
  `| idle CPU, no connection (${IDLE_CPU_SECONDS} s) | ${fmt(fg.idleCpuPct, 2)} % | ${fmt(fm.idleCpuPct, 2)} % | ${fmt(mo.idleCpuPct, 2)} % | | | (CPU ticks are 10 ms: ±${fmt(1 / IDLE_CPU_SECONDS, 2)} %) |`,
);
log(
  `loss: QoS 0 ${[fg, fm, mo].map((r) => `${fmt(r.loss0 * 100, 2)} %`).join(' / ')}; QoS 1 ${[fg, fm, mo].map((r) => `${fmt(r.loss1 * 100, 2)} %`).join(' / ')}; QoS 1 persistent ${[fg, fm, mo].map((r) => `${fmt(r.lossP * 100, 2)} %`).join(' / ')} (disk / memory / Mosquitto)`,
);
log(`connects/s (client-bound): ${[fg, fm, mo].map((r) => fmt(r.connectRate, 0)).join(' / ')}`);
const calls = (r: Work) =>
  `QoS 0 ${fmt(r.w0, 2)} / ${fmt(r.r0, 2)}, QoS 1 ${fmt(r.w1, 2)} / ${fmt(r.r1, 2)}, QoS 1 persistent ${fmt(r.wP, 2)} / ${fmt(r.rP, 2)}`;
log(`server system calls per message delivered (write / read, all connections; median round):`);
for (const [name, r] of [
  ['fleetgate disk', fg],
  ['fleetgate memory', fm],
  ['Mosquitto', mo],
] as const)
  log(`  ${name}: ${calls(r)}`);
if (V5) {
  const f5 = v5.get('fleetgate (memory)')!;
  const m5 = v5.get('mosquitto')!;
  log('');
  log(`MQTT 5 beside 3.1.1 (server CPU per unit of work, median of ${ROUNDS} rounds; fleetgate memory mode)`);
  log(
    `| work | fleetgate 3.1.1 | fleetgate 5 | 5 / 3.1.1 (target ≤ 1.10) | Mosquitto 3.1.1 | Mosquitto 5 | fleetgate 5 / Mosquitto 5 |`,
  );
  log(`| --- | --- | --- | --- | --- | --- | --- |`);
  log(
    `| mTLS connect → CONNACK | ${fmt(fm.connectMs, 2)} ms | ${fmt(f5.connectMs, 2)} ms | ${ratio(f5.connectMs, fm.connectMs)} | ${fmt(mo.connectMs, 2)} ms | ${fmt(m5.connectMs, 2)} ms | ${ratio(f5.connectMs, m5.connectMs)} |`,
  );
  log(
    `| QoS 0 message (10 → 1) | ${fmt(fm.qos0Us, 1)} µs | ${fmt(f5.qos0Us, 1)} µs | ${ratio(f5.qos0Us, fm.qos0Us)} | ${fmt(mo.qos0Us, 1)} µs | ${fmt(m5.qos0Us, 1)} µs | ${ratio(f5.qos0Us, m5.qos0Us)} |`,
  );
  log(
    `| QoS 1 message (10 → 1) | ${fmt(fm.qos1Us, 1)} µs | ${fmt(f5.qos1Us, 1)} µs | ${ratio(f5.qos1Us, fm.qos1Us)} | ${fmt(mo.qos1Us, 1)} µs | ${fmt(m5.qos1Us, 1)} µs | ${ratio(f5.qos1Us, m5.qos1Us)} |`,
  );
  log(
    `| QoS 1 to a persistent session | ${fmt(fm.qos1PersistentUs, 1)} µs | ${fmt(f5.qos1PersistentUs, 1)} µs | ${ratio(f5.qos1PersistentUs, fm.qos1PersistentUs)} | ${fmt(mo.qos1PersistentUs, 1)} µs | ${fmt(m5.qos1PersistentUs, 1)} µs | ${ratio(f5.qos1PersistentUs, m5.qos1PersistentUs)} |`,
  );
  log(`server system calls per message (v5, write / read): fleetgate ${calls(f5)}; Mosquitto ${calls(m5)}`);
  log(
    `loss (v5): QoS 0 ${[f5, m5].map((r) => `${fmt(r.loss0 * 100, 2)} %`).join(' / ')}; QoS 1 ${[f5, m5].map((r) => `${fmt(r.loss1 * 100, 2)} %`).join(' / ')} (fleetgate / Mosquitto)`,
  );
}

if (QUOTAS_OFF) {
  const off = results.get('fleetgate (memory, quotas off)')!;
  log('');
  log('quotas on / quotas off, memory mode, same rounds (1.00× = the checks cost nothing measurable)');
  log('| connect | QoS 0 | QoS 1 | QoS 1 persistent |');
  log('| --- | --- | --- | --- |');
  log(
    `| ${ratio(fm.connectMs, off.connectMs)} | ${ratio(fm.qos0Us, off.qos0Us)} | ${ratio(fm.qos1Us, off.qos1Us)} | ${ratio(fm.qos1PersistentUs, off.qos1PersistentUs)} |`,
  );
}
if (BASELINE !== undefined) {
  const base = results.get('fleetgate (memory, baseline)')!;
  const rows: [string, Work, Work][] = [['3.1.1', fm, base]];
  if (V5) rows.push(['5', v5.get('fleetgate (memory)')!, v5.get('fleetgate (memory, baseline)')!]);
  log('');
  log(`this checkout / baseline (${BASELINE}), memory mode, same rounds (1.00× = no change)`);
  log('| protocol | connect | QoS 0 | QoS 1 | QoS 1 persistent |');
  log('| --- | --- | --- | --- | --- |');
  for (const [p, now, before] of rows) {
    log(
      `| ${p} | ${ratio(now.connectMs, before.connectMs)} | ${ratio(now.qos0Us, before.qos0Us)} | ${ratio(now.qos1Us, before.qos1Us)} | ${ratio(now.qos1PersistentUs, before.qos1PersistentUs)} |`,
    );
  }
}

if (SHARED !== '0') await sharedPhase();
if (WORKERS !== '0') await workersPhase();

// 4. Revoke → cut, fleetgate only (Mosquitto has no revocation to compare).
const gw = await startFleetgate('disk');
try {
  const victims = await Promise.all(publishersCreds.slice(0, REVOCATIONS).map((c) => open(gw.url, c)));
  const cuts: number[] = [];
  const commits: number[] = [];
  for (const [i, client] of victims.entries()) {
    const closed = new Promise<number>((resolve) => client.once('close', () => resolve(performance.now())));
    // From the moment the revocation is committed (revokeDevice returns after its fsync: a slow
    // disk on this shared machine is not the gateway's latency), to the client seeing its close.
    const asked = performance.now();
    fleet.registry.revokeDevice(publishersCreds[i]!.deviceId, 1, 'bench');
    const committed = performance.now();
    commits.push(committed - asked);
    cuts.push(
      (await Promise.race([closed, new Promise<number>((r) => setTimeout(() => r(Number.NaN), 5_000))])) - committed,
    );
  }
  const sorted = cuts.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  const slowest = cuts.indexOf(sorted.at(-1) ?? Number.NaN);
  log(
    `revoke→cut: p50 ${fmt(percentile(sorted, 50), 1)} ms, p99 ${fmt(percentile(sorted, 99), 1)} ms, max ${fmt(sorted.at(-1) ?? Number.NaN, 1)} ms (revocation ${slowest + 1}) over ${cuts.length} revocations (from each commit; the commit itself p50 ${fmt(
      percentile(
        [...commits].sort((a, b) => a - b),
        50,
      ),
      1,
    )} ms, max ${fmt(Math.max(...commits), 1)} ms)${sorted.length < cuts.length ? `; ${cuts.length - sorted.length} NOT CUT within 5 s` : ''}`,
  );
} finally {
  await gw.stop();
  fleet.registry.close();
  fleet.cleanup();
}

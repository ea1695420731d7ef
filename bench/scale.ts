// npm run bench:scale — 100,000 concurrent mutual-TLS MQTT devices on one box (#29): fleetgate
// with workers, a bare Node TLS server (the floor) and Mosquitto in the same run, with the same
// certificates and the same load processes (bench/scale-client.ts, each from source addresses of
// its own: the descriptor limit is per process and one address has ~28,000 ports).
//  1. Floor: a bare Node `tls.createServer` (mTLS, nothing else) with devices/workers idle
//     connections in one process: RSS per connection.
//  2. fleetgate `gateway --workers W` from cold: all devices connect (clean MQTT 3.1.1 sessions,
//     PINGREQ within the keepalive): wall time, gateway CPU (every process: supervisor, workers,
//     their nats-server), RSS per connection; CPU per admission for a batch with ~1,000 connected
//     and for the same batch with all connected; idle CPU with all connected.
//  3. Revoke → cut with all connected (the registry's commit to the device seeing its close).
//  4. QoS 1: 1 % of the devices publish once a second for 60 s to one service subscriber:
//     messages/s, loss, gateway CPU per message.
//  5. A restart: SIGTERM, start again; every device reconnects at once (backoff 0.5–5 s after a
//     refusal, as a device would): time and gateway CPU to admit them all.
//  6. Every connection closed: the memory the gateway returns.
//  7. Mosquitto, as far as one process gets here (and where it stops, from its own log).
// Loopback only; every phase is bounded (BENCH_SCALE_MINUTES: the whole run, default 60, stops by
// itself). Not part of `npm test`. Figures: docs/benchmarks.md.
import { type ChildProcess, fork } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { enrollDevice } from '../harness/pki.ts';
import { allocatorEnv } from '../runtime/allocator.ts';
import {
  benchFleet,
  fmt,
  freePort,
  type GatewayProcess,
  percentile,
  processTree,
  procStat,
  sharedKeyEnroller,
  spawnService,
  startMosquitto,
  treeStat,
} from './lib.ts';
import type { ClientShare, ScaleCommand } from './scale-client.ts';

const N = Number(process.env.BENCH_SCALE_DEVICES ?? 100_000);
/** Workers: enough that each holds at most ~17,000 of the 20,000 descriptors a process may have. */
const W = Number(process.env.BENCH_SCALE_WORKERS ?? Math.max(1, Math.ceil(N / 17_000)));
const P = Number(process.env.BENCH_SCALE_CLIENTS ?? Math.max(2, Math.ceil(N / 15_000)));
const INFLIGHT = Number(process.env.BENCH_SCALE_INFLIGHT ?? 128);
const BATCH = Math.min(Number(process.env.BENCH_SCALE_BATCH ?? 1_000), Math.floor(N / 4));
const REVOCATIONS = Number(process.env.BENCH_SCALE_REVOCATIONS ?? 100);
const REVOKE_AFTER_SECONDS = Number(process.env.BENCH_SCALE_REVOKE_AFTER_SECONDS ?? 0);
const PUBLISH_SECONDS = Number(process.env.BENCH_SCALE_PUBLISH_SECONDS ?? 60);
const PUBLISHERS = Math.max(1, Math.round(N * Number(process.env.BENCH_SCALE_PUBLISH_SHARE ?? 0.01)));
const IDLE_SECONDS = Number(process.env.BENCH_SCALE_IDLE_SECONDS ?? 15);
const AFTER_CLOSE_SECONDS = Number(process.env.BENCH_SCALE_AFTER_CLOSE_SECONDS ?? 60);
const KEEPALIVE = Number(process.env.BENCH_SCALE_KEEPALIVE ?? 900);
const MOSQUITTO_MAX = Math.min(N, Number(process.env.BENCH_SCALE_MOSQUITTO_MAX ?? 25_000));
const MINUTES = Number(process.env.BENCH_SCALE_MINUTES ?? 60);

const log = (s: string) => process.stdout.write(`${s}\n`);
/** What the run is doing (the gateway's warnings are counted per phase). */
let phase = 'start';
const wallMs = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mib = (b: number) => fmt(b / 2 ** 20, 0);
const kib = (b: number) => fmt(b / 1024, 1);
const figures: Record<string, unknown> = { devices: N, workers: W, clientProcesses: P, node: process.version };

// Everything started is stopped on the way out, however the run ends.
const children: ChildProcess[] = [];
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => process.exit(130));
setTimeout(() => {
  log(`bench:scale: stopped after ${MINUTES} minutes (BENCH_SCALE_MINUTES) — figures so far:`);
  log(JSON.stringify(figures));
  process.exit(2);
}, MINUTES * 60_000).unref();

type Reply = Record<string, number> & { errors?: Record<string, number> };

/** The load processes: device `i` belongs to process `i % P`, which connects from 127.(10 + that).0.x. */
class Clients {
  readonly #procs: ChildProcess[] = [];
  readonly #waiting = new Map<string, (r: Reply) => void>();
  readonly #cuts = new Map<string, (at: number) => void>();
  #next = 1;

  async start(files: string[]): Promise<void> {
    for (const [k, file] of files.entries()) {
      // On jemalloc when the box has it, purging after 1 s as the provisioning service does.
      const child = fork(join(import.meta.dirname, 'scale-client.ts'), [], {
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        env: { ...process.env, ...allocatorEnv('provision') },
      });
      children.push(child);
      this.#procs.push(child);
      child.on('message', (m: { reply?: number; op?: string; device?: string; at?: number }) => {
        if (m.op === 'cut') this.#cuts.get(m.device!)?.(m.at!);
        else this.#waiting.get(`${k}:${m.reply}`)?.(m as Reply);
      });
      child.on('exit', (code, signal) => {
        if (code !== 0) log(`load process ${k} exited (${code ?? signal})`);
      });
      const ready = this.#ask(k, 0);
      child.send({ op: 'init', file, sourceNet: 10 + k, keepaliveSeconds: KEEPALIVE });
      await ready;
    }
  }

  #ask(k: number, id: number): Promise<Reply> {
    return new Promise((resolve) =>
      this.#waiting.set(`${k}:${id}`, (r) => {
        this.#waiting.delete(`${k}:${id}`);
        resolve(r);
      }),
    );
  }

  /** Sends `cmd` to every process; their answers, summed field by field (errors merged). */
  async all(cmd: Record<string, unknown>): Promise<Reply> {
    const id = this.#next++;
    const replies = await Promise.all(
      this.#procs.map((p, k) => {
        const r = this.#ask(k, id);
        p.send({ ...cmd, id } as ScaleCommand);
        return r;
      }),
    );
    const sum: Reply = {};
    for (const r of replies)
      for (const [key, v] of Object.entries(r)) {
        if (key === 'reply') continue;
        if (key === 'errors') {
          sum.errors ??= {};
          for (const [e, n] of Object.entries(v as Record<string, number>)) sum.errors[e] = (sum.errors[e] ?? 0) + n;
        } else sum[key] = (sum[key] ?? 0) + (v as number);
      }
    return sum;
  }

  /** Resolves with the wall-clock ms at which device `id`'s connection closed (its process tells). */
  watch(index: number, id: string): Promise<number> {
    const p = new Promise<number>((resolve) => this.#cuts.set(id, resolve));
    this.#procs[index % this.#procs.length]!.send({ op: 'watch', device: id } satisfies ScaleCommand);
    return p;
  }
}

/** Runs `work` while logging how many devices are up every 5 s. */
async function withProgress<T>(label: string, clients: Clients, target: number, work: Promise<T>): Promise<T> {
  const t0 = performance.now();
  const timer = setInterval(() => {
    void clients.all({ op: 'stats' }).then((s) => {
      const secs = (performance.now() - t0) / 1000;
      log(
        `  ${label}: ${s.up!.toLocaleString('en-US')} / ${target.toLocaleString('en-US')} up after ${fmt(secs, 0)} s`,
      );
    });
  }, 5_000);
  try {
    return await work;
  } finally {
    clearInterval(timer);
  }
}

/** Every device up (or `deadlineMs` passed): polls the load processes each second. */
async function untilUp(clients: Clients, target: number, deadlineMs: number): Promise<Reply> {
  const end = performance.now() + deadlineMs;
  for (;;) {
    const s = await clients.all({ op: 'stats' });
    if (s.up! >= target || performance.now() > end) return s;
    await sleep(1_000);
  }
}

const fleet = await benchFleet();
log(
  `fleetgate bench:scale — node ${process.version}; ${N.toLocaleString('en-US')} devices, ${W} workers, ${P} load processes, ${INFLIGHT} handshakes in flight; peers: a bare Node TLS server, Mosquitto`,
);

/** N sensors (one shared key), written as one share file per load process. */
async function enrollFleet(): Promise<string[]> {
  const enroller = await sharedKeyEnroller(fleet);
  const ca = readFileSync(fleet.paths.rootCert, 'utf8');
  const shares: ClientShare[] = Array.from({ length: P }, () => ({
    indices: [],
    ids: [],
    certs: [],
    ca,
    key: enroller.keyPem,
  }));
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    const cred = await enroller.enroll(`scale-${i}`);
    const share = shares[i % P]!;
    share.indices.push(i);
    share.ids.push(cred.deviceId);
    share.certs.push(cred.certPem);
    if ((i + 1) % 10_000 === 0)
      log(`  enrolled ${(i + 1).toLocaleString('en-US')} in ${fmt((performance.now() - t0) / 1000, 0)} s`);
  }
  figures.enrollSeconds = (performance.now() - t0) / 1000;
  return shares.map((s, k) => {
    const file = join(fleet.dir, `scale-client-${k}.json`);
    writeFileSync(file, JSON.stringify(s));
    return file;
  });
}

/** 1. The floor: a bare Node TLS server (bench/tls-memory.ts's) holding N/W idle mTLS connections. */
async function floorPhase(clients: Clients): Promise<void> {
  phase = 'floor';
  const n = Math.ceil(N / W);
  const mat = [fleet.paths.serverCert, fleet.paths.serverKey, fleet.paths.rootCert].map((p) => readFileSync(p, 'utf8'));
  const child = fork(join(import.meta.dirname, 'tls-memory.ts'), ['server'], {
    env: { ...process.env, MAT: JSON.stringify(mat) },
    execArgv: ['--expose-gc', ...process.execArgv],
  });
  children.push(child);
  const msg = () =>
    new Promise<{ port: number; rss: number; n: number }>((r) => child.once('message', r as (m: unknown) => void));
  const { port } = await msg();
  child.send('m');
  const r0 = await msg();
  const c = await withProgress(
    'floor',
    clients,
    n,
    clients.all({ op: 'connect', port, mqtt: false, from: 0, to: n, inflight: Math.ceil(INFLIGHT / P) }),
  );
  await sleep(2_000);
  child.send('m');
  const r1 = await msg();
  figures.floor = {
    connections: r1.n,
    failed: c.failed,
    rssBefore: r0.rss,
    rss: r1.rss,
    perConnection: r1.rss / r1.n,
    added: (r1.rss - r0.rss) / r1.n,
  };
  log(
    `1. floor (bare Node TLS, one process): ${r1.n.toLocaleString('en-US')} idle mTLS connections, RSS ${mib(r0.rss)} → ${mib(r1.rss)} MiB: ${kib(r1.rss / r1.n)} KiB per connection in all, ${kib((r1.rss - r0.rss) / r1.n)} KiB added by each`,
  );
  await clients.all({ op: 'drop', from: 0, to: n });
  child.kill();
}

interface Gateway {
  gw: GatewayProcess;
  port: number;
  /** CPU seconds and RSS bytes of every process of the gateway (supervisor, workers, nats-server), and the bus's alone. */
  stat(): { cpu: number; rss: number; busCpu: number; busRss: number; supervisorCpu: number };
  /** Descriptors each worker holds (how close each is to the per-process limit). */
  descriptors(): number[];
  /** Its warning and error lines so far, by kind. */
  logged(): string;
}

const gatewayEnv: Record<string, string> = {};
gatewayEnv.FLEETGATE_LOG_LEVEL = 'warn';
for (const k of ['MQTT', 'WSS', 'HTTPS', 'ADMIN', 'CONSOLE'])
  gatewayEnv[`FLEETGATE_${k}_PORT`] = String(await freePort());

/** `fleetgate gateway --workers W` on the same ports every time (a restart is the same gateway). */
async function startGateway(): Promise<Gateway> {
  const gw = await spawnService(
    'gateway',
    fleet.config.dataDir,
    gatewayEnv,
    undefined,
    W > 1 ? ['--workers', String(W)] : [],
  );
  children.push(gw.child);
  const root = gw.child.pid!;
  // Its warnings and errors (FLEETGATE_LOG_LEVEL=warn), by message: stalls, workers killed at stop.
  const lines = new Map<string, number>();
  let partial = '';
  gw.child.stderr!.on('data', (b: Buffer) => {
    const parts = (partial + b.toString()).split('\n');
    partial = parts.pop() ?? '';
    for (const line of parts) {
      try {
        const j = JSON.parse(line) as { msg?: string; code?: string };
        // By phase and code where it has one (its message names the certificate).
        const key = `${phase}: ${j.code ?? j.msg ?? '?'}`;
        lines.set(key, (lines.get(key) ?? 0) + 1);
      } catch {
        // not a log line
      }
    }
  });
  const isBus = (cmd: string) => cmd.includes('nats-server');
  return {
    gw,
    port: Number(gatewayEnv.FLEETGATE_MQTT_PORT),
    stat: () => {
      const pids = processTree(root);
      const all = treeStat(pids);
      const bus = treeStat(pids, isBus);
      return {
        cpu: all.cpu,
        rss: all.rss,
        busCpu: bus.cpu,
        busRss: bus.rss,
        supervisorCpu: W > 1 ? procStat(root).cpu : 0,
      };
    },
    descriptors: () =>
      processTree(root)
        .slice(1)
        .filter((pid) => !isBus(readFileSync(`/proc/${pid}/cmdline`, 'utf8')))
        .map((pid) => readdirSync(`/proc/${pid}/fd`).length),
    logged: () =>
      [...lines]
        .sort((x, y) => y[1] - x[1])
        .map(([k, n]) => `${n}× ${k}`)
        .join('; ') || 'none',
  };
}

/** Connects devices [from, to) and returns the gateway CPU seconds it took (all its processes). */
async function admit(
  clients: Clients,
  g: Gateway,
  from: number,
  to: number,
  label: string,
): Promise<{ cpu: number; seconds: number; reply: Reply }> {
  const c0 = g.stat().cpu;
  const t0 = performance.now();
  const reply = await withProgress(
    label,
    clients,
    to,
    clients.all({ op: 'connect', port: g.port, mqtt: true, from, to, inflight: Math.ceil(INFLIGHT / P) }),
  );
  return { cpu: g.stat().cpu - c0, seconds: (performance.now() - t0) / 1000, reply };
}

/** 2. From cold to every device connected; CPU per admission at ~BATCH and at N connected; idle CPU; RSS. */
async function rampPhase(clients: Clients, g: Gateway): Promise<void> {
  phase = 'ramp';
  const before = g.stat();
  const t0 = performance.now();
  await admit(clients, g, 0, BATCH, 'warm-up');
  const small = await admit(clients, g, BATCH, 2 * BATCH, `batch at ${BATCH}`);
  const rest = await admit(clients, g, 2 * BATCH, N, 'ramp');
  const seconds = (performance.now() - t0) / 1000;
  const up = (await clients.all({ op: 'stats' })).up!;
  const loaded = g.stat();
  log(
    `2. fleetgate, ${W} workers: ${up.toLocaleString('en-US')} / ${N.toLocaleString('en-US')} connected from cold in ${fmt(seconds, 0)} s (${fmt(up / seconds, 0)}/s; failed ${small.reply.failed! + rest.reply.failed!}), gateway CPU ${fmt(loaded.cpu - before.cpu, 0)} s = ${fmt(((loaded.cpu - before.cpu) / up) * 1000, 2)} ms per admission (bus ${fmt(loaded.busCpu - before.busCpu, 1)} s, supervisor ${fmt(loaded.supervisorCpu - before.supervisorCpu, 1)} s)`,
  );
  // Idle with everyone connected (PINGREQ every keepalive/2 from each device).
  await sleep(5_000);
  const i0 = g.stat();
  await sleep(IDLE_SECONDS * 1_000);
  const i1 = g.stat();
  const idleCores = (i1.cpu - i0.cpu) / IDLE_SECONDS;
  // The same batch again with everyone else connected: drop it, admit it again.
  await clients.all({ op: 'drop', from: N - BATCH, to: N });
  await sleep(2_000);
  phase = 'batch at all';
  const large = await admit(clients, g, N - BATCH, N, `batch at ${N}`);
  const perSmall = small.cpu / BATCH;
  const perLarge = large.cpu / BATCH;
  const perLargeNet = (large.cpu - idleCores * large.seconds) / BATCH;
  const fds = g.descriptors();
  figures.ramp = {
    up,
    seconds,
    cpu: loaded.cpu - before.cpu,
    busCpu: loaded.busCpu - before.busCpu,
    rssBefore: before.rss,
    rss: i1.rss,
    busRss: i1.busRss,
    idleCores,
    perAdmissionSmall: perSmall,
    perAdmissionLarge: perLarge,
    perAdmissionLargeNet: perLargeNet,
    descriptors: fds,
    failed: small.reply.failed! + rest.reply.failed! + large.reply.failed!,
    errors: (await clients.all({ op: 'stats' })).errors,
  };
  log(
    `   RSS (every process) ${mib(before.rss)} → ${mib(i1.rss)} MiB: ${kib(i1.rss / up)} KiB per connection in all, ${kib((i1.rss - before.rss) / up)} KiB added by each (bus ${mib(i1.busRss)} MiB); descriptors per worker ${fds.join(', ')}`,
  );
  log(
    `   idle with ${up.toLocaleString('en-US')} connected: ${fmt(idleCores * 100, 1)} % of a core; CPU per admission: ${fmt(perSmall * 1000, 2)} ms with ${BATCH.toLocaleString('en-US')} connected, ${fmt(perLarge * 1000, 2)} ms with ${(N - BATCH).toLocaleString('en-US')} (${fmt(perLargeNet * 1000, 2)} ms less the idle CPU) = ${fmt(perLarge / perSmall, 2)}× (${fmt(perLargeNet / perSmall, 2)}×)`,
  );
}

/** 3. Revoke → cut with everyone connected, one device at a time, spread over the fleet. */
async function revokePhase(clients: Clients): Promise<number[]> {
  phase = 'revoke';
  // BENCH_SCALE_REVOKE_AFTER_SECONDS: a pause first (the first revocation right after the batch of
  // admissions was the slowest in every run: 47 ms at 1,500 devices, 203 at 34,000, 580–707 at 100,000).
  await sleep(REVOKE_AFTER_SECONDS * 1_000);
  const victims = Array.from({ length: REVOCATIONS }, (_v, k) => Math.floor((k * N) / REVOCATIONS) + 7).filter(
    (i) => i < N - BATCH,
  );
  const cuts: number[] = [];
  for (const i of victims) {
    const id = `scale-${i}`;
    const cut = clients.watch(i, id);
    fleet.registry.revokeDevice(id, 1, 'bench');
    // From the commit (a slow disk on this shared machine is not the gateway's latency) to the device seeing its close.
    const committed = wallMs();
    const at = await Promise.race([cut, sleep(5_000).then(() => Number.NaN)]);
    cuts.push(at - committed);
    await clients.all({ op: 'drop', from: i, to: i + 1 }); // not reconnected after the restart
  }
  const sorted = cuts.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  figures.revoke = {
    revocations: cuts.length,
    cut: sorted.length,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted.at(-1),
    // Every cut in the order revoked (ms): where a slow one fell.
    cuts: cuts.map((c) => Math.round(c * 10) / 10),
  };
  log(
    `3. revoke → cut with ${(N - 1).toLocaleString('en-US')} connected: p50 ${fmt(percentile(sorted, 50), 1)} ms, p90 ${fmt(percentile(sorted, 90), 1)} ms, p99 ${fmt(percentile(sorted, 99), 1)} ms, max ${fmt(sorted.at(-1) ?? Number.NaN, 1)} ms over ${cuts.length} revocations (the slowest: ${cuts
      .map((c, k) => [c, k + 1] as const)
      .sort((x, y) => y[0] - x[0])
      .slice(0, 3)
      .map(([c, k]) => `#${k} ${fmt(c, 0)} ms`)
      .join(', ')})${sorted.length < cuts.length ? ` — ${cuts.length - sorted.length} NOT CUT within 5 s` : ''}`,
  );
  return victims;
}

/** 4. PUBLISHERS devices publish QoS 1 once a second for PUBLISH_SECONDS to one service subscriber. */
async function publishPhase(clients: Clients, g: Gateway, revoked: Set<number>): Promise<void> {
  phase = 'publish';
  const service = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'scale-service', type: 'service' });
  const sub = await mqtt.connectAsync(`mqtts://127.0.0.1:${g.port}`, {
    ca: readFileSync(fleet.paths.rootCert),
    cert: service.certPem,
    key: service.keyPem,
    servername: 'localhost',
    clientId: service.deviceId,
    reconnectPeriod: 0,
    keepalive: 60,
  });
  await sub.subscribeAsync('devices/+/telemetry', { qos: 1 });
  const seen = new Set<string>();
  let arrivals = 0;
  let last = performance.now();
  sub.on('message', (topic, payload) => {
    arrivals++;
    last = performance.now();
    seen.add(`${topic} ${payload}`);
  });
  const c0 = g.stat();
  const t0 = performance.now();
  const sent = await clients.all({ op: 'publish', from: 0, to: PUBLISHERS, seconds: PUBLISH_SECONDS });
  while (seen.size < sent.sent! && performance.now() - last < 10_000) await sleep(250);
  const seconds = (last - t0) / 1000;
  const c1 = g.stat();
  await sub.endAsync();
  const expected = sent.sent!;
  const publishers = PUBLISHERS - [...revoked].filter((i) => i < PUBLISHERS).length;
  figures.publish = {
    publishers,
    sent: expected,
    acked: sent.acked,
    received: seen.size,
    duplicates: arrivals - seen.size,
    seconds,
    cpu: c1.cpu - c0.cpu,
    busCpu: c1.busCpu - c0.busCpu,
  };
  log(
    `4. QoS 1: ${publishers.toLocaleString('en-US')} devices once a second for ${PUBLISH_SECONDS} s: ${expected.toLocaleString('en-US')} sent, ${sent.acked!.toLocaleString('en-US')} PUBACKed, ${seen.size.toLocaleString('en-US')} received by the service (${fmt(seen.size / seconds, 0)}/s; lost ${expected - seen.size}, duplicates ${arrivals - seen.size}); gateway CPU ${fmt(((c1.cpu - c0.cpu) / seen.size) * 1e6, 0)} µs per message with everyone connected (bus ${fmt(((c1.busCpu - c0.busCpu) / seen.size) * 1e6, 0)} µs)`,
  );
}

/** 5. SIGTERM, start again: every device reconnects at once; time and CPU until all are back. */
async function restartPhase(clients: Clients, g: Gateway, expected: number): Promise<Gateway> {
  phase = 'restart';
  await clients.all({ op: 'reconnect', on: true, port: g.port, inflight: Math.ceil(INFLIGHT / P) });
  const stopping = performance.now();
  await g.gw.stop();
  const stopped = performance.now();
  log(`   the first gateway's warnings and errors: ${g.logged()}`);
  const t0 = performance.now();
  const next = await startGateway();
  const ready = performance.now();
  const s = await withProgress('storm', clients, expected, untilUp(clients, expected, 20 * 60_000));
  const seconds = (performance.now() - t0) / 1000;
  const st = next.stat();
  await clients.all({ op: 'reconnect', on: false, port: g.port, inflight: 0 });
  figures.storm = {
    expected,
    up: s.up,
    stopSeconds: (stopped - stopping) / 1000,
    readySeconds: (ready - t0) / 1000,
    seconds,
    cpu: st.cpu,
    busCpu: st.busCpu,
  };
  log(
    `5. restart: SIGTERM drained ${expected.toLocaleString('en-US')} connections in ${fmt((stopped - stopping) / 1000, 1)} s; the new gateway was ready in ${fmt((ready - t0) / 1000, 1)} s and had ${s.up!.toLocaleString('en-US')} / ${expected.toLocaleString('en-US')} back ${fmt(seconds, 0)} s after its start (${fmt(s.up! / seconds, 0)}/s), gateway CPU ${fmt(st.cpu, 0)} s from its start = ${fmt((st.cpu / s.up!) * 1000, 2)} ms per admission (bus ${fmt(st.busCpu, 1)} s)`,
  );
  return next;
}

/** 6. Every connection closed: how much of the memory the gateway gives back. */
async function closePhase(clients: Clients, g: Gateway): Promise<void> {
  phase = 'close';
  const loaded = g.stat().rss;
  await clients.all({ op: 'drop', from: 0, to: N });
  // 15 s (bench:mqtt's point), then AFTER_CLOSE_SECONDS: what comes back once V8 collects the sockets.
  await sleep(15_000);
  const soon = g.stat().rss;
  await sleep(Math.max(0, AFTER_CLOSE_SECONDS - 15) * 1_000);
  const after = g.stat().rss;
  figures.close = { loaded, soon, after, seconds: AFTER_CLOSE_SECONDS };
  const pct = (b: number) => fmt(((loaded - b) / loaded) * 100, 0);
  log(
    `6. every connection closed: gateway RSS ${mib(loaded)} MiB → ${mib(soon)} MiB 15 s later (${pct(soon)} % returned) → ${mib(after)} MiB ${AFTER_CLOSE_SECONDS} s later (${pct(after)} %)`,
  );
}

/** 7. Mosquitto with the same devices and load processes, as far as one process gets. */
async function mosquittoPhase(clients: Clients): Promise<void> {
  const m = await startMosquitto(fleet, await freePort(), true);
  const port = Number(new URL(m.url).port);
  const rss0 = m.rssBytes();
  const c0 = m.cpuSeconds();
  const t0 = performance.now();
  // An attempt that gets no CONNACK in 10 s counts as failed; a process stops after 20 of them.
  const r = await withProgress(
    'mosquitto',
    clients,
    MOSQUITTO_MAX,
    clients.all({
      op: 'connect',
      port,
      mqtt: true,
      from: 0,
      to: MOSQUITTO_MAX,
      inflight: Math.ceil(INFLIGHT / P),
      giveUpAfter: 20,
      timeoutMs: 10_000,
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  await sleep(2_000);
  const up = (await clients.all({ op: 'stats' })).up!;
  const rss = m.rssBytes();
  const cpu = m.cpuSeconds() - c0;
  // Its own log's error and warning lines, by kind (the timestamp cut), the most frequent first.
  const kinds = new Map<string, number>();
  for (const line of m.stderrTail().split('\n')) {
    const text = line.replace(/^\d+: /, '').trim();
    if (/error|warning|unable/i.test(text) && !/run as root/.test(text)) kinds.set(text, (kinds.get(text) ?? 0) + 1);
  }
  const why =
    [...kinds]
      .sort((x, y) => y[1] - x[1])
      .slice(0, 2)
      .map(([text, n]) => `${n}× ${text}`)
      .join('; ') || '(nothing in its log)';
  figures.mosquitto = {
    tried: MOSQUITTO_MAX,
    up,
    failed: r.failed,
    untried: r.untried,
    seconds,
    cpu,
    rssBefore: rss0,
    rss,
    log: why,
  };
  log(
    `7. Mosquitto (one process): ${up.toLocaleString('en-US')} of ${MOSQUITTO_MAX.toLocaleString('en-US')} connected in ${fmt(seconds, 0)} s (${r.failed} failed, ${r.untried} not tried after that); CPU ${fmt((cpu / Math.max(1, up)) * 1000, 2)} ms per admission; RSS ${mib(rss0)} → ${mib(rss)} MiB: ${kib(rss / Math.max(1, up))} KiB per connection in all; its log: ${why.trim()}`,
  );
  await clients.all({ op: 'drop', from: 0, to: N });
  await m.stop();
}

const files = await enrollFleet();
const clients = new Clients();
await clients.start(files);
await floorPhase(clients);
let g = await startGateway();
await rampPhase(clients, g);
const revoked = new Set(await revokePhase(clients));
await publishPhase(clients, g, revoked);
g = await restartPhase(clients, g, N - revoked.size);
await closePhase(clients, g);
await g.gw.stop();
log(`   the restarted gateway's warnings and errors: ${g.logged()}`);
if (MOSQUITTO_MAX > 0) await mosquittoPhase(clients);
const load = await clients.all({ op: 'stats' });
figures.load = { rss: load.rss, cpu: load.cpu };
log(`load processes: ${P}, RSS ${mib(load.rss!)} MiB at the end, CPU ${fmt(load.cpu!, 0)} s in all`);
log(JSON.stringify(figures));
fleet.registry.close();
fleet.cleanup();
process.exit(0);

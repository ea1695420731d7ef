// npm run bench:enroll — durable CSR enrollments per second over HTTPS (JSON API, one-time
// tokens), sequential and with 16 concurrent clients. Keys and CSRs are made in advance so the
// figure is the server's; the service runs in its own process and its CPU is read from /proc.
// BENCH_REGISTRY=postgres: the registry on a PostgreSQL started here (fsync on), and
// BENCH_INSTANCES=N provisioning instances on it, the clients spread over them.
// Loopback only; bounded counts.
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { csrPem, enrollDevice, newKeys } from '../harness/pki.ts';
import { startPostgres } from '../harness/postgres.ts';
import { benchFleet, fmt, percentile, spawnService } from './lib.ts';

const SEQUENTIAL = Number(process.env.BENCH_SEQUENTIAL ?? 300);
const CONCURRENT = Number(process.env.BENCH_CONCURRENT ?? 2_000);
const CLIENTS = 16;

const postgres = process.env.BENCH_REGISTRY === 'postgres' ? await startPostgres({ durable: true }) : undefined;
const INSTANCES = postgres === undefined ? 1 : Number(process.env.BENCH_INSTANCES ?? 1);
const fleet = await benchFleet(postgres?.url);
const log = (s: string) => process.stdout.write(`${s}\n`);
const total = SEQUENTIAL + CONCURRENT;
log(
  `fleetgate bench:enroll — node ${process.version}; registry ${postgres === undefined ? 'SQLite (synchronous=FULL)' : `PostgreSQL (fsync on), ${INSTANCES} provisioning instance(s)`}; ${SEQUENTIAL} sequential + ${CONCURRENT} with ${CLIENTS} clients; preparing ${total} devices, keys and CSRs…`,
);
const tokens: string[] = [];
for (let i = 0; i < total; i++)
  tokens.push(
    fleet.registry.addDevice({ id: `e-${i}`, type: 'sensor' }, 'bench', { tokenTtlMs: 3_600_000 }).token!.token,
  );
const csrs: string[] = [];
for (let i = 0; i < total; i++) csrs.push(await csrPem(await newKeys(), `e-${i}`));
const operator = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'bench-operator', type: 'operator' });
fleet.registry.close();

const services = await Promise.all(
  Array.from({ length: INSTANCES }, () =>
    spawnService('provision', fleet.config.dataDir, {
      FLEETGATE_ENROLL_RATE: '1000000',
      FLEETGATE_LOG_LEVEL: 'warn',
      ...(postgres !== undefined && { FLEETGATE_REGISTRY: postgres.url }),
    }),
  ),
);
const service = services[0]!;
const url = service.endpoints.provision!;
const urls = services.map((s) => s.endpoints.provision!);
const cpu = () => services.reduce((a, s) => a + s.cpuSeconds(), 0);
const agent = new Agent({ keepAlive: true, maxSockets: CLIENTS, ca: readFileSync(fleet.paths.rootCert) });

function enrollOne(i: number): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(
      `${urls[i % urls.length]}/v1/enroll`,
      { method: 'POST', agent, servername: 'localhost', headers: { 'content-type': 'application/json' } },
      (res) => {
        res.resume();
        res.on('end', () =>
          res.statusCode === 201 ? resolve(performance.now() - started) : reject(new Error(`status ${res.statusCode}`)),
        );
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify({ token: tokens[i], csr: csrs[i] }));
  });
}

/** The service's group-commit counters, from its /metrics (operator certificate). */
function groupCommits(): Promise<{ commits: number; changes: number }> {
  return new Promise((resolve, reject) => {
    const req = request(
      `${url}/metrics`,
      {
        servername: 'localhost',
        ca: readFileSync(fleet.paths.rootCert),
        cert: operator.certPem,
        key: operator.keyPem,
        agent: false,
      },
      (res) => {
        let text = '';
        res.on('data', (b: Buffer) => {
          text += b.toString();
        });
        res.on('end', () =>
          resolve({
            commits: Number(/^fleetgate_enroll_commits_total (\d+)/m.exec(text)?.[1] ?? 0),
            changes: Number(/^fleetgate_enroll_committed_total (\d+)/m.exec(text)?.[1] ?? 0),
          }),
        );
      },
    );
    req.on('error', reject);
    req.end();
  });
}

try {
  await enrollOne(0); // warm-up (JIT, TLS session)
  const seen = await groupCommits();
  for (const [name, from, count, clients] of [
    ['sequential', 1, SEQUENTIAL - 1, 1],
    [`${CLIENTS} clients`, SEQUENTIAL, CONCURRENT, CLIENTS],
  ] as const) {
    const latencies: number[] = [];
    const cpu0 = cpu();
    const t0 = performance.now();
    let next = from;
    await Promise.all(
      Array.from({ length: clients }, async () => {
        while (next < from + count) latencies.push(await enrollOne(next++));
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const used = cpu() - cpu0;
    latencies.sort((a, b) => a - b);
    const commits = await groupCommits();
    log(
      `${name.padEnd(12)} ${fmt(count / seconds, 0)} enrollments/s; p50 ${fmt(percentile(latencies, 50), 2)} ms, p99 ${fmt(percentile(latencies, 99), 2)} ms; service CPU ${fmt((used / count) * 1000, 2)} ms per enrollment; ${fmt((commits.changes - seen.changes) / Math.max(1, commits.commits - seen.commits), 1)} enrollments per commit (fsync)`,
    );
    Object.assign(seen, commits);
  }
} finally {
  agent.destroy();
  await Promise.all(services.map((s) => s.stop()));
  await postgres?.destroy();
  fleet.cleanup();
}

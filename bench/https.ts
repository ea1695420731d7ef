// npm run bench:https — the HTTPS plane, gateway in its own process, and nginx beside it in the
// same run (Debian nginx-light; `ssl_verify_client on` with the same CA, server certificate and
// client certificate; `proxy_pass` to the same origin with upstream keep-alive, and `return 200`):
//  1. requests/s and p50/p99 with a new TLS connection per request, and with keep-alive
//  2. server CPU per request (from /proc, every server process counted), proxied to a trivial
//     origin, and fleetgate/nginx ratios (BENCH_NGINX=0 skips nginx; BENCH_PHASES=keepalive,local
//     runs only those of new, newlocal, keepalive, local); with a new connection answered
//     locally, also a bare node:https server with fleetgate's TLS options (bench/node-floor.ts):
//     what any Node server pays per connection before doing its own work
//  3. the gateway's own per-request overhead — status check + assertion mint — in µs, beside
//     the raw P-256 signature (crypto.sign) and jose's SignJWT, all measured in this run.
// Each phase is measured after an unmeasured warm-up on each server (BENCH_WARMUP, 500 requests
// on new connections; BENCH_WARMUP_KEEPALIVE, 8,000, with keep-alive),
// in BENCH_ROUNDS interleaved rounds (3); the median round of each server is its figure.
// Loopback only; bounded counts.

import './unmetered.ts';
import { type ChildProcess, spawn } from 'node:child_process';
import { generateKeyPairSync, sign, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { Agent, request } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { importPKCS8, SignJWT } from 'jose';
import { identityFromCertificate } from '../firmware-sdk/protocol/certificate-identity.ts';
import { AssertionMinter } from '../gateway/https/assertion.ts';
import { StatusChecker } from '../gateway/status/check.ts';
import { enrollDevice } from '../harness/pki.ts';
import { SERVER_NODE_FLAGS } from '../harness/services.ts';
import { allocatorEnv } from '../runtime/allocator.ts';
import { benchFleet, fmt, freePort, percentile, procStat, spawnGateway, untilTlsListening } from './lib.ts';

const NEW_CONN = Number(process.env.BENCH_NEW_CONNECTIONS ?? 600);
const KEEPALIVE = Number(process.env.BENCH_KEEPALIVE ?? 8_000);
const CONCURRENCY = 8;
const WARMUP = Number(process.env.BENCH_WARMUP ?? 500);
/**
 * Keep-alive requests are ~10× cheaper than new connections, and a gateway's cost per keep-alive
 * request keeps falling for its first ~12,000 (measured alone, rounds of 4,000: 332, 260, 235,
 * then ~200 µs; JIT tiers and heap sizing), so their warm-up is one round's worth.
 */
const WARMUP_KEEPALIVE = Number(process.env.BENCH_WARMUP_KEEPALIVE ?? 8_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
/** Which phases to run (comma-separated: new, newlocal, keepalive, local); all by default. */
const PHASES = new Set((process.env.BENCH_PHASES ?? 'new,newlocal,keepalive,local').split(',').map((p) => p.trim()));
const log = (s: string) => process.stdout.write(`${s}\n`);

const origin = createServer((req, res) => {
  req.resume();
  req.on('end', () => res.end('ok'));
});
await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
const fleet = await benchFleet();
mkdirSync(fleet.config.dataDir, { recursive: true });
writeFileSync(
  join(fleet.config.dataDir, 'fleetgate.json'),
  JSON.stringify({
    https: {
      routes: [
        { prefix: '/api', origin: `http://127.0.0.1:${(origin.address() as AddressInfo).port}`, audience: 'urn:bench' },
      ],
    },
  }),
);
const dev = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'bench-cam', type: 'camera' });
fleet.registry.close();
const gw = await spawnGateway(fleet.config.dataDir);
const ca = readFileSync(fleet.paths.rootCert);
const NGINX = process.env.BENCH_NGINX !== '0';
log(
  `fleetgate bench:https — node ${process.version}; ${NEW_CONN} requests on new connections, ${KEEPALIVE} keep-alive (${CONCURRENCY} clients); peer: ${NGINX ? 'nginx' : 'none'}`,
);

/** A server under test: where it answers, and the CPU seconds all its processes used so far. */
interface Server {
  name: string;
  base: string;
  cpuSeconds(): number;
  stop(): Promise<void>;
}

/** nginx with the same CA, server certificate and origin, on a free port; master + 1 worker, both counted. */
async function startNginx(): Promise<Server> {
  const dir = join(fleet.dir, 'nginx');
  mkdirSync(join(dir, 'logs'), { recursive: true });
  const port = await freePort();
  const clientCa = join(dir, 'client-ca.pem');
  writeFileSync(
    clientCa,
    readFileSync(fleet.paths.rootCert, 'utf8') +
      readFileSync(join(fleet.config.dataDir, 'ca', 'intermediate.crt'), 'utf8'),
  );
  const conf = join(dir, 'nginx.conf');
  writeFileSync(
    conf,
    `worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream origin { server 127.0.0.1:${(origin.address() as AddressInfo).port}; keepalive 32; }
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_certificate ${fleet.paths.serverCert};
    ssl_certificate_key ${fleet.paths.serverKey};
    ssl_client_certificate ${clientCa};
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_session_tickets off;
    ssl_session_cache off;
    keepalive_requests 100000;
    location /api/ { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /v1/whoami { return 200 "ok"; }
  }
}
`,
  );
  const child: ChildProcess = spawn('nginx', ['-p', dir, '-c', conf, '-g', 'daemon off;'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => {
    err += b.toString();
  });
  await untilTlsListening(port, child, 'nginx', () => err);
  const pids = () => {
    const f = `/proc/${child.pid}/task/${child.pid}/children`;
    return [
      child.pid!,
      ...(existsSync(f) ? readFileSync(f, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number) : []),
    ];
  };
  return {
    name: 'nginx',
    base: `https://127.0.0.1:${port}`,
    cpuSeconds: () => pids().reduce((n, pid) => n + procStat(pid).cpu, 0),
    stop: () =>
      new Promise((r) => {
        child.once('exit', () => r());
        child.kill('SIGQUIT');
      }),
  };
}

/** bench/node-floor.ts: node:https with fleetgate's TLS options, allocator and flags, answering `200 ok`. */
async function startNodeFloor(): Promise<Server> {
  const child = spawn(
    process.execPath,
    [...SERVER_NODE_FLAGS, join(import.meta.dirname, 'node-floor.ts'), fleet.config.dataDir],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, ...allocatorEnv('gateway', process.env) },
    },
  );
  let port: number | undefined;
  for await (const line of createInterface({ input: child.stdout! })) {
    port = (JSON.parse(line) as { port: number }).port;
    break;
  }
  if (port === undefined) throw new Error('bench/node-floor.ts exited before listening');
  return {
    name: 'bare node',
    base: `https://127.0.0.1:${port}`,
    cpuSeconds: () => procStat(child.pid!).cpu,
    stop: () =>
      new Promise((r) => {
        child.once('exit', () => r());
        child.kill('SIGTERM');
      }),
  };
}

const fleetgate: Server = {
  name: 'fleetgate',
  base: gw.endpoints.https!,
  cpuSeconds: () => gw.cpuSeconds(),
  stop: () => gw.stop(),
};
const nginx = NGINX ? await startNginx() : undefined;
const nodeFloor = PHASES.has('newlocal') ? await startNodeFloor() : undefined;

function get(server: Server, path: string, agent: Agent | false): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    request(
      `${server.base}${path}`,
      { agent, ca, cert: dev.certPem, key: dev.keyPem, servername: 'localhost' },
      (res) => {
        res.resume();
        res.on('end', () =>
          res.statusCode === 200
            ? resolve(performance.now() - started)
            : reject(new Error(`${server.name}: status ${res.statusCode}`)),
        );
      },
    )
      .on('error', reject)
      .end();
  });
}

/** One phase on one server: requests/s, latency, server CPU per request (µs). */
async function phase(
  server: Server,
  name: string,
  count: number,
  clients: number,
  path: string,
  keepAlive: boolean,
): Promise<number> {
  const agent = keepAlive ? new Agent({ keepAlive: true, maxSockets: clients }) : false;
  // Unmeasured warm-up, the same for every server (WARMUP or WARMUP_KEEPALIVE requests): the steady state
  // of a long-running gateway, not V8 compiling its hot path. (A quarter of the phase, as
  // before, was 75 requests with new connections: fleetgate's first rounds then still paid for
  // compiling the connection path, ~2.4–2.8 vs ~1.6 ms.) With keep-alive the measured phase
  // then starts on open connections.
  let warm = 0;
  const warmup = keepAlive ? WARMUP_KEEPALIVE : WARMUP;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (warm++ < warmup) await get(server, path, agent);
    }),
  );
  const latencies: number[] = [];
  const cpu0 = server.cpuSeconds();
  const t0 = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next++ < count) latencies.push(await get(server, path, agent));
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const cpuUs = ((server.cpuSeconds() - cpu0) / count) * 1e6;
  if (agent !== false) agent.destroy();
  latencies.sort((a, b) => a - b);
  log(
    `${`${server.name}: ${name}`.padEnd(46)} ${fmt(count / seconds, 0).padStart(6)} req/s; p50 ${fmt(percentile(latencies, 50), 2)} ms, p99 ${fmt(percentile(latencies, 99), 2)} ms; server CPU ${fmt(cpuUs, 0)} µs/request`,
  );
  return cpuUs;
}

/** The median of `xs` (a copy is sorted). */
const mid = (xs: number[]) =>
  percentile(
    [...xs].sort((a, b) => a - b),
    50,
  );

function median(fn: () => unknown, runs = 5_000): number {
  for (let i = 0; i < 500; i++) fn();
  const t: number[] = [];
  for (let i = 0; i < runs; i++) {
    const s = performance.now();
    fn();
    t.push(performance.now() - s);
  }
  return (
    percentile(
      t.sort((a, b) => a - b),
      50,
    ) * 1000
  );
}

try {
  // Interleaved per phase: fleetgate, then nginx, with the same client and certificate.
  const rows: [string, number, number | undefined, string][] = [];
  /** The new connection answered locally: fleetgate, nginx and the bare node:https server. */
  let floor: { fleetgate: number; nginx: number | undefined; node: number } | undefined;
  for (const [phaseId, name, count, clients, path, keepAlive, target] of [
    ['new', 'new connection per request, proxied', NEW_CONN, 2, '/api/x', false, '≤ 1.0'],
    ['newlocal', 'new connection per request, answered locally', NEW_CONN, 2, '/v1/whoami', false, '—'],
    ['keepalive', 'keep-alive, proxied', KEEPALIVE, CONCURRENCY, '/api/x', true, '≤ 4'],
    ['local', 'keep-alive, answered locally', KEEPALIVE, CONCURRENCY, '/v1/whoami', true, '≤ 3'],
  ] as const) {
    if (!PHASES.has(phaseId)) continue;
    // ROUNDS interleaved rounds (fleetgate, nginx, fleetgate, nginx, …); each server's median
    // round is its figure, so one burst of load from a neighbour moves one round, not the result.
    const fs: number[] = [];
    const ns: number[] = [];
    const bs: number[] = [];
    const floorServer = phaseId === 'newlocal' ? nodeFloor : undefined;
    for (let round = 0; round < ROUNDS; round++) {
      fs.push(await phase(fleetgate, name, count, clients, path, keepAlive));
      if (nginx !== undefined) ns.push(await phase(nginx, name, count, clients, path, keepAlive));
      if (floorServer !== undefined) bs.push(await phase(floorServer, name, count, clients, path, keepAlive));
    }
    rows.push([name, mid(fs), nginx === undefined ? undefined : mid(ns), target]);
    if (floorServer !== undefined)
      floor = { fleetgate: mid(fs), nginx: nginx === undefined ? undefined : mid(ns), node: mid(bs) };
  }
  if (nginx !== undefined) {
    log('');
    log(
      `server CPU per request, median of ${ROUNDS} interleaved rounds (lower is better); ratio = fleetgate / nginx (fleetgate: + status check + JWT; local: /v1/whoami vs \`return 200\`)`,
    );
    log('| work | fleetgate | nginx | ratio | target |');
    log('| --- | --- | --- | --- | --- |');
    for (const [name, f, n, target] of rows)
      log(`| ${name} | ${fmt(f, 0)} µs | ${fmt(n!, 0)} µs | ${fmt(f / n!, 2)}× | ${target} |`);
    log('');
  }
  if (floor !== undefined) {
    log(
      `Node's floor, a new connection answered locally by a bare node:https server with fleetgate's TLS options: ${fmt(floor.node, 0)} µs` +
        `${floor.nginx === undefined ? '' : ` = ${fmt(floor.node / floor.nginx, 2)}× nginx`}; fleetgate's own work on top: ${fmt(floor.fleetgate - floor.node, 0)} µs per connection`,
    );
    log('');
  }

  // The gateway's own per-request work, measured here on the same data and keys.
  const checker = new StatusChecker(fleet.paths.registry);
  const identity = identityFromCertificate(new X509Certificate(dev.certPem));
  const device = checker.status(identity);
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const minter = new AssertionMinter('fleetgate', { kid: 'bench', privateKey });
  const joseKey = await importPKCS8(privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 'ES256');
  // The raw signature: a prepared KeyObject, DER output — the least any ES256 token can cost.
  const signed = Buffer.from('x'.repeat(300));
  const raw = median(() => sign('sha256', signed, privateKey));
  const mint = median(() => minter.mint(device, identity, 'urn:bench', 30_000));
  const check = median(() => checker.status(identity));
  const joseTimes: number[] = [];
  for (let i = 0; i < 3_000; i++) {
    const s = performance.now();
    await new SignJWT({ sub: device.id })
      .setProtectedHeader({ alg: 'ES256', kid: 'bench' })
      .setIssuedAt()
      .setExpirationTime('30s')
      .sign(joseKey);
    joseTimes.push(performance.now() - s);
  }
  const jose =
    percentile(
      joseTimes.slice(500).sort((a, b) => a - b),
      50,
    ) * 1000;
  log(`raw P-256 signature (crypto.sign)    ${fmt(raw, 1)} µs median`);
  log(
    `assertion mint (ours, crypto.sign)    ${fmt(mint, 1)} µs median — ${fmt(mint / raw, 2)}× the raw signature (jose SignJWT: ${fmt(jose, 1)} µs)`,
  );
  log(
    `registry status check (registry thread: a connection's first request, unless remembered)  ${fmt(check, 1)} µs median`,
  );
  log(`per-request overhead (check + mint)   ${fmt(check + mint, 1)} µs`);
  checker.close();
} finally {
  await gw.stop();
  await nginx?.stop();
  await nodeFloor?.stop();
  origin.close();
  fleet.cleanup();
}

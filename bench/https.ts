// npm run bench:https — the HTTPS plane, gateway in its own process:
//  1. requests/s and p50/p99 with a new TLS connection per request, and with keep-alive
//  2. gateway CPU per request (from /proc), proxied to a trivial origin
//  3. the gateway's own per-request overhead — status check + assertion mint — in µs, beside
//     the raw P-256 signature (crypto.sign) and jose's SignJWT, all measured in this run.
// Loopback only; bounded counts.
import { generateKeyPairSync, sign } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { Agent, request } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { importPKCS8, SignJWT } from 'jose';
import { AssertionMinter } from '../gateway/https/assertion.ts';
import { StatusChecker } from '../gateway/status/check.ts';
import { identityFromCertificate } from '../firmware-sdk/protocol/certificate-identity.ts';
import { enrollDevice } from '../harness/pki.ts';
import { X509Certificate } from 'node:crypto';
import { benchFleet, fmt, percentile, spawnGateway } from './lib.ts';

const NEW_CONN = Number(process.env.BENCH_NEW_CONNECTIONS ?? 300);
const KEEPALIVE = Number(process.env.BENCH_KEEPALIVE ?? 4_000);
const CONCURRENCY = 8;
const log = (s: string) => process.stdout.write(`${s}\n`);

const origin = createServer((req, res) => { req.resume(); req.on('end', () => res.end('ok')); });
await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
const fleet = await benchFleet();
mkdirSync(fleet.config.dataDir, { recursive: true });
writeFileSync(join(fleet.config.dataDir, 'fleetgate.json'), JSON.stringify({
  https: { routes: [{ prefix: '/api', origin: `http://127.0.0.1:${(origin.address() as AddressInfo).port}`, audience: 'urn:bench' }] },
}));
const dev = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'bench-cam', type: 'camera' });
fleet.registry.close();
const gw = await spawnGateway(fleet.config.dataDir);
const base = gw.endpoints.https!;
const ca = readFileSync(fleet.paths.rootCert);
log(`fleetgate bench:https — node ${process.version}; ${NEW_CONN} requests on new connections, ${KEEPALIVE} keep-alive (${CONCURRENCY} clients)`);

function get(path: string, agent: Agent | false): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    request(`${base}${path}`, { agent, ca, cert: dev.certPem, key: dev.keyPem, servername: 'localhost' }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve(performance.now() - started) : reject(new Error(`status ${res.statusCode}`))));
    }).on('error', reject).end();
  });
}

async function phase(name: string, count: number, clients: number, path: string, agent: Agent | false): Promise<void> {
  const latencies: number[] = [];
  const cpu0 = gw.cpuSeconds();
  const t0 = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: clients }, async () => {
    while (next++ < count) latencies.push(await get(path, agent));
  }));
  const seconds = (performance.now() - t0) / 1000;
  const cpu = gw.cpuSeconds() - cpu0;
  latencies.sort((a, b) => a - b);
  log(`${name.padEnd(34)} ${fmt(count / seconds, 0).padStart(6)} req/s; p50 ${fmt(percentile(latencies, 50), 2)} ms, p99 ${fmt(percentile(latencies, 99), 2)} ms; gateway CPU ${fmt((cpu / count) * 1e6, 0)} µs/request`);
}

function median(fn: () => unknown, runs = 5_000): number {
  for (let i = 0; i < 500; i++) fn();
  const t: number[] = [];
  for (let i = 0; i < runs; i++) { const s = performance.now(); fn(); t.push(performance.now() - s); }
  return percentile(t.sort((a, b) => a - b), 50) * 1000;
}

try {
  await phase('new connection per request, proxied', NEW_CONN, 2, '/api/x', false);
  const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  await get('/api/x', agent);
  await phase('keep-alive, proxied (check+JWT+proxy)', KEEPALIVE, CONCURRENCY, '/api/x', agent);
  await phase('keep-alive, /v1/whoami (check only)', KEEPALIVE, CONCURRENCY, '/v1/whoami', agent);
  agent.destroy();

  // The gateway's own per-request work, measured here on the same data and keys.
  const checker = new StatusChecker(fleet.paths.registry);
  const identity = identityFromCertificate(new X509Certificate(dev.certPem));
  const device = checker.status(identity);
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const minter = new AssertionMinter('fleetgate', { kid: 'bench', privateKey });
  const joseKey = await importPKCS8(privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 'ES256');
  const raw = median(() => sign('sha256', Buffer.from('x'.repeat(300)), { key: privateKey, dsaEncoding: 'ieee-p1363' }));
  const mint = median(() => minter.mint(device, identity, 'urn:bench', 30_000));
  const check = median(() => checker.status(identity));
  const joseTimes: number[] = [];
  for (let i = 0; i < 3_000; i++) {
    const s = performance.now();
    await new SignJWT({ sub: device.id }).setProtectedHeader({ alg: 'ES256', kid: 'bench' }).setIssuedAt().setExpirationTime('30s').sign(joseKey);
    joseTimes.push(performance.now() - s);
  }
  const jose = percentile(joseTimes.slice(500).sort((a, b) => a - b), 50) * 1000;
  log(`raw P-256 signature (crypto.sign)    ${fmt(raw, 1)} µs median`);
  log(`assertion mint (ours, crypto.sign)    ${fmt(mint, 1)} µs median — ${fmt(mint / raw, 2)}× the raw signature (jose SignJWT: ${fmt(jose, 1)} µs)`);
  log(`status check (registry, per request)  ${fmt(check, 1)} µs median`);
  log(`per-request overhead (check + mint)   ${fmt(check + mint, 1)} µs`);
  checker.close();
} finally {
  await gw.stop();
  origin.close();
  fleet.cleanup();
}

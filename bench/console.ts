// npm run bench:console — the operator console on a 100k-device registry, gateway in its own process:
//  1. latency (p50/p99) of each console page, over keep-alive mTLS with an operator certificate
//  2. whether the console slows the gateway: MQTT connect → CONNACK (each device's first
//     connection, so its status is read from the registry) with the console idle, and again while
//     four clients load the heaviest pages (findings, deep device pages, searches) without pause;
//     printed as p50/p99 and the loaded/idle ratio
//  3. gateway CPU per console page.
// Loopback only; bounded counts.
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import mqtt from 'mqtt';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { seedRegistry } from '../harness/seed.ts';
import { benchFleet, fmt, percentile, spawnGateway } from './lib.ts';

const DEVICES = Number(process.env.BENCH_CONSOLE_DEVICES ?? 100_000);
const PAGE_SAMPLES = Number(process.env.BENCH_CONSOLE_SAMPLES ?? 40);
const CONNECTS = Number(process.env.BENCH_CONSOLE_CONNECTS ?? 150);
const log = (s: string) => process.stdout.write(`${s}\n`);

const fleet = await benchFleet();
const t0 = Date.now();
seedRegistry(fleet.registry, { devices: DEVICES });
log(
  `fleetgate bench:console — node ${process.version}; registry seeded with ${DEVICES} devices in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
);
const operator = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'bench-operator', type: 'operator' });
const devices: Credential[] = [];
for (let i = 0; i < CONNECTS * 2; i++)
  devices.push(await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: `bench-s-${i}` }));
fleet.registry.close();
const gw = await spawnGateway(fleet.config.dataDir);
const ca = readFileSync(fleet.paths.rootCert);
const consoleBase = gw.endpoints.console!;
const agent = new Agent({ keepAlive: true, maxSockets: 8, ca, cert: operator.certPem, key: operator.keyPem });

function get(path: string): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, consoleBase), { agent, servername: 'localhost' }, (res) => {
      res.resume();
      res.on('end', () =>
        res.statusCode === 200 ? resolve(performance.now() - started) : reject(new Error(`${path}: ${res.statusCode}`)),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

const PAGES: [string, string][] = [
  ['overview', '/'],
  ['devices, page 1 (count of 100k)', '/devices'],
  ['devices, deep page', '/devices?after=dev-090000'],
  ['devices, fleet + type + status', '/devices?fleet=f-3&type=camera&status=active'],
  ['devices, id prefix', '/devices?q=dev-0123'],
  ['device page', '/devices/dev-012345'],
  ['certificates expiring', '/certificates'],
  ['findings (scans 100k certificates)', '/certificates?view=findings'],
  ['audit log', '/audit'],
];

log('\n1. console page latency (keep-alive mTLS, one request at a time)');
log('page                                   p50 ms   p99 ms');
const cpuBefore = gw.cpuSeconds();
let requests = 0;
for (const [name, path] of PAGES) {
  await get(path); // warm: statements prepared, caches filled
  const ms: number[] = [];
  for (let i = 0; i < PAGE_SAMPLES; i++) ms.push(await get(path));
  requests += PAGE_SAMPLES + 1;
  ms.sort((a, b) => a - b);
  log(`${name.padEnd(38)} ${fmt(percentile(ms, 50), 2).padStart(7)}  ${fmt(percentile(ms, 99), 2).padStart(7)}`);
}
log(
  `gateway CPU per console page (mean over all pages above): ${fmt(((gw.cpuSeconds() - cpuBefore) / requests) * 1000, 2)} ms`,
);

async function connectTimes(creds: Credential[]): Promise<number[]> {
  const times: number[] = [];
  for (const c of creds) {
    const started = performance.now();
    const client = await mqtt.connectAsync(
      gw.endpoints['mqtt+tls']!,
      {
        ca,
        cert: c.certPem,
        key: c.keyPem,
        clientId: c.deviceId,
        protocolVersion: 5,
        reconnectPeriod: 0,
        connectTimeout: 15_000,
        servername: 'localhost',
      },
      false,
    );
    times.push(performance.now() - started);
    await client.endAsync();
  }
  return times.sort((a, b) => a - b);
}

log(`\n2. MQTT connect → CONNACK, ${CONNECTS} first connections each (status read from the registry)`);
const idle = await connectTimes(devices.slice(0, CONNECTS));
let loading = true;
let loadRequests = 0;
const heavy = ['/certificates?view=findings', '/devices', '/devices?q=dev-05', '/devices?after=dev-070000&fleet=f-1'];
const loaders = Array.from({ length: 4 }, async (_, i) => {
  while (loading) {
    await get(heavy[(i + loadRequests) % heavy.length]!);
    loadRequests++;
  }
});
const loaded = await connectTimes(devices.slice(CONNECTS));
loading = false;
await Promise.all(loaders);
log('console            p50 ms   p99 ms');
log(`idle              ${fmt(percentile(idle, 50), 2).padStart(7)}  ${fmt(percentile(idle, 99), 2).padStart(7)}`);
log(
  `4 clients loading ${fmt(percentile(loaded, 50), 2).padStart(7)}  ${fmt(percentile(loaded, 99), 2).padStart(7)}   (${loadRequests} console pages served meanwhile)`,
);
log(
  `loaded / idle: p50 ${fmt(percentile(loaded, 50) / percentile(idle, 50), 2)}×, p99 ${fmt(percentile(loaded, 99) / percentile(idle, 99), 2)}×`,
);
log(
  '(the console queries run on their own registry thread; what remains is the shared 2-core machine and the TLS work of the console requests)',
);

agent.destroy();
await gw.stop();
fleet.cleanup();

// npm run bench:mqtt — the MQTT plane measured from outside, the gateway in its own process:
//  1. full mTLS handshakes to CONNACK per second (and server CPU per connect, p50/p99 latency)
//  2. QoS 0 and QoS 1 messages per second through the gateway, 10 publishers → 1 service subscriber,
//     with server CPU per message and loss (QoS 1 must lose nothing)
//  3. revoke → live disconnect latency, p50/p99 over N revocations written by this (another) process
// Loopback only, every loop bounded in count. Figures go to stdout; the README records them.
import { readFileSync } from 'node:fs';
import mqtt, { type MqttClient } from 'mqtt';
import { createSecureContext } from 'node:tls';
import { enrollDevice, type Credential } from '../harness/pki.ts';
import { benchFleet, fmt, percentile, spawnGateway } from './lib.ts';

const CONNECTS = Number(process.env.BENCH_CONNECTS ?? 400);
const CONNECT_CONCURRENCY = 4;
const PUBLISHERS = 10;
const MESSAGES = Number(process.env.BENCH_MESSAGES ?? 2_000); // per publisher per QoS
const REVOCATIONS = Number(process.env.BENCH_REVOCATIONS ?? 60);

const fleet = await benchFleet();
const log = (s: string) => process.stdout.write(`${s}\n`);
log(`fleetgate bench:mqtt — node ${process.version}, ${CONNECTS} connects, ${PUBLISHERS}×${MESSAGES} messages per QoS, ${REVOCATIONS} revocations`);

const devices: Credential[] = [];
for (let i = 0; i < Math.max(PUBLISHERS, REVOCATIONS, CONNECT_CONCURRENCY); i++) devices.push(await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: `bench-${i}` }));
const service = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'bench-svc', type: 'service' });
const ca = readFileSync(fleet.paths.rootCert);
const gw = await spawnGateway(fleet.config.dataDir);
const url = gw.endpoints['mqtt+tls']!;

function open(cred: Credential): Promise<MqttClient> {
  // One prebuilt secure context per credential: the client's PEM parsing is not what we measure.
  return mqtt.connectAsync(url, {
    secureContext: contexts.get(cred) ?? contexts.set(cred, createSecureContext({ ca, cert: cred.certPem, key: cred.keyPem })).get(cred)!,
    clientId: cred.deviceId, protocolVersion: 4, reconnectPeriod: 0, keepalive: 60, connectTimeout: 10_000, servername: 'localhost',
  } as mqtt.IClientOptions, false);
}
const contexts = new Map<Credential, ReturnType<typeof createSecureContext>>();

try {
  // 1. Connects.
  const latencies: number[] = [];
  let cpu0 = gw.cpuSeconds();
  let t0 = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: CONNECT_CONCURRENCY }, async (_, lane) => {
    while (next < CONNECTS) {
      next++;
      const started = performance.now();
      const client = await open(devices[lane]!);
      latencies.push(performance.now() - started);
      await client.endAsync(true);
    }
  }));
  let seconds = (performance.now() - t0) / 1000;
  let cpu = gw.cpuSeconds() - cpu0;
  latencies.sort((a, b) => a - b);
  log(`connects      ${fmt(CONNECTS / seconds, 0)}/s (concurrency ${CONNECT_CONCURRENCY}); connect→CONNACK p50 ${fmt(percentile(latencies, 50), 2)} ms, p99 ${fmt(percentile(latencies, 99), 2)} ms; gateway CPU ${fmt((cpu / CONNECTS) * 1000, 2)} ms per connect`);

  // 2. Messages.
  const sub = await open(service);
  const publishers = await Promise.all(devices.slice(0, PUBLISHERS).map(open));
  for (const qos of [0, 1] as const) {
    const topic = `q${qos}`;
    await sub.subscribeAsync(`devices/+/${topic}`, { qos });
    const seen = new Map<string, Set<number>>();
    let received = 0;
    const total = PUBLISHERS * MESSAGES;
    const done = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 60_000);
      sub.on('message', (t, payload) => {
        if (!t.endsWith(`/${topic}`)) return;
        const [dev, n] = [t.split('/')[1]!, Number(payload.toString())];
        let s = seen.get(dev);
        if (s === undefined) seen.set(dev, (s = new Set()));
        if (!s.has(n)) { s.add(n); received++; }
        if (received === total) { clearTimeout(timer); resolve(); }
      });
    });
    cpu0 = gw.cpuSeconds();
    t0 = performance.now();
    await Promise.all(publishers.map(async (p, i) => {
      for (let n = 0; n < MESSAGES; n++) {
        if (qos === 1) await p.publishAsync(`devices/bench-${i}/${topic}`, String(n), { qos });
        else p.publish(`devices/bench-${i}/${topic}`, String(n), { qos });
      }
    }));
    await done;
    seconds = (performance.now() - t0) / 1000;
    cpu = gw.cpuSeconds() - cpu0;
    sub.removeAllListeners('message');
    log(`QoS ${qos}         ${fmt(received / seconds, 0)} msg/s delivered; ${received}/${total} received (loss ${fmt((1 - received / total) * 100, 2)} %); gateway CPU ${fmt((cpu / total) * 1e6, 1)} µs per message`);
  }
  await Promise.all([sub, ...publishers].map((c) => c.endAsync(true)));

  // 3. Revoke → disconnect.
  const victims = await Promise.all(devices.slice(0, REVOCATIONS).map(open));
  const cuts: number[] = [];
  for (const [i, client] of victims.entries()) {
    const closed = new Promise<number>((resolve) => client.once('close', () => resolve(performance.now())));
    const committed = performance.now();
    fleet.registry.revokeDevice(devices[i]!.deviceId, 1, 'bench');
    const at = await Promise.race([closed, new Promise<number>((r) => setTimeout(() => r(Number.NaN), 5_000))]);
    cuts.push(at - committed);
  }
  const missed = cuts.filter(Number.isNaN).length;
  const sorted = cuts.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  log(`revoke→cut    p50 ${fmt(percentile(sorted, 50), 1)} ms, p99 ${fmt(percentile(sorted, 99), 1)} ms, max ${fmt(sorted.at(-1) ?? Number.NaN, 1)} ms over ${cuts.length} revocations${missed > 0 ? `; ${missed} NOT CUT within 5 s` : ''}`);
  log(`gateway RSS   ${fmt(gw.rssBytes() / 2 ** 20, 1)} MiB at the end`);
} finally {
  await gw.stop();
  fleet.registry.close();
  fleet.cleanup();
}

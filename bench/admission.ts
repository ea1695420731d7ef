// npm run bench:admission — a reconnect storm: N devices never seen by the gateway connect at
// once (64 at a time), each admission asking the registry (nothing remembered yet), first with the
// registry in SQLite, then in a PostgreSQL started here (fsync on). Prints admitted connections per
// second, refusals, and the gateway's CPU per connect. Loopback only; bounded counts.
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import mqtt from 'mqtt';
import { csrPem, keyPem, newKeys } from '../harness/pki.ts';
import { postgresBin, startPostgres } from '../harness/postgres.ts';
import { enroll } from '../provisioning/enroll/pipeline.ts';
import { benchFleet, spawnService } from './lib.ts';

const N = Number(process.env.BENCH_DEVICES ?? 3_000);
const LANES = 64;
if (postgresBin() === undefined) {
  process.stdout.write('bench:admission needs PostgreSQL (Debian: apt-get install postgresql)\n');
  process.exit(2);
}
const pgs = await startPostgres({ durable: true });
for (const reg of [undefined, pgs.url]) {
  const fleet = await benchFleet(reg);
  const keys = await newKeys();
  const csr = await csrPem(keys, 'x');
  const sharedKeyPem = await keyPem(keys);
  const ca = readFileSync(fleet.paths.rootCert);
  const ctx: ReturnType<typeof createSecureContext>[] = [];
  fleet.registry.sql
    .transaction(() => {
      for (let i = 0; i < N; i++) fleet.registry.addDevice({ id: `s-${i}`, type: 'sensor' }, 'bench');
    })
    .immediate();
  const certs: string[] = [];
  for (let i = 0; i < N; i++) {
    const r = await enroll(
      { registry: fleet.registry, ca: fleet.ca, defaultValidityMs: 86_400_000 },
      { csr, auth: { method: 'operator', deviceId: `s-${i}` }, actor: 'bench' },
    );
    certs.push(r.certificate + r.chain);
  }
  for (let i = 0; i < N; i++) ctx.push(createSecureContext({ ca, cert: certs[i], key: sharedKeyPem }));
  const gw = await spawnService('gateway', fleet.config.dataDir, {
    ...(reg && { FLEETGATE_REGISTRY: reg }),
    FLEETGATE_MQTT_DURABILITY: 'memory',
  });
  let next = 0,
    ok = 0,
    refused = 0;
  const clients: mqtt.MqttClient[] = [];
  const c0 = gw.cpuSeconds();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: LANES }, async () => {
      while (next < N) {
        const i = next++;
        const options = {
          secureContext: ctx[i],
          clientId: `s-${i}`,
          protocolVersion: 4,
          reconnectPeriod: 0,
          keepalive: 600,
          servername: 'localhost',
          connectTimeout: 30_000,
        } as mqtt.IClientOptions;
        try {
          clients.push(await mqtt.connectAsync(gw.endpoints['mqtt+tls']!, options, false));
          ok++;
        } catch {
          refused++;
        }
      }
    }),
  );
  const s = (performance.now() - t0) / 1000;
  process.stdout.write(
    `${reg ? 'PostgreSQL' : 'SQLite'}: ${N} first connects (${LANES} at once): ${(ok / s).toFixed(0)}/s admitted, ${refused} refused; gateway CPU ${(((gw.cpuSeconds() - c0) / N) * 1000).toFixed(2)} ms per connect\n`,
  );
  await Promise.all(clients.map((c) => c.endAsync(true)));
  await gw.stop();
  fleet.registry.close();
  fleet.cleanup();
}
await pgs.destroy();

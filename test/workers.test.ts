// Issue #29: `fleetgate gateway --workers 2` — two gateway processes share each device listener's
// port (SO_REUSEPORT) as nodes of one cluster on a local nats-server the supervisor starts (mTLS,
// node certificates from the fleet's CA). Whichever worker each connection lands on: a device's
// persistent session follows it, a service's subscription hears every device, a second connection
// takes over the first, an operator's kick (through the supervisor's admin listener) and a
// revocation cut the device. A worker killed is started again; the supervisor killed (SIGKILL)
// leaves nothing serving.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { type TestContext, test } from 'node:test';
import type { MqttClient } from 'mqtt';
import { https } from '../harness/https.ts';
import { closed, collect, connect, end, until } from '../harness/mqtt.ts';
import { natsAvailable } from '../harness/nats.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fleetgateOk } from '../harness/run.ts';
import { accepts, benchFleet, spawnService, stablePort } from '../harness/services.ts';

if (!natsAvailable() && process.env.CI === 'true')
  throw new Error("nats-server is missing: .ci/run installs Debian's nats-server (--workers runs one)");
const skip = natsAvailable() ? false : 'no nats-server (apt-get install nats-server)';

interface Health {
  status: string;
  workers: { worker: string; pid: number; status: string; restarts: number }[];
}

/** A fleet in a temp dir and `fleetgate gateway --workers 2` on it (ports from `env`); both gone after the test. */
async function twoWorkers(t: TestContext, env: Record<string, string>) {
  const fleet = await benchFleet();
  t.after(() => {
    fleet.registry.close();
    fleet.cleanup();
  });
  const gw = await spawnService('gateway', fleet.config.dataDir, env, undefined, ['--workers', '2']);
  t.after(() => {
    if (gw.child.exitCode === null && gw.child.signalCode === null) gw.child.kill('SIGKILL');
  });
  return { fleet, gw };
}

test('workers/two gateway workers on one port: sessions, subscriptions, takeover, kick and revocation across them; a dead worker restarted; SIGKILL of the supervisor leaves nothing', {
  skip,
  timeout: 240_000,
}, async (t) => {
  const ports = {
    FLEETGATE_MQTT_PORT: String(await stablePort()),
    FLEETGATE_WSS_PORT: String(await stablePort()),
    FLEETGATE_HTTPS_PORT: String(await stablePort()),
    FLEETGATE_ADMIN_PORT: String(await stablePort()),
    FLEETGATE_CONSOLE_PORT: String(await stablePort()),
  };
  const { fleet, gw } = await twoWorkers(t, ports);
  const { dir, config, registry, ca } = fleet;
  const url = gw.endpoints['mqtt+tls'] as string;
  const admin = `https://127.0.0.1:${ports.FLEETGATE_ADMIN_PORT}`;
  const rootPem = readFileSync(fleet.paths.rootCert);
  const health = async () => (await https(`${admin}/healthz`, { ca: rootPem })).json<Health>();
  const h0 = await health();
  assert.equal(h0.status, 'ok');
  assert.equal(h0.workers.length, 2);

  const clients: MqttClient[] = [];
  t.after(() => end(...clients));
  const open = async (cred: Credential, clean = true) => {
    const c = await connect(url, cred, { ca: fleet.paths.rootCert, clean });
    clients.push(c);
    return c;
  };

  // 1. Sixteen devices and a service: the connections spread over both workers (the kernel hashes
  //    each one: all sixteen on one worker would be a 1-in-32,768 chance), and the service hears
  //    every device's telemetry whichever worker either is on.
  const svcCred = await enrollDevice(registry, ca, dir, { id: 'wk-svc', type: 'service' });
  const svc = await open(svcCred);
  const telemetry = collect(svc, 'devices/');
  await svc.subscribeAsync('devices/+/telemetry', { qos: 1 });
  const devices = await Promise.all(
    Array.from({ length: 16 }, (_, i) => enrollDevice(registry, ca, dir, { id: `wk-d${i}` })),
  );
  const deviceClients = await Promise.all(devices.map((d) => open(d)));
  const metrics = (await https(`${admin}/metrics`, { ca: rootPem })).body;
  const perWorker = h0.workers.map((w) => {
    const re = new RegExp(`^fleetgate_connected_clients\\{worker="${w.worker}",[^}]*\\} (\\d+)`, 'gm');
    return [...metrics.matchAll(re)].reduce((n, m) => n + Number(m[1]), 0);
  });
  assert.ok(
    perWorker.every((n) => n > 0),
    `connections on both workers: ${perWorker.join(' / ')}`,
  );
  // Each worker hears the other's interest (what it listens on): it sends the bus only that.
  await until('each worker knowing the other', async () => {
    const m = (await https(`${admin}/metrics`, { ca: rootPem })).body;
    return (m.match(/^fleetgate_cluster_interest\{[^}]*what="peers"\} 1$/gm) ?? []).length === 2;
  });
  await Promise.all(deviceClients.map((c, i) => c.publishAsync(`devices/wk-d${i}/telemetry`, `t-${i}`, { qos: 1 })));
  await until('every device heard by the service', () => new Set(telemetry).size === 16, 20_000);

  // 2. A persistent session follows its device: subscribed, offline while commands are queued,
  //    resumed (three times, each connection landing where the kernel puts it) with everything.
  const dev = await enrollDevice(registry, ca, dir, { id: 'wk-dev' });
  for (let round = 0; round < 3; round++) {
    const c = await open(dev, false);
    if (round === 0) await c.subscribeAsync('devices/wk-dev/commands/#', { qos: 1 });
    await c.endAsync();
    for (let i = 0; i < 5; i++) await svc.publishAsync('devices/wk-dev/commands/x', `r${round}-${i}`, { qos: 1 });
    const back = await open(dev, false);
    const got = collect(back, 'devices/wk-dev/');
    await until(`round ${round}: the five queued commands`, () => got.length >= 5, 20_000);
    assert.deepEqual(
      [...new Set(got)],
      Array.from({ length: 5 }, (_, i) => `r${round}-${i}`),
    );
    await back.endAsync();
  }

  // 3. Takeover: a second connection of the same device closes the first, wherever each landed.
  for (let i = 0; i < 4; i++) {
    const first = await open(dev);
    const cut = closed(first);
    await open(dev);
    await cut;
  }

  // 4. An operator's kick through the supervisor's admin listener (passed to a worker, the
  //    operator's certificate with it; the cluster closes the device wherever it is).
  const kicked = deviceClients[3] as MqttClient;
  const kickCut = closed(kicked);
  const kick = JSON.parse(
    await fleetgateOk(['kick', 'wk-d3', '--json', '--admin', admin, '--data', config.dataDir]),
  ) as { closed: number };
  assert.equal(kick.closed, 1);
  await kickCut;
  const noCert = await https(`${admin}/v1/connections`, { ca: rootPem });
  assert.equal(noCert.status, 401, 'without an operator certificate the worker refuses what the supervisor passes on');

  // 5. Revocation cuts the live connection, whichever worker holds it.
  const revoked = deviceClients[5] as MqttClient;
  const revokeCut = closed(revoked);
  registry.revokeDevice('wk-d5', 1, 'test');
  await revokeCut;

  // 6. A worker killed is started again; the box serves meanwhile and after.
  const victim = h0.workers[0]!;
  process.kill(victim.pid, 'SIGKILL');
  await until(
    'the killed worker started again and ready',
    async () => {
      const h = await health().catch(() => undefined);
      return h?.status === 'ok' && (h.workers[0]?.restarts ?? 0) === 1;
    },
    60_000,
    250,
  );
  // (The service, too, may have been on the worker killed: connected again.)
  const svcAgain = await open(svcCred);
  const heard = collect(svcAgain, 'devices/');
  await svcAgain.subscribeAsync('devices/+/telemetry', { qos: 1 });
  const after = await open(devices[7] as Credential);
  await after.publishAsync('devices/wk-d7/telemetry', 'after-restart', { qos: 1 });
  await until('the service hears a device after the restart', () => heard.includes('after-restart'), 20_000);

  // 7. SIGKILL of the supervisor: its workers and the local bus stop; the ports go unserved.
  const pids = (await health()).workers.map((w) => w.pid);
  await end(...clients);
  gw.child.kill('SIGKILL');
  await until(
    'the workers gone and the MQTT port unserved',
    async () =>
      pids.every((pid) => {
        try {
          process.kill(pid, 0);
          return false;
        } catch {
          return true;
        }
      }) && !(await accepts(Number(ports.FLEETGATE_MQTT_PORT))),
    60_000,
    250,
  );
  const bus = readFileSync(`${config.dataDir}/workers/nats.conf`, 'utf8').match(/listen: "127\.0\.0\.1:(\d+)"/)?.[1];
  assert.ok(bus !== undefined);
  await until('the local bus gone', async () => !(await accepts(Number(bus))), 30_000, 250);
});

test('workers/SIGTERM of the supervisor drains every worker and exits 0: no worker waits for the SIGKILL', {
  skip,
  timeout: 120_000,
}, async (t) => {
  const { fleet, gw } = await twoWorkers(t, { FLEETGATE_MQTT_PORT: String(await stablePort()) });
  let stderr = '';
  gw.child.stderr!.on('data', (b: Buffer) => {
    stderr += b.toString();
  });
  const cred = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'wk-drain' });
  const device = await connect(gw.endpoints['mqtt+tls'] as string, cred, { ca: fleet.paths.rootCert });
  t.after(() => end(device));
  const deviceClosed = closed(device, 60_000);
  const exited = new Promise<number | null>((r) => gw.child.once('exit', (code) => r(code)));
  gw.child.kill('SIGTERM');
  await deviceClosed;
  // A drained worker used to stay alive on its IPC channel until the supervisor killed it, 30 s on.
  assert.equal(await exited, 0, stderr);
  assert.doesNotMatch(stderr, /did not stop/);
});

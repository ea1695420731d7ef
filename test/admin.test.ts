// Issue #4 operations: /healthz and /metrics on the admin listener; `fleetgate connections`
// and `fleetgate kick` through the admin API with the CLI's operator certificate.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { test } from 'node:test';
import { auditRows, startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { closed, connect, end } from '../harness/mqtt.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { errorCode, fleetgate, fleetgateOk } from '../harness/run.ts';

function get(fleet: TestFleet, path: string, cred?: Credential): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: fleet.gateway.ports.admin,
        path,
        servername: 'localhost',
        ca: readFileSync(fleet.rootFile),
        ...(cred && { cert: cred.certPem, key: cred.keyPem }),
      },
      (res) => {
        let body = '';
        res.on('data', (b: Buffer) => {
          body += b.toString();
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

test('admin/healthz and Prometheus metrics', async (t) => {
  const fleet = await startTestFleet(t);
  const dev = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'm-1' });
  const client = await connect(fleet.mqttsUrl, dev, { ca: fleet.rootFile });
  await client.publishAsync('devices/m-1/x', 'y', { qos: 1 });
  const health = await get(fleet, '/healthz');
  assert.equal(health.status, 200);
  assert.equal((JSON.parse(health.body) as { status: string }).status, 'ok');
  const metrics = (await get(fleet, '/metrics')).body;
  assert.match(metrics, /fleetgate_handshakes_total\{transport="mqtts",outcome="admitted",code="OK"\} 1/);
  assert.match(metrics, /fleetgate_connected_clients\{type="sensor",transport="mqtts"\} 1/);
  assert.match(metrics, /fleetgate_messages_in_total\{qos="1"\} 1/);
  assert.match(metrics, /fleetgate_status_check_seconds_count 1/);
  await end(client);
});

test('admin/the session API needs an operator certificate', async (t) => {
  const fleet = await startTestFleet(t);
  const sensor = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 's-1' });
  const none = await get(fleet, '/v1/connections');
  assert.equal(none.status, 401);
  assert.equal((JSON.parse(none.body) as { error: { code: string } }).error.code, 'CERT_REQUIRED');
  const notOperator = await get(fleet, '/v1/connections', sensor);
  assert.equal(notOperator.status, 403);
  assert.equal((JSON.parse(notOperator.body) as { error: { code: string } }).error.code, 'NOT_AUTHORIZED');
});

test('admin/fleetgate connections lists live sessions; fleetgate kick closes them', async (t) => {
  const fleet = await startTestFleet(t);
  const dev = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'k-1' });
  const client = await connect(fleet.wssUrl, dev, { ca: fleet.rootFile });
  t.after(() => end(client));
  const admin = ['--admin', `https://127.0.0.1:${fleet.gateway.ports.admin}`, '--data', fleet.config.dataDir];
  const list = JSON.parse(await fleetgateOk(['connections', '--json', ...admin])) as {
    deviceId: string;
    transport: string;
  }[];
  assert.deepEqual(
    list.map((c) => [c.deviceId, c.transport]),
    [['k-1', 'wss']],
  );
  const human = await fleetgateOk(['connections', ...admin]);
  assert.match(human, /k-1\s+sensor\s+wss/);
  const cut = closed(client);
  const kicked = JSON.parse(await fleetgateOk(['kick', 'k-1', '--json', ...admin])) as { closed: number };
  assert.equal(kicked.closed, 1);
  await cut;
  const [audit] = await auditRows(fleet.registry, (a) => a.action === 'session.disconnect' && a.subject === 'k-1');
  assert.equal(audit?.detail.reason, 'disconnected by operator');
  const down = await fleetgate([
    'connections',
    '--json',
    '--admin',
    'https://127.0.0.1:1',
    '--data',
    fleet.config.dataDir,
  ]);
  assert.equal(errorCode(down), 'ORIGIN_UNREACHABLE');
});

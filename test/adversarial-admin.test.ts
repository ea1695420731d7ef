// Issue #10 §4 and §5 on the admin listener: the same admission path as every other listener
// (operator certificates only for /v1), the same public error bodies (no "x is a sensor"),
// our 404, odd device ids in the kick path, and the listener stays up.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { type HttpResult, https } from '../harness/https.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope } from '../harness/run.ts';

const scope = fileScope(after);
let fleet: TestFleet;
let ca: Buffer;
const c: Record<string, Credential> = {};

before(async () => {
  fleet = await startTestFleet(scope);
  ca = readFileSync(fleet.rootFile);
  c.sensor = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 's-a' });
  c.operator = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'ops-1', type: 'operator' });
  c.retired = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'ops-2', type: 'operator' });
  fleet.registry.revokeDevice('ops-2', 5, 'test');
});

const admin = (path: string, cred?: Credential, method = 'GET') =>
  https(`https://127.0.0.1:${fleet.gateway.ports.admin}${path}`, { ca, method, ...(cred && { cred }) });
const body = (r: HttpResult) => r.json<{ error?: { code: string; message: string } }>();

test('admin/who may use /v1: nobody without a certificate, no device, no revoked operator; bodies say only the public message', async () => {
  const none = await admin('/v1/connections');
  assert.deepEqual([none.status, body(none).error?.code], [401, 'CERT_REQUIRED']);
  const sensor = await admin('/v1/connections', c.sensor);
  assert.deepEqual([sensor.status, body(sensor).error], [403, { code: 'NOT_AUTHORIZED', message: 'not authorized' }]);
  assert.doesNotMatch(sensor.body, /s-a|sensor/);
  const retired = await admin('/v1/connections', c.retired);
  assert.deepEqual([retired.status, body(retired).error?.code], [403, 'CERT_REVOKED']);
  const ok = await admin('/v1/connections', c.operator);
  assert.equal(ok.status, 200);
});

test("admin/an unknown path answers with our error body, not the framework's", async () => {
  const r = await admin('/nowhere/../etc/passwd');
  assert.deepEqual([r.status, body(r).error], [404, { code: 'ROUTE_NOT_FOUND', message: 'no such route' }]);
});

test('admin/odd device ids in the kick path are handled, and the listener stays up', async () => {
  for (const id of ['%2e%2e', 'x'.repeat(2_000), '%00', 'a%2fb', '__proto__']) {
    const r = await admin(`/v1/connections/${id}`, c.operator, 'DELETE');
    assert.ok(r.status === 200 || r.status === 400 || r.status === 404, `${id.slice(0, 20)} → ${r.status}`);
    if (r.status === 200) assert.equal(r.json<{ closed: number }>().closed, 0);
    else assert.ok(body(r).error?.code !== 'INTERNAL');
  }
  const health = await admin('/healthz');
  assert.equal(health.status, 200);
});

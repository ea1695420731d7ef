// Provisioning's /metrics: operator and auditor certificates only (none: 401, a device: 403);
// enrollments by method and code, and the group commits that recorded them.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { startTestProvisioning } from '../harness/gateway.ts';
import { https } from '../harness/https.ts';
import { csrPem, enrollDevice, newKeys } from '../harness/pki.ts';

test('provisioning metrics/answer operator and auditor certificates only, and count group commits', async (t) => {
  const svc = await startTestProvisioning(t);
  const ca = readFileSync(svc.rootFile);
  const auditor = await enrollDevice(svc.registry, svc.ca, svc.dir, { id: 'aud-1', type: 'auditor' });
  const sensor = await enrollDevice(svc.registry, svc.ca, svc.dir, { id: 'sen-1' });
  assert.equal((await https(`${svc.url}/metrics`, { ca })).status, 401);
  assert.equal((await https(`${svc.url}/metrics`, { ca, cred: sensor })).status, 403);
  const token = svc.registry.addDevice({ id: 'enr-1', type: 'sensor' }, 'test', { tokenTtlMs: 60_000 }).token!.token;
  assert.equal(
    (
      await https(`${svc.url}/v1/enroll`, {
        ca,
        body: JSON.stringify({ token, csr: await csrPem(await newKeys(), 'enr-1') }),
      })
    ).status,
    201,
  );
  const r = await https(`${svc.url}/metrics`, { ca, cred: auditor });
  assert.equal(r.status, 200);
  assert.match(r.body, /^fleetgate_enrollments_total\{method="token",code="OK"\} 1$/m);
  assert.match(r.body, /^fleetgate_enroll_commits_total 1$/m);
  assert.match(r.body, /^fleetgate_enroll_committed_total 1$/m);
});

// Issue #3 acceptance 5: SIGKILL the provisioning service during 200 concurrent enrollments.
// Every certificate any client received is in the registry; restarted, the service serves
// again; nothing is half-written.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadConfig } from '../config/config.ts';
import { type HttpResult, https } from '../harness/https.ts';
import { csrPem, newKeys } from '../harness/pki.ts';
import { tempDir } from '../harness/run.ts';
import { spawnService } from '../harness/services.ts';
import { RegistryWriter } from '../provisioning/registry/writer.ts';
import { initDataDir } from '../provisioning/setup.ts';

const N = 200;

async function startService(dataDir: string): Promise<{ child: ChildProcess; url: string }> {
  const service = await spawnService('provision', dataDir, { FLEETGATE_ENROLL_RATE: '100000' });
  return { child: service.child, url: service.endpoints.provision! };
}

test('crash/SIGKILL during 200 concurrent enrollments loses no delivered certificate', async (t) => {
  const dir = tempDir(t);
  const config = loadConfig({ dataDir: join(dir, 'data'), env: {} });
  await initDataDir(config);
  const setup = new RegistryWriter(join(config.dataDir, 'registry.db'));
  const tokens = Array.from(
    { length: N },
    (_, i) => setup.addDevice({ id: `crash-${i}`, type: 'sensor' }, 'test', { tokenTtlMs: 3_600_000 }).token!.token,
  );
  setup.close();
  const csrs = await Promise.all(Array.from({ length: N }, async (_, i) => csrPem(await newKeys(), `crash-${i}`)));
  const ca = readFileSync(join(config.dataDir, 'ca', 'root.crt'));

  const { child, url } = await startService(config.dataDir);
  const received: { serial: string; deviceId: string; certificate: string }[] = [];
  let killed = false;
  const outcomes = await Promise.allSettled(
    tokens.map(async (token, i) => {
      const r: HttpResult = await https(`${url}/v1/enroll`, { ca, body: JSON.stringify({ token, csr: csrs[i] }) });
      if (r.status === 201) {
        received.push(r.json());
        if (received.length >= 20 && !killed) {
          killed = true;
          child.kill('SIGKILL');
        }
      }
      return r.status;
    }),
  );
  await new Promise<void>((resolve) =>
    child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve()),
  );
  assert.equal(child.signalCode, 'SIGKILL', 'killed mid-run');
  const failed = outcomes.filter((o) => o.status === 'rejected').length;
  assert.ok(received.length >= 20 && failed > 0, `killed mid-run: ${received.length} delivered, ${failed} cut off`);

  const registry = new RegistryWriter(join(config.dataDir, 'registry.db'));
  t.after(() => registry.close());
  assert.equal(registry.db.pragma('integrity_check', { simple: true }), 'ok');
  for (const r of received) {
    const row = registry.getCertificate(r.serial);
    assert.ok(row, `delivered certificate ${r.serial} is recorded`);
    assert.equal(row.deviceId, r.deviceId);
    const der = Buffer.from(r.certificate.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    assert.equal(row.fingerprint, createHash('sha256').update(der).digest('hex'));
  }
  // Nothing half-written: a consumed token ⇔ a recorded certificate ⇔ an active device.
  const used = registry.db
    .prepare('SELECT device_id, used_serial FROM enrollment_tokens WHERE used_at IS NOT NULL')
    .all() as { device_id: string; used_serial: string }[];
  const certs = registry.listCertificates();
  assert.equal(used.length, certs.length);
  for (const u of used) assert.equal(registry.getCertificate(u.used_serial)?.deviceId, u.device_id);
  for (const c of certs) assert.equal(registry.getDevice(c.deviceId)?.status, 'active');
  assert.equal(registry.listDevices().filter((d) => d.status === 'active').length, certs.length);

  // Restarted, it serves again: an unused token still enrolls.
  const restarted = await startService(config.dataDir);
  t.after(() => restarted.child.kill('SIGTERM'));
  const unused = tokens.findIndex((_tok, i) => registry.getDevice(`crash-${i}`)?.status === 'pending');
  assert.ok(unused >= 0);
  const again = await https(`${restarted.url}/v1/enroll`, {
    ca,
    body: JSON.stringify({ token: tokens[unused], csr: csrs[unused] }),
  });
  assert.equal(again.status, 201, again.body);
});

// Issue #2 acceptance 5: SIGKILL in the middle of issuing a batch; every certificate printed
// before the kill is in the registry afterwards, and the database opens cleanly.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { initFleet } from '../harness/fleet.ts';
import { opensslCsr } from '../harness/pki.ts';
import { FLEETGATE } from '../harness/run.ts';
import { RegistryWriter } from '../provisioning/registry/writer.ts';

const DEVICES = 400;
const KILL_AFTER = 25;

test('durability/SIGKILL mid-batch loses no printed certificate and leaves a clean database', async (t) => {
  const fleet = await initFleet(t);
  const setup = new RegistryWriter(fleet.registry);
  for (let i = 0; i < DEVICES; i++) setup.addDevice({ id: `batch-${i}`, type: 'sensor' }, 'test-setup');
  setup.close();
  const { csrPem } = await opensslCsr(fleet.dir, 'batch');
  const input = join(fleet.dir, 'batch.jsonl');
  writeFileSync(
    input,
    Array.from({ length: DEVICES }, (_, i) => JSON.stringify({ device: `batch-${i}`, csr: csrPem })).join('\n'),
  );

  const child = spawn(process.execPath, [FLEETGATE, 'cert', 'batch', '--in', input, '--data', fleet.data], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const printed: { device: string; serial: string; fingerprint: string; certificate: string }[] = [];
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
  for await (const line of createInterface({ input: child.stdout })) {
    const item = JSON.parse(line) as (typeof printed)[number] & { error?: unknown };
    assert.equal(item.error, undefined, line);
    printed.push(item);
    if (printed.length === KILL_AFTER) child.kill('SIGKILL');
  }
  assert.equal(await exited, 'SIGKILL', 'the batch was killed, not finished');
  assert.ok(
    printed.length >= KILL_AFTER && printed.length < DEVICES,
    `killed mid-batch after ${printed.length} certificates`,
  );

  // The database opens cleanly (WAL recovery) and is consistent.
  const registry = new RegistryWriter(fleet.registry);
  t.after(() => registry.close());
  assert.equal(registry.db.pragma('integrity_check', { simple: true }), 'ok');
  assert.deepEqual(registry.db.pragma('foreign_key_check'), []);
  for (const p of printed) {
    const row = registry.getCertificate(p.serial);
    assert.ok(row, `printed certificate ${p.serial} is in the registry`);
    assert.equal(row.deviceId, p.device);
    assert.equal(row.pem, p.certificate);
    const der = Buffer.from(p.certificate.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    assert.equal(row.fingerprint, createHash('sha256').update(der).digest('hex'));
  }
  // Nothing half-written: every recorded certificate has its audit row and an active device.
  const certs = registry.listCertificates();
  const audited = new Set(
    registry
      .listAudit()
      .filter((a) => a.action === 'cert.issue')
      .map((a) => a.detail.serial),
  );
  assert.ok(certs.length >= printed.length);
  for (const c of certs) {
    assert.ok(audited.has(c.serial), `certificate ${c.serial} has its audit row`);
    assert.equal(registry.getDevice(c.deviceId)?.status, 'active');
  }
  assert.equal(audited.size, certs.length);
  // And the registry keeps working.
  registry.addDevice({ id: 'after-crash', type: 'sensor' }, 'test');
});

// Issue #2 acceptance 6: every CLI action that changes state writes an audit row (who, what, when).
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { initFleet } from '../harness/fleet.ts';
import { opensslCsr } from '../harness/pki.ts';
import { fleetgateOk } from '../harness/run.ts';

test('audit/each state-changing command appends exactly its row, with actor and time', async (t) => {
  const fleet = await initFleet(t);
  const { csrFile, csrPem } = await opensslCsr(fleet.dir, 'aud-1');
  const batch = join(fleet.dir, 'batch.jsonl');
  writeFileSync(batch, `${JSON.stringify({ device: 'aud-2', csr: csrPem })}\n`);
  let serial = '';
  const fp = 'cd'.repeat(32);
  const steps: [string[], string, string | null][] = [
    [['device', 'add', 'aud-1', '--type', 'sensor'], 'device.add', 'aud-1'],
    [['device', 'add', 'aud-2', '--type', 'camera', '--no-token'], 'device.add', 'aud-2'],
    [['device', 'token', 'aud-2', '--token-ttl', '1h'], 'token.create', 'aud-2'],
    [['cert', 'issue', 'aud-1', '--csr', csrFile, '--json'], 'cert.issue', 'aud-1'],
    [['cert', 'batch', '--in', batch], 'cert.issue', 'aud-2'],
    [['device', 'suspend', 'aud-1', '--reason', 'maintenance'], 'device.suspend', 'aud-1'],
    [['device', 'resume', 'aud-1'], 'device.resume', 'aud-1'],
    [['cert', 'revoke', '<serial>', '--reason', 'superseded'], 'cert.revoke', 'aud-1'],
    [['deny', 'add', '--fingerprint', fp, '--reason', 'cloned', '--expires', '1d'], 'deny.add', `fingerprint:${fp}`],
    [['deny', 'remove', '--fingerprint', fp], 'deny.remove', `fingerprint:${fp}`],
    [['device', 'revoke', 'aud-2'], 'device.revoke', 'aud-2'],
    [['crl', '--pem'], 'crl.issue', null],
  ];
  let since = fleet.reader().listAudit().at(-1)?.seq ?? 0;
  assert.equal(fleet.reader().listAudit()[0]?.action, 'ca.init', 'init is audited');
  for (const [args, action, subject] of steps) {
    const started = Date.now();
    const out = await fleetgateOk([...args.map((a) => (a === '<serial>' ? serial : a)), '--data', fleet.data]);
    if (action === 'cert.issue' && serial === '') serial = (JSON.parse(out) as { serial: string }).serial;
    const rows = fleet.reader().listAudit({ since });
    assert.equal(rows.length, 1, `${args.join(' ')} wrote ${rows.length} audit rows`);
    const row = rows[0]!;
    assert.equal(row.action, action);
    assert.equal(row.subject, subject);
    assert.equal(row.actor, 'test-operator', 'who');
    assert.ok(row.at >= started - 1 && row.at <= Date.now(), 'when');
    since = row.seq;
  }
});

test('audit/read-only commands write nothing; --since and --json work', async (t) => {
  const fleet = await initFleet(t);
  await fleetgateOk(['device', 'add', 'ro-1', '--type', 'sensor', '--data', fleet.data]);
  const before = fleet.reader().counts().audit;
  for (const args of [
    ['device', 'list'],
    ['device', 'show', 'ro-1'],
    ['cert', 'list'],
    ['deny', 'list'],
    ['ca', 'cert'],
    ['audit'],
    ['init'],
  ]) {
    await fleetgateOk([...args, '--data', fleet.data]);
  }
  assert.equal(fleet.reader().counts().audit, before);
  const all = JSON.parse(await fleetgateOk(['audit', '--json', '--data', fleet.data])) as {
    seq: number;
    action: string;
  }[];
  assert.deepEqual(
    all.map((r) => r.action),
    ['device.add', 'ca.init'],
    'newest first',
  );
  const later = JSON.parse(
    await fleetgateOk(['audit', '--since', String(all[1]!.seq), '--json', '--data', fleet.data]),
  ) as { action: string }[];
  assert.deepEqual(
    later.map((r) => r.action),
    ['device.add'],
    '--since: what came after, oldest first',
  );
  await fleetgateOk(['device', 'add', 'ro-2', '--type', 'sensor', '--data', fleet.data]);
  await fleetgateOk(['deny', 'add', '--device', 'ro-1', '--data', fleet.data]);
  const ro1 = JSON.parse(await fleetgateOk(['audit', '--device', 'ro-1', '--json', '--data', fleet.data])) as {
    action: string;
  }[];
  assert.deepEqual(
    ro1.map((r) => r.action),
    ['deny.add', 'device.add'],
    '--device: its rows and its denylist entries, newest first',
  );
  const one = JSON.parse(await fleetgateOk(['audit', '--limit', '1', '--json', '--data', fleet.data])) as {
    action: string;
  }[];
  assert.deepEqual(
    one.map((r) => r.action),
    ['deny.add'],
  );
  const recent = JSON.parse(await fleetgateOk(['audit', '--after', '1h', '--json', '--data', fleet.data])) as unknown[];
  assert.equal(recent.length, 4);
});

// Issue #14 (idle CPU): the gateway learns of registry commits from the kernel (inotify on the
// WAL file) instead of reading the feed 50 times a second. With the idle poll set to a minute,
// a revocation made by another process still cuts the live session at once, and the next
// connection is refused: the notification, not the poll, carried it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { auditRows, startTestFleet } from '../harness/gateway.ts';
import { closed, connect } from '../harness/mqtt.ts';
import { enrollDevice } from '../harness/pki.ts';
import { fleetgate } from '../harness/run.ts';

test('registry watch/a revocation by the CLI cuts a live session long before the one-minute idle poll', async (t) => {
  const fleet = await startTestFleet(t, { FLEETGATE_STATUS_IDLE_POLL: '60s' });
  const cred = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'w-1' });
  const other = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'w-2' });
  const client = await connect(fleet.mqttsUrl, cred, { ca: fleet.rootFile });
  const started = Date.now();
  const r = await fleetgate(['device', 'revoke', 'w-1', '--data', fleet.config.dataDir]);
  assert.equal(r.code, 0, r.stderr);
  await closed(client, 30_000); // a poll would only come after 60 s
  t.diagnostic(`revoke (CLI process start included) → cut: ${Date.now() - started} ms`);
  const [row] = await auditRows(fleet.registry, (a) => a.action === 'session.disconnect' && a.subject === 'w-1');
  assert.equal(row?.detail.event, 'device.revoke');
  // Admissions are unaffected by the long poll: a device not revoked connects.
  const ok = await connect(fleet.mqttsUrl, other, { ca: fleet.rootFile });
  await ok.endAsync();
});

// Issue #4 acceptance 6: registry unreadable (file removed, or replaced by garbage) → new
// connections are refused with REGISTRY_UNAVAILABLE in the log; nothing crashes; service
// resumes when the registry is back.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { startTestFleet } from '../harness/gateway.ts';
import { connect, end } from '../harness/mqtt.ts';
import { enrollDevice } from '../harness/pki.ts';

const SIDE_FILES = ['', '-wal', '-shm'];

test('registry outage/new connections fail closed, existing ones are untouched, recovery is automatic', async (t) => {
  const fleet = await startTestFleet(t);
  const dev = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'dev-1' });
  const early = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'early-1' });
  const connected = await connect(fleet.mqttsUrl, early, { ca: fleet.rootFile });
  t.after(() => end(connected));
  const db = fleet.config.dataDir + '/registry.db';

  // 1. The file is removed (moved away).
  fleet.registry.close();
  for (const s of SIDE_FILES) if (existsSync(db + s)) renameSync(db + s, `${db}.away${s}`);
  for (const url of [fleet.mqttsUrl, fleet.wssUrl]) {
    const before = fleet.log.lines.length;
    await assert.rejects(
      connect(url, dev, { ca: fleet.rootFile }),
      (e: { code?: number }) => e.code === 3,
      'CONNACK 3: server unavailable',
    );
    await fleet.log.find(
      (l) => fleet.log.lines.indexOf(l) >= before && l.decision === 'refused' && l.code === 'REGISTRY_UNAVAILABLE',
    );
  }
  assert.ok(connected.connected, 'an existing session is not cut by a registry outage');

  // 2. The file is replaced by something that is not a database.
  writeFileSync(db, 'this is not an SQLite database');
  await assert.rejects(connect(fleet.mqttsUrl, dev, { ca: fleet.rootFile }), (e: { code?: number }) => e.code === 3);

  // 3. The registry comes back: service resumes without a restart (after the gateway's short
  //    back-off, during which it does not ask the failing registry again).
  for (const s of SIDE_FILES) if (existsSync(`${db}.away${s}`)) renameSync(`${db}.away${s}`, db + s);
  let again: Awaited<ReturnType<typeof connect>> | undefined;
  for (let i = 0; i < 100 && again === undefined; i++) {
    again = await connect(fleet.mqttsUrl, dev, { ca: fleet.rootFile }).catch(async (e: { code?: number }) => {
      assert.equal(e.code, 3, 'refused as unavailable while it recovers');
      await new Promise((r) => setTimeout(r, 100));
      return undefined;
    });
  }
  assert.ok(again !== undefined, 'connected again');
  await end(again);
  assert.ok(readFileSync(db).subarray(0, 15).toString() === 'SQLite format 3');
});

// Issue #11: a registry held locked by another process must not freeze the gateway. The lock is
// real: a python process takes SQLite's WAL read locks (bytes 123–127 of registry.db-shm, POSIX
// fcntl locks, the ones SQLite itself uses), so any reader — the gateway's registry thread
// included — spins in SQLite's own retry loop (≈10 s, not bounded by busy_timeout). Live
// sessions must keep being served, and a new connection must be refused CONNACK 3 quickly.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { startTestFleet } from '../harness/gateway.ts';
import { errorCodeOf, https } from '../harness/https.ts';
import { connect, end } from '../harness/mqtt.ts';
import { enrollDevice } from '../harness/pki.ts';
import { bytes, connectBytes, rawClient } from '../harness/raw-mqtt.ts';

const HOLD_LOCK = `
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 123, os.SEEK_SET)
print('locked', flush=True)
sys.stdin.read()
`;

test('registry locked/live sessions get PINGRESP, a new connection gets CONNACK 3 (HTTPS: 503) at once, service resumes when the lock goes', async (t) => {
  const fleet = await startTestFleet(t);
  const live = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'live-1' });
  const late = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'late-1' });
  const raw = await rawClient(fleet.mqttsUrl, live, fleet.ca.rootPem);
  t.after(() => raw.end());
  raw.send(connectBytes('live-1'));
  assert.equal(((await raw.next('connack')) as { returnCode: number }).returnCode, 0);

  const locker = spawn('python3', ['-c', HOLD_LOCK, `${fleet.config.dataDir}/registry.db-shm`], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  t.after(() => locker.kill('SIGKILL'));
  const [line] = (await once(createInterface({ input: locker.stdout }), 'line')) as [string];
  assert.equal(line, 'locked');

  // A new connection: refused with CONNACK 3 after the gateway's registry deadline
  // (gateway.registryTimeout, 500 ms), not after SQLite's ≈10 s retry loop. Measured from the
  // CONNECT; the bound leaves room for a busy machine and still tells the two apart.
  const fresh = await rawClient(fleet.mqttsUrl, late, fleet.ca.rootPem);
  t.after(() => fresh.end());
  const sent = Date.now();
  fresh.send(connectBytes('late-1'));
  const refused = (await fresh.next('connack', 20_000)) as { returnCode: number };
  const waited = Date.now() - sent;
  assert.equal(refused.returnCode, 3, 'server unavailable');
  assert.ok(waited < 5_000, `refused after ${waited} ms`);
  await fleet.log.find((l) => l.decision === 'refused' && l.code === 'REGISTRY_UNAVAILABLE' && l.clientId === 'late-1');

  // The HTTPS plane answers the same way: 503 REGISTRY_UNAVAILABLE, not a stalled request.
  const web = await https(`${fleet.httpsUrl}/v1/whoami`, { ca: fleet.ca.rootPem, cred: late });
  assert.deepEqual([web.status, errorCodeOf(web)], [503, 'REGISTRY_UNAVAILABLE']);

  // The live session is served meanwhile: PINGREQ → PINGRESP, its own publish comes back.
  raw.send(bytes({ cmd: 'pingreq' }));
  await raw.next('pingresp', 5_000);
  raw.send(bytes({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/live-1/echo', qos: 0 }] }));
  assert.deepEqual(((await raw.next('suback', 5_000)) as { granted: number[] }).granted, [0]);
  raw.send(bytes({ cmd: 'publish', topic: 'devices/live-1/echo', payload: Buffer.from('still here'), qos: 0 }));
  assert.equal(String(((await raw.next('publish', 5_000)) as { payload: Buffer }).payload), 'still here');

  // The lock goes: new connections are admitted again, without a restart.
  locker.kill('SIGKILL');
  await once(locker, 'exit');
  let admitted = false;
  for (let i = 0; i < 200 && !admitted; i++) {
    const again = await connect(fleet.mqttsUrl, late, { ca: fleet.rootFile }).catch((e: { code?: number }) => {
      assert.equal(e.code, 3, 'refused only as unavailable while it recovers');
      return undefined;
    });
    if (again !== undefined) {
      admitted = true;
      await end(again);
    } else {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  assert.ok(admitted, 'admitted again once the registry is readable');
});

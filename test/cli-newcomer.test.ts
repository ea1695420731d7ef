// Issue #25 point 9: a newcomer's first commands say what they need.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planFleet } from '../device-sim/fleet.ts';
import { errorCode, fleetgate } from '../harness/run.ts';

test('newcomer/"device add" without an id says the id is missing (not --type)', async () => {
  const r = await fleetgate(['device', 'add', '--json']);
  assert.equal(r.code, 2);
  assert.equal(errorCode(r), 'USAGE');
  assert.match(r.stderr, /missing required argument 'id'/);
  const noType = await fleetgate(['device', 'add', 'x-1', '--json', '--data', '/nonexistent']);
  assert.equal(noType.code, 2);
  assert.match(noType.stderr, /--type/);
});

test('newcomer/--version says fleetgate, Node.js and OpenSSL', async () => {
  const r = await fleetgate(['--version']);
  assert.equal(r.code, 0);
  assert.match(r.stdout.trim(), /^fleetgate \d+\.\d+\.\d+ \(Node\.js v24\.\d+\.\d+, OpenSSL 3\.\d+\.\d+\)$/);
});

test('newcomer/device-sim ids do not depend on the fleet size', () => {
  const small = planFleet({ sensors: 50, gateways: 0, children: 0, cameras: 0, prefix: 'sim' });
  const large = planFleet({ sensors: 200, gateways: 0, children: 0, cameras: 0, prefix: 'sim' });
  assert.equal(small.devices[0]?.id, 'sim-s000001');
  assert.deepEqual(
    small.devices.map((d) => d.id),
    large.devices.slice(0, 50).map((d) => d.id),
  );
});

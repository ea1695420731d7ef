// Issue #25 point 9 (console): an icon, audit details a person can read, an "expiring" view that
// does not list every certificate, and charts that do not start empty (LiveSampler's own test).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { https } from '../harness/https.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope } from '../harness/run.ts';

let fleet: TestFleet;
let op: Credential;
let ca: Buffer;
const scope = fileScope(after);

before(async () => {
  fleet = await startTestFleet(scope);
  ca = readFileSync(fleet.rootFile);
  op = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'dora', type: 'operator' });
});

const page = (path: string) => https(`https://127.0.0.1:${fleet.gateway.ports.console}${path}`, { ca, cred: op });

test('console/favicon.ico is an icon, not a 404', async () => {
  const r = await page('/favicon.ico');
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-type'], 'image/svg+xml');
  assert.match(r.body, /^<svg /);
});

test('console/audit details are a list of facts, not raw JSON; a revocation reason is its name', async () => {
  await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'gone-1' });
  fleet.registry.revokeDevice('gone-1', 1, 'operator:dora');
  const r = await page('/audit?device=gone-1&action=device.revoke');
  assert.equal(r.status, 200);
  const cell = /<td class="detail">([\s\S]*?)<\/td>/.exec(r.body)?.[1] ?? '';
  assert.match(cell, /<dt>reason<\/dt><dd>keyCompromise<\/dd>/);
  assert.match(cell, /<dt>reasonCode<\/dt><dd>1<\/dd>/);
  assert.doesNotMatch(cell, /\{&quot;|\{"/, 'no JSON object in the cell');
});

test('console/"expiring" lists the last third of a lifetime by default, not every 30-day certificate', async () => {
  const fresh = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'fresh-1', validityMs: 30 * 86_400_000 });
  const r = await page('/certificates');
  assert.equal(r.status, 200);
  assert.match(r.body, /name="within"[^>]*value="10"/, 'the default window is a third of the configured 30 days');
  assert.ok(!r.body.includes(fresh.serial), 'a certificate with 30 days left is not "expiring"');
  const wide = await page('/certificates?within=31');
  assert.ok(wide.body.includes(fresh.serial), 'asked for 31 days, it is listed');
});

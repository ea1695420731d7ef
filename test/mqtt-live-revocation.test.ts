// Issue #4 acceptance 5: `fleetgate device revoke` in another process cuts the device's live
// TLS and WSS sessions within 1 s; it cannot reconnect; other devices stay connected.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { auditRows, startTestFleet, type TestFleet } from '../harness/gateway.ts';
import { connect, end } from '../harness/mqtt.ts';
import { type Credential, enrollDevice } from '../harness/pki.ts';
import { fileScope, fleetgateOk } from '../harness/run.ts';

let fleet: TestFleet;
const scope = fileScope(after);
const c: Record<string, Credential> = {};

before(async () => {
  fleet = await startTestFleet(scope);
  for (const id of ['victim-1', 'victim-2', 'victim-3', 'victim-4', 'bystander-1']) {
    c[id] = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id });
  }
});

async function cutCase(
  t: import('node:test').TestContext,
  ids: [string, string],
  command: (id: string) => string[],
  codes: [string, string],
) {
  // One device per transport (a device has one session at a time: a second one takes over).
  const tls = await connect(fleet.mqttsUrl, c[ids[0]], { ca: fleet.rootFile });
  const wss = await connect(fleet.wssUrl, c[ids[1]], { ca: fleet.rootFile });
  const bystander = await connect(fleet.mqttsUrl, c['bystander-1'], { ca: fleet.rootFile });
  t.after(() => end(tls, wss, bystander));
  const closedAt = [tls, wss].map(
    (cl) => new Promise<number>((resolve) => cl.once('close', () => resolve(Date.now()))),
  );
  let committedAt = 0;
  for (const id of ids) {
    await fleetgateOk([...command(id), '--data', fleet.config.dataDir]); // another process writes the registry
    committedAt = Date.now();
  }
  const times = await Promise.race([
    Promise.all(closedAt),
    new Promise<never>((_r, reject) => setTimeout(() => reject(new Error('not cut within 1 s')), 1_000)),
  ]);
  for (const at of times) assert.ok(at - committedAt < 1_000, `cut ${at - committedAt} ms after the command returned`);
  assert.ok(bystander.connected, 'other devices stay connected');
  await bystander.publishAsync('devices/bystander-1/alive', 'yes', { qos: 1 });
  for (const [i, id] of ids.entries()) {
    await assert.rejects(
      connect(fleet.mqttsUrl, c[id], { ca: fleet.rootFile }),
      (e: { code?: number }) => e.code === 5,
      `${id} cannot reconnect`,
    );
    const audit = await auditRows(fleet.registry, (a) => a.action === 'session.disconnect' && a.subject === id);
    assert.equal(audit.length, 1, `audit row for ${id}`);
    assert.equal(audit[0]!.detail.reason, 'disconnected by revocation');
    assert.equal(audit[0]!.detail.code, codes[i]);
  }
}

test('live revocation/device revoke from the CLI cuts TLS and WSS sessions within 1 s', async (t) => {
  await cutCase(t, ['victim-1', 'victim-2'], (id) => ['device', 'revoke', id], ['CERT_REVOKED', 'CERT_REVOKED']);
});

test('live revocation/suspend and a denylisted device are cut the same way', async (t) => {
  await cutCase(
    t,
    ['victim-3', 'victim-4'],
    (id) => (id === 'victim-3' ? ['device', 'suspend', id] : ['deny', 'add', '--device', id]),
    ['DEVICE_SUSPENDED', 'DENYLISTED'],
  );
});

test('live revocation/a session does not outlive its certificate', async (t) => {
  const short = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'short-1', validityMs: 2_500 });
  // Issued certificates are backdated a minute: this one has ~2.5 s left.
  const client = await connect(fleet.mqttsUrl, short, { ca: fleet.rootFile });
  t.after(() => end(client));
  const started = Date.now();
  await new Promise<void>((resolve) => client.once('close', () => resolve()));
  const lived = Date.now() - started;
  assert.ok(lived >= 1_000 && lived < 5_000, `cut at expiry (after ${lived} ms)`);
  const [audit] = await auditRows(fleet.registry, (a) => a.action === 'session.disconnect' && a.subject === 'short-1');
  assert.equal(audit?.detail.code, 'CERT_EXPIRED');
});

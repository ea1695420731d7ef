// A gateway that did not run for a while (starved of CPU on a crowded box, or stopped) must not
// blame its devices for it: what they sent meanwhile waits unread in the kernel, so the keepalive
// deadline is judged again once that is read. Seen in the cluster soak (session 12): a node starved
// for ~15 s closed 366 live connections at once as "keepalive expired". Here the gateway is stopped
// with SIGSTOP for longer than the device's keepalive allows, while the device keeps pinging.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { until } from '../harness/mqtt.ts';
import { enrollDevice } from '../harness/pki.ts';
import { bytes, connectBytes, rawClient } from '../harness/raw-mqtt.ts';
import { benchFleet, spawnService } from '../harness/services.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('mqtt/a gateway stopped longer than a keepalive keeps the devices that went on pinging, and says it stalled', {
  timeout: 60_000,
}, async (t) => {
  const fleet = await benchFleet();
  t.after(() => fleet.cleanup());
  const cred = await enrollDevice(fleet.registry, fleet.ca, fleet.dir, { id: 'stall-1' });
  const gateway = await spawnService('gateway', fleet.config.dataDir, { FLEETGATE_LOG_LEVEL: 'warn' });
  t.after(() => gateway.stop());
  let log = '';
  gateway.child.stderr!.on('data', (b: Buffer) => {
    log += b.toString();
  });

  const client = await rawClient(gateway.endpoints['mqtt+tls']!, cred, fleet.ca.rootPem);
  t.after(() => client.end());
  client.send(connectBytes('stall-1', { keepalive: 5 })); // the least allowed: the gateway closes after 7.5 s of silence
  assert.equal(((await client.next('connack')) as { returnCode: number }).returnCode, 0);
  const ping = setInterval(() => client.send(bytes({ cmd: 'pingreq' })), 500);
  t.after(() => clearInterval(ping));
  await client.next('pingresp');

  // The stimulus: 10 s without running (the device's pings pile up unread), then on again.
  process.kill(gateway.child.pid!, 'SIGSTOP');
  await sleep(10_000);
  process.kill(gateway.child.pid!, 'SIGCONT');

  // The gateway reads what was sent meanwhile and judges again at the next sweeps (one a second):
  // the device that kept pinging stays; the log says the gateway stalled.
  assert.equal(
    await client.closed(3_000),
    false,
    'a device that kept pinging is not closed for the gateway’s own stall',
  );
  await until('the stall logged', () => log.includes('GATEWAY_STALLED'), 10_000, 50);
  assert.doesNotMatch(log, /KEEPALIVE_TIMEOUT/, 'no keepalive closed');

  // A device that really goes silent is still closed (the next sweeps judge it again).
  clearInterval(ping);
  assert.equal(await client.closed(20_000), true, 'silence past 1.5 × keepalive still closes the connection');
});

// Issue #27, point 6: the crash test (harness/crash.ts) in `npm test`, sized to take a few
// minutes — 100 persistent-session devices spread over three gateway nodes through HAProxy, on
// JetStream (three nats-servers, replicas 3) and PostgreSQL; QoS 1 both ways; one round with a
// gateway node killed (kill -9) and one with a NATS server killed, at random moments. Every
// PUBACKed message must arrive, first arrivals in publishing order; duplicates and the time until
// every device is back are printed. `npm run soak:cluster` runs it at 1,000 devices, five rounds of each.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { CrashCluster } from '../harness/crash.ts';
import { createDatabase, pgSkip, sharedPostgres, stopSharedPostgres } from '../harness/engines.ts';
import { haproxyAvailable } from '../harness/haproxy.ts';
import { natsAvailable } from '../harness/nats.ts';

if ((!haproxyAvailable() || !natsAvailable()) && process.env.CI === 'true')
  throw new Error('haproxy and nats-server are installed by .ci/run for the cluster tests');
const skip = !natsAvailable() ? 'no nats-server' : !haproxyAvailable() ? 'no haproxy' : pgSkip;

after(stopSharedPostgres);

test('crash/kill -9 of a gateway node, then of a NATS server, mid-traffic: every PUBACKed message delivered, in order', {
  skip,
}, async () => {
  const registry = await createDatabase(await sharedPostgres());
  const cluster = await CrashCluster.start({
    devices: 100,
    rounds: { gateway: 1, nats: 1 },
    messages: 30,
    registry,
    log: (line) => console.log(line),
  });
  try {
    const results = await cluster.run();
    assert.equal(results.length, 2);
    for (const r of results) assert.ok(r.acked > 0 && r.delivered >= r.acked, JSON.stringify(r));
  } finally {
    await cluster.stop();
  }
});

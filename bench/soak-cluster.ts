// npm run soak:cluster — the cluster crash test (harness/crash.ts) at soak size: 1,000
// persistent-session devices through HAProxy on three gateway nodes, JetStream on three
// nats-servers (replicas 3), PostgreSQL (started here: initdb in a temp dir, fsync on), QoS 1 both
// ways, five rounds with a gateway node killed (the one holding the most devices) and five with a
// NATS server killed (kill -9, at a random step of each round). Every PUBACKed message must arrive, first arrivals in publishing
// order; prints each round's duplicates, the time until every dropped device was back and until
// every message had arrived, and a summary (the figures in docs/scale-out.md come from here).
// SOAK_DEVICES, SOAK_ROUNDS, SOAK_MESSAGES change the size. Loopback only; bounded.
import { CrashCluster } from '../harness/crash.ts';
import { haproxyAvailable } from '../harness/haproxy.ts';
import { natsAvailable } from '../harness/nats.ts';
import { postgresBin, startPostgres } from '../harness/postgres.ts';

const log = (s: string) => process.stdout.write(`${s}\n`);
if (!natsAvailable() || !haproxyAvailable()) {
  log('soak:cluster needs nats-server and haproxy (Debian: apt-get install nats-server haproxy)');
  process.exit(2);
}
const devices = Number(process.env.SOAK_DEVICES ?? 1_000);
const rounds = Number(process.env.SOAK_ROUNDS ?? 5);
const messages = Number(process.env.SOAK_MESSAGES ?? 20);
const postgres = postgresBin() === undefined ? undefined : await startPostgres({ durable: true });
log(
  `fleetgate soak:cluster — node ${process.version}; ${devices} devices, ${rounds} rounds of each kill, ${messages} messages per device each way per round; registry: ${postgres === undefined ? 'SQLite (PostgreSQL not installed)' : 'PostgreSQL (fsync on)'}`,
);
const started = Date.now();
const cluster = await CrashCluster.start({
  devices,
  rounds: { gateway: rounds, nats: rounds },
  messages,
  ...(postgres !== undefined && { registry: postgres.url }),
  log,
});
let failed = false;
try {
  const results = await cluster.run();
  log(
    '\n| round | killed | acknowledged | duplicates | devices reconnected | last back after kill | all arrived after traffic |',
  );
  log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const r of results)
    log(
      `| ${r.round} | ${r.kill} | ${r.acked} | ${r.duplicates} | ${r.reconnected} | ${(r.backMs / 1000).toFixed(1)} s | ${(r.drainMs / 1000).toFixed(1)} s |`,
    );
  const acked = results.reduce((s, r) => s + r.acked, 0);
  const dups = results.reduce((s, r) => s + r.duplicates, 0);
  log(
    `\n${acked} messages acknowledged, every one delivered (${dups} duplicates) in ${((Date.now() - started) / 60_000).toFixed(1)} min`,
  );
} catch (err) {
  failed = true;
  log(`FAILED: ${(err as Error).message}`);
} finally {
  await cluster.stop();
  await postgres?.stop();
}
process.exit(failed ? 1 : 0);

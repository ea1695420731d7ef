// The registry on PostgreSQL (issue #12) beside SQLite: one schema for both, and what several
// provisioning instances on one PostgreSQL must keep — a token used exactly once, and a status
// feed that a gateway reading `seq > last` never reads with a gap — with real concurrent writers
// (threads, each with its own connection), and PostgreSQL stopped and started under a writer.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import pg from 'pg';
import { FleetgateError } from '../firmware-sdk/protocol/errors.ts';
import { createDatabase, pgSkip, registryLocation, sharedPostgres, stopSharedPostgres } from '../harness/engines.ts';
import { RegistryReader } from '../provisioning/registry/reader.ts';
import { hashToken, RegistryWriter } from '../provisioning/registry/writer.ts';

after(stopSharedPostgres);
const skip = pgSkip;

function race(workerData: Record<string, unknown>): Promise<{ won: string[]; refused: Record<string, number> }> {
  const worker = new Worker(new URL('../harness/registry-racer.ts', import.meta.url), { workerData });
  return new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => {
      if (code !== 0) reject(new Error(`racer exited ${code}`));
    });
  });
}

test('registry engines/SQLite and PostgreSQL have the same tables and columns', { skip }, async (t) => {
  const sqlite = new RegistryWriter(await registryLocation(t, 'sqlite'));
  t.after(() => sqlite.close());
  const url = await registryLocation(t, 'postgres');
  new RegistryWriter(url).close(); // migrates
  const columnsOf = (rows: { t: string; c: string }[]) => {
    const m = new Map<string, string[]>();
    for (const r of rows) m.set(r.t, [...(m.get(r.t) ?? []), r.c].sort());
    return Object.fromEntries([...m].sort(([a], [b]) => a.localeCompare(b)));
  };
  const lite = columnsOf(
    sqlite.db
      .prepare(`SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p
    WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'`)
      .all() as { t: string; c: string }[],
  );
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const { rows } = await client.query(`SELECT table_name AS t, column_name AS c FROM information_schema.columns
    WHERE table_schema = 'public' AND table_name <> 'fleetgate_schema' AND column_name <> 'rowid'`);
  await client.end();
  assert.deepEqual(columnsOf(rows as { t: string; c: string }[]), lite);
});

test('registry engines/four instances racing for the same 60 tokens: each is used exactly once', {
  skip,
}, async (t) => {
  const url = await registryLocation(t, 'postgres');
  const setup = new RegistryWriter(url);
  t.after(() => setup.close());
  const tokens: { hash: string; deviceId: string }[] = [];
  for (let i = 0; i < 60; i++) {
    const { token } = setup.addDevice({ id: `race-${i}`, type: 'sensor' }, 'test', { tokenTtlMs: 600_000 });
    tokens.push({ hash: hashToken(token!.token), deviceId: `race-${i}` });
  }
  // Each instance goes through the tokens in its own order, so they collide all the way.
  const orders = [
    tokens,
    [...tokens].reverse(),
    [...tokens.slice(30), ...tokens.slice(0, 30)],
    [...tokens.slice(15), ...tokens.slice(0, 15)],
  ];
  const results = await Promise.all(
    orders.map((order, i) => race({ url, job: 'enroll', tokens: order, name: `instance-${i}` })),
  );
  const wins = results.flatMap((r) => r.won);
  assert.equal(wins.length, 60, 'every token issued a certificate');
  assert.equal(new Set(wins).size, 60, 'no token issued two');
  for (const r of results)
    for (const code of Object.keys(r.refused)) assert.equal(code, 'TOKEN_USED', 'the losers are told TOKEN_USED');
  assert.equal(setup.counts().certificates, 60);
  for (const { deviceId } of tokens) assert.equal(setup.listCertificates({ deviceId }).length, 1);
});

test('registry engines/the status feed read by seq while three instances write has no gap', { skip }, async (t) => {
  const url = await registryLocation(t, 'postgres');
  const setup = new RegistryWriter(url);
  t.after(() => setup.close());
  const devices = Array.from(
    { length: 5 },
    (_, i) => setup.addDevice({ id: `flip-${i}`, type: 'sensor' }, 'test').device.id,
  );
  const start = setup.lastStatusSeq();
  const reader = new RegistryReader(url);
  t.after(() => reader.close());
  const writers = [0, 1, 2].map((i) => race({ url, job: 'flip', devices, rounds: 10, name: `instance-${i}` }));
  // Read on, as a gateway does, while they write: every read continues from the last seq seen.
  const seen: number[] = [];
  let last = start;
  let done = false;
  void Promise.all(writers).then(() => {
    done = true;
  });
  while (!done) {
    for (const e of reader.listStatusEvents(last)) {
      seen.push(e.seq);
      last = e.seq;
    }
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(writers);
  for (const e of reader.listStatusEvents(last)) seen.push(e.seq);
  const all = reader.listStatusEvents(start, 10_000).map((e) => e.seq);
  // How many: each suspend or resume that changed something (another instance may have been first).
  assert.ok(all.length >= 10 * 5 * 2, `at least one instance's worth of events (${all.length})`);
  assert.deepEqual(seen, all, 'read incrementally, the feed gave every event, in order');
});

test('registry engines/PostgreSQL down: a write is refused REGISTRY_UNAVAILABLE in bounded time; back up, the same writer works', {
  skip,
}, async (t) => {
  const server = await sharedPostgres();
  const url = await createDatabase(server);
  const writer = new RegistryWriter(url, { timeoutMs: 2_000 });
  t.after(() => writer.close());
  writer.addDevice({ id: 'pg-down-1', type: 'sensor' }, 'test');
  await server.stop();
  try {
    const t0 = performance.now();
    assert.throws(
      () => writer.addDevice({ id: 'pg-down-2', type: 'sensor' }, 'test'),
      (e: unknown) => e instanceof FleetgateError && e.code === 'REGISTRY_UNAVAILABLE',
    );
    assert.ok(performance.now() - t0 < 5_000, 'refused within the timeout and its margin');
  } finally {
    await server.start();
  }
  writer.addDevice({ id: 'pg-down-3', type: 'sensor' }, 'test');
  assert.deepEqual(
    writer.listDevices().map((d) => d.id),
    ['pg-down-1', 'pg-down-3'],
    'nothing half-written by the refused change',
  );
});

test('registry engines/a PostgreSQL URL is shown without its password; an unreachable one is REGISTRY_UNAVAILABLE without it', async () => {
  const { redactLocation } = await import('../provisioning/registry/sql.ts');
  assert.equal(redactLocation('postgres://fleetgate:s3cret@db:5432/fleet'), 'postgres://fleetgate:***@db:5432/fleet');
  assert.equal(redactLocation('/var/lib/fleetgate/registry.db'), '/var/lib/fleetgate/registry.db');
  // Port 1 on loopback: nothing listens there.
  assert.throws(
    () => new RegistryReader('postgres://fleetgate:s3cret@127.0.0.1:1/fleet', { timeoutMs: 2_000 }),
    (e: unknown) =>
      e instanceof FleetgateError &&
      e.code === 'REGISTRY_UNAVAILABLE' &&
      !e.message.includes('s3cret') &&
      e.message.includes('***'),
  );
});

test('registry engines/a PostgreSQL database without the schema: a reader (the gateway) refuses and says to run init; a writer creates it', {
  skip,
}, async () => {
  const url = await createDatabase(await sharedPostgres());
  assert.throws(
    () => new RegistryReader(url),
    (e: unknown) =>
      e instanceof FleetgateError && e.code === 'REGISTRY_UNAVAILABLE' && /fleetgate init/.test(e.message),
  );
  const writer = new RegistryWriter(url);
  writer.close();
  const reader = new RegistryReader(url);
  assert.deepEqual(reader.listDevices(), []);
  reader.close();
});

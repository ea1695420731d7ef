// npm run bench:pg-sync — a measurement for the PostgreSQL registry's design (issue #12): can the
// registry keep its synchronous API (better-sqlite3 style, used by provisioning, the CLI and the
// gateway's registry threads) over PostgreSQL, through a worker that holds the `pg` connection
// while the caller blocks on Atomics.wait? Same transaction shape three ways (BEGIN · INSERT ·
// UPDATE · COMMIT, one row each), one at a time, on a PostgreSQL of its own (fsync off, as in tests):
//  1. `pg` awaited on the main thread (the async-API option)
//  2. the synchronous facade over `pg` in a worker (the keep-the-API option)
//  3. better-sqlite3 on a file, for reference (synchronous=FULL, as the registry runs)
// Prints transactions/s and the caller's CPU per transaction. Loopback only; bounded counts.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import pg from 'pg';
import { postgresBin, startPostgres } from '../harness/postgres.ts';
import { fmt } from './lib.ts';

const N = Number(process.env.BENCH_TRANSACTIONS ?? 2_000);
const log = (s: string) => process.stdout.write(`${s}\n`);
if (postgresBin() === undefined) {
  log('bench:pg-sync needs PostgreSQL (Debian: apt-get install postgresql)');
  process.exit(2);
}

const WORKER = `
const { workerData } = require('node:worker_threads');
const pg = require(workerData.pgPath);
const { port, signal, url } = workerData;
const client = new pg.Client({ connectionString: url });
const ready = client.connect();
port.on('message', async ({ sql, params }) => {
  await ready;
  let reply;
  try { reply = { rows: (await client.query(sql, params)).rows }; } catch (e) { reply = { error: String(e.message) }; }
  port.postMessage(reply);
  Atomics.store(signal, 0, 1);
  Atomics.notify(signal, 0);
});
`;

/** The synchronous facade: post the query, block until the worker has answered, take the answer. */
class SyncPg {
  readonly #worker: Worker;
  readonly #port: MessagePort;
  readonly #signal = new Int32Array(new SharedArrayBuffer(4));

  constructor(url: string) {
    const { port1, port2 } = new MessageChannel();
    this.#port = port1;
    this.#worker = new Worker(WORKER, {
      eval: true,
      workerData: { port: port2, signal: this.#signal, url, pgPath: import.meta.resolve('pg').replace('file://', '') },
      transferList: [port2],
    });
  }

  query(sql: string, params: unknown[] = []): Record<string, unknown>[] {
    Atomics.store(this.#signal, 0, 0);
    this.#port.postMessage({ sql, params });
    if (Atomics.wait(this.#signal, 0, 0, 10_000) === 'timed-out') throw new Error('PostgreSQL did not answer in 10 s');
    const m = receiveMessageOnPort(this.#port)?.message as { rows?: Record<string, unknown>[]; error?: string };
    if (m.error !== undefined) throw new Error(m.error);
    return m.rows!;
  }

  async close(): Promise<void> {
    await this.#worker.terminate();
  }
}

const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
function report(name: string, seconds: number, cpuSeconds: number): void {
  log(
    `${name.padEnd(44)} ${fmt(N / seconds, 0).padStart(7)} transactions/s; caller CPU ${fmt((cpuSeconds / N) * 1e6, 1)} µs per transaction`,
  );
}

const server = await startPostgres();
try {
  const setup = new pg.Client({ connectionString: server.url });
  await setup.connect();
  await setup.query(
    'CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); CREATE TABLE c (id INTEGER PRIMARY KEY, v INTEGER NOT NULL); INSERT INTO c VALUES (1, 0)',
  );
  log(
    `fleetgate bench:pg-sync — node ${process.version}; ${N} transactions each (BEGIN · INSERT · UPDATE · COMMIT), one at a time`,
  );

  let c0 = cpu();
  let t0 = performance.now();
  for (let i = 0; i < N; i++) {
    await setup.query('BEGIN');
    await setup.query('INSERT INTO t (id, n) VALUES ($1, $2)', [i, i]);
    await setup.query('UPDATE c SET v = v + 1 WHERE id = 1');
    await setup.query('COMMIT');
  }
  report('pg, awaited on the main thread', (performance.now() - t0) / 1000, cpu() - c0);

  const sync = new SyncPg(server.url);
  c0 = cpu();
  t0 = performance.now();
  for (let i = 0; i < N; i++) {
    sync.query('BEGIN');
    sync.query('INSERT INTO t (id, n) VALUES ($1, $2)', [N + i, i]);
    sync.query('UPDATE c SET v = v + 1 WHERE id = 1');
    sync.query('COMMIT');
  }
  report('pg behind the synchronous facade (worker)', (performance.now() - t0) / 1000, cpu() - c0);
  const count = sync.query('SELECT v FROM c WHERE id = 1')[0]!.v;
  if (Number(count) !== 2 * N) throw new Error(`expected ${2 * N} commits, found ${String(count)}`);
  await sync.close();
  await setup.end();

  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-pg-sync-'));
  const db = new Database(join(dir, 'r.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec(
    'CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); CREATE TABLE c (id INTEGER PRIMARY KEY, v INTEGER NOT NULL); INSERT INTO c VALUES (1, 0)',
  );
  const ins = db.prepare('INSERT INTO t (id, n) VALUES (?, ?)');
  const upd = db.prepare('UPDATE c SET v = v + 1 WHERE id = 1');
  c0 = cpu();
  t0 = performance.now();
  for (let i = 0; i < N; i++)
    db.transaction(() => {
      ins.run(i, i);
      upd.run();
    }).immediate();
  report('better-sqlite3 (synchronous=FULL: an fsync each)', (performance.now() - t0) / 1000, cpu() - c0);
  db.close();
  rmSync(dir, { recursive: true, force: true });
  log(
    '(PostgreSQL here runs with fsync off, SQLite with an fsync per commit: compare the two pg rows with each other)',
  );
} finally {
  await server.destroy();
}

// The registry engines a test runs against: SQLite always, PostgreSQL when its binaries are here
// (in CI they must be: `.ci/run` installs Debian's postgresql). One PostgreSQL server per test
// file, one database per test.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { type PostgresServer, postgresBin, startPostgres } from './postgres.ts';

export type Engine = 'sqlite' | 'postgres';

if (postgresBin() === undefined && process.env.CI === 'true') {
  throw new Error("PostgreSQL is missing: .ci/run installs Debian's postgresql for the registry and cluster tests");
}
/** `skip` for a PostgreSQL test where the server is not installed (never in CI). */
export const pgSkip: false | string =
  postgresBin() === undefined ? 'no PostgreSQL (apt-get install postgresql)' : false;
export const ENGINES: readonly Engine[] = pgSkip === false ? ['sqlite', 'postgres'] : ['sqlite'];

let server: Promise<PostgresServer> | undefined;
let databases = 0;

/**
 * This file's PostgreSQL server, started on first use. The test file stops it with
 * `after(stopSharedPostgres)` at its top level.
 */
export function sharedPostgres(): Promise<PostgresServer> {
  server ??= startPostgres();
  return server;
}

export async function stopSharedPostgres(): Promise<void> {
  const started = server;
  server = undefined;
  if (started !== undefined) await (await started).destroy();
}

/** A new, empty PostgreSQL database on `pgServer`; its URL. */
export async function createDatabase(pgServer: PostgresServer): Promise<string> {
  const name = `fleetgate_${process.pid}_${++databases}`;
  const admin = new pg.Client({ connectionString: pgServer.url });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  return pgServer.url.replace(/\/[^/]*$/, `/${name}`);
}

/** A fresh registry location on `engine`: a file in a temp dir, or a new PostgreSQL database. */
export async function registryLocation(t: { after(fn: () => void): unknown }, engine: Engine): Promise<string> {
  if (engine === 'postgres') return createDatabase(await sharedPostgres());
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-registry-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return join(dir, 'registry.db');
}

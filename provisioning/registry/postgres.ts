/**
 * The registry on PostgreSQL, behind the same synchronous {@link SqlDb} as SQLite, so the reader,
 * the writer and every operation on them (one transaction each, with its audit row and status
 * event) are the same code for both engines.
 *
 * How: a worker thread holds the `pg` connection; a query posts to it and blocks on a shared
 * counter until the answer is there (`bench:pg-sync` measured the hop). Blocking is what SQLite
 * does too (better-sqlite3 is synchronous and waits up to its busy timeout for a lock); every
 * wait here is bounded by `timeoutMs` (PostgreSQL's statement_timeout, the connect timeout and
 * the wait itself), after which the caller gets REGISTRY_UNAVAILABLE.
 *
 * **Writers are serialized** by one transaction-scoped advisory lock taken at BEGIN — the
 * PostgreSQL form of SQLite's single writer (BEGIN IMMEDIATE). It keeps every check-then-write
 * of the writer exactly as safe across several provisioning instances as within one (a token is
 * consumed once, a device id is created once), and it makes the status feed's `seq` commit in
 * order, so a gateway that reads `seq > last` never skips an event that commits late.
 */

import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from 'node:worker_threads';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import type { PgReply, PgRequest } from './pg-worker.ts';
import { GRANTS_SQL, PG_ROLES } from './roles.ts';
import { PG_MIGRATIONS } from './schema.ts';
import { redactLocation, type SqlDb, type SqlStatement, type SqlTransaction } from './sql.ts';

/** The advisory lock every registry write transaction holds (an arbitrary constant: "fleetgat"). */
const WRITE_LOCK = 0x666c656574676174n;
/** Held while migrating (a session lock, so several processes starting at once migrate once). */
const MIGRATE_LOCK = WRITE_LOCK + 1n;

export interface PgOptions {
  readonly?: boolean;
  /** Bound on every wait for PostgreSQL (connect, statement, lock), in ms. */
  timeoutMs?: number;
}

let statementNames = 0;

/** How long a new registry thread may take to start before its first answer is given up on. */
const WORKER_START_MS = 15_000;

export class PgDatabase implements SqlDb {
  readonly dialect = 'postgres' as const;
  readonly where: string;
  readonly #worker: Worker;
  readonly #port: MessagePort;
  readonly #signal = new Int32Array(new SharedArrayBuffer(4));
  readonly #timeoutMs: number;
  #nextId = 1;
  /** The worker has answered once (it is up and connected). */
  #answered = false;
  #depth = 0;
  #open = true;

  constructor(url: string, options: PgOptions = {}) {
    this.where = redactLocation(url);
    this.#timeoutMs = options.timeoutMs ?? 5_000;
    const { port1, port2 } = new MessageChannel();
    this.#port = port1;
    this.#worker = new Worker(new URL('./pg-worker.ts', import.meta.url), {
      workerData: {
        url,
        readonly: options.readonly === true,
        timeoutMs: this.#timeoutMs,
        signal: this.#signal,
        port: port2,
      },
      transferList: [port2],
    });
    this.#worker.unref();
    this.#port.unref();
  }

  get open(): boolean {
    return this.#open;
  }

  /** One round trip: no parameters → simple protocol (several statements allowed). */
  query(sql: string, params?: unknown[], name?: string): { rows: Record<string, unknown>[]; rowCount: number } {
    if (!this.#open) throw new FleetgateError('REGISTRY_UNAVAILABLE', `registry ${this.where} is closed`);
    const id = this.#nextId++;
    let seen = Atomics.load(this.#signal, 0);
    const request: PgRequest = {
      id,
      sql,
      ...(params !== undefined && { params }),
      ...(name !== undefined && { name }),
    };
    this.#port.postMessage(request);
    // The worker's own timeouts answer first; this one only catches a worker that cannot answer at
    // all. Its first answer also waits for the thread to start (load the driver, connect): on a
    // busy machine that took more than the 3 s a gateway allows a query, and the gateway refused
    // to start though PostgreSQL was fine.
    const boot = this.#answered ? 0 : WORKER_START_MS;
    const deadline = performance.now() + this.#timeoutMs + 2_000 + boot;
    for (;;) {
      let m: { message: PgReply } | undefined;
      while ((m = receiveMessageOnPort(this.#port) as { message: PgReply } | undefined) !== undefined) {
        if (m.message.id !== id) continue; // the late answer to a query given up on
        const reply = m.message;
        if ('error' in reply) {
          if (reply.error.connection) {
            throw new FleetgateError(
              'REGISTRY_UNAVAILABLE',
              `registry ${this.where} cannot be reached: ${reply.error.message}`,
              { detail: { registry: this.where } },
            );
          }
          throw Object.assign(new Error(reply.error.message), {
            code: reply.error.code === undefined ? 'PG' : `PG_${reply.error.code}`,
          });
        }
        this.#answered = true;
        return reply;
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        this.#port.postMessage({ reset: true });
        throw new FleetgateError(
          'REGISTRY_UNAVAILABLE',
          `registry ${this.where} did not answer in ${this.#timeoutMs + 2_000 + boot} ms`,
          { detail: { registry: this.where } },
        );
      }
      Atomics.wait(this.#signal, 0, seen, left);
      seen = Atomics.load(this.#signal, 0);
    }
  }

  prepare(sql: string): SqlStatement {
    const { text, names, count } = toPostgres(sql);
    const name = `fg${++statementNames}`;
    const values = (params: unknown[]): unknown[] => {
      // A statement without parameters may be run with an (unused) object of named values, as SQLite allows.
      if (count === 0) return [];
      const raw = names === undefined ? params : names.map((n) => (params[0] as Record<string, unknown>)[n]);
      return raw.map((v) => (v === undefined ? null : v));
    };
    return {
      get: (...params) => this.query(text, values(params), name).rows[0],
      all: (...params) => this.query(text, values(params), name).rows,
      run: (...params) => ({ changes: this.query(text, values(params), name).rowCount }),
    };
  }

  transaction<T>(fn: () => T): SqlTransaction<T> {
    const run = (): T => {
      // Outermost: a transaction holding the write lock; inside one: a savepoint.
      const savepoint = `fg_sp${this.#depth}`;
      const [open, keep, undo] =
        this.#depth === 0
          ? [`BEGIN; SELECT pg_advisory_xact_lock(${WRITE_LOCK})`, 'COMMIT', 'ROLLBACK']
          : [
              `SAVEPOINT ${savepoint}`,
              `RELEASE SAVEPOINT ${savepoint}`,
              `ROLLBACK TO SAVEPOINT ${savepoint}; RELEASE SAVEPOINT ${savepoint}`,
            ];
      this.query(open);
      this.#depth++;
      try {
        const value = fn();
        this.query(keep);
        return value;
      } catch (err) {
        // The connection gone: PostgreSQL rolled the transaction back with it (an outer one fails at its next statement).
        this.#quietly(undo);
        throw err;
      } finally {
        this.#depth--;
      }
    };
    return Object.assign(run, { immediate: run });
  }

  /** A statement whose failure changes nothing for the caller (a rollback or unlock on a connection that may be gone). */
  #quietly(sql: string): void {
    try {
      this.query(sql);
    } catch {
      // the session ended: PostgreSQL undid its transaction and released its locks with it
    }
  }

  /**
   * Brings the database to the current schema; several processes may call it at once. A current
   * schema needs no DDL (a role without it — provisioning's — opens it); the schema's owner then
   * applies the roles' GRANTs (`roles.ts`).
   */
  migrate(): void {
    const target = PG_MIGRATIONS[PG_MIGRATIONS.length - 1]!.version;
    if (this.version() !== target) this.#migrate(target);
    this.#grant();
  }

  #migrate(target: number): void {
    this.query(`SELECT pg_advisory_lock(${MIGRATE_LOCK})`);
    try {
      this.query(
        'CREATE TABLE IF NOT EXISTS fleetgate_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)',
      );
      const current = this.version();
      if (current > target) {
        throw new FleetgateError(
          'REGISTRY_UNAVAILABLE',
          `registry ${this.where} has schema version ${current}, newer than this fleetgate (${target})`,
        );
      }
      for (const m of PG_MIGRATIONS) {
        if (m.version <= current) continue;
        this.query(`BEGIN; ${m.sql}; INSERT INTO fleetgate_schema (id, version) VALUES (1, ${m.version})
          ON CONFLICT (id) DO UPDATE SET version = excluded.version; COMMIT`);
      }
    } catch (err) {
      this.#quietly('ROLLBACK'); // nothing open, or the connection is gone
      if ((err as { code?: string }).code === 'PG_42501')
        throw new FleetgateError(
          'REGISTRY_UNAVAILABLE',
          `registry ${this.where} needs a schema migration this role may not make: run \`fleetgate init\` as the schema's owner (${PG_ROLES.operator})`,
          { cause: err },
        );
      throw err;
    } finally {
      this.#quietly(`SELECT pg_advisory_unlock(${MIGRATE_LOCK})`);
    }
  }

  /** The roles' GRANTs, when this session owns the schema (idempotent; roles that do not exist are skipped). */
  #grant(): void {
    const owner = this.query(
      `SELECT tableowner = current_user AS mine FROM pg_tables WHERE tablename = 'fleetgate_schema' AND schemaname = current_schema()`,
    ).rows[0];
    if (owner?.mine === true) this.query(GRANTS_SQL);
  }

  /** The schema version of the database (0: not a fleetgate registry yet). */
  version(): number {
    const exists = this.query(`SELECT to_regclass('fleetgate_schema') IS NOT NULL AS e`).rows[0]!.e === true;
    if (!exists) return 0;
    return Number(this.query('SELECT version FROM fleetgate_schema WHERE id = 1').rows[0]?.version ?? 0);
  }

  close(): void {
    if (!this.#open) return;
    this.#open = false;
    this.#port.close();
    void this.#worker.terminate();
  }
}

/**
 * `?` → `$1, $2, …` in order; `@name` → one `$n` per distinct name (and the names, to take the
 * values from the object a named statement is run with). The registry's SQL holds no `?` or `@`
 * inside string literals.
 */
export function toPostgres(sql: string): { text: string; names?: string[]; count: number } {
  let positional = 0;
  const names: string[] = [];
  const text = sql.replace(/\?|@([A-Za-z_][A-Za-z0-9_]*)/g, (match, name: string | undefined) => {
    if (match === '?') return `$${++positional}`;
    let i = names.indexOf(name!);
    if (i < 0) i = names.push(name!) - 1;
    return `$${i + 1}`;
  });
  if (positional > 0 && names.length > 0) throw new TypeError(`a statement mixes ? and @name parameters: ${sql}`);
  return names.length > 0 ? { text, names, count: names.length } : { text, count: positional };
}

/**
 * The registry's SQL engines behind one synchronous shape (better-sqlite3's): the reader and the
 * writer prepare statements and run transactions through this, and do not know which engine
 * holds the data — SQLite (the embedded default) or PostgreSQL (several nodes, issue #12).
 *
 * Statements are written once, in the SQL both engines accept: `?` or `@name` parameters, no
 * engine-only functions (`CASE` instead of SQLite's two-argument `MIN`, `CAST(@x AS TEXT) IS NULL`
 * so PostgreSQL can type a parameter that is only tested for NULL, {@link NO_LIMIT} instead of
 * SQLite's `LIMIT -1`). The PostgreSQL schema gives `certificates` and `revocations` a `rowid`
 * column, so the queries that order by SQLite's rowid mean the same there.
 */
import type Database from 'better-sqlite3';

export interface SqlStatement {
  get(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
  run(...params: unknown[]): { changes: number };
}

export interface SqlTransaction<T> {
  (): T;
  /** Takes the write lock first (SQLite: BEGIN IMMEDIATE; PostgreSQL: the registry's advisory lock). */
  immediate(): T;
}

export interface SqlDb {
  readonly dialect: 'sqlite' | 'postgres';
  /** Where it is, fit for a log line (a PostgreSQL URL without its password). */
  readonly where: string;
  readonly open: boolean;
  prepare(sql: string): SqlStatement;
  /** Nested calls become savepoints: one that throws is rolled back alone. */
  transaction<T>(fn: () => T): SqlTransaction<T>;
  close(): void;
}

/** "No limit" for a `LIMIT ?` in both engines (SQLite's -1 is an error in PostgreSQL). */
export const NO_LIMIT = Number.MAX_SAFE_INTEGER;

/** A better-sqlite3 database as a {@link SqlDb}: its statements are used as they are. */
export function sqliteDb(db: Database.Database, file: string): SqlDb & { readonly sqlite: Database.Database } {
  return {
    dialect: 'sqlite',
    where: file,
    sqlite: db,
    get open() {
      return db.open;
    },
    prepare: (sql) => db.prepare(sql) as unknown as SqlStatement,
    transaction: <T>(fn: () => T) => db.transaction(fn) as unknown as SqlTransaction<T>,
    close: () => {
      if (db.open) db.close();
    },
  };
}

/** `postgres://` or `postgresql://`: the registry is a PostgreSQL database. */
export function isPostgresUrl(location: string): boolean {
  return /^postgres(ql)?:\/\//i.test(location);
}

/** A registry location as a log line may show it: a PostgreSQL URL loses its password. */
export function redactLocation(location: string): string {
  if (!isPostgresUrl(location)) return location;
  try {
    const url = new URL(location);
    if (url.password !== '') url.password = '***';
    return url.toString();
  } catch {
    return 'postgres://(unparseable URL)';
  }
}

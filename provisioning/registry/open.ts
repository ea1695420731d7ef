import { existsSync } from 'node:fs';
import Database from 'better-sqlite3';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { PgDatabase } from './postgres.ts';
import { MIGRATIONS } from './schema.ts';
import { isPostgresUrl, redactLocation, type SqlDb, sqliteDb } from './sql.ts';

export type Db = Database.Database;

export interface OpenOptions {
  /** Open read-only (the gateway's view): no migrations, no writes possible. */
  readonly?: boolean;
  /** How long a writer waits for another process's write lock, in ms. */
  busyTimeoutMs?: number;
}

/**
 * Opens the registry wherever it is: a SQLite file (a path, or `sqlite:` and a path) or a
 * PostgreSQL database (`postgres://…`). Writers bring it to the current schema; readers refuse
 * one that is not at the schema they understand (fail closed).
 */
export function openRegistryDb(location: string, options: OpenOptions = {}): SqlDb {
  if (!isPostgresUrl(location)) {
    const file = sqliteFile(location);
    return sqliteDb(openDatabase(file, options), file);
  }
  let db: PgDatabase | undefined;
  try {
    db = new PgDatabase(location, {
      readonly: options.readonly === true,
      ...(options.busyTimeoutMs !== undefined && { timeoutMs: options.busyTimeoutMs }),
    });
    if (options.readonly !== true) db.migrate();
    const version = db.version();
    if (version !== MIGRATIONS.length) {
      throw new FleetgateError(
        'REGISTRY_UNAVAILABLE',
        `registry ${db.where} has schema version ${version}, expected ${MIGRATIONS.length}${version === 0 ? ' (not initialized: run `fleetgate init`)' : ''}`,
      );
    }
    return db;
  } catch (err) {
    db?.close();
    if (err instanceof FleetgateError) throw err;
    throw new FleetgateError(
      'REGISTRY_UNAVAILABLE',
      `cannot open registry ${redactLocation(location)}: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/** The file of a SQLite registry location (`sqlite:` prefix optional). */
export function sqliteFile(location: string): string {
  return location.startsWith('sqlite:') ? location.slice('sqlite:'.length) : location;
}

/**
 * Opens the registry file. Writers migrate it to the current schema; readers refuse a file
 * that does not exist or is not at the schema they understand (fail closed).
 *
 * WAL lets the gateway read while provisioning writes; `synchronous=FULL` makes every commit
 * durable across a power cut (issued certificates, revocations, denylist and audit must be).
 */
export function openDatabase(file: string, options: OpenOptions = {}): Db {
  const readonly = options.readonly === true;
  if (readonly && !existsSync(file)) {
    throw new FleetgateError('REGISTRY_UNAVAILABLE', `registry ${file} does not exist`, { detail: { file } });
  }
  let db: Db | undefined;
  try {
    db = new Database(file, { readonly, fileMustExist: readonly, timeout: options.busyTimeoutMs ?? 5_000 });
    if (!readonly) {
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
    }
    db.pragma('foreign_keys = ON');
    if (!readonly) migrate(db);
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version !== MIGRATIONS.length) {
      throw new FleetgateError(
        'REGISTRY_UNAVAILABLE',
        `registry ${file} has schema version ${version}, expected ${MIGRATIONS.length}`,
      );
    }
    return db;
  } catch (err) {
    db?.close();
    if (err instanceof FleetgateError) throw err;
    // A registry that exists but cannot be written (read-only data directory or file system).
    if (String((err as { code?: unknown }).code ?? '').startsWith('SQLITE_READONLY')) {
      throw new FleetgateError('STORAGE_READ_ONLY', `registry ${file} is not writable: ${(err as Error).message}`, {
        cause: err,
        detail: { file },
      });
    }
    throw new FleetgateError('REGISTRY_UNAVAILABLE', `cannot open registry ${file}: ${(err as Error).message}`, {
      cause: err,
      detail: { file },
    });
  }
}

function migrate(db: Db): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > MIGRATIONS.length) {
    throw new FleetgateError(
      'REGISTRY_UNAVAILABLE',
      `registry schema version ${current} is newer than this fleetgate (${MIGRATIONS.length})`,
    );
  }
  if (current === MIGRATIONS.length) return;
  // SQLite's procedure for changing a table: foreign keys off (it cannot change inside a
  // transaction), rebuild, then check every reference before the migration commits.
  db.pragma('foreign_keys = OFF');
  try {
    for (let version = current; version < MIGRATIONS.length; version++) {
      const sql = MIGRATIONS[version] as string;
      db.transaction(() => {
        // Another process may have migrated while we waited for the write lock.
        if ((db.pragma('user_version', { simple: true }) as number) !== version) return;
        db.exec(sql);
        const broken = db.pragma('foreign_key_check') as unknown[];
        if (broken.length > 0)
          throw new FleetgateError(
            'REGISTRY_UNAVAILABLE',
            `registry migration ${version + 1} left ${broken.length} broken reference(s); nothing was changed`,
          );
        db.pragma(`user_version = ${version + 1}`);
      }).immediate();
    }
  } finally {
    db.pragma('foreign_keys = ON');
  }
}

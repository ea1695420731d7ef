import { openRegistryDb } from './open.ts';
import type { SqlDb, SqlStatement } from './sql.ts';

/**
 * The one write the gateway may make: appending to the audit log (e.g. "disconnected by
 * revocation"). A separate connection with a single prepared INSERT, so the gateway's read
 * side stays read-only and nothing else can be written by accident.
 */
export class AuditAppender {
  readonly #db: SqlDb;
  readonly #insert: SqlStatement;

  constructor(location: string) {
    this.#db = openRegistryDb(location);
    this.#insert = this.#db.prepare('INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)');
  }

  append(actor: string, action: string, subject: string | null, detail: Record<string, unknown> = {}): void {
    // In a write transaction like every other audit row: PostgreSQL's `seq` then commits in order.
    this.#db
      .transaction(() => this.#insert.run(Date.now(), actor, action, subject, JSON.stringify(detail)))
      .immediate();
  }

  close(): void {
    this.#db.close();
  }
}

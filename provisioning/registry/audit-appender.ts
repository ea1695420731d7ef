import type { Statement } from 'better-sqlite3';
import { openDatabase, type Db } from './open.ts';

/**
 * The one write the gateway may make: appending to the audit log (e.g. "disconnected by
 * revocation"). A separate connection with a single prepared INSERT, so the gateway's read
 * side stays read-only and nothing else can be written by accident.
 */
export class AuditAppender {
  readonly #db: Db;
  readonly #insert: Statement;

  constructor(file: string) {
    this.#db = openDatabase(file);
    this.#insert = this.#db.prepare('INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)');
  }

  append(actor: string, action: string, subject: string | null, detail: Record<string, unknown> = {}): void {
    this.#insert.run(Date.now(), actor, action, subject, JSON.stringify(detail));
  }

  close(): void {
    if (this.#db.open) this.#db.close();
  }
}

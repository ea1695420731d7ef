/**
 * The thread behind {@link PgDatabase}: holds one PostgreSQL connection (one session, so a
 * transaction's statements share it) and answers the caller's queries one at a time, in order.
 * Each answer is posted, then a shared counter is raised and notified: the caller is blocked on
 * that counter (Atomics.wait) and takes the answer with receiveMessageOnPort.
 *
 * A connection that fails is dropped and made again on the next query (the caller sees the
 * error of the query it was in); `reset` drops it at once (the caller gave up waiting).
 */
import { type MessagePort, workerData } from 'node:worker_threads';
import pg from 'pg';

export interface PgRequest {
  id: number;
  sql: string;
  params?: unknown[];
  /** A prepared statement's name on this connection (pg parses it once per connection). */
  name?: string;
}
export type PgReply =
  | { id: number; rows: Record<string, unknown>[]; rowCount: number }
  | { id: number; error: { message: string; code?: string; connection: boolean } };

const { url, readonly, timeoutMs, signal, port } = workerData as {
  url: string;
  readonly: boolean;
  timeoutMs: number;
  signal: Int32Array;
  port: MessagePort;
};

// Times, counts and sequence numbers are BIGINT: numbers here, as SQLite gives them (all fit in 2^53).
pg.types.setTypeParser(pg.types.builtins.INT8, (v: string) => Number(v));

let client: pg.Client | undefined;

async function connection(): Promise<pg.Client> {
  if (client !== undefined) return client;
  const c = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: timeoutMs,
    statement_timeout: timeoutMs,
    application_name: readonly ? 'fleetgate-reader' : 'fleetgate',
    // The gateway's side cannot write by accident: every transaction of its session is read-only.
    ...(readonly && { options: '-c default_transaction_read_only=on' }),
  });
  c.on('error', () => drop(c));
  client = c;
  try {
    await c.connect();
  } catch (err) {
    drop(c);
    throw err;
  }
  return c;
}

function drop(c: pg.Client | undefined = client): void {
  if (c === undefined) return;
  if (client === c) client = undefined;
  c.end().catch(() => {});
}

async function handle(m: PgRequest | { reset: true }): Promise<void> {
  if ('reset' in m) {
    drop();
    return;
  }
  let reply: PgReply;
  try {
    const c = await connection();
    const result =
      m.params === undefined
        ? await c.query(m.sql) // simple protocol: several statements allowed (migrations, BEGIN + lock)
        : await c.query({ text: m.sql, values: m.params, ...(m.name !== undefined && { name: m.name }) });
    const last = (Array.isArray(result) ? result[result.length - 1] : result) as pg.QueryResult;
    reply = { id: m.id, rows: last?.rows ?? [], rowCount: last?.rowCount ?? 0 };
  } catch (err) {
    const raw = (err as { code?: unknown }).code;
    const sqlstate = typeof raw === 'string' && /^[0-9A-Z]{5}$/.test(raw) ? raw : undefined;
    // No SQLSTATE (a socket error such as ECONNREFUSED, a timeout), class 08 (connection) or 57P
    // (the server shutting down): the registry cannot be reached; a new connection next time.
    const connectionLost = sqlstate === undefined || /^(08|57P)/.test(sqlstate);
    if (connectionLost) drop();
    reply = {
      id: m.id,
      error: {
        message: (err as Error).message,
        ...(sqlstate !== undefined && { code: sqlstate }),
        connection: connectionLost,
      },
    };
  }
  port.postMessage(reply);
  Atomics.add(signal, 0, 1);
  Atomics.notify(signal, 0);
}

let chain: Promise<void> = Promise.resolve();
port.on('message', (m: PgRequest | { reset: true }) => {
  chain = chain.then(() => handle(m));
});

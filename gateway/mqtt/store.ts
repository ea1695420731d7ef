import Database, { type Database as Db, type Statement } from 'better-sqlite3';

/** A QoS 1/2 message waiting for (or in flight to) one persistent session. */
export interface StoredMessage {
  id: number;
  clientId: string;
  topic: string;
  payload: Buffer;
  qos: 1 | 2;
}

export interface StoredSession {
  clientId: string;
  deviceId: string;
  lastSeen: number;
  subscriptions: { filter: string; qos: 0 | 1 | 2 }[];
  /** QoS 2 packet ids received (PUBREC sent) and not yet released by the client's PUBREL. */
  qos2In: number[];
}

export interface StoredRetained {
  topic: string;
  payload: Buffer;
  qos: 0 | 1 | 2;
  deviceId: string;
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, last_seen INTEGER NOT NULL) STRICT;
  CREATE TABLE IF NOT EXISTS subscriptions (client_id TEXT NOT NULL, filter TEXT NOT NULL, qos INTEGER NOT NULL, PRIMARY KEY (client_id, filter)) STRICT;
  CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY, client_id TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL) STRICT;
  CREATE INDEX IF NOT EXISTS queue_client ON queue(client_id, id);
  CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL, device_id TEXT NOT NULL) STRICT;
  -- Exactly once across a crash: a QoS 2 PUBLISH acknowledged with PUBREC and sent again after a
  -- restart (the client never saw the PUBREC) is recognised, not delivered twice [MQTT-4.3.3-2].
  CREATE TABLE IF NOT EXISTS qos2_in (client_id TEXT NOT NULL, packet_id INTEGER NOT NULL, PRIMARY KEY (client_id, packet_id)) STRICT;
`;

type Op = { stmt: Statement; args: unknown[] };

/**
 * What must survive the gateway: persistent sessions (their subscriptions and queued QoS 1/2
 * messages) and retained messages, in `data/mqtt.db` (SQLite, WAL, synchronous=FULL).
 *
 * **Group commit.** Writes are collected during one event-loop turn and committed in one
 * transaction at its end; `afterCommit` callbacks (the PUBACKs and PUBRECs that promise "it is on
 * disk") run only after that commit. One fsync serves every message of the turn, and a SIGKILL at
 * any moment loses nothing that was acknowledged. The message ids are assigned here, before the
 * row is written, so a delivery and its acknowledgement can be queued in the same batch.
 */
export class DurableStore {
  readonly #db: Db;
  readonly #s: Record<string, Statement>;
  #ops: Op[] = [];
  #after: ((err: Error | undefined) => void)[] = [];
  #scheduled = false;
  #nextId: number;
  /** Commits so far, and ops in them (for metrics and the benchmark). */
  commits = 0;
  committedOps = 0;

  constructor(file: string) {
    this.#db = new Database(file);
    this.#db.pragma('journal_mode = WAL');
    this.#db.pragma('synchronous = FULL');
    this.#db.exec(SCHEMA);
    const p = (sql: string) => this.#db.prepare(sql);
    this.#s = {
      upsertSession: p(
        'INSERT INTO sessions (client_id, device_id, last_seen) VALUES (?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET device_id = excluded.device_id, last_seen = excluded.last_seen',
      ),
      deleteSession: p('DELETE FROM sessions WHERE client_id = ?'),
      deleteSubs: p('DELETE FROM subscriptions WHERE client_id = ?'),
      deleteQueue: p('DELETE FROM queue WHERE client_id = ?'),
      deleteQos2In: p('DELETE FROM qos2_in WHERE client_id = ?'),
      addQos2In: p('INSERT OR IGNORE INTO qos2_in (client_id, packet_id) VALUES (?, ?)'),
      releaseQos2In: p('DELETE FROM qos2_in WHERE client_id = ? AND packet_id = ?'),
      addSub: p(
        'INSERT INTO subscriptions (client_id, filter, qos) VALUES (?, ?, ?) ON CONFLICT (client_id, filter) DO UPDATE SET qos = excluded.qos',
      ),
      removeSub: p('DELETE FROM subscriptions WHERE client_id = ? AND filter = ?'),
      enqueue: p('INSERT INTO queue (id, client_id, topic, payload, qos) VALUES (?, ?, ?, ?, ?)'),
      dequeue: p('DELETE FROM queue WHERE id = ?'),
      putRetained: p(
        'INSERT INTO retained (topic, payload, qos, device_id) VALUES (?, ?, ?, ?) ON CONFLICT (topic) DO UPDATE SET payload = excluded.payload, qos = excluded.qos, device_id = excluded.device_id',
      ),
      deleteRetained: p('DELETE FROM retained WHERE topic = ?'),
    };
    this.#nextId = ((this.#db.prepare('SELECT MAX(id) AS m FROM queue').get() as { m: number | null }).m ?? 0) + 1;
  }

  /** Everything to rebuild the broker's state at start. */
  load(): { sessions: StoredSession[]; queue: StoredMessage[]; retained: StoredRetained[] } {
    const subs = this.#db.prepare('SELECT client_id, filter, qos FROM subscriptions ORDER BY client_id').all() as {
      client_id: string;
      filter: string;
      qos: number;
    }[];
    const byClient = new Map<string, StoredSession['subscriptions']>();
    for (const s of subs) {
      let list = byClient.get(s.client_id);
      if (list === undefined) byClient.set(s.client_id, (list = []));
      list.push({ filter: s.filter, qos: s.qos as 0 | 1 | 2 });
    }
    const qos2 = new Map<string, number[]>();
    for (const r of this.#db.prepare('SELECT client_id, packet_id FROM qos2_in').all() as {
      client_id: string;
      packet_id: number;
    }[]) {
      let ids = qos2.get(r.client_id);
      if (ids === undefined) qos2.set(r.client_id, (ids = []));
      ids.push(r.packet_id);
    }
    const sessions = (
      this.#db.prepare('SELECT client_id, device_id, last_seen FROM sessions').all() as {
        client_id: string;
        device_id: string;
        last_seen: number;
      }[]
    ).map((r) => ({
      clientId: r.client_id,
      deviceId: r.device_id,
      lastSeen: r.last_seen,
      subscriptions: byClient.get(r.client_id) ?? [],
      qos2In: qos2.get(r.client_id) ?? [],
    }));
    const queue = (
      this.#db.prepare('SELECT id, client_id, topic, payload, qos FROM queue ORDER BY id').all() as {
        id: number;
        client_id: string;
        topic: string;
        payload: Buffer;
        qos: number;
      }[]
    ).map((r) => ({ id: r.id, clientId: r.client_id, topic: r.topic, payload: r.payload, qos: r.qos as 1 | 2 }));
    const retained = (
      this.#db.prepare('SELECT topic, payload, qos, device_id FROM retained').all() as {
        topic: string;
        payload: Buffer;
        qos: number;
        device_id: string;
      }[]
    ).map((r) => ({ topic: r.topic, payload: r.payload, qos: r.qos as 0 | 1 | 2, deviceId: r.device_id }));
    return { sessions, queue, retained };
  }

  #op(stmt: string, ...args: unknown[]): void {
    this.#ops.push({ stmt: this.#s[stmt] as Statement, args });
    this.#schedule();
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => this.flush());
  }

  saveSession(clientId: string, deviceId: string, lastSeen: number): void {
    this.#op('upsertSession', clientId, deviceId, lastSeen);
  }
  dropSession(clientId: string): void {
    this.#op('deleteSubs', clientId);
    this.#op('deleteQueue', clientId);
    this.#op('deleteQos2In', clientId);
    this.#op('deleteSession', clientId);
  }
  addSubscription(clientId: string, filter: string, qos: number): void {
    this.#op('addSub', clientId, filter, qos);
  }
  removeSubscription(clientId: string, filter: string): void {
    this.#op('removeSub', clientId, filter);
  }

  /** Queues a message for a session; returns its id (the row is written with this turn's batch). */
  enqueue(clientId: string, topic: string, payload: Buffer, qos: 1 | 2): number {
    const id = this.#nextId++;
    this.#op('enqueue', id, clientId, topic, payload, qos);
    return id;
  }

  dequeue(id: number): void {
    this.#op('dequeue', id);
  }
  /** A QoS 2 PUBLISH from a persistent session's client, before its PUBREC (same batch). */
  receivedQos2(clientId: string, packetId: number): void {
    this.#op('addQos2In', clientId, packetId);
  }
  /** Its PUBREL came: the id may be used again. */
  releasedQos2(clientId: string, packetId: number): void {
    this.#op('releaseQos2In', clientId, packetId);
  }
  putRetained(topic: string, payload: Buffer, qos: number, deviceId: string): void {
    this.#op('putRetained', topic, payload, qos, deviceId);
  }
  deleteRetained(topic: string): void {
    this.#op('deleteRetained', topic);
  }

  /** Runs `fn` once everything queued so far is committed (at once if nothing is pending). */
  afterCommit(fn: (err: Error | undefined) => void): void {
    if (this.#ops.length === 0 && !this.#scheduled) return fn(undefined);
    this.#after.push(fn);
    this.#schedule();
  }

  /** Commits the batch in one transaction, then runs its callbacks. */
  flush(): void {
    this.#scheduled = false;
    const ops = this.#ops;
    const after = this.#after;
    this.#ops = [];
    this.#after = [];
    let error: Error | undefined;
    if (ops.length > 0) {
      try {
        this.#db
          .transaction(() => {
            for (const op of ops) op.stmt.run(...op.args);
          })
          .immediate();
        this.commits++;
        this.committedOps += ops.length;
      } catch (err) {
        error = err as Error;
      }
    }
    for (const fn of after) fn(error);
  }

  close(): void {
    this.flush();
    this.#db.close();
  }
}

/**
 * The gateway's registry thread. Every SQLite call the gateway makes on the shared registry
 * runs here, never on the event loop that serves devices: a registry that is slow, locked by
 * another process (SQLite's WAL read retries are not bounded by busy_timeout) or gone delays
 * this thread only, and the main thread answers from memory or refuses with
 * REGISTRY_UNAVAILABLE after its deadline (see {@link RegistryLink}).
 *
 * Messages are handled one at a time, in order, and the status feed is read between them: a
 * status answer and the feed events after it reach the main thread in the order the registry
 * committed them, which is what lets the main thread cache answers safely.
 */

import { type FSWatcher, statSync, watch } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import type { Statement } from 'better-sqlite3';
import pg from 'pg';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { AuditAppender } from '../../provisioning/registry/audit-appender.ts';
import type { RegistryReader } from '../../provisioning/registry/reader.ts';
import { isPostgresUrl, redactLocation } from '../../provisioning/registry/sql.ts';
import { StatusChecker } from './check.ts';
import type { FromWorker, ToWorker } from './registry-link.ts';

const { file, pollMs, idlePollMs, since, feedReads } = workerData as {
  file: string;
  pollMs: number;
  idlePollMs: number;
  since: number;
  /** Feed reads made, counted for `fleetgate_registry_feed_reads_total` (shared with the gateway thread). */
  feedReads: Int32Array;
};
const port = parentPort!;
const postgres = isPostgresUrl(file);
const checker = new StatusChecker(file);
let audit: AuditAppender | undefined;
let last = -1;
let down = false;
let retryAt = 0;
let lastReader: RegistryReader | undefined;
let lastVersion = -1;
let statAt = 0;
let dataVersion: Statement | undefined;

const post = (m: FromWorker) => port.postMessage(m);
const coded = (err: unknown) => {
  const e =
    err instanceof FleetgateError
      ? err
      : new FleetgateError(
          'REGISTRY_UNAVAILABLE',
          `registry ${redactLocation(file)} cannot be read: ${(err as Error).message}`,
        );
  return { code: e.code, message: e.message, detail: e.detail };
};

function poll(): void {
  // While the registry fails, ask again once a second, not every poll.
  if (down && Date.now() < retryAt) return;
  try {
    // Whether the file was replaced (a stat) is asked once a second, not on every poll.
    const now = Date.now();
    if (postgres) {
      readFeed(checker.reader());
      return;
    }
    const current = checker.current();
    const reader = current !== undefined && now < statAt ? current : checker.reader();
    if (reader !== lastReader || now >= statAt) statAt = now + 1_000;
    // Nothing committed by another connection since the last read: nothing new in the feed.
    // (SQLite's data_version: one look at the WAL index, not a query; a replaced file is a new reader.)
    if (reader !== lastReader) dataVersion = reader.db.prepare('PRAGMA data_version').pluck();
    const version = dataVersion!.get() as number;
    if (!down && reader === lastReader && version === lastVersion) return;
    lastReader = reader;
    lastVersion = version;
    readFeed(reader);
  } catch (err) {
    retryAt = Date.now() + 1_000;
    statAt = 0;
    if (!down) {
      down = true;
      post({ feed: 'down', error: coded(err) });
    }
  }
}

/** Every event after the last one read, in `seq` order; the feed is up again once this succeeds. */
function readFeed(reader: RegistryReader): void {
  Atomics.add(feedReads, 0, 1);
  for (;;) {
    const events = reader.listStatusEvents(last);
    if (down) {
      down = false;
      post({ feed: 'up' });
    }
    if (events.length === 0) break;
    last = events[events.length - 1]!.seq;
    post({ events });
  }
}

port.on('message', (m: ToWorker) => {
  if (m.op === 'close') {
    clearInterval(timer);
    clearInterval(rewatch);
    clearTimeout(rung);
    watcher?.close();
    closing = true;
    void listener?.end().catch(() => {});
    checker.close();
    audit?.close();
    port.close();
    return;
  }
  try {
    switch (m.op) {
      case 'status':
        post({ id: m.id, ok: true, value: checker.status(m.identity, m.now) });
        break;
      case 'children':
        post({
          id: m.id,
          ok: true,
          value: checker
            .reader()
            .listChildren(m.deviceId)
            .filter((c) => c.status !== 'revoked')
            .map((c) => c.id),
        });
        break;
      case 'ping':
        checker.reader();
        post({ id: m.id, ok: true, value: null });
        break;
      case 'audit':
        audit ??= new AuditAppender(file);
        audit.append(m.actor, m.action, m.subject, m.detail);
        post({ id: m.id, ok: true, value: null });
        break;
    }
  } catch (err) {
    if (m.op === 'audit') {
      audit?.close();
      audit = undefined;
    }
    post({ id: m.id, ok: false, error: coded(err) });
  }
});

/**
 * When to read the feed. Every commit, by any process, writes the registry's WAL file, and the
 * kernel says so (inotify, through fs.watch). While the WAL is being written the feed is read
 * every `pollMs` (the commit becomes visible only after its fsync, a little after its last
 * write), until {@link HOT_MS} after the last write; when nothing is written, only every
 * `idlePollMs` (`gateway.statusIdlePoll`) as a safety net (a missed notification). Without a watch (no WAL file
 * yet, a file system without inotify), every `pollMs` as before. An idle gateway wakes 4 times a
 * second instead of 50, and a revocation is read within `pollMs` of its commit either way.
 */
const HOT_MS = 2_000;
let timer: NodeJS.Timeout | undefined;
let rewatch: NodeJS.Timeout | undefined;
let watcher: FSWatcher | undefined;
let watchedInode = -1;
let fast = true;
let hotUntil = 0;

function schedule(fastNow: boolean): void {
  fast = fastNow;
  clearInterval(timer);
  timer = setInterval(tick, fast ? pollMs : Math.max(pollMs, idlePollMs));
}

function tick(): void {
  poll();
  if (!postgres && fast && watcher !== undefined && Date.now() > hotUntil) schedule(false);
}

function walWritten(): void {
  hotUntil = Date.now() + HOT_MS;
  if (!fast) {
    schedule(true);
    poll();
  }
}

function watchWal(): void {
  let inode: number;
  try {
    inode = statSync(`${file}-wal`).ino;
  } catch {
    inode = -1;
  }
  if (inode === watchedInode && (watcher !== undefined || inode < 0)) return;
  watcher?.close();
  watcher = undefined;
  watchedInode = inode;
  if (inode >= 0) {
    try {
      watcher = watch(`${file}-wal`, { persistent: false }, walWritten);
      watcher.on('error', () => {
        watcher?.close();
        watcher = undefined;
        watchedInode = -1;
        schedule(true);
      });
    } catch {
      watcher = undefined;
    }
  }
  hotUntil = Date.now() + HOT_MS;
  schedule(true); // fast until the watch has seen a quiet spell
}

/**
 * PostgreSQL: every status event rings `pg_notify('fleetgate_status')` in the transaction that
 * writes it (a trigger, see schema.ts). This thread keeps one connection of its own that LISTENs
 * and reads the feed by `seq` when rung — a doorbell only: what was written while it was not
 * listening is read on the next poll by `seq`, nothing is lost. The feed is also read every
 * `idlePollMs` (the safety net), and every `pollMs` while the LISTEN connection is down.
 */
let listener: pg.Client | undefined;
let closing = false;
let rung: NodeJS.Timeout | undefined;
let lastRingRead = 0;

function ring(): void {
  if (rung !== undefined) return;
  rung = setTimeout(
    () => {
      rung = undefined;
      lastRingRead = Date.now();
      poll();
    },
    Math.max(0, lastRingRead + pollMs - Date.now()),
  );
}

function listen(): void {
  if (closing) return;
  const client = new pg.Client({
    connectionString: file,
    connectionTimeoutMillis: 2_000,
    application_name: 'fleetgate-feed',
    keepAlive: true,
  });
  let lost = false;
  const onLost = () => {
    if (lost) return;
    lost = true;
    if (listener === client) listener = undefined;
    client.end().catch(() => {});
    if (closing) return;
    schedule(true); // poll fast while nobody rings
    setTimeout(listen, 1_000).unref();
  };
  client.on('error', onLost);
  client.on('end', onLost);
  // A doorbell, and anyone who may connect can ring it: a burst of notifications is one read,
  // at most one per `pollMs` (the payload is not read: the feed is, by `seq`).
  client.on('notification', ring);
  client
    .connect()
    .then(() => client.query('LISTEN fleetgate_status'))
    .then(() => {
      if (lost) return;
      listener = client;
      schedule(false);
      poll(); // what was written while nobody listened
    })
    .catch(onLost);
}

try {
  // A restarted thread goes on from where the last one stopped: no event is skipped.
  const reader = checker.reader(); // throws if the registry cannot be read
  last = since >= 0 ? since : reader.lastStatusSeq();
  post({ ready: last });
  if (postgres) {
    schedule(true);
    listen();
  } else {
    watchWal();
    // The WAL file is replaced with the registry (a restore): watch the new one.
    rewatch = setInterval(watchWal, 1_000);
  }
} catch (err) {
  post({ ready: -1, error: coded(err) }); // the gateway does not start on a registry it cannot read
}

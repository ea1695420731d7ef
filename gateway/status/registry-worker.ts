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
import { parentPort, workerData } from 'node:worker_threads';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { AuditAppender } from '../../provisioning/registry/audit-appender.ts';
import { StatusChecker } from './check.ts';
import type { ToWorker, FromWorker } from './registry-link.ts';

const { file, pollMs, since } = workerData as { file: string; pollMs: number; since: number };
const port = parentPort!;
const checker = new StatusChecker(file);
let audit: AuditAppender | undefined;
let last = -1;
let down = false;
let retryAt = 0;

const post = (m: FromWorker) => port.postMessage(m);
const coded = (err: unknown) => {
  const e = err instanceof FleetgateError ? err : new FleetgateError('REGISTRY_UNAVAILABLE', `registry ${file} cannot be read: ${(err as Error).message}`);
  return { code: e.code, message: e.message, detail: e.detail };
};

function poll(): void {
  // While the registry fails, ask again once a second, not every poll.
  if (down && Date.now() < retryAt) return;
  try {
    const reader = checker.reader();
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
  } catch (err) {
    retryAt = Date.now() + 1_000;
    if (!down) {
      down = true;
      post({ feed: 'down', error: coded(err) });
    }
  }
}

port.on('message', (m: ToWorker) => {
  if (m.op === 'close') {
    clearInterval(timer);
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
        post({ id: m.id, ok: true, value: checker.reader().listChildren(m.deviceId).filter((c) => c.status !== 'revoked').map((c) => c.id) });
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

let timer: NodeJS.Timeout | undefined;
try {
  // A restarted thread goes on from where the last one stopped: no event is skipped.
  const reader = checker.reader(); // throws if the registry cannot be read
  last = since >= 0 ? since : reader.lastStatusSeq();
  post({ ready: last });
  timer = setInterval(poll, pollMs);
} catch (err) {
  post({ ready: -1, error: coded(err) }); // the gateway does not start on a registry it cannot read
}

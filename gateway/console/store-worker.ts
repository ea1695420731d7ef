/**
 * The console's registry thread: its queries (paged, indexed, but some scan 100k rows) and its
 * actions run here, on their own read-only connection and a writer opened on first use, so a
 * console page never delays a device's admission on the gateway's registry thread or the event
 * loop. Actions go through the same {@link RegistryWriter} methods as the CLI: the same
 * transaction, the same audit row, the same status event the gateways cut live sessions from.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { FleetgateError } from '../../firmware-sdk/protocol/errors.ts';
import { RegistryReader } from '../../provisioning/registry/reader.ts';
import { redactLocation } from '../../provisioning/registry/sql.ts';
import { RegistryWriter } from '../../provisioning/registry/writer.ts';
import { ConsoleQueries } from './queries.ts';
import type { ConsoleAction, ConsoleQuery, FromConsoleWorker, ToConsoleWorker } from './store.ts';

const { file } = workerData as { file: string };
const port = parentPort!;
let reader: RegistryReader | undefined;
let queries: ConsoleQueries | undefined;
let writer: RegistryWriter | undefined;

function read(): ConsoleQueries {
  if (queries === undefined) {
    reader = new RegistryReader(file);
    queries = new ConsoleQueries(reader);
  }
  return queries;
}

function query(q: ConsoleQuery): unknown {
  const r = read();
  switch (q.name) {
    case 'devices':
      return r.devices(q.filter);
    case 'device':
      return r.device(q.id);
    case 'counts':
      return r.counts();
    case 'expiring':
      return r.expiring(q);
    case 'revoked':
      return r.revoked(q);
    case 'findings':
      return r.findings();
    case 'denylist':
      return r.denylist(q.filter);
    case 'audit':
      return r.audit(q.filter);
  }
}

function act(a: ConsoleAction, actor: string): unknown {
  writer ??= new RegistryWriter(file);
  switch (a.name) {
    case 'suspend':
      return writer.suspendDevice(a.id, actor, a.reason);
    case 'resume':
      return writer.resumeDevice(a.id, actor);
    case 'revoke':
      return writer.revokeDevice(a.id, a.reason, actor);
    case 'revokeCertificate':
      return writer.revokeCertificate(a.serial, a.reason, actor);
    case 'deny':
      return writer.addDeny(
        { kind: a.kind, value: a.value, reason: a.reason ?? null, expiresAt: a.expiresAt ?? null },
        actor,
      );
    case 'allow':
      return writer.removeDeny(a.kind, a.value, actor);
    case 'token':
      return writer.createToken(a.id, a.ttlMs, actor);
  }
}

port.on('message', (m: ToConsoleWorker) => {
  if (m.op === 'close') {
    reader?.close();
    writer?.close();
    port.close();
    return;
  }
  try {
    const value = m.op === 'query' ? query(m.query) : act(m.action, m.actor);
    port.postMessage({ id: m.id, ok: true, value } satisfies FromConsoleWorker);
  } catch (err) {
    let e: FleetgateError;
    if (err instanceof FleetgateError) e = err;
    else {
      // SQLite itself failed: the connections are opened again for the next message.
      reader?.close();
      writer?.close();
      reader = queries = writer = undefined;
      e = new FleetgateError('REGISTRY_UNAVAILABLE', `registry ${redactLocation(file)}: ${(err as Error).message}`);
    }
    port.postMessage({ id: m.id, ok: false, error: { code: e.code, message: e.message } } satisfies FromConsoleWorker);
  }
});
